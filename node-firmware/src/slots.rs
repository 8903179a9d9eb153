//! The A/B slots on the node: which slot runs, whether U-Boot fell back to it, and marking it
//! good once the node is healthy (attempts back to full, so U-Boot keeps booting it). This is
//! the one module that writes the boot state record on the disk.

use meshos_common::boot_state::{self, BootState, Slot};
use meshos_common::cmdline;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The card the node booted from: the block device whose MBR carries the signature the boot
/// script put on the kernel command line.
pub fn boot_disk(cmdline_text: &str) -> Result<PathBuf, String> {
    let want = cmdline::value(cmdline_text, cmdline::DISK_KEY).ok_or("no meshos.disk= on the kernel command line")?;
    let mut names: Vec<String> =
        fs::read_dir("/sys/block").map_err(|e| format!("/sys/block: {e}"))?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for name in names.iter().filter(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("zram")) {
        let dev = Path::new("/dev").join(name);
        let mut mbr = [0u8; 512];
        if File::open(&dev).and_then(|mut f| f.read_exact(&mut mbr)).is_ok() {
            // As the initramfs reads it: the four bytes at 440 in disk order.
            let sig: String = mbr[440..444].iter().map(|b| format!("{b:02x}")).collect();
            if sig == want {
                return Ok(dev);
            }
        }
    }
    Err(format!("no disk has MBR signature {want}"))
}

/// The card this node booted from and the slot it runs (`node_slot`, from the command line).
pub fn running(node_slot: &str) -> Result<(PathBuf, Slot), String> {
    let machine = crate::machine::current();
    let disk = machine.boot_disk(&machine.cmdline()?)?;
    let slot = Slot::parse(node_slot).ok_or_else(|| format!("unknown running slot '{node_slot}'"))?;
    Ok((disk, slot))
}

/// Both copies, the newest valid state, and which copy to write next.
pub fn read_state(disk: &Path) -> Result<(BootState, usize), String> {
    read_from(&File::open(disk).map_err(|e| format!("{}: {e}", disk.display()))?, disk)
}

fn read_from(f: &File, disk: &Path) -> Result<(BootState, usize), String> {
    let mut copies = [[0u8; boot_state::SIZE]; 2];
    for (i, sector) in boot_state::SECTORS.iter().enumerate() {
        f.read_exact_at(&mut copies[i], sector * 512).map_err(|e| format!("{}: reading boot state copy {i}: {e}", disk.display()))?;
    }
    BootState::newest([&copies[0], &copies[1]]).map_err(|e| format!("{}: {e}", disk.display()))
}

/// Changes the boot state on `disk`: `change` gets the newest state and returns the next one,
/// or `None` to leave it. The whole read-change-write holds an exclusive lock on the card, so
/// the daemon marking its slot good and an install run from the command line (another process)
/// never write over each other's change. The next state gets the sequence number one past the
/// newest and is written over the older copy: a single sector, flushed before this returns.
/// Returns the state in force afterwards.
pub fn update(disk: &Path, change: impl FnOnce(&BootState) -> Option<BootState>) -> Result<BootState, String> {
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{}: {what}: {e}", disk.display());
    let f = OpenOptions::new().read(true).write(true).open(disk).map_err(|e| err("opening the boot state", &e))?;
    let f = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| err("locking the boot state", &e))?;
    let (state, older) = read_from(&f, disk)?;
    let Some(mut next) = change(&state) else { return Ok(state) };
    next.seq = state.seq + 1;
    f.write_all_at(&next.encode(), boot_state::SECTORS[older] * 512).map_err(|e| err(&format!("writing boot state copy {older}"), &e))?;
    f.sync_all().map_err(|e| err(&format!("writing boot state copy {older}"), &e))?;
    Ok(next)
}

/// What the boot state said about this boot, for status and metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SlotReport {
    pub running: String,
    pub order: Vec<String>,
    pub a_left: u32,
    pub b_left: u32,
    /// Set when U-Boot booted this slot because the preferred one ran out of attempts.
    pub rolled_back_from: Option<String>,
    pub marked_good: bool,
    pub error: Option<String>,
}

