//! The initramfs: static busybox, our init, and the drivers needed to reach the root slot,
//! as a gzip-compressed newc cpio archive written byte for byte the same every time.

use crate::kmod::Module;
use crate::tree::{Kind, Node, Tree};
use std::io::Write;

/// Our init; also an input of the plan (its hash).
pub const INIT: &str = include_str!("../assets/initramfs-init");

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("package {package} has no {path} (initramfsBusybox must be a static busybox)")]
    NoBusybox { package: String, path: String },
}

/// `busybox_pkg` is the extracted static busybox package; `modules` are in load order.
pub fn tree(busybox_pkg: &Tree, package: &str, modules: &[&Module], epoch: i64) -> Result<Tree, InitramfsError> {
    let bin = busybox_pkg
        .get("usr/bin/busybox")
        .and_then(|n| if let Kind::File(d) = &n.kind { Some(d.clone()) } else { None })
        .ok_or_else(|| InitramfsError::NoBusybox { package: package.into(), path: "usr/bin/busybox".into() })?;
    let mut t = Tree::new();
    for d in ["dev", "proc", "sys", "etc", "lib/modules"] {
        t.insert(d, Node::dir(0o755));
    }
    t.insert("bin/busybox", Node { kind: Kind::File(bin), mode: 0o755, uid: 0, gid: 0, mtime: 0 });
    t.insert("bin/sh", Node::symlink("busybox"));
    t.insert("init", Node::file(INIT.as_bytes().to_vec(), 0o755));
    let mut load = String::new();
    for m in modules {
        t.insert(&format!("lib/modules/{}.ko", m.name), Node::file(m.data.clone(), 0o644));
        load.push_str(&m.name);
        load.push_str(if m.optional { " optional\n" } else { "\n" });
    }
    t.insert("etc/modules.load", Node::file(load.into_bytes(), 0o644));
    t.clamp_mtimes(epoch);
    Ok(t)
}

/// newc cpio of the tree (sorted; inode numbers by position), gzip-compressed with no timestamp.
pub fn archive(tree: &Tree) -> Vec<u8> {
    let mut cpio = Vec::new();
    for (ino, (path, node)) in (1u32..).zip(tree.iter()) {
        let (kind_bits, data): (u32, &[u8]) = match &node.kind {
            Kind::Dir => (0o040000, &[]),
            Kind::File(d) => (0o100000, d.as_slice()),
            Kind::Symlink(t) => (0o120000, t.as_bytes()),
        };
        entry(&mut cpio, path, ino, kind_bits | node.mode, node.uid, node.gid, node.mtime, data);
    }
    entry(&mut cpio, "TRAILER!!!", 0, 0, 0, 0, 0, &[]);
    let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    gz.write_all(&cpio).expect("in-memory write");
    gz.finish().expect("in-memory write")
}

#[allow(clippy::too_many_arguments)]
fn entry(out: &mut Vec<u8>, name: &str, ino: u32, mode: u32, uid: u32, gid: u32, mtime: i64, data: &[u8]) {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let header = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{z:08x}{z:08x}{z:08x}{z:08x}{namesize:08x}{z:08x}",
        mtime = mtime.max(0) as u32,
        size = data.len(),
        z = 0,
        namesize = name.len() + 1
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn cpio_is_newc_and_deterministic() {
        let mut bb = Tree::new();
        bb.insert("usr/bin/busybox", Node::file(b"BB".to_vec(), 0o755));
        let t = tree(&bb, "busybox-static", &[], 1000).unwrap();
        let a = archive(&t);
        assert_eq!(a, archive(&t));
        let mut cpio = Vec::new();
        flate2::read::GzDecoder::new(&a[..]).read_to_end(&mut cpio).unwrap();
        assert!(cpio.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&cpio);
        assert!(text.contains("bin/busybox") && text.contains("TRAILER!!!") && text.contains("meshos initramfs"));
        assert_eq!(cpio.len() % 4, 0);
    }
}
