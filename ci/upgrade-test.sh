#!/usr/bin/env bash
# A/B upgrades in QEMU on the qemu-arm64 image `make test` built and signed (version N):
#   1. N+1's bundle, dropped into updates/ on the boot partition, is installed at boot into
#      slot B; the node reboots into B, marks it good, and a further reboot stays on B;
#   3. bundles that must be refused are, with the reason, and the running system is untouched:
#      truncated, payload altered, manifest altered, signed by an untrusted key, another
#      board's, an older version;
#   2. N+2, whose router never starts, installed into A: it is tried as many times as it has
#      attempts, then the node boots B again by itself and reports the rollback.
# Usage: ci/upgrade-test.sh (needs MESHOS_SIGN_KEY, as make test sets); logs in out/upgrade-test/.
set -euo pipefail
cd "$(dirname "$0")/.."
MESHIMG=${MESHIMG:-target/debug/meshimg}
: "${MESHOS_SIGN_KEY:?set MESHOS_SIGN_KEY to the key the qemu-arm64 image was signed with}"
V=$(cargo pkgid -p meshimg | sed 's/.*[#@]//')
N=out/qemu-arm64/meshos-qemu-arm64-$V
WORK=out/upgrade-test
PORT=${UPGRADE_TEST_PORT:-20300}
rm -rf "$WORK" && mkdir -p "$WORK"
fail() { echo "upgrade-test: FAILED: $*" >&2; echo "--- console (tail)" >&2; tail -25 "$WORK/console.log" >&2; exit 1; }
ok() { echo "upgrade-test: ok: $*"; }
wait_for() { local until=$((SECONDS + $1)); shift; until "$@" >/dev/null 2>&1; do [ $SECONDS -lt $until ] || return 1; sleep 2; done; }

t0=$SECONDS
"$MESHIMG" build qemu-arm64 --out "$WORK/next" --image-version "$V.1" > "$WORK/build-next.log" 2>&1 || fail "building N+1: $(tail -3 "$WORK/build-next.log")"
"$MESHIMG" build qemu-arm64 --out "$WORK/broken" --image-version "$V.2" --overlay ci/fixtures/broken-router > "$WORK/build-broken.log" 2>&1 \
  || fail "building the broken N+2: $(tail -3 "$WORK/build-broken.log")"
NEXT=$WORK/next/qemu-arm64/meshos-qemu-arm64-$V.1.bundle
BROKEN=$WORK/broken/qemu-arm64/meshos-qemu-arm64-$V.2.bundle
ok "built N+1 and a broken N+2 in $((SECONDS - t0)) s; bundle $(du -m "$NEXT" | cut -f1) MiB, image .img.xz $(du -m "$N.img.xz" | cut -f1) MiB"

ssh-keygen -q -t ed25519 -N "" -C upgrade-test -f "$WORK/key"
cat > "$WORK/mesh.yaml" <<YAML
apiVersion: meshos/v1
ssh:
  authorizedKeys:
    - $(cat "$WORK/key.pub")
upgrade:
  healthTimeout: 25
YAML
"$MESHIMG" qemu qemu-arm64 --image "$N.img" --forward "$PORT:22" --boot-file "mesh.yaml=$WORK/mesh.yaml" \
  --boot-file "updates/$(basename "$NEXT")=$NEXT" > "$WORK/console.log" 2>&1 &
qemu_pid=$!
trap 'kill $qemu_pid 2>/dev/null || true; wait 2>/dev/null || true' EXIT
on() { ssh -q -i "$WORK/key" -p "$PORT" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10 root@127.0.0.1 "$@"; }
count() { grep -ac "$1" "$WORK/console.log" || true; }
ready_b() { [ "$(count "^meshos ready version=$V.1 board=qemu-arm64 slot=b")" -ge "$1" ]; }
good_b() { [ "$(count '^meshd: slot B healthy, marked good')" -ge "$1" ]; }

# --- 1: offline install from updates/, reboot into B, commit, stays on B.
t1=$SECONDS
wait_for 400 ready_b 1 || fail "N+1 never came up in slot B"
ok "N booted, installed N+1 from updates/ into slot B and rebooted into it: 'meshos ready version=$V.1 slot=b' after $((SECONDS - t1)) s"
grep -aq "upgrade: installing /boot/updates/$(basename "$NEXT")" "$WORK/console.log" || fail "no install line"
wait_for 120 good_b 1 || fail "slot B was not marked good"
ok "slot B passed its health check and was marked good ($((SECONDS - t1)) s after power-on)"
wait_for 60 on true || fail "ssh to the node"
on meshd upgrade status --json > "$WORK/status1.json"
python3 - "$WORK/status1.json" "$V.1" <<'PY' || fail "upgrade status after the install: $(cat "$WORK/status1.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["running_slot"] == "B" and d["version"] == sys.argv[2] and d["boot_order"] == ["B", "A"] and d["b_left"] == 3, d
assert d["last_install"]["step"] == "committed", d
PY
[ -z "$(on ls /boot/updates/ | grep '\.bundle$' || true)" ] || fail "the installed bundle is still in updates/"
ok "meshd upgrade status: running B ($V.1), order B A, committed; updates/ emptied"
on reboot || true
wait_for 300 ready_b 2 || fail "after a reboot the node did not come back on slot B"
wait_for 120 good_b 2 || fail "slot B was not marked good after the reboot"
ok "a further reboot stays on slot B"

