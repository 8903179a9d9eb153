//! Upstream sources built into images (cjdns and the git dependencies it pins).
//!
//! `board-defs/sources/<set>.yaml` names each source by repository and commit. `meshimg lock`
//! records each with the sha256 of its extracted tree (not of a tarball: GitHub makes its
//! archives on the fly, and their bytes change over time); builds fetch the tarball, unpack it
//! into the cache under that hash, and check the tree again before every use. A mirror
//! directory (`MESHOS_SOURCES` or `--sources`) holding the tarballs is searched before GitHub,
//! for machines with no route to it.
#![allow(clippy::result_large_err)] // one error ends the build; its size costs nothing

use crate::http::{self, HttpError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{name} {commit}: {source}\nhint: with no route to GitHub, put {archive} (made by 'git archive --prefix={name}/ {commit} | gzip -n') in a directory and name it with MESHOS_SOURCES or --sources")]
    Fetch { name: String, commit: String, archive: String, source: HttpError },
    #[error("{file}: its tree has sha256 {got}, but {lock_path} pins {expected} for {name} {commit}\nhint: the file was changed or holds another commit; replace it with the upstream archive of that commit, or run 'meshimg lock {board}' if the pin itself should change")]
    TreeMismatch { file: String, lock_path: String, board: String, name: String, commit: String, expected: String, got: String },
    #[error("{file}: {message}\nhint: replace it with the upstream archive ('git archive --prefix=<dir>/ <commit> | gzip -n')")]
    Unpack { file: String, message: String },
    #[error("{lock_path} pins no source named {name}\nhint: run 'meshimg lock {board}'")]
    NotLocked { lock_path: String, board: String, name: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A set of sources built together: the first is the project, the rest what it pins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceSet {
    pub api_version: String,
    pub name: String,
    pub version: String,
    pub sources: Vec<Source>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    pub name: String,
    /// `https://github.com/<owner>/<repo>`, as the project's Cargo.toml spells it.
    pub repository: String,
    /// The full 40-digit commit.
    pub commit: String,
    /// The tarball's file name in a mirror directory.
    pub archive: String,
    /// For a git submodule: where in another source of the set its tree goes
    /// (`<source>/<path>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub into: Option<String>,
}

/// A source as the lock pins it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedSource {
    pub name: String,
    pub repository: String,
    pub commit: String,
    pub tree_sha256: String,
}

/// `board-defs/sources/<name>.yaml` under `root`.
pub fn set_path(root: &Path, name: &str) -> PathBuf {
    crate::defs::under(root, &format!("board-defs/sources/{name}.yaml"))
}

impl SourceSet {
    pub fn load(path: &Path) -> Result<SourceSet, SourceError> {
        let text = std::fs::read_to_string(path).map_err(|source| SourceError::Read { path: path.into(), source })?;
        let set: SourceSet = serde_norway::from_str(&text).map_err(|e| SourceError::Invalid { path: path.into(), message: e.to_string() })?;
        set.validate(path)?;
        Ok(set)
    }

    fn validate(&self, path: &Path) -> Result<(), SourceError> {
        let invalid = |message: String| Err(SourceError::Invalid { path: path.into(), message });
        if self.api_version != crate::defs::API_VERSION {
            return invalid(format!("apiVersion is '{}' but this meshimg reads '{}'", self.api_version, crate::defs::API_VERSION));
        }
        if self.sources.is_empty() {
            return invalid("sources is empty".into());
        }
        for (i, s) in self.sources.iter().enumerate() {
            if s.commit.len() != 40 || !s.commit.chars().all(|c| c.is_ascii_hexdigit()) {
                return invalid(format!("sources[{i}].commit '{}' is not a full 40-digit commit", s.commit));
            }
            if github_path(&s.repository).is_none() {
                return invalid(format!("sources[{i}].repository '{}' is not https://github.com/<owner>/<repo>", s.repository));
            }
            if s.name.is_empty() || !s.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return invalid(format!("sources[{i}].name '{}' may hold only a-z, 0-9, '-' and '_'", s.name));
            }
            if s.archive.contains('/') || !s.archive.ends_with(".tar.gz") {
                return invalid(format!("sources[{i}].archive '{}' must be a file name ending in .tar.gz", s.archive));
            }
            if let Some(into) = &s.into {
                let parent = into.split('/').next().unwrap_or("");
                if parent == s.name || !self.sources.iter().any(|o| o.name == parent) || into.split('/').any(|c| c == ".." || c.is_empty()) {
                    return invalid(format!("sources[{i}].into '{into}' must be <another source>/<relative path>"));
                }
            }
        }
        if self.sources[0].into.is_some() {
            return invalid("sources[0] is the project itself and cannot go into another".into());
        }
        Ok(())
    }

    /// What of the set decides the lock (names, repositories, commits).
    pub fn lock_inputs(&self) -> serde_json::Value {
        serde_json::json!(self.sources.iter().map(|s| [&s.name, &s.repository, &s.commit]).collect::<Vec<_>>())
    }
}

