# meshos boot script (compiled to boot.scr). Boots slot @SLOT@ from the boot partition.
setenv meshos_part "${devtype} ${devnum}:1"
setenv bootargs "@CMDLINE@ meshos.slot=@SLOT@ meshos.disk=@DISK@ rootwait"
fatload ${meshos_part} @KERNEL_GZ_ADDR@ @SLOT@/vmlinuz || exit
setenv kernel_comp_addr_r @KERNEL_ADDR@
setenv kernel_comp_size ${filesize}
fatload ${meshos_part} @RAMDISK_ADDR@ @SLOT@/initrd.img || exit
setenv meshos_initrd_size ${filesize}
if test -n "${fdtfile}"; then setenv meshos_fdt ${fdtfile}; else setenv meshos_fdt @DEFAULT_DTB@; fi
fatload ${meshos_part} @FDT_ADDR@ @SLOT@/dtbs/${meshos_fdt} || fatload ${meshos_part} @FDT_ADDR@ @SLOT@/dtbs/@DEFAULT_DTB@ || exit
booti @KERNEL_GZ_ADDR@ @RAMDISK_ADDR@:${meshos_initrd_size} @FDT_ADDR@
