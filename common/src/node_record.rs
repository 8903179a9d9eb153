//! A node's record in the mesh view, and its signature: the format every node serves at
//! `/mesh.json` and checks what its neighbours serve against, which the lab and the map read
//! too.
//!
//! A record is signed with the key the node's overlay address comes from, so that no neighbour
//! can write another node's entry or change a word it passes on. A Yggdrasil address comes from
//! an ed25519 public key ([`address_for_key`]); a cjdns address from a curve25519 key
//! ([`cjdns_address_for`]), which signs as ed25519 the way cjdns does it itself (its
//! `crypto/Sign.c`): the clamped secret is the ed25519 scalar, and the ed25519 public key
//! converts back to the curve25519 key the address is hashed from. The ed25519 work is
//! ed25519-dalek's.
//!
//! Each record carries a sequence number that only grows: how many times meshd has started on
//! its card in the high 32 bits (the node counts them on its data partition), seconds since
//! this start in the low. A view keeps of each node its highest sequence, so an old word never
//! replaces a newer one.

use crate::chunks::{hex, unhex};
use ed25519_dalek::hazmat::{raw_sign, ExpandedSecretKey};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha512};
use std::net::Ipv6Addr;
use std::time::Instant;

/// One node, as it last described itself: the record it signs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Node {
    pub address: String,
    /// The public key the address comes from, hex (Yggdrasil's, or cjdns's in ed25519 form).
    #[serde(default)]
    pub key: String,
    /// Grows with every record the node signs.
    #[serde(default)]
    pub seq: u64,
    pub name: String,
    pub version: String,
    pub board: String,
    pub slot: String,
    /// Where its metrics are served (None: turned off).
    pub metrics_port: Option<u16>,
    /// Its overlay neighbours, by address.
    #[serde(default)]
    pub neighbours: Vec<String>,
    /// Bytes moved with each neighbour (same order), for shading links.
    #[serde(default)]
    pub link_bytes: Vec<u64>,
    #[serde(default)]
    pub uptime_s: u64,
    /// What is wrong on the node, in words (a config error, a rollback, a radio down…).
    #[serde(default)]
    pub alerts: Vec<String>,
    /// It offers internet access now (meshd's gateway): its uplink answers.
    #[serde(default)]
    pub gateway: bool,
    /// Releases that failed their trial on it and were rolled back, the newest last (at most
    /// [`MAX_FAILED`]): what other nodes hold instead of installing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedTrial>,
}

/// A release that failed its trial on a node: its manifest's sha256 (its name on the mesh) and
/// why, in a word (`router_down`, `data_missing`, `neighbours_lost`, `meshd_failed`,
/// `did_not_boot`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FailedTrial {
    pub manifest: String,
    pub kind: String,
}

/// Trial failures a record may name.
pub const MAX_FAILED: usize = 8;

impl FailedTrial {
    /// A sha256 and a short word of lower-case letters and underscores.
    pub fn plausible(&self) -> bool {
        crate::chunks::is_sha256_hex(&self.manifest)
            && !self.kind.is_empty()
            && self.kind.len() <= 32
            && self.kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    }
}

impl Node {
    /// What a view takes from outside: an overlay address, short text, a bounded list. The
    /// addresses end up as Prometheus targets (`/sd.json`) and as gateways to tunnel to, so only
    /// a node's overlay address passes: never loopback, link-local, a LAN's or a mapped IPv4.
    pub fn plausible(&self) -> bool {
        let short = |s: &str| s.len() <= 128 && !s.contains(['\n', '\r']);
        is_overlay(&self.address)
            && self.metrics_port != Some(0)
            && [&self.name, &self.version, &self.board, &self.slot].iter().all(|s| short(s))
            && self.neighbours.len() <= 64
            && self.neighbours.iter().all(|n| is_overlay(n))
            && self.link_bytes.len() <= self.neighbours.len()
            && self.alerts.len() <= 16
            && self.alerts.iter().all(|a| a.len() <= 256)
            && self.failed.len() <= MAX_FAILED
            && self.failed.iter().all(FailedTrial::plausible)
    }
}

