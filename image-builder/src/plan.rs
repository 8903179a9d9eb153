//! The build plan: what goes where, with hashes, computed from the board, the lock and the
//! checkout without changing anything. It is the executor's (`build`) only description of the
//! board: every file the build writes onto the boot partition, into the root file system
//! beside the packages and overlays, and outside the partitions is listed here with where it
//! comes from. `meshimg plan <board> --json` prints it; tests inspect it.

use crate::board::{Board, Firmware, KernelFormat};
use crate::disk::Layout;
use crate::lock::{Lock, Role};
use meshos_common::minisign::PublicKey;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Serialize)]
pub struct PlannedPackage {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub roles: Vec<Role>,
}

/// Where a file the build writes comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum Source {
    /// A file of a package with the boot role (Pi firmware, U-Boot).
    Package { package: String, path: String },
    /// Text given by the board file or by meshimg.
    Inline { text: String },
    /// A device tree from the kernel package's DTB directory.
    KernelDtb { dtb: String },
    /// The kernel from the kernel package, stored as the board starts it.
    Kernel { format: KernelFormat },
    /// The initramfs: static busybox, our init and `initramfs_modules`.
    Initramfs,
    /// `boot_script`, compiled by mkimage.
    BootScript,
    /// A file of the finished root file system (overlays included).
    RootFile { path: String },
    /// The update bundle's header (manifest and signatures), so a node can serve its slot.
    BundleHeader,
    /// meshd, cross-compiled for `rust_target`.
    Meshd,
    /// cjdroute, cross-compiled from `cjdns.sources`.
    Cjdroute,
    /// The boot state record's first copy: slot A, full attempts.
    BootState,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedFile {
    /// Path on the partition (boot files) or in the root file system.
    pub to: String,
    #[serde(flatten)]
    pub source: Source,
}

/// Bytes written into the disk image outside any partition.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedRaw {
    pub offset: u64,
    #[serde(flatten)]
    pub source: Source,
}

/// cjdns, cross-compiled from pinned sources.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedCjdns {
    pub rust_target: String,
    pub sources: crate::source::SourceSet,
}

const CONF_D_README: &str = "Put mesh-orange style *.tar.gz archives here; they are applied over /etc in name order at boot.\r\n";
const UPDATES_README: &str = "Put a signed meshos-<board>-<version>.bundle here: the node installs it into its other slot at the next boot,\r\n\
then boots it and keeps it if it is healthy. A refused bundle is renamed .rejected, with the reason in a .rejected.txt file.\r\n";

