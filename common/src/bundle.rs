//! Update bundles: what `meshimg build` emits for nodes already in the field and what `meshd`
//! installs. One file, read front to back so a node can check it before writing anything and
//! then stream it to the inactive slot:
//!
//! ```text
//! "MESHOS-BUNDLE 1\n"
//! u32 LE length, manifest (JSON)
//! u32 LE length, minisign signatures of the manifest bytes, one after another (0: unsigned)
//! payload: each image of the manifest, in order, exactly `size` bytes
//! ```
//!
//! The signature covers the manifest, and the manifest holds every image's sha256 and its
//! content-defined chunks (crate::chunks), so one signature check before writing plus hashing
//! while writing proves every byte, and a node can fetch only the chunks it lacks, from any
//! neighbour, checking each against the manifest before it is used.

use crate::chunks::{self, Chunk};
use crate::minisign::{PublicKey, SignatureFile};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;

pub const MAGIC: &[u8; 16] = b"MESHOS-BUNDLE 1\n";
/// Each slot's directory on the boot partition keeps its bundle's header under this name, so
/// the node can serve the slot it runs, as a bundle, to its neighbours.
pub const SLOT_HEADER_FILE: &str = "bundle.header";
/// 2: content-defined chunks replaced format 1's fixed 64 KiB blocks.
pub const FORMAT: u32 = 2;
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

/// The largest chunk a manifest may list: what a reader must be able to hold at once.
pub const MAX_CHUNK: usize = chunks::MAX_SIZE as usize;

impl Manifest {
    /// What a node relies on before it writes anything: each image has a place on a node
    /// (`root`, or a plain relative path under `boot/`), appears once, and its chunks cover
    /// exactly its size, each no larger than [`MAX_CHUNK`] and named by a sha256.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for img in &self.images {
            if img.name != "root" {
                let rest = img.name.strip_prefix("boot/").ok_or_else(|| format!("image '{}' has no place on a node (root, or boot/<path>)", img.name))?;
                let plain = !rest.is_empty() && rest.split('/').all(|c| !c.is_empty() && c != "." && c != "..") && !rest.contains(['\\', '\0']);
                if !plain {
                    return Err(format!("image '{}': its path must be plain names under boot/ (no empty, '.' or '..' parts)", img.name));
                }
            }
            if !seen.insert(img.name.as_str()) {
                return Err(format!("image '{}' is listed twice", img.name));
            }
            if !chunks::is_sha256_hex(&img.sha256) {
                return Err(format!("image '{}': '{}' is no sha256", img.name, img.sha256));
            }
            let mut sum = 0u64;
            for c in &img.chunks {
                if c.size == 0 || c.size as usize > MAX_CHUNK || !chunks::is_sha256_hex(&c.sha256) {
                    return Err(format!(
                        "image '{}': a chunk of {} bytes named '{}' (chunks are 1..={MAX_CHUNK} bytes, named by sha256)",
                        img.name, c.size, c.sha256
                    ));
                }
                sum += u64::from(c.size);
            }
            if sum != img.size {
                return Err(format!("image '{}': its chunks add up to {sum} bytes, not its {}", img.name, img.size));
            }
        }
        Ok(())
    }

    /// The images' bytes: the bundle less its header.
    pub fn payload_size(&self) -> u64 {
        self.images.iter().map(|i| i.size).sum()
    }

    /// The chunks of this manifest that no image of `held` has (what a node holding `held`
    /// must fetch), each once, in the order they are first used.
    pub fn missing_chunks<'a>(&'a self, held: &[&Manifest]) -> Vec<&'a Chunk> {
        let have: std::collections::HashSet<&str> =
            held.iter().flat_map(|m| m.images.iter()).flat_map(|i| i.chunks.iter()).map(|c| c.sha256.as_str()).collect();
        let mut seen = std::collections::HashSet::new();
        self.images.iter().flat_map(|i| i.chunks.iter()).filter(|c| !have.contains(c.sha256.as_str()) && seen.insert(c.sha256.as_str())).collect()
    }

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
    /// The image cut into content-defined chunks, in order; their sizes add up to `size`.
    pub chunks: Vec<Chunk>,
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

