//! Who this node is: its router key and overlay address, its name, its access point
//! passphrase. Made on first boot and kept on the data partition, so a node keeps its address
//! across reboots and upgrades; nothing here is ever a shared default.

use std::fs;
use std::io::Read;
use std::net::Ipv6Addr;
use std::path::Path;
use std::process::Command;

pub use meshos_common::chunks::{hex, unhex};
pub use meshos_common::node_record::address_for_key;
use meshos_common::node_record::{Secret, Signer};

pub struct Identity {
    /// Yggdrasil's ed25519 private key, hex (seed then public key, 64 bytes).
    pub private_key: String,
    pub address: Ipv6Addr,
    pub hostname: String,
}

const KEY_FILE: &str = "yggdrasil.key";
const PASSPHRASE_FILE: &str = "ap-passphrase";

impl Identity {
    /// Reads the node's key from `state_dir`, or makes one (first boot).
    pub fn load_or_create(state_dir: &Path, mesh_id: &str) -> Result<Identity, String> {
        let path = state_dir.join(KEY_FILE);
        let private_key = match fs::read_to_string(&path) {
            Ok(text) => text.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = hex(&new_private_key()?);
                write_private(&path, &key)?;
                logln!("meshd: first boot: made this node's router key ({})", path.display());
                key
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let bytes = unhex(&private_key).filter(|b| b.len() == 64).ok_or_else(|| {
            format!("{} does not hold a 64-byte hex key; move it away to make a new identity (the node's address will change)", path.display())
        })?;
        let mut public = [0u8; 32];
        public.copy_from_slice(&bytes[32..]);
        let address = address_for_key(&public);
        let hostname = format!("{mesh_id}-{:02x}{:02x}", address.octets()[14], address.octets()[15]);
        Ok(Identity { private_key, address, hostname })
    }

    /// Sets the kernel's hostname (and /etc/hostname, for tools that read it).
    /// The public half, in hex: the last 32 of the private key's 64 bytes (ed25519's seed, then
    /// its public key, as Yggdrasil keeps it).
    pub fn public_key(&self) -> &str {
        &self.private_key[64..]
    }

    pub fn apply_hostname(&self) {
        crate::machine::current().set_hostname(&self.hostname);
    }
}

/// Yggdrasil's ed25519 key: `yggdrasil-genkeys`-grade randomness from the kernel, expanded by
/// yggdrasil itself so the key format is exactly its own.
fn new_private_key() -> Result<Vec<u8>, String> {
    let out = Command::new("yggdrasil").args(["-genconf", "-json"]).output().map_err(|e| format!("running yggdrasil -genconf: {e}"))?;
    if !out.status.success() {
        return Err(format!("yggdrasil -genconf failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let conf: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("yggdrasil -genconf printed no JSON: {e}"))?;
    let key = conf["PrivateKey"].as_str().ok_or("yggdrasil -genconf printed no PrivateKey")?;
    unhex(key).filter(|k| k.len() == 64).ok_or_else(|| "yggdrasil -genconf printed a PrivateKey that is not 64 hex bytes".into())
}

/// The access point passphrase: the configured one, else one made for this node and written
/// next to mesh.yaml so the owner can read it from the SD card.
pub fn ap_passphrase(configured: Option<&str>, state_dir: &Path, boot_dir: &Path) -> Result<String, String> {
    if let Some(p) = configured.filter(|p| !p.is_empty()) {
        return Ok(p.to_string());
    }
    let path = state_dir.join(PASSPHRASE_FILE);
    let phrase = match fs::read_to_string(&path) {
        Ok(p) => p.trim().to_string(),
        Err(_) => {
            // 16 characters from an alphabet without look-alikes: about 80 bits.
            const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
            let phrase: String = random_bytes(16)?.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect();
            write_private(&path, &phrase)?;
            phrase
        }
    };
    let owner_copy = boot_dir.join("ap-passphrase.txt");
    let text = format!("Access point passphrase of this node (set accessPoint.passphrase in mesh.yaml to choose one):\n{phrase}\n");
    if fs::read_to_string(&owner_copy).ok().as_deref() != Some(text.as_str()) {
        fs::write(&owner_copy, text).map_err(|e| format!("{}: {e}", owner_copy.display()))?;
    }
    Ok(phrase)
}

pub fn random_bytes(n: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(buf)
}

/// Where the count of meshd's starts is kept, in the state directory: the high half of its
/// records' sequence numbers (meshos_common::node_record).
const STARTS_FILE: &str = "record-starts";

/// The signer of this node's records in the mesh view, with this start counted.
pub fn record_signer(secret: Secret, state_dir: &Path) -> Result<Signer, String> {
    let path = state_dir.join(STARTS_FILE);
    let before = match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|_| format!("{}: not a count; remove it (this node's records start again from 1)", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let starts = (before + 1).min(u32::MAX.into());
    crate::durable::write(&path, format!("{starts}\n").as_bytes(), 0o644).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Signer::starting(secret, starts))
}

/// Mode 0600, and a power cut leaves the old file or the new one, never half a key.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    crate::durable::write(path, format!("{text}\n").as_bytes(), 0o600).map_err(|e| format!("{}: {e}", path.display()))
}

/// The overlay address a node is named by in configuration (`gateway.allow`): its Yggdrasil
/// public key's, or an overlay address as written.
pub fn node_address(entry: &str) -> Option<std::net::Ipv6Addr> {
    if let Ok(a) = entry.parse::<std::net::Ipv6Addr>() {
        return Some(a);
    }
    let bytes = unhex(entry).filter(|b| b.len() == 32)?;
    Some(address_for_key(&bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_start_is_counted_for_the_records_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let signer = |dir: &Path| record_signer(Secret::Yggdrasil([1; 32]), dir);
        let mut first = signer(dir.path()).unwrap();
        let mut second = signer(dir.path()).unwrap();
        let address = first.yggdrasil_address();
        let seq = |s: &mut Signer| meshos_common::node_record::read(&s.sign(Default::default())).unwrap().seq;
        assert!(seq(&mut second) > seq(&mut first) && !address.is_empty());
        fs::write(dir.path().join(STARTS_FILE), "garbage").unwrap();
        let e = signer(dir.path()).err().unwrap();
        assert!(e.contains("record-starts") && e.contains("remove it"), "{e}");
    }
}
