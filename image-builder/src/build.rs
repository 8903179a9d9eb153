//! The executor: carries out a plan, step by step, timing each, and writes the outputs
//! (`.img`, `.img.xz`, its sha256, the SBOM and the build report).

use crate::board::{parse_hex, Board, KernelFormat};
use crate::lock::{Lock, Role};
use crate::package_cache::Cache;
use crate::plan::{basename, Plan};
use crate::tree::{Kind, Node, Tree};
use crate::{cjdns, disk, fsimage, initramfs, kmod, linux_firmware, meshd_build, rootfs, sbom, source, update_bundle};
use anyhow::{anyhow, Context, Result};
use meshos_common::os_release::OsRelease;
use meshos_common::{boot_state, bundle};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The U-Boot script template; also an input of the plan (its hash).
pub const BOOT_CMD: &str = include_str!("../assets/boot.cmd");
const CONF_D_README: &str = "Put mesh-orange style *.tar.gz archives here; they are applied over /etc in name order at boot.\r\n";
const UPDATES_README: &str = "Put a signed meshos-<board>-<version>.bundle here: the node installs it into its other slot at the next boot,\r\n\
then boots it and keeps it if it is healthy. A refused bundle is renamed .rejected, with the reason in a .rejected.txt file.\r\n";

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
}

