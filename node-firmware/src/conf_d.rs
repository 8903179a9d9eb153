//! mesh-orange's conf.d on the boot partition.

use crate::command;
use std::fs;
use std::path::{Path, PathBuf};

/// mesh-orange's conf.d: every `*.tar.gz` on the FAT partition unpacked over /etc, in name
/// order, so a later archive wins. One bad archive is reported and skipped.
pub fn apply(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut archives: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().ends_with(".tar.gz")).collect();
    archives.sort();
    for a in archives {
        match command::run("tar", &["-xzf", &a.display().to_string(), "-C", "/etc"]) {
            Ok(_) => logln!("meshd: applied {} over /etc", a.display()),
            Err(e) => logln!("meshd: skipped {}: {e}", a.display()),
        }
    }
}
