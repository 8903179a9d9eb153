#!/usr/bin/env bash
# cjdns in QEMU, with the qemu-arm64 image `make test` built: NODES (1 or 3) nodes, with 3 a line
# A - B - C linked by QEMU UDP socket links on 127.0.0.1, each with `router: cjdns` in its
# mesh.yaml and nothing else about cjdns. A has ports forwarded to its ssh and metrics.
# Checks, each printed as it passes:
#   start     each node runs the cjdroute built from source into the image: it made the node's
#             keys and fc00::/8 address, and `cjdroute --version` on A names v22.1
#   routing   (3 nodes) cjdns's ETHInterface peers form by themselves on the links; A pings C's
#             address through B and fetches C's /nodeinfo.json over cjdns
#   metrics   (3 nodes) /metrics and `meshd status` show the cjdns peers by their addresses
#   memory    (3 nodes) cjdroute's resident memory on B, which has two peers (a figure)
# make test runs it with one node: cjdns v22.1's own client process (the "angel") crashes after
# handing its config to the core, so routing over it is not yet reliable; see docs/cjdns.md.
# Usage: ci/cjdns-test.sh [IMAGE] [NODES]; logs go to out/cjdns-test/.
set -euo pipefail
cd "$(dirname "$0")/.."
MESHIMG=${MESHIMG:-target/debug/meshimg}
IMAGE=${1:-out/qemu-arm64/meshos-qemu-arm64-$(cargo pkgid -p meshimg | sed 's/.*[#@]//').img}
NODES=${2:-3}
case $NODES in 1) names="a" ;; 3) names="a b c" ;; *) echo "cjdns-test: NODES is 1 or 3" >&2; exit 2 ;; esac
WORK=out/cjdns-test
PORT=${CJDNS_TEST_PORT:-20300}   # this and the next few UDP/TCP ports on 127.0.0.1
SSH_PORT=$((PORT + 22)) METRICS_PORT=$((PORT + 91))

