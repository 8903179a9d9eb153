//! An in-memory file tree that records owner, mode and mtime itself, so a root filesystem can be
//! assembled without root, chroot or loop mounts, and written out in sorted order.

use crate::deb::{self, DebError, EntryKind};
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Arc<Vec<u8>>),
    Symlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
}

impl Node {
    pub fn dir(mode: u32) -> Node {
        Node { kind: Kind::Dir, mode, uid: 0, gid: 0, mtime: 0 }
    }
    pub fn file(data: impl Into<Vec<u8>>, mode: u32) -> Node {
        Node { kind: Kind::File(Arc::new(data.into())), mode, uid: 0, gid: 0, mtime: 0 }
    }
    pub fn symlink(target: impl Into<String>) -> Node {
        Node { kind: Kind::Symlink(target.into()), mode: 0o777, uid: 0, gid: 0, mtime: 0 }
    }
}

/// Paths are relative ("usr/bin/busybox"); the root itself is "".
#[derive(Debug, Default, Clone)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

/// Merged-/usr: these top-level directories are links into /usr.
pub const USR_MERGED: [&str; 4] = ["bin", "sbin", "lib", "lib64"];

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Inserts (or replaces) `path`, creating missing parent directories (0755, root).
    pub fn insert(&mut self, path: &str, node: Node) {
        let path = path.trim_matches('/');
        let mut parent = String::new();
        for part in path.split('/').collect::<Vec<_>>().iter().rev().skip(1).rev() {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.nodes.entry(parent.clone()).or_insert_with(|| Node::dir(0o755));
        }
        // Children are entries of their own, so replacing a directory's node keeps them.
        self.nodes.insert(path.to_string(), node);
    }

    /// Removes `path` and everything under it.
    pub fn remove_tree(&mut self, path: &str) {
        let prefix = format!("{path}/");
        self.nodes.retain(|k, _| k != path && !k.starts_with(&prefix));
    }

    /// Paths under `dir` (not `dir` itself).
    pub fn under<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a String, &'a Node)> + 'a {
        let prefix = format!("{}/", dir.trim_matches('/'));
        self.nodes.range(prefix.clone()..).take_while(move |(k, _)| k.starts_with(&prefix))
    }

    /// Extracts a package's data archive. Paths in /bin, /sbin, /lib are moved under /usr, and
    /// an entry whose parent is a symlink in the tree lands where the link points, as dpkg
    /// unpacks (always inside the tree: `..` and absolute link targets stop at its root).
    pub fn extract_deb(&mut self, deb: &Path) -> Result<(), DebError> {
        let format = |message: String| DebError::Format { path: deb.into(), message };
        deb::for_each_entry(deb, |e| {
            let path = self.place(&usr_merge(&e.path)).map_err(format)?;
            let kind = match e.kind {
                EntryKind::Dir => {
                    // A directory the tree already has, or links to, stays as it is.
                    if self.resolve(&path).and_then(|p| self.nodes.get(&p)).is_some_and(|n| n.kind == Kind::Dir) {
                        return Ok(());
                    }
                    Kind::Dir
                }
                EntryKind::File(data) => Kind::File(Arc::new(data)),
                EntryKind::Symlink(t) => Kind::Symlink(t),
                EntryKind::Hardlink(target) => match self.place(&usr_merge(&target)).ok().and_then(|t| self.nodes.get(&t)) {
                    Some(n) => n.kind.clone(),
                    None => return Err(format(format!("{path}: hard link to missing {target}"))),
                },
            };
            self.insert(&path, Node { kind, mode: e.mode, uid: e.uid, gid: e.gid, mtime: e.mtime });
            Ok(())
        })
    }

    /// `path` with its parent directories followed through the tree's symlinks.
    fn place(&self, path: &str) -> Result<String, String> {
        match path.rsplit_once('/') {
            Some((parent, name)) => {
                let dir = self.real_path(parent)?;
                Ok(if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") })
            }
            None => Ok(path.to_string()),
        }
    }

    /// `path` with every symlink in it followed inside the tree, as if the tree were the root
    /// directory: absolute targets start from the tree's root and `..` stops there, so the
    /// result never leaves the tree. Parts that do not exist are kept as they are; a part
    /// that is a file with more after it is an error.
    fn real_path(&self, path: &str) -> Result<String, String> {
        let mut done = String::new();
        let mut todo: std::collections::VecDeque<String> = path.split('/').map(String::from).collect();
        let mut links = 0;
        while let Some(part) = todo.pop_front() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    done.truncate(done.rfind('/').unwrap_or(0));
                    continue;
                }
                _ => {}
            }
            let next = usr_merge(&if done.is_empty() { part } else { format!("{done}/{part}") });
            match self.nodes.get(&next).map(|n| &n.kind) {
                Some(Kind::Symlink(target)) => {
                    links += 1;
                    if links > 40 {
                        return Err(format!("{path}: too many levels of symbolic links"));
                    }
                    if target.starts_with('/') {
                        done.clear();
                    }
                    for (i, p) in target.split('/').enumerate() {
                        todo.insert(i, p.to_string());
                    }
                }
                Some(Kind::File(_)) if !todo.iter().all(|p| p.is_empty() || p == ".") => return Err(format!("{path}: {next} is a file, not a directory")),
                _ => done = next,
            }
        }
        Ok(done)
    }

    /// Every mtime later than `epoch` becomes `epoch` (SOURCE_DATE_EPOCH semantics).
    pub fn clamp_mtimes(&mut self, epoch: i64) {
        for n in self.nodes.values_mut() {
            if n.mtime > epoch || n.mtime == 0 {
                n.mtime = epoch;
            }
        }
    }

    /// Follows symlinks inside the tree (relative and absolute) to the final path, if it exists.
    pub fn resolve(&self, path: &str) -> Option<String> {
        self.real_path(path).ok().filter(|p| self.nodes.contains_key(p))
    }

    /// Writes the tree under `dir` (which must be empty). Owners are not applied (no root
    /// needed); callers pass them to the file-system tool. Mode and mtime are applied.
    ///
    /// Nothing is written outside `dir`, whatever the tree holds: every parent is opened with
    /// `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS)` and must be a directory of the tree,
    /// and nothing is created through an existing name (`O_EXCL`, `O_NOFOLLOW`).
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        let ctx = |p: &str, e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", dir.join(p).display()));
        let root = std::fs::File::open(dir).map_err(|e| ctx("", e))?;
        let mut parent_fd: Option<(String, OwnedFd)> = None;
        for (path, node) in &self.nodes {
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            if !parent.is_empty() && !matches!(self.nodes.get(parent).map(|n| &n.kind), Some(Kind::Dir)) {
                let why = format!("it lies under {parent}, which is not a directory in the tree (a package placed it through a link?)");
                return Err(ctx(path, std::io::Error::new(std::io::ErrorKind::InvalidData, why)));
            }
            if parent_fd.as_ref().is_none_or(|(p, _)| p != parent) {
                parent_fd = Some((parent.to_string(), open_inside(&root, parent, OFlag::O_DIRECTORY).map_err(|e| ctx(parent, e))?));
            }
            let at = &parent_fd.as_ref().expect("just opened").1;
            match &node.kind {
                Kind::Dir => nix::sys::stat::mkdirat(at, name, Mode::from_bits_truncate(0o700)).map_err(|e| ctx(path, e.into()))?,
                Kind::File(data) => {
                    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                    let fd = nix::fcntl::openat(at, name, flags, Mode::from_bits_truncate(0o600)).map_err(|e| ctx(path, e.into()))?;
                    std::fs::File::from(fd).write_all(data).map_err(|e| ctx(path, e))?;
                }
                Kind::Symlink(t) => nix::unistd::symlinkat(t.as_str(), at, name).map_err(|e| ctx(path, e.into()))?,
            }
        }
        // Modes and times after all content exists (a read-only directory would block its children).
        for (path, node) in self.nodes.iter().rev() {
            if matches!(node.kind, Kind::Symlink(_)) {
                continue;
            }
            let f = std::fs::File::from(open_inside(&root, path, OFlag::empty()).map_err(|e| ctx(path, e))?);
            let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(node.mtime.max(0) as u64);
            f.set_modified(time).map_err(|e| ctx(path, e))?;
            f.set_permissions(std::fs::Permissions::from_mode(node.mode)).map_err(|e| ctx(path, e))?;
        }
        Ok(())
    }
}

