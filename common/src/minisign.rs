//! Ed25519 signatures in minisign's format, so anyone can check a meshos image or bundle with
//! the stock `minisign -V` tool. The minisign author's crates do the format work:
//! `minisign-verify` (no dependencies) checks signatures on nodes and on the host; `minisign`
//! (the `sign` feature, host only) makes, encrypts and opens key files. Signing itself is
//! deterministic Ed25519 (see [`SecretKey`]). This module gives them one vocabulary: key ids
//! as minisign prints them, errors that say what to do, and signature files that keep their
//! text.
//!
//! Legacy signatures (over the file itself, `minisign -l`) are refused with a word on how to
//! sign again: nothing here makes them.

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("not a minisign {what}: {why}")]
    Format { what: &'static str, why: String },
    #[error("signed by key {signed_by}, not by the trusted key {trusted}")]
    WrongKey { signed_by: String, trusted: String },
    #[error("the signature does not match the data or its trusted comment: the file was changed, cut short, or signed by another key")]
    BadSignature,
    #[error("a legacy signature over the whole file (minisign -l): sign again with meshimg or a current minisign, which sign its BLAKE2b-512")]
    Legacy,
    #[error("wrong passphrase for the secret key (its checksum does not match)")]
    WrongPassphrase,
    #[error("the secret key is encrypted: give its passphrase")]
    NeedsPassphrase,
    #[error("{0}")]
    Key(String),
}

fn format_err(what: &'static str, why: impl fmt::Display) -> Error {
    Error::Format { what, why: why.to_string() }
}

const UNTRUSTED: &str = "untrusted comment: ";

/// The 8-byte key id, shown as minisign does (hex of the little-endian number).
pub fn key_id(keynum: &[u8; 8]) -> String {
    format!("{:016X}", u64::from_le_bytes(*keynum))
}

/// The key id in a key or signature line (base64 of a 2-byte algorithm, the 8-byte id, …):
/// what picks the trusted key for a signature, and what messages name.
fn keynum_of(line: &str, what: &'static str) -> Result<[u8; 8], Error> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(line.trim()).map_err(|e| format_err(what, format!("bad base64: {e}")))?;
    bytes.get(2..10).and_then(|b| b.try_into().ok()).ok_or_else(|| format_err(what, format!("{} bytes is too short", bytes.len())))
}

/// The line after the untrusted comment (or the only line).
fn payload_line<'a>(text: &'a str, what: &'static str) -> Result<&'a str, Error> {
    let mut lines = text.lines();
    let first = lines.next().ok_or_else(|| format_err(what, "empty file"))?;
    if first.starts_with(UNTRUSTED) {
        lines.next().ok_or_else(|| format_err(what, "no key or signature line after the comment"))
    } else {
        Ok(first)
    }
}

#[derive(Debug, Clone)]
pub struct PublicKey {
    pub keynum: [u8; 8],
    line: String,
    key: minisign_verify::PublicKey,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.line == other.line
    }
}

impl Eq for PublicKey {}

impl PublicKey {
    /// Reads a `.pub` file (or its base64 line alone).
    pub fn parse(text: &str) -> Result<PublicKey, Error> {
        let what = "public key";
        let line = payload_line(text, what)?.trim();
        let keynum = keynum_of(line, what)?;
        let key = minisign_verify::PublicKey::from_base64(line).map_err(|e| format_err(what, e))?;
        Ok(PublicKey { keynum, line: line.to_string(), key })
    }

    pub fn id(&self) -> String {
        key_id(&self.keynum)
    }

    /// The `.pub` file's text.
    pub fn render(&self) -> String {
        format!("{UNTRUSTED}minisign public key {}\n{}\n", self.id(), self.line)
    }

    /// Checks `sig` over `data`; returns the trusted comment.
    pub fn verify(&self, data: &[u8], sig: &SignatureFile) -> Result<String, Error> {
        if sig.keynum != self.keynum {
            return Err(Error::WrongKey { signed_by: key_id(&sig.keynum), trusted: self.id() });
        }
        match self.key.verify(data, &sig.signature, false) {
            Ok(()) => Ok(sig.trusted_comment.clone()),
            Err(minisign_verify::Error::UnexpectedAlgorithm) => Err(Error::Legacy),
            Err(_) => Err(Error::BadSignature),
        }
    }
}

/// A `.minisig` file: parsed for checking, its text kept as written.
#[derive(Clone)]
pub struct SignatureFile {
    pub keynum: [u8; 8],
    pub trusted_comment: String,
    text: String,
    signature: minisign_verify::Signature,
}

impl fmt::Debug for SignatureFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureFile").field("key", &key_id(&self.keynum)).field("trusted_comment", &self.trusted_comment).finish()
    }
}

