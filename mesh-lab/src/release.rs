//! Releases in the lab: a signed bundle built by meshimg, laid out as a card's slot A (the
//! root image in its partition, the boot files and the signed header in the slot's directory
//! on the boot partition, as an install leaves them), and the files meshd reads from a slot's
//! root, taken from the root image once per image.

use meshos_common::bundle::{self, Manifest, SLOT_HEADER_FILE};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a lab node's meshd reads from its slot's root (see node-firmware's machine.rs).
/// (Debian's /etc/os-release is a link to ../usr/lib/os-release.)
const ROOT_FILES: [&str; 3] = ["etc/os-release", "usr/lib/os-release", "usr/share/meshos"];

pub struct Laid {
    pub manifest: Manifest,
    pub root_size: u64,
}

/// Lays `bundle_path` out in `dir` as a card's slot A: `dir/card2` and `dir/boot/a/`.
pub fn lay_out(bundle_path: &Path, dir: &Path) -> Result<Laid, String> {
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let f = File::open(bundle_path).map_err(|e| err(bundle_path, e))?;
    let opened = bundle::open(BufReader::with_capacity(1 << 20, f)).map_err(|e| format!("{}: {e}", bundle_path.display()))?;
    if !opened.is_signed() {
        return Err(format!("{}: the bundle is unsigned, and nodes install only signed bundles; build it with MESHOS_SIGN_KEY set", bundle_path.display()));
    }
    let slot_dir = dir.join("boot/a");
    fs::create_dir_all(&slot_dir).map_err(|e| err(&slot_dir, e))?;
    fs::write(slot_dir.join(SLOT_HEADER_FILE), opened.header()).map_err(|e| err(&slot_dir, e))?;
    let manifest = opened.manifest.clone();
    let root_size = manifest.images.iter().find(|i| i.name == "root").map(|i| i.size).ok_or_else(|| format!("{}: no root image", bundle_path.display()))?;
    // Streamed as a node installs it: every chunk checked against the signed manifest.
    let mut open: Option<(PathBuf, File)> = None;
    opened
        .stream(|event| match event {
            bundle::Event::Data(img, bytes) => {
                let target = if img.name == "root" { dir.join("card2") } else { slot_dir.join(img.name.trim_start_matches("boot/")) };
                if open.as_ref().is_none_or(|(p, _)| *p != target) {
                    if let Some(parent) = target.parent() {
                        fs::create_dir_all(parent)?;
                    }
                    open = Some((target.clone(), File::create(&target)?));
                }
                open.as_mut().expect("just opened").1.write_all(bytes)
            }
            bundle::Event::Done(img) => match open.take() {
                Some((_, f)) => f.sync_all(),
                None => File::create(slot_dir.join(img.name.trim_start_matches("boot/"))).map(drop),
            },
        })
        .map_err(|e| format!("{}: {e}", bundle_path.display()))?;
    Ok(Laid { manifest, root_size })
}

/// The files meshd reads from each root image the lab's nodes booted, extracted once per
/// image (by its sha256) and shared by every node that boots it.
pub struct Roots {
    dir: PathBuf,
    done: BTreeMap<String, PathBuf>,
}

impl Roots {
    pub fn new(dir: PathBuf) -> Roots {
        Roots { dir, done: BTreeMap::new() }
    }

    /// The tree of the root image named `sha256`, extracted from `partition` if not yet.
    pub fn extract(&mut self, sha256: &str, partition: &Path) -> Result<PathBuf, String> {
        if let Some(tree) = self.done.get(sha256) {
            return Ok(tree.clone());
        }
        if !meshos_common::chunks::is_sha256_hex(sha256) {
            return Err(format!("'{sha256}' is no sha256"));
        }
        let tree = self.dir.join(sha256);
        let _ = fs::remove_dir_all(&tree);
        fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let out = Command::new("unsquashfs")
            .arg("-n")
            .arg("-d")
            .arg(&tree)
            .arg(partition)
            .args(ROOT_FILES)
            .output()
            .map_err(|e| format!("unsquashfs: {e} (squashfs-tools; ci/setup-host.sh installs it)"))?;
        if !out.status.success() || !tree.join(ROOT_FILES[0]).exists() {
            return Err(format!("{}: no squashfs root with {}: {}", partition.display(), ROOT_FILES[0], String::from_utf8_lossy(&out.stderr).trim()));
        }
        self.done.insert(sha256.to_string(), tree.clone());
        Ok(tree)
    }
}
