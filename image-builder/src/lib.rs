//! meshimg: turns a board definition and overlays into a reproducible, flashable meshos image.

pub mod board;
pub mod debian;
pub mod http;
pub mod lock;
pub mod deb;
pub mod fetch;
pub mod firmware;
pub mod kmod;
pub mod tree;
pub mod disk;
pub mod fsimage;
pub mod initramfs;
pub mod rootfs;
pub mod build;
pub mod node_firmware;
pub mod plan;
pub mod sbom;
pub mod qemu;
pub mod signing;
pub mod serve;
pub mod update_bundle;
