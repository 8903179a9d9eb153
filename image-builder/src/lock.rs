//! `board-defs/<board>.lock`: the exact Debian packages a board is built from, and the upstream
//! sources it compiles.
//!
//! Only `meshimg lock` talks to the archive's indexes; builds read the lock and never resolve,
//! as `cargo --locked` does. The lock records what each package is for (its roles).

use crate::board::Board;
use crate::debian::release::{self, ReleaseError, Verifier};
use crate::debian::resolve::{Follow, Index, Package, ResolveError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Extracted into the root filesystem.
    Rootfs,
    /// Kernel image, modules and device trees.
    Kernel,
    /// The initramfs's static busybox.
    Initramfs,
    /// Firmware files for the kept drivers.
    Firmware,
    /// Boot loader and boot firmware.
    Boot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub roles: Vec<Role>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub format: u32,
    pub board: String,
    pub suite: String,
    pub mirror: String,
    pub release_date: String,
    /// Every timestamp in the image is clamped to this (the release date of the locked suite).
    pub source_date_epoch: i64,
    /// sha256 of the board fields that decide the lock; a mismatch means the lock is stale.
    pub inputs_sha256: String,
    #[serde(rename = "package")]
    pub packages: Vec<LockedPackage>,
    /// Upstream sources built into the image (board-defs/sources/), by the hash of their tree.
    #[serde(rename = "source", default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<crate::source::LockedSource>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: cannot read: {source}\nhint: run 'meshimg lock {board}' to create it")]
    Read { path: PathBuf, board: String, source: std::io::Error },
    #[error("{path}: {message}\nhint: run 'meshimg lock {board}' to write it anew")]
    Parse { path: PathBuf, board: String, message: String },
    #[error("{path} is stale: {board_path} changed what is locked\nhint: run 'meshimg lock {board}' and commit the new lock")]
    Stale { path: PathBuf, board_path: PathBuf, board: String },
    #[error("{path}: no locked package has the role {role:?}\nhint: run 'meshimg lock {board}'")]
    NoRole { path: PathBuf, board: String, role: Role },
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("resolving {board}: {source}")]
    Resolve { board: String, source: ResolveError },
    #[error("{path}: cannot write: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{url} is dated {found}, older than the release {path} was locked from ({locked}); nothing was changed\nhint: the mirror may be stale or replaying an old release (which would bring back fixed vulnerabilities): try another mirror, or pass --allow-older to go back on purpose")]
    Older { url: String, found: String, path: PathBuf, locked: String },
}

/// The release an earlier lock was made from, which a new lock of the same suite must not
/// predate: its date as written and as Unix time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotBefore {
    pub path: PathBuf,
    pub date: String,
    pub epoch: i64,
}

impl NotBefore {
    /// Reads the lock at `path` for `suite`: None when there is none, or it is of another suite
    /// (a board moved to a new suite starts afresh) or cannot be read as a lock (then nothing
    /// earlier is known; the new lock replaces it).
    pub fn read(path: &Path, suite: &str) -> Option<NotBefore> {
        #[derive(Deserialize)]
        struct Earlier {
            suite: String,
            release_date: String,
            source_date_epoch: i64,
        }
        let earlier: Earlier = toml::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        (earlier.suite == suite).then(|| NotBefore { path: path.into(), date: earlier.release_date, epoch: earlier.source_date_epoch })
    }
}

pub fn lock_path(root: &Path, board: &str) -> PathBuf {
    crate::defs::under(root, &format!("board-defs/{board}.lock"))
}

pub fn inputs_hash(board: &Board) -> String {
    hex::encode(Sha256::digest(board.lock_inputs()))
}

impl Lock {
    pub fn load(path: &Path, board: &Board, board_path: &Path) -> Result<Lock, LockError> {
        let text = std::fs::read_to_string(path).map_err(|source| LockError::Read { path: path.into(), board: board.name.clone(), source })?;
        let lock: Lock = toml::from_str(&text).map_err(|e| LockError::Parse { path: path.into(), board: board.name.clone(), message: e.to_string() })?;
        if lock.format != FORMAT || lock.board != board.name {
            return Err(LockError::Parse {
                path: path.into(),
                board: board.name.clone(),
                message: format!("format {} for board '{}', expected format {FORMAT} for '{}'", lock.format, lock.board, board.name),
            });
        }
        if lock.inputs_sha256 != inputs_hash(board) {
            return Err(LockError::Stale { path: path.into(), board_path: board_path.into(), board: board.name.clone() });
        }
        Ok(lock)
    }

    pub fn render(&self) -> String {
        let body = toml::to_string(self).expect("lock serialises");
        format!("# Written by `meshimg lock {}`; do not edit. Builds use exactly these packages.\n{body}", self.board)
    }

    pub fn with_role(&self, role: Role) -> impl Iterator<Item = &LockedPackage> {
        self.packages.iter().filter(move |p| p.roles.contains(&role))
    }

    pub fn by_name(&self, name: &str) -> Option<&LockedPackage> {
        self.packages.iter().find(|p| p.name == name)
    }

    /// sha256 over the lock's text, recorded in build reports.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.render()))
    }
}

