//! Writes the update bundle of a build (format: meshos_common::bundle): the slot's root
//! squashfs and its boot files, under a manifest signed with the build's key.

use meshos_common::bundle::{self, Image, Manifest};
use meshos_common::minisign::SecretKey;
use std::io::Write;
use std::path::Path;

/// The bundle's header (magic, manifest, signature) for `images`: (name, bytes) in payload
/// order, `root` first, then `boot/…` files. It also goes on the boot partition, in slot A's
/// directory, so the node can serve its running slot as a bundle.
pub fn header(
    compatible: &str,
    version: &str,
    build_id: &str,
    images: &[(String, Vec<u8>)],
    key: Option<&SecretKey>,
    timestamp: i64,
) -> std::io::Result<Vec<u8>> {
    let manifest = Manifest {
        format: bundle::FORMAT,
        compatible: compatible.into(),
        version: version.into(),
        build_id: build_id.into(),
        images: images.iter().map(|(name, data)| bundle::image_entry(name, data)).collect::<Vec<Image>>(),
    };
    let json = serde_json::to_vec(&manifest).map_err(std::io::Error::other)?;
    let signature = key.map(|k| sign_manifest(k, &json, compatible, version, timestamp));
    Ok(bundle::header(&json, signature.as_deref()))
}

/// One maintainer's minisign signature of a manifest, as the header carries it.
fn sign_manifest(key: &SecretKey, manifest_json: &[u8], compatible: &str, version: &str, timestamp: i64) -> String {
    key.sign(manifest_json, "signature from meshimg secret key", &format!("timestamp:{timestamp}\tfile:manifest of {compatible} {version}\thashed")).render()
}

/// The bundle: `header`, then the images in its order.
pub fn write(out: &Path, header: &[u8], images: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(out)?);
    f.write_all(header)?;
    for (_, data) in images {
        f.write_all(data)?;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// What a node holding one bundle's slot fetches to install another: the header (manifest and
/// signature) and the chunks the first lacks.
#[derive(Debug, serde::Serialize)]
pub struct Delta {
    pub from: String,
    pub to: String,
    pub bundle_bytes: u64,
    pub header_bytes: u64,
    pub chunks: usize,
    pub missing_chunks: usize,
    pub missing_bytes: u64,
    /// (header + missing chunks) / whole bundle.
    pub share: f64,
}

impl Delta {
    pub fn between(old: &Path, new: &Path) -> anyhow::Result<Delta> {
        use anyhow::Context;
        let open = |p: &Path| -> anyhow::Result<(Manifest, u64, u64)> {
            let f = std::fs::File::open(p).with_context(|| p.display().to_string())?;
            let b = bundle::open(std::io::BufReader::new(f)).with_context(|| p.display().to_string())?;
            let (total, header) = (b.total_size(), b.header().len() as u64);
            Ok((b.manifest, total, header))
        };
        let (old_m, _, _) = open(old)?;
        let (new_m, total, header) = open(new)?;
        let missing = new_m.missing_chunks(&[&old_m]);
        let missing_bytes: u64 = missing.iter().map(|c| u64::from(c.size)).sum();
        Ok(Delta {
            from: old_m.version.clone(),
            to: new_m.version.clone(),
            bundle_bytes: total,
            header_bytes: header,
            chunks: new_m.images.iter().map(|i| i.chunks.len()).sum(),
            missing_chunks: missing.len(),
            missing_bytes,
            share: (header + missing_bytes) as f64 / total as f64,
        })
    }
}

impl std::fmt::Display for Delta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} -> {}: {} of {} chunks are new, {} bytes", self.from, self.to, self.missing_chunks, self.chunks, self.missing_bytes)?;
        write!(
            f,
            "fetched with the {}-byte header: {} of the bundle's {} bytes ({:.2}%)",
            self.header_bytes,
            self.header_bytes + self.missing_bytes,
            self.bundle_bytes,
            self.share * 100.0
        )
    }
}

/// Adds `key`'s signature of the manifest to the bundle at `path` (for a site that requires k
/// of n signatures: each maintainer adds theirs). The payload is not touched; the file is
/// replaced whole, so an interrupted write leaves the bundle as it was. Returns the ids of all
/// the manifest's signers.
pub fn add_signature(path: &Path, key: &SecretKey, timestamp: i64) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let opened = bundle::open(std::io::BufReader::new(f)).with_context(|| path.display().to_string())?;
    let id = key.public().id();
    if opened.signer_ids().contains(&id) {
        anyhow::bail!("{}: the manifest is already signed by key {id}", path.display());
    }
    let old_header = opened.header().len() as u64;
    let (compatible, version) = (opened.manifest.compatible.clone(), opened.manifest.version.clone());
    let signature = sign_manifest(key, opened.manifest_bytes(), &compatible, &version, timestamp);
    let header = bundle::header(opened.manifest_bytes(), Some(&format!("{}{signature}", opened.signature_text())));
    let mut signers = opened.signer_ids();
    signers.push(id);
    let tmp = path.with_extension("bundle.partial");
    let result = (|| -> std::io::Result<()> {
        let mut src = std::fs::File::open(path)?;
        std::io::Seek::seek(&mut src, std::io::SeekFrom::Start(old_header))?;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        out.write_all(&header)?;
        std::io::copy(&mut src, &mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!("{}: rewriting it with the new signature", path.display())));
    }
    Ok(signers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintainers_add_their_signatures_until_k_of_n_is_met() {
        let dir = std::env::temp_dir().join(format!("meshimg-k-of-n-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (first, second) = (SecretKey::generate().unwrap(), SecretKey::generate().unwrap());
        let images = vec![("root".to_string(), vec![3u8; 100_000]), ("boot/vmlinuz".to_string(), b"kernel".to_vec())];
        let path = dir.join("meshos-rpi3-1.1.bundle");
        write(&path, &header("meshos-rpi3", "1.1", "b", &images, Some(&first), 0).unwrap(), &images).unwrap();
        let trusted = [first.public(), second.public()];
        let open = || bundle::open(std::io::BufReader::new(std::fs::File::open(&path).unwrap())).unwrap();
        assert!(open().verify(&trusted, 2).is_err());

        let signers = add_signature(&path, &second, 0).unwrap();
        assert_eq!(signers, [first.public().id(), second.public().id()]);
        let b = open();
        assert_eq!(b.verify(&trusted, 2).unwrap().len(), 2);
        // The payload is as it was, and still checks.
        b.stream(|_| Ok(())).unwrap();
        let err = add_signature(&path, &second, 0).unwrap_err().to_string();
        assert!(err.contains("already signed by key"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
