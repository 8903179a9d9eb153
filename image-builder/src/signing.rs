//! Signing keys on the host: making them (`meshimg keygen`), opening them to sign images and
//! bundles, checking signatures (`meshimg verify`), and the public keys an image trusts.
//! The format is minisign's (meshos_common::minisign), so `minisign -V` checks our files.

use meshos_common::minisign::{new_key_pair, PublicKey, SecretKey, SignatureFile};
use std::fs;
use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where a passphrase can come from when no one is at a terminal (CI, scripts).
pub const PASSPHRASE_ENV: &str = "MESHOS_SIGN_PASSPHRASE";
/// Public keys every image of the project trusts, one `<name>.pub` each.
pub const KEYS_DIR: &str = "board-defs/keys";
/// Where an image keeps the public keys its nodes accept bundles from.
pub const IMAGE_KEYS_DIR: &str = "usr/share/meshos/keys";
/// Where an image keeps how many of those keys must have signed a bundle (absent: one).
pub const IMAGE_REQUIRED_FILE: &str = "usr/share/meshos/signatures-required";

/// Whom an image's nodes trust: these keys, at least `required` of them on each release.
#[derive(Debug, Clone)]
pub struct Trust {
    pub keys: Vec<PublicKey>,
    pub required: usize,
}

impl Trust {
    /// The files that say it in the image: each key as `<id>.pub`, and the threshold when it is
    /// more than one.
    pub fn files(&self) -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = self.keys.iter().map(|k| (format!("{IMAGE_KEYS_DIR}/{}.pub", k.id()), k.render())).collect();
        if self.required > 1 {
            files.push((IMAGE_REQUIRED_FILE.into(), format!("{}\n", self.required)));
        }
        files
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    // Causes are named `reason`, not `source`: the message already carries them, and the
    // error chain printer would repeat a `source`.
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: std::io::Error },
    #[error("{path}: {reason}")]
    Key { path: PathBuf, reason: meshos_common::minisign::Error },
    #[error("{path}: already exists; pass --force to replace it (the old key's signatures will no longer be checkable with the new key)")]
    Exists { path: PathBuf },
    #[error("{path} is encrypted and there is no terminal to ask for its passphrase\nhint: set {PASSPHRASE_ENV}, or make a CI key with 'meshimg keygen --unencrypted'")]
    NoPassphrase { path: PathBuf },
    #[error("the two passphrases differ")]
    PassphraseMismatch,
    #[error("{path}: no public key beside the secret key (expected {pub_path})\nhint: keygen writes both; copy the .pub next to the key")]
    NoPublic { path: PathBuf, pub_path: PathBuf },
    #[error("{file}: {reason}")]
    Verify { file: PathBuf, reason: meshos_common::minisign::Error },
    #[error("{file}: not signed by any trusted key ({tried})")]
    Untrusted { file: PathBuf, tried: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SigningError + '_ {
    move |reason| SigningError::Io { path: path.into(), reason }
}

pub fn public_path(secret: &Path) -> PathBuf {
    let mut p = secret.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

pub fn signature_path(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".minisig");
    PathBuf::from(p)
}

fn ask(prompt: &str) -> Result<String, SigningError> {
    rpassword::prompt_password(prompt).map_err(io(Path::new("/dev/tty")))
}

/// Makes a key pair: the secret key at `output` (mode 0600), the public key at `output.pub`.
pub fn keygen(output: &Path, unencrypted: bool, force: bool) -> Result<PublicKey, SigningError> {
    let pub_path = public_path(output);
    for p in [output, pub_path.as_path()] {
        if p.exists() && !force {
            return Err(SigningError::Exists { path: p.into() });
        }
    }
    let passphrase = if unencrypted {
        None
    } else if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        Some(p)
    } else if std::io::stdin().is_terminal() {
        let first = ask("passphrase for the new secret key: ")?;
        if ask("the same again: ")? != first {
            return Err(SigningError::PassphraseMismatch);
        }
        Some(first)
    } else {
        return Err(SigningError::NoPassphrase { path: output.into() });
    };
    let (text, public) = new_key_pair(passphrase.as_deref()).map_err(|reason| SigningError::Key { path: output.into(), reason })?;
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    // A file of its own (a new name, created exclusively, mode 0600), never one that was there:
    // a planted file keeps its permissions when written, a planted symlink leads elsewhere.
    let dir = output.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut f = tempfile::Builder::new().prefix(".meshimg-key").permissions(fs::Permissions::from_mode(0o600)).tempfile_in(dir).map_err(io(dir))?;
    std::io::Write::write_all(&mut f, text.as_bytes()).map_err(io(f.path()))?;
    f.persist(output).map_err(|e| SigningError::Io { path: output.into(), reason: e.error })?;
    fs::write(&pub_path, public.render()).map_err(io(&pub_path))?;
    Ok(public)
}

