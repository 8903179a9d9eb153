//! Pool files in a content-addressed cache (`~/.cache/meshos` or `$MESHOS_CACHE`).
//!
//! A file enters the cache only after its size and sha256 match the lock; a cached file is
//! re-checked before each use, and a tampered or truncated one is discarded and fetched again.

use crate::http::{self, HttpError};
use crate::lock::{Lock, LockedPackage};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const WORKERS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{lock_path}: {name} {version} has sha256 {expected} but the download has {got}\nhint: run 'meshimg lock {board}' to refresh the lock if the archive changed it")]
    HashMismatch { lock_path: String, board: String, name: String, version: String, expected: String, got: String },
    #[error("{lock_path}: {name} {version} should be {expected} bytes but the download has {got}\nhint: the download was cut short; run the build again to resume it")]
    SizeMismatch { lock_path: String, board: String, name: String, version: String, expected: u64, got: u64 },
    #[error("{name} {version}: {source}\nhint: the lock pins a file the mirror no longer serves; run 'meshimg lock {board}' for the current one, or use a mirror that keeps it (debian.mirror)")]
    Gone { name: String, version: String, board: String, source: HttpError },
    #[error("{name} {version}: {source}")]
    Http { name: String, version: String, source: HttpError },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The cache root.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MESHOS_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("meshos")
}

pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: PathBuf) -> Cache {
        Cache { root }
    }

    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.root.join("sha256").join(sha256)
    }

    /// A directory for what builds derive from cached packages and may reuse, created if missing.
    pub fn derived(&self, what: &str) -> PathBuf {
        let dir = self.root.join("derived").join(what);
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    /// Makes sure every package is in the cache and intact; returns how many bytes were downloaded.
    #[allow(clippy::result_large_err)] // one error ends the build; its size costs nothing
    pub fn ensure(&self, lock: &Lock, lock_path: &Path, packages: &[&LockedPackage]) -> Result<u64, FetchError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| FetchError::Io { path, source }
        };
        std::fs::create_dir_all(self.root.join("sha256")).map_err(io(&self.root))?;
        std::fs::create_dir_all(self.root.join("partial")).map_err(io(&self.root))?;
        let mut missing: Vec<&LockedPackage> = Vec::new();
        for p in packages {
            // Content-addressed: two entries with one hash are one download.
            if missing.iter().any(|m| m.sha256 == p.sha256) {
                continue;
            }
            let path = self.path_of(&p.sha256);
            if path.exists() {
                if file_sha256(&path).map_err(io(&path))? == p.sha256 {
                    continue;
                }
                eprintln!("fetch: cached {} {} is damaged; discarding it and fetching again", p.name, p.version);
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
            missing.push(*p);
        }
        if missing.is_empty() {
            return Ok(0);
        }
        let total: u64 = missing.iter().map(|p| p.size).sum();
        let bar =
            ProgressBar::new(total).with_style(ProgressStyle::with_template("fetch {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}").expect("template"));
        if bar.is_hidden() {
            eprintln!("fetch: {} packages, {:.1} MiB", missing.len(), total as f64 / 1048576.0);
        }
        let queue = Mutex::new(missing.clone());
        let first_error: Mutex<Option<FetchError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..WORKERS.min(missing.len()) {
                s.spawn(|| loop {
                    let Some(p) = queue.lock().expect("queue").pop() else { return };
                    if first_error.lock().expect("error").is_some() {
                        return;
                    }
                    bar.set_message(p.name.clone());
                    if let Err(e) = self.download(lock, lock_path, p, &bar) {
                        first_error.lock().expect("error").get_or_insert(e);
                    }
                });
            }
        });
        bar.finish_and_clear();
        match first_error.into_inner().expect("error") {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    #[allow(clippy::result_large_err)] // as for ensure
    fn download(&self, lock: &Lock, lock_path: &Path, p: &LockedPackage, bar: &ProgressBar) -> Result<(), FetchError> {
        let url = format!("{}/{}", lock.mirror.trim_end_matches('/'), p.path);
        let partial = self.root.join("partial").join(&p.sha256);
        let progress = |n: u64| bar.inc(n);
        let result = http::with_retries(|| {
            http::download_resuming(&url, &partial, &progress)?;
            // A partial file that grew past the expected size is garbage: start over next attempt.
            let got = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            if got > p.size {
                let _ = std::fs::remove_file(&partial);
                return Err(HttpError::Failed { url: url.clone(), message: format!("got {got} bytes, expected {}", p.size) });
            }
            Ok(())
        });
        let (name, version, board) = (p.name.clone(), p.version.clone(), lock.board.clone());
        match result {
            Ok(()) => {}
            Err(source @ HttpError::NotFound { .. }) => return Err(FetchError::Gone { name, version, board, source }),
            Err(source) => return Err(FetchError::Http { name, version, source }),
        }
        let io = |source| FetchError::Io { path: partial.clone(), source };
        let size = std::fs::metadata(&partial).map_err(io)?.len();
        let lock_path = lock_path.display().to_string();
        if size != p.size {
            return Err(FetchError::SizeMismatch { lock_path, board, name, version, expected: p.size, got: size });
        }
        let got = file_sha256(&partial).map_err(io)?;
        if got != p.sha256 {
            std::fs::remove_file(&partial).map_err(io)?;
            return Err(FetchError::HashMismatch { lock_path, board, name, version, expected: p.sha256.clone(), got });
        }
        std::fs::rename(&partial, self.path_of(&p.sha256)).map_err(io)
    }
}

pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
