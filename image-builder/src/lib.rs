//! meshimg: turns a board definition and overlays into a reproducible, flashable meshos image.

pub mod board;
pub mod boot_script;
pub mod build;
pub mod cjdns;
pub mod deb;
pub mod debian;
pub mod defs;
pub mod disk;
pub mod fsimage;
pub mod http;
pub mod initramfs;
pub mod kmod;
pub mod linux_firmware;
pub mod lock;
pub mod meshd_build;
pub mod package_cache;
pub mod plan;
pub mod qemu;
pub mod rootfs;
pub mod sbom;
pub mod serve;
pub mod signing;
pub mod source;
pub mod tree;
pub mod update_bundle;
