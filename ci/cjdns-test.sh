#!/usr/bin/env bash
# cjdns in QEMU, with the qemu-arm64 image `make test` built: three nodes A - B - C in a line,
# linked by QEMU UDP socket links on 127.0.0.1, each with `router: cjdns` in its mesh.yaml and
# nothing else about cjdns. A has ports forwarded to its ssh and metrics.
# Checks, each printed as it passes:
#   start     each node runs the cjdroute built from source into the image, with keys it made
#             itself, and prints its fc00::/8 address
#   routing   cjdns's ETHInterface peers form by themselves on the links; A pings C's address
#             through B and fetches C's /nodeinfo.json over cjdns
#   metrics   each node's /metrics and `meshd status` show its cjdns peers by their addresses
#   memory    cjdroute's resident memory on B, which has two peers (a figure, not a check)
# Usage: ci/cjdns-test.sh [IMAGE]; logs go to out/cjdns-test/.
set -euo pipefail
cd "$(dirname "$0")/.."
MESHIMG=${MESHIMG:-target/debug/meshimg}
IMAGE=${1:-out/qemu-arm64/meshos-qemu-arm64-$(cargo pkgid -p meshimg | sed 's/.*[#@]//').img}
WORK=out/cjdns-test
PORT=${CJDNS_TEST_PORT:-20300}   # this and the next few UDP/TCP ports on 127.0.0.1
SSH_PORT=$((PORT + 22)) METRICS_PORT=$((PORT + 91))

rm -rf "$WORK" && mkdir -p "$WORK"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
fail() {
  for n in a b c; do [ -f "$WORK/$n.log" ] && { echo "--- node $n console (tail)"; tail -20 "$WORK/$n.log"; }; done >&2
  echo "cjdns-test: FAILED: $*" >&2
  exit 1
}
ok() { echo "cjdns-test: ok: $*"; }
wait_for() { # SECONDS CHECK...: until CHECK passes
  local until=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $until ] || return 1
    sleep 2
  done
}

ssh-keygen -q -t ed25519 -N "" -C cjdns-test -f "$WORK/key"
ssh_yaml="ssh:\n  authorizedKeys:\n    - $(cat "$WORK/key.pub")\n"
printf "apiVersion: meshos/v1\nrouter: cjdns\n${ssh_yaml}wired:\n  dhcp: [eth0]\n" > "$WORK/a.yaml"
printf "apiVersion: meshos/v1\nrouter: cjdns\n$ssh_yaml" > "$WORK/bc.yaml"
start() { # NAME ARGS...: boot one node in the background, console to $WORK/NAME.log
  local name=$1; shift
  "$MESHIMG" qemu qemu-arm64 --image "$IMAGE" "$@" > "$WORK/$name.log" 2>&1 &
  pids+=($!)
}
t0=$SECONDS
start a --forward "$SSH_PORT:22" --forward "$METRICS_PORT:9100" --link "$((PORT + 1)):$((PORT + 2))" --boot-file "mesh.yaml=$WORK/a.yaml"
start b --link "$((PORT + 2)):$((PORT + 1))" --link "$((PORT + 3)):$((PORT + 4))" --boot-file "mesh.yaml=$WORK/bc.yaml"
start c --link "$((PORT + 4)):$((PORT + 3))" --boot-file "mesh.yaml=$WORK/bc.yaml"
for n in a b c; do
  wait_for 600 grep -aq '^meshos ready' "$WORK/$n.log" || fail "node $n did not print 'meshos ready'"
done
ok "three nodes ready $((SECONDS - t0)) s after power-on"

# --- start: the address each node printed is cjdns's, made by its own cjdroute.
address() { grep -a 'overlay address' "$WORK/$1.log" | head -1 | sed 's/.*overlay address //' | tr -d '\r'; }
A=$(address a) B=$(address b) C=$(address c)
for a in "$A" "$B" "$C"; do [[ $a == fc* ]] || fail "a node's overlay address is not cjdns's fc00::/8: '$A' '$B' '$C'"; done
! grep -aq 'meshd: cjdns exited\|meshd: router:' "$WORK"/[abc].log || fail "cjdroute did not run: $(grep -ah 'meshd: cjdns exited\|meshd: router:' "$WORK"/[abc].log | head -3)"
ok "each node runs cjdroute with its own keys: A $A, B $B, C $C"