rm -rf "$WORK" && mkdir -p "$WORK"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
fail() {
  for n in $names; do [ -f "$WORK/$n.log" ] && { echo "--- node $n console (tail)"; tail -20 "$WORK/$n.log"; }; done >&2
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
if [ "$NODES" = 1 ]; then
  start a --forward "$SSH_PORT:22" --forward "$METRICS_PORT:9100" --boot-file "mesh.yaml=$WORK/a.yaml"
else
  start a --forward "$SSH_PORT:22" --forward "$METRICS_PORT:9100" --link "$((PORT + 1)):$((PORT + 2))" --boot-file "mesh.yaml=$WORK/a.yaml"
  start b --link "$((PORT + 2)):$((PORT + 1))" --link "$((PORT + 3)):$((PORT + 4))" --boot-file "mesh.yaml=$WORK/bc.yaml"
  start c --link "$((PORT + 4)):$((PORT + 3))" --boot-file "mesh.yaml=$WORK/bc.yaml"
fi
for n in $names; do
  wait_for 600 grep -aq '^meshos ready' "$WORK/$n.log" || fail "node $n did not print 'meshos ready'"
done
ok "$NODES node(s) ready $((SECONDS - t0)) s after power-on"

# --- start: the address each node printed is cjdns's, from keys its own cjdroute made.
address() { grep -a 'overlay address' "$WORK/$1.log" | head -1 | sed 's/.*overlay address //' | tr -d '\r'; }
for n in $names; do
  a=$(address "$n")
  [[ $a == fc* ]] || fail "node $n's overlay address is not cjdns's fc00::/8: '$a' ($(grep -a 'meshd: router' "$WORK/$n.log" | head -1))"
  eval "${n^^}=\$a"
done
ok "each node's keys and address were made by its cjdroute: $(for n in $names; do printf '%s %s ' "${n^^}" "$(address "$n")"; done)"

on_a() { ssh -q -i "$WORK/key" -p "$SSH_PORT" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=6 root@127.0.0.1 "$@"; }
# cjdroute's resident memory (KiB, all its processes) on a node: cjdroute_rss on_a|on_b.
# /proc/PID/status has a tab after "VmRSS:".
cjdroute_rss() {
  "$1" 'for p in $(pidof cjdroute); do sed -n "s/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p" /proc/$p/status; done' | awk '{s += $1} END {print s + 0}'
}
wait_for 120 on_a true || fail "ssh to A"
# (A retry: the first commands can meet the moment meshd restarts cjdroute on its new links.)
version_on_a() { on_a cjdroute --version > "$WORK/version.txt" 2> "$WORK/version.err"; }
wait_for 60 version_on_a || fail "cjdroute --version on A: $(cat "$WORK/version.txt" "$WORK/version.err")"
grep -q 'cjdns-v22.1' "$WORK/version.txt" || fail "A's cjdroute is not v22.1: $(cat "$WORK/version.txt")"
ok "A's cjdroute: $(paste -sd ' ' "$WORK/version.txt")"
if [ "$NODES" = 1 ]; then
  # A figure, not a check: v22.1's hand-over and core are not yet reliable (docs/cjdns.md).
  core_up() { [ "$(cjdroute_rss on_a)" -gt 0 ]; }
  wait_for 90 core_up || true
  retries=$(on_a 'cat /run/meshd/cjdns.log* | grep -c "did not finish starting its core"' || true)
  echo "cjdns-test: figure: cjdroute's core on A (no peers): $(cjdroute_rss on_a) KiB resident; hand-over tried again ${retries:-0} time(s), core restarts $(grep -ac 'meshd: cjdns exited' "$WORK/a.log") (upstream v22.1; see docs/cjdns.md)"
  ok "all checks of one node passed in $((SECONDS - t0)) s"
  exit 0
fi

# --- routing: A reaches C through B.
t=$SECONDS
wait_for 240 on_a ping6 -c 1 -W 3 "$C" || fail "A cannot reach C's cjdns address $C: $(on_a meshd status | head -20)"
ok "A pings C's cjdns address through B, $((SECONDS - t)) s after the nodes were ready"
on_a wget -q -T 20 -O - "http://[$C]:9100/nodeinfo.json" > "$WORK/c-nodeinfo.json" || fail "GET C's /nodeinfo.json from A over cjdns"
grep -q "\"address\":\"$C\"" "$WORK/c-nodeinfo.json" || fail "C's nodeinfo does not carry its address: $(cat "$WORK/c-nodeinfo.json")"
ok "A fetched C's nodeinfo over cjdns: $(cut -c1-90 "$WORK/c-nodeinfo.json")"
# cjdroute's core parses every radio neighbour's frames: it runs as nobody (the angel, which
# only starts it, stays root).
core_users=$(on_a 'for p in $(pidof cjdroute); do sed -n "s/^Uid:[[:space:]]*\([0-9]*\).*/\1/p" /proc/$p/status; done' | sort -u | paste -sd ' ')
[[ " $core_users " == *" 65534 "* ]] || fail "no cjdroute process on A runs as nobody (uids: $core_users)"
ok "cjdroute's core on A runs as nobody (uids of its processes: $core_users)"

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
# The mesh view: C's record, signed with C's cjdns key, reaches A through B and checks out.
view_has_c() { on_a wget -q -T 20 -O - "http://[::1]:9100/mesh.json" > "$WORK/a-mesh.json" && grep -q "\"address\":\"$C\"" "$WORK/a-mesh.json"; }
wait_for 150 view_has_c || fail "A's mesh view has no record of C: $(cut -c1-300 "$WORK/a-mesh.json"); A's metrics: $(on_a wget -q -O - http://[::1]:9100/metrics | grep mesh_view)"
ok "A's mesh view holds C's record, signed with C's cjdns key, through B"
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
on_b true || fail "ssh to B over cjdns through A"
rss=$(cjdroute_rss on_b)
[ "$rss" -gt 0 ] || fail "no cjdroute process on B"
echo "cjdns-test: figure: cjdroute resident memory on B (two peers; angel and core): $rss KiB"
ok "ssh into B over cjdns through A; all checks passed in $((SECONDS - t0)) s"
