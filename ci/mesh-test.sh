#!/usr/bin/env bash
# The mesh in QEMU, with the qemu-arm64 image `make test` built:
#   three VMs in a line A - B - C, linked by QEMU UDP socket links on 127.0.0.1 (no A - C link);
#   A has a restricted user network with ports forwarded to its ssh and metrics;
#   C's mesh.yaml is malformed.
# Checks, each printed as it passes:
#   routing   Yggdrasil peers form by themselves and A reaches C's overlay address through B
#             (ping6 and an HTTP GET of C's /nodeinfo.json); each /metrics shows its peers
#   bad input C boots, names the key in error on its console and in its metrics, and routes
#   radio     in A, two mac80211_hwsim radios in separate network namespaces, each driven by
#             its own meshd, form an 802.11s peer link (plink ESTAB)
#   AP        a third radio, given the accessPoint role in its meshd's mesh.yaml, serves a
#             WPA2 client on a fourth radio, which gets an address by DHCP and pings the node
#   upgrade   C runs version N+1 (built here, signed with $MESHOS_SIGN_KEY like IMAGE) and
#             serves its running slot as a bundle; A installs it from C over the overlay,
#             through B, reboots into it, commits it, and then serves the same bytes itself
# Usage: ci/mesh-test.sh [IMAGE]; logs and the generated key go to out/mesh-test/. Without
# MESHOS_SIGN_KEY (an unsigned IMAGE accepts no bundle) the upgrade part is skipped, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
MESHIMG=${MESHIMG:-target/debug/meshimg}
IMAGE=${1:-out/qemu-arm64/meshos-qemu-arm64-$(cargo pkgid -p meshimg | sed 's/.*[#@]//').img}
WORK=out/mesh-test
PORT=${MESH_TEST_PORT:-20100}   # this and the next few UDP/TCP ports on 127.0.0.1
SSH_PORT=$((PORT + 22)) METRICS_PORT=$((PORT + 91))
BOOT_LIMIT=${MESH_TEST_BOOT_LIMIT:-600}

rm -rf "$WORK" && mkdir -p "$WORK"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

fail() { echo "mesh-test: FAILED: $*" >&2; for n in a b c; do echo "--- node $n console (tail)"; tail -15 "$WORK/$n.log"; done >&2; exit 1; }
ok() { echo "mesh-test: ok: $*"; }

# Waits up to $1 seconds for command "${@:2}" to succeed.
wait_for() {
  local limit=$1; shift
  local until=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $until ] || return 1
    sleep 2
  done
}

ssh-keygen -q -t ed25519 -N "" -C mesh-test -f "$WORK/key"
cat > "$WORK/a.yaml" <<EOF
apiVersion: meshos/v1
ssh:
  authorizedKeys:
    - $(cat "$WORK/key.pub")
wired:
  dhcp: [eth0]   # the user network; the links to other nodes have no DHCP server
EOF
# A mesh-orange style conf.d archive for A: unpacked over /etc at start.
mkdir -p "$WORK/etc" && echo "meshos mesh test node" > "$WORK/etc/motd"
tar -czf "$WORK/50-motd.tar.gz" -C "$WORK/etc" motd
cat > "$WORK/c.yaml" <<'EOF'
apiVersion: meshos/v1
mesh:
  id: tomesh
  frequncy: 2412
EOF

# N+1 for C, signed with the key IMAGE's nodes trust.
V=$(basename "$IMAGE" .img | sed 's/^meshos-qemu-arm64-//')
IMAGE_C=$IMAGE
if [ -n "${MESHOS_SIGN_KEY:-}" ]; then
  "$MESHIMG" build qemu-arm64 --out "$WORK/next" --image-version "$V.1" > "$WORK/build-next.log" 2>&1 \
    || fail "building N+1 ($V.1) for C: $(tail -3 "$WORK/build-next.log")"
  IMAGE_C=$WORK/next/qemu-arm64/meshos-qemu-arm64-$V.1.img
  NEXT_BUNDLE=${IMAGE_C%.img}.bundle
fi

