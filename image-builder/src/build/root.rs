//! The root file system's steps: the kernel modules the board keeps, then the tree of the
//! root slot (packages, modules, firmware, the planned files, overlays).

use super::extract_merged;
use crate::kmod;
use crate::linux_firmware;
use crate::lock::{Lock, Role};
use crate::package_cache::Cache;
use crate::plan::{Plan, Source};
use crate::rootfs;
use crate::tree::{Node, Tree};
use anyhow::Result;
use meshos_common::os_release::OsRelease;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The kernel package's tree and the modules kept (with their dependencies and indexes).
pub fn kernel_modules(plan: &Plan, cache: &Cache, lock: &Lock, work: &Path) -> Result<(Tree, kmod::Selection)> {
    let kernel = extract_merged(cache, lock, Role::Kernel)?;
    let mut h = Sha256::new();
    for p in lock.with_role(Role::Kernel) {
        h.update(p.sha256.as_bytes());
    }
    let kernel_id = hex::encode(h.finalize());
    let index_cache = kmod::IndexCache { dir: &cache.derived("depmod"), kernel_id: &kernel_id };
    let selection = kmod::select(&kernel, &plan.modules, &plan.board_file, work, &index_cache)?;
    Ok((kernel, selection))
}

/// What the root file system's planned files are made of.
pub struct Built<'a> {
    pub meshd: &'a [u8],
    pub cjdroute: Option<&'a [u8]>,
}

/// The root slot's tree, and the firmware files kept modules ask for that no package has
/// (module, file name).
pub fn tree(plan: &Plan, cache: &Cache, lock: &Lock, selection: &kmod::Selection, built: &Built, release: &OsRelease) -> Result<(Tree, Vec<(String, String)>)> {
    let mut t = extract_merged(cache, lock, Role::Rootfs)?;
    rootfs::strip(&mut t);
    rootfs::add_skeleton(&mut t);
    rootfs::add_busybox_links(&mut t)?;
    let moddir = format!("usr/lib/modules/{}", selection.kver);
    for m in selection.modules.values() {
        t.insert(&format!("{moddir}/{}", m.rel_path), Node::file(m.data.clone(), 0o644));
    }
    for (name, data) in &selection.indexes {
        t.insert(&format!("{moddir}/{name}"), Node::file(data.clone(), 0o644));
    }
    let mut fw = extract_merged(cache, lock, Role::Firmware)?;
    for (name, target) in &plan.firmware.links {
        fw.insert(&format!("{}/{name}", linux_firmware::DIR), Node::symlink(target.clone()));
    }
    let chosen = linux_firmware::choose(&fw, selection.modules.values(), &plan.firmware.limit, &plan.firmware.extra);
    for p in &chosen.paths {
        t.insert(p, fw.get(p).expect("chosen from tree").clone());
    }
    for f in &plan.root_files {
        let node = match &f.source {
            Source::Meshd => Node::file(built.meshd.to_vec(), 0o755),
            Source::Cjdroute => Node::file(built.cjdroute.ok_or_else(|| anyhow::anyhow!("{}: cjdroute was not built", f.to))?.to_vec(), 0o755),
            Source::Inline { text } => Node::file(text.clone().into_bytes(), 0o644),
            other => anyhow::bail!("{}: a root file cannot come from {other:?}", f.to),
        };
        t.insert(&f.to, node);
    }
    for dir in &plan.overlays {
        rootfs::add_overlay(&mut t, dir)?;
    }
    rootfs::add_generated(&mut t, release);
    t.clamp_mtimes(plan.source_date_epoch);
    Ok((t, chosen.missing))
}
