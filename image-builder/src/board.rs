//! Board definitions: `board-defs/<board>.yaml`, what a board is.
//!
//! Versioned by `apiVersion`; unknown keys are errors that name the file and the key, so a
//! typo never silently drops a driver or a firmware file.

use crate::defs::{under, API_VERSION};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("{path}: cannot read: {source}\nhint: boards live in board-defs/<board>.yaml; `meshimg boards` lists them")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Board {
    pub api_version: String,
    pub name: String,
    pub description: String,
    /// Debian architecture (`arm64`, `armhf`).
    pub arch: String,
    /// Rust target `meshd` is built for.
    pub rust_target: String,
    pub debian: Debian,
    /// Packages installed into the root filesystem, with their dependencies.
    pub packages: Vec<String>,
    /// Dependencies not to follow: packages that only serve maintainer scripts, which a
    /// built image never runs (adduser, debconf). A dependency group naming one is skipped.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Package whose static busybox runs the initramfs.
    pub initramfs_busybox: String,
    pub kernel: Kernel,
    pub firmware: Firmware,
    pub boot: Boot,
    pub disk: Disk,
    pub qemu: Qemu,
    /// cjdns's `cjdroute`, cross-compiled from the sources pinned in
    /// `board-defs/sources/cjdns.yaml` (none: the image has no cjdns).
    #[serde(default)]
    pub cjdns: Option<CjdnsBuild>,
    /// The sources of `cjdns`, read by [`Board::load`] beside the board file.
    #[serde(skip)]
    pub cjdns_sources: Option<crate::source::SourceSet>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CjdnsBuild {
    /// Rust target cjdns is built for. Its C parts compile against the Debian cross
    /// toolchain's C library, so a glibc target (the image's Debian userland is glibc too).
    pub rust_target: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Debian {
    pub suite: String,
    pub components: Vec<String>,
    #[serde(default = "default_mirror")]
    pub mirror: String,
    /// OpenPGP keyring holding the archive keys (binary, as Debian ships it).
    #[serde(default = "default_keyring")]
    pub keyring: PathBuf,
    /// Primary-key fingerprints trusted to sign `InRelease`; any other key in the keyring is ignored.
    #[serde(default = "default_trusted_keys")]
    pub trusted_keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kernel {
    /// A `linux-image-*` package; a metapackage is followed to the versioned image it depends on.
    pub package: String,
    /// Device trees, relative to the kernel package's DTB directory.
    pub dtbs: Vec<String>,
    /// Kernel command line (consoles and such); the boot script adds slot and disk.
    pub cmdline: String,
    /// Drivers wanted on the node; their dependency closure is kept, every other module dropped.
    pub modules: Vec<String>,
    /// Drivers the initramfs loads, in this order (with dependencies first), to reach the root.
    pub initramfs_modules: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Firmware {
    /// Packages firmware files are taken from (only the files kept modules ask for).
    pub packages: Vec<String>,
    /// Per module, glob patterns narrowing which of its firmware files this board needs.
    #[serde(default)]
    pub limit: BTreeMap<String, Vec<String>>,
    /// Per module, firmware names the driver also requests that its `.modinfo` does not list
    /// (legacy fallbacks such as ath9k_htc's `htc_9271.fw`).
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
    /// Links to make in the firmware directory (name → target), where a package's maintainer
    /// scripts would have chosen an alternative (wireless-regdb's regulatory.db).
    #[serde(default)]
    pub links: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Boot {
    /// Packages boot files are taken from (firmware, U-Boot).
    pub packages: Vec<String>,
    /// Files laid onto the FAT boot partition.
    pub files: Vec<BootFile>,
    /// Raw writes into the disk image outside any partition (e.g. an SPL at 8 KiB).
    #[serde(default)]
    pub raw: Vec<RawWrite>,
    /// Also copy the kernel's device trees to the partition root (where the Pi firmware looks).
    #[serde(default)]
    pub dtbs_at_root: bool,
    /// How the kernel is stored and started.
    #[serde(default)]
    pub kernel_format: KernelFormat,
    /// U-Boot load addresses for the boot script.
    pub addresses: LoadAddresses,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BootFile {
    /// Path on the FAT partition.
    pub to: String,
    /// Package the file comes from (with `from`), or none for inline `content`.
    #[serde(default)]
    pub package: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub content: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawWrite {
    pub package: String,
    pub from: String,
    /// Byte offset in the disk image.
    pub offset: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelFormat {
    /// arm64 `Image`, stored gzip-compressed (half the card reading), started with `booti`.
    #[default]
    ImageGz,
    /// arm `zImage` (decompresses itself), started with `bootz`.
    Zimage,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadAddresses {
    /// Where the gzip kernel is loaded from the card (image-gz only).
    #[serde(default)]
    pub kernel_gz: Option<String>,
    /// Where U-Boot decompresses it.
    pub kernel: String,
    pub fdt: String,
    pub ramdisk: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Disk {
    pub boot_mib: u32,
    pub root_slot_mib: u32,
    pub data_mib: u32,
    /// First partition starts here; the space before holds the MBR (and a boot loader on some boards).
    #[serde(default = "default_first_partition_kib")]
    pub first_partition_kib: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Qemu {
    pub binary: String,
    pub machine: String,
    pub memory: String,
    /// File on the boot partition QEMU loads as its kernel (U-Boot), if the machine needs one.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Device tree on the boot partition handed to QEMU, if the machine needs one.
    #[serde(default)]
    pub dtb: Option<String>,
    /// File on the boot partition QEMU runs as its firmware (`-bios`: U-Boot on `virt`).
    #[serde(default)]
    pub bios: Option<String>,
    /// How the image is attached: an SD card (Pi, Allwinner) or a virtio disk.
    #[serde(default)]
    pub drive: Drive,
    /// Serial ports muxed onto the console.
    pub serials: u32,
    /// Network device for user networking (`--forward`); none if the machine has no network card.
    #[serde(default)]
    pub nic: Option<String>,
    #[serde(default)]
    pub extra_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Drive {
    #[default]
    Virtio,
    Sd,
}

fn default_mirror() -> String {
    "http://deb.debian.org/debian".into()
}
fn default_keyring() -> PathBuf {
    "/usr/share/keyrings/debian-archive-keyring.gpg".into()
}
/// Debian's archive and release keys for bookworm and trixie.
fn default_trusted_keys() -> Vec<String> {
    [
        "04B54C3CDCA79751B16BC6B5225629DF75B188BD", // Archive Automatic Signing Key (13/trixie)
        "41587F7DB8C774BCCF131416762F67A0B2C39DE4", // Stable Release Key (13/trixie)
        "B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8", // Archive Automatic Signing Key (12/bookworm)
        "4D64FEC119C2029067D6E791F8D2585B8783D481", // Stable Release Key (12/bookworm)
    ]
    .map(String::from)
    .to_vec()
}
fn default_first_partition_kib() -> u32 {
    1024
}

impl Board {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Board, BoardError> {
        let text = std::fs::read_to_string(path).map_err(|source| BoardError::Read { path: path.into(), source })?;
        Board::parse_file(&text, path)
    }

    /// [`Board::parse`], then the source sets the board builds, read beside `path`.
    pub fn parse_file(text: &str, path: &Path) -> Result<Board, BoardError> {
        let mut board = Board::parse(text, path)?;
        if board.cjdns.is_some() {
            let sources = path.parent().unwrap_or(Path::new(".")).join("sources/cjdns.yaml");
            let set = crate::source::SourceSet::load(&sources).map_err(|e| BoardError::Invalid { path: path.into(), message: format!("cjdns: {e}") })?;
            board.cjdns_sources = Some(set);
        }
        Ok(board)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Board, BoardError> {
        let board: Board = serde_norway::from_str(text).map_err(|e| BoardError::Parse {
            path: path.into(),
            message: match e.location() {
                Some(l) => format!("line {}: {}", l.line(), strip_location(&e.to_string())),
                None => e.to_string(),
            },
        })?;
        board.validate(path)?;
        Ok(board)
    }

    fn validate(&self, path: &Path) -> Result<(), BoardError> {
        let invalid = |message: String| Err(BoardError::Invalid { path: path.into(), message });
        if self.api_version != API_VERSION {
            return invalid(format!(
                "apiVersion is '{}' but this meshimg reads '{API_VERSION}'\nhint: update meshimg, or write the board in the {API_VERSION} format",
                self.api_version
            ));
        }
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
            if stem != self.name {
                return invalid(format!("name is '{}' but the file is named '{stem}.yaml'; they must match", self.name));
            }
        }
        if !self.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return invalid(format!("name '{}' may hold only a-z, 0-9 and '-'", self.name));
        }
        if !["arm64", "armhf", "amd64"].contains(&self.arch.as_str()) {
            return invalid(format!("arch '{}' is not one of arm64, armhf, amd64", self.arch));
        }
        for f in &self.boot.files {
            match (&f.package, &f.from, &f.content) {
                (Some(_), Some(_), None) | (None, None, Some(_)) => {}
                _ => return invalid(format!("boot.files entry '{}' needs either package+from or content", f.to)),
            }
            if let Some(p) = &f.package {
                if !self.boot.packages.contains(p) {
                    return invalid(format!("boot.files entry '{}' takes from '{p}', which is not in boot.packages", f.to));
                }
            }
        }
        for r in &self.boot.raw {
            if !self.boot.packages.contains(&r.package) {
                return invalid(format!("boot.raw entry '{}' takes from '{}', which is not in boot.packages", r.from, r.package));
            }
            if r.offset < 512 {
                return invalid(format!("boot.raw entry '{}' at offset {} would overwrite the partition table", r.from, r.offset));
            }
        }
        let a = &self.boot.addresses;
        if self.boot.kernel_format == KernelFormat::ImageGz && a.kernel_gz.is_none() {
            return invalid("boot.addresses.kernelGz is needed with kernelFormat image-gz".into());
        }
        for a in [a.kernel_gz.as_ref().unwrap_or(&a.kernel), &a.kernel, &a.fdt, &a.ramdisk] {
            if parse_hex(a).is_none() {
                return invalid(format!("boot.addresses value '{a}' is not a hex address like 0x02000000"));
            }
        }
        for fp in &self.debian.trusted_keys {
            if fp.len() != 40 || !fp.chars().all(|c| c.is_ascii_hexdigit()) {
                return invalid(format!("debian.trustedKeys entry '{fp}' is not a 40-digit hex fingerprint"));
            }
        }
        for (field, m) in self.firmware.limit.keys().map(|m| ("limit", m)).chain(self.firmware.extra.keys().map(|m| ("extra", m))) {
            if !self.kernel.modules.iter().any(|k| normalize_module(k) == normalize_module(m)) {
                return invalid(format!("firmware.{field} names module '{m}', which is not in kernel.modules"));
            }
        }
        if self.disk.first_partition_kib < 1 || self.boot.raw.iter().any(|r| r.offset >= u64::from(self.disk.first_partition_kib) * 1024) {
            return invalid("disk.firstPartitionKib leaves no room for the boot.raw writes".into());
        }
        Ok(())
    }

    /// The part of the board that decides what the lock holds; a change here makes the lock stale.
    pub fn lock_inputs(&self) -> String {
        serde_json::json!({
            "arch": self.arch, "debian": self.debian, "packages": self.packages,
            "exclude": self.exclude,
            "busybox": self.initramfs_busybox, "kernel": self.kernel.package,
            "firmware": self.firmware.packages, "boot": self.boot.packages,
            "sources": self.cjdns_sources.as_ref().map(|s| s.lock_inputs()),
        })
        .to_string()
    }
}

/// Module names are the same with '-' or '_' (the kernel treats them alike).
pub fn normalize_module(name: &str) -> String {
    name.replace('-', "_")
}

pub fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// serde_norway appends "at line X column Y"; we print the line first instead.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// `board-defs/<name>.yaml` under `root`.
pub fn board_path(root: &Path, name: &str) -> PathBuf {
    under(root, &format!("board-defs/{name}.yaml"))
}

/// Names of the boards in `board-defs/`.
pub fn list(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("board-defs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".yaml").map(String::from))
        .collect();
    names.sort();
    names
}
