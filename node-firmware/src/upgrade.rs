//! Installing an update bundle into the inactive slot, as an explicit state machine:
//!
//! verify signature → check board and version → mark the target slot bad → write it, hashing
//! as it streams → mark it to be tried (attempts) → reboot.
//!
//! Nothing is written before the bundle's signature, board and version are checked. The
//! target is marked bad first, so a power cut while it is half written can never boot it; the
//! running slot stays first in the boot order until the single write that makes the target
//! the one to try. The install's progress is kept in `<state>/upgrade.json` for
//! `meshd upgrade status`, and a bundle left in `updates/` on the FAT partition is installed at
//! start (the offline path), so an install cut short is simply done again.

use crate::bundle_source::Source;
use crate::slots;
use meshos_common::boot_state::{BootState, Slot, DEFAULT_ATTEMPTS};
use meshos_common::bundle::{self, BundleError, ErrorKind, Event};
use meshos_common::minisign::PublicKey;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The install's states, in order; each names what it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Verify,
    CheckCompatible,
    /// Fetching the chunks the node lacks from its neighbours (an install over the mesh).
    Fetch,
    MarkTargetBad,
    Write,
    MarkTry,
    Reboot,
    /// Installed; the target boots next, on trial.
    Installed,
    /// The target booted, passed its health check and was marked good.
    Committed,
    /// The target ran out of boot attempts; the node went back to the old slot.
    RolledBack,
    Failed,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Verify => "checking the signatures",
            Step::CheckCompatible => "checking that it fits this node",
            Step::Fetch => "fetching chunks from neighbours",
            Step::MarkTargetBad => "marking the other slot unbootable",
            Step::Write => "writing the other slot",
            Step::MarkTry => "marking the new slot to be tried",
            Step::Reboot => "rebooting",
            Step::Installed => "installed",
            Step::Committed => "committed",
            Step::RolledBack => "rolled back",
            Step::Failed => "failed",
        })
    }
}

/// What an install over the mesh moved, kept in the upgrade record (so it survives the reboot
/// into the new slot and shows in `meshd upgrade status` and the metrics).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Transfer {
    /// The whole bundle's size: what a node without any chunk would fetch.
    pub bundle_bytes: u64,
    pub header_bytes: u64,
    /// Chunk bytes found in the running slot.
    pub reused_bytes: u64,
    /// Chunk bytes this install had to fetch.
    pub needed_bytes: u64,
    /// Bytes received from neighbours for this release, headers and bad chunks included,
    /// over every attempt (an install resumed after a power cut adds to it).
    pub fetched_bytes: u64,
    pub attempts: u32,
    /// Per neighbour (its base URL): what it served and what it got wrong.
    pub peers: std::collections::BTreeMap<String, PeerTally>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerTally {
    pub chunks: u64,
    pub bytes: u64,
    /// Chunks whose bytes did not match the signed manifest.
    pub bad_chunks: u64,
    /// Requests that failed (no answer, not held, an HTTP error).
    pub failures: u64,
}

/// What `meshd upgrade status` shows, kept on the data partition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub step: Step,
    pub source: String,
    pub version: Option<String>,
    pub target: Option<String>,
    pub error: Option<String>,
    /// `error`'s stable kind (signature, incompatible, not_newer, truncated, …).
    pub error_kind: Option<String>,
    /// sha256 of the release's signed manifest: its name on the mesh.
    #[serde(default)]
    pub manifest_sha256: Option<String>,
    /// For an install over the mesh: what was fetched, from whom, and what was found bad.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
    /// Overlay addresses of the neighbours the node had when it rebooted into the new slot:
    /// the slot is healthy only once it has one of them back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neighbours: Vec<String>,
    /// Installed by the upgrade agent, which also reboots into it when the neighbourhood
    /// allows (an install by hand with --no-reboot waits for its operator).
    #[serde(default)]
    pub by_agent: bool,
    /// Why the last attempt of this install's trial failed (crate::health): the kind a node
    /// announces if the slot is rolled back; none when it never got as far as meshd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial_failure: Option<String>,
}

impl Record {
    pub fn new(source: String) -> Record {
        Record {
            step: Step::Verify,
            source,
            version: None,
            target: None,
            error: None,
            error_kind: None,
            manifest_sha256: None,
            transfer: None,
            neighbours: Vec::new(),
            by_agent: false,
            trial_failure: None,
        }
    }
}

