//! An in-memory file tree that records owner, mode and mtime itself, so a root filesystem can be
//! assembled without root, chroot or loop mounts, and written out in sorted order.

use crate::deb::{self, DebError, EntryKind};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
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

    /// Extracts a package's data archive. Paths in /bin, /sbin, /lib are moved under /usr.
    pub fn extract_deb(&mut self, deb: &Path) -> Result<(), DebError> {
        deb::for_each_entry(deb, |e| {
            let path = usr_merge(&e.path);
            let kind = match e.kind {
                EntryKind::Dir => {
                    if matches!(self.nodes.get(&path).map(|n| &n.kind), Some(Kind::Dir)) {
                        return Ok(());
                    }
                    Kind::Dir
                }
                EntryKind::File(data) => Kind::File(Arc::new(data)),
                EntryKind::Symlink(t) => Kind::Symlink(t),
                EntryKind::Hardlink(target) => match self.nodes.get(&usr_merge(&target)) {
                    Some(n) => n.kind.clone(),
                    None => return Err(DebError::Format { path: deb.into(), message: format!("{path}: hard link to missing {target}") }),
                },
            };
            self.insert(&path, Node { kind, mode: e.mode, uid: e.uid, gid: e.gid, mtime: e.mtime });
            Ok(())
        })
    }

    /// Every mtime later than `epoch` becomes `epoch` (SOURCE_DATE_EPOCH semantics).
    pub fn clamp_mtimes(&mut self, epoch: i64) {
        for n in self.nodes.values_mut() {
            if n.mtime > epoch || n.mtime == 0 {
                n.mtime = epoch;
            }
        }
    }

    /// Follows symlinks inside the tree (relative and absolute) to the final path.
    pub fn resolve(&self, path: &str) -> Option<String> {
        let mut cur = path.trim_matches('/').to_string();
        for _ in 0..16 {
            match &self.nodes.get(&cur)?.kind {
                Kind::Symlink(t) => {
                    let base = if t.starts_with('/') { String::new() } else { cur.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default() };
                    cur = normalise_join(&base, t);
                }
                _ => return Some(cur),
            }
        }
        None
    }

    /// Writes the tree under `dir` (which must be empty). Owners are not applied (no root
    /// needed); callers pass them to the file-system tool. Mode and mtime are applied.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        let ctx = |p: &Path, e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", p.display()));
        for (path, node) in &self.nodes {
            let target: PathBuf = dir.join(path);
            match &node.kind {
                Kind::Dir => std::fs::create_dir_all(&target).map_err(|e| ctx(&target, e))?,
                Kind::File(data) => {
                    let mut f = std::fs::File::create(&target).map_err(|e| ctx(&target, e))?;
                    f.write_all(data).map_err(|e| ctx(&target, e))?;
                }
                Kind::Symlink(t) => symlink(t, &target).map_err(|e| ctx(&target, e))?,
            }
        }
        // Modes and times after all content exists (a read-only directory would block its children).
        for (path, node) in self.nodes.iter().rev() {
            let target = dir.join(path);
            if matches!(node.kind, Kind::Symlink(_)) {
                continue;
            }
            let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(node.mtime.max(0) as u64);
            std::fs::File::open(&target).and_then(|f| f.set_modified(time)).map_err(|e| ctx(&target, e))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(node.mode)).map_err(|e| ctx(&target, e))?;
        }
        Ok(())
    }
}

fn usr_merge(path: &str) -> String {
    match path.split_once('/') {
        Some((top, rest)) if USR_MERGED.contains(&top) => format!("usr/{top}/{rest}"),
        _ => path.to_string(),
    }
}

fn normalise_join(base: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = if rel.starts_with('/') { Vec::new() } else { base.split('/').filter(|p| !p.is_empty()).collect() };
    for p in rel.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    usr_merge(&parts.join("/"))
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
}
