#!/usr/bin/env bash
# A/B upgrades in QEMU on a board's real image (default rpi3 in raspi3b). Bundles reach the node
# the offline way, in updates/ on the boot partition (raspi3b has no network card), and what the
# node did is read from its console and, after power-off, from its card:
#   1. N+1's bundle is installed at boot into slot B; the node reboots into B and marks it good;
#      after a power cycle it comes up on B again;
#   2. N+2, whose router never starts, installed into B: it is tried as many times as it has
#      attempts, then the node boots A again by itself and reports the rollback;
#   3. bundles that must be refused are, each with its reason beside it, and the node boots on
#      as before: truncated, payload altered, manifest altered, signed by an untrusted key,
#      another board's, an older version.
# Usage: ci/upgrade-test.sh [BOARD [SCENARIO...]] (default: rpi3, all three; needs MESHOS_SIGN_KEY,
# as make test sets, and the board's image built and signed with it; scenario 3 also the other
# board's bundle: rpi3's for the Orange Pi Zero, the Orange Pi Zero's for any other board); logs
# and cards in out/upgrade-test/BOARD/. The virtual board's refusals take N+1 from
# NEXT_RELEASES when make test gives it (ci/next-releases.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BOARD=${1:-rpi3}
SCENARIOS=" ${*:2} "
[ "$SCENARIOS" != "  " ] || SCENARIOS=" 1 2 3 "
want() { [[ $SCENARIOS == *" $1 "* ]]; }
MESHIMG=${MESHIMG:-target/debug/meshimg}
: "${MESHOS_SIGN_KEY:?set MESHOS_SIGN_KEY to the key the $BOARD image was signed with}"
export MTOOLS_SKIP_CHECK=1 PATH="$PATH:/usr/sbin:/sbin"
V=$(cargo pkgid -p meshimg | sed 's/.*[#@]//')
N=out/$BOARD/meshos-$BOARD-$V
WORK=out/upgrade-test/$BOARD
OTHER_BOARD=$([ "$BOARD" = orangepi-zero ] && echo rpi3 || echo orangepi-zero)
rm -rf "$WORK" && mkdir -p "$WORK" && : > "$WORK/console.log"
node_pid=
fail() {
  echo "upgrade-test: FAILED: $*" >&2
  [ -f "$WORK/console.log" ] && { echo "--- console (tail)" >&2; tail -25 "$WORK/console.log" >&2; }
  exit 1
}
ok() { echo "upgrade-test: ok: $*"; }
wait_for() { # SECONDS CHECK...: until CHECK passes; gives up early once the node's QEMU has exited
  local until=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $until ] || return 1
    [ -z "$node_pid" ] || kill -0 "$node_pid" 2>/dev/null || { "$@" >/dev/null 2>&1; return; }
    sleep 2
  done
}
power_off() { [ -z "$node_pid" ] || { kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; node_pid=; }; }
trap power_off EXIT
# orangepi-pc has four cores, each a host thread. The 32-bit kernel flushes the TLB of every core
# page by page after a module loads (do_free_init), and QEMU makes each such broadcast flush wait
# for every emulated core; with the cores spread over the host's, while others spin in the
# kernel's stop_machine, boots stalled for over a minute (soft lockups on the console) and the
# node's watchdog reset it. Kept on one host core they take turns instead. As root its QEMU
# also goes first when the host is busy.
prio=()
if [ "$BOARD" = orangepi-zero ]; then
  prio=(taskset -c 0)
  if [ "$(id -u)" = 0 ]; then prio+=(nice -n -15); fi