/// Opens `path` (read-only) under `root`, refusing to follow any symlink on the way.
fn open_inside(root: &std::fs::File, path: &str, flags: OFlag) -> std::io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let path = if path.is_empty() { "." } else { path };
    nix::fcntl::openat2(root, path, how).map_err(|e| match e {
        nix::errno::Errno::ENOSYS => {
            std::io::Error::other("openat2 is not available: writing a tree safely needs Linux 5.6 or later (and a container runtime that allows openat2)")
        }
        e => e.into(),
    })
}

fn usr_merge(path: &str) -> String {
    match path.split_once('/') {
        Some((top, rest)) if USR_MERGED.contains(&top) => format!("usr/{top}/{rest}"),
        _ => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_created_and_usr_is_merged() {
        let mut t = Tree::new();
        t.insert("usr/lib/firmware/a.bin", Node::file(b"x".to_vec(), 0o644));
        t.insert("usr/lib/firmware/b.bin", Node::symlink("a.bin"));
        t.insert("usr/lib/firmware/c.bin", Node::symlink("/lib/firmware/b.bin"));
        assert_eq!(t.get("usr/lib").map(|n| n.mode), Some(0o755));
        assert_eq!(t.resolve("usr/lib/firmware/c.bin").as_deref(), Some("usr/lib/firmware/a.bin"));
        assert_eq!(usr_merge("lib/modules/x"), "usr/lib/modules/x");
        assert_eq!(t.under("usr/lib/firmware").count(), 3);
    }

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
    }

    /// A .deb whose data.tar holds exactly these names, byte for byte (tar::Builder would
    /// refuse the hostile ones).
    fn deb(dir: &Path, entries: &[E]) -> std::path::PathBuf {
        let mut tar = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_old();
            let (name, link, data, kind): (&str, &str, &[u8], _) = match e {
                E::File(n, d) => (n, "", d, tar::EntryType::Regular),
                E::Dir(n) => (n, "", b"", tar::EntryType::Directory),
                E::Symlink(n, t) => (n, t, b"", tar::EntryType::Symlink),
                E::Hardlink(n, t) => (n, t, b"", tar::EntryType::Link),
            };
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            tar.append(&h, data).unwrap();
        }
        let data = tar.into_inner().unwrap();
        let mut out = b"!<arch>\n".to_vec();
        for (name, body) in [("debian-binary", &b"2.0\n"[..]), ("data.tar", &data[..])] {
            out.extend_from_slice(format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, "100644", body.len()).as_bytes());
            out.extend_from_slice(body);
            if body.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        let path = dir.join("test.deb");
        std::fs::write(&path, out).unwrap();
        path
    }

    #[test]
    fn hostile_paths_are_refused_with_the_entry_named() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["./../etc/passwd", "/etc/passwd", "./usr/../../x", "./usr//x", "./usr/./x"] {
            let err = Tree::new().extract_deb(&deb(dir.path(), &[E::File(bad, b"x")])).unwrap_err().to_string();
            assert!(err.contains(&format!("entry '{bad}' is not a plain path")) && err.contains("test.deb"), "{bad}: {err}");
        }
        let err = Tree::new().extract_deb(&deb(dir.path(), &[E::Hardlink("./usr/x", "./../../etc/shadow")])).unwrap_err().to_string();
        assert!(err.contains("not a plain path"), "{err}");
    }

    #[test]
    fn links_in_the_tree_keep_entries_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        let out = outside.to_str().unwrap();
        let package = deb(
            dir.path(),
            &[
                E::Dir("./usr/lib/"),
                // dpkg's case: a package's file under a linked directory lands where it points.
                E::Symlink("./usr/lib64", "lib"),
                E::File("./usr/lib64/ld.so", b"ld"),
                // A link out, then a file through it: it lands inside the tree.
                E::Symlink("./etc/evil", out),
                E::File("./etc/evil/owned", b"x"),
                E::Symlink("./up", "../../../../.."),
                E::File("./up/top", b"t"),
                E::Hardlink("./usr/copy", "./etc/evil/owned"),
            ],
        );
        let mut t = Tree::new();
        t.extract_deb(&package).unwrap();
        assert!(t.get("usr/lib/ld.so").is_some());
        assert!(t.get(&format!("{}/owned", out.trim_start_matches('/'))).is_some());
        assert!(t.get("top").is_some());
        assert_eq!(t.get("usr/copy").map(|n| &n.kind), Some(&Kind::File(Arc::new(b"x".to_vec()))));
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        t.write_to(&root).unwrap();
        assert!(!outside.exists(), "a file was written outside the tree");
        assert_eq!(std::fs::read(root.join(out.trim_start_matches('/')).join("owned")).unwrap(), b"x");
        assert_eq!(std::fs::read_link(root.join("etc/evil")).unwrap(), outside);
    }

    #[test]
    fn writing_never_follows_a_link_out() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        // A tree made by hand, not by extraction: a node under a symlink node.
        let mut t = Tree::new();
        t.insert("l", Node::symlink(outside.to_str().unwrap()));
        t.insert("l/f", Node::file(b"x".to_vec(), 0o644));
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let err = t.write_to(&root).unwrap_err().to_string();
        assert!(err.contains("l/f") && err.contains("not a directory in the tree"), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }
}
