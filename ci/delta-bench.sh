#!/usr/bin/env bash
# Bytes an upgrade over the mesh moves, for BOARD: the share of the whole bundle a node running
# release N fetches (header and the chunks its slot lacks, `meshimg delta`) for three N+1s:
#   version   the version alone changed
#   overlay   the version, a 40 KB file in /etc and a 300 KB file in /usr/lib
#             (ci/fixtures/make-next-overlay.py, the mesh test's N+1)
#   meshd     the version and meshd rebuilt from different code (a copy of the checkout with
#             one constant and one message of meshd changed)
# Usage: ci/delta-bench.sh BOARD   (called by `make bench`; builds four images, unsigned)
set -euo pipefail
board=${1:-qemu-arm64}
cd "$(dirname "$0")/.."
MESHIMG=${MESHIMG:-$PWD/target/debug/meshimg}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
V=$(cargo pkgid -p meshimg | sed 's/.*[#@]//')
build() { # OUT VERSION [ARGS...]
  local out=$1 version=$2; shift 2
  env -u MESHOS_SIGN_KEY "$MESHIMG" build "$board" --out "$out" --image-version "$version" "$@" > "$out.log" 2>&1 \
    || { tail -5 "$out.log"; exit 1; }
  echo "$out/$board/meshos-$board-$version.bundle"
}
base=$(build "$tmp/n" "$V")
ci/fixtures/make-next-overlay.py "$tmp/overlay"
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$(mkdir -p "$tmp/src" && echo "$tmp/src")"
sed -i 's/const LOOK_EVERY: Duration = Duration::from_secs(15);/const LOOK_EVERY: Duration = Duration::from_secs(20);/' "$tmp/src/node-firmware/src/rollout.rs"
sed -i 's/start the daemon (what init does)/start the node daemon (what init does)/' "$tmp/src/node-firmware/src/main.rs"
grep -q 'from_secs(20)' "$tmp/src/node-firmware/src/rollout.rs" || { echo "delta-bench: the meshd change did not apply"; exit 1; }
for change in version overlay meshd; do
  case $change in
    version) next=$(build "$tmp/version" "$V.0.1") ;;
    overlay) next=$(build "$tmp/overlay-out" "$V.0.2" --overlay "$tmp/overlay") ;;
    meshd) next=$(build "$tmp/meshd" "$V.0.3" --root "$tmp/src") ;;
  esac
  "$MESHIMG" delta "$base" "$next" --json > "$tmp/$change.json"
  python3 - "$tmp/$change.json" "$change" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"  {'upgrade over the mesh, ' + sys.argv[2] + ' changed':38} {100 * d['share']:7.2f} %  "
      f"({d['header_bytes'] + d['missing_bytes']} of {d['bundle_bytes']} bytes; {d['missing_chunks']} of {d['chunks']} chunks)")
PY
done