fn github_path(repository: &str) -> Option<&str> {
    let path = repository.strip_prefix("https://github.com/")?;
    let mut parts = path.split('/');
    let ok = matches!((parts.next(), parts.next(), parts.next()), (Some(o), Some(r), None) if !o.is_empty() && !r.is_empty());
    ok.then_some(path)
}

/// The mirror directory from `MESHOS_SOURCES`, if set.
pub fn mirror_from_env() -> Option<PathBuf> {
    std::env::var_os("MESHOS_SOURCES").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Where sources come from (a mirror directory, then GitHub) and where their verified trees are kept.
pub struct Sources {
    root: PathBuf,
    mirror: Option<PathBuf>,
}

impl Sources {
    /// `cache` is the package cache's root; trees go under its `sources/`.
    pub fn new(cache: &Path, mirror: Option<PathBuf>) -> Sources {
        Sources { root: cache.join("sources"), mirror }
    }

    /// For `meshimg lock`: each source fetched, unpacked and hashed.
    pub fn lock(&self, set: &SourceSet, log: &dyn Fn(&str)) -> Result<Vec<LockedSource>, SourceError> {
        let mut out = Vec::new();
        for s in &set.sources {
            let (file, origin) = self.obtain(s)?;
            let tmp = self.unpack(&file, s)?;
            let tree_sha256 = tree_sha256(&tmp.top).map_err(|source| SourceError::Io { path: tmp.top.clone(), source })?;
            log(&format!("{} {} from {origin}: tree sha256 {tree_sha256}", s.name, &s.commit[..12]));
            self.keep(tmp, &tree_sha256)?;
            out.push(LockedSource { name: s.name.clone(), repository: s.repository.clone(), commit: s.commit.clone(), tree_sha256 });
        }
        Ok(out)
    }

    /// For builds: every source of `set`, its tree checked against the lock, by name.
    pub fn ensure(&self, set: &SourceSet, locked: &[LockedSource], lock_path: &Path, board: &str) -> Result<BTreeMap<String, PathBuf>, SourceError> {
        let mut trees = BTreeMap::new();
        for s in &set.sources {
            let pin = locked
                .iter()
                .find(|l| l.name == s.name && l.commit == s.commit && l.repository == s.repository)
                .ok_or_else(|| SourceError::NotLocked { lock_path: lock_path.display().to_string(), board: board.into(), name: s.name.clone() })?;
            let dir = self.root.join("tree").join(&pin.tree_sha256);
            if dir.is_dir() {
                match tree_sha256(&dir) {
                    Ok(h) if h == pin.tree_sha256 => {
                        trees.insert(s.name.clone(), dir);
                        continue;
                    }
                    _ => {
                        eprintln!("sources: the cached tree of {} was changed; discarding it and unpacking again", s.name);
                        std::fs::remove_dir_all(&dir).map_err(|source| SourceError::Io { path: dir.clone(), source })?;
                    }
                }
            }
            let (file, origin) = self.obtain(s)?;
            let tmp = self.unpack(&file, s)?;
            let got = tree_sha256(&tmp.top).map_err(|source| SourceError::Io { path: tmp.top.clone(), source })?;
            if got != pin.tree_sha256 {
                return Err(SourceError::TreeMismatch {
                    file: origin,
                    lock_path: lock_path.display().to_string(),
                    board: board.into(),
                    name: s.name.clone(),
                    commit: s.commit[..12].to_string(),
                    expected: pin.tree_sha256.clone(),
                    got,
                });
            }
            eprintln!("sources: {} {} from {origin}: tree verified", s.name, &s.commit[..12]);
            trees.insert(s.name.clone(), self.keep(tmp, &got)?);
        }
        Ok(trees)
    }

    /// The tarball: from the mirror directory (or one directory below it), else downloaded
    /// from GitHub. Returns its path and where it came from.
    fn obtain(&self, s: &Source) -> Result<(PathBuf, String), SourceError> {
        if let Some(m) = &self.mirror {
            let below = std::fs::read_dir(m).into_iter().flatten().flatten().map(|e| e.path().join(&s.archive));
            if let Some(found) = std::iter::once(m.join(&s.archive)).chain(below).find(|p| p.is_file()) {
                let origin = found.display().to_string();
                return Ok((found, origin));
            }
        }
        let path = github_path(&s.repository).expect("validated");
        let url = format!("https://github.com/{path}/archive/{}.tar.gz", s.commit);
        let dir = self.root.join("download");
        std::fs::create_dir_all(&dir).map_err(|source| SourceError::Io { path: dir.clone(), source })?;
        let partial = dir.join(format!("{}-{}.tar.gz", s.name, s.commit));
        let _ = std::fs::remove_file(&partial);
        let fetch = |source| SourceError::Fetch { name: s.name.clone(), commit: s.commit.clone(), archive: s.archive.clone(), source };
        eprintln!("sources: downloading {url}");
        http::with_retries(|| http::download_resuming(&url, &partial, &|_| {})).map_err(fetch)?;
        Ok((partial, url))
    }

    /// Unpacks `file` into a fresh directory of its own in the cache (builds sharing the cache
    /// may unpack the same source at once) and returns the tree inside it (the archive's one
    /// top-level directory).
    fn unpack(&self, file: &Path, s: &Source) -> Result<Unpacked, SourceError> {
        let unpack_err = |message: String| SourceError::Unpack { file: file.display().to_string(), message };
        // (a name of this process's own: one left over is from a process that died)
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = Scratch(self.root.join("tmp").join(format!("{}.{}.{n}", s.name, std::process::id())));
        let tmp = dir.0.as_path();
        let _ = std::fs::remove_dir_all(tmp);
        std::fs::create_dir_all(tmp).map_err(|source| SourceError::Io { path: tmp.into(), source })?;
        let f = std::fs::File::open(file).map_err(|source| SourceError::Io { path: file.into(), source })?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(f));
        archive.set_preserve_mtime(false);
        // Entries are unpacked one by one: `unpack_in` refuses paths that leave `tmp`, and
        // anything but files, directories and symbolic links (git has nothing else) is skipped.
        for entry in archive.entries().map_err(|e| unpack_err(e.to_string()))? {
            let mut entry = entry.map_err(|e| unpack_err(e.to_string()))?;
            use tar::EntryType::*;
            if !matches!(entry.header().entry_type(), Regular | Directory | Symlink) {
                continue;
            }
            if !entry.unpack_in(tmp).map_err(|e| unpack_err(e.to_string()))? {
                return Err(unpack_err(format!("entry {} leaves the archive's directory", entry.path().map(|p| p.display().to_string()).unwrap_or_default())));
            }
        }
        let tops: Vec<PathBuf> = std::fs::read_dir(tmp).map_err(|source| SourceError::Io { path: tmp.into(), source })?.flatten().map(|e| e.path()).collect();
        match tops.as_slice() {
            [top] if top.is_dir() => Ok(Unpacked { top: top.clone(), _dir: dir }),
            _ => Err(unpack_err(format!("holds {} top-level entries, not one directory", tops.len()))),
        }
    }

    /// Moves a verified tree to its place under its hash. One already there (another build's,
    /// verified by it against the same hash) is used as it is: it may be in use.
    fn keep(&self, tree: Unpacked, tree_sha256: &str) -> Result<PathBuf, SourceError> {
        let dir = self.root.join("tree").join(tree_sha256);
        let io = |source| SourceError::Io { path: dir.clone(), source };
        std::fs::create_dir_all(self.root.join("tree")).map_err(io)?;
        match std::fs::rename(&tree.top, &dir) {
            Err(_) if dir.is_dir() => Ok(dir),
            Err(e) => Err(io(e)),
            Ok(()) => Ok(dir),
        }
    }
}

