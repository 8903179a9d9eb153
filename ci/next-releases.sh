#!/usr/bin/env bash
# The virtual board's next releases, for the tests that upgrade a mesh (ci/mesh-test.sh, the
# mesh lab): built once per run into DIR (default out/next) and shared, so no test builds
# them again. Both carry the next-release overlay (ci/fixtures/make-next-overlay.py: a site file
# and a library, about the size of a one-package change), trust a second key besides
# MESHOS_SIGN_KEY and require two signatures, a community's k of n:
#   DIR/n1/qemu-arm64/meshos-qemu-arm64-V.1.bundle   signed by both keys: nodes on N install it
#   DIR/n2/qemu-arm64/meshos-qemu-arm64-V.2.bundle   signed by MESHOS_SIGN_KEY alone: nodes on
#                                                    N+1 must refuse it at the signature
# Usage: ci/next-releases.sh [DIR] [1|2]...  (default both; needs MESHOS_SIGN_KEY).
set -euo pipefail
cd "$(dirname "$0")/.."
MESHIMG=${MESHIMG:-target/debug/meshimg}
DIR=${1:-out/next}
WANT=${*:2}
: "${MESHOS_SIGN_KEY:?set MESHOS_SIGN_KEY to the key release N was signed with}"
V=$(cargo pkgid -p meshimg | sed 's/.*[#@]//')
mkdir -p "$DIR"
[ -f "$DIR/second.key" ] || "$MESHIMG" keygen --unencrypted -o "$DIR/second.key" > /dev/null
[ -d "$DIR/next-overlay" ] || ci/fixtures/make-next-overlay.py "$DIR/next-overlay"
for n in ${WANT:-1 2}; do
  bundle=$DIR/n$n/qemu-arm64/meshos-qemu-arm64-$V.$n.bundle
  t=$SECONDS
  "$MESHIMG" build qemu-arm64 --bundle-only --out "$DIR/n$n" --image-version "$V.$n" --overlay "$DIR/next-overlay" \
    --trust-key "$DIR/second.key.pub" --signatures-required 2 > "$DIR/n$n.log" 2>&1 \
    || { tail -20 "$DIR/n$n.log" >&2; echo "next-releases: building $V.$n failed (whole log: $DIR/n$n.log)" >&2; exit 1; }
  if [ "$n" = 1 ]; then
    "$MESHIMG" sign "$bundle" --sign-key "$DIR/second.key" > /dev/null 2> "$DIR/sign.log" \
      || { echo "next-releases: adding the second signature to $V.1: $(cat "$DIR/sign.log")" >&2; exit 1; }
  fi
  echo "next-releases: $V.$n in $((SECONDS - t)) s: $bundle"
done