/// What a build did, for the report and for the caller to print.
pub struct Report {
    pub json: serde_json::Value,
    pub img_xz: PathBuf,
    pub img_xz_sha256: String,
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

pub fn build(board: &Board, lock: &Lock, plan: &Plan, opts: &Options) -> Result<Report> {
    let cache = Cache::new(opts.cache.clone());
    let out = &plan.outputs;
    let work = out.dir.join(".work");
    // Outputs are made here and moved into place together once the build has succeeded.
    let staged = |p: &Path| work.join(p.file_name().expect("output file name"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let epoch = plan.source_date_epoch;
    let board_file = format!("board-defs/{}.yaml", board.name);
    let builds_cjdns = board.cjdns.is_some() && board.cjdns_sources.is_some();
    let mut steps = Steps { done: Vec::new(), total: 11 + usize::from(opts.sign_key.is_some()) + 2 * usize::from(builds_cjdns) };

    let downloaded = steps.run("fetch packages", || {
        let all: Vec<_> = lock.packages.iter().collect();
        Ok(cache.ensure(lock, &opts.lock_path, &all)?)
    })?;

    // Every source tree is checked against the lock before anything is compiled.
    let sources = match (&board.cjdns, &board.cjdns_sources) {
        (Some(c), Some(set)) => {
            let trees = steps.run("fetch and verify sources", || {
                Ok(source::Sources::new(&opts.cache, opts.sources.clone()).ensure(set, &lock.sources, &opts.lock_path, &board.name)?)
            })?;
            Some((c, set, trees))
        }
        _ => None,
    };
    let meshd_path = steps.run("cross-compile meshd", || Ok(meshd_build::build(&opts.root, &board.rust_target, &opts.firmware_target_dir)?))?;
    let meshd = std::fs::read(&meshd_path).with_context(|| format!("reading {}", meshd_path.display()))?;
    let cjdroute = match &sources {
        Some((c, set, trees)) => {
            let path = steps.run("cross-compile cjdns", || {
                Ok(cjdns::build(set, trees, &lock.sources, &c.rust_target, &opts.firmware_target_dir, &cache.derived("cjdns"))?)
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
    let release = OsRelease { version: plan.version.clone(), board: board.name.clone(), build_id: build_id.clone() };

    let (kernel, selection) = steps.run("kernel modules", || {
        let kernel = extract_merged(&cache, lock, Role::Kernel)?;
        let mut h = Sha256::new();
        for p in lock.with_role(Role::Kernel) {
            h.update(p.sha256.as_bytes());
        }
        let kernel_id = hex::encode(h.finalize());
        let index_cache = kmod::IndexCache { dir: &cache.derived("depmod"), kernel_id: &kernel_id };
        let sel = kmod::select(&kernel, &board.kernel.modules, &board_file, &work, &index_cache)?;
        Ok((kernel, sel))
    })?;
    let kver = selection.kver.clone();

    let (rootfs_tree, missing_firmware) = steps.run("root filesystem", || {
        let mut t = extract_merged(&cache, lock, Role::Rootfs)?;
        rootfs::strip(&mut t);
        rootfs::add_skeleton(&mut t);
        rootfs::add_busybox_links(&mut t)?;
        let moddir = format!("usr/lib/modules/{kver}");
        for m in selection.modules.values() {
            t.insert(&format!("{moddir}/{}", m.rel_path), Node::file(m.data.clone(), 0o644));
        }
        for (name, data) in &selection.indexes {
            t.insert(&format!("{moddir}/{name}"), Node::file(data.clone(), 0o644));
        }
        let mut fw = extract_merged(&cache, lock, Role::Firmware)?;
        for (name, target) in &board.firmware.links {
            fw.insert(&format!("{}/{name}", linux_firmware::DIR), Node::symlink(target.clone()));
        }
        let chosen = linux_firmware::choose(&fw, selection.modules.values(), &board.firmware.limit, &board.firmware.extra);
        for p in &chosen.paths {
            t.insert(p, fw.get(p).expect("chosen from tree").clone());
        }
        t.insert("usr/sbin/meshd", Node::file(meshd.clone(), 0o755));
        if let Some(c) = &cjdroute {
            t.insert("usr/bin/cjdroute", Node::file(c.clone(), 0o755));
        }
        for (path, text) in &plan.trust_files {
            t.insert(path, Node::file(text.clone().into_bytes(), 0o644));
        }
        for dir in &plan.overlays {
            rootfs::add_overlay(&mut t, dir)?;
        }
        rootfs::add_generated(&mut t, &release);
        t.clamp_mtimes(epoch);
        Ok((t, chosen.missing))
    })?;
    for (module, name) in &missing_firmware {
        eprintln!("build: note: no package provides firmware {name} (asked for by {module})");
    }

    let rootfs_img = work.join("rootfs.squashfs");
    steps.run("squashfs root slot", || Ok(fsimage::squashfs(&rootfs_tree, &work.join("rootfs"), &rootfs_img, epoch)?))?;
    let rootfs_size = std::fs::metadata(&rootfs_img)?.len();
    let slot_size = plan.layout.partitions[disk::ROOT_A].size;
    if rootfs_size > slot_size {
        return Err(anyhow!("{board_file}: the root filesystem is {rootfs_size} bytes but a slot holds {slot_size}\nhint: raise disk.rootSlotMib"));
    }

    let initrd = steps.run("initramfs", || {
        let busybox = extract(&cache, lock, Role::Initramfs)?;
        let (pkg, tree) = busybox.iter().next().ok_or_else(|| anyhow!("the lock has no initramfs busybox package"))?;
        let order = selection.load_order(&board.kernel.initramfs_modules, &board_file)?;
        Ok(initramfs::archive(&initramfs::tree(tree, pkg, &order, epoch)?))
    })?;

    let boot_pkgs = extract(&cache, lock, Role::Boot)?;
    let (boot_img, kernel_len, (bundle_header, bundle_images)) = steps.run("boot partition", || {
        let mut fat = Tree::new();
        for f in &board.boot.files {
            let data = match (&f.package, &f.from, &f.content) {
                (Some(p), Some(path), _) => {
                    let tree = boot_pkgs.get(p).ok_or_else(|| anyhow!("{board_file}: boot package {p} is not in the lock"))?;
                    file_of(tree, path, p)?.to_vec()
                }
                (_, _, Some(text)) => text.as_bytes().to_vec(),
                _ => unreachable!("validated by Board::parse"),
            };
            fat.insert(&f.to, Node::file(data, 0o644));
        }
        let dtb_dir = format!("usr/lib/linux-image-{kver}");
        for d in &board.kernel.dtbs {
            let data = file_of(&kernel, &format!("{dtb_dir}/{d}"), "the kernel package")?.to_vec();
            if board.boot.dtbs_at_root {
                fat.insert(basename(d), Node::file(data.clone(), 0o644));
            }
            fat.insert(&format!("a/dtbs/{d}"), Node::file(data, 0o644));
        }
        let image = file_of(&kernel, &format!("boot/vmlinuz-{kver}"), "the kernel package")?;
        let stored = match board.boot.kernel_format {
            KernelFormat::ImageGz => {
                let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
                gz.write_all(image)?;
                gz.finish()?
            }
            KernelFormat::Zimage => image.to_vec(),
        };
        let kernel_len = stored.len() as u64;
        fat.insert("a/vmlinuz", Node::file(stored, 0o644));
        fat.insert("a/initrd.img", Node::file(initrd.clone(), 0o644));
        // The bundle's images: the root, then what an upgrade writes into the other slot's
        // directory. Its header goes beside slot A's files.
        let mut images = vec![("root".to_string(), std::fs::read(&rootfs_img)?)];
        for name in &plan.slot_files {
            if let Some(Node { kind: Kind::File(data), .. }) = fat.get(name) {
                images.push((format!("boot/{}", name.trim_start_matches("a/")), data.to_vec()));
            }
        }
        let header = update_bundle::header(&format!("meshos-{}", board.name), &plan.version, &build_id, &images, opts.sign_key.as_ref(), epoch)?;
        fat.insert(&format!("a/{}", bundle::SLOT_HEADER_FILE), Node::file(header.clone(), 0o644));
        let scr = work.join("boot.scr");
        fsimage::uboot_script(&boot_script(board, plan), &scr, epoch)?;
        fat.insert("boot.scr", Node::file(std::fs::read(&scr)?, 0o644));
        let mesh_yaml = file_of(&rootfs_tree, "usr/share/meshos/mesh.yaml", "the root filesystem")?.to_vec();
        fat.insert("mesh.yaml", Node::file(mesh_yaml, 0o644));
        fat.insert("conf.d/README.txt", Node::file(CONF_D_README.as_bytes().to_vec(), 0o644));
        fat.insert("updates/README.txt", Node::file(UPDATES_README.as_bytes().to_vec(), 0o644));
        let img = work.join("boot.vfat");
        fsimage::fat(&fat, &img, plan.layout.partitions[disk::BOOT].size, plan.fat_serial, "MESHOS", epoch)?;
        Ok((img, kernel_len, (header, images)))
    })?;

    steps.run("update bundle", || Ok(update_bundle::write(&staged(&out.bundle), &bundle_header, &bundle_images)?))?;

    let data_img = work.join("data.ext4");
    steps.run("data partition", || Ok(fsimage::ext4(&data_img, plan.layout.partitions[disk::DATA].size, &plan.data_uuid, "meshos-data", epoch)?))?;

    steps.run("disk image", || {
        // The boot state record's first copy: slot A, full attempts (the second copy stays
        // empty until the first write).
        let mut raw = vec![(boot_state::SECTORS[0] * 512, boot_state::BootState::default().encode().to_vec())];
        for r in &board.boot.raw {
            let tree = boot_pkgs.get(&r.package).ok_or_else(|| anyhow!("{board_file}: boot package {} is not in the lock", r.package))?;
            raw.push((r.offset, file_of(tree, &r.from, &r.package)?.to_vec()));
        }
        let parts: [(usize, &Path); 3] = [(disk::BOOT, &boot_img), (disk::ROOT_A, &rootfs_img), (disk::DATA, &data_img)];
        Ok(disk::assemble(&plan.layout, &staged(&out.img), &raw, &parts)?)
    })?;

    let (img_sha, xz_sha) = steps.run("compress and checksum", || {
        let (img_sum, sum) = compress_xz(&staged(&out.img), &staged(&out.img_xz))?;
        let name = out.img_xz.file_name().expect("file name").to_string_lossy();
        std::fs::write(staged(&out.sha256), format!("{sum}  {name}\n"))?;
        Ok((img_sum, sum))
    })?;

    let signed_by = match &opts.sign_key {
        Some(key) => Some(steps.run("sign", || {
            crate::signing::sign_file(&staged(&out.img_xz), key, epoch)?;
            crate::signing::sign_file(&staged(&out.bundle), key, epoch)?;
            Ok(key.public().id())
        })?),
        None => None,
    };

    let crates = meshd_build::crates(&opts.root)?;
    let bom = sbom::cyclonedx(lock, &board.name, &plan.version, &build_id, &crates);
    std::fs::write(staged(&out.sbom), serde_json::to_vec_pretty(&bom)?)?;

    let size = |p: &Path| std::fs::metadata(staged(p)).map(|m| m.len()).unwrap_or(0);
    let report = json!({
        "board": board.name,
        "version": plan.version,
        "build_id": build_id,
        "input_id": plan.input_id,
        "lock_sha256": plan.lock_sha256,
        "source_date_epoch": epoch,
        "signed_by": signed_by,
        "trusted_keys": plan.trusted_keys,
        "kernel": kver,
        "downloaded_bytes": downloaded,
        "steps": steps.done.iter().map(|(n, s)| json!({"step": n, "seconds": (s * 100.0).round() / 100.0})).collect::<Vec<_>>(),
        "total_seconds": (steps.done.iter().map(|(_, s)| s).sum::<f64>() * 100.0).round() / 100.0,
        "sizes": {
            "img": size(&out.img),
            "img_xz": size(&out.img_xz),
            "root_squashfs": rootfs_size,
            "initramfs": initrd.len(),
            "kernel": kernel_len,
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
            "img": img_sha,
            "img_xz": xz_sha,
            "cjdroute": cjdroute.as_ref().map(|c| hex::encode(Sha256::digest(c))),
        },
    });
    std::fs::write(staged(&out.report), serde_json::to_vec_pretty(&report)?)?;
    // Only a build that got this far replaces the previous outputs.
    for f in [&out.img, &out.img_xz, &out.sha256, &out.sbom, &out.report, &out.bundle] {
        std::fs::rename(staged(f), f).with_context(|| format!("moving {} into place", f.display()))?;
    }
    // A signature never sits beside an image it does not sign.
    if signed_by.is_some() {
        for f in [&out.minisig, &out.bundle_minisig] {
            std::fs::rename(staged(f), f).with_context(|| format!("moving {} into place", f.display()))?;
        }
    } else {
        let _ = std::fs::remove_file(&out.minisig);
        let _ = std::fs::remove_file(&out.bundle_minisig);
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(Report { json: report, img_xz: out.img_xz.clone(), img_xz_sha256: xz_sha })
}

/// The U-Boot script, from assets/boot.cmd: one script for both slots, which picks the slot
/// from the boot state record.
pub fn boot_script(board: &Board, plan: &Plan) -> String {
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
    BOOT_CMD
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
        .replace("@DISK@", &plan.layout.signature_hex())
        .replace("@RAMDISK_ADDR@", &hex(&a.ramdisk))
}

/// Multi-threaded xz; the block size is fixed so the output does not depend on the core count.
/// Preset 0: what the image holds is already compressed (squashfs, kernel, bundles) or zeros,
/// so higher presets gain well under 1% of size for three times the time. The sha256 of the
/// image and of the `.img.xz` are taken in the same pass; returns them in that order.
fn compress_xz(src: &Path, dst: &Path) -> Result<(String, String)> {
    let threads = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let stream = liblzma::stream::MtStreamBuilder::new()
        .threads(threads)
        .block_size(16 << 20)
        .preset(0)
        .check(liblzma::stream::Check::Crc64)
        .encoder()
        .context("starting the xz encoder")?;
    let tmp = dst.with_extension("xz.partial");
    let out = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let out = HashingWriter { inner: std::io::BufWriter::new(out), hash: Sha256::new() };
    let mut enc = liblzma::write::XzEncoder::new_stream(out, stream);
    let mut input = std::fs::File::open(src).with_context(|| format!("reading {}", src.display()))?;
    let mut img_hash = Sha256::new();
    // Large writes keep liblzma's worker threads fed.
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = std::io::Read::read(&mut input, &mut buf)?;
        if n == 0 {
            break;
        }
        img_hash.update(&buf[..n]);
        enc.write_all(&buf[..n])?;
    }
    let mut out = enc.finish()?;
    out.flush()?;
    std::fs::rename(&tmp, dst)?;
    Ok((hex::encode(img_hash.finalize()), hex::encode(out.hash.finalize())))
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            let script = boot_script(&board, &plan);
            assert!(!script.contains('@'), "{name}: placeholder left in\n{script}");
            assert!(script.contains("meshos.slot=${meshos_slot}") && script.contains("${meshos_slot}/initrd.img"), "{name}:\n{script}");
            assert!(script.contains("read ") && script.contains(" 0x780 1") && script.contains("env export -c -s 0x200"), "{name}:\n{script}");
            let boot = if board.boot.kernel_format == KernelFormat::Zimage { "bootz " } else { "booti " };
            assert!(script.contains(boot), "{name}:\n{script}");
            assert_eq!(script.contains("${fdt_addr}"), board.kernel.dtbs.is_empty(), "{name}:\n{script}");
        }
    }
}