/// Whether `address` is a node's address on an overlay: Yggdrasil's 200::/8 (300::/8 holds the
/// nodes' client prefixes, not nodes) or cjdns's fc00::/8.
pub fn is_overlay(address: &str) -> bool {
    address.parse::<Ipv6Addr>().is_ok_and(|a| matches!(a.octets()[0], 0x02 | 0xfc))
}

/// Yggdrasil's address for a public key (its `address.AddrForKey`): 0x02, the number of
/// leading ones of the inverted key, then the bits after the first zero.
pub fn address_for_key(public_key: &[u8; 32]) -> Ipv6Addr {
    let inverted: Vec<u8> = public_key.iter().map(|b| !b).collect();
    let mut out = [0u8; 16];
    out[0] = 0x02;
    let (mut ones, mut done, mut acc, mut nbits, mut at) = (0u8, false, 0u8, 0, 2);
    for i in 0..256 {
        let bit = (inverted[i / 8] >> (7 - i % 8)) & 1;
        if !done {
            if bit == 1 {
                ones = ones.wrapping_add(1); // as yggdrasil's byte does
            } else {
                done = true;
            }
            continue;
        }
        acc = (acc << 1) | bit;
        nbits += 1;
        if nbits == 8 {
            if at < 16 {
                out[at] = acc;
            }
            at += 1;
            nbits = 0;
        }
    }
    out[1] = ones;
    Ipv6Addr::from(out)
}

/// A cjdns node's address from its public key's 32 bytes: the first 16 bytes of
/// sha512(sha512(key)), which start with 0xfc for every key cjdns accepts.
pub fn cjdns_address_for(raw: &[u8]) -> Option<Ipv6Addr> {
    let hash = Sha512::digest(Sha512::digest(raw));
    let bytes: [u8; 16] = hash[..16].try_into().ok()?;
    (bytes[0] == 0xfc).then(|| Ipv6Addr::from(bytes))
}

/// Signed bytes start with this, so that a record's signature is never taken for one the
/// router makes with the same key, nor the other way round.
const CONTEXT: &[u8] = b"meshos node record v1\n";
/// A record longer than this is not read (a node with 64 neighbours and 16 alerts fits).
pub const MAX_RECORD: usize = 8 * 1024;
/// One node's record as the mesh view passes it on: the record exactly as the node signed it,
/// the signature, and how long ago the node signed it (estimated by whoever serves it; not
/// signed, and never trusted to make a word newer).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub record: Box<RawValue>,
    /// Ed25519 over [`CONTEXT`] and `record`'s bytes, hex.
    pub sig: String,
    #[serde(default)]
    pub age_s: u64,
}

/// Why a record was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not a node record: {0}")]
    Malformed(String),
    #[error("{0}: its key does not give that address (a node may only speak for itself)")]
    NotItsKey(String),
    #[error("{0}: the signature does not match the record")]
    BadSignature(String),
}

/// The secret a node's overlay address comes from.
pub enum Secret {
    /// Yggdrasil's ed25519 seed (the first 32 of its private key's 64 bytes).
    Yggdrasil([u8; 32]),
    /// cjdns's curve25519 private key.
    Cjdns([u8; 32]),
}

/// Signs this node's records.
pub struct Signer {
    secret: ExpandedSecretKey,
    public: VerifyingKey,
    starts: u64,
    started: Instant,
    last: u64,
}

impl Signer {
    /// A signer for `secret` on its `starts`th start.
    pub fn starting(secret: Secret, starts: u64) -> Signer {
        let secret = match secret {
            Secret::Yggdrasil(seed) => ExpandedSecretKey::from(&seed),
            Secret::Cjdns(key) => {
                // The scalar is the key itself (clamped by from_bytes, as curve25519 clamps it);
                // the nonce prefix is derived from it, secret and fixed, as ed25519's own is.
                let mut bytes = [0u8; 64];
                bytes[..32].copy_from_slice(&key);
                bytes[32..].copy_from_slice(&Sha512::new_with_prefix(b"meshos record nonce").chain_update(key).finalize()[..32]);
                ExpandedSecretKey::from_bytes(&bytes)
            }
        };
        let public = VerifyingKey::from(&secret);
        Signer { secret, public, starts, started: Instant::now(), last: 0 }
    }

