#!/usr/bin/env bash
# The tests, in three tiers (docs/testing.md names the tier of every check):
#   TIER=check  `make check`: unit and integration tests, fmt, clippy, the alerting rules, the
#               virtual board built and booted once, and the mesh lab's rollout on 16 nodes;
#   TIER=test   `make test` (what CI runs): besides, every board built with the real locked
#               packages and checked with independent tools, the Orange Pi built again
#               elsewhere to prove it reproducible, each real board booted through its own
#               U-Boot (the Orange Pi on its own armv7 cjdroute), cjdns on
#               three nodes, the mesh of two (ci/mesh-test.sh), the mesh lab's faults,
#               monitoring and hostile neighbour, the A/B rollback and refusals (ci/upgrade-test.sh) and three
#               power cuts and a hang (ci/powercut-test.py) on the virtual board;
#   TIER=all    `make test-all`, for a release: besides, the Dockerfile's container built and
#               rpi3 built in it (the same image bit for bit), the A/B upgrades through the
#               Pi's and the Orange Pi's U-Boot, twelve power cuts, and the rollout and monitoring over Freifunk
#               Ulm's 217 nodes.
set -uo pipefail
cd "$(dirname "$0")/.."
MESHIMG=${MESHIMG:-target/debug/meshimg}
TIER=${TIER:-test}
case $TIER in check | test | all) ;; *) echo "test: TIER is check, test or all" >&2; exit 2 ;; esac
BOARDS=${BOARDS:-$([ "$TIER" = check ] && echo qemu-arm64 || echo rpi3 orangepi-zero qemu-arm64)}
passed=0 failed=0 failures=() started_bg=() bg_pids=() started_idle=() idle_pids=()
has() { [[ " $BOARDS " == *" $1 "* ]]; }
tier() { # check|test|all: whether this run's tier includes that one
  case $1 in check) true ;; test) [ "$TIER" != check ] ;; all) [ "$TIER" = all ] ;; esac
}

