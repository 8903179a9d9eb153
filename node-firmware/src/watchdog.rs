//! The board's hardware watchdog (`/dev/watchdog`: bcm2835_wdt on the Raspberry Pi, sunxi_wdt
//! on the Orange Pi, i6300esb on the virtual node). meshd arms it once the node is up and feeds
//! it from its main loop, so a node whose meshd hangs (or whose slot hangs it) is reset, and a
//! slot on trial loses one of its attempts. On SIGTERM (poweroff, reboot) it is disarmed with
//! the magic close, so a node that was asked to power off stays off.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// What meshd asks for unless the board's kernel command line says otherwise ([`wanted`]);
/// drivers with a shorter hardware limit (bcm2835: 15 s) get their limit.
pub const WANTED: Duration = Duration::from_secs(15);
/// The longest timeout a command line may ask for: beyond it a hung node stays hung too long.
const LONGEST: u64 = 300;

/// The timeout to ask for: `meshos.watchdog=SECONDS` on the kernel command line (set by the
/// board's definition), else [`WANTED`]. A value that is not a number of seconds from 1 to
/// [`LONGEST`] is named in the error, and the default stays.
pub fn wanted(cmdline: &str) -> Result<Duration, (Duration, String)> {
    let key = meshos_common::cmdline::WATCHDOG_KEY;
    match meshos_common::cmdline::value(cmdline, key) {
        None => Ok(WANTED),
        Some(v) => match v.parse::<u64>() {
            Ok(secs) if (1..=LONGEST).contains(&secs) => Ok(Duration::from_secs(secs)),
            _ => Err((WANTED, format!("kernel command line {key}={v}: not a number of seconds from 1 to {LONGEST}; asking for {} s", WANTED.as_secs()))),
        },
    }
}

// <linux/watchdog.h>: WDIOC_SETTIMEOUT is _IOWR('W', 6, int), WDIOC_GETTIMEOUT _IOR('W', 7, int).
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);
nix::ioctl_read!(wdioc_gettimeout, b'W', 7, libc::c_int);

/// The armed device (its descriptor is also kept for the SIGTERM handler).
pub struct Watchdog {
    file: File,
    pub timeout: Duration,
}

static FD: AtomicI32 = AtomicI32::new(-1);

impl Watchdog {
    /// Opens and arms the device; `Ok(None)` when the board has none.
    pub fn arm(path: &Path, wanted: Duration) -> Result<Option<Watchdog>, String> {
        if !path.exists() {
            return Ok(None);
        }
        if let Some(why) = resets_when_armed() {
            return Err(format!("not armed: {why}"));
        }
        let file = OpenOptions::new().write(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let fd = file.as_raw_fd();
        let mut secs: libc::c_int = wanted.as_secs().try_into().unwrap_or(libc::c_int::MAX);
        // SAFETY: both ioctls read or write one int through the pointer, which outlives them.
        // A driver that refuses the timeout keeps its own: ask which.
        if unsafe { wdioc_settimeout(fd, &mut secs) }.is_err() && unsafe { wdioc_gettimeout(fd, &mut secs) }.is_err() {
            secs = 0;
        }
        FD.store(fd, Ordering::SeqCst);
        install_disarm_on_sigterm();
        let mut w = Watchdog { file, timeout: Duration::from_secs(u64::try_from(secs).unwrap_or(0)) };
        w.feed();
        Ok(Some(w))
    }

    /// Resets the countdown; meshd calls this every pass of its main loop.
    pub fn feed(&mut self) {
        let _ = self.file.write_all(b"\0");
    }
}

impl Drop for Watchdog {
    /// Closing without the magic character leaves the watchdog running: a meshd that dies is
    /// restarted by init and must re-arm in time, or the node resets.
    fn drop(&mut self) {
        FD.store(-1, Ordering::SeqCst);
    }
}

/// QEMU's raspi3b model has no countdown in its BCM2835 watchdog: arming it resets the machine
/// at once. That machine is known by the SD card QEMU emulates (product name `QEMU!`); the
/// real board's watchdog counts down as it should.
fn resets_when_armed() -> Option<&'static str> {
    let identity = std::fs::read_to_string("/sys/class/watchdog/watchdog0/identity").unwrap_or_default();
    let qemu_card = std::fs::read_dir("/sys/bus/mmc/devices")
        .into_iter()
        .flatten()
        .flatten()
        .any(|d| std::fs::read_to_string(d.path().join("name")).is_ok_and(|n| n.trim() == "QEMU!"));
    (identity.contains("BCM2835") && qemu_card).then_some("QEMU's BCM2835 watchdog resets the machine the moment it is armed")
}

extern "C" fn disarm_and_exit(_: libc::c_int) {
    let fd = FD.load(Ordering::SeqCst);
    // SAFETY: write, close and _exit are async-signal-safe; fd is ours or -1.
    unsafe {
        if fd >= 0 {
            libc::write(fd, b"V".as_ptr().cast(), 1);
            libc::close(fd);
        }
        libc::_exit(0);
    }
}

fn install_disarm_on_sigterm() {
    // SAFETY: the handler only makes async-signal-safe calls.
    unsafe {
        libc::signal(libc::SIGTERM, disarm_and_exit as *const () as libc::sighandler_t);
    }
}

/// Reboots the node. The hardware watchdog is disarmed on the way down (init stops meshd, and
/// some drivers stop it in their reboot hooks), so a shutdown that hangs in a driver would leave
/// the node off the mesh for good; instead the kernel is told to panic on a task blocked for
/// 30 s, and `panic=10` on the command line turns the panic into a reset. (Shutdown hangs so in
/// QEMU's orangepi-pc, which lacks the H3's second MMC controller, the Orange Pi Zero's Wi-Fi:
/// the kernel waits for it forever.)
pub fn reboot() -> Result<(), String> {
    for (key, value) in [("hung_task_timeout_secs", "30"), ("hung_task_panic", "1")] {
        let path = Path::new("/proc/sys/kernel").join(key);
        if let Err(e) = std::fs::write(&path, value) {
            logln!("meshd: {}: {e} (a hung shutdown will not be reset)", path.display());
        }
    }
    crate::command::run("reboot", &[]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_may_ask_for_a_longer_timeout_within_bounds() {
        assert_eq!(wanted("console=ttyAMA0 meshos.slot=a"), Ok(WANTED));
        assert_eq!(wanted("console=ttyAMA0,115200 meshos.watchdog=60 meshos.slot=b"), Ok(Duration::from_secs(60)));
        for bad in ["0", "301", "sixty", "-5", ""] {
            let (fallback, why) = wanted(&format!("meshos.watchdog={bad} quiet")).unwrap_err();
            assert_eq!(fallback, WANTED);
            assert!(why.contains(&format!("meshos.watchdog={bad}:")), "{why}");
        }
    }
}
