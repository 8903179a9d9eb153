//! Signed `InRelease` files and the package indexes they vouch for.
//!
//! Trust flows one way: pinned key fingerprints → `InRelease` signature → index hashes →
//! package hashes (recorded in the lock). Nothing unverified is ever parsed for packages.
//! Signatures are checked by `gpgv`, the tool apt checks them with; this module reads its
//! machine-readable status and trusts a signature only from a pinned primary key (gpgv has
//! checked the binding of a subkey that made it).

use super::control;
use crate::http::{self, HttpError};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{path}: cannot read the archive keyring: {message}\nhint: install debian-archive-keyring, or set debian.keyring in the board file")]
    Keyring { path: String, message: String },
    #[error("cannot run gpgv to check {url}: {message}\nhint: install gpgv (on Debian: apt install gpgv), the tool apt checks these signatures with")]
    Gpgv { url: String, message: String },
    #[error("{url}: is not a signed release: {message}")]
    NotSigned { url: String, message: String },
    #[error("{url}: BAD SIGNATURE: no signature verifies against a trusted key ({fingerprints}): {detail}; nothing was changed\nhint: {hint}")]
    BadSignature { url: String, fingerprints: String, detail: String, hint: &'static str },
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
    keyring: PathBuf,
    trusted: Vec<String>,
}

impl Verifier {
    pub fn load(keyring: &Path, trusted: &[String]) -> Result<Verifier, ReleaseError> {
        let keyring_err = |message: String| ReleaseError::Keyring { path: keyring.display().to_string(), message };
        let meta = std::fs::metadata(keyring).map_err(|e| keyring_err(e.to_string()))?;
        if meta.len() == 0 {
            return Err(keyring_err("the file is empty".into()));
        }
        // gpgv takes a keyring named without a directory from its own home directory.
        let keyring = std::path::absolute(keyring).map_err(|e| keyring_err(e.to_string()))?;
        Ok(Verifier { keyring, trusted: trusted.iter().map(|f| f.to_ascii_uppercase()).collect() })
    }

    /// Verifies a clearsigned `InRelease` and returns the text its signatures cover (gpgv's
    /// output: nothing outside the signed part can reach the parser), with the keys of any
    /// further signatures the keyring does not hold.
    pub fn verify(&self, url: &str, inrelease: &[u8]) -> Result<Verified, ReleaseError> {
        let gpgv_err = |message: String| ReleaseError::Gpgv { url: url.into(), message };
        // Its own empty home directory: no user's keyrings or options take part.
        let dir = tempfile::Builder::new().prefix("meshimg-gpgv.").tempdir().map_err(|e| gpgv_err(e.to_string()))?;
        let (signed, data) = (dir.path().join("InRelease"), dir.path().join("signed"));
        std::fs::write(&signed, inrelease).map_err(|e| gpgv_err(e.to_string()))?;
        let out = Command::new("gpgv")
            .arg("--homedir")
            .arg(dir.path())
            .arg("--keyring")
            .arg(&self.keyring)
            .args(["--status-fd", "1", "--output"])
            .arg(&data)
            .arg(&signed)
            .output()
            .map_err(|e| gpgv_err(e.to_string()))?;
        let status = String::from_utf8_lossy(&out.stdout);
        let signatures = Signature::parse(&status);
        if signatures.is_empty() {
            let said = String::from_utf8_lossy(&out.stderr);
            return Err(ReleaseError::NotSigned { url: url.into(), message: said.lines().last().unwrap_or("gpgv found no signature").trim().to_string() });
        }
        judge(&signatures, &self.trusted).map_err(|(detail, hint)| ReleaseError::BadSignature {
            url: url.into(),
            fingerprints: self.trusted.join(", "),
            detail: detail.replace("{keyring}", &self.keyring.display().to_string()),
            hint,
        })?;
        if !out.status.success() {
            unexplained_failure(&signatures, &status).map_or(Ok(()), |why| {
                let said = String::from_utf8_lossy(&out.stderr);
                let said: Vec<&str> = said.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
                Err(gpgv_err(format!("gpgv exited with {} ({why}): {}", out.status, said.join(" / "))))
            })?;
        }
        let text = std::fs::read(&data).map_err(|e| gpgv_err(format!("{}: {e}", data.display())))?;
        let text = String::from_utf8(text).map_err(|e| ReleaseError::NotSigned { url: url.into(), message: e.to_string() })?;
        Ok(Verified { text, unknown_keys: signatures.iter().filter_map(|s| s.missing.clone()).collect() })
    }
}