impl SignatureFile {
    pub fn parse(text: &str) -> Result<SignatureFile, Error> {
        let what = "signature";
        if !text.starts_with(UNTRUSTED) {
            return Err(format_err(what, "first line is not 'untrusted comment: …'"));
        }
        let keynum = keynum_of(payload_line(text, what)?, what)?;
        let lines = text.lines().count();
        if lines < 4 {
            return Err(format_err(what, format!("{lines} lines: a signature has four (comment, signature, trusted comment, global signature)")));
        }
        let signature = minisign_verify::Signature::decode(text).map_err(|e| format_err(what, e))?;
        let text: String = text.lines().take(4).flat_map(|l| [l, "\n"]).collect();
        Ok(SignatureFile { keynum, trusted_comment: signature.trusted_comment().to_string(), text, signature })
    }

    /// The `.minisig` file's text.
    pub fn render(&self) -> String {
        self.text.clone()
    }
}

impl fmt::Display for SignatureFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(any(test, feature = "sign"))]
pub use signing::{new_key_pair, SecretKey};

#[cfg(any(test, feature = "sign"))]
mod signing {
    use super::{format_err, Error, PublicKey, SignatureFile, UNTRUSTED};
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    use blake2::{Blake2b512, Digest};
    use ed25519_dalek::{Signer, SigningKey};

    fn key_err(e: minisign::PError) -> Error {
        Error::Key(format!("minisign: {e}"))
    }

    /// A secret key, decrypted. The `minisign` crate reads and writes key files (scrypt,
    /// checksum, encryption); signing is Ed25519's own deterministic signature, because
    /// minisign's are hedged (randomised) and a signed image carries its bundle's signature:
    /// two builds of one commit with one key must give the same bytes.
    pub struct SecretKey {
        pub keynum: [u8; 8],
        key: SigningKey,
        public: PublicKey,
    }

    impl SecretKey {
        fn new(key: &minisign::SecretKey) -> Result<SecretKey, Error> {
            let public = minisign::PublicKey::from_secret_key(key).map_err(key_err)?;
            // minisign's secret key layout: `Ed`, kdf[2], `B2`, salt[32], opslimit[8],
            // memlimit[8], then keynum[8] and the Ed25519 key pair[64] (decrypted here).
            let bytes = zeroize::Zeroizing::new(key.to_bytes());
            let pair: &[u8; 64] = bytes[62..126].try_into().map_err(|_| format_err("secret key", "too short"))?;
            Ok(SecretKey {
                keynum: bytes[54..62].try_into().expect("8 bytes"),
                key: SigningKey::from_keypair_bytes(pair).map_err(|e| format_err("secret key", e))?,
                public: PublicKey::parse(&public.to_base64())?,
            })
        }

        /// A new unencrypted key pair from the operating system's randomness.
        pub fn generate() -> Result<SecretKey, Error> {
            SecretKey::new(&minisign::KeyPair::generate_unencrypted_keypair().map_err(key_err)?.sk)
        }

        pub fn public(&self) -> PublicKey {
            self.public.clone()
        }

        /// Reads a secret key file; `passphrase` is needed when it is encrypted.
        pub fn parse(text: &str, passphrase: Option<&str>) -> Result<SecretKey, Error> {
            let what = "secret key";
            // The key derivation named after the algorithm: none (zeros) or scrypt.
            let line = super::payload_line(text, what)?;
            let raw = B64.decode(line.trim()).map_err(|e| format_err(what, format!("bad base64: {e}")))?;
            let encrypted = raw.get(2..4) != Some(&[0, 0][..]);
            let boxed = minisign::SecretKeyBox::from_string(text).map_err(|e| format_err(what, e))?;
            let key = match (encrypted, passphrase) {
                (false, _) => boxed.into_unencrypted_secret_key().map_err(|e| format_err(what, e))?,
                (true, None) => return Err(Error::NeedsPassphrase),
                (true, Some(p)) => boxed.into_secret_key(Some(p.to_string())).map_err(|e| match e.kind() {
                    minisign::ErrorKind::Verify => Error::WrongPassphrase,
                    _ => format_err(what, e),
                })?,
            };
            SecretKey::new(&key)
        }

        /// Signs `data` as minisign does by default (its BLAKE2b-512); the trusted comment is
        /// signed too (the global signature), and minisign prints it on verification.
        pub fn sign(&self, data: &[u8], untrusted_comment: &str, trusted_comment: &str) -> SignatureFile {
            let signature = self.key.sign(&Blake2b512::digest(data)).to_bytes();
            let mut global = signature.to_vec();
            global.extend_from_slice(trusted_comment.as_bytes());
            let global = self.key.sign(&global).to_bytes();
            let line = [&b"ED"[..], &self.keynum, &signature].concat();
            let text = format!("{UNTRUSTED}{untrusted_comment}\n{}\ntrusted comment: {trusted_comment}\n{}\n", B64.encode(line), B64.encode(global));
            SignatureFile::parse(&text).expect("a signature made here parses")
        }
    }

