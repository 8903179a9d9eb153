#!/usr/bin/env bash
# `make test`: unit and integration tests, then end to end with the real locked packages for
# each board: build, check the image with independent tools, boot it in QEMU to the
# 'meshos ready' line; the boards that ship are built again elsewhere (rpi3: in the
# Dockerfile's container) to prove them reproducible.
# The virtual board also runs the mesh test (ci/mesh-test.sh): a line of nodes, routing, a bad
# mesh.yaml, an 802.11s link between simulated radios, and an upgrade that spreads by itself;
# and the A/B rollback and refusals (ci/upgrade-test.sh), power cuts and a hang
# (ci/powercut-test.py). Each real board installs, boots and commits an upgrade through its own
# U-Boot and boot script.
set -uo pipefail
cd "$(dirname "$0")/.."
MESHIMG=${MESHIMG:-target/debug/meshimg}
BOARDS=${BOARDS:-rpi3 orangepi-zero qemu-arm64}
passed=0 failed=0 failures=() started_bg=() bg_pids=() started_idle=() idle_pids=()
has() { [[ " $BOARDS " == *" $1 "* ]]; }

mkdir -p out/test-logs && rm -f out/test-logs/*.log
# Where the reproducibility checks compile meshd from their copies of the checkout (see
# ci/reproducible.sh): once per architecture in a run.
MESHOS_REPRO_TARGET=$(mktemp -d /tmp/meshos-repro-target.XXXXXX)
export MESHOS_REPRO_TARGET
trap 'rm -rf "$MESHOS_REPRO_TARGET"' EXIT
stage_log() { # NAME: where the next stage's output is kept
  echo "out/test-logs/$(printf '%02d' $((passed + failed + ${#started_bg[@]} + ${#started_idle[@]} + 1)))-$(tr -c 'a-z0-9\n' - <<<"${1,,}" | tr -s -).log"
}
stage() { # NAME COMMAND...: run one stage, its output also kept in out/test-logs/
  local name=$1 start=$SECONDS log rc; shift
  log=$(stage_log "$name")
  echo "== $name"
  "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  tally "$name" "$log" "$rc" $((SECONDS - start))
}
tally() { # NAME LOG RC SECONDS: count a stage's result and say it
  if [ "$3" -eq 0 ]; then
    passed=$((passed + 1)); echo "== $1: ok ($4 s)"
  else
    failed=$((failed + 1)) failures+=("$1|$2"); echo "== $1: FAILED ($4 s)"
  fi
}

# What each board's image must hold, beyond what every image holds.
expect() {
  case $1 in
  rpi3)
    export BOOT_FILES="u-boot.bin bootcode.bin start.elf fixup.dat config.txt bcm2837-rpi-3-b.dtb bcm2837-rpi-3-b-plus.dtb a/dtbs/broadcom/bcm2837-rpi-3-b.dtb a/dtbs/broadcom/bcm2837-rpi-3-b-plus.dtb"
    export ROOT_FILES="usr/sbin/fsck.fat usr/lib/firmware/htc_9271.fw usr/lib/firmware/ath9k_htc/htc_9271-1.4.0.fw usr/lib/firmware/rt2870.bin usr/lib/firmware/brcm/brcmfmac43430-sdio.bin usr/lib/firmware/regulatory.db brcmfmac.ko bcm2835-rng.ko ath9k_htc.ko rt2800usb.ko mac80211.ko cfg80211.ko tun.ko squashfs.ko overlay.ko vfat.ko ext4.ko"
    export SPL_AT=
    ;;
  orangepi-zero)
    export BOOT_FILES="a/dtbs/sun8i-h2-plus-orangepi-zero.dtb"
    export ROOT_FILES="usr/sbin/fsck.fat usr/lib/firmware/htc_9271.fw usr/lib/firmware/ath9k_htc/htc_9271-1.4.0.fw usr/lib/firmware/rt2870.bin usr/lib/firmware/regulatory.db ath9k_htc.ko rt2800usb.ko mac80211.ko cfg80211.ko tun.ko squashfs.ko overlay.ko ext4.ko"
    export SPL_AT=8192
    ;;
  qemu-arm64)
    export BOOT_FILES="u-boot.bin"
    export ROOT_FILES="usr/sbin/fsck.fat mac80211_hwsim.ko virtio_net.ko virtio_blk.ko tun.ko usr/lib/firmware/regulatory.db"
    export SPL_AT=
    ;;
  *) export BOOT_FILES="" ROOT_FILES="" SPL_AT= ;;
  esac
}

boot() { # BOARD: boot the image, console to out/BOARD/console.log
  "$MESHIMG" qemu "$1" --out out --expect-ready 900 > "out/$1/console.log" 2>&1
  local rc=$?
  grep -a 'meshos: booting slot\|meshos ready\|qemu:' "out/$1/console.log" | tail -3
  [ $rc -eq 0 ] || tail -40 "out/$1/console.log"
  # The boot script read the record meshimg wrote and counted this attempt.
  grep -aq '^meshos: booting slot a (A 2 left, B 0 left)' "out/$1/console.log" || { echo "no boot-state line from the boot script"; return 1; }
  return $rc
}

# Two stages at a time where one leaves a core idle (a QEMU under TCG keeps about one of the
# two busy): the virtual board's single-VM stages beside the builds; a stage in the background
# keeps its output in its log, shown when it ends. A stage started with --idle runs only on
# what the others leave of the CPU and the disk (the container test: much of it is downloading),
# and only `stage_wait --idle` waits for it.
stage_bg() { # [--after] [--idle] NAME COMMAND...: --after: once the last stage started in the background (with --idle: in the idle one) ends
  local after= idle= name log
  while :; do
    case $1 in
    --after) after=1; shift ;;
    --idle) idle=1; shift ;;
    *) break ;;
    esac
  done
  if [ -n "$after" ]; then
    if [ -n "$idle" ]; then after=${idle_pids[-1]:-}; else after=${bg_pids[-1]:-}; fi
  fi
  name=$1; shift
  log=$(stage_log "$name")
  echo "== $name (in the background; output in $log)"
  (
    if [ -n "$after" ]; then while kill -0 "$after" 2>/dev/null; do sleep 2; done; fi
    start=$SECONDS
    if [ -n "$idle" ]; then chrt --idle 0 ionice -c 3 nice -n 19 "$@"; else "$@"; fi > "$log" 2>&1
    echo "$? $((SECONDS - start))" > "$log.rc"
  ) &
  if [ -n "$idle" ]; then started_idle+=("$name|$log") idle_pids+=($!); else started_bg+=("$name|$log") bg_pids+=($!); fi
}
stage_wait() { # [--idle]: waits for the stages started with stage_bg (--idle: and stage_bg --idle) and counts them
  local stages=("${started_bg[@]}") pids=("${bg_pids[@]}")
  if [ "${1:-}" = --idle ]; then
    stages+=("${started_idle[@]}") pids+=("${idle_pids[@]}")
    started_idle=() idle_pids=()
  fi
  [ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"
  for s in "${stages[@]}"; do
    local name=${s%%|*} log=${s#*|} rc secs
    read -r rc secs < "$log.rc" && rm -f "$log.rc"
    echo "== $name"; cat "$log"
    tally "$name" "$log" "$rc" "$secs"
  done
  started_bg=() bg_pids=()
}

# (PROPTEST_CASES: inputs each property test of a parser tries; see */tests/properties.rs)
stage "cargo tests" env PROPTEST_CASES=4096 cargo test --workspace --locked
stage "cargo fmt --check" cargo fmt --all --check
stage "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
stage "alerting rules (promtool)" sh -c 'promtool check rules monitoring/rules.yml && promtool test rules monitoring/rules-test.yml'
# Images are signed with a key made for this run (no secret is ever committed); the stock
# minisign tool must accept the signature.
rm -rf out/ci-key && mkdir -p out/ci-key
"$MESHIMG" keygen --unencrypted -o out/ci-key/ci.key > /dev/null
export MESHOS_SIGN_KEY=$PWD/out/ci-key/ci.key
signature() { # IMAGE.xz: the image and the update bundle, with minisign and with meshimg
  local bundle=${1%.img.xz}.bundle
  minisign -V -m "$1" -p out/ci-key/ci.key.pub && "$MESHIMG" verify "$1" -p out/ci-key/ci.key.pub &&
    minisign -V -m "$bundle" -p out/ci-key/ci.key.pub && "$MESHIMG" verify "$bundle" -p out/ci-key/ci.key.pub
}
version=$(cargo pkgid -p meshimg | sed 's/.*[#@]//')
image() { echo "out/$1/meshos-$1-$version.img"; }
build() { # BOARD [NICE]: build it, check the image with other tools and its signatures
  stage "build $1" nice -n "${2:-0}" "$MESHIMG" build "$1" --out out
  expect "$1"
  "$MESHIMG" plan "$1" --out out --json > "out/$1/plan.json"
  stage "check $1 image" env PLAN="out/$1/plan.json" ci/check-image.sh "$(image "$1")"
  stage "signatures of $1 image and bundle (minisign -V)" signature "$(image "$1").xz"
}
# The virtual board first: its VM stages (a boot, three nodes running cjdns, then the power cuts
# and the hang) run one after another in the background while the other boards build and the
# Orange Pi builds again elsewhere. The builds run niced: the VM gets its core when it needs
# it (its watchdog and the moments of the cuts depend on it), and the builds take the rest.
if has qemu-arm64; then
  build qemu-arm64
  stage_bg "boot qemu-arm64 in QEMU" boot qemu-arm64
  # cjdns, cross-compiled into the image: three nodes in a line started with router: cjdns.
  stage_bg --after "cjdns on three qemu-arm64 nodes" ci/cjdns-test.sh "$(image qemu-arm64)" 3
  stage_bg --after "power cuts and a hang on qemu-arm64" ci/powercut-test.py
  # The mesh lab (docs/lab.md): 16 real meshd nodes in network namespaces (a line, a ring with
  # a hub, a second island behind one link) roll out N+1 from the image just built by
  # themselves; no VM, so it runs beside the VMs and the builds, its own builds niced.
  stage_bg "mesh lab: rollout over 16 nodes" env TOPOLOGY=mesh-lab/topologies/small.json BOOT_TIME=5 TIMEOUT=900 \
    LAB_PROFILE=dev LAB_RELEASE="$(image qemu-arm64 | sed 's/\.img$/.bundle/')" LAB_OUT=out/lab-test nice -n 5 ci/lab.sh
