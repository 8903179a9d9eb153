//! The executor: carries out a plan, step by step in pipeline order, timing each, and writes
//! the outputs (`.img`, `.img.xz`, its sha256, the update bundle, signatures, the SBOM and the
//! build report). The steps' work is in the submodules, in the order they run: `root` (kernel
//! modules, root file system), `boot` (initramfs, boot partition, raw writes), `xz`.

mod boot;
mod root;
mod xz;

use crate::lock::{Lock, Role};
use crate::package_cache::Cache;
use crate::plan::Plan;
use crate::tree::{Kind, Tree};
use crate::{cjdns, disk, fsimage, meshd_build, sbom, source, update_bundle};
use anyhow::{anyhow, Context, Result};
use meshos_common::os_release::OsRelease;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct Options {
    pub root: PathBuf,
    pub lock_path: PathBuf,
    pub cache: PathBuf,
    /// Where meshd is compiled (kept between builds for warm rebuilds), and cjdns (removed once
    /// its binary is kept in the cache).
    pub firmware_target_dir: PathBuf,
    /// Signs the compressed image when given.
    pub sign_key: Option<meshos_common::minisign::SecretKey>,
    /// A directory of source tarballs searched before GitHub (`--sources`).
    pub sources: Option<PathBuf>,
    /// The update bundle without the SD image (`--bundle-only`): a release that reaches its
    /// nodes as an upgrade needs no card.
    pub bundle_only: bool,
}

/// What a build did, for the report and for the caller to print.
pub struct Report {
    pub json: serde_json::Value,
    /// The compressed image and its sha256 (none with `bundle_only`).
    pub img_xz: Option<(PathBuf, String)>,
}

struct Steps {
    done: Vec<(String, f64)>,
    total: usize,
}

impl Steps {
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        eprintln!("build: [{}/{}] {name}", self.done.len() + 1, self.total);
        let t = Instant::now();
        let v = f().with_context(|| format!("step '{name}'"))?;
        self.done.push((name.to_string(), t.elapsed().as_secs_f64()));
        Ok(v)
    }
}

/// Every package with `role`, extracted into one tree.
fn extract_merged(cache: &Cache, lock: &Lock, role: Role) -> Result<Tree> {
    let mut t = Tree::new();
    for p in lock.with_role(role) {
        t.extract_deb(&cache.path_of(&p.sha256)).with_context(|| format!("extracting {} {}", p.name, p.version))?;
    }
    Ok(t)
}

/// Each package with `role` in a tree of its own, by package name.
fn extract(cache: &Cache, lock: &Lock, role: Role) -> Result<BTreeMap<String, Tree>> {
    let mut out = BTreeMap::new();
    for p in lock.with_role(role) {
        let mut t = Tree::new();
        t.extract_deb(&cache.path_of(&p.sha256)).with_context(|| format!("extracting {} {}", p.name, p.version))?;
        out.insert(p.name.clone(), t);
    }
    Ok(out)
}

fn file_of<'a>(tree: &'a Tree, path: &str, what: &str) -> Result<&'a [u8]> {
    let real = tree.resolve(path).ok_or_else(|| anyhow!("{what} has no {path}"))?;
    match tree.get(&real).map(|n| &n.kind) {
        Some(Kind::File(d)) => Ok(d.as_slice()),
        _ => Err(anyhow!("{what}: {path} is not a file")),
    }
}

