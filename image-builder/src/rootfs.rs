//! The root filesystem, assembled in memory: locked packages, then stripping, the kept kernel
//! modules and firmware, busybox applet links, meshd, overlays and the generated `/etc` files.

use crate::tree::{Kind, Node, Tree, USR_MERGED};
use meshos_common::os_release::OsRelease;
use std::path::Path;

/// Never needed on a node.
const STRIP: [&str; 9] = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/share/initramfs-tools",
    "usr/share/bash-completion",
    "usr/share/zsh",
];

/// Mount points and runtime directories the initramfs and rcS expect.
const DIRS: [(&str, u32); 11] = [
    ("boot", 0o755),
    ("data", 0o755),
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("root", 0o700),
    ("mnt", 0o755),
    ("var", 0o755),
    ("etc", 0o755),
];

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{path}: {message}")]
    Overlay { path: String, message: String },
    #[error("the root filesystem has no usr/bin/busybox (is busybox in the board's packages?)")]
    NoBusybox,
    #[error("usr/bin/busybox: cannot find its applet table")]
    NoApplets,
}

/// Removes documentation and other files a node never reads.
pub fn strip(tree: &mut Tree) {
    for dir in STRIP {
        tree.remove_tree(dir);
    }
}

/// Merged-/usr links and the fixed directories.
pub fn add_skeleton(tree: &mut Tree) {
    for top in USR_MERGED {
        let usr = format!("usr/{top}");
        if top == "lib64" && tree.get(&usr).is_none() {
            continue;
        }
        if tree.get(&usr).is_none() {
            tree.insert(&usr, Node::dir(0o755));
        }
        tree.insert(top, Node::symlink(usr));
    }
    for (d, mode) in DIRS {
        if !matches!(tree.get(d).map(|n| &n.kind), Some(Kind::Dir)) {
            tree.insert(d, Node::dir(mode));
        }
    }
}

/// Applets the kernel (or init) runs by their /sbin path: `request_module` runs /sbin/modprobe
/// for the crypto and protocol modules it asks for by name, orderly power-off /sbin/poweroff.
const SBIN_APPLETS: [&str; 5] = ["init", "modprobe", "poweroff", "reboot", "halt"];

/// Links for every applet the busybox binary has, where nothing else provides that name.
pub fn add_busybox_links(tree: &mut Tree) -> Result<usize, RootfsError> {
    let Some(Node { kind: Kind::File(bin), .. }) = tree.get("usr/bin/busybox") else { return Err(RootfsError::NoBusybox) };
    let names = applet_names(bin).ok_or(RootfsError::NoApplets)?;
    let mut added = 0;
    for name in names.iter().chain(["init".to_string()].iter()) {
        let dir = if SBIN_APPLETS.contains(&name.as_str()) { "usr/sbin" } else { "usr/bin" };
        let taken = ["usr/bin", "usr/sbin"].iter().any(|d| tree.get(&format!("{d}/{name}")).is_some());
        if !taken {
            tree.insert(&format!("{dir}/{name}"), Node::symlink(if dir == "usr/bin" { "busybox".into() } else { "../bin/busybox".to_string() }));
            added += 1;
        }
    }
    Ok(added)
}

/// busybox keeps its applet names as one sorted, NUL-separated string starting "[\0[[\0".
fn applet_names(bin: &[u8]) -> Option<Vec<String>> {
    let start = bin.windows(5).position(|w| w == b"[\0[[\0")?;
    let mut names = Vec::new();
    for raw in bin[start..].split(|b| *b == 0) {
        if raw.is_empty() {
            break;
        }
        let name = std::str::from_utf8(raw).ok()?;
        if !name.chars().all(|c| c.is_ascii_graphic()) || name.contains('/') {
            return None;
        }
        names.push(name.to_string());
    }
    (names.len() > 10).then_some(names)
}

/// Files readable by root only, whatever mode the checkout gives them (git keeps only the
/// executable bit, so a fresh clone cannot carry 0640).
const PRIVATE: [&str; 1] = ["etc/shadow"];

/// Lays `dir`'s files into the tree: owner root, mode 0755 if the checkout file is executable,
/// else 0644; the files in PRIVATE 0640.
pub fn add_overlay(tree: &mut Tree, dir: &Path) -> Result<usize, RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    if !dir.exists() {
        return Ok(0);
    }
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    let err = |p: &Path, e: std::io::Error| RootfsError::Overlay { path: p.display().to_string(), message: e.to_string() };
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d).map_err(|e| err(&d, e))?.collect::<Result<_, _>>().map_err(|e| err(&d, e))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(dir).expect("under overlay").to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| err(&path, e))?;
            if meta.is_dir() {
                if tree.get(&rel).is_none() {
                    tree.insert(&rel, Node::dir(0o755));
                }
                stack.push(path);
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).map_err(|e| err(&path, e))?;
                tree.insert(&rel, Node::symlink(target.to_string_lossy().into_owned()));
                count += 1;
            } else {
                let mode = if PRIVATE.contains(&rel.as_str()) {
                    0o640
                } else if meta.permissions().mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                };
                let data = std::fs::read(&path).map_err(|e| err(&path, e))?;
                tree.insert(&rel, Node::file(data, mode));
                count += 1;
            }
        }
    }
    Ok(count)
}

/// Files that depend on the build: what the node runs.
pub fn add_generated(tree: &mut Tree, release: &OsRelease) {
    let text = release.render();
    tree.insert("usr/lib/os-release", Node::file(text.into_bytes(), 0o644));
    tree.insert("etc/os-release", Node::symlink("../usr/lib/os-release"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applet_table_is_found() {
        let mut bin = b"\x7fELF junk [ not this\0".to_vec();
        bin.extend_from_slice(b"[\0[[\0acpid\0ash\0cat\0cp\0ls\0mount\0sh\0sleep\0umount\0vi\0\0more");
        let names = applet_names(&bin).unwrap();
        assert_eq!(names.first().map(String::as_str), Some("["));
        assert_eq!(names.last().map(String::as_str), Some("vi"));
        let mut t = Tree::new();
        t.insert("usr/bin/busybox", Node::file(bin, 0o755));
        t.insert("usr/bin/cat", Node::file(b"coreutils".to_vec(), 0o755));
        // 12 applets, less cat (taken), plus init.
        assert_eq!(add_busybox_links(&mut t).unwrap(), 12);
        assert_eq!(t.get("usr/bin/cat").map(|n| n.kind.clone()), Some(Kind::File(std::sync::Arc::new(b"coreutils".to_vec()))));
        assert_eq!(t.get("usr/sbin/init").map(|n| n.kind.clone()), Some(Kind::Symlink("../bin/busybox".into())));
    }
}
