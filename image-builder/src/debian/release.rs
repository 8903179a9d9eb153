//! Signed `InRelease` files and the package indexes they vouch for.
//!
//! Trust flows one way: pinned key fingerprints → `InRelease` signature → index hashes →
//! package hashes (recorded in the lock). Nothing unverified is ever parsed for packages.

use super::control;
use crate::http::{self, HttpError};
use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey};
use pgp::types::KeyDetails;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{path}: cannot read the archive keyring: {message}\nhint: install debian-archive-keyring, or set debian.keyring in the board file")]
    Keyring { path: String, message: String },
    #[error("{path}: none of the trusted keys ({fingerprints}) is in this keyring\nhint: install a current debian-archive-keyring")]
    NoTrustedKey { path: String, fingerprints: String },
    #[error("{url}: is not a signed release: {message}")]
    NotSigned { url: String, message: String },
    #[error("{url}: BAD SIGNATURE: no signature verifies against a trusted key ({fingerprints}); nothing was changed\nhint: the mirror or the network path may be tampering; try another mirror")]
    BadSignature { url: String, fingerprints: String },
    #[error("{url}: release field {field} is missing or malformed")]
    Field { url: String, field: &'static str },
    #[error("{url}: a validly signed release, but of {found}, not of the board's suite {asked}; nothing was changed\nhint: the mirror may be serving an old or another release's InRelease (a replay): try another mirror, or check debian.suite in the board file")]
    WrongSuite { url: String, asked: String, found: String },
    #[error("{url}: the release does not list {path}\nhint: check the suite, components and arch in the board file")]
    NotListed { url: String, path: String },
    #[error("{path}: index does not match InRelease after {attempts} attempts ({detail}) (the mirror may be mid-sync); nothing was changed; retry later")]
    IndexMismatch { path: String, attempts: u32, detail: String },
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{path}: cannot decompress: {message}")]
    Decompress { path: String, message: String },
}

/// Checks release signatures against a keyring, trusting only pinned primary keys and their subkeys.
pub struct Verifier {
    keys: Vec<SignedPublicKey>,
    fingerprints: String,
}

impl Verifier {
    pub fn load(keyring: &Path, trusted: &[String]) -> Result<Verifier, ReleaseError> {
        let path = keyring.display().to_string();
        let data = std::fs::read(keyring).map_err(|e| ReleaseError::Keyring { path: path.clone(), message: e.to_string() })?;
        let parsed =
            SignedPublicKey::from_bytes_many(std::io::Cursor::new(data)).map_err(|e| ReleaseError::Keyring { path: path.clone(), message: e.to_string() })?;
        let want: Vec<String> = trusted.iter().map(|f| f.to_ascii_uppercase()).collect();
        let keys: Vec<SignedPublicKey> = parsed.flatten().filter(|k| want.contains(&hex::encode_upper(k.fingerprint().as_bytes()))).collect();
        let fingerprints = want.join(", ");
        if keys.is_empty() {
            return Err(ReleaseError::NoTrustedKey { path, fingerprints });
        }
        Ok(Verifier { keys, fingerprints })
    }

    /// Verifies a clearsigned `InRelease` and returns its signed text.
    pub fn verify(&self, url: &str, inrelease: &[u8]) -> Result<String, ReleaseError> {
        let text = std::str::from_utf8(inrelease).map_err(|e| ReleaseError::NotSigned { url: url.into(), message: e.to_string() })?;
        let (msg, _) = CleartextSignedMessage::from_string(text).map_err(|e| ReleaseError::NotSigned { url: url.into(), message: e.to_string() })?;
        // The primary key is trusted by its pinned fingerprint; a subkey only through a valid
        // binding signature (and back-signature) from that primary key. Third-party
        // certifications on Debian's keys are neither needed nor checked.
        let ok = self.keys.iter().any(|k| msg.verify(k).is_ok() || k.public_subkeys.iter().any(|s| s.verify(&k.primary_key).is_ok() && msg.verify(s).is_ok()));
        if !ok {
            return Err(ReleaseError::BadSignature { url: url.into(), fingerprints: self.fingerprints.clone() });
        }
        Ok(msg.signed_text())
    }
}

#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub size: u64,
    pub sha256: String,
}

/// A verified release: its date and the hashes of its index files.
#[derive(Debug, Clone)]
pub struct Release {
    pub url: String,
    /// `Suite` (stable, testing…) and `Codename` (bookworm, trixie…).
    pub suite: String,
    pub codename: String,
    pub date: String,
    pub date_epoch: i64,
    pub by_hash: bool,
    pub files: BTreeMap<String, IndexEntry>,
}

impl Release {
    pub fn parse(url: &str, signed_text: &str) -> Result<Release, ReleaseError> {
        let field_err = |field| ReleaseError::Field { url: url.into(), field };
        let paras = control::parse(signed_text).map_err(|_| field_err("(syntax)"))?;
        let p = paras.first().ok_or_else(|| field_err("(empty)"))?;
        let date = p.get("Date").ok_or_else(|| field_err("Date"))?.to_string();
        let date_epoch = parse_rfc2822(&date).ok_or_else(|| field_err("Date"))?;
        let mut files = BTreeMap::new();
        for line in p.get("SHA256").ok_or_else(|| field_err("SHA256"))?.lines() {
            let mut it = line.split_whitespace();
            if let (Some(h), Some(s), Some(path)) = (it.next(), it.next(), it.next()) {
                let size = s.parse().map_err(|_| field_err("SHA256"))?;
                files.insert(path.to_string(), IndexEntry { size, sha256: h.to_ascii_lowercase() });
            }
        }
        let by_hash = p.get("Acquire-By-Hash").is_some_and(|v| v.eq_ignore_ascii_case("yes"));
        let suite = p.get("Suite").ok_or_else(|| field_err("Suite"))?.trim().to_string();
        let codename = p.get("Codename").ok_or_else(|| field_err("Codename"))?.trim().to_string();
        Ok(Release { url: url.into(), suite, codename, date, date_epoch, by_hash, files })
    }

