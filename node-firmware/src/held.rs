//! The chunks a node holds and where they lie: the images of its slots, each described by the
//! manifest kept beside it (`<boot>/<slot>/bundle.header`), and the chunk cache on the data
//! partition (chunks fetched for an install not yet written). Installs read what they can from
//! here instead of fetching it; the HTTP face serves it to neighbours.
//!
//! Nothing here is trusted: every read is checked against the chunk's sha256, so a slot half
//! overwritten or a cache file cut short by a power cut reads as "not held".

use crate::upgrade::slot_partition;
use meshos_common::boot_state::Slot;
use meshos_common::bundle::{self, Manifest, SLOT_HEADER_FILE};
use meshos_common::chunks;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where one chunk's bytes are: a file of [`Held::files`], at an offset. Kept small (a node
/// indexes a few thousand of them, and meshd has a few MiB).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Place {
    file: u16,
    size: u32,
    offset: u64,
}

/// One slot's release as read from the header beside it.
#[derive(Debug, Clone)]
pub struct SlotRelease {
    pub slot: Slot,
    pub version: String,
    /// sha256 of the signed manifest bytes: the release's name on the mesh.
    pub manifest_sha256: String,
    /// The header (magic, manifest, signatures), for serving; empty in a scan without chunks.
    pub header: Vec<u8>,
}

/// The slots' chunks by sha256, and the cache directory.
#[derive(Debug, Default)]
pub struct Held {
    places: HashMap<[u8; 32], Place>,
    files: Vec<PathBuf>,
    pub releases: Vec<SlotRelease>,
    cache: Option<PathBuf>,
}

