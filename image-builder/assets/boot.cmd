# meshos boot script (compiled to boot.scr). Picks slot A or B from the boot state record and
# counts the attempt, with RAUC's variables: BOOT_ORDER lists the slots to try, BOOT_A_LEFT and
# BOOT_B_LEFT their attempts left. The record has two copies (one sector each, U-Boot's
# checksummed env format, BOOT_SEQ growing with each write); the newest valid one is read and
# the updated record is written over the other, so a power cut mid-write loses nothing.
setenv meshos_part "${devtype} ${devnum}:1"
${devtype} dev ${devnum}
setenv meshos_s0 0x0
setenv meshos_s1 0x0
setenv BOOT_SEQ
if ${devtype} read @STATE_ADDR@ @SECTOR0@ 1 && env import -c @STATE_ADDR@ 0x200 BOOT_SEQ; then setenv meshos_s0 ${BOOT_SEQ}; fi
setenv BOOT_SEQ
if ${devtype} read @STATE_ADDR@ @SECTOR1@ 1 && env import -c @STATE_ADDR@ 0x200 BOOT_SEQ; then setenv meshos_s1 ${BOOT_SEQ}; fi
if test ${meshos_s1} -gt ${meshos_s0}; then
  setenv meshos_newest @SECTOR1@; setenv meshos_older @SECTOR0@
else
  setenv meshos_newest @SECTOR0@; setenv meshos_older @SECTOR1@
fi
setenv BOOT_ORDER A
setenv BOOT_A_LEFT @ATTEMPTS@
setenv BOOT_B_LEFT 0
setenv BOOT_SEQ 0x0
if ${devtype} read @STATE_ADDR@ ${meshos_newest} 1 && env import -c @STATE_ADDR@ 0x200 BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT BOOT_SEQ; then
  echo "meshos: boot state: order ${BOOT_ORDER}, A ${BOOT_A_LEFT} left, B ${BOOT_B_LEFT} left (seq ${BOOT_SEQ})"
else
  echo "meshos: no valid boot state record; starting with slot A"
fi
setenv meshos_slot
setenv meshos_pick 'for s in ${BOOT_ORDER}; do if test -z "${meshos_slot}" && test "${s}" = A && test ${BOOT_A_LEFT} -gt 0; then setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1; setenv meshos_slot a; fi; if test -z "${meshos_slot}" && test "${s}" = B && test ${BOOT_B_LEFT} -gt 0; then setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1; setenv meshos_slot b; fi; done'
run meshos_pick
if test -z "${meshos_slot}"; then
  echo "meshos: no slot has attempts left; giving every slot in BOOT_ORDER @ATTEMPTS@ again"
  setenv BOOT_A_LEFT @ATTEMPTS@
  setenv BOOT_B_LEFT @ATTEMPTS@
  run meshos_pick
fi
setexpr BOOT_SEQ ${BOOT_SEQ} + 1
setenv BOOT_SEQ 0x${BOOT_SEQ}
env export -c -s 0x200 @STATE_ADDR@ BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT BOOT_SEQ
${devtype} write @STATE_ADDR@ ${meshos_older} 1
echo "meshos: booting slot ${meshos_slot} (A ${BOOT_A_LEFT} left, B ${BOOT_B_LEFT} left)"
# panic=10: a slot whose kernel panics reboots, so its failed attempt counts.
setenv bootargs "@CMDLINE@ meshos.slot=${meshos_slot} meshos.disk=@DISK@ rootwait panic=10"
@LOAD_KERNEL@
fatload ${meshos_part} @RAMDISK_ADDR@ ${meshos_slot}/initrd.img || exit
setenv meshos_initrd_size ${filesize}
@LOAD_FDT@
@BOOT@ @RAMDISK_ADDR@:${meshos_initrd_size} @FDT@