    /// The public key records are checked with, hex.
    pub fn key(&self) -> String {
        hex(self.public.as_bytes())
    }

    /// The Yggdrasil address of this key.
    pub fn yggdrasil_address(&self) -> String {
        address_for_key(self.public.as_bytes()).to_string()
    }

    /// `node` (its key and sequence filled in), signed.
    pub fn sign(&mut self, mut node: Node) -> Entry {
        let seq = (self.starts << 32 | self.started.elapsed().as_secs().min(u32::MAX.into())).max(self.last + 1);
        self.last = seq;
        (node.key, node.seq) = (self.key(), seq);
        let text = serde_json::to_string(&node).expect("a node serialises");
        let sig = raw_sign::<Sha512>(&self.secret, &[CONTEXT, text.as_bytes()].concat(), &self.public);
        Entry { record: RawValue::from_string(text).expect("serde_json wrote JSON"), sig: hex(&sig.to_bytes()), age_s: 0 }
    }
}

/// The node `entry` speaks of, unchecked: what to look it up by before paying for [`verify`].
pub fn read(entry: &Entry) -> Result<Node, Refused> {
    let text = entry.record.get();
    if text.len() > MAX_RECORD {
        return Err(Refused::Malformed(format!("{} bytes, more than {MAX_RECORD}", text.len())));
    }
    serde_json::from_str(text).map_err(|e| Refused::Malformed(e.to_string()))
}