/// The state after this boot was found healthy: the running slot's attempts back to full; a
/// slot that was preferred but ran out of attempts (a rollback) leaves the order.
pub fn committed(state: &BootState, running: Slot) -> (BootState, Option<Slot>) {
    let mut next = state.clone();
    let rolled_back_from = state.order.first().copied().filter(|first| *first != running && state.left(*first) == 0);
    if let Some(failed) = rolled_back_from {
        next.order.retain(|s| *s != failed);
    }
    if !next.order.contains(&running) {
        next.order.insert(0, running);
    }
    next.set_left(running, boot_state::DEFAULT_ATTEMPTS);
    next.seq = state.seq + 1;
    (next, rolled_back_from)
}

/// Marks the running slot good on `disk` (one write, only when something changes).
pub fn mark_good(disk: &Path, running: Slot) -> Result<SlotReport, String> {
    let mut rolled_back_from = None;
    let now = update(disk, |state| {
        let (next, from) = committed(state, running);
        rolled_back_from = from;
        (BootState { seq: state.seq, ..next.clone() } != *state).then_some(next)
    })?;
    Ok(report(&now, running, rolled_back_from, true))
}

pub fn report(state: &BootState, running: Slot, rolled_back_from: Option<Slot>, marked_good: bool) -> SlotReport {
    SlotReport {
        running: running.to_string(),
        order: state.order.iter().map(Slot::to_string).collect(),
        a_left: state.a_left,
        b_left: state.b_left,
        rolled_back_from: rolled_back_from.map(|s| s.to_string()),
        marked_good,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_boot_refills_its_attempts() {
        let booted = BootState { order: vec![Slot::A], a_left: 2, b_left: 0, seq: 9 };
        let (next, rb) = committed(&booted, Slot::A);
        assert_eq!((next.a_left, next.seq, rb), (3, 10, None));
    }

    #[test]
    fn a_new_slot_that_boots_healthy_stays_first() {
        let trying_b = BootState { order: vec![Slot::B, Slot::A], a_left: 3, b_left: 2, seq: 4 };
        let (next, rb) = committed(&trying_b, Slot::B);
        assert_eq!((next.order.clone(), next.b_left, rb), (vec![Slot::B, Slot::A], 3, None));
    }

    #[test]
    fn running_the_old_slot_after_the_new_ran_out_is_a_rollback() {
        let ran_out = BootState { order: vec![Slot::B, Slot::A], a_left: 2, b_left: 0, seq: 7 };
        let (next, rb) = committed(&ran_out, Slot::A);
        assert_eq!((next.order.clone(), next.a_left, rb), (vec![Slot::A], 3, Some(Slot::B)));
    }

    /// A card: a file as large as the record's place, `state` in copy 0.
    fn card(dir: &Path, state: &BootState) -> PathBuf {
        let disk = dir.join("card");
        let f = File::create(&disk).unwrap();
        f.set_len(1 << 20).unwrap();
        f.write_all_at(&state.encode(), boot_state::SECTORS[0] * 512).unwrap();
        disk
    }

    #[test]
    fn changes_from_several_writers_at_once_are_never_lost() {
        let dir = tempfile::tempdir().unwrap();
        let disk = card(dir.path(), &BootState::default());
        let start = read_state(&disk).unwrap().0.seq;
        // Each writer takes one attempt from B and gives it back, and bumps the sequence; a
        // change made between another's read and write would be lost or leave B wrong.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..25 {
                        update(&disk, |st| Some(BootState { b_left: st.b_left + 1, ..st.clone() })).unwrap();
                        update(&disk, |st| Some(BootState { b_left: st.b_left - 1, ..st.clone() })).unwrap();
                    }
                });
            }
        });
        let (end, _) = read_state(&disk).unwrap();
        assert_eq!((end.seq - start, end.b_left), (200, 0));
    }

    #[test]
    fn an_unchanged_state_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        // As U-Boot left it after counting this boot's attempt.
        let disk = card(dir.path(), &BootState { a_left: 2, ..BootState::default() });
        let before = fs::read(&disk).unwrap();
        let first = mark_good(&disk, Slot::A).unwrap();
        assert!(first.marked_good);
        let written = fs::read(&disk).unwrap();
        assert_ne!(before, written, "the first mark refills A's attempts");
        mark_good(&disk, Slot::A).unwrap();
        assert_eq!(written, fs::read(&disk).unwrap(), "marking an already good slot writes nothing");
    }
}
