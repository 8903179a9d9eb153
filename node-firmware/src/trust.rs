//! The keys an image trusts: the minisign public keys meshimg baked into it, and how many of
//! them must have signed a release.

use std::fs;
use std::path::Path;

/// Public keys baked into the image by meshimg; bundles must be signed by one of them.
pub const KEYS_DIR: &str = "/usr/share/meshos/keys";

/// The readable minisign public keys in `dir`.
pub fn public_keys(dir: &Path) -> Vec<meshos_common::minisign::PublicKey> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut keys: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let text = fs::read_to_string(e.path()).ok()?;
            match meshos_common::minisign::PublicKey::parse(&text) {
                Ok(k) => Some(k),
                Err(err) => {
                    logln!("meshd: {}: {err}", e.path().display());
                    None
                }
            }
        })
        .collect();
    keys.sort_by_key(|k| k.id());
    keys
}

/// How many trusted keys must have signed a release, as meshimg baked it into the image
/// (`--signatures-required`); 1 when the file is absent.
pub const SIGNATURES_REQUIRED: &str = "/usr/share/meshos/signatures-required";

pub fn signatures_required(path: &Path, trusted: usize) -> usize {
    match fs::read_to_string(path) {
        Err(_) => 1,
        Ok(text) => text.trim().parse::<usize>().ok().filter(|n| *n >= 1).unwrap_or_else(|| {
            // A damaged file must not lower the bar: require every trusted key.
            logln!("meshd: {}: '{}' is not a number of signatures; requiring every trusted key", path.display(), text.trim());
            trusted.max(1)
        }),
    }
}
