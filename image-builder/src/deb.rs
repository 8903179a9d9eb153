//! Reading `.deb` files: the ar container and its `data.tar.{xz,gz,zst}` member.
//! Maintainer scripts (in `control.tar`) are never read: images are assembled, not installed.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// One entry of a package's data archive.
pub struct Entry {
    /// Normalised path without a leading "./" or "/".
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
}

pub enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    /// Hard link to another path in the same archive.
    Hardlink(String),
}

/// Calls `f` for each entry of `deb`'s data archive, in archive order.
pub fn for_each_entry(deb: &Path, mut f: impl FnMut(Entry) -> Result<(), DebError>) -> Result<(), DebError> {
    let io = |source| DebError::Io { path: deb.into(), source };
    let fmt = |message: String| DebError::Format { path: deb.into(), message };
    let mut file = std::fs::File::open(deb).map_err(io)?;
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic).map_err(io)?;
    if &magic != b"!<arch>\n" {
        return Err(fmt("not a .deb (no ar header)".into()));
    }
    loop {
        let mut header = [0u8; 60];
        if file.read_exact(&mut header).is_err() {
            return Err(fmt("no data.tar member".into()));
        }
        let name = String::from_utf8_lossy(&header[0..16]).trim().trim_end_matches('/').to_string();
        let size: u64 = String::from_utf8_lossy(&header[48..58]).trim().parse().map_err(|_| fmt(format!("bad ar size for member {name}")))?;
        if let Some(comp) = name.strip_prefix("data.tar") {
            let member = (&mut file).take(size);
            let reader: Box<dyn Read> = match comp {
                ".xz" => Box::new(liblzma::read::XzDecoder::new(member)),
                ".gz" => Box::new(flate2::read::GzDecoder::new(member)),
                "" => Box::new(member),
                other => return Err(fmt(format!("data.tar{other} compression is not supported (xz, gz or none)"))),
            };
            return read_tar(deb, reader, &mut f);
        }
        file.seek(SeekFrom::Current((size + (size & 1)) as i64)).map_err(io)?;
    }
}

fn read_tar(deb: &Path, reader: impl Read, f: &mut impl FnMut(Entry) -> Result<(), DebError>) -> Result<(), DebError> {
    let io = |source| DebError::Io { path: deb.into(), source };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let header = entry.header().clone();
        let raw = entry.path().map_err(io)?.to_string_lossy().into_owned();
        let path = normalise(deb, &raw)?;
        if path.is_empty() {
            continue;
        }
        let link = || entry.link_name().ok().flatten().map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
        let kind = match header.entry_type() {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink(link()),
            tar::EntryType::Link => EntryKind::Hardlink(normalise(deb, &link())?),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut data = Vec::with_capacity(header.size().unwrap_or(0) as usize);
                entry.read_to_end(&mut data).map_err(io)?;
                EntryKind::File(data)
            }
            other => {
                return Err(DebError::Format { path: deb.into(), message: format!("{path}: unsupported entry type {other:?}") });
            }
        };
        f(Entry {
            path,
            kind,
            mode: header.mode().map_err(io)? & 0o7777,
            uid: header.uid().map_err(io)? as u32,
            gid: header.gid().map_err(io)? as u32,
            mtime: header.mtime().map_err(io)? as i64,
        })?;
    }
    Ok(())
}

/// A path inside the package as the tree names it: dpkg's leading "./" dropped, and nothing but
/// plain names after it. An absolute path, or one with an empty, "." or ".." part, would reach
/// outside the package's tree: the package is refused.
fn normalise(deb: &Path, raw: &str) -> Result<String, DebError> {
    let p = raw.strip_prefix("./").unwrap_or(raw).trim_end_matches('/');
    if p.is_empty() || p == "." {
        return Ok(String::new());
    }
    if p.split('/').any(|part| matches!(part, "" | "." | "..")) {
        let message = format!("entry '{raw}' is not a plain path inside the package (it is absolute, or has an empty, '.' or '..' part): the package is broken or hostile; take it out of the board's packages");
        return Err(DebError::Format { path: deb.into(), message });
    }
    Ok(p.to_string())
}