/// A chunk's name as a key: the sha256's 32 bytes (None for anything that is no sha256).
fn key(sha256: &str) -> Option<[u8; 32]> {
    if !chunks::is_sha256_hex(sha256) {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&sha256[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(k)
}

/// Reads the signed header kept in `<boot>/<slot>/`, with its manifest; None when there is
/// none (a slot never written) or it is not a signed meshos header.
fn read_slot(boot_dir: &Path, slot: Slot) -> Option<(SlotRelease, Manifest)> {
    let header = std::fs::read(boot_dir.join(slot.lower()).join(SLOT_HEADER_FILE)).ok()?;
    let opened = bundle::open(&header[..]).ok().filter(|o| o.is_signed())?;
    let manifest_sha256 = opened.manifest_sha256();
    let manifest = opened.manifest;
    Some((SlotRelease { slot, version: manifest.version.clone(), manifest_sha256, header }, manifest))
}

impl Held {
    /// The chunks of `slots` (as their headers describe them) and of `cache`. Without
    /// `chunks`, only the releases (no index, no headers kept): what the upgrade agent needs.
    pub fn scan(boot_dir: &Path, disk: &Path, slots: &[Slot], cache: Option<&Path>, chunks: bool) -> Held {
        let mut held = Held { cache: cache.map(Path::to_path_buf), ..Held::default() };
        for &slot in slots {
            let Some((mut release, manifest)) = read_slot(boot_dir, slot) else { continue };
            if !chunks {
                release.header = Vec::new();
                held.releases.push(release);
                continue;
            }
            for img in &manifest.images {
                let path = if img.name == "root" { slot_partition(disk, slot) } else { boot_dir.join(slot.lower()).join(img.name.trim_start_matches("boot/")) };
                let file = held.files.len() as u16;
                held.files.push(path);
                let mut offset = 0u64;
                for c in &img.chunks {
                    if let Some(k) = key(&c.sha256) {
                        held.places.entry(k).or_insert(Place { file, size: c.size, offset });
                    }
                    offset += u64::from(c.size);
                }
            }
            held.releases.push(release);
        }
        held.places.shrink_to_fit();
        held
    }

    /// The chunk's bytes, checked against its name; None when it is not held (or no longer
    /// matches).
    pub fn read(&self, sha256: &str) -> Option<Vec<u8>> {
        if let Some(p) = key(sha256).and_then(|k| self.places.get(&k)) {
            let mut buf = vec![0u8; p.size as usize];
            let ok = File::open(&self.files[usize::from(p.file)]).and_then(|f| f.read_exact_at(&mut buf, p.offset)).is_ok();
            if ok && chunks::sha256_hex(&buf) == sha256 {
                return Some(buf);
            }
        }
        let data = std::fs::read(self.cache.as_ref()?.join(sha256)).ok()?;
        (chunks::sha256_hex(&data) == sha256).then_some(data)
    }

    /// Whether a slot's manifest lists the chunk (the cache aside).
    pub fn in_slot(&self, sha256: &str) -> bool {
        key(sha256).is_some_and(|k| self.places.contains_key(&k))
    }

    /// The header of the release whose manifest has this sha256, if a slot holds it.
    pub fn header(&self, manifest_sha256: &str) -> Option<&[u8]> {
        self.releases.iter().find(|r| r.manifest_sha256 == manifest_sha256).map(|r| &r.header[..])
    }
}

/// The chunks of both slots and the cache, read again whenever a slot's header changes (an
/// install wrote or removed one): what the node serves to its neighbours.
#[derive(Debug)]
pub struct Shelf {
    boot_dir: PathBuf,
    disk: PathBuf,
    cache: PathBuf,
    /// Index the chunks (to serve them), or only read the releases.
    chunks: bool,
    stamp: Vec<Option<(std::time::SystemTime, u64)>>,
    held: std::sync::Arc<Held>,
}

impl Shelf {
    pub fn new(boot_dir: &Path, disk: &Path, cache: &Path, chunks: bool) -> Shelf {
        Shelf { boot_dir: boot_dir.into(), disk: disk.into(), cache: cache.into(), chunks, stamp: Vec::new(), held: Default::default() }
    }

    /// The index as the slots are now (shared, so a reader need not hold the shelf).
    pub fn current(&mut self) -> std::sync::Arc<Held> {
        let stamp: Vec<_> = [Slot::A, Slot::B]
            .iter()
            .map(|s| std::fs::metadata(self.boot_dir.join(s.lower()).join(SLOT_HEADER_FILE)).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
            .collect();
        if stamp != self.stamp {
            self.held = std::sync::Arc::new(Held::scan(&self.boot_dir, &self.disk, &[Slot::A, Slot::B], Some(&self.cache), self.chunks));
            self.stamp = stamp;
        }
        self.held.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshos_common::bundle::image_entry;
    use meshos_common::minisign::SecretKey;

    #[test]
    fn chunks_are_found_in_slots_and_cache_and_checked_on_read() {
        let top = std::env::temp_dir().join(format!("meshd-held-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        std::fs::create_dir_all(top.join("boot/a")).unwrap();
        std::fs::create_dir_all(top.join("cache")).unwrap();
        let root: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let kernel = b"kernel".to_vec();
        let manifest = Manifest {
            format: bundle::FORMAT,
            compatible: "meshos-rpi3".into(),
            version: "1".into(),
            build_id: "b".into(),
            images: vec![image_entry("root", &root), image_entry("boot/vmlinuz", &kernel)],
        };
        let json = serde_json::to_vec(&manifest).unwrap();
        let key = SecretKey::generate().unwrap();
        std::fs::write(top.join("boot/a").join(SLOT_HEADER_FILE), bundle::header(&json, Some(&key.sign(&json, "t", "t").render()))).unwrap();
        std::fs::write(top.join("boot/a/vmlinuz"), &kernel).unwrap();
        std::fs::write(top.join("disk2"), &root).unwrap();
        let cached = b"a chunk fetched earlier".to_vec();
        std::fs::write(top.join("cache").join(chunks::sha256_hex(&cached)), &cached).unwrap();

        let held = Held::scan(&top.join("boot"), &top.join("disk"), &[Slot::A, Slot::B], Some(&top.join("cache")), true);
        assert_eq!(held.releases.len(), 1);
        assert_eq!(held.releases[0].version, "1");
        let light = Held::scan(&top.join("boot"), &top.join("disk"), &[Slot::A, Slot::B], None, false);
        assert_eq!((light.releases.len(), light.releases[0].header.len(), light.in_slot(&manifest.images[0].chunks[0].sha256)), (1, 0, false));
        assert_eq!(
            held.header(&held.releases[0].manifest_sha256).map(<[u8]>::len),
            Some(std::fs::read(top.join("boot/a").join(SLOT_HEADER_FILE)).unwrap().len())
        );
        let second = &manifest.images[0].chunks[1];
        let at = manifest.images[0].chunks[0].size as usize;
        assert_eq!(held.read(&second.sha256).unwrap(), root[at..at + second.size as usize]);
        assert_eq!(held.read(&manifest.images[1].chunks[0].sha256).unwrap(), kernel);
        assert_eq!(held.read(&chunks::sha256_hex(&cached)).unwrap(), cached);
        assert!(held.read(&chunks::sha256_hex(b"never seen")).is_none());
        // Overwritten on the card: no longer held.
        let mut changed = root.clone();
        changed[at] ^= 1;
        std::fs::write(top.join("disk2"), &changed).unwrap();
        assert!(held.read(&second.sha256).is_none());
        std::fs::remove_dir_all(&top).unwrap();
    }
}