/// What went wrong with an install, as the upgrade record, `meshd upgrade status`, metrics
/// labels and operators' scripts name it. The strings are stable: alert rules match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Not a bundle this format can read (magic, manifest, format version).
    Malformed,
    Truncated,
    Signature,
    Incompatible,
    NotNewer,
    TooLarge,
    PayloadMismatch,
    Io,
    /// The kernel remounted `/boot` read-only.
    ReadOnly,
    /// The boot state record could not be read or written.
    BootState,
    /// The running slot is on trial itself.
    OnTrial,
    /// Another install is running.
    Busy,
    /// Neighbours did not serve a release's chunks.
    Fetch,
    /// The node itself could not be read (its keys, its card).
    Node,
    /// Recorded when U-Boot gave up on a slot and booted the other.
    RolledBack,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Malformed => "malformed",
            ErrorKind::Truncated => "truncated",
            ErrorKind::Signature => "signature",
            ErrorKind::Incompatible => "incompatible",
            ErrorKind::NotNewer => "not_newer",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::PayloadMismatch => "payload_mismatch",
            ErrorKind::Io => "io",
            ErrorKind::ReadOnly => "read_only",
            ErrorKind::BootState => "boot_state",
            ErrorKind::OnTrial => "on_trial",
            ErrorKind::Busy => "busy",
            ErrorKind::Fetch => "fetch",
            ErrorKind::Node => "node",
            ErrorKind::RolledBack => "rolled_back",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl BundleError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            BundleError::BadMagic | BundleError::TooLarge(_) | BundleError::Manifest(_) | BundleError::Format(_) => ErrorKind::Malformed,
            BundleError::Truncated(_) => ErrorKind::Truncated,
            BundleError::Unsigned | BundleError::Signature(_) => ErrorKind::Signature,
            BundleError::Incompatible { .. } => ErrorKind::Incompatible,
            BundleError::NotNewer { .. } => ErrorKind::NotNewer,
            BundleError::Mismatch { .. } => ErrorKind::PayloadMismatch,
            BundleError::Io(e) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => ErrorKind::ReadOnly,
            BundleError::Io(_) => ErrorKind::Io,
        }
    }
}

/// Hashes and chunks of `data` as an image entry.
pub fn image_entry(name: &str, data: &[u8]) -> Image {
    Image { name: name.into(), size: data.len() as u64, sha256: chunks::sha256_hex(data), chunks: chunks::cut(data) }
}

use chunks::hex;

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
    signatures: Vec<SignatureFile>,
    signature_text: String,
    reader: R,
}

/// The minisign signature files in `text`, one after another (each starts with its untrusted
/// comment line).
pub fn parse_signatures(text: &str) -> Result<Vec<SignatureFile>, BundleError> {
    let mut blocks: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("untrusted comment:") || blocks.is_empty() {
            blocks.push(String::new());
        }
        let b = blocks.last_mut().expect("one block at least");
        b.push_str(line);
        b.push('\n');
    }
    blocks.iter().map(|b| SignatureFile::parse(b).map_err(|e| BundleError::Signature(e.to_string()))).collect()
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
    manifest.validate().map_err(BundleError::Manifest)?;
    let signature_text = String::from_utf8(sig).map_err(|_| BundleError::Signature("not text".into()))?;
    let signatures = parse_signatures(&signature_text)?;
    let header_len = (MAGIC.len() + 8) as u64 + u64::from(n) + u64::from(s);
    Ok(Opened { manifest, manifest_bytes, header_len, signatures, signature_text, reader })
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

    /// sha256 of the signed manifest bytes: names this release on the mesh.
    pub fn manifest_sha256(&self) -> String {
        chunks::sha256_hex(&self.manifest_bytes)
    }

    pub fn is_signed(&self) -> bool {
        !self.signatures.is_empty()
    }

    /// The manifest bytes, as signed.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// The signatures' text, as in the header.
    pub fn signature_text(&self) -> &str {
        &self.signature_text
    }

    /// Ids of the keys whose signatures are on the manifest (good or not).
    pub fn signer_ids(&self) -> Vec<String> {
        self.signatures.iter().map(|s| crate::minisign::key_id(&s.keynum)).collect()
    }

    /// Checks the manifest's signatures against the keys this node trusts: at least `required`
    /// distinct trusted keys must have signed it (a community's k of n). Returns their ids.
    pub fn verify(&self, trusted: &[PublicKey], required: usize) -> Result<Vec<String>, BundleError> {
        if self.signatures.is_empty() {
            return Err(BundleError::Unsigned);
        }
        let required = required.max(1);
        let mut good: Vec<String> = Vec::new();
        let mut problems: Vec<String> = Vec::new();
        for sig in &self.signatures {
            let id = crate::minisign::key_id(&sig.keynum);
            match trusted.iter().find(|k| k.keynum == sig.keynum) {
                None => problems.push(format!("signed by key {id}, which this node does not trust")),
                Some(key) => match key.verify(&self.manifest_bytes, sig) {
                    Ok(_) if !good.contains(&id) => good.push(id),
                    Ok(_) => {}
                    Err(e) => problems.push(format!("key {id}: {e}")),
                },
            }
        }
        if good.len() >= required {
            return Ok(good);
        }
        let ids: Vec<String> = trusted.iter().map(PublicKey::id).collect();
        let trusted_list = if ids.is_empty() { "none".into() } else { ids.join(", ") };
        Err(BundleError::Signature(if required == 1 {
            format!("{} (trusted: {trusted_list})", problems.join("; "))
        } else {
            let why = if problems.is_empty() { String::new() } else { format!("; {}", problems.join("; ")) };
            format!("{} of the {required} trusted signatures this node requires (trusted: {trusted_list}){why}", good.len())
        }))
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

    /// Streams each image to `on`, hashing as it goes: each chunk is checked against the
    /// manifest as soon as it has passed (so a corrupted transfer stops within a chunk of the
    /// damage), and each image's whole sha256 before its `Done` and before the next one starts.
    pub fn stream(self, on: impl FnMut(Event) -> std::io::Result<()>) -> Result<(), BundleError> {
        let Opened { manifest, mut reader, .. } = self;
        manifest.assemble(
            |image, i, at, buf| {
                reader.read_exact(buf).map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => BundleError::Truncated(format!(
                        "image {} ends inside its chunk {i}, before byte {} of {}",
                        image.name,
                        at + buf.len() as u64,
                        image.size
                    )),
                    _ => BundleError::Io(e),
                })
            },
            on,
        )
    }
}

