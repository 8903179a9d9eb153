//! File-system images made with the standard tools (no root, no loop mounts), every
//! timestamp, id and seed fixed so the same inputs give the same bytes.

use crate::tree::{Kind, Tree};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{tool} failed making {image}: {stderr}")]
    Tool { tool: String, image: PathBuf, stderr: String },
    #[error("cannot run {tool}: {source}\nhint: run 'ci/setup-host.sh' (make image does) to install the host tools")]
    Missing { tool: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{image}: {what} needs {need} bytes but the board gives {have} (raise disk.{field} in the board file)")]
    TooBig { image: PathBuf, what: String, need: u64, have: u64, field: String },
}

/// How a tool learns the build's fixed time.
enum Clock {
    /// From the environment: SOURCE_DATE_EPOCH (mtools, mkimage), E2FSPROGS_FAKE_TIME (mke2fs).
    Env(i64),
    /// From its own options (mksquashfs, which refuses SOURCE_DATE_EPOCH beside them).
    Options,
}

fn run(tool: &str, image: &Path, cmd: &mut Command, clock: Clock) -> Result<(), FsError> {
    match clock {
        Clock::Env(epoch) => cmd.env("SOURCE_DATE_EPOCH", epoch.to_string()).env("E2FSPROGS_FAKE_TIME", epoch.to_string()),
        Clock::Options => cmd.env_remove("SOURCE_DATE_EPOCH"),
    };
    let out = cmd
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("TZ", "UTC")
        .env("PATH", format!("{}:/usr/sbin:/sbin", std::env::var("PATH").unwrap_or_default()))
        .output()
        .map_err(|source| FsError::Missing { tool: tool.into(), source })?;
    if !out.status.success() {
        return Err(FsError::Tool { tool: tool.into(), image: image.into(), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(())
}

/// Read-only root: xz squashfs of the tree. Owners other than root go through a pseudo file.
///
/// `-no-fragments` keeps each file's data in blocks of its own: with fragments, small files
/// are packed together, so one file added or grown repacks every fragment block after it.
/// Measured on the qemu-arm64 root (a 36 KB file in /etc and a 300 KB one in /usr/lib
/// added), the chunks a node must fetch fell from 560 to 398 KB for 3% more slot
/// (docs/upgrades.md). Files are laid in sorted order, so a change moves nothing else.
pub fn squashfs(tree: &Tree, staging: &Path, image: &Path, epoch: i64) -> Result<(), FsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FsError::Io { path, source }
    };
    let _ = std::fs::remove_dir_all(staging);
    std::fs::create_dir_all(staging).map_err(io(staging))?;
    tree.write_to(staging).map_err(io(staging))?;
    let mut pseudo = String::new();
    for (path, node) in tree.iter() {
        if (node.uid, node.gid) != (0, 0) && !matches!(node.kind, Kind::Symlink(_)) && !path.contains(char::is_whitespace) {
            pseudo.push_str(&format!("{path} m {:o} {} {}\n", node.mode, node.uid, node.gid));
        }
    }
    let pf = staging.with_extension("pseudo");
    std::fs::write(&pf, pseudo).map_err(io(&pf))?;
    let _ = std::fs::remove_file(image);
    run(
        "mksquashfs",
        image,
        Command::new("mksquashfs")
            .arg(staging)
            .arg(image)
            .args(["-comp", "xz", "-b", "256K", "-no-fragments", "-noappend", "-no-xattrs", "-all-root", "-reproducible", "-quiet", "-no-progress"])
            .args(["-mkfs-time", &epoch.to_string(), "-all-time", &epoch.to_string()])
            .arg("-pf")
            .arg(&pf),
        Clock::Options,
    )?;
    std::fs::remove_dir_all(staging).map_err(io(staging))
}

/// FAT32 boot partition of `size` bytes holding `files` (path on the partition → content).
pub fn fat(files: &Tree, image: &Path, size: u64, serial: u32, label: &str, epoch: i64) -> Result<(), FsError> {
    let io = |source| FsError::Io { path: image.into(), source };
    let need: u64 = files.iter().map(|(_, n)| if let Kind::File(d) = &n.kind { d.len() as u64 + 4096 } else { 4096 }).sum();
    if need > size * 9 / 10 {
        return Err(FsError::TooBig { image: image.into(), what: "the boot files".into(), need, have: size, field: "bootMib".into() });
    }
    let f = std::fs::File::create(image).map_err(io)?;
    f.set_len(size).map_err(io)?;
    drop(f);
    let img = image.to_string_lossy().into_owned();
    run(
        "mformat",
        image,
        Command::new("mformat").args([
            "-i",
            &img,
            "-F",
            "-N",
            &format!("{serial:08x}"),
            "-v",
            label,
            "-T",
            &(size / 512).to_string(),
            "-h",
            "64",
            "-s",
            "32",
            "::",
        ]),
        Clock::Env(epoch),
    )?;
    // One file at a time, in sorted order, so directory entries always come out the same.
    let staging = image.with_extension("files");
    let _ = std::fs::remove_dir_all(&staging);
    for (path, node) in files.iter() {
        match &node.kind {
            Kind::Dir => run("mmd", image, Command::new("mmd").args(["-i", &img, &format!("::/{path}")]), Clock::Env(epoch))?,
            Kind::File(data) => {
                let src = staging.join(path.replace('/', "_"));
                std::fs::create_dir_all(&staging).map_err(io)?;
                std::fs::write(&src, data.as_slice()).map_err(io)?;
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch as u64);
                std::fs::File::open(&src).and_then(|f| f.set_modified(t)).map_err(io)?;
                run("mcopy", image, Command::new("mcopy").args(["-i", &img, "-m", "-o"]).arg(&src).arg(format!("::/{path}")), Clock::Env(epoch))?;
                std::fs::remove_file(&src).map_err(io)?;
            }
            Kind::Symlink(_) => {}
        }
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(())
}

/// Empty ext4 data partition with a fixed UUID and hash seed.
pub fn ext4(image: &Path, size: u64, uuid: &str, label: &str, epoch: i64) -> Result<(), FsError> {
    let _ = std::fs::remove_file(image);
    run(
        "mke2fs",
        image,
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", label, "-U", uuid])
            .args(["-E", &format!("hash_seed={uuid},root_owner=0:0,lazy_itable_init=0")])
            .arg(image)
            .arg(format!("{}k", size / 1024)),
        Clock::Env(epoch),
    )
}

/// `mkimage` script image (boot.scr) from U-Boot hush text.
pub fn uboot_script(text: &str, image: &Path, epoch: i64) -> Result<(), FsError> {
    let src = image.with_extension("cmd");
    std::fs::write(&src, text).map_err(|source| FsError::Io { path: src.clone(), source })?;
    run(
        "mkimage",
        image,
        Command::new("mkimage").args(["-A", "arm64", "-O", "linux", "-T", "script", "-C", "none", "-n", "meshos boot"]).arg("-d").arg(&src).arg(image),
        Clock::Env(epoch),
    )?;
    let _ = std::fs::remove_file(&src);
    Ok(())
}
