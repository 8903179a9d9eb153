//! Update bundles: what `meshimg build` emits for nodes already in the field and what `meshd`
//! installs. One file, read front to back so a node can check it before writing anything and
//! then stream it to the inactive slot:
//!
//! ```text
//! "MESHOS-BUNDLE 1\n"
//! u32 LE length, manifest (JSON)
//! u32 LE length, minisign signature of the manifest bytes (0: unsigned)
//! payload: each image of the manifest, in order, exactly `size` bytes
//! ```
//!
//! The signature covers the manifest, and the manifest holds every image's sha256 (and a
//! block-hash index for transferring only changed blocks later), so one signature check
//! before writing plus hashing while writing proves every byte.

use crate::minisign::{PublicKey, SignatureFile};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;

pub const MAGIC: &[u8; 16] = b"MESHOS-BUNDLE 1\n";
/// Each slot's directory on the boot partition keeps its bundle's header under this name, so
/// the node can serve the slot it runs, as a bundle, to its neighbours.
pub const SLOT_HEADER_FILE: &str = "bundle.header";
pub const FORMAT: u32 = 1;
/// Blocks of the block-hash index.
pub const BLOCK_SIZE: u32 = 64 * 1024;
const MAX_MANIFEST: u32 = 8 << 20;
const MAX_SIGNATURE: u32 = 16 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// `meshos-<board>`: a node installs only bundles made for its board.
    pub compatible: String,
    pub version: String,
    pub build_id: String,
    pub images: Vec<Image>,
}

impl Manifest {
    /// The bundle's file name, as meshimg writes it: `meshos-<board>-<version>.bundle`.
    pub fn file_name(&self) -> String {
        format!("{}-{}.bundle", self.compatible, self.version)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// `root` (the slot's squashfs partition) or `boot/<path>` (a file of the slot's directory
    /// on the boot partition: `boot/vmlinuz`, `boot/initrd.img`, `boot/dtbs/…`).
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub block_size: u32,
    /// sha256 of each block, in order.
    pub blocks: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a meshos bundle (it does not start with {:?})", String::from_utf8_lossy(MAGIC).trim_end())]
    BadMagic,
    #[error("the bundle is cut short: {0}")]
    Truncated(String),
    #[error("the manifest is {0} bytes, more than a bundle may have")]
    TooLarge(u32),
    #[error("the manifest is not valid: {0}")]
    Manifest(String),
    #[error("bundle format {0}, but this node reads format {FORMAT}")]
    Format(u32),
    #[error("the bundle is not signed, and nodes install only signed bundles")]
    Unsigned,
    #[error("signature: {0}")]
    Signature(String),
    #[error("the bundle is for {bundle}, this node is {node}")]
    Incompatible { bundle: String, node: String },
    #[error("the bundle's version {bundle} is not newer than the running {running} (--allow-downgrade overrides)")]
    NotNewer { bundle: String, running: String },
    #[error("image {name}: sha256 {got} does not match the manifest's {want}: the payload was altered")]
    Mismatch { name: String, want: String, got: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl BundleError {
    /// A stable name for metrics labels and scripts.
    pub fn kind(&self) -> &'static str {
        match self {
            BundleError::BadMagic | BundleError::TooLarge(_) | BundleError::Manifest(_) | BundleError::Format(_) => "malformed",
            BundleError::Truncated(_) => "truncated",
            BundleError::Unsigned | BundleError::Signature(_) => "signature",
            BundleError::Incompatible { .. } => "incompatible",
            BundleError::NotNewer { .. } => "not_newer",
            BundleError::Mismatch { .. } => "payload_mismatch",
            BundleError::Io(_) => "io",
        }
    }
}

/// Hashes of `data` as an image entry.
pub fn image_entry(name: &str, data: &[u8]) -> Image {
    Image {
        name: name.into(),
        size: data.len() as u64,
        sha256: hex(&Sha256::digest(data)),
        block_size: BLOCK_SIZE,
        blocks: data.chunks(BLOCK_SIZE as usize).map(|b| hex(&Sha256::digest(b))).collect(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bundle's header: magic, manifest, signature. Payload images follow in `images` order.
pub fn header(manifest_json: &[u8], signature: Option<&str>) -> Vec<u8> {
    let sig = signature.unwrap_or("").as_bytes();
    let mut out = Vec::with_capacity(24 + manifest_json.len() + sig.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(manifest_json.len() as u32).to_le_bytes());
    out.extend_from_slice(manifest_json);
    out.extend_from_slice(&(sig.len() as u32).to_le_bytes());
    out.extend_from_slice(sig);
    out
}

/// A bundle being read: header parsed, payload not yet.
pub struct Opened<R> {
    pub manifest: Manifest,
    manifest_bytes: Vec<u8>,
    header_len: u64,
    signature: Option<SignatureFile>,
    signature_text: String,
    reader: R,
}

fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<(), BundleError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BundleError::Truncated(format!("it ends inside the {what}")),
        _ => BundleError::Io(e),
    })
}

pub fn open<R: Read>(mut reader: R) -> Result<Opened<R>, BundleError> {
    let mut magic = [0u8; 16];
    reader.read_exact(&mut magic).map_err(|_| BundleError::BadMagic)?;
    if &magic != MAGIC {
        return Err(BundleError::BadMagic);
    }
    let mut len = [0u8; 4];
    read_exact_or(&mut reader, &mut len, "header")?;
    let n = u32::from_le_bytes(len);
    if n > MAX_MANIFEST {
        return Err(BundleError::TooLarge(n));
    }
    let mut manifest_bytes = vec![0u8; n as usize];
    read_exact_or(&mut reader, &mut manifest_bytes, "manifest")?;
    read_exact_or(&mut reader, &mut len, "header")?;
    let s = u32::from_le_bytes(len);
    if s > MAX_SIGNATURE {
        return Err(BundleError::Signature(format!("{s} bytes is no minisign signature")));
    }
    let mut sig = vec![0u8; s as usize];
    read_exact_or(&mut reader, &mut sig, "signature")?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|e| BundleError::Manifest(e.to_string()))?;
    if manifest.format != FORMAT {
        return Err(BundleError::Format(manifest.format));
    }
    let signature_text = String::from_utf8(sig).map_err(|_| BundleError::Signature("not text".into()))?;
    let signature = if signature_text.is_empty() {
        None
    } else {
        Some(SignatureFile::parse(&signature_text).map_err(|e| BundleError::Signature(e.to_string()))?)
    };
    let header_len = (MAGIC.len() + 8) as u64 + u64::from(n) + u64::from(s);
    Ok(Opened { manifest, manifest_bytes, header_len, signature, signature_text, reader })
}

impl<R: Read> Opened<R> {
    /// The whole bundle's size as its header describes it: a file shorter than this is cut
    /// short, which a node can tell before writing anything.
    pub fn total_size(&self) -> u64 {
        self.header_len + self.manifest.images.iter().map(|i| i.size).sum::<u64>()
    }