/// Whether `node` (read from `entry`) is signed by the key its address comes from.
pub fn verify(entry: &Entry, node: &Node) -> Result<(), Refused> {
    let address: Ipv6Addr = node.address.parse().map_err(|_| Refused::Malformed(format!("address '{}'", node.address)))?;
    let key: [u8; 32] = unhex(&node.key).and_then(|k| k.try_into().ok()).ok_or_else(|| Refused::Malformed(format!("{address}: key is not 32 bytes of hex")))?;
    let public = VerifyingKey::from_bytes(&key).map_err(|_| Refused::NotItsKey(address.to_string()))?;
    let derived = match address.octets()[0] {
        0x02 => Some(address_for_key(&key)),
        0xfc => cjdns_address_for(&public.to_montgomery().to_bytes()),
        _ => None,
    };
    if derived != Some(address) {
        return Err(Refused::NotItsKey(address.to_string()));
    }
    let sig = unhex(&entry.sig).and_then(|s| <[u8; 64]>::try_from(s).ok()).ok_or_else(|| Refused::BadSignature(address.to_string()))?;
    public
        .verify_strict(&[CONTEXT, entry.record.get().as_bytes()].concat(), &Signature::from_bytes(&sig))
        .map_err(|_| Refused::BadSignature(address.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_match_yggdrasil() {
        // Checked against `yggdrasil -useconffile <conf> -address` (0.5.12) for this key.
        let key = unhex(KNOWN_PUBLIC_KEY).unwrap();
        let addr = address_for_key(&key.try_into().unwrap());
        assert_eq!(addr.to_string(), KNOWN_ADDRESS);
        // Nine leading ones after inversion: 0x00 then 0x7f.
        let mut k = [0x55u8; 32];
        (k[0], k[1]) = (0x00, 0x7f);
        assert_eq!(address_for_key(&k).octets()[..3], [0x02, 9, 0x02]);
    }

    const KNOWN_PUBLIC_KEY: &str = "8e37ac305a749108b7118a2c5662ab846516f9345fceb0bf9296990116bb10fc";
    const KNOWN_ADDRESS: &str = "200:e390:a79f:4b16:ddee:91dc:eba7:533a";

    /// cjdns's own example key (rust/cjdns_sys/src/util/serialization/jsonbenc.rs, v22.1; its
    /// public key is f09rvtmr2s25942ygutztv8bf70ny8zd0kpffk8lmbzm40qty9k0.k).
    const CJDNS_PRIVATE: &str = "0b4eed1835d708a79914a8925e8d5fff706a5258dfb4826f56d4c29eaec7abc5";
    const CJDNS_ADDRESS: &str = "fcea:4775:eacd:7c3b:6fbc:c02b:43d6:53e1";

    fn secret(hex: &str) -> [u8; 32] {
        unhex(hex).unwrap().try_into().unwrap()
    }

    fn yggdrasil_signer(seed: u8) -> (Signer, String) {
        let s = Signer::starting(Secret::Yggdrasil([seed; 32]), 1);
        let address = s.yggdrasil_address();
        (s, address)
    }

    fn node(address: &str) -> Node {
        Node { address: address.into(), name: "n".into(), metrics_port: Some(9100), ..Default::default() }
    }

    #[test]
    fn a_record_names_a_few_failed_trials_by_sha_and_word() {
        let failed = |manifest: &str, kind: &str| FailedTrial { manifest: manifest.into(), kind: kind.into() };
        let sha = "ab".repeat(32);
        let with = |f: Vec<FailedTrial>| Node { failed: f, ..node("200::1") }.plausible();
        assert!(with(vec![failed(&sha, "router_down")]));
        assert!(!with(vec![failed("../../etc", "router_down")]));
        assert!(!with(vec![failed(&sha, "Router down\n")]));
        assert!(!with(vec![failed(&sha, &"x".repeat(33))]));
        assert!(!with(vec![failed(&sha, "router_down"); MAX_FAILED + 1]));
        // A record without failures reads as before, and writes no field for them.
        assert!(!serde_json::to_string(&node("200::1")).unwrap().contains("failed"));
    }

    #[test]
    fn a_node_signs_for_its_own_address_only() {
        let (mut s, address) = yggdrasil_signer(7);
        let e = s.sign(node(&address));
        let n = read(&e).unwrap();
        assert_eq!((n.address.as_str(), n.key.len()), (address.as_str(), 64));
        assert_eq!(verify(&e, &n), Ok(()));
        // The same key, another node's address: refused.
        let e = s.sign(node("200:1234::1"));
        assert_eq!(verify(&e, &read(&e).unwrap()), Err(Refused::NotItsKey("200:1234::1".into())));
        // Another node's record with one word changed: refused.
        let mut e = s.sign(node(&address));
        e.record = RawValue::from_string(e.record.get().replace("\"gateway\":false", "\"gateway\":true")).unwrap();
        assert!(matches!(verify(&e, &read(&e).unwrap()), Err(Refused::BadSignature(_))));
    }

    #[test]
    fn a_cjdns_key_signs_for_its_address_as_cjdns_does() {
        let mut s = Signer::starting(Secret::Cjdns(secret(CJDNS_PRIVATE)), 1);
        // The signing key converts back to cjdns's own public key, which gives its address.
        let public = s.public.to_montgomery().to_bytes();
        assert_eq!(cjdns_address_for(&public).unwrap().to_string(), CJDNS_ADDRESS);
        let e = s.sign(node(CJDNS_ADDRESS));
        assert_eq!(verify(&e, &read(&e).unwrap()), Ok(()));
        let e = s.sign(node("fcea:4775:eacd:7c3b:6fbc:c02b:43d6:53e2"));
        assert!(matches!(verify(&e, &read(&e).unwrap()), Err(Refused::NotItsKey(_))));
    }

    #[test]
    fn sequences_grow_within_a_start_and_across_starts() {
        let (mut s, address) = yggdrasil_signer(1);
        let seqs: Vec<u64> = (0..3).map(|_| read(&s.sign(node(&address))).unwrap().seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let mut again = Signer::starting(Secret::Yggdrasil([1; 32]), 2);
        assert!(read(&again.sign(node(&address))).unwrap().seq > seqs[2]);
    }

    #[test]
    fn junk_is_refused_before_any_signature_check() {
        let entry = |record: &str, sig: &str| Entry { record: RawValue::from_string(record.into()).unwrap(), sig: sig.into(), age_s: 0 };
        assert!(matches!(read(&entry("[1,2]", "")), Err(Refused::Malformed(_))));
        let long = format!("{{\"address\":\"200::1\",\"name\":\"{}\"}}", "x".repeat(MAX_RECORD));
        assert!(matches!(read(&entry(&long, "")), Err(Refused::Malformed(_))));
        let e = entry(r#"{"address":"200::1","key":"zz","name":"","version":"","board":"","slot":"","metrics_port":null}"#, "00");
        assert!(matches!(verify(&e, &read(&e).unwrap()), Err(Refused::Malformed(_))));
    }
}