fi
for board in $BOARDS; do
  [ "$board" = qemu-arm64 ] || build "$board" 10
done
# The boards that ship are built again elsewhere and must give the same image: rpi3 in the
# container test's container (below), the Orange Pi here in another directory, taking cjdroute
# from the first build (its second compile is the container's, for arm64). The virtual board is
# a test vehicle of the same pipeline and arm64 code as rpi3 and is not built twice.
if has orangepi-zero; then
  stage "reproducible orangepi-zero" env MESHOS_REPRO_CJDNS=first nice -n 10 ci/reproducible.sh orangepi-zero
fi
stage_wait
# The mesh alone: its nodes share both cores, and its downloads and failover are what a busy
# machine slows most.
if has qemu-arm64; then
  stage "tampered source tarballs refused before compiling" ci/sources-test.sh qemu-arm64
  stage "mesh of four qemu-arm64 nodes" ci/mesh-test.sh "$(image qemu-arm64)"
fi
# The Dockerfile, built and run with Podman (ci/container-test.sh), idle-scheduled beside the
# upgrade stages, whose VMs leave the CPU idle while they wait on their emulated cards and
# reboots: much of the container's build is downloading, and every package rpi3 needs is in
# the cache by now.
if has rpi3; then
  stage_bg --idle "container image (podman build)" ci/container-test.sh image
  stage_bg --after --idle "rpi3 image built in a container (podman)" ci/container-test.sh run rpi3