start() { # NAME IMAGE ARGS...: boot one node in the background, console to $WORK/NAME.log
  local name=$1 image=$2; shift 2
  "$MESHIMG" qemu qemu-arm64 --image "$image" "$@" > "$WORK/$name.log" 2>&1 &
  pids+=($!)
}
t0=$SECONDS
start a "$IMAGE" --forward "$SSH_PORT:22" --forward "$METRICS_PORT:9100" --link "$((PORT + 1)):$((PORT + 2))" --boot-file "mesh.yaml=$WORK/a.yaml" \
  --boot-file "conf.d/50-motd.tar.gz=$WORK/50-motd.tar.gz"
start b "$IMAGE" --link "$((PORT + 2)):$((PORT + 1))" --link "$((PORT + 3)):$((PORT + 4))"
start c "$IMAGE_C" --link "$((PORT + 4)):$((PORT + 3))" --boot-file "mesh.yaml=$WORK/c.yaml"
for n in a b c; do
  wait_for "$BOOT_LIMIT" grep -aq '^meshos ready' "$WORK/$n.log" || fail "node $n did not print 'meshos ready' within $BOOT_LIMIT s"
done
ready_at=$SECONDS
ok "three nodes ready $((ready_at - t0)) s after power-on"
first_peer() { curl -sf -m 5 "http://127.0.0.1:$METRICS_PORT/metrics" | grep -q '^meshd_router_peers{router="yggdrasil"} [1-9]'; }
wait_for 120 first_peer || fail "A found no overlay peer"
ok "A's first overlay peer up within $((SECONDS - ready_at)) s of 'meshos ready'"
echo "mesh-test: figure: first overlay peer $((SECONDS - ready_at)) s after 'meshos ready' (2 s polling)"

address() { grep -a 'overlay address' "$WORK/$1.log" | head -1 | sed 's/.*overlay address //' | tr -d '\r'; }
A=$(address a) B=$(address b) C=$(address c)
[ -n "$A" ] && [ -n "$B" ] && [ -n "$C" ] || fail "a node did not print its overlay address"
echo "mesh-test: A $A, B $B, C $C"

on_a() { ssh -q -i "$WORK/key" -p "$SSH_PORT" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10 root@127.0.0.1 "$@"; }
wait_for 120 on_a true || fail "ssh to A with the key from its mesh.yaml"
ok "ssh into A with the key from mesh.yaml (no password exists)"
[ "$(on_a cat /etc/motd)" = "meshos mesh test node" ] || fail "A did not apply conf.d/50-motd.tar.gz over /etc"
ok "A applied conf.d/50-motd.tar.gz over /etc"

# Link-local neighbours over the socket links: B's address on the A-B link comes from its MAC.
b_mac_low=$(printf '%02x%02x' $(((PORT + 2) >> 8)) $(((PORT + 2) & 255)))
wait_for 60 on_a ping6 -c 1 -W 2 "fe80::5054:ff:fe4d:${b_mac_low}%eth1" || fail "A cannot ping B over IPv6 link-local"
ok "A pings B over IPv6 link-local ($((SECONDS - t0)) s after power-on)"

# --- bad input: C names the key on its console and in its metrics, and still routes.
grep -aq 'config error: /boot/mesh.yaml:4: mesh.frequncy: unknown field `frequncy`' "$WORK/c.log" || fail "C's console does not name mesh.frequncy at line 4"
ok "C reports: $(grep -a 'config error' "$WORK/c.log" | head -1 | cut -c1-100)"