    /// A new key pair: the secret key file's text, encrypted with `passphrase` at minisign's
    /// own scrypt cost (about 1 GiB and a few seconds) or unencrypted when `None`, and the
    /// public key.
    pub fn new_key_pair(passphrase: Option<&str>) -> Result<(String, PublicKey), Error> {
        let pair = match passphrase {
            Some(p) => minisign::KeyPair::generate_encrypted_keypair(Some(p.to_string())),
            None => minisign::KeyPair::generate_unencrypted_keypair(),
        }
        .map_err(key_err)?;
        let kind = if passphrase.is_some() { "encrypted" } else { "unencrypted" };
        let text = pair.sk.to_box(Some(&format!("minisign {kind} secret key"))).map_err(key_err)?.into_string();
        let public = PublicKey::parse(&pair.pk.to_base64())?;
        Ok((text, public))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_round_trip_and_failures() {
        let sk = SecretKey::generate().unwrap();
        let pk = PublicKey::parse(&sk.public().render()).unwrap();
        assert_eq!(pk, sk.public());
        let sig = sk.sign(b"image bytes", "signature from meshimg", "timestamp:0\tfile:x.img.xz");
        let parsed = SignatureFile::parse(&sig.render()).unwrap();
        assert_eq!(parsed.render(), sig.render());
        assert_eq!(pk.verify(b"image bytes", &parsed).unwrap(), "timestamp:0\tfile:x.img.xz");
        assert_eq!(pk.verify(b"image bytez", &parsed), Err(Error::BadSignature));
        assert_eq!(pk.verify(b"image", &parsed), Err(Error::BadSignature));

        let forged = sig.render().replace("file:x.img.xz", "file:other.img.xz");
        assert_eq!(pk.verify(b"image bytes", &SignatureFile::parse(&forged).unwrap()), Err(Error::BadSignature));

        let other = SecretKey::generate().unwrap().public();
        assert!(matches!(other.verify(b"image bytes", &parsed), Err(Error::WrongKey { .. })));

        // Deterministic: a rebuild signs to the same bytes.
        assert_eq!(sk.sign(b"image bytes", "signature from meshimg", "timestamp:0\tfile:x.img.xz").render(), sig.render());
    }

    #[test]
    fn secret_keys_round_trip_unencrypted_and_refuse_without_passphrase() {
        let (text, public) = new_key_pair(None).unwrap();
        let sk = SecretKey::parse(&text, None).unwrap();
        assert_eq!(sk.public(), public);
        // An encrypted key's scrypt costs 1 GiB: tests/signing.rs in meshimg opens one with the
        // stock tool; here only the refusal without a passphrase, which costs nothing.
        let mut b = decode_line(&text);
        b[2..4].copy_from_slice(b"Sc");
        let sealed = format!("{UNTRUSTED}x\n{}\n", encode(&b));
        assert_eq!(SecretKey::parse(&sealed, None).err(), Some(Error::NeedsPassphrase));
    }

    fn decode_line(text: &str) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(text.lines().nth(1).unwrap()).unwrap()
    }

    fn encode(b: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn malformed_files_say_what_is_wrong() {
        assert!(PublicKey::parse("untrusted comment: x\nnot base64!\n").unwrap_err().to_string().contains("bad base64"));
        assert!(SignatureFile::parse("hello").unwrap_err().to_string().contains("untrusted comment"));
        let sk = SecretKey::generate().unwrap();
        let sig = sk.sign(b"x", "c", "t").render();
        let cut: String = sig.lines().take(3).map(|l| format!("{l}\n")).collect();
        assert!(SignatureFile::parse(&cut).unwrap_err().to_string().contains("four"));

        // The same signature marked legacy (`Ed`, over the file itself), or with an unknown algorithm.
        let retag = |alg: &[u8; 2]| {
            let mut lines: Vec<String> = sig.lines().map(String::from).collect();
            let mut b = decode_line(&sig);
            b[..2].copy_from_slice(alg);
            lines[1] = encode(&b);
            lines.join("\n")
        };
        let legacy = SignatureFile::parse(&retag(b"Ed")).unwrap();
        assert_eq!(sk.public().verify(b"x", &legacy), Err(Error::Legacy));
        assert!(SignatureFile::parse(&retag(b"XX")).unwrap_err().to_string().contains("not supported"));
    }
}
