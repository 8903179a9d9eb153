//! Writes the update bundle of a build (format: meshos_common::bundle): the slot's root
//! squashfs and its boot files, under a manifest signed with the build's key.

use meshos_common::bundle::{self, Image, Manifest};
use meshos_common::minisign::SecretKey;
use std::io::Write;
use std::path::Path;

/// The bundle's header (magic, manifest, signature) for `images`: (name, bytes) in payload
/// order, `root` first, then `boot/…` files. It also goes on the boot partition, in slot A's
/// directory, so the node can serve its running slot as a bundle.
pub fn header(compatible: &str, version: &str, build_id: &str, images: &[(String, Vec<u8>)], key: Option<&SecretKey>, timestamp: i64) -> std::io::Result<Vec<u8>> {
    let manifest = Manifest {
        format: bundle::FORMAT,
        compatible: compatible.into(),
        version: version.into(),
        build_id: build_id.into(),
        images: images.iter().map(|(name, data)| bundle::image_entry(name, data)).collect::<Vec<Image>>(),
    };
    let json = serde_json::to_vec(&manifest).map_err(std::io::Error::other)?;
    let signature = key.map(|k| k.sign(&json, "signature from meshimg secret key", &format!("timestamp:{timestamp}\tfile:manifest of {compatible} {version}\thashed")).render());
    Ok(bundle::header(&json, signature.as_deref()))
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
