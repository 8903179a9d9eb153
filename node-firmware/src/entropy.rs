//! The kernel's random numbers at start. A node makes its keys on its first boot, and on a
//! board without a hardware RNG driver the kernel must gather entropy from CPU jitter first
//! (meshd waits for it in getrandom). Like systemd-random-seed, meshd keeps a seed on the
//! data partition: taken from the kernel once it is ready, credited to the kernel at the next
//! start, and never credited twice (the file is removed before it is used). The wait, if any,
//! is shown in `meshd status` and the metrics.

use serde::{Deserialize, Serialize};
use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

/// In meshd's state directory on the data partition.
pub const SEED_FILE: &str = "random-seed";
/// 4096 bits, the size of the kernel's input pool, as systemd keeps.
const SEED_SIZE: usize = 512;

/// How this start got its random numbers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// The saved seed was credited to the kernel.
    pub seeded: bool,
    /// Seconds meshd waited for the kernel to be ready (0 when it was ready at once).
    pub waited_s: f64,
    /// What went wrong with the seed, if anything (the node still starts).
    pub error: Option<String>,
}

/// Before anything in meshd asks for random numbers: credits the saved seed if the kernel is
/// not ready yet, waits until it is, and saves a new seed for the next start.
pub fn start(state_dir: &Path) -> Report {
    let seed_path = state_dir.join(SEED_FILE);
    let mut report = Report::default();
    if !ready() && crate::machine::current().may_credit_entropy() {
        match credit_saved(&seed_path) {
            Ok(seeded) => report.seeded = seeded,
            Err(e) => report.error = Some(e),
        }
    }
    if !ready() {
        logln!("meshd: random: waiting for the kernel's random numbers (no saved seed and no hardware RNG)");
        let t = Instant::now();
        // Without flags getrandom blocks until the kernel is ready.
        let _ = fresh(1);
        report.waited_s = t.elapsed().as_secs_f64();
    }
    let saved = fresh(SEED_SIZE).ok_or_else(|| "the kernel gave no random numbers".to_string()).and_then(|s| crate::durable::write_private(&seed_path, &s));
    if let Err(e) = saved {
        report.error = Some(format!("saving a seed for the next start: {e}"));
    }
    if let Some(e) = &report.error {
        logln!("meshd: random: {e}");
    } else if report.waited_s > 0.0 {
        logln!("meshd: random: ready after {:.1} s; a seed is saved for the next start", report.waited_s);
    } else if report.seeded {
        logln!("meshd: random: seeded from {}", seed_path.display());
    }
    report
}

/// Whether getrandom(2) would answer now.
fn ready() -> bool {
    let mut b = [0u8; 1];
    // SAFETY: as above; GRND_NONBLOCK returns EAGAIN instead of blocking.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) == 1 }
}

fn fresh(n: usize) -> Option<Vec<u8>> {
    let mut b = vec![0u8; n];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let got = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    (got == n as isize).then_some(b)
}

#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; SEED_SIZE],
}
// <linux/random.h>: RNDADDENTROPY is _IOW('R', 0x03, int[2]) on a struct rand_pool_info.
nix::ioctl_write_ptr_bad!(rnd_add_entropy, nix::request_code_write!(b'R', 0x03, 2 * std::mem::size_of::<libc::c_int>()), RandPoolInfo);

/// Credits the saved seed to the kernel: `Ok(false)` when there is none. The file is removed
/// (and that made durable) first, so a power cut can never make a seed count twice.
fn credit_saved(path: &Path) -> Result<bool, String> {
    let seed = match fs::read(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    if seed.len() != SEED_SIZE {
        return Err(format!("{}: {} bytes, not {SEED_SIZE}; not used", path.display(), seed.len()));
    }
    let mut info = RandPoolInfo { entropy_count: (SEED_SIZE * 8) as libc::c_int, buf_size: SEED_SIZE as libc::c_int, buf: [0; SEED_SIZE] };
    info.buf.copy_from_slice(&seed);
    let urandom = fs::OpenOptions::new().write(true).open("/dev/urandom").map_err(|e| format!("/dev/urandom: {e}"))?;
    // SAFETY: the kernel reads the header and buf_size bytes of `info`, which outlives the call.
    unsafe { rnd_add_entropy(urandom.as_raw_fd(), &info) }.map_err(|e| format!("crediting {} to the kernel: {e}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_of_the_wrong_size_is_removed_and_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SEED_FILE);
        fs::write(&path, b"short").unwrap();
        let e = credit_saved(&path).unwrap_err();
        assert!(e.contains("5 bytes, not 512"), "{e}");
        assert!(!path.exists());
        assert_eq!(credit_saved(&path), Ok(false));
    }

    #[test]
    fn each_start_leaves_a_new_private_seed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        start(dir.path());
        let first = fs::read(dir.path().join(SEED_FILE)).unwrap();
        assert_eq!(first.len(), SEED_SIZE);
        assert_eq!(fs::metadata(dir.path().join(SEED_FILE)).unwrap().permissions().mode() & 0o777, 0o600);
        start(dir.path());
        assert_ne!(first, fs::read(dir.path().join(SEED_FILE)).unwrap());
    }
}