#[derive(Debug, Serialize)]
pub struct Outputs {
    pub dir: PathBuf,
    pub img: PathBuf,
    pub img_xz: PathBuf,
    pub sha256: PathBuf,
    pub sbom: PathBuf,
    pub report: PathBuf,
    /// The detached signature of img_xz, when the build signs.
    pub minisig: PathBuf,
    /// The update bundle for nodes in the field, and its detached signature.
    pub bundle: PathBuf,
    pub bundle_minisig: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct Plan {
    pub board: String,
    /// The board file, as messages name it.
    pub board_file: String,
    pub version: String,
    /// sha256 of every build input except meshd's binary (version, lock, board file, overlays,
    /// initramfs init, boot script); the disk's ids and seeds derive from it.
    pub input_id: String,
    pub lock_sha256: String,
    pub source_date_epoch: i64,
    pub rust_target: String,
    pub cmdline: String,
    pub layout: Layout,
    pub fat_serial: u32,
    pub data_uuid: String,
    pub packages: Vec<PlannedPackage>,
    /// Everything on the FAT boot partition, in the order it is laid.
    pub boot_files: Vec<PlannedFile>,
    /// The boot files that belong to a slot (`a/…`); the update bundle carries them.
    pub slot_files: Vec<String>,
    /// The U-Boot script (`boot.scr` before mkimage).
    pub boot_script: String,
    /// Bytes outside the partitions (an SPL, the boot state record).
    pub raw_writes: Vec<PlannedRaw>,
    /// Drivers kept, with their dependencies (every other module is dropped).
    pub modules: Vec<String>,
    /// Drivers the initramfs loads, in order.
    pub initramfs_modules: Vec<String>,
    /// Which firmware files the kept drivers get.
    pub firmware: Firmware,
    /// Files put into the root file system after the packages and before the overlays.
    pub root_files: Vec<PlannedFile>,
    pub overlays: Vec<PathBuf>,
    pub cjdns: Option<PlannedCjdns>,
    /// Ids of the public keys baked into the image: its nodes accept bundles signed by these.
    pub trusted_keys: Vec<String>,
    /// How many of them must have signed a bundle.
    pub signatures_required: usize,
    pub outputs: Outputs,
}

pub fn overlay_dirs(root: &Path, board: &str) -> Vec<PathBuf> {
    vec![root.join("overlays/common"), root.join("overlays").join(board)]
}

impl Plan {
    /// `extra_overlays` are laid after the board's (a site's files, a test fixture).
    #[allow(clippy::too_many_arguments)] // each is a separate input the plan records
    pub fn new(
        root: &Path,
        out_root: &Path,
        board: &Board,
        board_text: &str,
        lock: &Lock,
        trust: &crate::signing::Trust,
        version: &str,
        extra_overlays: &[PathBuf],
    ) -> std::io::Result<Plan> {
        let mut overlays = overlay_dirs(root, &board.name);
        overlays.extend(extra_overlays.iter().cloned());
        let trust_files = trust.files();
        let mut h = Sha256::new();
        let key_texts: Vec<&str> = trust_files.iter().map(|(_, t)| t.as_str()).collect();
        for part in [version, &lock.render(), board_text, crate::initramfs::INIT, crate::boot_script::TEMPLATE].into_iter().chain(key_texts) {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        for dir in &overlays {
            hash_dir(&mut h, dir, dir)?;
        }
        let id = h.finalize();
        let input_id = hex::encode(id);
        let signature = u32::from_le_bytes(id[0..4].try_into().expect("4 bytes"));
        let fat_serial = u32::from_le_bytes(id[4..8].try_into().expect("4 bytes"));
        let data_uuid = crate::sbom::uuid_from(&hex::encode(&id[8..24]));
        let layout = Layout::new(&board.disk, signature);

        let file = |to: &str, source: Source| PlannedFile { to: to.to_string(), source };
        let mut boot_files: Vec<PlannedFile> = board
            .boot
            .files
            .iter()
            .map(|f| match (&f.package, &f.from, &f.content) {
                (Some(package), Some(path), _) => file(&f.to, Source::Package { package: package.clone(), path: path.clone() }),
                (_, _, Some(text)) => file(&f.to, Source::Inline { text: text.clone() }),
                _ => unreachable!("validated by Board::parse"),
            })
            .collect();
        for d in &board.kernel.dtbs {
            if board.boot.dtbs_at_root {
                boot_files.push(file(basename(d), Source::KernelDtb { dtb: d.clone() }));
            }
            boot_files.push(file(&format!("a/dtbs/{d}"), Source::KernelDtb { dtb: d.clone() }));
        }
        boot_files.push(file("a/vmlinuz", Source::Kernel { format: board.boot.kernel_format }));
        boot_files.push(file("a/initrd.img", Source::Initramfs));
        boot_files.push(file(&format!("a/{}", meshos_common::bundle::SLOT_HEADER_FILE), Source::BundleHeader));
        boot_files.push(file("boot.scr", Source::BootScript));
        boot_files.push(file("mesh.yaml", Source::RootFile { path: "usr/share/meshos/mesh.yaml".into() }));
        boot_files.push(file("conf.d/README.txt", Source::Inline { text: CONF_D_README.into() }));
        boot_files.push(file("updates/README.txt", Source::Inline { text: UPDATES_README.into() }));
        let mut slot_files = vec!["a/vmlinuz".to_string(), "a/initrd.img".to_string()];
        slot_files.extend(board.kernel.dtbs.iter().map(|d| format!("a/dtbs/{d}")));

        let mut raw_writes = vec![PlannedRaw { offset: meshos_common::boot_state::SECTORS[0] * 512, source: Source::BootState }];
        raw_writes.extend(
            board.boot.raw.iter().map(|r| PlannedRaw { offset: r.offset, source: Source::Package { package: r.package.clone(), path: r.from.clone() } }),
        );

        let cjdns = match (&board.cjdns, &board.cjdns_sources) {
            (Some(c), Some(set)) => Some(PlannedCjdns { rust_target: c.rust_target.clone(), sources: set.clone() }),
            _ => None,
        };
        let mut root_files = vec![file("usr/sbin/meshd", Source::Meshd)];
        if cjdns.is_some() {
            root_files.push(file("usr/bin/cjdroute", Source::Cjdroute));
        }
        root_files.extend(trust_files.into_iter().map(|(to, text)| file(&to, Source::Inline { text })));

        let dir = out_root.join(&board.name);
        let stem = format!("meshos-{}-{version}", board.name);
        let outputs = Outputs {
            img: dir.join(format!("{stem}.img")),
            img_xz: dir.join(format!("{stem}.img.xz")),
            sha256: dir.join(format!("{stem}.img.xz.sha256")),
            sbom: dir.join(format!("{stem}.cdx.json")),
            report: dir.join(format!("{stem}.build-report.json")),
            minisig: dir.join(format!("{stem}.img.xz.minisig")),
            bundle: dir.join(format!("{stem}.bundle")),
            bundle_minisig: dir.join(format!("{stem}.bundle.minisig")),
            dir,
        };
        Ok(Plan {
            board: board.name.clone(),
            board_file: format!("board-defs/{}.yaml", board.name),
            boot_script: crate::boot_script::render(board, &layout.signature_hex()),
            version: version.into(),
            lock_sha256: lock.hash(),
            source_date_epoch: lock.source_date_epoch,
            rust_target: board.rust_target.clone(),
            cmdline: format!("{} meshos.slot=<a|b> meshos.disk={} rootwait panic=10", board.kernel.cmdline, layout.signature_hex()),
            layout,
            fat_serial,
            data_uuid,
            packages: lock
                .packages
                .iter()
                .map(|p| PlannedPackage { name: p.name.clone(), version: p.version.clone(), sha256: p.sha256.clone(), size: p.size, roles: p.roles.clone() })
                .collect(),
            boot_files,
            slot_files,
            raw_writes,
            modules: board.kernel.modules.clone(),
            initramfs_modules: board.kernel.initramfs_modules.clone(),
            firmware: board.firmware.clone(),
            root_files,
            overlays,
            cjdns,
            trusted_keys: trust.keys.iter().map(PublicKey::id).collect(),
            signatures_required: trust.required,
            outputs,
            input_id,
        })
    }
}

pub fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn hash_dir(h: &mut Sha256, base: &Path, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !dir.exists() {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let rel = path.strip_prefix(base).unwrap_or(&path).to_string_lossy().into_owned();
        h.update(rel.as_bytes());
        h.update((meta.permissions().mode() & 0o111 != 0).to_string().as_bytes());
        if meta.is_dir() {
            hash_dir(h, base, &path)?;
        } else if meta.file_type().is_symlink() {
            h.update(std::fs::read_link(&path)?.to_string_lossy().as_bytes());
        } else {
            let data = std::fs::read(&path)?;
            h.update((data.len() as u64).to_le_bytes());
            h.update(&data);
        }
    }
    Ok(())
}