pub fn record_path(state_dir: &Path) -> PathBuf {
    state_dir.join("upgrade.json")
}

pub fn read_record(state_dir: &Path) -> Option<Record> {
    fs::read_to_string(record_path(state_dir)).ok().and_then(|t| serde_json::from_str(&t).ok())
}

pub fn save(state_dir: &Path, r: &Record) {
    let p = record_path(state_dir);
    if let Err(e) = crate::durable::write(&p, &serde_json::to_vec_pretty(r).expect("record serialises"), 0o644) {
        logln!("meshd: upgrade: {}: {e}", p.display());
    }
}

/// The node as the installer needs it.
pub struct Target<'a> {
    pub disk: &'a Path,
    pub running: Slot,
    pub compatible: String,
    pub version: String,
    pub trusted: &'a [PublicKey],
    /// How many of them must have signed a release (a community's k of n; 1 by default).
    pub required: usize,
    pub boot_dir: &'a Path,
    pub state_dir: &'a Path,
}

/// The partition device of `slot` on `disk` (root A is partition 2, root B partition 3).
pub fn slot_partition(disk: &Path, slot: Slot) -> PathBuf {
    let n = match slot {
        Slot::A => 2,
        Slot::B => 3,
    };
    let d = disk.display().to_string();
    PathBuf::from(if d.ends_with(|c: char| c.is_ascii_digit()) { format!("{d}p{n}") } else { format!("{d}{n}") })
}

/// A partition's size from sysfs (a regular file's, in tests).
pub fn partition_size(part: &Path) -> Option<u64> {
    let name = part.file_name()?.to_string_lossy().into_owned();
    match fs::read_to_string(Path::new("/sys/class/block").join(name).join("size")) {
        Ok(sectors) => Some(sectors.trim().parse::<u64>().ok()? * 512),
        Err(_) => fs::metadata(part).ok().filter(|m| m.is_file()).map(|m| m.len()),
    }
}

#[derive(Debug)]
pub struct InstallError {
    pub step: Step,
    pub kind: ErrorKind,
    pub message: String,
}

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (while {})", self.message, self.step)
    }
}

/// Held while an install runs: one at a time, whoever starts it (the agent, `meshd upgrade
/// install`, a bundle in updates/). Released when dropped (or when the process dies).
pub struct InstallLock(#[allow(dead_code)] nix::fcntl::Flock<File>);

pub fn lock(state_dir: &Path) -> Result<InstallLock, InstallError> {
    let path = state_dir.join("install.lock");
    let f = File::create(&path).map_err(|e| fail(Step::Verify, ErrorKind::Io)(format!("{}: {e}", path.display())))?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(held) => Ok(InstallLock(held)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            Err(fail(Step::Verify, ErrorKind::Busy)("another install is running on this node (see 'meshd upgrade status'); try again when it is done".into()))
        }
        Err((_, e)) => Err(fail(Step::Verify, ErrorKind::Io)(format!("{}: {e}", path.display()))),
    }
}

/// Runs the state machine on the bundle at `source`; returns the version installed.
pub fn install(source: &Source, node: &Target, allow_downgrade: bool) -> Result<String, InstallError> {
    let _lock = lock(node.state_dir)?;
    // Before a record of this install exists: the trial's own record must stay as it is.
    refuse_on_trial(node)?;
    let mut record = Record::new(source.to_string());
    let result = run(source, node, allow_downgrade, &mut record);
    conclude(node, &mut record, &result);
    result
}

/// The record's last word on an install, saved.
pub fn conclude(node: &Target, record: &mut Record, result: &Result<String, InstallError>) {
    match result {
        Ok(_) => record.step = Step::Installed,
        Err(e) => {
            record.error = Some(e.message.clone());
            record.error_kind = Some(e.kind.as_str().into());
            record.step = Step::Failed;
        }
    }
    save(node.state_dir, record);
}

/// What an install that finds the boot partition read-only adds to its error.
const READ_ONLY: &str = "the boot partition is read-only: the kernel found damage on it and stopped writing to it; \
the next boot checks and repairs it, and the install can run again then";

impl InstallError {
    pub fn new(step: Step, kind: ErrorKind, message: String) -> InstallError {
        let message = if kind == ErrorKind::ReadOnly { format!("{message} ({READ_ONLY})") } else { message };
        InstallError { step, kind, message }
    }
}

