#!/usr/bin/env bash
# Checks a built image with tools that are not ours: sfdisk, mtools, fsck.vfat, unsquashfs,
# e2fsck. Usage: [PLAN=plan.json] ci/check-image.sh IMAGE
set -euo pipefail
img=$1
export PATH="$PATH:/usr/sbin:/sbin" MTOOLS_SKIP_CHECK=1
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
fail() { echo "check-image: FAIL: $*" >&2; exit 1; }

table=$(sfdisk -d "$img")
grep -q 'label: dos' <<<"$table" || fail "not an MBR disk"
[ "$(grep -c 'start=' <<<"$table")" -eq 4 ] || fail "expected 4 partitions"
# (here-strings, not pipes: grep -q exits at the first match and pipefail would count the SIGPIPE)
entry() { grep 'start=' <<<"$table" | sed -n "$1p"; }
grep -q 'type=c' <<<"$(entry 1)" || fail "partition 1 is not FAT32 (LBA)"
for n in 2 3 4; do grep -q 'type=83' <<<"$(entry $n)" || fail "partition $n is not type 83"; done

part() { # extract partition N to a file
  local line start size
  line=$(entry "$1")
  start=$(echo "$line" | sed -E 's/.*start= *([0-9]+).*/\1/')
  size=$(echo "$line" | sed -E 's/.*size= *([0-9]+).*/\1/')
  dd if="$img" of="$2" bs=512 skip="$start" count="$size" status=none
}
part 1 "$work/boot.vfat"; part 2 "$work/root.sqfs"; part 4 "$work/data.ext4"

fsck.vfat -n "$work/boot.vfat" >/dev/null || fail "boot partition fails fsck.vfat"
files=$(mdir -i "$work/boot.vfat" -/ -b ::)
for f in ::/boot.scr ::/mesh.yaml ::/a/vmlinuz ::/a/initrd.img ::/a/bundle.header ::/conf.d/README.txt; do
  grep -qx "$f" <<<"$files" || fail "boot partition has no ${f#::}"
done
[ -n "${BOOT_FILES:-}" ] && for f in $BOOT_FILES; do grep -qx "::/$f" <<<"$files" || fail "boot partition has no $f"; done
# The plan lists every file of the boot partition (meshimg plan BOARD --json): exactly those are on it.
if [ -n "${PLAN:-}" ]; then
  planned=$(python3 -c 'import json,sys; print("\n".join(sorted({"::/" + f["to"] for f in json.load(open(sys.argv[1]))["boot_files"]})))' "$PLAN")
  on_card=$(mdir -i "$work/boot.vfat" -/ -b :: | grep -v '/$' | sort)
  [ "$planned" = "$on_card" ] || fail "boot partition and plan $PLAN differ: $(diff <(echo "$planned") <(echo "$on_card") | grep '^[<>]' | tr '\n' ' ')"
fi
# Slot A's bundle header (what the node serves its neighbours) is the update bundle's own.
bundle=${img%.img}.bundle
if [ -f "$bundle" ]; then
  mcopy -i "$work/boot.vfat" ::/a/bundle.header "$work/header"
  cmp -s "$work/header" <(head -c "$(stat -c %s "$work/header")" "$bundle") || fail "a/bundle.header is not the start of $bundle"
fi

listing=$(unsquashfs -lln "$work/root.sqfs")
for f in usr/sbin/meshd usr/sbin/init usr/bin/busybox usr/lib/os-release etc/inittab; do
  grep -q " squashfs-root/$f\( \|$\)" <<<"$listing" || fail "root slot has no /$f"
done
[ -n "${ROOT_FILES:-}" ] && for f in $ROOT_FILES; do grep -q "/$f" <<<"$listing" || fail "root slot has no /$f"; done
if grep -q 'squashfs-root/usr/share/doc/' <<<"$listing"; then fail "root slot still has /usr/share/doc"; fi
if grep -q 'squashfs-root/usr/share/man/' <<<"$listing"; then fail "root slot still has /usr/share/man"; fi
grep -E '^-rw-r----- 0/0 .* squashfs-root/etc/shadow$' -q <<<"$listing" || fail "/etc/shadow is not root-only"
if [ -n "${SPL_AT:-}" ]; then # Allwinner boot ROM header: "eGON.BT0" 4 bytes into the SPL
  magic=$(dd if="$img" bs=1 skip=$((SPL_AT + 4)) count=8 status=none)
  [ "$magic" = eGON.BT0 ] || fail "no Allwinner SPL (eGON.BT0) at $SPL_AT"
  [ "$(entry 1 | sed -E 's/.*start= *([0-9]+).*/\1/')" -ge 2048 ] || fail "partition 1 starts inside the first MiB"
fi
e2fsck -n -f "$work/data.ext4" >/dev/null 2>&1 || fail "data partition fails e2fsck"
echo "check-image: $img: partition table, boot files, root slot and data partition are sound"
