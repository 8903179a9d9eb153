//! Boots a built image in the board's QEMU machine (TCG only: this host's /dev/kvm is not to be
//! trusted). The image itself is never written: the guest writes to a qcow2 overlay, which
//! also gives the power-of-two card size QEMU's SD model requires, or to a card file
//! (`card`) that lives on across runs, as an SD card does across reboots and power cuts.
//!
//! With `expect_ready`, the console is watched for the boot contract line and QEMU is stopped
//! once it appears: the boot test.

use crate::board::Board;
use meshos_common::boot_contract::ReadyLine;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("{path}: no such image\nhint: build it first: make image BOARD={board}")]
    NoImage { path: PathBuf, board: String },
    #[error("--forward needs a network card, and the {machine} machine of board {board} has none")]
    NoNic { board: String, machine: String },
    #[error("'{0}' is not HOSTPORT:GUESTPORT")]
    BadForward(String),
    #[error("'{0}' is not LOCALPORT:REMOTEPORT (two UDP ports on 127.0.0.1, the other VM's reversed)")]
    BadLink(String),
    #[error("'{0}' is not NAME=PATH (a file to put on the boot partition)")]
    BadBootFile(String),
    #[error("--boot-file {name}: {path} ({size} bytes) does not fit on the boot partition of {card}\nhint: take files off the card (updates/ keeps refused bundles as *.rejected), or give board {board} a larger disk.bootMib")]
    NoRoom { name: String, path: String, size: u64, card: PathBuf, board: String },
    #[error("{tool}: {message}\nhint: run ci/setup-host.sh (make qemu does) to install QEMU and mtools")]
    Tool { tool: String, message: String },
    #[error("no '{prefix}' line within {seconds} s; last console lines:\n{tail}")]
    Timeout { prefix: &'static str, seconds: u64, tail: String },
    #[error("QEMU exited ({status}) before the node was ready; last console lines:\n{tail}")]
    Exited { status: String, tail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub struct Options {
    pub image: PathBuf,
    pub forwards: Vec<String>,
    /// Point-to-point Ethernet links to other VMs: `LOCALPORT:REMOTEPORT` over UDP on loopback.
    pub links: Vec<String>,
    /// Files put onto this boot's copy of the FAT partition: `NAME=PATH` (e.g. a mesh.yaml).
    pub boot_files: Vec<String>,
    /// Stop once the node prints the ready line; fail after this long.
    pub expect_ready: Option<Duration>,
    /// Copy of the console output.
    pub log: Option<PathBuf>,
    /// The node's card, kept across runs: made from `image` when missing, else used as it is
    /// (with `boot_files` put on it first). Killing QEMU is then a power cut.
    pub card: Option<PathBuf>,
    pub work: PathBuf,
}

pub struct Booted {
    pub ready: Option<ReadyLine>,
    pub seconds: f64,
}

fn tool(cmd: &mut Command, name: &str) -> Result<(), QemuError> {
    let out = cmd.output().map_err(|e| QemuError::Tool { tool: name.into(), message: e.to_string() })?;
    if !out.status.success() {
        return Err(QemuError::Tool { tool: name.into(), message: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(())
}

/// Copies `name` out of the image's boot partition.
fn from_boot_partition(image: &Path, board: &Board, name: &str, to: &Path) -> Result<(), QemuError> {
    let offset = u64::from(board.disk.first_partition_kib) * 1024;
    let spec = format!("{}@@{offset}", image.display());
    tool(Command::new("mcopy").env("MTOOLS_SKIP_CHECK", "1").args(["-o", "-n", "-i", &spec, &format!("::/{name}")]).arg(to), "mcopy")
}

fn ports(spec: &str) -> Option<(u16, u16)> {
    let (a, b) = spec.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The network cards: one on a restricted user network for the forwards (loopback only, no
/// way out), one per link. Checked before anything else is done.
fn network(board: &Board, forwards: &[String], links: &[String]) -> Result<Vec<String>, QemuError> {
    if forwards.is_empty() && links.is_empty() {
        // No network at all (QEMU would otherwise add a default card on some machines).
        return Ok(vec!["-nic".into(), "none".into()]);
    }
    let q = &board.qemu;
    let nic = q.nic.as_ref().ok_or_else(|| QemuError::NoNic { board: board.name.clone(), machine: q.machine.clone() })?;
    // No option ROM: U-Boot does not network-boot, and the ROM comes from a package we need not install.
    let rom = if nic.ends_with("-pci") { ",romfile=" } else { "" };
    let mut args: Vec<String> = Vec::new();
    if !forwards.is_empty() {
        let mut netdev = "user,id=net0,restrict=on".to_string();
        for f in forwards {
            let (h, g) = ports(f).ok_or_else(|| QemuError::BadForward(f.clone()))?;
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
        }
        args.extend(["-netdev".into(), netdev, "-device".into(), format!("{nic},netdev=net0{rom}")]);
    }
    for (i, l) in links.iter().enumerate() {
        let (local, remote) = ports(l).ok_or_else(|| QemuError::BadLink(l.clone()))?;
        // The MAC comes from the local port, unique on this host, so link-local addresses differ
        // between VMs (QEMU would give every VM the same default MAC).
        let mac = format!("52:54:00:4d:{:02x}:{:02x}", local >> 8, local & 0xff);
        args.extend([
            "-netdev".into(),
            format!("socket,id=link{i},udp=127.0.0.1:{remote},localaddr=127.0.0.1:{local}"),
            "-device".into(),
            format!("{nic},netdev=link{i},mac={mac}{rom}"),
        ]);
    }
    Ok(args)
}

/// A private copy of the image (sparse, so cheap) with `boot_files` put on its FAT partition.
fn image_with_boot_files(board: &Board, opts: &Options) -> Result<PathBuf, QemuError> {
    if opts.boot_files.is_empty() {
        return Ok(opts.image.canonicalize()?);
    }
    let copy = opts.work.join("disk.img");
    tool(Command::new("cp").args(["--sparse=always"]).arg(&opts.image).arg(&copy), "cp")?;
    put_boot_files(board, &copy, &opts.boot_files)?;
    Ok(copy)
}

/// The card file: a sparse copy of the image, grown to the power-of-two size QEMU's SD model
/// wants, made once; `boot_files` are put on it each time (a card taken out and written to).
fn card(board: &Board, opts: &Options, card: &Path) -> Result<(), QemuError> {
    if !card.exists() {
        let partial = card.with_extension("partial");
        tool(Command::new("cp").args(["--sparse=always"]).arg(&opts.image).arg(&partial), "cp")?;
        let size = std::fs::metadata(&partial)?.len().next_power_of_two();
        std::fs::OpenOptions::new().write(true).open(&partial)?.set_len(size)?;
        std::fs::rename(&partial, card)?;
    }
    put_boot_files(board, card, &opts.boot_files)
}

fn put_boot_files(board: &Board, disk: &Path, boot_files: &[String]) -> Result<(), QemuError> {
    let offset = u64::from(board.disk.first_partition_kib) * 1024;
    let spec = format!("{}@@{offset}", disk.display());
    for f in boot_files {
        let (name, path) = f.split_once('=').ok_or_else(|| QemuError::BadBootFile(f.clone()))?;
        // A name on the FAT partition, possibly in one of its directories (conf.d/…).
        if name.is_empty() || name.starts_with('/') || name.split('/').any(|part| part.is_empty() || part == "..") || name.contains('\\') {
            return Err(QemuError::BadBootFile(f.clone()));
        }
        if !Path::new(path).is_file() {
            return Err(QemuError::Tool { tool: "--boot-file".into(), message: format!("{path}: no such file") });
        }
        if let Some((dir, _)) = name.rsplit_once('/') {
            // mcopy does not make directories; a card may have lost one its owner deleted.
            let _ = Command::new("mmd").env("MTOOLS_SKIP_CHECK", "1").args(["-D", "s", "-i", &spec, &format!("::/{dir}")]).output();
        }
        match tool(Command::new("mcopy").env("MTOOLS_SKIP_CHECK", "1").args(["-o", "-i", &spec, path, &format!("::/{name}")]), "mcopy") {
            Err(QemuError::Tool { message, .. }) if message.contains("Disk full") => {
                // (mcopy has removed what it had written)
                let size = std::fs::metadata(path)?.len();
                return Err(QemuError::NoRoom { name: name.into(), path: path.into(), size, card: disk.into(), board: board.name.clone() });
            }
            other => other?,
        }
    }
    Ok(())
}

pub fn command(board: &Board, opts: &Options) -> Result<Command, QemuError> {
    let netdev = network(board, &opts.forwards, &opts.links)?;
    if !opts.image.exists() {
        return Err(QemuError::NoImage { path: opts.image.clone(), board: board.name.clone() });
    }
    std::fs::create_dir_all(&opts.work)?;
    if let Some(c) = &opts.card {
        card(board, opts, c)?;
    }
    // Firmware QEMU loads itself comes from the card when there is one: what the node would boot.
    let source = opts.card.as_ref().unwrap_or(&opts.image);
    let q = &board.qemu;
    let mut cmd = Command::new(&q.binary);
    cmd.args(["-M", &q.machine, "-m", &q.memory, "-accel", "tcg", "-display", "none", "-monitor", "none"]);
    if let Some(k) = &q.kernel {
        let path = opts.work.join(crate::plan::basename(k));
        from_boot_partition(source, board, k, &path)?;
        cmd.arg("-kernel").arg(path);
    }
    if let Some(b) = &q.bios {
        let path = opts.work.join(crate::plan::basename(b));
        from_boot_partition(source, board, b, &path)?;
        cmd.arg("-bios").arg(path);
    }
    if let Some(d) = &q.dtb {
        let path = opts.work.join(crate::plan::basename(d));
        from_boot_partition(source, board, d, &path)?;
        cmd.arg("-dtb").arg(path);
    }
    let interface = match q.drive {
        crate::board::Drive::Sd => "sd",
        crate::board::Drive::Virtio => "virtio",
    };
    if let Some(c) = &opts.card {
        cmd.arg("-drive").arg(format!("if={interface},format=raw,file={}", c.display()));
    } else {
        let size = std::fs::metadata(&opts.image)?.len().next_power_of_two();
        let overlay = opts.work.join("disk.qcow2");
        let _ = std::fs::remove_file(&overlay);
        let image = image_with_boot_files(board, opts)?;
        tool(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"]).arg(&image).arg(&overlay).arg(size.to_string()), "qemu-img")?;
        cmd.arg("-drive").arg(format!("if={interface},format=qcow2,file={}", overlay.display()));
    }
    cmd.args(["-chardev", "stdio,id=console,mux=on,signal=on"]);
    for _ in 0..q.serials.max(1) {
        cmd.args(["-serial", "chardev:console"]);
    }
    cmd.args(&netdev);
    cmd.args(&q.extra_args);
    Ok(cmd)
}

/// Runs QEMU with the console on this terminal; with `expect_ready`, stops at the ready line.
pub fn boot(board: &Board, opts: &Options) -> Result<Booted, QemuError> {
    let mut cmd = command(board, opts)?;
    let started = Instant::now();
    let stop_asked = stop_on_signal();
    let Some(limit) = opts.expect_ready else {
        return run_until_stopped(board, cmd, started, &stop_asked);
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| QemuError::Tool { tool: board.qemu.binary.clone(), message: e.to_string() })?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let err_tx = tx.clone();
    std::thread::spawn(move || lines(stdout, tx));
    std::thread::spawn(move || lines(stderr, err_tx));
    let mut log = opts.log.as_ref().map(std::fs::File::create).transpose()?;
    let mut tail: Vec<String> = Vec::new();
    let result = loop {
        let left = limit.saturating_sub(started.elapsed());
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                println!("{line}");
                if let Some(f) = log.as_mut() {
                    writeln!(f, "{line}")?;
                }
                if let Some(ready) = ReadyLine::parse(&line) {
                    break Ok(Booted { ready: Some(ready), seconds: started.elapsed().as_secs_f64() });
                }
                tail.push(line);
                if tail.len() > 30 {
                    tail.remove(0);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if stop_asked.load(Ordering::SeqCst) => {
                break Err(QemuError::Exited { status: "stopped by a signal".into(), tail: tail.join("\n") })
            }
            Err(mpsc::RecvTimeoutError::Timeout) if started.elapsed() < limit => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Err(QemuError::Timeout { prefix: meshos_common::boot_contract::READY_PREFIX, seconds: limit.as_secs(), tail: tail.join("\n") })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                break Err(QemuError::Exited { status, tail: tail.join("\n") });
            }
        }
    };
    stop(&mut child);
    result
}

/// SIGINT/SIGTERM stop QEMU too (rather than orphaning it), so the caller can clean up the
/// work directory.
fn stop_on_signal() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let set = flag.clone();
        let _ = ctrlc::set_handler(move || set.store(true, Ordering::SeqCst));
        flag
    })
    .clone()
}

/// Interactive (or backgrounded) run: the console is this process's.
fn run_until_stopped(board: &Board, mut cmd: Command, started: Instant, stop_asked: &AtomicBool) -> Result<Booted, QemuError> {
    let mut child = cmd.spawn().map_err(|e| QemuError::Tool { tool: board.qemu.binary.clone(), message: e.to_string() })?;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() && !stop_asked.load(Ordering::SeqCst) {
                return Err(QemuError::Exited { status: status.to_string(), tail: String::new() });
            }
            return Ok(Booted { ready: None, seconds: started.elapsed().as_secs_f64() });
        }
        if stop_asked.load(Ordering::SeqCst) {
            stop(&mut child);
            return Ok(Booted { ready: None, seconds: started.elapsed().as_secs_f64() });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Console bytes to lines (lossy: a boot console is not always UTF-8).
fn lines(r: impl Read, tx: mpsc::Sender<String>) {
    let mut reader = BufReader::new(r);
    let mut buf = Vec::new();
    while reader.read_until(b'\n', &mut buf).map(|n| n > 0).unwrap_or(false) {
        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string();
        if tx.send(line).is_err() {
            return;
        }
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boot_file_that_does_not_fit_is_named_and_leaves_nothing_behind() {
        let board = Board::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../board-defs/qemu-arm64.yaml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        let offset = u64::from(board.disk.first_partition_kib) * 1024;
        std::fs::File::create(&disk).unwrap().set_len(offset + (2 << 20)).unwrap();
        let spec = format!("{}@@{offset}", disk.display());
        tool(Command::new("mformat").env("MTOOLS_SKIP_CHECK", "1").args(["-i", &spec, "-T", "4096", "-h", "64", "-s", "32", "::"]), "mformat").unwrap();
        let (small, big) = (dir.path().join("mesh.yaml"), dir.path().join("big.bundle"));
        std::fs::write(&small, "apiVersion: meshos/v1\n").unwrap();
        std::fs::write(&big, vec![7u8; 3 << 20]).unwrap();

        let err = put_boot_files(&board, &disk, &[format!("updates/big.bundle={}", big.display())]).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, QemuError::NoRoom { size, .. } if size == 3 << 20), "{text}");
        assert!(text.contains("--boot-file updates/big.bundle") && text.contains("disk.bootMib"), "{text}");
        let listing = Command::new("mdir").env("MTOOLS_SKIP_CHECK", "1").args(["-b", "-i", &spec, "::/updates"]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&listing.stdout).trim(), "", "a partial copy was left on the card");

        put_boot_files(&board, &disk, &[format!("mesh.yaml={}", small.display())]).unwrap();
    }
}
