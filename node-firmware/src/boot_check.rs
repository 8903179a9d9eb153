//! What the initramfs found when it checked the boot partition (FAT) before mounting it. A
//! power cut while an install writes a slot's boot files leaves lost clusters and a wrong free
//! count; the initramfs runs the slot's `fsck.fat -a` and leaves its output, and exit code on
//! the last line, in [`LOG`]. meshd reports it in status and metrics.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Written by the initramfs into the root overlay (this boot only).
pub const LOG: &str = "/var/log/boot-fsck.log";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// `clean`, `repaired`, `failed` or `unchecked` (no log: an image without the check).
    pub result: String,
    /// What fsck.fat changed or could not, in its words (the dirty flag a cut leaves aside).
    pub changes: Vec<String>,
}

/// Lines fsck.fat prints for every file system a power cut left mounted: the dirty flag, which
/// its backup boot sector does not have, and the summary.
const ROUTINE: [&str; 10] = [
    "fsck.fat ",
    "There are differences between boot sector and its backup",
    "This is mostly harmless",
    "Differences: (offset",
    "65:01/00",
    "Not automatically fixing",
    "Dirty bit is set",
    "Automatically removing dirty bit",
    "Performing changes",
    "exit ",
];

pub fn read(path: &Path) -> Report {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text),
        Err(_) => Report { result: "unchecked".into(), changes: Vec::new() },
    }
}

fn parse(text: &str) -> Report {
    let code = text.lines().rev().find_map(|l| l.strip_prefix("exit ")).and_then(|c| c.trim().parse::<i32>().ok());
    let changes: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !ROUTINE.iter().any(|r| l.starts_with(r)))
        // The summary: "<device>: N files, used/total clusters".
        .filter(|l| !(l.contains(": ") && l.ends_with(" clusters") && l.contains(" files, ")))
        .map(String::from)
        .collect();
    let result = match code {
        Some(0) => "clean",
        Some(1) if changes.is_empty() => "clean",
        Some(1) => "repaired",
        _ => "failed",
    };
    Report { result: result.into(), changes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_that_only_left_the_dirty_flag_is_clean() {
        let log = "fsck.fat 4.2 (2021-01-31)\nThere are differences between boot sector and its backup.\nThis is mostly harmless. Differences: (offset:original/backup)\n  65:01/00\n  Not automatically fixing this.\nDirty bit is set. Fs was not properly unmounted and some data may be corrupt.\n Automatically removing dirty bit.\nPerforming changes.\n/dev/vda1: 18 files, 9120/130812 clusters\nexit 1\n";
        assert_eq!(parse(log), Report { result: "clean".into(), changes: vec![] });
    }

    #[test]
    fn lost_clusters_are_reported_as_repaired() {
        let log = "fsck.fat 4.2 (2021-01-31)\nReclaimed 6144 unused clusters (3145728 bytes) in 1 chain.\nFree cluster summary wrong (122877 vs. really 116733)\n  Auto-correcting.\nPerforming changes.\n/dev/mmcblk0p1: 1 files, 6145/129022 clusters\nexit 1\n";
        let r = parse(log);
        assert_eq!(r.result, "repaired");
        assert_eq!(
            r.changes,
            ["Reclaimed 6144 unused clusters (3145728 bytes) in 1 chain.", "Free cluster summary wrong (122877 vs. really 116733)", "Auto-correcting."]
        );
    }

    #[test]
    fn no_exit_line_or_a_usage_error_is_a_failed_check() {
        assert_eq!(parse("chroot: can't execute '/usr/sbin/fsck.fat': No such file or directory\nexit 127\n").result, "failed");
        assert_eq!(parse("").result, "failed");
        assert_eq!(read(Path::new("/nonexistent/boot-fsck.log")).result, "unchecked");
    }
}