mkdir -p out/test-logs && rm -f out/test-logs/*.log
# Where the reproducibility checks compile meshd from their copies of the checkout (see
# ci/reproducible.sh): once per architecture in a run.
MESHOS_REPRO_TARGET=$(mktemp -d /tmp/meshos-repro-target.XXXXXX)
export MESHOS_REPRO_TARGET
trap 'rm -rf "$MESHOS_REPRO_TARGET"' EXIT
stage_log() { # NAME: where the next stage's output is kept
  echo "out/test-logs/$(printf '%02d' $((passed + failed + ${#started_bg[@]} + ${#started_idle[@]} + 1)))-$(tr -c 'a-z0-9\n' - <<<"${1,,}" | tr -s -).log"
}
# The CPU time a stage took, all its processes together (the user and system time of the
# subshell's children, from bash's `times`), written to LOG.cpu: with two cores, what the run
# costs is these times added up, not the stages' lengths.
measured() { # LOG COMMAND...: run it in a subshell and keep its CPU seconds
  local log=$1; shift
  (
    "$@"; rc=$?
    times > "$log.cpu"  # (not in a pipe: a pipe's subshell has no children of its own)
    awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, t, "m"); s += t[1] * 60 + t[2] } printf "%d\n", s }' "$log.cpu" > "$log.cpu.s"
    mv "$log.cpu.s" "$log.cpu"
    exit $rc
  )
}
stage() { # NAME COMMAND...: run one stage, its output also kept in out/test-logs/
  local name=$1 start=$SECONDS log rc; shift
  log=$(stage_log "$name")
  echo "== $name"
  measured "$log" "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  tally "$name" "$log" "$rc" $((SECONDS - start))
}
tally() { # NAME LOG RC SECONDS: count a stage's result and say it, with its CPU time
  local cpu
  cpu=$(cat "$2.cpu" 2>/dev/null) && rm -f "$2.cpu"
  if [ "$3" -eq 0 ]; then
    passed=$((passed + 1)); echo "== $1: ok ($4 s, CPU ${cpu:-?} s)"
  else
    failed=$((failed + 1)) failures+=("$1|$2"); echo "== $1: FAILED ($4 s, CPU ${cpu:-?} s)"
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

boot() { # BOARD [QEMU-ARGS...]: boot the image, console to out/BOARD/console.log
  local board=$1 prio=(); shift
  # orangepi-pc's four cores on one host core, first when the host is busy (ci/upgrade-test.sh
  # says why).
  if [ "$board" = orangepi-zero ]; then
    prio=(taskset -c 0)
    if [ "$(id -u)" = 0 ]; then prio+=(nice -n -15); fi
  fi
  "${prio[@]}" "$MESHIMG" qemu "$board" --out out --expect-ready 900 "$@" > "out/$board/console.log" 2>&1
  local rc=$?
  grep -a 'meshos: booting slot\|meshos ready\|qemu:' "out/$board/console.log" | tail -3
  [ $rc -eq 0 ] || tail -40 "out/$board/console.log"
  # The boot script read the record meshimg wrote and counted this attempt.
  grep -aq '^meshos: booting slot a (A 2 left, B 0 left)' "out/$board/console.log" || { echo "no boot-state line from the boot script"; return 1; }
  return $rc
}
# A node whose mesh.yaml is malformed boots on the defaults and names the key and the line.
boot_malformed() { # BOARD
  boot "$1" --boot-file mesh.yaml=ci/fixtures/malformed-mesh.yaml || return 1
  grep -a 'config error' "out/$1/console.log" | head -1
  grep -aq 'meshd: config error: /boot/mesh.yaml:4: mesh.frequncy: unknown field `frequncy`' "out/$1/console.log" ||
    { echo "the console does not name mesh.frequncy at line 4 of mesh.yaml"; return 1; }
}

# A node told `router: cjdns` in its mesh.yaml: its own cjdroute (the Orange Pi's is armv7, built
# for no other board) makes the node's keys, and its address is cjdns's.
boot_on_cjdns() { # BOARD
  printf 'apiVersion: meshos/v1\nrouter: cjdns\n' > "out/$1/mesh-cjdns.yaml"
  boot "$1" --boot-file "mesh.yaml=out/$1/mesh-cjdns.yaml" || return 1
  grep -a 'overlay address fc' "out/$1/console.log" | head -1 | tr -d '\r'
  grep -aq 'overlay address fc' "out/$1/console.log" || { echo "with router: cjdns the node has no cjdns (fc00::/8) address"; return 1; }
}

# Stages in the background, so that the two cores are kept busy: the VM stages of each chain
# (`--chain NAME`) one after another, the chains beside each other and beside the builds in
# the foreground; a stage in the background keeps its output in its log, shown when it ends. A
# stage started with --idle runs only on what the others leave of the CPU and the disk (the
# container test: much of it is downloading), and only `stage_wait --idle` waits for it.
declare -A chain_last=()
stage_bg() { # [--chain NAME] [--after CHAIN] [--idle] STAGE COMMAND...: --chain: once the
  # chain's last stage ends, and the stage becomes its last; --after: also once that chain's
  # last stage (so far) ends
  local chain= idle= after=() name log
  while :; do
    case $1 in
    --chain) chain=$2; after+=("${chain_last[$2]:-}"); shift 2 ;;
    --after) after+=("${chain_last[$2]:-}"); shift 2 ;;
    --idle) idle=1; shift ;;
    *) break ;;
    esac
  done
  name=$1; shift
  log=$(stage_log "$name")
  echo "== $name (in the background; output in $log)"
  (
    for p in "${after[@]}"; do
      [ -z "$p" ] || while kill -0 "$p" 2>/dev/null; do sleep 2; done
    done
    start=$SECONDS
    if [ -n "$idle" ]; then measured "$log" chrt --idle 0 ionice -c 3 nice -n 19 "$@"; else measured "$log" "$@"; fi > "$log" 2>&1
    echo "$? $((SECONDS - start))" > "$log.rc"
  ) &
  [ -z "$chain" ] || chain_last[$chain]=$!
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

stage "cargo fmt --check" cargo fmt --all --check
stage "alerting rules (promtool)" sh -c 'promtool check rules monitoring/rules.yml && promtool test rules monitoring/rules-test.yml'
# The unit tests and clippy beside the first build, whose downloads, source checks and meshd's
# link leave a core idle for minutes. The stages run a copy of meshimg: cargo test may link
# target/debug/meshimg again (with the tests' features) while a build is running it.
if [ "$MESHIMG" = target/debug/meshimg ]; then
  mkdir -p out/bin && cp target/debug/meshimg out/bin/meshimg && MESHIMG=$PWD/out/bin/meshimg
fi
export MESHIMG
# (PROPTEST_CASES: inputs each property test of a parser tries; see */tests/properties.rs)
stage_bg --chain rust "cargo tests" env PROPTEST_CASES=4096 cargo test --workspace --locked
stage_bg --chain rust "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
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
# The virtual board first. Its next releases (N+1 and N+2, ci/next-releases.sh) are built once
# for the tests that upgrade a mesh (chain next). Then chains of VM stages and the mesh lab run
# in the background while the other boards build (niced: a VM gets its core when it needs it;
# its watchdog and the moments of the cuts depend on it) and the Orange Pi builds again
# elsewhere. Once the builds are done the cores idle unless the chains are short, so the
# longest ones (the lab's, the mesh of two) start early and wait for nothing:
#   vm      the virtual board: a boot, three nodes running cjdns, the mesh of two (whose VMs
#           wait on timers most of the time);
#   power   beside it, the power cuts and the hang;
#   lab     the mesh lab's hostile neighbour, then its gateways, monitoring and a bad release
#           past its canary: no VM, little CPU but long waits
#           on meshd's timers, so it runs at the builds' priority;
#   faults  beside it, a second lab (another LAB_NAME): the rollout with faults, once N+1 is
#           built;
#   orangepi  from the Orange Pi's image on: its boot through its own U-Boot and boot script,
#           on its own cjdroute (make test-all: a fresh card installs N+1, which is tried,
#           committed and boots again after a power cycle); its QEMU keeps to one host core;
#   boards  beside it, the rollback and refusals (the same meshd and boot script logic on
#           every board, so on the fast virtual board, with the Orange Pi's bundle as another
#           board's);
#   rpi3    from rpi3's image on: the Pi's boot to 'meshos ready' through its own U-Boot
#           (make test-all: its A/B upgrade).
if has qemu-arm64; then
  build qemu-arm64
  lab_release=$(image qemu-arm64 | sed 's/\.img$/.bundle/')
  if tier test; then
    # First (its 16 meshd full of signed records take the most CPU of the lab's scenarios, and
    # the mesh of two, whose VMs time out when starved, has not reached its network checks
    # yet) a hostile neighbour beside the hub: fake nodes, forged gateway records, a false
    # gateway, held connections; every node keeps its real gateway and its view (docs/lab.md).
    stage_bg --chain lab "mesh lab: a hostile neighbour among 16 nodes" env TOPOLOGY=mesh-lab/topologies/small.json SCENARIO=hostile BOOT_TIME=5 TIMEOUT=900 \
      LAB_PROFILE=dev LAB_RELEASE="$lab_release" LAB_OUT=out/lab-hostile ci/lab.sh
    # The mesh lab's gateways (docs/lab.md): the two nodes farthest apart of the 16 have
    # uplinks; every node reaches a web server by name, then one uplink is cut and all move to
    # the other gateway, but for the one its allow list leaves out. It needs only release N.
    stage_bg --chain lab "mesh lab: gateways over 16 nodes" env TOPOLOGY=mesh-lab/topologies/small.json SCENARIO=gateways BOOT_TIME=5 TIMEOUT=900 \
      LAB_PROFILE=dev LAB_RELEASE="$lab_release" LAB_OUT=out/lab-gateways ci/lab.sh
    # Beside the Orange Pi's build; the stages that take them wait for them (--after next).
    rm -rf out/next
    stage_bg --chain next "next releases of qemu-arm64 (N+1, N+2)" ci/next-releases.sh out/next
    export NEXT_RELEASES=$PWD/out/next
  fi
  stage_bg --chain vm "boot qemu-arm64 in QEMU, its mesh.yaml malformed" boot_malformed qemu-arm64
  if tier test; then
    # cjdns, cross-compiled into the image: three nodes in a line started with router: cjdns.
    stage_bg --chain vm "cjdns on three qemu-arm64 nodes" ci/cjdns-test.sh "$(image qemu-arm64)" 3
    rounds=3; tier all && rounds=12
    stage_bg --chain power "power cuts ($rounds) and a hang on qemu-arm64" env POWERCUT_ROUNDS=$rounds ci/powercut-test.py
    stage_bg --chain vm --after next "mesh of two qemu-arm64 nodes" ci/mesh-test.sh "$(image qemu-arm64)"
  fi
  # The mesh lab (docs/lab.md): 16 real meshd nodes in network namespaces (a line, a ring with
  # a hub, a second island behind one link) take N+1 from one of them by themselves; with
  # faults (make test): loss, a power cut mid-fetch, an island cut off, a rogue neighbour. Then
  # a monitoring host's Prometheus finds and scrapes them all.
  scenario=rollout; tier test && scenario=faults
  lab_update=()
  tier test && lab_update=(LAB_UPDATE="$NEXT_RELEASES/n1/qemu-arm64/meshos-qemu-arm64-$version.1.bundle"
    LAB_ROGUE_THEN="$NEXT_RELEASES/n2/qemu-arm64/meshos-qemu-arm64-$version.2.bundle")
  # A lab of its own name (LAB_NAME) beside the gateways' and the monitoring's: its rollout
  # waits on meshd's timers for a quarter of an hour, on little CPU.
  stage_bg --chain faults --after next "mesh lab: $scenario over 16 nodes" env TOPOLOGY=mesh-lab/topologies/small.json SCENARIO=$scenario BOOT_TIME=5 TIMEOUT=1200 \
    LAB_NAME=$scenario LAB_PROFILE=dev LAB_RELEASE="$lab_release" "${lab_update[@]}" LAB_OUT=out/lab-test ci/lab.sh
  if tier test; then
    stage_bg --chain lab "mesh lab: monitoring over 16 nodes" env TOPOLOGY=mesh-lab/topologies/small.json SCENARIO=monitoring BOOT_TIME=5 TIMEOUT=600 \
      LAB_PROFILE=dev LAB_RELEASE="$lab_release" LAB_OUT=out/lab-monitoring ci/lab.sh
    # N+1 working on the hub alone (docs/lab.md): the first neighbour to roll it back reports
    # it and the others hold it. Mostly waiting (three failed boots a node), on little CPU.
    stage_bg --chain lab --after next "mesh lab: a bad release past its canary, 16 nodes" env TOPOLOGY=mesh-lab/topologies/small.json SCENARIO=bad-release BOOT_TIME=5 \
      TIMEOUT=1200 LAB_PROFILE=dev LAB_RELEASE="$lab_release" LAB_UPDATE="$NEXT_RELEASES/n1/qemu-arm64/meshos-qemu-arm64-$version.1.bundle" LAB_OUT=out/lab-bad-release ci/lab.sh
  fi