fn fail(step: Step, kind: ErrorKind) -> impl Fn(String) -> InstallError {
    move |message: String| InstallError::new(step, kind, message)
}

/// A file on the card could not be written: `read_only` when the kernel made its file system so.
fn io_fail(step: Step, path: &Path) -> impl Fn(std::io::Error) -> InstallError + '_ {
    move |e: std::io::Error| {
        let kind = if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem { ErrorKind::ReadOnly } else { ErrorKind::Io };
        InstallError::new(step, kind, format!("{}: {e}", path.display()))
    }
}

fn bundle_err(step: Step, origin: &str) -> impl Fn(BundleError) -> InstallError + '_ {
    move |e: BundleError| InstallError::new(step, e.kind(), format!("{origin}: {e}"))
}

fn run(source: &Source, node: &Target, allow_downgrade: bool, record: &mut Record) -> Result<String, InstallError> {
    let origin = source.to_string();
    let input = source.open().map_err(fail(Step::Verify, ErrorKind::Io))?;
    let opened = bundle::open(input.reader).map_err(bundle_err(Step::Verify, &origin))?;
    // Named before the signature is checked, so a refusal says which release it refused.
    record.version = Some(opened.manifest.version.clone());
    opened.verify(node.trusted, node.required).map_err(bundle_err(Step::Verify, &origin))?;
    if let Some(len) = input.len.filter(|len| *len < opened.total_size()) {
        let why = format!("it has {len} of its {} bytes", opened.total_size());
        return Err(bundle_err(Step::Verify, &origin)(BundleError::Truncated(why)));
    }
    let target = check(&opened, node, allow_downgrade, record, &origin)?;
    mark_target_bad(node, target, &opened.manifest, record)?;
    let version = opened.manifest.version.clone();
    let header = opened.header();
    let mut writer = SlotWriter::open(node, target)?;
    opened.stream(|event| writer.event(event)).map_err(bundle_err(Step::Write, &origin))?;
    finish(node, target, &header, &version, record)?;
    Ok(version)
}

/// Installing while the running slot is itself on trial would overwrite the last slot known to
/// be good; the node first commits (or rolls back), then installs.
pub fn refuse_on_trial(node: &Target) -> Result<(), InstallError> {
    if let Some(r) = read_record(node.state_dir).filter(|r| r.step == Step::Installed && r.target.as_deref().and_then(Slot::parse) == Some(node.running)) {
        let v = r.version.unwrap_or_default();
        return Err(fail(Step::Verify, ErrorKind::OnTrial)(format!(
            "slot {} runs {v} on trial: an install now would overwrite slot {}, the last one known good; it can follow once {v} is committed",
            node.running,
            node.running.other()
        )));
    }
    Ok(())
}

/// Board, version and sizes, before anything is written; returns the slot to write.
pub fn check<R: std::io::Read>(
    opened: &bundle::Opened<R>,
    node: &Target,
    allow_downgrade: bool,
    record: &mut Record,
    origin: &str,
) -> Result<Slot, InstallError> {
    record.step = Step::CheckCompatible;
    record.version = Some(opened.manifest.version.clone());
    record.manifest_sha256 = Some(opened.manifest_sha256());
    opened.check_compatible(&node.compatible, &node.version, allow_downgrade).map_err(bundle_err(Step::CheckCompatible, origin))?;
    let target = node.running.other();
    record.target = Some(target.to_string());
    let part = slot_partition(node.disk, target);
    let room = partition_size(&part).ok_or_else(|| fail(Step::CheckCompatible, ErrorKind::Io)(format!("{}: cannot read its size", part.display())))?;
    let root: u64 = opened.manifest.images.iter().filter(|i| i.name == "root").map(|i| i.size).sum();
    if root > room {
        return Err(fail(Step::CheckCompatible, ErrorKind::TooLarge)(format!("the root image is {root} bytes but slot {target} holds {room}")));
    }
    Ok(target)
}