/// A release's signed text, and the keys of signatures on it that the keyring does not hold
/// (beside the trusted one that verified it: a key the archive added since the keyring was made).
#[derive(Debug)]
pub struct Verified {
    pub text: String,
    pub unknown_keys: Vec<String>,
}

/// gpgv fails when any signature on the file cannot be checked. One that only lacks its key in
/// the keyring, beside a good signature by a trusted key, is what apt accepts too (archives sign
/// with their next key before every keyring has it). Anything else that made gpgv fail is
/// named: a release is used only when gpgv's status explains its exit.
fn unexplained_failure(sigs: &[Signature], status: &str) -> Option<String> {
    if let Some(line) = status.lines().find(|l| l.starts_with("[GNUPG:] FAILURE") || l.starts_with("[GNUPG:] ERROR")) {
        return Some(line.trim_start_matches("[GNUPG:] ").to_string());
    }
    let unchecked = sigs.iter().filter(|s| !(s.good && s.valid.is_some()) && s.missing.is_none()).count();
    match (unchecked, sigs.iter().filter(|s| s.missing.is_some()).count()) {
        (0, 0) => Some("every signature verified, yet it failed".into()),
        (0, _) => None,
        (n, _) => Some(format!("{n} signature(s) neither good nor by a key the keyring lacks")),
    }
}