# --- routing: A reaches C through B.
wait_for 180 on_a ping6 -c 1 -W 3 "$C" || fail "A cannot reach C's overlay address $C"
ok "A pings C's overlay address through B, $((SECONDS - ready_at)) s after the last node was ready"
on_a wget -q -O - "http://[$C]:9100/nodeinfo.json" > "$WORK/c-nodeinfo.json" || fail "GET C's /nodeinfo.json from A"
grep -q "\"address\":\"$C\"" "$WORK/c-nodeinfo.json" || fail "C's nodeinfo does not carry its address: $(cat "$WORK/c-nodeinfo.json")"
ok "A fetched C's nodeinfo over the overlay: $(cut -c1-90 "$WORK/c-nodeinfo.json")"
on_a wget -q -O - "http://[$C]:9100/metrics" > "$WORK/c.metrics" || fail "GET C's /metrics from A"
grep -q '^meshd_config_errors 1$' "$WORK/c.metrics" || fail "C's metrics do not count its config error"
grep -q 'meshd_config_error{.*key="mesh.frequncy"' "$WORK/c.metrics" || fail "C's metrics do not name the key"
ok "C's metrics carry the config error with its key and line"

peers() { grep -q "^meshd_router_peers{router=\"yggdrasil\"} $2\$" "$1"; }
curl -sf -m 10 "http://127.0.0.1:$METRICS_PORT/metrics" > "$WORK/a.metrics" || fail "A's metrics through --forward $METRICS_PORT:9100"
peers "$WORK/a.metrics" 1 || fail "A's metrics do not show its one peer: $(grep router_peers "$WORK/a.metrics")"
on_a wget -q -O - "http://[$B]:9100/metrics" > "$WORK/b.metrics" || fail "GET B's /metrics from A"
peers "$WORK/b.metrics" 2 || fail "B's metrics do not show two peers: $(grep router_peers "$WORK/b.metrics")"
peers "$WORK/c.metrics" 1 || fail "C's metrics do not show its one peer"
ok "metrics show the peers: A 1, B 2, C 1 (A's read at http://127.0.0.1:$METRICS_PORT/metrics)"
on_a meshd status > "$WORK/a-status.txt" || fail "meshd status on A"
grep -q "^address  $A\$" "$WORK/a-status.txt" && grep -q "^$B " "$WORK/a-status.txt" || fail "meshd status on A: $(cat "$WORK/a-status.txt")"
on_a meshd status --json | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["peers"][0]["address"] == sys.argv[1], d' "$B" \
  || fail "meshd status --json on A does not list B as its peer"
ok "meshd status on A (table and --json) shows its radio, services and B as its peer"

# Supervision: a killed router comes back by itself and finds its peer again.
on_a 'kill $(pidof yggdrasil)' || fail "could not kill yggdrasil on A"
restarted() { curl -sf -m 5 "http://127.0.0.1:$METRICS_PORT/metrics" > "$WORK/a.metrics" && grep -q '^meshd_service_restarts_total{service="yggdrasil"} 1$' "$WORK/a.metrics" && peers "$WORK/a.metrics" 1; }
wait_for 60 restarted || fail "yggdrasil on A was not restarted, or found no peer again: $(grep -E 'yggdrasil|router_peers' "$WORK/a.metrics")"
ok "yggdrasil killed on A was restarted by meshd and peered with B again"

# Figures for `make bench` (printed, never asserted): meshd's memory idle and after scraping.
rss_kib() { curl -sf -m 10 "http://127.0.0.1:$METRICS_PORT/metrics" | sed -n 's/^process_resident_memory_bytes //p' | awk '{print int($1 / 1024)}'; }
idle=$(rss_kib)
for _ in $(seq 100); do curl -sf -m 10 -o /dev/null "http://127.0.0.1:$METRICS_PORT/metrics"; done
echo "mesh-test: figure: meshd RSS on A idle ${idle} KiB, after 100 scrapes $(rss_kib) KiB"

