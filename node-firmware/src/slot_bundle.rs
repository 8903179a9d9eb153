//! The running slot as an update bundle, for neighbours to install over the mesh: the header
//! (manifest and signature) kept in the slot's directory on the boot partition, then the
//! slot's images read back from where they live, the root from the slot's partition and the
//! boot files from that directory. Nothing is copied or kept: a transfer costs one buffer.
//!
//! The node does not vouch for what it serves: the receiver checks the signature, then every
//! image's sha256, exactly as for a bundle from anywhere else.

use crate::upgrade::{partition_size, slot_partition};
use meshos_common::boot_state::Slot;
use meshos_common::bundle::{self, Manifest, SLOT_HEADER_FILE};
use std::fs::File;
use std::io::{Cursor, Read};
use std::path::PathBuf;

/// Where the running slot's bundle is read from.
#[derive(Debug, Clone)]
pub struct SlotSource {
    pub boot_dir: PathBuf,
    pub disk: PathBuf,
    pub slot: Slot,
}

/// One transfer: the whole bundle's length and its bytes, in order.
pub struct Served {
    pub manifest: Manifest,
    pub len: u64,
    pub reader: Box<dyn Read + Send>,
}

impl SlotSource {
    /// Opens the slot's bundle, checking that what it names is there at the sizes the manifest
    /// gives; an unsigned header is not served (no node would install it).
    pub fn open(&self) -> Result<Served, String> {
        let dir = self.boot_dir.join(self.slot.lower());
        let header_path = dir.join(SLOT_HEADER_FILE);
        let header = std::fs::read(&header_path).map_err(|e| format!("{}: {e}", header_path.display()))?;
        let opened = bundle::open(&header[..]).map_err(|e| format!("{}: {e}", header_path.display()))?;
        if !opened.is_signed() {
            return Err(format!("{}: the slot's bundle is unsigned, and nodes install only signed bundles", header_path.display()));
        }
        let len = opened.total_size();
        let manifest = opened.manifest;
        let mut reader: Box<dyn Read + Send> = Box::new(Cursor::new(header));
        for img in &manifest.images {
            let (path, have) = if img.name == "root" {
                let part = slot_partition(&self.disk, self.slot);
                let have = partition_size(&part).unwrap_or(0);
                (part, have)
            } else {
                let path = dir.join(img.name.trim_start_matches("boot/"));
                let have = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                (path, have)
            };
            // A partition may be larger than its image; a boot file must be exactly its size.
            if have < img.size || (img.name != "root" && have != img.size) {
                return Err(format!("{}: {have} bytes, but slot {}'s manifest says {} ({})", path.display(), self.slot, img.size, img.name));
            }
            let f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            reader = Box::new(reader.chain(f.take(img.size)));
        }
        Ok(Served { manifest, len, reader })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshos_common::bundle::image_entry;
    use meshos_common::minisign::SecretKey;

    /// A node's card in a directory: the boot partition's slot b directory and partition 3.
    fn card(key: Option<&SecretKey>) -> (PathBuf, SlotSource, Vec<u8>) {
        let top = std::env::temp_dir().join(format!("meshd-slot-bundle-{}-{}", std::process::id(), key.is_some()));
        let _ = std::fs::remove_dir_all(&top);
        std::fs::create_dir_all(top.join("boot/b/dtbs")).unwrap();
        let root = vec![7u8; 150_000];
        let (kernel, dtb) = (b"kernel image".to_vec(), b"device tree".to_vec());
        let manifest = Manifest {
            format: bundle::FORMAT,
            compatible: "meshos-rpi3".into(),
            version: "1.2.0".into(),
            build_id: "b7".into(),
            images: vec![image_entry("root", &root), image_entry("boot/vmlinuz", &kernel), image_entry("boot/dtbs/x.dtb", &dtb)],
        };
        let json = serde_json::to_vec(&manifest).unwrap();
        let sig = key.map(|k| k.sign(&json, "bundle", "manifest").render());
        let header = bundle::header(&json, sig.as_deref());
        std::fs::write(top.join("boot/b").join(SLOT_HEADER_FILE), &header).unwrap();
        std::fs::write(top.join("boot/b/vmlinuz"), &kernel).unwrap();
        std::fs::write(top.join("boot/b/dtbs/x.dtb"), &dtb).unwrap();
        // The partition is larger than the image it holds.
        let mut part = root.clone();
        part.extend_from_slice(&[0u8; 4096]);
        std::fs::write(top.join("disk3"), &part).unwrap();
        let mut whole = header;
        whole.extend_from_slice(&root);
        whole.extend_from_slice(&kernel);
        whole.extend_from_slice(&dtb);
        let source = SlotSource { boot_dir: top.join("boot"), disk: top.join("disk"), slot: Slot::B };
        (top, source, whole)
    }

    #[test]
    fn the_served_slot_is_the_bundle_it_was_installed_from() {
        let key = SecretKey::generate().unwrap();
        let (top, source, whole) = card(Some(&key));
        let mut served = source.open().unwrap();
        let mut bytes = Vec::new();
        served.reader.read_to_end(&mut bytes).unwrap();
        assert_eq!((served.len, bytes.len()), (whole.len() as u64, whole.len()));
        assert!(bytes == whole);
        let again = bundle::open(&bytes[..]).unwrap();
        assert_eq!(again.verify(&[key.public()], 1).unwrap(), [key.public().id()]);

        // A boot file that no longer matches is refused before a byte is sent.
        std::fs::write(top.join("boot/b/vmlinuz"), b"other").unwrap();
        let err = source.open().err().unwrap();
        assert!(err.contains("vmlinuz: 5 bytes, but slot B's manifest says 12"), "{err}");
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn an_unsigned_slot_is_not_served() {
        let (top, source, _) = card(None);
        assert!(source.open().err().unwrap().contains("unsigned"));
        std::fs::remove_dir_all(&top).unwrap();
    }
}