impl Manifest {
    /// Hands each image to `on`, chunk by chunk in order, taking each chunk's bytes from
    /// `get(image, index, offset, buffer)`: every chunk is checked against the manifest before
    /// `on` sees it, and every image's whole sha256 before its `Done`. A bundle being read and
    /// a slot assembled from chunks held and fetched are written by the same checks.
    pub fn assemble(
        &self,
        mut get: impl FnMut(&Image, usize, u64, &mut [u8]) -> Result<(), BundleError>,
        mut on: impl FnMut(Event) -> std::io::Result<()>,
    ) -> Result<(), BundleError> {
        let mut buf = vec![0u8; MAX_CHUNK];
        for image in &self.images {
            let mut hash = Sha256::new();
            let mut at = 0u64;
            for (i, chunk) in image.chunks.iter().enumerate() {
                let data = &mut buf[..chunk.size as usize];
                get(image, i, at, data)?;
                let got = chunks::sha256_hex(data);
                if got != chunk.sha256 {
                    return Err(BundleError::Mismatch {
                        name: format!("{} (chunk {i}, bytes {at}..{})", image.name, at + u64::from(chunk.size)),
                        want: chunk.sha256.clone(),
                        got,
                    });
                }
                hash.update(&*data);
                on(Event::Data(image, data))?;
                at += u64::from(chunk.size);
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

/// Whether version `a` is newer than `b`, in semantic-versioning order extended to any number
/// of dot-separated parts: numbers compare as numbers (`0.10.0` > `0.9.1`, `1.0.0.1` >
/// `1.0.0`), a pre-release comes before its release (`1.0.0-rc1` < `1.0.0`), pre-releases
/// compare part by part (`rc2` < `rc10`), and build metadata after `+` is ignored.
pub fn newer(a: &str, b: &str) -> bool {
    compare_versions(a, b) == std::cmp::Ordering::Greater
}

pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    let split = |v: &'_ str| {
        let v = v.split('+').next().unwrap_or(v);
        match v.split_once('-') {
            Some((release, pre)) => (release.to_string(), Some(pre.to_string())),
            None => (v.to_string(), None),
        }
    };
    let ((ra, pa), (rb, pb)) = (split(a), split(b));
    compare_parts(&ra, &rb).then_with(|| match (pa, pb) {
        (None, None) => Equal,
        (None, Some(_)) => Greater,
        (Some(_), None) => Less,
        (Some(x), Some(y)) => compare_parts(&x, &y),
    })
}

/// Dot-separated parts in turn: numbers as numbers, below any text; text as text (a number
/// run inside it as a number, so `rc2` < `rc10`); when one runs out first, it is the older.
fn compare_parts(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    let key = |p: &str| -> (String, Option<u64>) {
        let digits = p.trim_start_matches(|c: char| !c.is_ascii_digit());
        (p[..p.len() - digits.len()].to_string(), digits.parse().ok())
    };
    let (mut xa, mut xb) = (a.split('.'), b.split('.'));
    loop {
        match (xa.next(), xb.next()) {
            (None, None) => return Equal,
            (Some(_), None) => return Greater,
            (None, Some(_)) => return Less,
            (Some(x), Some(y)) => {
                let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    (Ok(_), Err(_)) => Less,
                    (Err(_), Ok(_)) => Greater,
                    (Err(_), Err(_)) => key(x).cmp(&key(y)).then_with(|| x.cmp(y)),
                };
                if ord != Equal {
                    return ord;
                }
            }
        }
    }
}

#[cfg(test)]
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
        b.verify(trusted, 1)?;
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
        assert!(open(&good[..]).unwrap().manifest.images[0].chunks.len() >= 200_000 / MAX_CHUNK);
        assert_eq!(open(&good[..]).unwrap().total_size(), good.len() as u64);
        let header = open(&good[..]).unwrap().header();
        assert_eq!(header[..], good[..header.len()]);
        assert!(open(&good[..]).unwrap().is_signed() && !open(&make(None, "1.0.1", "rpi3").0[..]).unwrap().is_signed());