/// Verifies the archive, resolves the board's packages and returns the new lock. A release
/// older than `not_before` (the one the earlier lock was made from) is refused before any index
/// is read.
pub fn resolve(board: &Board, not_before: Option<&NotBefore>, log: &dyn Fn(&str)) -> Result<Lock, LockError> {
    let d = &board.debian;
    let verifier = Verifier::load(&d.keyring, &d.trusted_keys)?;
    log(&format!("verifying {}/dists/{}/InRelease", d.mirror, d.suite));
    let rel = release::fetch_release(&d.mirror, &d.suite, &verifier)?;
    check_not_older(&rel, not_before)?;
    if !rel.unknown_keys.is_empty() {
        log(&format!(
            "{}: also signed by key(s) {} not in {} (ignored: a trusted key's signature verified it)",
            rel.url,
            rel.unknown_keys.join(", "),
            d.keyring.display()
        ));
    }
    let mut index = Index::new(&board.arch);
    for component in &d.components {
        log(&format!("fetching {component}/binary-{} index", board.arch));
        let text = release::fetch_packages(&d.mirror, &d.suite, &rel, component, &board.arch)?;
        index.add(&format!("{}/{component}", d.suite), &text).map_err(|source| LockError::Resolve { board: board.name.clone(), source })?;
    }
    let resolve_err = |source| LockError::Resolve { board: board.name.clone(), source };
    let groups: [(Role, Vec<String>, Follow); 5] = [
        (Role::Rootfs, board.packages.clone(), Follow::Except(&board.exclude)),
        (Role::Kernel, vec![board.kernel.package.clone()], Follow::Prefix("linux-image-")),
        (Role::Initramfs, vec![board.initramfs_busybox.clone()], Follow::Nothing),
        (Role::Firmware, board.firmware.packages.clone(), Follow::Nothing),
        (Role::Boot, board.boot.packages.clone(), Follow::Nothing),
    ];
    let mut merged: BTreeMap<String, (Package, Vec<Role>)> = BTreeMap::new();
    for (role, roots, follow) in groups {
        for p in index.resolve(&roots, follow).map_err(resolve_err)? {
            let entry = merged.entry(p.name.clone()).or_insert_with(|| (p, Vec::new()));
            entry.1.push(role);
        }
    }
    let packages = merged
        .into_values()
        .map(|(p, roles)| LockedPackage { name: p.name, version: p.version, arch: p.arch, path: p.filename, size: p.size, sha256: p.sha256, roles })
        .collect();
    Ok(Lock {
        format: FORMAT,
        board: board.name.clone(),
        suite: d.suite.clone(),
        mirror: d.mirror.clone(),
        release_date: rel.date.clone(),
        source_date_epoch: rel.date_epoch,
        inputs_sha256: inputs_hash(board),
        packages,
        sources: Vec::new(),
    })
}

fn check_not_older(rel: &release::Release, not_before: Option<&NotBefore>) -> Result<(), LockError> {
    match not_before {
        Some(nb) if rel.date_epoch < nb.epoch => {
            Err(LockError::Older { url: rel.url.clone(), found: rel.date.clone(), path: nb.path.clone(), locked: nb.date.clone() })
        }
        _ => Ok(()),
    }
}

/// Writes the lock atomically (temp file + rename), so a failed lock leaves the old one whole.
pub fn write(path: &Path, lock: &Lock) -> Result<(), LockError> {
    let tmp = path.with_extension("lock.tmp");
    let werr = |source| LockError::Write { path: path.into(), source };
    std::fs::write(&tmp, lock.render()).map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(date: &str) -> release::Release {
        let text = format!("Suite: stable\nCodename: trixie\nDate: {date}\nSHA256:\n 00 1 main/binary-arm64/Packages.xz\n");
        release::Release::parse("http://mirror/debian/dists/trixie/InRelease", &text).unwrap()
    }

    #[test]
    fn a_release_older_than_the_locked_one_is_refused_as_a_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qemu-arm64.lock");
        std::fs::write(&path, "format = 1\nboard = \"qemu-arm64\"\nsuite = \"trixie\"\nmirror = \"m\"\nrelease_date = \"Sat, 21 Nov 2026 09:15:44 UTC\"\nsource_date_epoch = 1795252544\ninputs_sha256 = \"x\"\n").unwrap();
        let nb = NotBefore::read(&path, "trixie").unwrap();
        assert_eq!(nb.date, "Sat, 21 Nov 2026 09:15:44 UTC");
        let e = check_not_older(&release("Sat, 14 Nov 2026 08:00:00 UTC"), Some(&nb)).unwrap_err().to_string();
        assert!(
            e.contains("dated Sat, 14 Nov 2026 08:00:00 UTC, older than the release") && e.contains("qemu-arm64.lock was locked from (Sat, 21 Nov 2026"),
            "{e}"
        );
        assert!(e.contains("--allow-older"), "{e}");
        // The same release again, or a newer one, is fine; so is no earlier lock.
        assert!(check_not_older(&release("Sat, 21 Nov 2026 09:15:44 UTC"), Some(&nb)).is_ok());
        assert!(check_not_older(&release("Sat, 28 Nov 2026 09:00:00 UTC"), Some(&nb)).is_ok());
        assert!(check_not_older(&release("Sat, 14 Nov 2026 08:00:00 UTC"), None).is_ok());
        // A lock of another suite, or one that is not a lock, says nothing about this suite.
        assert_eq!(NotBefore::read(&path, "forky"), None);
        std::fs::write(&path, "not a lock").unwrap();
        assert_eq!(NotBefore::read(&path, "trixie"), None);
        assert_eq!(NotBefore::read(&dir.path().join("none.lock"), "trixie"), None);
    }
}