/// What gpgv's status lines say of one signature (from one `NEWSIG` to the next).
#[derive(Debug, Default, PartialEq)]
struct Signature {
    /// GOODSIG: the signature verifies, by a key that has not expired or been revoked.
    good: bool,
    /// VALIDSIG: the primary key's fingerprint and the digest algorithm (RFC 4880 ids).
    valid: Option<(String, u32)>,
    /// BADSIG: the key id; the data is not what was signed.
    bad: Option<String>,
    /// NO_PUBKEY: the key id the keyring lacks.
    missing: Option<String>,
    /// EXPKEYSIG, REVKEYSIG, EXPSIG: the key id and what is wrong.
    unusable: Option<(String, &'static str)>,
    /// ERRSIG: the key id and gpgv's reason code (4 an unknown algorithm, 9 a missing key).
    error: Option<(String, String)>,
}

impl Signature {
    fn parse(status: &str) -> Vec<Signature> {
        let mut sigs: Vec<Signature> = Vec::new();
        for line in status.lines() {
            let mut f = line.split_whitespace();
            if f.next() != Some("[GNUPG:]") {
                continue;
            }
            let Some(keyword) = f.next() else { continue };
            let fields: Vec<&str> = f.collect();
            if keyword == "NEWSIG" || sigs.is_empty() {
                sigs.push(Signature::default());
            }
            let sig = sigs.last_mut().expect("pushed above");
            let first = || fields.first().unwrap_or(&"?").to_string();
            match keyword {
                "GOODSIG" => sig.good = true,
                "BADSIG" => sig.bad = Some(first()),
                "NO_PUBKEY" => sig.missing = Some(first()),
                "EXPKEYSIG" => sig.unusable = Some((first(), "whose key has expired")),
                "REVKEYSIG" => sig.unusable = Some((first(), "whose key has been revoked")),
                "EXPSIG" => sig.unusable = Some((first(), "which has expired")),
                // ERRSIG keyid pkalgo hashalgo class time rc [fpr]
                "ERRSIG" => sig.error = Some((first(), fields.get(5).unwrap_or(&"?").to_string())),
                // VALIDSIG fpr date timestamp expires version reserved pkalgo hashalgo class [primary-fpr]
                "VALIDSIG" if fields.len() >= 9 => {
                    let primary = fields.get(9).unwrap_or(&fields[0]).to_ascii_uppercase();
                    sig.valid = Some((primary, fields[7].parse().unwrap_or(0)));
                }
                _ => {}
            }
        }
        sigs.retain(|s| *s != Signature::default());
        sigs
    }
}

/// MD5, SHA-1 and RIPEMD-160: digests apt no longer accepts for a release's signature.
const WEAK_DIGESTS: [(u32, &str); 3] = [(1, "MD5"), (2, "SHA-1"), (3, "RIPEMD-160")];

/// A release is trusted when a good signature comes from a pinned key with a strong digest and
/// no signature on it is bad. Otherwise: what is wrong, and the hint for it.
fn judge(sigs: &[Signature], trusted: &[String]) -> Result<(), (String, &'static str)> {
    const TAMPERED: &str = "the mirror or the network path may be tampering; try another mirror";
    if let Some(key) = sigs.iter().find_map(|s| s.bad.as_ref()) {
        return Err((format!("gpgv: the signature by key {key} does not match the text"), TAMPERED));
    }
    let mut why = Vec::new();
    for s in sigs {
        match (&s.valid, s.good) {
            (Some((primary, digest)), true) if trusted.contains(primary) => match WEAK_DIGESTS.iter().find(|(id, _)| id == digest) {
                None => return Ok(()),
                Some((_, name)) => why.push(format!("key {primary} signed with the weak digest {name}")),
            },
            (Some((primary, _)), true) => why.push(format!("signed by key {primary}, which the board file does not trust (debian.trustedKeys)")),
            _ => {
                if let Some(key) = &s.missing {
                    why.push(format!("signed by key {key}, which is not in {{keyring}}"));
                } else if let Some((key, what)) = &s.unusable {
                    why.push(format!("signed by key {key}, {what}"));
                } else if let Some((key, rc)) = &s.error {
                    why.push(format!("a signature by key {key} that gpgv could not check (ERRSIG code {rc})"));
                }
            }
        }
    }
    let hint =
        if sigs.iter().all(|s| s.missing.is_some()) { "install a current debian-archive-keyring, or check debian.keyring in the board file" } else { TAMPERED };
    Err((if why.is_empty() { "gpgv accepted no signature".into() } else { why.join("; ") }, hint))
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
    /// Keys of further signatures the keyring does not hold (see [`Verified`]).
    pub unknown_keys: Vec<String>,
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
        Ok(Release { url: url.into(), suite, codename, date, date_epoch, by_hash, files, unknown_keys: Vec::new() })
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
    let verified = verifier.verify(&url, &body)?;
    let mut release = Release::parse(&url, &verified.text)?;
    release.unknown_keys = verified.unknown_keys;
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

    // gpgv 2.2.40's status for bookworm's InRelease (2026-07-11) with debian-archive-keyring.
    const DEBIAN: &str = "[GNUPG:] PLAINTEXT 74 0 
[GNUPG:] NEWSIG
[GNUPG:] KEY_CONSIDERED B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8 0
[GNUPG:] SIG_ID AgpdPZ7z8h3tPdbJ5G8ASdhxELQ 2026-07-11 1783765031
[GNUPG:] GOODSIG 6ED0E7B82643E131 Debian Archive Automatic Signing Key (12/bookworm) <ftpmaster@debian.org>
[GNUPG:] VALIDSIG 4CB50190207B4758A3F73A796ED0E7B82643E131 2026-07-11 1783765031 0 4 0 1 8 01 B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8
[GNUPG:] NEWSIG
[GNUPG:] KEY_CONSIDERED 4D64FEC119C2029067D6E791F8D2585B8783D481 0
[GNUPG:] GOODSIG F8D2585B8783D481 Debian Stable Release Key (12/bookworm) <debian-release@lists.debian.org>
[GNUPG:] VALIDSIG 4D64FEC119C2029067D6E791F8D2585B8783D481 2026-07-11 1783765141 0 4 0 22 8 01 4D64FEC119C2029067D6E791F8D2585B8783D481
";
    const BOOKWORM: &str = "B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8";
    const RELEASE: &str = "4D64FEC119C2029067D6E791F8D2585B8783D481";

    #[test]
    fn a_good_signature_by_a_pinned_primary_key_or_its_subkey_is_trusted() {
        let sigs = Signature::parse(DEBIAN);
        assert_eq!(sigs.len(), 2, "{sigs:?}");
        assert_eq!(sigs[0].valid, Some((BOOKWORM.to_string(), 8)), "a subkey's signature names its primary key");
        assert_eq!(judge(&sigs, &[BOOKWORM.into()]), Ok(()));
        assert_eq!(judge(&sigs, &[RELEASE.into()]), Ok(()));
        let e = judge(&sigs, &["0".repeat(40)]).unwrap_err().0;
        assert!(e.contains(&format!("signed by key {BOOKWORM}, which the board file does not trust")) && e.contains(RELEASE), "{e}");
    }

    #[test]
    fn a_bad_signature_refuses_the_release_even_beside_a_good_one() {
        let bad = DEBIAN.replace("[GNUPG:] GOODSIG F8D2585B8783D481", "[GNUPG:] BADSIG F8D2585B8783D481");
        let bad = bad.lines().filter(|l| !l.contains("VALIDSIG 4D64")).collect::<Vec<_>>().join("\n");
        let (e, hint) = judge(&Signature::parse(&bad), &[BOOKWORM.into(), RELEASE.into()]).unwrap_err();
        assert_eq!(e, "gpgv: the signature by key F8D2585B8783D481 does not match the text");
        assert!(hint.contains("tampering"), "{hint}");
    }

    #[test]
    fn keys_missing_from_the_keyring_expired_or_weak_are_named() {
        let missing = "[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 6ED0E7B82643E131 1 8 01 1783765031 9 -\n[GNUPG:] NO_PUBKEY 6ED0E7B82643E131\n";
        let (e, hint) = judge(&Signature::parse(missing), &[BOOKWORM.into()]).unwrap_err();
        assert_eq!(e, "signed by key 6ED0E7B82643E131, which is not in {keyring}");
        assert!(hint.contains("debian-archive-keyring"), "{hint}");
        let expired = DEBIAN.replace("GOODSIG", "EXPKEYSIG");
        let e = judge(&Signature::parse(&expired), &[BOOKWORM.into()]).unwrap_err().0;
        assert!(e.contains("signed by key 6ED0E7B82643E131, whose key has expired"), "{e}");
        let sha1 = DEBIAN.replace(" 1 8 01 ", " 1 2 01 ").replace(" 22 8 01 ", " 22 2 01 ");
        let e = judge(&Signature::parse(&sha1), &[BOOKWORM.into()]).unwrap_err().0;
        assert!(e.contains(&format!("key {BOOKWORM} signed with the weak digest SHA-1")), "{e}");
        assert!(Signature::parse("gpgv: no signature found\n").is_empty());
    }

    /// tests/data/gpgv: an InRelease signed by two keys, a keyring with only the first.
    fn fixture() -> (PathBuf, Vec<u8>) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gpgv");
        (dir.join("archive.gpg"), std::fs::read(dir.join("InRelease")).unwrap())
    }
    const ARCHIVE: &str = "D775D2F62988DC13789FD8268A57F1DEBE1ADE3C";
    const NEWER: &str = "2D4AE75919FABF644697DEF73F4AD2C4CABBF51D";