fi
power_on() { # CARD [--boot-file NAME=PATH ...]: boot the card; console appended to $WORK/console.log
  local card=$1; shift
  echo "===== power on $card" >> "$WORK/console.log"
  "${prio[@]}" "$MESHIMG" qemu "$BOARD" --image "$N.img" --card "$card" "$@" >> "$WORK/console.log" 2>&1 &
  node_pid=$!
}
since=0
mark() { since=$(wc -l < "$WORK/console.log"); } # later checks look at the console from here on
count() { tail -n +"$((since + 1))" "$WORK/console.log" | grep -ac "$1" || true; }
seen() { [ "$(count "$1")" -ge "${2:-1}" ]; }
part() { # CARD N OUT: partition N of the card
  local line start size
  line=$(sfdisk -d "$1" | grep 'start=' | sed -n "$2p")
  start=$(echo "$line" | sed -E 's/.*start= *([0-9]+).*/\1/'); size=$(echo "$line" | sed -E 's/.*size= *([0-9]+).*/\1/')
  dd if="$1" of="$3" bs=512 skip="$start" count="$size" status=none
}
record() { # CARD: meshd's upgrade record, from the data partition
  # The node was powered off, not shut down: what it last wrote may still be only in the ext4
  # journal, which debugfs does not read. Replay it on the copy first, as the next mount would.
  local rc=0
  part "$1" 4 "$WORK/data.ext4" || return 1
  e2fsck -p "$WORK/data.ext4" >/dev/null 2>&1 || rc=$?
  [ "$rc" -lt 4 ] || return 1
  debugfs -R "cat /meshd/upgrade.json" "$WORK/data.ext4" 2>/dev/null
}
updates() { # CARD: the names in updates/ on the boot partition
  part "$1" 1 "$WORK/boot.vfat" && mdir -i "$WORK/boot.vfat" -b ::/updates | sed 's|.*/||'
}

t0=$SECONDS
NEXT=$WORK/next/$BOARD/meshos-$BOARD-$V.1.bundle
BROKEN=$WORK/broken/$BOARD/meshos-$BOARD-$V.2.bundle
# The refusals start from N+1; the virtual board's is there already when make test built its
# next releases (ci/next-releases.sh: NEXT_RELEASES).
if [ "$BOARD" = qemu-arm64 ] && [ -n "${NEXT_RELEASES:-}" ] && ! want 1; then
  NEXT=$NEXT_RELEASES/n1/$BOARD/meshos-$BOARD-$V.1.bundle
  [ -f "$NEXT" ] || fail "no N+1 in NEXT_RELEASES: $NEXT"
  ok "N+1 from $NEXT_RELEASES"
else
  nice -n 10 "$MESHIMG" build "$BOARD" --bundle-only --out "$WORK/next" --image-version "$V.1" > "$WORK/build-next.log" 2>&1 || fail "building N+1: $(tail -3 "$WORK/build-next.log")"
fi
if want 2 || want 3; then
  nice -n 10 "$MESHIMG" build "$BOARD" --bundle-only --out "$WORK/broken" --image-version "$V.2" --overlay ci/fixtures/broken-router > "$WORK/build-broken.log" 2>&1 \
    || fail "building the broken N+2: $(tail -3 "$WORK/build-broken.log")"
fi
built=()
[ ! -f "$WORK/build-next.log" ] || built+=("N+1")
! { want 2 || want 3; } || built+=("a broken N+2")
ok "built $(printf '%s and ' "${built[@]}" | sed 's/ and $//') in $((SECONDS - t0)) s; bundle $(du -m "$NEXT" | cut -f1) MiB, image .img.xz $(du -m "$N.img.xz" | cut -f1) MiB"
printf 'apiVersion: meshos/v1\nupgrade:\n  healthTimeout: 25\n' > "$WORK/mesh.yaml"