fi
# The Orange Pi first and at full priority: its build (armv7 meshd and cjdns, compiled cold)
# heads the longest chain of what follows (its upgrade, its second build). Then rpi3, which
# takes the virtual board's arm64 meshd and cjdns, so its build is short.
if has orangepi-zero; then
  build orangepi-zero
  # Its boot through its own U-Boot, on its own cjdroute; its A/B upgrade (the same meshd and
  # boot script the virtual board's nodes install, try, commit and roll back with) is
  # make test-all's, as the Pi's is.
  if tier all; then
    stage_bg --chain orangepi "A/B upgrade on orangepi-zero in orangepi-pc" ci/upgrade-test.sh orangepi-zero 1
  else
    stage_bg --chain orangepi "boot orangepi-zero in orangepi-pc, on cjdns" boot_on_cjdns orangepi-zero
  fi
  if has qemu-arm64 && tier test; then
    stage_bg --chain boards --after next "rollback and refusals on qemu-arm64" ci/upgrade-test.sh qemu-arm64 2 3
  fi
fi
if has rpi3; then
  build rpi3 10
  if tier all; then
    stage_bg --chain rpi3 "A/B upgrade on rpi3 in raspi3b" ci/upgrade-test.sh rpi3 1
  else
    stage_bg --chain rpi3 "boot rpi3 in raspi3b" boot rpi3
  fi
