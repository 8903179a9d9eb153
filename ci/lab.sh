#!/usr/bin/env bash
# `make lab`: the mesh lab (meshlab, docs/lab.md) on a topology, with a scenario.
#   TOPOLOGY=FILE   meshnet-lab JSON (default: mesh-lab/topologies/freifunk-ulm.json)
#   FROM=URL        instead, the mesh a live node sees (http://[address]:9100)
#   SCENARIO=NAME   rollout (the default), faults, broken (N+1's router never starts),
#                   bad-release (the same, but N+1 works on its canary), monitoring,
#                   gateways or hostile
#   BOOT_TIME=S     how long a node's reboot takes (default 20)
#   TIMEOUT=S       when a scenario gives up (default 3600)
#   LAB_RELEASE=BUNDLE  release N as built already (make test: the virtual board's), signed
#                   with MESHOS_SIGN_KEY; N+1 is then built with the same key
#   LAB_UPDATE=BUNDLE   release N+1 as built already (make test: ci/next-releases.sh's)
#   LAB_ROGUE_THEN=BUNDLE  faults: a release the rogue offers once every node has committed,
#                   which its neighbours must refuse at the signature (make test: N+2, signed
#                   by one key where N+1 requires two)
#   LAB_NAME=NAME   the lab's name (default meshlab): labs of different names run side by side
#   LAB_PROFILE=dev builds meshd and meshlab unoptimised (make test: quicker to build after the
#                   unit tests; its memory figures are not the product's)
# The releases: N is the virtual board's image as `make image` builds it, N+1 the same with the
# next-release overlay (ci/fixtures/make-next-overlay.py: one site file and one library, about
# the size of a one-package change), both signed with MESHOS_SIGN_KEY or a key made for the lab.
# meshd and meshlab are built for this machine (meshd static with musl, as on the boards: the
# lab measures its memory).
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
  "$MESHIMG" build qemu-arm64 --bundle-only --out "$dir" "$@" > "$dir.log" 2>&1 || { tail -20 "$dir.log"; echo "lab: building the release failed (whole log: $dir.log)" >&2; exit 2; }
}
if [ -n "${LAB_RELEASE:-}" ]; then
  [ -n "${MESHOS_SIGN_KEY:-}" ] || { echo "lab: LAB_RELEASE needs the MESHOS_SIGN_KEY it was signed with, to sign N+1" >&2; exit 2; }
  N=$LAB_RELEASE
else
  release "$REL/n"
  N=$REL/n/qemu-arm64/meshos-qemu-arm64-$V.bundle
fi
update=()
if [ "${SCENARIO:-rollout}" = monitoring ] || [ "${SCENARIO:-rollout}" = gateways ] || [ "${SCENARIO:-rollout}" = hostile ]; then
  : # no new release: the mesh as it is
elif [ -n "${LAB_UPDATE:-}" ]; then
  UPDATE=$LAB_UPDATE
else
  ci/fixtures/make-next-overlay.py "$REL/next-overlay"
  release "$REL/n1" --image-version "$V.1" --overlay "$REL/next-overlay"
  UPDATE=$REL/n1/qemu-arm64/meshos-qemu-arm64-$V.1.bundle
fi
[ -z "${UPDATE:-}" ] || update=(--update "$UPDATE")
profile=${LAB_PROFILE:-release}
case $profile in
release)
  # meshd as the boards run it: optimised, static, musl (glibc's allocator alone adds about a
  # MiB to every meshd); meshlab as any host tool.
  ci/setup-host.sh lab
  cargo build --locked --release -p meshlab
  cargo build --locked --release -p meshd --target x86_64-unknown-linux-musl
  BIN=target/release MESHD=target/x86_64-unknown-linux-musl/release/meshd
  ;;
dev)
  # With the tests, as `cargo test --workspace` builds them: the dependencies' features then
  # match that build's, so after it only meshd and meshlab are compiled (18 s against 90).
  cargo build --locked --workspace --bins --tests
  BIN=target/debug MESHD=target/debug/meshd
  ;;
*) echo "lab: LAB_PROFILE is release or dev" >&2; exit 2 ;;
esac

# The faults scenario's rogue serves N+1 with every chunk corrupted.
rogue=()
if [ "${SCENARIO:-rollout}" = faults ]; then
  rm -rf "$OUT/rogue"
  "$MESHIMG" export "$UPDATE" "$OUT/rogue" > /dev/null
  ci/fixtures/corrupt-chunks.py "$OUT/rogue"
  rogue=(--rogue "$OUT/rogue")
  if [ -n "${LAB_ROGUE_THEN:-}" ]; then
    rm -rf "$OUT/rogue-then"
    "$MESHIMG" export "$LAB_ROGUE_THEN" "$OUT/rogue-then" > /dev/null
    rogue+=(--rogue-then "$OUT/rogue-then")
  fi
fi
source=(--topology "${TOPOLOGY:-mesh-lab/topologies/freifunk-ulm.json}")
[ -z "${FROM:-}" ] || source=(--from "$FROM")
as_root "$BIN/meshlab" run --scenario "${SCENARIO:-rollout}" "${source[@]}" \
  --release "$N" "${update[@]}" \
  --meshd "$MESHD" --out "$OUT" "${rogue[@]}" \
  ${BOOT_TIME:+--boot-time "$BOOT_TIME"} ${TIMEOUT:+--timeout "$TIMEOUT"} ${LAB_NAME:+--name "$LAB_NAME"}