/// Takes `target` out of the boot order (no attempts left) and forgets its old header, so a
/// power cut while it is half written can never boot it nor serve it.
pub fn mark_target_bad(node: &Target, target: Slot, manifest: &bundle::Manifest, record: &mut Record) -> Result<(), InstallError> {
    record.step = Step::MarkTargetBad;
    save(node.state_dir, record);
    slots::update(node.disk, |state| {
        let mut bad = state.clone();
        bad.order.retain(|s| *s != target);
        if bad.order.is_empty() {
            bad.order.push(node.running);
        }
        bad.set_left(target, 0);
        Some(bad)
    })
    .map_err(fail(Step::MarkTargetBad, ErrorKind::BootState))?;
    let header_path = node.boot_dir.join(target.lower()).join(bundle::SLOT_HEADER_FILE);
    match fs::remove_file(&header_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_fail(Step::MarkTargetBad, &header_path)(e)),
        _ => {}
    }
    logln!("meshd: upgrade: {} {}: slot {target} marked bad, writing it", manifest.compatible, manifest.version);
    record.step = Step::Write;
    save(node.state_dir, record);
    Ok(())
}

/// The target slot being written: the root image into its partition, `boot/…` files into its
/// directory on the boot partition.
pub struct SlotWriter {
    part: PathBuf,
    root: File,
    slot_dir: PathBuf,
    boot_file: Option<(PathBuf, File)>,
}

impl SlotWriter {
    pub fn open(node: &Target, target: Slot) -> Result<SlotWriter, InstallError> {
        let part = slot_partition(node.disk, target);
        let root = OpenOptions::new().write(true).open(&part).map_err(io_fail(Step::Write, &part))?;
        Ok(SlotWriter { part, root, slot_dir: node.boot_dir.join(target.lower()), boot_file: None })
    }

    pub fn event(&mut self, event: Event) -> std::io::Result<()> {
        match event {
            Event::Data(img, chunk) if img.name == "root" => self.root.write_all(chunk).map_err(|e| ctx(&self.part, e)),
            Event::Data(img, chunk) => {
                let path = self.slot_dir.join(img.name.trim_start_matches("boot/"));
                if self.boot_file.as_ref().is_none_or(|(p, _)| *p != path) {
                    if let Some(parent) = path.parent() {
                        fs::create_dir_all(parent).map_err(|e| ctx(parent, e))?;
                    }
                    let f = File::create(&path).map_err(|e| ctx(&path, e))?;
                    self.boot_file = Some((path, f));
                }
                let (p, f) = self.boot_file.as_mut().expect("just opened");
                f.write_all(chunk).map_err(|e| ctx(p, e))
            }
            Event::Done(img) if img.name == "root" => self.root.sync_all().map_err(|e| ctx(&self.part, e)),
            Event::Done(img) => match self.boot_file.take() {
                Some((p, f)) => f.sync_all().map_err(|e| ctx(&p, e)),
                // An empty file gets no Data: make it now.
                None => {
                    let path = self.slot_dir.join(img.name.trim_start_matches("boot/"));
                    File::create(&path).and_then(|f| f.sync_all()).map_err(|e| ctx(&path, e))
                }
            },
        }
    }
}

/// A healthy boot: marks the running `slot` good on `disk`, then closes the last install's
/// story in its record: committed when this slot is the one it installed, rolled back when
/// that slot ran out of attempts and this one runs instead.
pub fn commit_boot(disk: &Path, slot: Slot, state_dir: &Path) -> Result<slots::SlotReport, String> {
    let report = slots::mark_good(disk, slot)?;
    if let Some(mut r) = read_record(state_dir).filter(|r| r.step == Step::Installed) {
        if report.rolled_back_from.is_some() {
            r.step = Step::RolledBack;
            r.error = Some(format!("slot {} did not become healthy within its boot attempts; slot {slot} runs again", r.target.as_deref().unwrap_or("?")));
            r.error_kind = Some(ErrorKind::RolledBack.as_str().into());
        } else if r.target.as_deref().and_then(Slot::parse) == Some(slot) {
            r.step = Step::Committed;
        }
        save(state_dir, &r);
    }
    Ok(report)
}

/// After every image matched: the header beside the slot's files (so the node can serve the
/// slot), everything on the card, then the single write that makes `target` the slot to try.
pub fn finish(node: &Target, target: Slot, header: &[u8], version: &str, record: &mut Record) -> Result<(), InstallError> {
    let slot_dir = node.boot_dir.join(target.lower());
    let header_path = slot_dir.join(bundle::SLOT_HEADER_FILE);
    fs::create_dir_all(&slot_dir)
        .and_then(|()| File::create(&header_path))
        .and_then(|mut f| f.write_all(header).and_then(|()| f.sync_all()))
        .map_err(io_fail(Step::Write, &header_path))?;
    // The files were synced one by one, but their directory entries and the FAT are the boot
    // file system's: all of it must be on the card before the record says "boot this slot".
    sync_fs(node.boot_dir).map_err(fail(Step::Write, ErrorKind::Io))?;

    record.step = Step::MarkTry;
    save(node.state_dir, record);
    slots::update(node.disk, |state| {
        let mut try_it = BootState { order: vec![target, node.running], ..state.clone() };
        try_it.set_left(target, DEFAULT_ATTEMPTS);
        Some(try_it)
    })
    .map_err(fail(Step::MarkTry, ErrorKind::BootState))?;
    logln!("meshd: upgrade: slot {target} holds {version} and boots next ({DEFAULT_ATTEMPTS} attempts, then slot {} again)", node.running);
    Ok(())
}