/// An unpacked archive's tree, in a directory removed when this is dropped.
#[derive(Debug)]
struct Unpacked {
    top: PathBuf,
    _dir: Scratch,
}

#[derive(Debug)]
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// sha256 over a tree as git sees it: each file's path, whether it is executable and its
/// content's sha256, and each symbolic link's path and target, in path order. Directories
/// count only through what they hold (git has no empty ones).
pub fn tree_sha256(root: &Path) -> std::io::Result<String> {
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel))? {
            let e = e?;
            let rel = rel.join(e.file_name());
            let name = rel.to_str().ok_or_else(|| std::io::Error::other(format!("{}: not UTF-8", rel.display())))?.to_string();
            let meta = std::fs::symlink_metadata(e.path())?;
            if meta.is_dir() {
                stack.push(rel);
            } else if meta.file_type().is_symlink() {
                entries.push((name, format!("link {}", std::fs::read_link(e.path())?.display())));
            } else {
                let mode = if meta.permissions().mode() & 0o100 != 0 { "755" } else { "644" };
                entries.push((name, format!("file {mode} {}", crate::package_cache::file_sha256(&e.path())?)));
            }
        }
    }
    entries.sort();
    let mut h = Sha256::new();
    for (path, what) in entries {
        h.update(path.as_bytes());
        h.update([0]);
        h.update(what.as_bytes());
        h.update(b"\n");
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(dir: &Path, name: &str, files: &[(&str, &[u8], u32)]) -> PathBuf {
        let path = dir.join(name);
        let gz = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (p, data, mode) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_cksum();
            b.append_data(&mut h, p, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
        path
    }

    fn set(archive: &str) -> SourceSet {
        SourceSet {
            api_version: crate::defs::API_VERSION.into(),
            name: "demo".into(),
            version: "1".into(),
            sources: vec![Source {
                name: "demo".into(),
                repository: "https://github.com/example/demo".into(),
                commit: "a".repeat(40),
                archive: archive.into(),
                into: None,
            }],
        }
    }

    #[test]
    fn the_tree_hash_sees_content_and_the_executable_bit_only() {
        let d = tempfile::tempdir().unwrap();
        let a = tarball(d.path(), "a.tar.gz", &[("top/x", b"1", 0o644), ("top/bin/run", b"#!/bin/sh\n", 0o755)]);
        let b = tarball(d.path(), "b.tar.gz", &[("other/bin/run", b"#!/bin/sh\n", 0o775), ("other/x", b"1", 0o600)]);
        let c = tarball(d.path(), "c.tar.gz", &[("top/x", b"1", 0o755), ("top/bin/run", b"#!/bin/sh\n", 0o755)]);
        let s = Sources::new(d.path(), None);
        let hash = |f: &Path| tree_sha256(&s.unpack(f, &set("x.tar.gz").sources[0]).unwrap().top).unwrap();
        assert_eq!(hash(&a), hash(&b), "the top directory's name, file order and other mode bits do not count");
        assert_ne!(hash(&a), hash(&c), "the executable bit counts");
    }

    #[test]
    fn a_tampered_mirror_tarball_is_refused_naming_it_and_a_good_one_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let mirror = d.path().join("mirror");
        std::fs::create_dir_all(mirror.join("demo")).unwrap();
        tarball(&mirror.join("demo"), "demo-1.tar.gz", &[("demo/src.c", b"int main(void) { return 0; }\n", 0o644)]);
        let s = Sources::new(&d.path().join("cache"), Some(mirror.clone()));
        let set = set("demo-1.tar.gz");
        let locked = s.lock(&set, &|_| {}).unwrap();
        let trees = s.ensure(&set, &locked, Path::new("board-defs/x.lock"), "x").unwrap();
        assert_eq!(std::fs::read(trees["demo"].join("src.c")).unwrap(), b"int main(void) { return 0; }\n");

        // The cached tree is checked again: a change there is repaired from the mirror.
        std::fs::write(trees["demo"].join("src.c"), b"evil").unwrap();
        let trees = s.ensure(&set, &locked, Path::new("board-defs/x.lock"), "x").unwrap();
        assert_eq!(std::fs::read(trees["demo"].join("src.c")).unwrap(), b"int main(void) { return 0; }\n");

        // A tampered tarball, with nothing cached: refused, naming the file.
        std::fs::remove_dir_all(d.path().join("cache")).unwrap();
        tarball(&mirror.join("demo"), "demo-1.tar.gz", &[("demo/src.c", b"int main(void) { return 1; }\n", 0o644)]);
        let e = s.ensure(&set, &locked, Path::new("board-defs/x.lock"), "x").unwrap_err().to_string();
        assert!(e.contains(&format!("{}: its tree has sha256", mirror.join("demo/demo-1.tar.gz").display())), "{e}");
        assert!(e.contains("board-defs/x.lock pins"), "{e}");
        assert!(!d.path().join("cache/sources/tree").join(&locked[0].tree_sha256).exists());
    }

    #[test]
    fn builds_sharing_a_cache_unpack_the_same_source_at_once() {
        let d = tempfile::tempdir().unwrap();
        let mirror = d.path().join("mirror");
        std::fs::create_dir_all(&mirror).unwrap();
        let files: Vec<(String, Vec<u8>)> = (0..200).map(|i| (format!("demo/f{i}.c"), vec![b'x'; 4096])).collect();
        let files: Vec<(&str, &[u8], u32)> = files.iter().map(|(p, c)| (p.as_str(), c.as_slice(), 0o644)).collect();
        tarball(&mirror, "demo-1.tar.gz", &files);
        let set = set("demo-1.tar.gz");
        let locked = Sources::new(&d.path().join("lock-cache"), Some(mirror.clone())).lock(&set, &|_| {}).unwrap();
        let cache = d.path().join("cache");
        let trees: Vec<PathBuf> = std::thread::scope(|scope| {
            let builds: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| Sources::new(&cache, Some(mirror.clone())).ensure(&set, &locked, Path::new("x.lock"), "x").unwrap()["demo"].clone()))
                .collect();
            builds.into_iter().map(|b| b.join().unwrap()).collect()
        });
        for t in &trees {
            assert_eq!(tree_sha256(t).unwrap(), locked[0].tree_sha256);
        }
        assert_eq!(std::fs::read_dir(cache.join("sources/tmp")).unwrap().count(), 0, "nothing left unpacked");
    }

    #[test]
    fn archives_that_leave_their_directory_or_are_not_one_tree_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = Sources::new(d.path(), None);
        let two = tarball(d.path(), "two.tar.gz", &[("a/x", b"1", 0o644), ("b/y", b"2", 0o644)]);
        let e = s.unpack(&two, &set("two.tar.gz").sources[0]).unwrap_err().to_string();
        assert!(e.contains("2 top-level entries"), "{e}");
        std::fs::write(d.path().join("junk.tar.gz"), b"not gzip").unwrap();
        let e = s.unpack(&d.path().join("junk.tar.gz"), &set("junk.tar.gz").sources[0]).unwrap_err().to_string();
        assert!(e.contains("junk.tar.gz"), "{e}");
    }

    #[test]
    fn a_set_names_full_commits_github_repositories_and_real_submodule_parents() {
        let mut s = set("demo-1.tar.gz");
        assert!(s.validate(Path::new("x.yaml")).is_ok());
        s.sources[0].commit = "abc".into();
        assert!(s.validate(Path::new("x.yaml")).unwrap_err().to_string().contains("sources[0].commit"));
        let mut s = set("demo-1.tar.gz");
        s.sources.push(Source { into: Some("nowhere/lib".into()), name: "lib".into(), ..s.sources[0].clone() });
        assert!(s.validate(Path::new("x.yaml")).unwrap_err().to_string().contains("sources[1].into"));
    }
}