    /// A release signed for one suite must not stand in for another: the board names its
    /// suite by either name (`bookworm` or `stable`), and one of them must match.
    pub fn check_suite(&self, asked: &str) -> Result<(), ReleaseError> {
        if asked == self.suite || asked == self.codename {
            return Ok(());
        }
        Err(ReleaseError::WrongSuite { url: self.url.clone(), asked: asked.into(), found: format!("{} ({})", self.codename, self.suite) })
    }
}

/// Fetches and verifies `dists/<suite>/InRelease`.
pub fn fetch_release(mirror: &str, suite: &str, verifier: &Verifier) -> Result<Release, ReleaseError> {
    let url = format!("{}/dists/{suite}/InRelease", mirror.trim_end_matches('/'));
    let body = http::with_retries(|| http::get(&url))?;
    let text = verifier.verify(&url, &body)?;
    let release = Release::parse(&url, &text)?;
    release.check_suite(suite)?;
    Ok(release)
}

/// Fetches `<component>/binary-<arch>/Packages.xz`, checks it against the release and returns
/// the decompressed text. A mismatch is retried (by hash first: a mirror mid-sync often serves
/// the right by-hash file while the named one is stale) and finally reported, never used.
pub fn fetch_packages(mirror: &str, suite: &str, release: &Release, component: &str, arch: &str) -> Result<String, ReleaseError> {
    let rel_path = format!("{component}/binary-{arch}/Packages.xz");
    let entry = release.files.get(&rel_path).ok_or_else(|| ReleaseError::NotListed { url: release.url.clone(), path: rel_path.clone() })?;
    let base = format!("{}/dists/{suite}", mirror.trim_end_matches('/'));
    let mut urls = Vec::new();
    if release.by_hash {
        urls.push(format!("{base}/{component}/binary-{arch}/by-hash/SHA256/{}", entry.sha256));
    }
    urls.push(format!("{base}/{rel_path}"));
    let mut last = String::new();
    for attempt in 1..=http::ATTEMPTS {
        for url in &urls {
            match http::get(url) {
                Ok(body) => match check(&body, entry) {
                    Ok(()) => return decompress_xz(&body, &rel_path),
                    Err(detail) => last = detail,
                },
                Err(HttpError::NotFound { url }) => last = format!("{url} not found"),
                Err(e) => last = e.to_string(),
            }
        }
        if attempt < http::ATTEMPTS {
            std::thread::sleep(http::backoff(attempt + 1));
        }
    }
    Err(ReleaseError::IndexMismatch { path: format!("{base}/{rel_path}"), attempts: http::ATTEMPTS, detail: last })
}

fn check(body: &[u8], entry: &IndexEntry) -> Result<(), String> {
    if body.len() as u64 != entry.size {
        return Err(format!("size {} but InRelease says {}", body.len(), entry.size));
    }
    let got = hex::encode(Sha256::digest(body));
    if got != entry.sha256 {
        return Err(format!("sha256 {got} but InRelease says {}", entry.sha256));
    }
    Ok(())
}

fn decompress_xz(body: &[u8], path: &str) -> Result<String, ReleaseError> {
    let mut text = String::new();
    liblzma::read::XzDecoder::new(body).read_to_string(&mut text).map_err(|e| ReleaseError::Decompress { path: path.into(), message: e.to_string() })?;
    Ok(text)
}

/// Parses the RFC 2822 dates of Release files ("Sat, 21 Nov 2026 09:15:44 UTC") to Unix time.
pub fn parse_rfc2822(date: &str) -> Option<i64> {
    let parts: Vec<&str> = date.split_whitespace().collect();
    let (day, mon, year, hms) = match parts.as_slice() {
        [_, d, m, y, t, ..] => (d, m, y, t),
        _ => return None,
    };
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| m == mon)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let [h, mi, s] = t.as_slice() else { return None };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_of_another_suite_is_refused() {
        let text = "Origin: Debian\nSuite: oldstable\nCodename: bookworm\nDate: Sat, 21 Nov 2026 09:15:44 UTC\nSHA256:\n 00 1 main/binary-arm64/Packages\n";
        let r = Release::parse("http://m/dists/trixie/InRelease", text).unwrap();
        assert!(r.check_suite("bookworm").is_ok() && r.check_suite("oldstable").is_ok());
        let e = r.check_suite("trixie").unwrap_err().to_string();
        assert!(e.contains("of bookworm (oldstable), not of the board's suite trixie"), "{e}");
        let e = Release::parse("u", &text.replace("Codename: bookworm\n", "")).unwrap_err().to_string();
        assert!(e.contains("Codename"), "{e}");
    }

    #[test]
    fn release_dates() {
        assert_eq!(parse_rfc2822("Thu, 01 Jan 1970 00:00:00 UTC"), Some(0));
        assert_eq!(parse_rfc2822("Sat, 21 Nov 2026 09:15:44 UTC"), Some(1_795_252_544));
        assert_eq!(parse_rfc2822("yesterday"), None);
    }
}