# --- 1: offline install from updates/, reboot into B, commit, stays on B after a power cycle.
if want 1; then
  t1=$SECONDS
  power_on "$WORK/card1.img" --boot-file "mesh.yaml=$WORK/mesh.yaml" --boot-file "updates/$(basename "$NEXT")=$NEXT"
  wait_for 600 seen "upgrade: installing /boot/updates/$(basename "$NEXT")" || fail "N did not start installing the bundle in updates/"
  # The boot script read the record meshimg wrote on the fresh card and counted this attempt.
  seen '^meshos: booting slot a (A 2 left, B 0 left)' || fail "no boot-state line from the boot script on the fresh card"
  t_install=$SECONDS
  wait_for 600 seen "upgrade: $V.1 installed; rebooting into it" || fail "the install did not finish"
  install_s=$((SECONDS - t_install))
  wait_for 900 seen "^meshos ready version=$V.1 board=$BOARD slot=b" || fail "N+1 never came up in slot B"
  installed=$((SECONDS - t1))
  wait_for 300 seen '^meshd: slot B healthy, marked good' || fail "slot B was not marked good"
  ok "N installed N+1 from updates/ into slot B (about $install_s s), rebooted into it ($installed s after power-on) and marked it good ($((SECONDS - t1)) s, $(count '^meshos: booting slot') boots)"
  # The first boot may wait for the kernel's random numbers; it leaves a seed, so no later one does.
  waits=$(count '^meshd: random: waiting')
  [ "$waits" -le 1 ] || fail "meshd waited for random numbers on $waits boots; the seed saved on the data partition should spare every boot after the first"
  said=$(grep -a '^meshd: random: ' "$WORK/console.log" | sed 's/^meshd: random: //' | paste -sd ';' | cut -c1-200 || true)
  ok "random numbers: ${said:-meshd waited for them at no boot}"
  power_off
  record "$WORK/card1.img" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["step"] == "committed" and d["target"] == "B", d' \
    || fail "upgrade record: $(record "$WORK/card1.img")"
  ! updates "$WORK/card1.img" | grep -q '\.bundle$' || fail "the installed bundle is still in updates/"
  mark
  # On the Orange Pi the power cycle also switches the committed node to cjdns (router: cjdns in
  # mesh.yaml, no other step): its armv7 cjdroute, built for no other board, makes the node's
  # keys, and its address is cjdns's. (The Pi's cjdroute is the arm64 one the virtual board's
  # cjdns stage runs.)
  cjdns= again=()
  if [ "$BOARD" = orangepi-zero ]; then
    cjdns=$(ci/report-output.py "$N.build-report.json" cjdroute)
    [ -n "$cjdns" ] || fail "the $BOARD image carries no cjdroute (its build report names none)"
    printf 'apiVersion: meshos/v1\nrouter: cjdns\n' > "$WORK/mesh-cjdns.yaml"
    again=(--boot-file "mesh.yaml=$WORK/mesh-cjdns.yaml")
  fi
  power_on "$WORK/card1.img" "${again[@]}"
  wait_for 600 seen "^meshos ready version=$V.1 board=$BOARD slot=b" || fail "after a power cycle the node did not come back on slot B"
  seen '^meshos: boot state: order B A' || fail "the boot state does not put B first"
  ok "the record says committed, updates/ is empty, and after a power cycle the node boots slot B again"
  if [ -n "$cjdns" ]; then
    wait_for 120 seen 'overlay address fc' || fail "with router: cjdns the node has no cjdns (fc00::/8) address: $(tail -n +"$((since + 1))" "$WORK/console.log" | grep -a 'meshd: .*\(router\|cjdns\|overlay\)' | head -5)"
    ok "with router: cjdns its own cjdroute made its keys: $(tail -n +"$((since + 1))" "$WORK/console.log" | grep -a 'overlay address' | head -1 | tr -d '\r')"
  fi
  power_off
fi

