#!/usr/bin/env bash
# Upstream sources are checked before anything is compiled: a build of BOARD from a mirror
# directory whose cjdns tarball was tampered with (one file of the tree changed, the archive
# made again), and then from one whose tarball is cut short, must each stop at the sources step
# with exit code 4 and an error naming the tarball, and write no image. Uses the packages
# already in the cache and a source cache of its own, so nothing verified earlier is reused.
# Usage: ci/sources-test.sh BOARD (MESHOS_SOURCES: the good mirror directory).
set -euo pipefail
board=${1:-qemu-arm64}
cd "$(dirname "$0")/.."
MESHIMG=${MESHIMG:-target/debug/meshimg}
fail() { echo "sources-test: FAILED: $*" >&2; exit 1; }
[ -n "${MESHOS_SOURCES:-}" ] || fail "MESHOS_SOURCES names no mirror directory of the sources"
good=$(find "$MESHOS_SOURCES" -name cjdns-v22.1.tar.gz | head -1)
[ -n "$good" ] || fail "no cjdns-v22.1.tar.gz under $MESHOS_SOURCES"
work=$(mktemp -d /tmp/meshos-sources-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/mirror" "$work/cache" "$work/tree"
cp "$(dirname "$good")"/*.tar.gz "$work/mirror/"
ln -s "${MESHOS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshos}/sha256" "$work/cache/sha256"

attempt() { # WHAT: build from the mirror; it must stop at the sources, naming the cjdns tarball
  local rc=0
  MESHOS_CACHE=$work/cache "$MESHIMG" build "$board" --out "$work/out" --sources "$work/mirror" > "$work/build.log" 2>&1 || rc=$?
  [ $rc -eq 4 ] || fail "$1: exit $rc, not 4 (integrity): $(tail -5 "$work/build.log")"
  grep -q "$work/mirror/cjdns-v22.1.tar.gz: $2" "$work/build.log" || fail "$1: the error does not name the tarball: $(tail -5 "$work/build.log")"
  ! grep -q 'cross-compile cjdns' "$work/build.log" || fail "$1: the build went on to compile cjdns"
  ! ls "$work/out/$board/"*.img > /dev/null 2>&1 || fail "$1: an image was written"
  echo "sources-test: ok: $1: refused before compiling: $(grep -m1 "cjdns-v22.1.tar.gz:" "$work/build.log" | sed "s|$work/||" | cut -c1-150)"
}

tar -xzf "$good" -C "$work/tree"
top=$(ls "$work/tree")
echo "# one line more" >> "$work/tree/$top/README.md"
tar -C "$work/tree" -cf - "$top" | gzip -n > "$work/mirror/cjdns-v22.1.tar.gz"
attempt "a changed file in the tarball" "its tree has sha256"

head -c 300000 "$good" > "$work/mirror/cjdns-v22.1.tar.gz"
attempt "a tarball cut short" ""