    #[test]
    fn gpgv_failing_for_a_signature_whose_key_the_keyring_lacks_beside_a_trusted_good_one() {
        let (keyring, inrelease) = fixture();
        // gpgv exits 2 here (one signature cannot be checked); its status explains it.
        let v = Verifier::load(&keyring, &[ARCHIVE.into()]).unwrap().verify("u", &inrelease).unwrap();
        assert!(v.text.starts_with("Origin: meshos test\n"), "{}", v.text);
        assert_eq!(v.unknown_keys, [NEWER[24..].to_string()]);
        // Trusting only the key the keyring lacks, nothing verifies.
        let e = Verifier::load(&keyring, &[NEWER.into()]).unwrap().verify("u", &inrelease).unwrap_err().to_string();
        assert!(e.contains(&format!("signed by key {ARCHIVE}, which the board file does not trust")) && e.contains("not in"), "{e}");
        // A changed text fails the good signature.
        let tampered = String::from_utf8(inrelease).unwrap().replace("Suite: stable", "Suite: stabel");
        let e = Verifier::load(&keyring, &[ARCHIVE.into()]).unwrap().verify("u", tampered.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("BAD SIGNATURE") && e.contains("does not match the text"), "{e}");
    }

    #[test]
    fn a_failing_gpgv_is_trusted_only_where_its_status_explains_the_failure() {
        let sigs = Signature::parse(DEBIAN);
        assert!(unexplained_failure(&sigs, DEBIAN).unwrap().contains("every signature verified, yet it failed"));
        let with_failure = format!("{DEBIAN}[GNUPG:] FAILURE gpgv 33554433\n");
        assert_eq!(unexplained_failure(&sigs, &with_failure).as_deref(), Some("FAILURE gpgv 33554433"));
        // A signature gpgv could not check for another reason (an unknown algorithm: ERRSIG 4).
        let odd = format!("{DEBIAN}[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 3F4AD2C4CABBF51D 99 10 01 1796652137 4 -\n");
        let odd_sigs = Signature::parse(&odd);
        assert_eq!(judge(&odd_sigs, &[BOOKWORM.into()]), Ok(()), "judged alone it would pass");
        assert!(unexplained_failure(&odd_sigs, &odd).unwrap().contains("1 signature(s) neither good nor by a key the keyring lacks"));
        let missing = format!("{DEBIAN}[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 3F4AD2C4CABBF51D 22 10 01 1796652137 9 -\n[GNUPG:] NO_PUBKEY 3F4AD2C4CABBF51D\n");
        assert_eq!(unexplained_failure(&Signature::parse(&missing), &missing), None);
    }

    #[test]
    fn release_dates() {
        assert_eq!(parse_rfc2822("Thu, 01 Jan 1970 00:00:00 UTC"), Some(0));
        assert_eq!(parse_rfc2822("Sat, 21 Nov 2026 09:15:44 UTC"), Some(1_795_252_544));
        assert_eq!(parse_rfc2822("yesterday"), None);
    }
}
