#!/usr/bin/env bash
# `make bench`: build time with an empty package cache and cold meshd and cjdns builds, then warm;
# image and root slot sizes; QEMU power-on to 'meshos ready'; meshd memory on the node; the
# share of a bundle an upgrade over the mesh moves (ci/delta-bench.sh).
set -euo pipefail
board=${1:-rpi3}
cd "$(dirname "$0")/.."
MESHIMG=${MESHIMG:-target/debug/meshimg}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {'d': d}))" "$@"; }

rm -rf target/node-firmware
seconds_since() { local ms=$(( ($(date +%s%N) - $1) / 1000000 )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
start=$(date +%s%N)
MESHOS_CACHE=$tmp/cache "$MESHIMG" build "$board" --json > "$tmp/cold.json"
cold=$(seconds_since "$start")
start=$(date +%s%N)
"$MESHIMG" build "$board" --json > "$tmp/warm.json"
warm=$(seconds_since "$start")
"$MESHIMG" qemu "$board" --expect-ready 900 > "$tmp/console.log" 2>&1
boot=$(sed -n 's/.*ready after \([0-9.]*\) s.*/\1/p' "$tmp/console.log")
rss=$(sed -n 's/.*meshd: running (VmRSS \([0-9]*\) kB).*/\1/p' "$tmp/console.log" | head -1)

mib() { python3 -c "print(f'{$1 / 1048576:.1f}')"; }
echo "meshos bench: board $board on $(nproc) cores, $(date -u +%Y-%m-%d)"
printf '  %-38s %8.1f s\n' "cold build (empty cache, cold meshd)" "$cold"
printf '  %-38s %8.1f s\n' "warm rebuild" "$warm"
printf '  %-38s %8s MiB\n' ".img.xz" "$(mib "$(field "$tmp/warm.json" "d['sizes']['img_xz']")")"
printf '  %-38s %8s MiB\n' "update bundle" "$(mib "$(field "$tmp/warm.json" "d['sizes']['bundle']")")"
printf '  %-38s %8s MiB\n' "root squashfs (one slot)" "$(mib "$(field "$tmp/warm.json" "d['sizes']['root_squashfs']")")"
printf '  %-38s %8s MiB\n' "kernel (as stored) + initramfs" "$(mib "$(field "$tmp/warm.json" "d['sizes']['kernel'] + d['sizes']['initramfs']")")"
printf '  %-38s %8s KiB\n' "meshd binary" "$(( $(field "$tmp/warm.json" "d['sizes']['meshd']") / 1024 ))"
if [ "$(field "$tmp/warm.json" "d['sizes'].get('cjdroute') or 0")" != 0 ]; then
  step() { field "$1" "[s['seconds'] for s in d['steps'] if s['step'] == 'cross-compile cjdns'][0]"; }
  printf '  %-38s %8s KiB\n' "cjdroute binary" "$(( $(field "$tmp/warm.json" "d['sizes']['cjdroute']") / 1024 ))"
  printf '  %-38s %8s s cold, %s s warm (cached)\n' "cjdns cross-compile" "$(step "$tmp/cold.json")" "$(step "$tmp/warm.json")"
fi
printf '  %-38s %8s s\n' "QEMU power-on to 'meshos ready' (TCG)" "${boot:-?}"
printf '  %-38s %8s KiB\n' "meshd resident memory, idle" "${rss:-?}"
echo "  steps (warm): $(field "$tmp/warm.json" "', '.join(f\"{s['step']} {s['seconds']}s\" for s in d['steps'])")"
ci/delta-bench.sh "$board"
if [ "$board" = qemu-arm64 ]; then
  ci/mesh-test.sh > "$tmp/mesh.log" 2>&1 || { tail -30 "$tmp/mesh.log"; exit 1; }
  sed -n 's/^mesh-test: figure: /  /p' "$tmp/mesh.log"
fi