fi
# The boards that ship are built again elsewhere and must give the same image: the Orange Pi
# here in another directory, taking cjdroute from the first build; rpi3 in the Dockerfile's
# container (make test-all). The virtual board is a test vehicle of the same pipeline and arm64
# code as rpi3 and is not built twice.
if has orangepi-zero; then
  stage "reproducible orangepi-zero" env MESHOS_REPRO_CJDNS=first nice -n 10 ci/reproducible.sh orangepi-zero
fi
if has qemu-arm64 && tier test; then
  stage "tampered source tarballs refused before compiling" ci/sources-test.sh qemu-arm64
fi
# The Dockerfile, built and run with Podman (ci/container-test.sh), idle-scheduled: much of
# its build is downloading, and every package rpi3 needs is in the cache by now.
if has rpi3 && tier all; then
  stage_bg --chain container --idle "container image (podman build)" ci/container-test.sh image
  stage_bg --chain container --idle "rpi3 image built in a container (podman)" ci/container-test.sh run rpi3
fi
stage_wait
if has qemu-arm64 && tier all; then
  stage "mesh lab: rollout over Freifunk Ulm (217 nodes)" env TOPOLOGY=mesh-lab/topologies/freifunk-ulm.json SCENARIO=rollout \
    LAB_RELEASE="$lab_release" LAB_UPDATE="$NEXT_RELEASES/n1/qemu-arm64/meshos-qemu-arm64-$version.1.bundle" \
    LAB_OUT=out/lab-ulm ci/lab.sh
  stage "mesh lab: monitoring over Freifunk Ulm (217 nodes)" env TOPOLOGY=mesh-lab/topologies/freifunk-ulm.json SCENARIO=monitoring \
    LAB_RELEASE="$lab_release" LAB_OUT=out/lab-ulm-monitoring ci/lab.sh
fi
stage_wait --idle
# The last lines name what failed, so the tail of a long log is enough to know where to look.
for f in "${failures[@]}"; do
  echo "FAILED: ${f%|*} (whole output in ${f#*|}); its last lines:"
  tail -15 "${f#*|}" | sed 's/^/  | /'
done
echo "$passed passed, $failed failed in $((SECONDS / 60)) min"
[ "$failed" -eq 0 ]
