//! The build plan: what goes where, with hashes, computed from the board, the lock and the
//! checkout without changing anything. `meshimg plan <board> --json` prints it; the executor
//! (`build`) carries it out; tests inspect it.

use crate::board::Board;
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

#[derive(Debug, Serialize)]
pub struct PlannedBootFile {
    /// Path on the boot partition.
    pub to: String,
    /// Where it comes from: "package:path", "kernel:dtb" or "inline".
    pub from: String,
}

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
    pub boot_files: Vec<PlannedBootFile>,
    pub slot_files: Vec<String>,
    pub modules: Vec<String>,
    pub initramfs_modules: Vec<String>,
    pub overlays: Vec<PathBuf>,
    /// Ids of the public keys baked into the image: its nodes accept bundles signed by these.
    pub trusted_keys: Vec<String>,
    /// How many of them must have signed a bundle.
    pub signatures_required: usize,
    /// The keys and the threshold as files of the root file system.
    #[serde(skip)]
    pub trust_files: Vec<(String, String)>,
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
        for part in [version, &lock.render(), board_text, crate::initramfs::INIT, crate::build::BOOT_CMD].into_iter().chain(key_texts) {
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

        let mut boot_files: Vec<PlannedBootFile> = board
            .boot
            .files
            .iter()
            .map(|f| PlannedBootFile {
                to: f.to.clone(),
                from: match (&f.package, &f.from) {
                    (Some(p), Some(path)) => format!("{p}:{path}"),
                    _ => "inline".into(),
                },
            })
            .collect();
        if board.boot.dtbs_at_root {
            for d in &board.kernel.dtbs {
                boot_files.push(PlannedBootFile { to: basename(d).into(), from: format!("kernel:{d}") });
            }
        }
        boot_files.push(PlannedBootFile { to: "boot.scr".into(), from: "generated: slot a boot script".into() });
        boot_files.push(PlannedBootFile { to: "mesh.yaml".into(), from: "overlay:usr/share/meshos/mesh.yaml".into() });
        boot_files.push(PlannedBootFile { to: "conf.d/README.txt".into(), from: "inline".into() });
        boot_files.push(PlannedBootFile { to: "updates/README.txt".into(), from: "inline".into() });
        boot_files.push(PlannedBootFile {
            to: format!("a/{}", meshos_common::bundle::SLOT_HEADER_FILE),
            from: "generated: the update bundle's header (manifest and signature), for serving slot a".into(),
        });
        let mut slot_files = vec!["a/vmlinuz".to_string(), "a/initrd.img".to_string()];
        slot_files.extend(board.kernel.dtbs.iter().map(|d| format!("a/dtbs/{d}")));

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
            modules: board.kernel.modules.clone(),
            initramfs_modules: board.kernel.initramfs_modules.clone(),
            overlays,
            trusted_keys: trust.keys.iter().map(PublicKey::id).collect(),
            signatures_required: trust.required,
            trust_files,
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