# --- 3: refusals, each with its reason on the card, and the node boots on as before.
if want 3; then
  mkdir -p "$WORK/bad"
  split_bundle() { # BUNDLE: manifest and the rest, for re-signing
    python3 - "$1" "$WORK/bad" <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<I", b[16:20])[0]
s = struct.unpack("<I", b[20 + n:24 + n])[0]
open(sys.argv[2] + "/manifest", "wb").write(b[20:20 + n])
open(sys.argv[2] + "/head", "wb").write(b[:20 + n])
open(sys.argv[2] + "/payload", "wb").write(b[24 + n + s:])
PY
  }
  mk() { # NAME: a bad bundle
    case $1 in
      truncated) head -c 5000000 "$NEXT" ;;
      # (N+2's: newer than what runs, so the check that fails is the payload's)
      payload) python3 -c 'import sys; b=bytearray(open(sys.argv[1],"rb").read()); b[-100000]^=1; sys.stdout.buffer.write(b)' "$BROKEN" ;;
      manifest) python3 -c 'import sys; b=bytearray(open(sys.argv[1],"rb").read()); i=b.index(b"\"build_id\":\"")+12; b[i]^=1; sys.stdout.buffer.write(b)' "$NEXT" ;;
      untrusted)
        "$MESHIMG" keygen --unencrypted --force -o "$WORK/bad/other.key" > /dev/null 2>&1
        split_bundle "$NEXT"
        "$MESHIMG" sign "$WORK/bad/manifest" --sign-key "$WORK/bad/other.key" > /dev/null
        cat "$WORK/bad/head"
        python3 -c 'import struct,sys; s=open(sys.argv[1],"rb").read(); sys.stdout.buffer.write(struct.pack("<I", len(s)) + s)' "$WORK/bad/manifest.minisig"
        cat "$WORK/bad/payload"
        ;;
      board) cat "out/$OTHER_BOARD/meshos-$OTHER_BOARD-$V.bundle" ;;
      older) cat "$N.bundle" ;;
    esac > "$WORK/bad/$1.bundle"
  }
  # name on the card | reason expected in its .rejected.txt
  REFUSALS=("1-truncated|cut short" "2-manifest|signature" "3-untrusted|does not trust"
    "4-board|is for meshos-$OTHER_BOARD" "5-older|is not newer" "6-payload|payload was altered")
  files=()
  for r in "${REFUSALS[@]}"; do
    name=${r%%|*}
    mk "${name#*-}"
    files+=(--boot-file "updates/$name.bundle=$WORK/bad/${name#*-}.bundle")
  done
  t3=$SECONDS
  mark
  power_on "$WORK/card3.img" --boot-file "mesh.yaml=$WORK/mesh.yaml" "${files[@]}"
  wait_for 900 seen "^meshos ready version=$V board=$BOARD slot=a" || fail "the node did not come up on slot A with bad bundles in updates/"
  [ "$(count 'upgrade: .* refused: ')" -eq 6 ] || fail "expected 6 refusals on the console, saw $(count 'upgrade: .* refused: ')"
  wait_for 120 seen '^meshd: slot A healthy, marked good' || fail "slot A was not marked good"
  power_off
  names=$(updates "$WORK/card3.img")
  part "$WORK/card3.img" 1 "$WORK/boot.vfat"
  for r in "${REFUSALS[@]}"; do
    name=${r%%|*} why=${r#*|}
    grep -qx "$name.bundle.rejected" <<<"$names" || fail "$name: not renamed .rejected (updates/ has: $names)"
    reason=$(mtype -i "$WORK/boot.vfat" "::/updates/$name.rejected.txt") || fail "$name: no .rejected.txt"
    grep -q "$why" <<<"$reason" || fail "$name: expected '$why' in: $reason"
    ok "refused ${name#*-} bundle: $(cut -c1-120 <<<"$reason")"
  done
  mark
  power_on "$WORK/card3.img"
  wait_for 600 seen "^meshos ready version=$V board=$BOARD slot=a" || fail "after the refusals the node did not boot slot A again"
  seen '^meshos: boot state: order A,' || fail "the boot state changed: $(grep -a 'meshos: boot state' "$WORK/console.log" | tail -1)"
  [ "$(count 'upgrade: installing')" -eq 0 ] || fail "rejected bundles were tried again"
  power_off
  ok "six refusals in $((SECONDS - t3)) s; nothing is tried twice, and the node boots slot A ($V) as before"
fi

# --- 2: a slot that never becomes healthy is rolled back from, by the node alone.
if want 2; then
  t2=$SECONDS
  mark
  power_on "$WORK/card2.img" --boot-file "mesh.yaml=$WORK/mesh.yaml" --boot-file "updates/$(basename "$BROKEN")=$BROKEN"
  wait_for 1500 seen '^meshd: ROLLBACK: slot B ran out of boot attempts; slot A is running' || fail "no rollback to slot A"
  tries=$(count "^meshos: booting slot b")
  [ "$tries" -ge 3 ] || fail "slot B was tried $tries times, expected 3"
  seen "^meshos ready version=$V board=$BOARD slot=a" || fail "no ready line from slot A after the rollback"
  power_off
  record "$WORK/card2.img" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["step"] == "rolled_back" and d["target"] == "B", d' \
    || fail "upgrade record after the rollback: $(record "$WORK/card2.img")"
  ok "broken N+2 in slot B was tried $tries times, then the node booted slot A by itself and recorded the rollback ($((SECONDS - t2)) s)"
fi
echo "upgrade-test: all checks of scenarios${SCENARIOS% } passed on $BOARD in $((SECONDS - t0)) s"