/// Carries out `plan`: the steps in pipeline order, each timed. Nothing of the board is read
/// here but what the plan says.
pub fn build(lock: &Lock, plan: &Plan, opts: &Options) -> Result<Report> {
    let cache = Cache::new(opts.cache.clone());
    let out = &plan.outputs;
    let work = out.dir.join(".work");
    // Outputs are made here and moved into place together once the build has succeeded.
    let staged = |p: &Path| work.join(p.file_name().expect("output file name"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let epoch = plan.source_date_epoch;
    let image_steps = if opts.bundle_only { 0 } else { 3 };
    let mut steps = Steps { done: Vec::new(), total: 8 + image_steps + usize::from(opts.sign_key.is_some()) + 2 * usize::from(plan.cjdns.is_some()) };

    let downloaded = steps.run("fetch packages", || {
        let all: Vec<_> = lock.packages.iter().collect();
        Ok(cache.ensure(lock, &opts.lock_path, &all)?)
    })?;

    // Every source tree is checked against the lock before anything is compiled.
    let sources = match &plan.cjdns {
        Some(c) => {
            let trees = steps.run("fetch and verify sources", || {
                Ok(source::Sources::new(&opts.cache, opts.sources.clone()).ensure(&c.sources, &lock.sources, &opts.lock_path, &plan.board)?)
            })?;
            Some((c, trees))
        }
        None => None,
    };
    let meshd_path = steps.run("cross-compile meshd", || Ok(meshd_build::build(&opts.root, &plan.rust_target, &opts.firmware_target_dir)?))?;
    let meshd = std::fs::read(&meshd_path).with_context(|| format!("reading {}", meshd_path.display()))?;
    let cjdroute = match &sources {
        Some((c, trees)) => {
            let path = steps.run("cross-compile cjdns", || {
                Ok(cjdns::build(&c.sources, trees, &lock.sources, &c.rust_target, &opts.firmware_target_dir, &cache.derived("cjdns"))?)
            })?;
            Some(std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let build_id = {
        let mut h = Sha256::new();
        h.update(plan.input_id.as_bytes());
        h.update(&meshd);
        if let Some(c) = &cjdroute {
            h.update(c);
        }
        hex::encode(h.finalize())[..16].to_string()
    };
    let release = OsRelease { version: plan.version.clone(), board: plan.board.clone(), build_id: build_id.clone() };

    let (kernel, selection) = steps.run("kernel modules", || root::kernel_modules(plan, &cache, lock, &work))?;
    let built = root::Built { meshd: &meshd, cjdroute: cjdroute.as_deref() };
    let (rootfs_tree, missing_firmware) = steps.run("root filesystem", || root::tree(plan, &cache, lock, &selection, &built, &release))?;
    for (module, name) in &missing_firmware {
        eprintln!("build: note: no package provides firmware {name} (asked for by {module})");
    }

    let rootfs_img = work.join("rootfs.squashfs");
    steps.run("squashfs root slot", || Ok(fsimage::squashfs(&rootfs_tree, &work.join("rootfs"), &rootfs_img, epoch)?))?;
    let rootfs_size = std::fs::metadata(&rootfs_img)?.len();
    let slot_size = plan.layout.partitions[disk::ROOT_A].size;
    if rootfs_size > slot_size {
        return Err(anyhow!("{}: the root filesystem is {rootfs_size} bytes but a slot holds {slot_size}\nhint: raise disk.rootSlotMib", plan.board_file));
    }

    let initrd = steps.run("initramfs", || boot::initramfs(plan, &cache, lock, &selection))?;

    let boot_packages = extract(&cache, lock, Role::Boot)?;
    let inputs = boot::Inputs {
        boot_packages: &boot_packages,
        kernel: &kernel,
        kver: &selection.kver,
        initramfs: &initrd,
        root: &rootfs_tree,
        root_image: &rootfs_img,
        build_id: &build_id,
        sign_key: opts.sign_key.as_ref(),
    };
    let boot_part = steps.run("boot partition", || boot::partition(plan, &inputs, &work))?;

    steps.run("update bundle", || Ok(update_bundle::write(&staged(&out.bundle), &boot_part.bundle_header, &boot_part.bundle_images)?))?;

    // The image's sha256 and the compressed image's.
    let image: Option<(String, String)> = if opts.bundle_only {
        None
    } else {
        let data_img = work.join("data.ext4");
        steps.run("data partition", || Ok(fsimage::ext4(&data_img, plan.layout.partitions[disk::DATA].size, &plan.data_uuid, "meshos-data", epoch)?))?;

        steps.run("disk image", || {
            let raw = boot::raw_writes(plan, &inputs, &work)?;
            let parts: [(usize, &Path); 3] = [(disk::BOOT, &boot_part.image), (disk::ROOT_A, &rootfs_img), (disk::DATA, &data_img)];
            Ok(disk::assemble(&plan.layout, &staged(&out.img), &raw, &parts)?)
        })?;

        Some(steps.run("compress and checksum", || {
            let (img_sum, sum) = xz::compress(&staged(&out.img), &staged(&out.img_xz))?;
            let name = out.img_xz.file_name().expect("file name").to_string_lossy();
            std::fs::write(staged(&out.sha256), format!("{sum}  {name}\n"))?;
            Ok((img_sum, sum))
        })?)
    };

    let signed_by = match &opts.sign_key {
        Some(key) => Some(steps.run("sign", || {
            if image.is_some() {
                crate::signing::sign_file(&staged(&out.img_xz), key, epoch)?;
            }
            crate::signing::sign_file(&staged(&out.bundle), key, epoch)?;
            Ok(key.public().id())
        })?),
        None => None,
    };

    let crates = meshd_build::crates(&opts.root)?;
    let bom = sbom::cyclonedx(lock, &plan.board, &plan.version, &build_id, &crates);
    std::fs::write(staged(&out.sbom), serde_json::to_vec_pretty(&bom)?)?;

    let size = |p: &Path| std::fs::metadata(staged(p)).map(|m| m.len()).unwrap_or(0);
    let report = json!({
        "board": plan.board,
        "version": plan.version,
        "build_id": build_id,
        "input_id": plan.input_id,
        "lock_sha256": plan.lock_sha256,
        "source_date_epoch": epoch,
        "signed_by": signed_by,
        "trusted_keys": plan.trusted_keys,
        "kernel": selection.kver,
        "downloaded_bytes": downloaded,
        "steps": steps.done.iter().map(|(n, s)| json!({"step": n, "seconds": (s * 100.0).round() / 100.0})).collect::<Vec<_>>(),
        "total_seconds": (steps.done.iter().map(|(_, s)| s).sum::<f64>() * 100.0).round() / 100.0,
        "sizes": {
            "img": image.as_ref().map(|_| size(&out.img)),
            "img_xz": image.as_ref().map(|_| size(&out.img_xz)),
            "root_squashfs": rootfs_size,
            "initramfs": initrd.len(),
            "kernel": boot_part.kernel_len,
            "meshd": meshd.len(),
            "cjdroute": cjdroute.as_ref().map(|c| c.len()),
            "bundle": size(&out.bundle),
        },
        "counts": {
            "packages": lock.packages.len(),
            "kernel_modules": selection.modules.len(),
            "root_files": rootfs_tree.len(),
        },
        "firmware_not_packaged": missing_firmware.iter().map(|(m, f)| format!("{m}: {f}")).collect::<Vec<_>>(),
        "outputs": {
            "img": image.as_ref().map(|(img, _)| img),
            "img_xz": image.as_ref().map(|(_, xz)| xz),
            "cjdroute": cjdroute.as_ref().map(|c| hex::encode(Sha256::digest(c))),
        },
    });
    std::fs::write(staged(&out.report), serde_json::to_vec_pretty(&report)?)?;
    // Only a build that got this far replaces the previous outputs; an image, its checksum or a
    // signature never sits beside a bundle or an image from another build.
    let made: Vec<(&PathBuf, bool)> = vec![
        (&out.img, image.is_some()),
        (&out.img_xz, image.is_some()),
        (&out.sha256, image.is_some()),
        (&out.sbom, true),
        (&out.report, true),
        (&out.bundle, true),
        (&out.minisig, image.is_some() && signed_by.is_some()),
        (&out.bundle_minisig, signed_by.is_some()),
    ];
    for (f, made) in made {
        if made {
            std::fs::rename(staged(f), f).with_context(|| format!("moving {} into place", f.display()))?;
        } else {
            let _ = std::fs::remove_file(f);
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(Report { json: report, img_xz: image.map(|(_, xz)| (out.img_xz.clone(), xz)) })
}