    /// The header as it was read (magic, manifest, signature): with the images, in order,
    /// behind it, it is the bundle again.
    pub fn header(&self) -> Vec<u8> {
        header(&self.manifest_bytes, Some(&self.signature_text))
    }

    pub fn is_signed(&self) -> bool {
        self.signature.is_some()
    }

    /// Checks the manifest's signature against the keys this node trusts; returns the key id.
    pub fn verify(&self, trusted: &[PublicKey]) -> Result<String, BundleError> {
        let sig = self.signature.as_ref().ok_or(BundleError::Unsigned)?;
        let key = trusted.iter().find(|k| k.keynum == sig.keynum).ok_or_else(|| {
            let ids: Vec<String> = trusted.iter().map(PublicKey::id).collect();
            BundleError::Signature(format!(
                "signed by key {}, which this node does not trust (trusted: {})",
                crate::minisign::key_id(&sig.keynum),
                if ids.is_empty() { "none".into() } else { ids.join(", ") }
            ))
        })?;
        key.verify(&self.manifest_bytes, sig).map_err(|e| BundleError::Signature(e.to_string()))?;
        Ok(key.id())
    }

    /// Board and version checks, before anything is written.
    pub fn check_compatible(&self, compatible: &str, running: &str, allow_downgrade: bool) -> Result<(), BundleError> {
        if self.manifest.compatible != compatible {
            return Err(BundleError::Incompatible { bundle: self.manifest.compatible.clone(), node: compatible.into() });
        }
        if !allow_downgrade && !newer(&self.manifest.version, running) {
            return Err(BundleError::NotNewer { bundle: self.manifest.version.clone(), running: running.into() });
        }
        Ok(())
    }

    /// Streams each image to `on`, hashing as it goes; an image whose bytes do not match the
    /// manifest fails before its `Done` and before the next one starts.
    pub fn stream(mut self, mut on: impl FnMut(Event) -> std::io::Result<()>) -> Result<(), BundleError> {
        let mut buf = vec![0u8; 256 * 1024];
        for image in &self.manifest.images {
            let mut hash = Sha256::new();
            let mut left = image.size;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = self.reader.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(BundleError::Truncated(format!("image {} has {} of {} bytes", image.name, image.size - left, image.size)));
                }
                hash.update(&buf[..n]);
                on(Event::Data(image, &buf[..n]))?;
                left -= n as u64;
            }
            let got = hex(&hash.finalize());
            if got != image.sha256 {
                return Err(BundleError::Mismatch { name: image.name.clone(), want: image.sha256.clone(), got });
            }
            on(Event::Done(image))?;
        }
        Ok(())
    }
}

/// What [`Opened::stream`] hands over: a piece of an image, then the image's end (after its
/// hash matched).
pub enum Event<'a> {
    Data(&'a Image, &'a [u8]),
    Done(&'a Image),
}