fi
# Rollback and refusals are the same meshd and boot script logic on every board: they run on
# the fast virtual board (the refusals include the Orange Pi's bundle). Its single-core VM runs
# beside the Orange Pi's, which keeps to the other host core (see ci/upgrade-test.sh).
if has qemu-arm64 && has orangepi-zero; then
  stage_bg "rollback and refusals on qemu-arm64" ci/upgrade-test.sh qemu-arm64 2 3
fi
# Each real board's own U-Boot and boot script: a fresh card boots and installs N+1, which is
# tried, committed and boots again after a power cycle (scenario 1).
if has orangepi-zero; then
  stage "A/B upgrade on orangepi-zero in orangepi-pc" ci/upgrade-test.sh orangepi-zero 1
fi
stage_wait
# raspi3b keeps both cores busy (four emulated cores): beside the rollback the Pi's took 343 s
# and the rollback 419 s, more than one after the other (164 s and 204 s). So it runs alone.
if has rpi3; then
  stage "A/B upgrade on rpi3 in raspi3b" ci/upgrade-test.sh rpi3 1
fi
stage_wait --idle
# The last lines name what failed, so the tail of a long log is enough to know where to look.
for f in "${failures[@]}"; do
  echo "FAILED: ${f%|*} (whole output in ${f#*|}); its last lines:"
  tail -15 "${f#*|}" | sed 's/^/  | /'
done
echo "$passed passed, $failed failed in $((SECONDS / 60)) min"
[ "$failed" -eq 0 ]
