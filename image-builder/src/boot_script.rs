//! The U-Boot script: one script for both slots, which picks the slot from the boot state
//! record, rendered from `assets/boot.cmd` for a board. The plan holds the rendered text; the
//! build compiles it with `mkimage` into `boot.scr`.

use crate::board::{parse_hex, Board, KernelFormat};
use meshos_common::boot_state;

/// The template; an input of the plan (its hash is part of the input id).
pub const TEMPLATE: &str = include_str!("../assets/boot.cmd");

/// The script for `board` on the disk whose MBR signature is `disk` (hex, as the initramfs
/// reads it).
pub fn render(board: &Board, disk: &str) -> String {
    let a = &board.boot.addresses;
    let hex = |s: &str| format!("0x{:x}", parse_hex(s).expect("validated"));
    let (load, boot) = match board.boot.kernel_format {
        KernelFormat::ImageGz => {
            let gz = a.kernel_gz.as_deref().expect("validated");
            (
                format!(
                    "fatload ${{meshos_part}} {gz} @SLOT@/vmlinuz || exit\nsetenv kernel_comp_addr_r {k}\nsetenv kernel_comp_size ${{filesize}}",
                    gz = hex(gz),
                    k = hex(&a.kernel)
                ),
                format!("booti {}", hex(gz)),
            )
        }
        KernelFormat::Zimage => (format!("fatload ${{meshos_part}} {k} @SLOT@/vmlinuz || exit", k = hex(&a.kernel)), format!("bootz {}", hex(&a.kernel))),
    };
    // A board without device trees boots with the one its firmware (QEMU) hands U-Boot.
    let (load_fdt, fdt) = match board.kernel.dtbs.first() {
        Some(default) => (
            format!(
                "if test -n \"${{fdtfile}}\"; then setenv meshos_fdt ${{fdtfile}}; else setenv meshos_fdt {default}; fi\n\
                 fatload ${{meshos_part}} {fdt} @SLOT@/dtbs/${{meshos_fdt}} || fatload ${{meshos_part}} {fdt} @SLOT@/dtbs/{default} || exit",
                fdt = hex(&a.fdt)
            ),
            hex(&a.fdt),
        ),
        None => ("# Device tree: the one the firmware provides.".to_string(), "${fdt_addr}".to_string()),
    };
    TEMPLATE
        .replace("@LOAD_KERNEL@", &load)
        .replace("@LOAD_FDT@", &load_fdt)
        .replace("@FDT@", &fdt)
        .replace("@BOOT@", &boot)
        .replace("@SLOT@", "${meshos_slot}")
        .replace("@STATE_ADDR@", &hex(&a.ramdisk))
        .replace("@SECTOR0@", &format!("0x{:x}", boot_state::SECTORS[0]))
        .replace("@SECTOR1@", &format!("0x{:x}", boot_state::SECTORS[1]))
        .replace("@ATTEMPTS@", &boot_state::DEFAULT_ATTEMPTS.to_string())
        .replace("@CMDLINE@", &board.kernel.cmdline)
        .replace("@DISK@", disk)
        .replace("@RAMDISK_ADDR@", &hex(&a.ramdisk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::Lock;
    use crate::plan::Plan;
    use std::path::PathBuf;

    /// Every committed board renders a complete boot script from its committed lock.
    #[test]
    fn boot_scripts_of_every_board_are_complete() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        for name in crate::board::list(&root) {
            let path = crate::board::board_path(&root, &name);
            let text = std::fs::read_to_string(&path).unwrap();
            let board = Board::parse_file(&text, &path).unwrap();
            let lock = Lock::load(&crate::lock::lock_path(&root, &name), &board, &path).unwrap();
            let plan =
                Plan::new(&root, &root.join("out"), &board, &text, &lock, &crate::signing::Trust { keys: vec![], required: 1 }, crate::plan::VERSION, &[])
                    .unwrap();
            let script = &plan.boot_script;
            assert_eq!(script, &render(&board, &plan.layout.signature_hex()));
            assert!(!script.contains('@'), "{name}: placeholder left in\n{script}");
            assert!(script.contains("meshos.slot=${meshos_slot}") && script.contains("${meshos_slot}/initrd.img"), "{name}:\n{script}");
            assert!(script.contains("read ") && script.contains(" 0x780 1") && script.contains("env export -c -s 0x200"), "{name}:\n{script}");
            let boot = if board.boot.kernel_format == KernelFormat::Zimage { "bootz " } else { "booti " };
            assert!(script.contains(boot), "{name}:\n{script}");
            assert_eq!(script.contains("${fdt_addr}"), board.kernel.dtbs.is_empty(), "{name}:\n{script}");
        }
    }
}