/// Whether version `a` is newer than `b`: dot-separated numbers compared as numbers, any other
/// part as text (`0.10.0` > `0.9.1`).
pub fn newer(a: &str, b: &str) -> bool {
    let parts = |v: &str| v.split(['.', '-', '+']).map(|p| p.parse::<u64>().map_err(|_| p.to_string())).collect::<Vec<_>>();
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let ord = match (x, y) {
            (Ok(x), Ok(y)) => x.cmp(y),
            (Ok(_), Err(_)) => std::cmp::Ordering::Greater,
            (Err(_), Ok(_)) => std::cmp::Ordering::Less,
            (Err(x), Err(y)) => x.cmp(y),
        };
        if ord != std::cmp::Ordering::Equal {
            return ord == std::cmp::Ordering::Greater;
        }
    }
    pa.len() > pb.len()
}

#[cfg(all(test, feature = "sign"))]
mod tests {
    use super::*;
    use crate::minisign::SecretKey;

    fn make(key: Option<&SecretKey>, version: &str, board: &str) -> (Vec<u8>, Vec<u8>) {
        let root = vec![5u8; 200_000];
        let kernel = b"kernel".to_vec();
        let manifest = Manifest {
            format: FORMAT,
            compatible: format!("meshos-{board}"),
            version: version.into(),
            build_id: "b1".into(),
            images: vec![image_entry("root", &root), image_entry("boot/vmlinuz", &kernel)],
        };
        let json = serde_json::to_vec(&manifest).unwrap();
        let sig = key.map(|k| k.sign(&json, "bundle", "manifest").render());
        let mut out = header(&json, sig.as_deref());
        out.extend_from_slice(&root);
        out.extend_from_slice(&kernel);
        (out, root)
    }

    fn install(bytes: &[u8], trusted: &[PublicKey]) -> Result<Vec<u8>, BundleError> {
        let b = open(bytes)?;
        b.verify(trusted)?;
        b.check_compatible("meshos-rpi3", "1.0.0", false)?;
        let mut root = Vec::new();
        b.stream(|ev| {
            if let Event::Data(img, chunk) = ev {
                if img.name == "root" {
                    root.extend_from_slice(chunk);
                }
            }
            Ok(())
        })?;
        Ok(root)
    }

    #[test]
    fn a_good_bundle_streams_and_every_bad_one_is_named() {
        let key = SecretKey::generate().unwrap();
        let trusted = [key.public()];
        let (good, root) = make(Some(&key), "1.0.1", "rpi3");
        assert_eq!(install(&good, &trusted).unwrap(), root);
        assert_eq!(open(&good[..]).unwrap().manifest.images[0].blocks.len(), 4);
        assert_eq!(open(&good[..]).unwrap().total_size(), good.len() as u64);
        let header = open(&good[..]).unwrap().header();
        assert_eq!(header[..], good[..header.len()]);
        assert!(open(&good[..]).unwrap().is_signed() && !open(&make(None, "1.0.1", "rpi3").0[..]).unwrap().is_signed());

        let kind = |r: Result<Vec<u8>, BundleError>| r.unwrap_err().kind();
        assert_eq!(kind(install(&good[..good.len() - 10], &trusted)), "truncated");
        assert_eq!(kind(install(&good[..100], &trusted)), "truncated");
        let mut altered = good.clone();
        let at = altered.len() - 1000;
        altered[at] ^= 1;
        assert_eq!(kind(install(&altered, &trusted)), "payload_mismatch");
        let other = SecretKey::generate().unwrap();
        assert!(install(&good, &[other.public()]).unwrap_err().to_string().contains("which this node does not trust"));
        assert_eq!(kind(install(&make(None, "1.0.1", "rpi3").0, &trusted)), "signature");
        assert_eq!(kind(install(&make(Some(&other), "1.0.1", "rpi3").0, &trusted)), "signature");
        assert_eq!(kind(install(&make(Some(&key), "1.0.1", "orangepi-zero").0, &trusted)), "incompatible");
        assert_eq!(kind(install(&make(Some(&key), "0.9.9", "rpi3").0, &trusted)), "not_newer");
        assert_eq!(kind(install(b"PK\x03\x04 a zip file", &trusted)), "malformed");
        // A manifest changed after signing.
        let mut forged = good.clone();
        let pos = forged.windows(5).position(|w| w == b"1.0.1").unwrap();
        forged[pos + 4] = b'9';
        assert_eq!(kind(install(&forged, &trusted)), "signature");
    }

    #[test]
    fn versions_compare_as_numbers() {
        assert!(newer("0.10.0", "0.9.1") && newer("1.0.1", "1.0.0") && newer("1.0.0.1", "1.0.0"));
        assert!(!newer("1.0.0", "1.0.0") && !newer("0.9", "0.10"));
    }
}
