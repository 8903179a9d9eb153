# meshos boot script (compiled to boot.scr). Boots slot @SLOT@ from the boot partition.
setenv meshos_part "${devtype} ${devnum}:1"
setenv bootargs "@CMDLINE@ meshos.slot=@SLOT@ meshos.disk=@DISK@ rootwait"
@LOAD_KERNEL@
fatload ${meshos_part} @RAMDISK_ADDR@ @SLOT@/initrd.img || exit
setenv meshos_initrd_size ${filesize}
@LOAD_FDT@
@BOOT@ @RAMDISK_ADDR@:${meshos_initrd_size} @FDT@