/// syncfs(2) of the file system holding `dir`.
fn sync_fs(dir: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let d = File::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // SAFETY: syncfs only reads the descriptor, which `d` keeps open for the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(format!("{}: syncfs: {}", dir.display(), std::io::Error::last_os_error()));
    }
    Ok(())
}

fn ctx(what: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", what.display()))
}

/// Bundles waiting in `<boot>/updates/`, oldest name first.
pub fn pending(boot_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(boot_dir.join("updates")) else { return Vec::new() };
    let mut v: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "bundle")).collect();
    v.sort();
    v
}

/// After an attempt on a bundle from `updates/`: an installed one is removed (the new slot has
/// it); a refused one is renamed `.rejected` with the reason beside it, so it is not tried at
/// every boot and its owner can read why. All of it is on the card when this returns: the node
/// may be switched off soon after, and FAT has no journal (the reason is written before the
/// rename, so a cut between them only means the bundle is refused again, with the same reason).
pub fn settle(bundle: &Path, result: &Result<String, InstallError>) {
    let outcome = match result {
        Ok(_) => fs::remove_file(bundle),
        Err(e) => {
            let reason = bundle.with_extension("rejected.txt");
            File::create(&reason)
                .and_then(|mut f| f.write_all(format!("{e}\n").as_bytes()).and_then(|()| f.sync_all()))
                .and_then(|()| fs::rename(bundle, bundle.with_extension("bundle.rejected")))
        }
    };
    if let Err(e) = outcome {
        logln!("meshd: upgrade: {}: {e}", bundle.display());
    }
    // The rename and the removal: the boot partition as a whole, in one call.
    if let Err(e) = sync_fs(bundle.parent().unwrap_or(Path::new("/"))) {
        logln!("meshd: upgrade: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node in a directory: `card` (the boot state record, slot A running), `card2` and
    /// `card3` (the root slots), `boot/` and the state directory.
    fn node_dir(name: &str) -> tempfile::TempDir {
        let dir = tempfile::Builder::new().prefix(name).tempdir().unwrap();
        let card = fs::File::create(dir.path().join("card")).unwrap();
        card.set_len(1 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&card, &BootState { a_left: 2, ..BootState::default() }.encode(), meshos_common::boot_state::SECTORS[0] * 512)
            .unwrap();
        fs::write(dir.path().join("card2"), vec![0xAAu8; 400_000]).unwrap();
        fs::write(dir.path().join("card3"), vec![0u8; 400_000]).unwrap();
        fs::create_dir_all(dir.path().join("boot/a")).unwrap();
        fs::write(dir.path().join("boot/a/vmlinuz"), b"old kernel").unwrap();
        fs::create_dir_all(dir.path().join("state")).unwrap();
        dir
    }

    /// A signed bundle of version 1.1 for meshos-test: a root image and a kernel.
    fn signed_bundle(key: &meshos_common::minisign::SecretKey, root: &[u8]) -> Vec<u8> {
        let m = bundle::Manifest {
            format: bundle::FORMAT,
            compatible: "meshos-test".into(),
            version: "1.1".into(),
            build_id: "t1".into(),
            images: vec![bundle::image_entry("root", root), bundle::image_entry("boot/vmlinuz", b"new kernel")],
        };
        let json = serde_json::to_vec(&m).unwrap();
        let mut b = bundle::header(&json, Some(&key.sign(&json, "bundle", "manifest").render()));
        b.extend_from_slice(root);
        b.extend_from_slice(b"new kernel");
        b
    }

    #[test]
    fn an_install_writes_the_other_slot_then_marks_it_to_be_tried_and_a_bad_one_leaves_a_alone() {
        let key = meshos_common::minisign::SecretKey::generate().unwrap();
        let trusted = [key.public()];
        let root: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let dir = node_dir("meshd-install-");
        let d = dir.path();
        let (disk, boot, state) = (d.join("card"), d.join("boot"), d.join("state"));
        let node = Target {
            disk: &disk,
            running: Slot::A,
            compatible: "meshos-test".into(),
            version: "1.0".into(),
            trusted: &trusted,
            required: 1,
            boot_dir: &boot,
            state_dir: &state,
        };

        // Altered payload: refused after B was marked bad, so B never boots half written, and
        // slot A (partition, kernel, place in the order) is as it was.
        let mut altered = signed_bundle(&key, &root);
        let n = altered.len();
        altered[n - 100] ^= 1;
        fs::write(d.join("altered.bundle"), &altered).unwrap();
        let e = install(&Source::File(d.join("altered.bundle")), &node, false).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PayloadMismatch, "{e}");
        let (st, _) = slots::read_state(&disk).unwrap();
        assert_eq!((st.order.clone(), st.b_left), (vec![Slot::A], 0));
        assert_eq!(fs::read(d.join("card2")).unwrap(), vec![0xAAu8; 400_000]);
        assert_eq!(fs::read(boot.join("a/vmlinuz")).unwrap(), b"old kernel");
        assert_eq!(read_record(&state).unwrap().step, Step::Failed);

        // Cut short: refused as truncated, nothing marked to be tried.
        fs::write(d.join("short.bundle"), &signed_bundle(&key, &root)[..100_000]).unwrap();
        assert_eq!(install(&Source::File(d.join("short.bundle")), &node, false).unwrap_err().kind, ErrorKind::Truncated);
        assert_eq!(slots::read_state(&disk).unwrap().0.order, vec![Slot::A]);

        // The good bundle: B holds it, byte for byte, and boots next with all its attempts.
        fs::write(d.join("good.bundle"), signed_bundle(&key, &root)).unwrap();
        assert_eq!(install(&Source::File(d.join("good.bundle")), &node, false).unwrap(), "1.1");
        assert_eq!(&fs::read(d.join("card3")).unwrap()[..root.len()], &root[..]);
        assert_eq!(fs::read(boot.join("b/vmlinuz")).unwrap(), b"new kernel");
        assert!(boot.join("b").join(bundle::SLOT_HEADER_FILE).exists());
        let (st, _) = slots::read_state(&disk).unwrap();
        assert_eq!((st.order.clone(), st.b_left), (vec![Slot::B, Slot::A], DEFAULT_ATTEMPTS));
        let r = read_record(&state).unwrap();
        assert_eq!((r.step, r.target.as_deref(), r.version.as_deref()), (Step::Installed, Some("B"), Some("1.1")));
        assert_eq!(fs::read(d.join("card2")).unwrap(), vec![0xAAu8; 400_000], "slot A is never written");

        // Signed by a key this node does not trust: refused at the signature.
        let other = meshos_common::minisign::SecretKey::generate().unwrap();
        fs::write(d.join("untrusted.bundle"), signed_bundle(&other, &root)).unwrap();
        let node_b = Target { running: Slot::B, version: "1.0".into(), ..node };
        save(&state, &Record { step: Step::Committed, ..r });
        assert_eq!(install(&Source::File(d.join("untrusted.bundle")), &node_b, false).unwrap_err().kind, ErrorKind::Signature);
    }

    #[test]
    fn a_healthy_boot_commits_the_trial_or_records_the_rollback() {
        let dir = node_dir("meshd-commit-");
        let (disk, state) = (dir.path().join("card"), dir.path().join("state"));
        let trial = Record { step: Step::Installed, target: Some("B".into()), version: Some("1.1".into()), ..Record::new("x".into()) };
        let write = |st: BootState| slots::update(&disk, |_| Some(st)).unwrap();

        // B on trial, healthy: committed, its attempts back to full.
        write(BootState { order: vec![Slot::B, Slot::A], a_left: 3, b_left: 2, seq: 0 });
        save(&state, &trial);
        let report = commit_boot(&disk, Slot::B, &state).unwrap();
        assert_eq!((report.rolled_back_from, report.b_left), (None, 3));
        assert_eq!(read_record(&state).unwrap().step, Step::Committed);

        // B ran out of attempts and A runs: a rollback, B leaves the order.
        write(BootState { order: vec![Slot::B, Slot::A], a_left: 2, b_left: 0, seq: 0 });
        save(&state, &trial);
        let report = commit_boot(&disk, Slot::A, &state).unwrap();
        assert_eq!((report.rolled_back_from.as_deref(), report.order.clone()), (Some("B"), vec!["A".to_string()]));
        let r = read_record(&state).unwrap();
        assert_eq!((r.step, r.error_kind.as_deref()), (Step::RolledBack, Some("rolled_back")));

        // A plain boot with no install pending leaves the record alone.
        let before = read_record(&state).unwrap();
        commit_boot(&disk, Slot::A, &state).unwrap();
        assert_eq!(read_record(&state).unwrap().step, before.step);
    }

    #[test]
    fn a_read_only_boot_partition_is_its_own_kind_and_says_what_comes_next() {
        let e = io_fail(Step::Write, Path::new("/boot/b/vmlinuz"))(std::io::Error::from_raw_os_error(libc::EROFS));
        assert_eq!(e.kind, ErrorKind::ReadOnly);
        assert!(e.message.starts_with("/boot/b/vmlinuz: ") && e.message.contains("the next boot checks and repairs it"), "{}", e.message);
        assert_eq!(io_fail(Step::Write, Path::new("/x"))(std::io::Error::from_raw_os_error(libc::EIO)).kind, ErrorKind::Io);
    }

    #[test]
    fn slot_partitions_follow_the_kernel_names() {
        assert_eq!(slot_partition(Path::new("/dev/mmcblk0"), Slot::B), PathBuf::from("/dev/mmcblk0p3"));
        assert_eq!(slot_partition(Path::new("/dev/vda"), Slot::A), PathBuf::from("/dev/vda2"));
    }

    #[test]
    fn no_install_while_the_running_slot_is_on_trial() {
        let dir = std::env::temp_dir().join(format!("meshd-on-trial-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let node = Target {
            disk: Path::new("/nonexistent"),
            running: Slot::B,
            compatible: "meshos-rpi3".into(),
            version: "1.1".into(),
            trusted: &[],
            required: 1,
            boot_dir: &dir,
            state_dir: &dir,
        };
        // B was installed and booted, not yet committed: writing A now would leave no good slot.
        let trial = Record { step: Step::Installed, target: Some("B".into()), version: Some("1.1".into()), ..Record::new("x".into()) };
        save(&dir, &trial);
        let err = refuse_on_trial(&node).unwrap_err();
        assert_eq!(err.kind, ErrorKind::OnTrial);
        assert!(err.message.contains("slot B runs 1.1 on trial") && err.message.contains("overwrite slot A"), "{}", err.message);
        // The source is not even opened: the refusal comes first, and the record is kept.
        let e = install(&Source::File(dir.join("missing.bundle")), &node, false).unwrap_err();
        assert_eq!(e.kind, ErrorKind::OnTrial);
        assert_eq!(read_record(&dir).unwrap().step, Step::Installed);
        // Committed (or running the other slot): installs go ahead.
        save(&dir, &Record { step: Step::Committed, ..trial.clone() });
        assert!(refuse_on_trial(&node).is_ok());
        save(&dir, &trial);
        assert!(refuse_on_trial(&Target { running: Slot::A, ..node }).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn settled_bundles_leave_updates_with_their_outcome() {
        let boot = std::env::temp_dir().join(format!("meshd-settle-{}", std::process::id()));
        let dir = boot.join("updates");
        fs::create_dir_all(&dir).unwrap();
        let (good, bad) = (dir.join("1-next.bundle"), dir.join("2-other.bundle"));
        fs::write(&good, "g").unwrap();
        fs::write(&bad, "b").unwrap();
        assert_eq!(pending(&boot), [good.clone(), bad.clone()]);

        settle(&good, &Ok("0.1.1".into()));
        let refused = InstallError { step: Step::CheckCompatible, kind: ErrorKind::Incompatible, message: "the bundle is for meshos-x".into() };
        settle(&bad, &Err(refused));

        assert!(pending(&boot).is_empty());
        assert!(!good.exists());
        assert_eq!(fs::read_to_string(dir.join("2-other.bundle.rejected")).unwrap(), "b");
        assert_eq!(fs::read_to_string(dir.join("2-other.rejected.txt")).unwrap(), "the bundle is for meshos-x (while checking that it fits this node)\n");
        fs::remove_dir_all(&boot).unwrap();
    }
}