        let kind = |r: Result<Vec<u8>, BundleError>| r.unwrap_err().kind().as_str();
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
    fn a_site_can_require_k_of_n_signatures() {
        let keys: Vec<SecretKey> = (0..3).map(|_| SecretKey::generate().unwrap()).collect();
        let trusted: Vec<PublicKey> = keys[..2].iter().map(SecretKey::public).collect();
        let manifest = br#"{"format":2}"#;
        let sig = |k: &SecretKey| k.sign(manifest, "bundle", "manifest").render();
        let verify = |text: &str, required| {
            parse_signatures(text)
                .map(|signatures| Opened {
                    manifest: Manifest { format: FORMAT, compatible: String::new(), version: String::new(), build_id: String::new(), images: vec![] },
                    manifest_bytes: manifest.to_vec(),
                    header_len: 0,
                    signatures,
                    signature_text: text.into(),
                    reader: &[][..],
                })
                .and_then(|o| o.verify(&trusted, required))
        };
        assert_eq!(verify(&sig(&keys[0]), 1).unwrap(), [keys[0].public().id()]);
        let err = verify(&sig(&keys[0]), 2).unwrap_err().to_string();
        assert!(err.contains("1 of the 2 trusted signatures this node requires"), "{err}");
        assert_eq!(verify(&(sig(&keys[0]) + &sig(&keys[1])), 2).unwrap().len(), 2);
        // The same key twice is one signature; an untrusted one does not count.
        assert!(verify(&(sig(&keys[0]) + &sig(&keys[0])), 2).is_err());
        let err = verify(&(sig(&keys[0]) + &sig(&keys[2])), 2).unwrap_err().to_string();
        assert!(err.contains("which this node does not trust"), "{err}");
        assert!(verify("untrusted comment: x\nnot base64\n", 1).is_err());
    }

    #[test]
    fn manifests_that_would_mislead_a_node_are_refused() {
        let valid = |names: &[&str]| {
            let images = names.iter().map(|n| image_entry(n, b"bytes")).collect();
            Manifest { format: FORMAT, compatible: "meshos-rpi3".into(), version: "1".into(), build_id: "b".into(), images }.validate()
        };
        assert!(valid(&["root", "boot/vmlinuz", "boot/dtbs/broadcom/x.dtb"]).is_ok());
        for bad in ["boot//etc/shadow", "boot/../etc/shadow", "boot/./x", "boot/", "etc/shadow", "/boot/x", "boot/a/"] {
            assert!(valid(&["root", bad]).is_err(), "{bad}");
        }
        assert!(valid(&["root", "root"]).unwrap_err().contains("listed twice"));
        let mut m =
            Manifest { format: FORMAT, compatible: "c".into(), version: "1".into(), build_id: "b".into(), images: vec![image_entry("root", &[1u8; 100_000])] };
        m.images[0].chunks.pop();
        assert!(m.validate().unwrap_err().contains("chunks add up to"));
    }

    #[test]
    fn a_corrupted_chunk_is_named_with_its_place() {
        let key = SecretKey::generate().unwrap();
        let (mut bytes, _) = make(Some(&key), "1.0.1", "rpi3");
        let header_len = open(&bytes[..]).unwrap().header().len();
        bytes[header_len + 100] ^= 0xff;
        let err = install(&bytes, &[key.public()]).unwrap_err().to_string();
        assert!(err.contains("image root (chunk 0, bytes 0.."), "{err}");
    }

    #[test]
    fn versions_compare_as_numbers() {
        assert!(newer("0.10.0", "0.9.1") && newer("1.0.1", "1.0.0") && newer("1.0.0.1", "1.0.0"));
        assert!(!newer("1.0.0", "1.0.0") && !newer("0.9", "0.10"));
        // Pre-releases come before their release, and compare among themselves.
        assert!(newer("1.0.0", "1.0.0-rc1") && !newer("1.0.0-rc1", "1.0.0"));
        assert!(newer("1.0.0-rc10", "1.0.0-rc2") && newer("1.0.0-rc1", "0.9.9") && newer("1.0.0-rc.2", "1.0.0-rc.1"));
        assert!(newer("1.0.0-beta", "1.0.0-alpha.9") && !newer("1.0.0+b2", "1.0.0+b1"));
    }
}
