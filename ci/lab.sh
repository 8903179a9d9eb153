#!/usr/bin/env bash
# `make lab`: the mesh lab (meshlab, docs/lab.md) on a topology, with a scenario.
#   TOPOLOGY=FILE   meshnet-lab JSON (default: mesh-lab/topologies/freifunk-ulm.json)
#   FROM=URL        instead, the mesh a live node sees (http://[address]:9100)
#   SCENARIO=NAME   rollout (the default)
#   BOOT_TIME=S     how long a node's reboot takes (default 20)
#   TIMEOUT=S       when a scenario gives up (default 3600)
# The releases: N is the virtual board's image as `make image` builds it, N+1 the same with the
# next-release overlay (ci/fixtures/make-next-overlay.py: one site file and one library, about
# the size of a one-package change), both signed with MESHOS_SIGN_KEY or a key made for the lab.
# meshd and meshlab are built for this machine (release profile: the lab measures memory).
set -euo pipefail
cd "$(dirname "$0")/.."
MESHIMG=${MESHIMG:-target/debug/meshimg}
OUT=${LAB_OUT:-out/lab}
REL=$OUT/releases
V=$(cargo pkgid -p meshimg | sed 's/.*[#@]//')
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

mkdir -p "$REL"
if [ -z "${MESHOS_SIGN_KEY:-}" ]; then
  MESHOS_SIGN_KEY=$REL/lab.key
  [ -f "$MESHOS_SIGN_KEY" ] || "$MESHIMG" keygen --unencrypted -o "$MESHOS_SIGN_KEY" > /dev/null
  export MESHOS_SIGN_KEY
fi
release() { # DIR [BUILD-ARGS...]: builds the virtual board's release into DIR (warm: about a minute)
  local dir=$1; shift
  echo "lab: building release ${*:-$V} into $dir"
  "$MESHIMG" build qemu-arm64 --out "$dir" "$@" > "$dir.log" 2>&1 || { tail -20 "$dir.log"; echo "lab: building the release failed (whole log: $dir.log)" >&2; exit 2; }
}
release "$REL/n"
ci/fixtures/make-next-overlay.py "$REL/next-overlay"
release "$REL/n1" --image-version "$V.1" --overlay "$REL/next-overlay"
cargo build --locked --release -p meshd -p meshlab

source=(--topology "${TOPOLOGY:-mesh-lab/topologies/freifunk-ulm.json}")
[ -z "${FROM:-}" ] || source=(--from "$FROM")
as_root target/release/meshlab run --scenario "${SCENARIO:-rollout}" "${source[@]}" \
  --release "$REL/n/qemu-arm64/meshos-qemu-arm64-$V.bundle" \
  --update "$REL/n1/qemu-arm64/meshos-qemu-arm64-$V.1.bundle" \
  --meshd target/release/meshd --out "$OUT" \
  ${BOOT_TIME:+--boot-time "$BOOT_TIME"} ${TIMEOUT:+--timeout "$TIMEOUT"}
