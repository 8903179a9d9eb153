//! Writes the update bundle of a build (format: meshos_common::bundle): the slot's root
//! squashfs and its boot files, under a manifest signed with the build's key.

use meshos_common::bundle::{self, Image, Manifest};
use meshos_common::minisign::SecretKey;
use std::io::Write;
use std::path::Path;

/// `images` are (name, bytes) in payload order: `root` first, then `boot/…` files.
pub fn write(out: &Path, compatible: &str, version: &str, build_id: &str, images: &[(String, Vec<u8>)], key: Option<&SecretKey>, timestamp: i64) -> std::io::Result<Manifest> {
    let manifest = Manifest {
        format: bundle::FORMAT,
        compatible: compatible.into(),
        version: version.into(),
        build_id: build_id.into(),
        images: images.iter().map(|(name, data)| bundle::image_entry(name, data)).collect::<Vec<Image>>(),
    };
    let json = serde_json::to_vec(&manifest).map_err(std::io::Error::other)?;
    let signature = key.map(|k| k.sign(&json, "signature from meshimg secret key", &format!("timestamp:{timestamp}\tfile:manifest of {compatible} {version}\thashed")).render());
    let mut f = std::io::BufWriter::new(std::fs::File::create(out)?);
    f.write_all(&bundle::header(&json, signature.as_deref()))?;
    for (_, data) in images {
        f.write_all(data)?;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(manifest)
}
