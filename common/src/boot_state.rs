//! The record that decides which slot boots: read by our U-Boot script, written by meshd.
//!
//! Two copies, each one 512-byte sector in the gap before the first partition, each in U-Boot's
//! checksummed environment format (`env import -c` reads it, `env export -c` writes it): a
//! CRC-32 of the rest, then `NAME=value` strings ending in NULs. Variables follow RAUC's U-Boot
//! integration: `BOOT_ORDER` (slots to try, in order), `BOOT_A_LEFT` / `BOOT_B_LEFT` (attempts
//! left), plus `BOOT_SEQ`, which grows with every write. Numbers are hexadecimal, as U-Boot's
//! `setexpr` writes them. A writer always overwrites the copy
//! that is not the newest, so a write cut short (a torn sector fails its CRC) leaves the other
//! copy, old but whole: either the old state or the new one boots, never neither.

use std::fmt;

/// Sectors (512 bytes) of the two copies: 960 KiB into the disk, clear of the Allwinner SPL and
/// U-Boot (8 KiB to about 520 KiB), of U-Boot's own environment (544 KiB) and of the first
/// partition (1 MiB).
pub const SECTORS: [u64; 2] = [1920, 1921];
pub const SIZE: usize = 512;
/// Attempts a newly installed slot gets before the other one boots instead.
pub const DEFAULT_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `a` or `b`, as on the kernel command line and the boot partition.
    pub fn lower(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "A" | "a" => Some(Slot::A),
            "B" | "b" => Some(Slot::B),
            _ => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootState {
    pub order: Vec<Slot>,
    pub a_left: u32,
    pub b_left: u32,
    pub seq: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootStateError {
    #[error("boot state copy {copy}: checksum does not match (never written, or a write was cut short)")]
    Checksum { copy: usize },
    #[error("boot state copy {copy}: {why}")]
    Bad { copy: usize, why: String },
    #[error("neither boot state copy is valid")]
    NoValidCopy,
}

impl Default for BootState {
    /// What a fresh image starts with: slot A only (B is empty until the first upgrade).
    fn default() -> BootState {
        BootState { order: vec![Slot::A], a_left: DEFAULT_ATTEMPTS, b_left: 0, seq: 1 }
    }
}

impl BootState {
    pub fn left(&self, slot: Slot) -> u32 {
        match slot {
            Slot::A => self.a_left,
            Slot::B => self.b_left,
        }
    }

    pub fn set_left(&mut self, slot: Slot, n: u32) {
        match slot {
            Slot::A => self.a_left = n,
            Slot::B => self.b_left = n,
        }
    }

    /// The slot U-Boot will boot next: the first in order with attempts left.
    pub fn next_boot(&self) -> Option<Slot> {
        self.order.iter().copied().find(|s| self.left(*s) > 0)
    }

    /// One sector in U-Boot's `env export -c -s 0x200` format.
    pub fn encode(&self) -> [u8; SIZE] {
        let order: Vec<String> = self.order.iter().map(Slot::to_string).collect();
        let vars = [
            format!("BOOT_ORDER={}", order.join(" ")),
            format!("BOOT_A_LEFT={}", self.a_left),
            format!("BOOT_B_LEFT={}", self.b_left),
            format!("BOOT_SEQ=0x{:x}", self.seq),
        ];
        let mut out = [0u8; SIZE];
        let mut at = 4;
        for v in vars {
            out[at..at + v.len()].copy_from_slice(v.as_bytes());
            at += v.len() + 1; // NUL separator; the zero padding ends the list
        }
        let crc = crc32(&out[4..]);
        out[..4].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(sector: &[u8], copy: usize) -> Result<BootState, BootStateError> {
        if sector.len() != SIZE {
            return Err(BootStateError::Bad { copy, why: format!("{} bytes, not {SIZE}", sector.len()) });
        }
        if u32::from_le_bytes(sector[..4].try_into().expect("4 bytes")) != crc32(&sector[4..]) {
            return Err(BootStateError::Checksum { copy });
        }
        let bad = |why: String| BootStateError::Bad { copy, why };
        let (mut order, mut a, mut b, mut seq) = (None, None, None, None);
        for var in sector[4..].split(|c| *c == 0).take_while(|v| !v.is_empty()) {
            let var = std::str::from_utf8(var).map_err(|_| bad("not text".into()))?;
            let (k, v) = var.split_once('=').ok_or_else(|| bad(format!("'{var}' is not NAME=value")))?;
            // U-Boot's setexpr writes hexadecimal (without 0x; the script adds it to BOOT_SEQ).
            let num = |v: &str| u64::from_str_radix(v.trim_start_matches("0x"), 16).map_err(|_| bad(format!("{k}={v} is not a number")));
            match k {
                "BOOT_ORDER" => {
                    order = Some(
                        v.split_whitespace()
                            .map(|s| Slot::parse(s).ok_or_else(|| bad(format!("BOOT_ORDER names slot '{s}'"))))
                            .collect::<Result<Vec<_>, _>>()?,
                    )
                }
                "BOOT_A_LEFT" => a = Some(u32::try_from(num(v)?).map_err(|_| bad(format!("{k}={v} is out of range")))?),
                "BOOT_B_LEFT" => b = Some(u32::try_from(num(v)?).map_err(|_| bad(format!("{k}={v} is out of range")))?),
                "BOOT_SEQ" => seq = Some(num(v)?),
                _ => {} // a later format's variable: keep reading
            }
        }
        match (order, a, b, seq) {
            (Some(order), Some(a_left), Some(b_left), Some(seq)) => Ok(BootState { order, a_left, b_left, seq }),
            _ => Err(bad("a variable is missing".into())),
        }
    }

    /// The newest valid copy, and which copy the next write must go to (the other one).
    pub fn newest(copies: [&[u8]; 2]) -> Result<(BootState, usize), BootStateError> {
        let a = BootState::decode(copies[0], 0);
        let b = BootState::decode(copies[1], 1);
        match (a, b) {
            (Ok(x), Ok(y)) if y.seq > x.seq => Ok((y, 0)),
            (Ok(x), _) => Ok((x, 1)),
            (Err(_), Ok(y)) => Ok((y, 0)),
            (Err(_), Err(_)) => Err(BootStateError::NoValidCopy),
        }
    }
}

/// What the boot script (image-builder/assets/boot.cmd) does at every boot, for a boot loader
/// that is not U-Boot (the mesh lab's): from the newest valid copy (or, with none, slot A with
/// full attempts), the first slot in `BOOT_ORDER` with attempts left loses one and boots; when
/// none has any, every slot gets [`DEFAULT_ATTEMPTS`] again. Returns the slot to boot, the
/// record to write, and the copy to write it over (the older one, as the script does).
pub fn boot(copies: [&[u8]; 2]) -> (Slot, BootState, usize) {
    let (found, older) = BootState::newest(copies).unwrap_or((BootState { seq: 0, ..BootState::default() }, 1));
    let mut next = found;
    let pick = |s: &mut BootState| {
        let slot = s.next_boot()?;
        s.set_left(slot, s.left(slot) - 1);
        Some(slot)
    };
    let slot = pick(&mut next).or_else(|| {
        next.a_left = DEFAULT_ATTEMPTS;
        next.b_left = DEFAULT_ATTEMPTS;
        pick(&mut next)
    });
    next.seq += 1;
    (slot.unwrap_or(Slot::A), next, older)
}

/// CRC-32 (IEEE 802.3, as zlib and U-Boot compute it).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip_and_u_boot_layout() {
        let s = BootState { order: vec![Slot::B, Slot::A], a_left: 3, b_left: 2, seq: 7 };
        let sector = s.encode();
        assert_eq!(&sector[4..48], b"BOOT_ORDER=B A\0BOOT_A_LEFT=3\0BOOT_B_LEFT=2\0B");
        assert_eq!(BootState::decode(&sector, 0).unwrap(), s);
        assert_eq!(s.next_boot(), Some(Slot::B));
        assert_eq!(BootState { b_left: 0, ..s.clone() }.next_boot(), Some(Slot::A));
    }

    #[test]
    fn numbers_are_read_as_u_boot_writes_them() {
        let mut s = BootState { seq: 0x1a, ..BootState::default() }.encode();
        assert!(s[4..].windows(13).any(|w| w == b"BOOT_SEQ=0x1a"));
        // What `setexpr BOOT_A_LEFT 3 - 1` leaves: "2".
        let text = b"BOOT_A_LEFT=2\0BOOT_B_LEFT=0\0BOOT_ORDER=A\0BOOT_SEQ=0x1b\0";
        s = [0u8; SIZE];
        s[4..4 + text.len()].copy_from_slice(text);
        let crc = crc32(&s[4..]);
        s[..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(BootState::decode(&s, 1).unwrap(), BootState { order: vec![Slot::A], a_left: 2, b_left: 0, seq: 0x1b });
    }

    #[test]
    fn each_boot_counts_an_attempt_as_the_boot_script_does() {
        // A card never written: slot A, one attempt used, written over copy 1.
        let blank = [0u8; SIZE];
        let (slot, first, older) = boot([&blank, &blank]);
        assert_eq!((slot, first.clone(), older), (Slot::A, BootState { order: vec![Slot::A], a_left: 2, b_left: 0, seq: 1 }, 1));
        // A trial of B: its attempts run down, then A boots (a rollback).
        let trial = BootState { order: vec![Slot::B, Slot::A], a_left: 3, b_left: 1, seq: 5 }.encode();
        let (slot, after, older) = boot([&first.encode(), &trial]);
        assert_eq!((slot, after.b_left, after.seq, older), (Slot::B, 0, 6, 0));
        let (slot, after, _) = boot([&after.encode(), &trial]);
        assert_eq!((slot, after.a_left, after.b_left), (Slot::A, 2, 0));
        // No slot has attempts left: every slot gets them again.
        let spent = BootState { order: vec![Slot::B], a_left: 0, b_left: 0, seq: 9 }.encode();
        let (slot, after, _) = boot([&spent, &blank]);
        assert_eq!((slot, after.a_left, after.b_left, after.seq), (Slot::B, 3, 2, 10));
    }

    #[test]
    fn a_torn_write_leaves_the_other_copy() {
        let old = BootState { seq: 4, ..BootState::default() };
        let new = BootState { order: vec![Slot::B, Slot::A], b_left: 3, seq: 5, ..old.clone() };
        let (o, n) = (old.encode(), new.encode());
        assert_eq!(BootState::newest([&o, &n]).unwrap(), (new.clone(), 0));
        // The write of seq 6 into copy 0 was cut after 30 bytes: copy 1 (seq 5) wins.
        let mut torn = o;
        torn[..30].copy_from_slice(&BootState { seq: 6, ..new.clone() }.encode()[..30]);
        assert_eq!(BootState::decode(&torn, 0), Err(BootStateError::Checksum { copy: 0 }));
        assert_eq!(BootState::newest([&torn, &n]).unwrap(), (new, 0));
        assert_eq!(BootState::newest([&[0u8; 512], &[0u8; 512]]), Err(BootStateError::NoValidCopy));
    }
}
