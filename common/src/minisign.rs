//! Ed25519 signatures in minisign's format, so anyone can check a meshos image or bundle with
//! the stock `minisign -V` tool, and nodes check bundles with the same code the builder signs
//! with.
//!
//! Files, as minisign writes them:
//! - public key: `untrusted comment: …` then base64(`Ed` keynum[8] pk[32]);
//! - secret key: `untrusted comment: …` then base64(`Ed` kdf[2] `B2` salt[32] opslimit[8]
//!   memlimit[8] then keynum[8] sk[64] chk[32], that last part XORed with an scrypt stream of
//!   the passphrase when kdf is `Sc`; kdf `\0\0` is an unencrypted key);
//! - signature: `untrusted comment: …`, base64(`ED` keynum[8] sig[64]) where sig signs the
//!   BLAKE2b-512 of the file, `trusted comment: …`, base64(global signature over sig and the
//!   trusted comment). Legacy signatures (`Ed`, over the file itself, made by `minisign -l`)
//!   are refused with a word on how to sign again: nothing here makes them.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use blake2::digest::consts::U32;
use blake2::{Blake2b, Blake2b512, Digest};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use std::fmt;
use zeroize::Zeroizing;

const ALG: &[u8; 2] = b"Ed";
const ALG_PREHASHED: &[u8; 2] = b"ED";
const KDF_SCRYPT: &[u8; 2] = b"Sc";
const KDF_NONE: &[u8; 2] = b"\0\0";
const CHK_ALG: &[u8; 2] = b"B2";
const UNTRUSTED: &str = "untrusted comment: ";
const TRUSTED: &str = "trusted comment: ";
/// minisign's defaults (libsodium's "sensitive" scrypt limits): about 1 GiB and a few seconds.
pub const OPSLIMIT: u64 = 33_554_432;
pub const MEMLIMIT: u64 = 1_073_741_824;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("not a minisign {what}: {why}")]
    Format { what: &'static str, why: String },
    #[error("signed by key {signed_by}, not by the trusted key {trusted}")]
    WrongKey { signed_by: String, trusted: String },
    #[error("the signature does not match the data: the file was changed, cut short, or signed by another key")]
    BadSignature,
    #[error("the trusted comment was changed after signing")]
    BadTrustedComment,
    #[error("wrong passphrase for the secret key (its checksum does not match)")]
    WrongPassphrase,
    #[error("the secret key is encrypted: give its passphrase")]
    NeedsPassphrase,
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

fn format_err(what: &'static str, why: impl Into<String>) -> Error {
    Error::Format { what, why: why.into() }
}

/// The second line of a minisign file (the first is the untrusted comment), base64-decoded.
fn payload(text: &str, what: &'static str) -> Result<(Vec<u8>, usize), Error> {
    let mut lines = text.lines();
    let first = lines.next().ok_or_else(|| format_err(what, "empty file"))?;
    let (skip, line) = if first.starts_with(UNTRUSTED) { (1, lines.next()) } else { (0, Some(first)) };
    let line = line.ok_or_else(|| format_err(what, "no key or signature line after the comment"))?;
    let bytes = B64.decode(line.trim()).map_err(|e| format_err(what, format!("bad base64: {e}")))?;
    Ok((bytes, skip + 1))
}

/// The 8-byte key id, shown as minisign does (hex of the little-endian number).
pub fn key_id(keynum: &[u8; 8]) -> String {
    format!("{:016X}", u64::from_le_bytes(*keynum))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub keynum: [u8; 8],
    key: VerifyingKey,
}

impl PublicKey {
    /// Reads a `.pub` file (or its base64 line alone).
    pub fn parse(text: &str) -> Result<PublicKey, Error> {
        let (b, _) = payload(text, "public key")?;
        if b.len() != 42 || &b[..2] != ALG {
            return Err(format_err("public key", format!("expected 42 bytes starting 'Ed', got {} bytes", b.len())));
        }
        let key = VerifyingKey::from_bytes(b[10..42].try_into().expect("32 bytes")).map_err(|e| format_err("public key", e.to_string()))?;
        Ok(PublicKey { keynum: b[2..10].try_into().expect("8 bytes"), key })
    }

    pub fn id(&self) -> String {
        key_id(&self.keynum)
    }

    /// The `.pub` file's text.
    pub fn render(&self) -> String {
        let mut b = Vec::with_capacity(42);
        b.extend_from_slice(ALG);
        b.extend_from_slice(&self.keynum);
        b.extend_from_slice(self.key.as_bytes());
        format!("{UNTRUSTED}minisign public key {}\n{}\n", self.id(), B64.encode(b))
    }

    /// Checks `sig` over `data`; returns the trusted comment.
    pub fn verify(&self, data: &[u8], sig: &SignatureFile) -> Result<String, Error> {
        self.verify_prehashed(&MessageDigest(Blake2b512::digest(data).to_vec()), sig)
    }

    /// Checks a signature whose message the caller hashed (BLAKE2b-512) while streaming it.
    pub fn verify_prehashed(&self, digest: &MessageDigest, sig: &SignatureFile) -> Result<String, Error> {
        if sig.keynum != self.keynum {
            return Err(Error::WrongKey { signed_by: key_id(&sig.keynum), trusted: self.id() });
        }
        self.key.verify(&digest.0, &sig.signature).map_err(|_| Error::BadSignature)?;
        let mut global = sig.signature.to_bytes().to_vec();
        global.extend_from_slice(sig.trusted_comment.as_bytes());
        self.key.verify(&global, &sig.global_signature).map_err(|_| Error::BadTrustedComment)?;
        Ok(sig.trusted_comment.clone())
    }
}

/// What a signature covers: the file's BLAKE2b-512.
pub struct MessageDigest(Vec<u8>);

/// Hashes data as it streams past, for [`PublicKey::verify_prehashed`].
pub struct StreamingDigest(Blake2b512);

impl Default for StreamingDigest {
    fn default() -> Self {
        StreamingDigest(Blake2b512::new())
    }
}

impl StreamingDigest {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> MessageDigest {
        MessageDigest(self.0.finalize().to_vec())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureFile {
    pub untrusted_comment: String,
    pub keynum: [u8; 8],
    signature: Signature,
    pub trusted_comment: String,
    global_signature: Signature,
}

impl SignatureFile {
    pub fn parse(text: &str) -> Result<SignatureFile, Error> {
        let what = "signature";
        let lines: Vec<&str> = text.lines().collect();
        let untrusted_comment =
            lines.first().and_then(|l| l.strip_prefix(UNTRUSTED)).ok_or_else(|| format_err(what, "first line is not 'untrusted comment: …'"))?;
        let (b, used) = payload(text, what)?;
        if b.len() != 74 {
            return Err(format_err(what, format!("expected 74 bytes, got {}", b.len())));
        }
        if &b[..2] == ALG {
            return Err(format_err(
                what,
                "a legacy signature over the whole file (minisign -l): sign again with meshimg or a current minisign, which sign its BLAKE2b-512",
            ));
        }
        if &b[..2] != ALG_PREHASHED {
            return Err(format_err(what, format!("unknown signature algorithm {:?} (expected 'ED')", String::from_utf8_lossy(&b[..2]))));
        }
        let trusted_comment = lines.get(used).and_then(|l| l.strip_prefix(TRUSTED)).ok_or_else(|| format_err(what, "no 'trusted comment: …' line"))?;
        let global = lines.get(used + 1).ok_or_else(|| format_err(what, "no global signature line"))?;
        let global = B64.decode(global.trim()).map_err(|e| format_err(what, format!("bad base64: {e}")))?;
        let global: [u8; 64] = global.try_into().map_err(|_| format_err(what, "global signature is not 64 bytes"))?;
        Ok(SignatureFile {
            untrusted_comment: untrusted_comment.to_string(),
            keynum: b[2..10].try_into().expect("8 bytes"),
            signature: Signature::from_bytes(b[10..74].try_into().expect("64 bytes")),
            trusted_comment: trusted_comment.to_string(),
            global_signature: Signature::from_bytes(&global),
        })
    }

    /// The `.minisig` file's text.
    pub fn render(&self) -> String {
        let mut b = Vec::with_capacity(74);
        b.extend_from_slice(ALG_PREHASHED);
        b.extend_from_slice(&self.keynum);
        b.extend_from_slice(&self.signature.to_bytes());
        format!(
            "{UNTRUSTED}{}\n{}\n{TRUSTED}{}\n{}\n",
            self.untrusted_comment,
            B64.encode(b),
            self.trusted_comment,
            B64.encode(self.global_signature.to_bytes())
        )
    }
}

impl fmt::Display for SignatureFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// A secret key, decrypted.
pub struct SecretKey {
    pub keynum: [u8; 8],
    key: SigningKey,
}

fn checksum(keynum: &[u8; 8], sk: &[u8; 64]) -> [u8; 32] {
    let mut h = Blake2b::<U32>::new();
    h.update(ALG);
    h.update(keynum);
    h.update(sk);
    h.finalize().into()
}

impl SecretKey {
    pub fn public(&self) -> PublicKey {
        PublicKey { keynum: self.keynum, key: self.key.verifying_key() }
    }

    /// Reads a secret key file; `passphrase` is needed when it is encrypted.
    pub fn parse(text: &str, passphrase: Option<&str>) -> Result<SecretKey, Error> {
        let what = "secret key";
        let (b, _) = payload(text, what)?;
        // Decrypted below: wiped when dropped, like everything else that holds the key.
        let mut b = Zeroizing::new(b);
        if b.len() != 158 {
            return Err(format_err(what, format!("expected 158 bytes, got {}", b.len())));
        }
        if &b[..2] != ALG {
            return Err(format_err(what, format!("unknown signature algorithm {:?} (expected 'Ed')", String::from_utf8_lossy(&b[..2]))));
        }
        if &b[4..6] != CHK_ALG {
            return Err(format_err(what, format!("unknown checksum algorithm {:?} (expected 'B2')", String::from_utf8_lossy(&b[4..6]))));
        }
        let kdf: [u8; 2] = b[2..4].try_into().expect("2 bytes");
        if &kdf == KDF_SCRYPT {
            let passphrase = passphrase.ok_or(Error::NeedsPassphrase)?;
            let salt: [u8; 32] = b[6..38].try_into().expect("32 bytes");
            let ops = u64::from_le_bytes(b[38..46].try_into().expect("8 bytes"));
            let mem = u64::from_le_bytes(b[46..54].try_into().expect("8 bytes"));
            let stream = Zeroizing::new(kdf_stream(passphrase, &salt, ops, mem)?);
            for (x, s) in b[54..].iter_mut().zip(stream.iter()) {
                *x ^= s;
            }
        } else if &kdf != KDF_NONE {
            return Err(format_err(what, "unknown key derivation (neither scrypt nor none)"));
        }
        let keynum: [u8; 8] = b[54..62].try_into().expect("8 bytes");
        let sk = Zeroizing::new(<[u8; 64]>::try_from(&b[62..126]).expect("64 bytes"));
        if checksum(&keynum, &sk) != b[126..158] {
            return Err(if &kdf == KDF_SCRYPT { Error::WrongPassphrase } else { format_err(what, "checksum does not match (damaged file)") });
        }
        let key = SigningKey::from_keypair_bytes(&sk).map_err(|e| format_err(what, e.to_string()))?;
        Ok(SecretKey { keynum, key })
    }

    /// Signs `data` (prehashed, as minisign does by default). The trusted comment is signed
    /// too; minisign prints it on verification.
    pub fn sign(&self, data: &[u8], untrusted_comment: &str, trusted_comment: &str) -> SignatureFile {
        let signature = self.key.sign(&Blake2b512::digest(data));
        let mut global = signature.to_bytes().to_vec();
        global.extend_from_slice(trusted_comment.as_bytes());
        SignatureFile {
            untrusted_comment: untrusted_comment.to_string(),
            keynum: self.keynum,
            signature,
            trusted_comment: trusted_comment.to_string(),
            global_signature: self.key.sign(&global),
        }
    }
}

#[cfg(any(test, feature = "sign"))]
impl SecretKey {
    /// A new key pair from the operating system's randomness.
    pub fn generate() -> Result<SecretKey, Error> {
        let mut seed = [0u8; 32];
        let mut keynum = [0u8; 8];
        getrandom::getrandom(&mut seed).and_then(|()| getrandom::getrandom(&mut keynum)).map_err(|e| Error::Random(e.to_string()))?;
        Ok(SecretKey { keynum, key: SigningKey::from_bytes(&seed) })
    }

    /// The secret key file's text: encrypted with `passphrase` (scrypt at minisign's default
    /// cost), or unencrypted when `None`.
    pub fn render(&self, passphrase: Option<&str>) -> Result<String, Error> {
        let sk = Zeroizing::new(self.key.to_keypair_bytes());
        let mut b = Zeroizing::new(Vec::with_capacity(158));
        b.extend_from_slice(ALG);
        b.extend_from_slice(if passphrase.is_some() { KDF_SCRYPT } else { KDF_NONE });
        b.extend_from_slice(CHK_ALG);
        let mut salt = [0u8; 32];
        let (ops, mem) = if passphrase.is_some() {
            getrandom::getrandom(&mut salt).map_err(|e| Error::Random(e.to_string()))?;
            (OPSLIMIT, MEMLIMIT)
        } else {
            (0, 0)
        };
        b.extend_from_slice(&salt);
        b.extend_from_slice(&ops.to_le_bytes());
        b.extend_from_slice(&mem.to_le_bytes());
        let mut secret = Zeroizing::new(Vec::with_capacity(104));
        secret.extend_from_slice(&self.keynum);
        secret.extend_from_slice(sk.as_ref());
        secret.extend_from_slice(&checksum(&self.keynum, &sk));
        if let Some(p) = passphrase {
            let stream = Zeroizing::new(kdf_stream(p, &salt, ops, mem)?);
            for (x, s) in secret.iter_mut().zip(stream.iter()) {
                *x ^= s;
            }
        }
        b.extend_from_slice(&secret);
        let kind = if passphrase.is_some() { "encrypted" } else { "unencrypted" };
        Ok(format!("{UNTRUSTED}minisign {kind} secret key\n{}\n", B64.encode(b)))
    }
}

/// libsodium's crypto_pwhash_scryptsalsa208sha256 output stream for the secret part: scrypt
/// with N, r, p chosen from opslimit/memlimit exactly as libsodium's `pickparams` does.
#[cfg(any(test, feature = "sign"))]
fn kdf_stream(passphrase: &str, salt: &[u8; 32], opslimit: u64, memlimit: u64) -> Result<Vec<u8>, Error> {
    let (log_n, r, p) = scrypt_params(opslimit, memlimit);
    let params = scrypt::Params::new(log_n, r, p, scrypt::Params::RECOMMENDED_LEN).map_err(|e| format_err("secret key", format!("scrypt parameters: {e}")))?;
    let mut out = vec![0u8; 104];
    scrypt::scrypt(passphrase.as_bytes(), salt, &params, &mut out).map_err(|e| format_err("secret key", format!("scrypt: {e}")))?;
    Ok(out)
}

#[cfg(not(any(test, feature = "sign")))]
fn kdf_stream(_: &str, _: &[u8; 32], _: u64, _: u64) -> Result<Vec<u8>, Error> {
    Err(format_err("secret key", "encrypted keys are opened by the host tool only"))
}

#[cfg(any(test, feature = "sign"))]
fn scrypt_params(opslimit: u64, memlimit: u64) -> (u8, u32, u32) {
    let opslimit = opslimit.max(32768);
    let r: u64 = 8;
    let below = |max_n: u64| (1u8..63).find(|n| (1u64 << n) > max_n / 2).unwrap_or(63);
    if opslimit < memlimit / 32 {
        (below(opslimit / (r * 4)), r as u32, 1)
    } else {
        let log_n = below(memlimit / (r * 128));
        let max_rp = ((opslimit / 4) / (1u64 << log_n)).min(0x3fff_ffff);
        (log_n, r as u32, (max_rp / r) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_round_trip_and_failures() {
        let sk = SecretKey::generate().unwrap();
        let pk = PublicKey::parse(&sk.public().render()).unwrap();
        let sig = sk.sign(b"image bytes", "signature from meshimg", "timestamp:0\tfile:x.img.xz");
        let parsed = SignatureFile::parse(&sig.render()).unwrap();
        assert_eq!(parsed, sig);
        assert_eq!(pk.verify(b"image bytes", &parsed).unwrap(), "timestamp:0\tfile:x.img.xz");
        assert_eq!(pk.verify(b"image bytez", &parsed), Err(Error::BadSignature));
        assert_eq!(pk.verify(b"image", &parsed), Err(Error::BadSignature));

        let mut forged = parsed.clone();
        forged.trusted_comment = "timestamp:0\tfile:other.img.xz".into();
        assert_eq!(pk.verify(b"image bytes", &forged), Err(Error::BadTrustedComment));

        let other = SecretKey::generate().unwrap().public();
        assert!(matches!(other.verify(b"image bytes", &parsed), Err(Error::WrongKey { .. })));

        let mut stream = StreamingDigest::default();
        stream.update(b"image ");
        stream.update(b"bytes");
        assert!(pk.verify_prehashed(&stream.finish(), &parsed).is_ok());
    }

    #[test]
    fn secret_keys_round_trip_encrypted_and_not() {
        let sk = SecretKey::generate().unwrap();
        let plain = SecretKey::parse(&sk.render(None).unwrap(), None).unwrap();
        assert_eq!(plain.public(), sk.public());
        // A cheap cost keeps the test fast; the file records it, so reading follows it.
        let text = render_with_cost(&sk, "correct horse", 65536, 1 << 20);
        assert_eq!(SecretKey::parse(&text, Some("correct horse")).unwrap().public(), sk.public());
        assert_eq!(SecretKey::parse(&text, Some("wrong")).err(), Some(Error::WrongPassphrase));
        assert_eq!(SecretKey::parse(&text, None).err(), Some(Error::NeedsPassphrase));
    }

    fn render_with_cost(sk: &SecretKey, pass: &str, ops: u64, mem: u64) -> String {
        let mut b = B64.decode(sk.render(None).unwrap().lines().nth(1).unwrap()).unwrap();
        b[2..4].copy_from_slice(KDF_SCRYPT);
        b[6..38].copy_from_slice(&[7u8; 32]);
        b[38..46].copy_from_slice(&ops.to_le_bytes());
        b[46..54].copy_from_slice(&mem.to_le_bytes());
        for (x, s) in b[54..].iter_mut().zip(kdf_stream(pass, &[7u8; 32], ops, mem).unwrap()) {
            *x ^= s;
        }
        format!("{UNTRUSTED}test\n{}\n", B64.encode(b))
    }

    #[test]
    fn scrypt_parameters_follow_libsodium() {
        // minisign's default: N = 2^20, r = 8, p = 1 (1 GiB).
        assert_eq!(scrypt_params(OPSLIMIT, MEMLIMIT), (20, 8, 1));
        // libsodium's interactive limits: N = 2^14, r = 8, p = 1.
        assert_eq!(scrypt_params(524_288, 16_777_216), (14, 8, 1));
    }

    #[test]
    fn malformed_files_say_what_is_wrong() {
        assert!(PublicKey::parse("untrusted comment: x\nnot base64!\n").unwrap_err().to_string().contains("bad base64"));
        assert!(SignatureFile::parse("hello").unwrap_err().to_string().contains("untrusted comment"));
        let sk = SecretKey::generate().unwrap();
        let sig = sk.sign(b"x", "c", "t").render();
        let cut: String = sig.lines().take(3).map(|l| format!("{l}\n")).collect();
        assert!(SignatureFile::parse(&cut).unwrap_err().to_string().contains("global signature"));

        // The same signature marked legacy (`Ed`, over the file itself), or with an unknown algorithm.
        let retag = |alg: &[u8; 2]| {
            let mut lines: Vec<String> = sig.lines().map(String::from).collect();
            let mut b = B64.decode(&lines[1]).unwrap();
            b[..2].copy_from_slice(alg);
            lines[1] = B64.encode(b);
            lines.join("\n")
        };
        assert!(SignatureFile::parse(&retag(b"Ed")).unwrap_err().to_string().contains("legacy signature"));
        assert!(SignatureFile::parse(&retag(b"XX")).unwrap_err().to_string().contains("unknown signature algorithm \"XX\""));

        // A secret key with an unknown checksum algorithm says so, not that its length is wrong.
        let mut b = B64.decode(sk.render(None).unwrap().lines().nth(1).unwrap()).unwrap();
        b[4..6].copy_from_slice(b"S2");
        let text = format!("{UNTRUSTED}x\n{}\n", B64.encode(b));
        assert!(SecretKey::parse(&text, None).err().unwrap().to_string().contains("unknown checksum algorithm \"S2\""));
    }
}