# --- radio: simulated radios in separate network namespaces of A. The first stays with A's
# meshd; "mesh" gets its own meshd (mesh point), "ap" a meshd with the accessPoint role, and
# "client" is an ordinary Wi-Fi client (wpa_supplicant, udhcpc).
on_a sh -s > "$WORK/radio.log" 2>&1 <<'EOF' || fail "radio test setup: $(tail -5 "$WORK/radio.log")"
set -e
rmmod mac80211_hwsim
modprobe mac80211_hwsim radios=4
sleep 1
set -- $(ls /sys/class/ieee80211 | sort -V)
ns() { # NAME PHY: an empty network, mount and UTS namespace held by a sleeping process, given PHY
  mkdir -p /tmp/ns/$1/state /tmp/ns/$1/run
  unshare -n -m -u sh -c 'mount -t sysfs sysfs /sys && exec sleep 100000' </dev/null >/dev/null 2>&1 &
  echo $! > /tmp/ns/$1.pid
  sleep 1
  iw phy "$2" set netns "$(cat /tmp/ns/$1.pid)"
}
in_ns() { nsenter -t "$(cat /tmp/ns/$1.pid)" -n -m -u sh -c "$2"; }
ns mesh "$2"; ns ap "$3"; ns client "$4"
printf 'apiVersion: meshos/v1\nmetrics:\n  port: 9101\n' > /tmp/ns/mesh/mesh.yaml
# No passphrase: meshd makes one and writes it next to mesh.yaml for the owner.
printf 'apiVersion: meshos/v1\nradios:\n  - driver: mac80211_hwsim\n    role: accessPoint\naccessPoint:\n  ssid: meshos-test\n' > /tmp/ns/ap/mesh.yaml
for n in mesh ap; do
  in_ns $n "exec meshd run --boot /tmp/ns/$n --state /tmp/ns/$n/state --run /tmp/ns/$n/run" </dev/null > /tmp/ns/$n/meshd.log 2>&1 &
done
i=0; until [ -s /tmp/ns/ap/ap-passphrase.txt ] || [ $i -ge 60 ]; do sleep 1; i=$((i + 1)); done
phrase=$(tail -1 /tmp/ns/ap/ap-passphrase.txt)
printf 'ctrl_interface=/run/wpa_supplicant\nnetwork={\n  ssid="meshos-test"\n  psk="%s"\n  key_mgmt=WPA-PSK\n}\n' "$phrase" > /tmp/ns/client/wpa.conf
in_ns client "for i in \$(iw dev | sed -n 's/.*Interface //p'); do iw dev \$i del; done
  iw phy $4 interface add wcl0 type managed && ip link set wcl0 up
  wpa_supplicant -B -i wcl0 -c /tmp/ns/client/wpa.conf -f /tmp/ns/client/wpa.log"
EOF
in_ns() { on_a "nsenter -t \$(cat /tmp/ns/$1.pid) -n -m -u sh -c '$2'"; }
estab() { on_a 'for i in $(iw dev | sed -n "s/.*Interface \(mesh[0-9]*\).*/\1/p"); do iw dev $i station dump; done' | grep -q 'mesh plink:.*ESTAB'; }
if ! wait_for 90 estab; then
  on_a "cat /tmp/ns/mesh/meshd.log; iw dev" >&2 || true
  fail "no 802.11s peer link between the namespaces"
fi
in_ns mesh "iw dev" | grep -q 'type mesh point' || fail "the mesh namespace has no mesh point"
ok "802.11s peer link ESTAB between mac80211_hwsim radios in two network namespaces"
wait_for 30 sh -c "curl -sf -m 10 http://127.0.0.1:$METRICS_PORT/metrics | grep -q 'meshd_mesh_station_plink{.*state=\"ESTAB\"} 1'" \
  || fail "A's metrics do not show the ESTAB station"
curl -sf -m 10 "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^meshd_mesh_(peers|station_signal_dbm)' | sed 's/^/mesh-test:   /'
ok "A's metrics show the mesh station and its signal"

associated() { in_ns client "iw dev wcl0 link" | grep -q 'SSID: meshos-test'; }
if ! wait_for 90 associated; then
  on_a "cat /tmp/ns/ap/meshd.log /tmp/ns/ap/run/hostapd-*.log /tmp/ns/client/wpa.log" >&2 || true
  fail "the client did not associate with the access point"
fi
in_ns client "udhcpc -i wcl0 -n -q -t 10 -T 2 -s /usr/share/meshos/udhcpc.script" > "$WORK/client-dhcp.log" 2>&1 \
  || fail "the client got no address from the access point: $(tail -3 "$WORK/client-dhcp.log")"
