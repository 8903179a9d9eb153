#!/usr/bin/env bash
# Installs what building and testing meshos needs on a Debian 12/13 host, only when missing.
# Called by `make image`, `make test` and `make qemu`, and by the Dockerfile; safe to run again
# (does nothing then).
set -euo pipefail

# Usage: ci/setup-host.sh [build|test|all|lab]. `build` installs only what `make image` needs
# (the Dockerfile runs it so); `test` (the default) also what `make check` and `make test` need;
# `all` also what `make test-all` needs (its container test); `lab` also what `make lab` needs
# to build meshd for this machine as the boards have it (static, musl).
mode=${1:-test}
case $mode in build | test | all | lab) ;; *) echo "usage: $0 [build|test|all|lab]" >&2; exit 2 ;; esac

# Host tools: command -> Debian package. What building an image needs:
declare -A need=(
  [make]=make
  [cc]=gcc                      # build scripts of crates with C in them (ring, liblzma)
  [mksquashfs]=squashfs-tools
  [mformat]=mtools
  [mcopy]=mtools
  [mke2fs]=e2fsprogs
  [depmod]=kmod
  [mkimage]=u-boot-tools
  [aarch64-linux-gnu-gcc]=gcc-aarch64-linux-gnu
  [arm-linux-gnueabihf-gcc]=gcc-arm-linux-gnueabihf
  [node]=nodejs                 # cjdns builds its C parts with node_build/make.js
  [gpgv]=gpgv                   # `meshimg lock` checks the archive's InRelease with it, as apt does
)
# What testing needs besides:
[ "$mode" = build ] || need+=(
  [fsck.vfat]=dosfstools
  [sfdisk]=fdisk
  [xz]=xz-utils
  [qemu-system-aarch64]=qemu-system-arm
  [qemu-system-arm]=qemu-system-arm
  [unsquashfs]=squashfs-tools
  [ssh]=openssh-client          # the mesh test logs into a node with a key from its mesh.yaml
  [ssh-keygen]=openssh-client
  [curl]=curl                   # the mesh test reads metrics through a forwarded port
  [python3]=python3             # the power-cut test; the rogue's web server (mesh test, lab)
  [minisign]=minisign           # the stock tool must accept our signatures (tests)
  [gpg]=gpg                     # signs the test archive's InRelease (tests)
  [gpg-agent]=gpg-agent
  [openssl]=openssl             # a test CA and server certificate for installs over https (tests)
  [promtool]=prometheus         # checks and unit-tests monitoring/'s alerting rules (tests)
  [prometheus]=prometheus       # the mesh test's monitoring machine
  [nft]=nftables                # the mesh lab: the share of packets each link loses
  [yggdrasil]=yggdrasil         # the monitoring machine's router (0.5: from backports on bookworm)
  [socat]=socat                 # joins the monitoring machine's tap device to a node's link
  [chromium]=chromium           # the mesh test loads a node's /map in headless Chromium
  [dnsmasq]=dnsmasq-base        # the simulated internet (mesh test, lab): DHCP and DNS for the gateways' uplinks
  [busybox]=busybox             # the lab's gateways: udhcpc for their uplinks, as on the boards
  [ping]=iputils-ping           # the lab's meshd checks its gateway's uplink and tunnel with it
)
[ "$mode" != all ] || need+=(
  [podman]=podman               # the container test builds the Dockerfile and an image in it
  [runc]=runc                   # podman's runtime here (crun refuses hybrid cgroup layouts)
  [mmdebstrap]=mmdebstrap       # the container test's Debian base image, made locally
)
[ "$mode" != lab ] || need+=(
  [musl-gcc]=musl-tools         # the lab's meshd: C parts of its crates (ring) for musl
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
# meshd for armv7 links against glibc (a Recommends of the cross gcc, so name it); its TLS
# crypto (ring) compiles C for both targets against the cross C headers.
[ -f /usr/arm-linux-gnueabihf/lib/crt1.o ] || missing+=(libc6-dev-armhf-cross)
[ -f /usr/include/stdio.h ] || missing+=(libc6-dev)
[ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
[ -f /usr/aarch64-linux-gnu/include/stdint.h ] || missing+=(libc6-dev-arm64-cross)

if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "setup: installing host packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  . /etc/os-release
  # QEMU 10 comes from backports on bookworm: the machine's qemu-utils is from there and
  # bookworm's own qemu-system 7.2 conflicts with it.
  if [ "${VERSION_CODENAME:-}" = bookworm ] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" | $sudo tee /etc/apt/sources.list.d/meshos-backports.list >/dev/null
  fi
  # Unrelated third-party sources on the host may be unreachable; the Debian lists are what matter.
  $sudo apt-get update -qq || echo "setup: warning: apt-get update reported errors (continuing)"
  target=()
  [ "${VERSION_CODENAME:-}" = bookworm ] && target=(-t bookworm-backports)
  # From backports on bookworm: QEMU (qemu-system-arm and qemu-utils from the same suite), and
  # Yggdrasil 0.5, which speaks the nodes' protocol (bookworm's own 0.4 does not).
  newer=() rest=()
  for p in "${missing[@]}"; do
    case $p in
    qemu-system-arm) newer+=(qemu-system-arm qemu-utils) ;;
    yggdrasil) newer+=(yggdrasil) ;;
    *) rest+=("$p") ;;
    esac
  done
  export DEBIAN_FRONTEND=noninteractive
  [ ${#rest[@]} -eq 0 ] || $sudo apt-get install -y -qq --no-install-recommends "${rest[@]}"
  [ ${#newer[@]} -eq 0 ] || $sudo apt-get install -y -qq --no-install-recommends "${target[@]}" "${newer[@]}"
fi

# Rust targets for the node firmware: meshd (musl on arm64, glibc on armv7) and cjdns (glibc).
add_target() {
  rustup target add "$1" && return 0
  # Files of the target left in the toolchain by something other than rustup make it refuse
  # ("detected conflict"); they are not registered, so nothing uses them: remove them, once.
  local lib
  lib=$(rustc --print sysroot)/lib/rustlib
  [ -d "$lib/$1" ] && ! rustup target list --installed | grep -qx "$1" || return 1
  echo "setup: removing unregistered files of Rust target $1 from $lib and adding it again"
  rm -rf "${lib:?}/$1" "$lib/manifest-rust-std-$1"
  rustup target add "$1"
}
if command -v rustup >/dev/null 2>&1; then
  [ "$mode" = build ] || for c in clippy rustfmt; do
    rustup component list --installed | grep -q "^$c" || { echo "setup: adding Rust component $c (make test runs it)"; rustup component add "$c"; }
  done
  targets=(aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf aarch64-unknown-linux-gnu)
  [ "$mode" != lab ] || targets+=(x86_64-unknown-linux-musl)
  for t in "${targets[@]}"; do
    rustup target list --installed | grep -qx "$t" || { echo "setup: adding Rust target $t"; add_target "$t"; }
  done
else
  echo "setup: error: rustup not found; install Rust from https://rustup.rs then run this again" >&2
  exit 1
fi
