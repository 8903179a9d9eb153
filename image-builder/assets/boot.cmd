# meshos boot script (compiled to boot.scr). Boots slot @SLOT@ from the boot partition.
setenv meshos_part "${devtype} ${devnum}:1"
setenv bootargs "@CMDLINE@ meshos.slot=@SLOT@ meshos.disk=@DISK@ rootwait"
@LOAD_KERNEL@
fatload ${meshos_part} @RAMDISK_ADDR@ @SLOT@/initrd.img || exit
setenv meshos_initrd_size ${filesize}
if test -n "${fdtfile}"; then setenv meshos_fdt ${fdtfile}; else setenv meshos_fdt @DEFAULT_DTB@; fi
fatload ${meshos_part} @FDT_ADDR@ @SLOT@/dtbs/${meshos_fdt} || fatload ${meshos_part} @FDT_ADDR@ @SLOT@/dtbs/@DEFAULT_DTB@ || exit
@BOOT@ @RAMDISK_ADDR@:${meshos_initrd_size} @FDT_ADDR@
