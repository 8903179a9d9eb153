#!/usr/bin/env bash
# Builds BOARD again from a copy of this checkout in another directory (so meshd is compiled
# there too, and from a package cache with nothing derived, so cjdns is compiled again too) and
# compares the sha256 of .img, .img.xz and cjdroute with out/BOARD.
set -euo pipefail
board=$1
cd "$(dirname "$0")/.."
here=$PWD
MESHIMG=${MESHIMG:-$here/target/debug/meshimg}
other=$(mktemp -d /tmp/meshos-repro.XXXXXX)/elsewhere/meshos
trap 'rm -rf "$(dirname "$(dirname "$other")")"' EXIT
mkdir -p "$other"
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$other"
# make test gives the copies of one run one place to compile meshd in (MESHOS_REPRO_TARGET), so
# a second board of the same architecture reuses the copy's meshd, never the first build's.
if [ -n "${MESHOS_REPRO_TARGET:-}" ]; then
  mkdir -p "$other/target" "$MESHOS_REPRO_TARGET" && ln -s "$MESHOS_REPRO_TARGET" "$other/target/node-firmware"
fi
# The same downloaded packages, but nothing derived from them: the module indexes are computed
# again rather than taken from the first build.
cache=$(dirname "$(dirname "$other")")/cache
main_cache=${MESHOS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshos}
mkdir -p "$cache/derived"
ln -s "$main_cache/sha256" "$cache/sha256"
# cjdns is compiled again too, unless MESHOS_REPRO_CJDNS=first: then cjdroute is taken from the
# first build (make test compiles it a second time in its container test) and only the image
# is compared.
if [ "${MESHOS_REPRO_CJDNS:-}" = first ]; then
  mkdir -p "$main_cache/derived/cjdns" && ln -s "$main_cache/derived/cjdns" "$cache/derived/cjdns"
fi
MESHOS_CACHE=$cache "$MESHIMG" --root "$other" build "$board" --out "$other/out" >/dev/null
status=0
for ext in img img.xz; do
  a=$(sha256sum "$here"/out/"$board"/meshos-"$board"-*."$ext" | cut -d' ' -f1)
  b=$(sha256sum "$other"/out/"$board"/meshos-"$board"-*."$ext" | cut -d' ' -f1)
  if [ "$a" = "$b" ]; then echo "reproducible: $board .$ext $a in both directories"
  else echo "reproducible: FAIL: $board .$ext differs: $a here, $b in $other"; status=1; fi
done
cjdroute() { ci/report-output.py "$1"/out/"$board"/meshos-"$board"-*.build-report.json cjdroute; }
a=$(cjdroute "$here") b=$(cjdroute "$other")
if [ -n "$a" ] && [ "${MESHOS_REPRO_CJDNS:-}" = first ]; then
  echo "reproducible: $board cjdroute $b taken from the first build (compiled once)"
elif [ -n "$a" ]; then
  if [ "$a" = "$b" ]; then echo "reproducible: $board cjdroute $a in both directories"
  else echo "reproducible: FAIL: $board cjdroute differs: $a here, $b in $other"; status=1; fi
fi
exit $status
