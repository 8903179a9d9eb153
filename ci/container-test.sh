#!/usr/bin/env bash
# The Dockerfile, built and run with Podman as README.md tells users, from a Debian base made
# here with mmdebstrap (no container registry is reachable): the container's image of BOARD
# must be the host's out/BOARD image, byte for byte, and so must its cjdroute, which the
# container compiles again (a second build of cjdns, with the container's own tools). The
# host's downloaded packages, cargo registry, source mirror and signing key are lent to the
# container as volumes, so nothing is fetched twice; the host's CA bundle goes in as a build
# secret and a read-only file, as a proxy's CA would.
#
# Usage: ci/container-test.sh image      the base and `podman build` (needs only the checkout)
#        ci/container-test.sh run BOARD  `make image` in it (after `meshimg build BOARD --out out`)
#        ci/container-test.sh BOARD      both
set -euo pipefail
cd "$(dirname "$0")/.."
case ${1:-} in
image) steps=(image) board= ;;
run) steps=(run) board=${2:?usage: $0 image | run BOARD | BOARD} ;;
?*) steps=(image run) board=$1 ;;
*) echo "usage: $0 image | run BOARD | BOARD" >&2; exit 2 ;;
esac
export CONTAINERS_CONF=$PWD/ci/containers.conf
work=$(mktemp -d /tmp/meshos-container.XXXXXX)
trap 'rm -rf "$work"' EXIT
base=localhost/meshos-base:bookworm tag=localhost/meshos:test
ca=/etc/ssl/certs/ca-certificates.crt
registry=${CARGO_HOME:-$HOME/.cargo}/registry
cache=${MESHOS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshos}
rust=$(rustc --version | cut -d' ' -f2)

image() {
  local t=$SECONDS
  mmdebstrap --quiet --variant=minbase bookworm "$work/base.tar" http://deb.debian.org/debian
  podman import --quiet "$work/base.tar" "$base" >/dev/null
  echo "container: Debian base made in $((SECONDS - t)) s"
  # The same Rust release as the host's: another one compiles meshd to other bytes.
  t=$SECONDS
  podman build --network host --secret id=ca,src="$ca" -v "$registry:/usr/local/cargo/registry" \
    --build-arg BASE="$base" --build-arg RUST_VERSION="$rust" -t "$tag" . > "$work/build.log" 2>&1 ||
    { tail -30 "$work/build.log"; echo "container: FAIL: podman build (above)" >&2; exit 1; }
  echo "container: podman build in $((SECONDS - t)) s; $(podman image inspect "$tag" --format '{{.Size}}' | awk '{printf "%.2f GB", $1 / 1e9}')"
}

run() {
  podman image exists "$tag" || { echo "container: FAIL: there is no $tag image to run; build it first: ci/container-test.sh image" >&2; exit 1; }
  # The host's downloaded packages, but nothing derived from them: the container indexes the
  # modules and compiles cjdns itself.
  mkdir -p "$work/out" "$work/cache"
  local args=(--rm --network host -v "$work/out:/src/out" -v "$work/cache:/cache" -v "$cache/sha256:/cache/sha256"
    -v "$registry:/usr/local/cargo/registry" -v "$ca:/run/secrets/ca:ro")
  if [ -n "${MESHOS_SOURCES:-}" ]; then args+=(-v "$MESHOS_SOURCES:/sources:ro" -e MESHOS_SOURCES=/sources); fi
  if [ -n "${MESHOS_SIGN_KEY:-}" ]; then
    args+=(-v "$(dirname "$MESHOS_SIGN_KEY"):/keys:ro" -e MESHOS_SIGN_KEY="/keys/$(basename "$MESHOS_SIGN_KEY")")
  fi
  local t=$SECONDS
  podman run "${args[@]}" "$tag" make image BOARD="$board" > "$work/run.log" 2>&1 ||
    { tail -30 "$work/run.log"; echo "container: FAIL: make image in the container (above)" >&2; exit 1; }
  grep -E '^(build: done|cjdns: )' "$work/run.log" || true
  echo "container: make image BOARD=$board in $((SECONDS - t)) s"

  local status=0 cjdroute
  same img.xz "$(sha256sum out/"$board"/meshos-"$board"-*.img.xz | cut -d' ' -f1)" \
    "$(sha256sum "$work"/out/"$board"/meshos-"$board"-*.img.xz | cut -d' ' -f1)" || status=1
  cjdroute=$(ci/report-output.py out/"$board"/meshos-"$board"-*.build-report.json cjdroute)
  if [ -n "$cjdroute" ]; then
    same cjdroute "$cjdroute" "$(ci/report-output.py "$work"/out/"$board"/meshos-"$board"-*.build-report.json cjdroute)" || status=1
  fi
  return $status
}
same() { # WHAT HOST CONTAINER: the two sha256 of WHAT are equal
  if [ "$2" = "$3" ]; then
    echo "container: $board $1 $2 on the host and in the container"
  else
    echo "container: FAIL: $board $1 is $2 on the host, $3 in the container" >&2
    return 1
  fi
}

for step in "${steps[@]}"; do "$step"; done
