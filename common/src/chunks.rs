//! Content-defined chunks of a bundle's images: the unit a node fetches from its neighbours.
//!
//! Boundaries come from the bytes themselves (FastCDC), not from fixed offsets, so a change
//! that shifts everything behind it (a file grown in a squashfs) changes only the chunks it
//! touches: the chunks after it are found again, byte for byte, in the slot the node runs.
//! The host cuts the chunks when it makes a bundle and lists them in the signed manifest; a
//! node never cuts, it reads the lists of the slots it holds and fetches what they lack.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// FastCDC's sizes. The average is small because a node's radio link is slow and the changes
/// an upgrade brings are small and scattered (a file in /etc, a file in /usr/lib, squashfs's
/// tables); 16 KiB cost 0.3% of a bundle in index and found all but a few of the unchanged
/// bytes (see docs/upgrades.md for the measurements).
pub const MIN_SIZE: u32 = 4 * 1024;
pub const AVG_SIZE: u32 = 16 * 1024;
pub const MAX_SIZE: u32 = 64 * 1024;

/// One chunk of an image: its length and the sha256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    pub size: u32,
    pub sha256: String,
}

/// The chunks of `data`, in order; their sizes add up to `data.len()`.
pub fn cut(data: &[u8]) -> Vec<Chunk> {
    if data.is_empty() {
        return Vec::new();
    }
    fastcdc::v2020::FastCDC::new(data, MIN_SIZE, AVG_SIZE, MAX_SIZE)
        .map(|c| Chunk { size: c.length as u32, sha256: sha256_hex(&data[c.offset..c.offset + c.length]) })
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string (either case), or None.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Whether `s` looks like a sha256 in hex (a chunk's name in a request).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex(&[0, 1, 0xab, 0xff])).unwrap(), [0, 1, 0xab, 0xff]);
        assert!(unhex("abc").is_none() && unhex("zz").is_none());
    }

    /// Deterministic bytes that do not repeat (a stand-in for compressed data).
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn chunks_cover_the_data_within_their_bounds() {
        let data = noise(1 << 20, 7);
        let chunks = cut(&data);
        assert_eq!(chunks.iter().map(|c| u64::from(c.size)).sum::<u64>(), data.len() as u64);
        assert!(chunks.iter().all(|c| c.size <= MAX_SIZE));
        assert!(chunks[..chunks.len() - 1].iter().all(|c| c.size >= MIN_SIZE));
        assert!(cut(&[]).is_empty());
    }

    #[test]
    fn an_insertion_changes_only_the_chunks_around_it() {
        let old = noise(2 << 20, 3);
        let mut new = old[..700_000].to_vec();
        new.extend_from_slice(&noise(40_000, 9));
        new.extend_from_slice(&old[700_000..]);
        let have: std::collections::HashSet<Chunk> = cut(&old).into_iter().collect();
        let missing: u64 = cut(&new).iter().filter(|c| !have.contains(*c)).map(|c| u64::from(c.size)).sum();
        // The 40 KB inserted plus at most a few chunks on either side.
        assert!(missing >= 40_000 && missing < 40_000 + 4 * u64::from(MAX_SIZE), "{missing}");
    }
}
