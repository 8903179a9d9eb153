//! What this node is: read from the image's os-release and the kernel command line.

use meshos_common::{boot_contract::ReadyLine, cmdline, os_release};
use std::fs;
use std::io::Write;
use std::path::Path;

/// Created in the tmpfs run directory once the ready line was printed, so a restarted meshd
/// does not print it again in the same boot.
const ANNOUNCED_MARK: &str = "announced";

pub struct Node {
    pub release: os_release::OsRelease,
    pub slot: String,
}

impl Node {
    pub fn detect() -> Result<Node, String> {
        let path = crate::machine::in_root(os_release::PATH);
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let release = os_release::OsRelease::parse(&text)?;
        let cmdline = crate::machine::current().cmdline()?;
        let slot = cmdline::value(&cmdline, cmdline::SLOT_KEY)
            .ok_or_else(|| format!("the kernel command line has no {}= (was the node started by the meshos boot script?)", cmdline::SLOT_KEY))?
            .to_string();
        Ok(Node { release, slot })
    }

    pub fn ready_line(&self) -> ReadyLine {
        ReadyLine { version: self.release.version.clone(), board: self.release.board.clone(), slot: self.slot.clone() }
    }

    /// Prints the boot contract line on the console, once per boot.
    pub fn announce_once(&self, run_dir: &Path) -> Result<(), String> {
        let mark = run_dir.join(ANNOUNCED_MARK);
        if mark.exists() {
            logln!("meshd: restarted ({})", self.ready_line());
            return Ok(());
        }
        let line = format!("{}\n", self.ready_line());
        // Under init, stdout is the console.
        let mut out = std::io::stdout().lock();
        out.write_all(line.as_bytes()).and_then(|()| out.flush()).map_err(|e| format!("console: {e}"))?;
        fs::write(&mark, b"").map_err(|e| format!("{}: {e}", mark.display()))
    }
}

/// This process's resident memory, from /proc/self/status.
/// Seconds since the kernel started.
pub fn uptime_s() -> Option<u64> {
    let text = fs::read_to_string("/proc/uptime").ok()?;
    text.split_whitespace().next()?.parse::<f64>().ok().map(|s| s as u64)
}

pub fn rss_kib() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
