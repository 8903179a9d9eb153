//! The boot side's steps: the initramfs, then the FAT boot partition laid from the plan's
//! boot files (with the update bundle's header, made from the slot's files), and the bytes
//! written outside the partitions.

use super::{extract, file_of};
use crate::board::KernelFormat;
use crate::kmod::Selection;
use crate::lock::{Lock, Role};
use crate::package_cache::Cache;
use crate::plan::{Plan, Source};
use crate::tree::{Node, Tree};
use crate::{fsimage, initramfs, update_bundle};
use anyhow::{anyhow, Result};
use meshos_common::boot_state;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The gzip-compressed newc initramfs.
pub fn initramfs(plan: &Plan, cache: &Cache, lock: &Lock, selection: &Selection) -> Result<Vec<u8>> {
    let busybox = extract(cache, lock, Role::Initramfs)?;
    let (pkg, tree) = busybox.iter().next().ok_or_else(|| anyhow!("the lock has no initramfs busybox package"))?;
    let order = selection.load_order(&plan.initramfs_modules, &plan.board_file)?;
    Ok(initramfs::archive(&initramfs::tree(tree, pkg, &order, plan.source_date_epoch)?))
}

/// What the boot partition's files are made of.
pub struct Inputs<'a> {
    pub boot_packages: &'a BTreeMap<String, Tree>,
    pub kernel: &'a Tree,
    pub kver: &'a str,
    pub initramfs: &'a [u8],
    pub root: &'a Tree,
    pub root_image: &'a Path,
    pub build_id: &'a str,
    pub sign_key: Option<&'a meshos_common::minisign::SecretKey>,
}

/// The boot partition as laid out.
pub struct Partition {
    pub image: PathBuf,
    /// The kernel as stored (compressed or not), in bytes.
    pub kernel_len: u64,
    /// The update bundle: its header and its images (the root, then the slot's boot files).
    pub bundle_header: Vec<u8>,
    pub bundle_images: Vec<(String, Vec<u8>)>,
}

/// The bytes of a boot file or raw write, except the bundle's header (made from the others).
fn resolve(source: &Source, plan: &Plan, inputs: &Inputs, work: &Path) -> Result<Vec<u8>> {
    let package = |p: &str| inputs.boot_packages.get(p).ok_or_else(|| anyhow!("{}: boot package {p} is not in the lock", plan.board_file));
    Ok(match source {
        Source::Package { package: p, path } => file_of(package(p)?, path, p)?.to_vec(),
        Source::Inline { text } => text.as_bytes().to_vec(),
        Source::KernelDtb { dtb } => file_of(inputs.kernel, &format!("usr/lib/linux-image-{}/{dtb}", inputs.kver), "the kernel package")?.to_vec(),
        Source::Kernel { format } => {
            let image = file_of(inputs.kernel, &format!("boot/vmlinuz-{}", inputs.kver), "the kernel package")?;
            match format {
                KernelFormat::ImageGz => {
                    let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
                    gz.write_all(image)?;
                    gz.finish()?
                }
                KernelFormat::Zimage => image.to_vec(),
            }
        }
        Source::Initramfs => inputs.initramfs.to_vec(),
        Source::BootScript => {
            let scr = work.join("boot.scr");
            fsimage::uboot_script(&plan.boot_script, &scr, plan.source_date_epoch)?;
            std::fs::read(&scr)?
        }
        Source::RootFile { path } => file_of(inputs.root, path, "the root filesystem")?.to_vec(),
        Source::BootState => boot_state::BootState::default().encode().to_vec(),
        Source::BundleHeader | Source::Meshd | Source::Cjdroute => unreachable!("{source:?} is not resolved here"),
    })
}

pub fn partition(plan: &Plan, inputs: &Inputs, work: &Path) -> Result<Partition> {
    let mut files = BTreeMap::new();
    for f in plan.boot_files.iter().filter(|f| f.source != Source::BundleHeader) {
        files.insert(f.to.as_str(), resolve(&f.source, plan, inputs, work)?);
    }
    // The bundle's images: the root, then what an upgrade writes into the other slot's
    // directory. Its header goes beside slot A's files.
    let mut images = vec![("root".to_string(), std::fs::read(inputs.root_image)?)];
    for name in &plan.slot_files {
        let data = files.get(name.as_str()).ok_or_else(|| anyhow!("slot file {name} is not a planned boot file"))?;
        images.push((format!("boot/{}", name.trim_start_matches("a/")), data.clone()));
    }
    let header = update_bundle::header(&format!("meshos-{}", plan.board), &plan.version, inputs.build_id, &images, inputs.sign_key, plan.source_date_epoch)?;
    let mut fat = Tree::new();
    for f in &plan.boot_files {
        let data = if f.source == Source::BundleHeader { header.clone() } else { files[f.to.as_str()].clone() };
        fat.insert(&f.to, Node::file(data, 0o644));
    }
    let kernel_len = plan.boot_files.iter().find(|f| matches!(f.source, Source::Kernel { .. })).map_or(0, |f| files[f.to.as_str()].len() as u64);
    let image = work.join("boot.vfat");
    fsimage::fat(&fat, &image, plan.layout.partitions[crate::disk::BOOT].size, plan.fat_serial, "MESHOS", plan.source_date_epoch)?;
    Ok(Partition { image, kernel_len, bundle_header: header, bundle_images: images })
}

/// The writes outside the partitions, resolved: (offset, bytes).
pub fn raw_writes(plan: &Plan, inputs: &Inputs, work: &Path) -> Result<Vec<(u64, Vec<u8>)>> {
    plan.raw_writes.iter().map(|r| Ok((r.offset, resolve(&r.source, plan, inputs, work)?))).collect()
}