on_a() { ssh -q -i "$WORK/key" -p "$SSH_PORT" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10 root@127.0.0.1 "$@"; }
wait_for 120 on_a true || fail "ssh to A"
on_a cjdroute --version > "$WORK/version.txt" || fail "cjdroute --version on A"
ok "A's cjdroute: $(paste -sd ' ' "$WORK/version.txt")"

# --- routing: A reaches C through B.
t=$SECONDS
wait_for 240 on_a ping6 -c 1 -W 3 "$C" || fail "A cannot reach C's cjdns address $C: $(on_a meshd status | head -20)"
ok "A pings C's cjdns address through B, $((SECONDS - t)) s after the nodes were ready"
on_a wget -q -T 20 -O - "http://[$C]:9100/nodeinfo.json" > "$WORK/c-nodeinfo.json" || fail "GET C's /nodeinfo.json from A over cjdns"
grep -q "\"address\":\"$C\"" "$WORK/c-nodeinfo.json" || fail "C's nodeinfo does not carry its address: $(cat "$WORK/c-nodeinfo.json")"
ok "A fetched C's nodeinfo over cjdns: $(cut -c1-90 "$WORK/c-nodeinfo.json")"

# --- metrics and status: peers by their addresses.
peers_of() { # NODE-ADDRESS COUNT PEER...: the node's metrics count COUNT cjdns peers, PEER among them
  local url=$1 count=$2; shift 2
  on_a wget -q -T 20 -O - "http://[$url]:9100/metrics" > "$WORK/m.metrics" || return 1
  grep -q "^meshd_router_peers{router=\"cjdns\"} $count\$" "$WORK/m.metrics" || return 1
  for p in "$@"; do grep -q "^meshd_router_peer_receive_bytes_total{router=\"cjdns\",peer=\"$p\"}" "$WORK/m.metrics" || return 1; done
}
wait_for 60 peers_of "$B" 2 "$A" "$C" || fail "B's metrics do not show A and C as cjdns peers: $(grep router_peer "$WORK/m.metrics")"
wait_for 60 peers_of "$A" 1 "$B" || fail "A's metrics do not show B as its cjdns peer: $(grep router_peer "$WORK/m.metrics")"
ok "metrics show the cjdns peers by address: B has A and C, A has B"
on_a meshd status > "$WORK/a-status.txt" || fail "meshd status on A"
grep -q "^PEER (cjdns)" "$WORK/a-status.txt" && grep -q "^$B " "$WORK/a-status.txt" || fail "meshd status on A does not show cjdns and B: $(cat "$WORK/a-status.txt")"
ok "meshd status on A: $(grep "^$B " "$WORK/a-status.txt" | tr -s ' ' | cut -c1-100)"

# --- memory: cjdroute's processes (its angel and its core) on B, which has two peers,
# reached by ssh over cjdns through A.
on_b() {
  ssh -q -i "$WORK/key" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=20 \
    -o ProxyCommand="ssh -q -i $WORK/key -p $SSH_PORT -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1 -W [%h]:%p" \
    "root@$B" "$@"
}
rss=$(on_b 'for p in $(pidof cjdroute); do sed -n "s/^VmRSS: *\([0-9]*\) kB/\1/p" /proc/$p/status; done' | awk '{s += $1} END {print s}') \
  || fail "ssh to B over cjdns through A"
[ "${rss:-0}" -gt 0 ] || fail "no cjdroute process on B"
echo "cjdns-test: figure: cjdroute resident memory on B (two peers; angel and core): $rss KiB"
ok "ssh into B over cjdns through A; all checks passed in $((SECONDS - t0)) s"