/// Opens a secret key, asking for its passphrase (environment, then terminal) when encrypted.
pub fn open_secret(path: &Path) -> Result<SecretKey, SigningError> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    let kerr = |reason| SigningError::Key { path: path.into(), reason };
    match SecretKey::parse(&text, None) {
        Err(meshos_common::minisign::Error::NeedsPassphrase) => {}
        other => return other.map_err(kerr),
    }
    let passphrase = match std::env::var(PASSPHRASE_ENV) {
        Ok(p) => p,
        Err(_) if std::io::stdin().is_terminal() => ask(&format!("passphrase for {}: ", path.display()))?,
        Err(_) => return Err(SigningError::NoPassphrase { path: path.into() }),
    };
    SecretKey::parse(&text, Some(&passphrase)).map_err(kerr)
}

/// The public key of a secret key file, from the `.pub` beside it (no passphrase needed).
pub fn public_of(secret: &Path) -> Result<PublicKey, SigningError> {
    let pub_path = public_path(secret);
    if !pub_path.exists() {
        return Err(SigningError::NoPublic { path: secret.into(), pub_path });
    }
    read_public(&pub_path)
}

pub fn read_public(path: &Path) -> Result<PublicKey, SigningError> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    PublicKey::parse(&text).map_err(|reason| SigningError::Key { path: path.into(), reason })
}

/// Signs `file` into `file.minisig`, minisign's trusted comment with a fixed timestamp (the
/// build's SOURCE_DATE_EPOCH) and a deterministic signature, so a rebuild signs to the same bytes.
pub fn sign_file(file: &Path, key: &SecretKey, timestamp: i64) -> Result<PathBuf, SigningError> {
    let data = fs::read(file).map_err(io(file))?;
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let sig = key.sign(&data, "signature from meshimg secret key", &format!("timestamp:{timestamp}\tfile:{name}\thashed"));
    let out = signature_path(file);
    fs::write(&out, sig.render()).map_err(io(&out))?;
    Ok(out)
}

/// Checks `file` against its signature with any of `keys`; returns the key and trusted comment.
pub fn verify_file(file: &Path, sig_path: &Path, keys: &[PublicKey]) -> Result<(PublicKey, String), SigningError> {
    let text = fs::read_to_string(sig_path).map_err(io(sig_path))?;
    let sig = SignatureFile::parse(&text).map_err(|reason| SigningError::Key { path: sig_path.into(), reason })?;
    let Some(key) = keys.iter().find(|k| k.keynum == sig.keynum) else {
        let tried: Vec<String> = keys.iter().map(PublicKey::id).collect();
        let tried = format!(
            "signed by key {}, trusted: {}",
            meshos_common::minisign::key_id(&sig.keynum),
            if tried.is_empty() { "none".into() } else { tried.join(", ") }
        );
        return Err(SigningError::Untrusted { file: file.into(), tried });
    };
    let data = fs::read(file).map_err(io(file))?;
    let comment = key.verify(&data, &sig).map_err(|reason| SigningError::Verify { file: file.into(), reason })?;
    Ok((key.clone(), comment))
}

/// The project's trusted keys (board-defs/keys/*.pub), then `extra` .pub files, by key id
/// and without repeats.
pub fn trusted_keys(root: &Path, extra: &[PathBuf]) -> Result<Vec<PublicKey>, SigningError> {
    let dir = root.join(KEYS_DIR);
    let mut paths: Vec<PathBuf> = match fs::read_dir(&dir) {
        Ok(entries) => entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "pub")).collect(),
        Err(_) => Vec::new(),
    };
    paths.sort();
    paths.extend(extra.iter().cloned());
    let mut keys: Vec<PublicKey> = Vec::new();
    for p in paths {
        let k = read_public(&p)?;
        if !keys.iter().any(|have| have.keynum == k.keynum) {
            keys.push(k);
        }
    }
    Ok(keys)
}