lease=$(in_ns client "ip -4 addr show wcl0" | sed -n 's/.*inet \([0-9.]*\).*/\1/p')
in_ns client 'ping -c 1 -W 3 $(ip route | sed -n "s/^default via \([0-9.]*\).*/\1/p")' > /dev/null || fail "the client cannot reach the node over the access point"
ok "a WPA2 client, with the passphrase meshd generated and wrote beside mesh.yaml, associated with meshd's access point (hostapd), got $lease by DHCP and pings the node"
grep -aq 'meshd: phy0 (mac80211_hwsim) is gone' "$WORK/a.log" && grep -aq 'meshd: phy1 (mac80211_hwsim): mesh1 up as Mesh' "$WORK/a.log" \
  || fail "A's meshd did not follow the radios being replaced"
ok "A's meshd followed its radio going away and new ones appearing (a replug), with no restart"

# --- upgrade over the mesh: C serves N+1, A installs it from C through B.
if [ -z "${NEXT_BUNDLE:-}" ]; then
  echo "mesh-test: skipped: the upgrade over the mesh (no MESHOS_SIGN_KEY to sign N+1 with)"
else
  want=$(sha256sum < "$NEXT_BUNDLE" | cut -d' ' -f1)
  grep -q "\"bundle\":\"http://\[$C\]:9100/bundle\"" "$WORK/c-nodeinfo.json" || fail "C's nodeinfo names no bundle: $(cat "$WORK/c-nodeinfo.json")"
  got=$(on_a "wget -q -O - 'http://[$C]:9100/bundle' | sha256sum" | cut -d' ' -f1)
  [ "$got" = "$want" ] || fail "C's /bundle ($got) is not the N+1 bundle meshimg built ($want)"
  ok "C serves its running slot as a bundle, byte for byte the one meshimg built ($V.1)"
  on_a meshd upgrade install "http://[$B]:9100/bundle" --no-reboot > "$WORK/a-install-b.log" 2>&1 && fail "A installed B's bundle, which is not newer"
  grep -q 'not newer' "$WORK/a-install-b.log" || fail "A refused B's bundle, but not for its version: $(cat "$WORK/a-install-b.log")"
  ok "A refuses B's bundle: $(tail -1 "$WORK/a-install-b.log" | cut -c1-110)"
  t=$SECONDS
  on_a meshd upgrade install "http://[$C]:9100/bundle" --no-reboot > "$WORK/a-install.log" 2>&1 \
    || fail "A could not install C's bundle over the mesh: $(tail -3 "$WORK/a-install.log")"
  echo "mesh-test: figure: install of $(( $(stat -c %s "$NEXT_BUNDLE") / 1048576 )) MiB from C, two hops away over the overlay: $((SECONDS - t)) s"
  on_a meshd upgrade status --json | python3 -c 'import json,sys; d=json.load(sys.stdin)["last_install"]; assert d["step"] == "installed" and d["version"] == sys.argv[1] and d["target"] == "B", d' "$V.1" \
    || fail "A's upgrade status after the install: $(on_a meshd upgrade status)"
  ok "A installed $V.1 from http://[C]:9100/bundle into slot B, through B"
  on_a 'sh -c "sleep 1; reboot" >/dev/null 2>&1 &' || fail "could not reboot A"
  wait_for 300 grep -aq "^meshos ready version=$V.1 board=qemu-arm64 slot=b" "$WORK/a.log" || fail "A did not come up running $V.1 from slot b"
  committed() { on_a meshd upgrade status --json | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["running_slot"] == "B" and d["last_install"]["step"] == "committed", d'; }
  wait_for 180 committed || fail "A did not commit $V.1: $(on_a meshd upgrade status || true)"
  got=$(curl -sf -m 60 "http://127.0.0.1:$METRICS_PORT/bundle" | sha256sum | cut -d' ' -f1)
  [ "$got" = "$want" ] || fail "A's /bundle from slot b ($got) is not the bundle it installed ($want)"
  ok "A rebooted into $V.1 from slot b, committed it, and serves the same bundle to its own neighbours"
fi
echo "mesh-test: all checks passed in $((SECONDS - t0)) s"