# --- 3: refusals, with the running system untouched.
wait_for 60 on true || fail "ssh after the reboot"
B_STATE=$(on meshd upgrade status --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["boot_order"], d["a_left"], d["b_left"])')
mk() { # NAME: a bad bundle in $WORK/bad/NAME.bundle
  mkdir -p "$WORK/bad"
  case $1 in
    truncated) head -c 5000000 "$NEXT" ;;
    # (N+2's: newer than what runs, so the check that fails is the payload's)
    payload) python3 -c 'import sys; b=bytearray(open(sys.argv[1],"rb").read()); b[-100000]^=1; sys.stdout.buffer.write(b)' "$BROKEN" ;;
    manifest) python3 -c 'import sys; b=bytearray(open(sys.argv[1],"rb").read()); i=b.index(b"\"build_id\":\"")+12; b[i]^=1; sys.stdout.buffer.write(b)' "$NEXT" ;;
    untrusted)
      "$MESHIMG" keygen --unencrypted --force -o "$WORK/bad/other.key" > /dev/null 2>&1
      python3 - "$NEXT" "$WORK/bad/manifest" <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<I", b[16:20])[0]
open(sys.argv[2], "wb").write(b[20:20 + n])
PY
      "$MESHIMG" sign "$WORK/bad/manifest" --sign-key "$WORK/bad/other.key" > /dev/null
      python3 - "$NEXT" "$WORK/bad/manifest.minisig" <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<I", b[16:20])[0]
s = struct.unpack("<I", b[20 + n:24 + n])[0]
sig = open(sys.argv[2], "rb").read()
sys.stdout.buffer.write(b[:20 + n] + struct.pack("<I", len(sig)) + sig + b[24 + n + s:])
PY
      ;;
    board) cat out/orangepi-zero/meshos-orangepi-zero-"$V".bundle ;;
    older) cat "$N.bundle" ;;
  esac > "$WORK/bad/$1.bundle"
}
expect_refused() { # NAME KIND TEXT [written]: "written" when the refusal can only come while
  # writing (a payload that does not match): slot A was marked bad first, so it leaves the order
  # but slot B, running, keeps its place and attempts.
  mk "$1"
  on 'cat > /tmp/bad.bundle' < "$WORK/bad/$1.bundle"
  if on meshd upgrade install /tmp/bad.bundle --no-reboot > "$WORK/bad/$1.out" 2>&1; then fail "$1: installed"; fi
  grep -q "$3" "$WORK/bad/$1.out" || fail "$1: expected '$3' in: $(cat "$WORK/bad/$1.out")"
  local kind; kind=$(on meshd upgrade status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_install"]["error_kind"])')
  [ "$kind" = "$2" ] || fail "$1: error kind $kind, expected $2"
  local now; now=$(on meshd upgrade status --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["boot_order"], d["a_left"], d["b_left"])')
  if [ "${4:-}" = written ]; then
    on meshd upgrade status --json | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["running_slot"] == "B" and d["boot_order"] == ["B"] and d["b_left"] == 3, d' \
      || fail "$1: slot B lost its place: $now"
  else
    [ "$now" = "$B_STATE" ] || fail "$1: the boot state changed: $now (was $B_STATE)"
  fi
  ok "refused $1 bundle ($2): $(head -1 "$WORK/bad/$1.out" | cut -c1-110)"
}
expect_refused truncated truncated "cut short"
expect_refused manifest signature "signature"
expect_refused untrusted signature "does not trust"
expect_refused board incompatible "is for meshos-orangepi-zero"
expect_refused older not_newer "is not newer"
expect_refused payload payload_mismatch "payload was altered" written
ok "refusals before writing left the boot state as it was ($B_STATE); the altered payload only cost the inactive slot; B runs throughout"

# --- 2: a slot that never becomes healthy is rolled back from, by the node alone.
on 'cat > /tmp/broken.bundle' < "$BROKEN"
on meshd upgrade install /tmp/broken.bundle > "$WORK/broken-install.out" 2>&1 || true
grep -q "installed $V.2" "$WORK/broken-install.out" || fail "installing the broken N+2: $(cat "$WORK/broken-install.out")"
t2=$SECONDS
rolled() { grep -aq '^meshd: ROLLBACK: slot A ran out of boot attempts; slot B is running' "$WORK/console.log"; }
wait_for 600 rolled || fail "no rollback to slot B"
tries=$(count "^meshos: booting slot a")
[ "$tries" -ge 3 ] || fail "slot A was tried $tries times, expected 3"
ok "broken N+2 in slot A was tried $tries times, then the node booted slot B by itself ($((SECONDS - t2)) s)"
wait_for 60 on true || fail "ssh after the rollback"
on meshd upgrade status --json > "$WORK/status2.json"
python3 - "$WORK/status2.json" "$V.1" <<'PY' || fail "upgrade status after the rollback: $(cat "$WORK/status2.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["running_slot"] == "B" and d["version"] == sys.argv[2] and d["boot_order"] == ["B"], d
assert d["last_install"]["step"] == "rolled_back", d
PY
on meshd status | grep -q 'ROLLBACK  slot A ran out of boot attempts' || fail "meshd status does not report the rollback"
ok "meshd status and upgrade status report the rollback; B ($V.1) runs"
echo "upgrade-test: all checks passed in $((SECONDS - t0)) s"
