//! The disk: MBR partition table (the Pi 3 boot ROM reads only MBR) and the partition layout
//! boot (FAT32), root slot A, root slot B, data.

use crate::board::Disk as DiskSpec;
use serde::Serialize;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

pub const SECTOR: u64 = 512;
const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Partition {
    pub name: &'static str,
    /// MBR partition type byte.
    pub kind: u8,
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Layout {
    pub partitions: Vec<Partition>,
    pub total: u64,
    /// MBR disk signature (also on the kernel command line, so the initramfs finds this card).
    pub signature: u32,
}

pub const BOOT: usize = 0;
pub const ROOT_A: usize = 1;
pub const ROOT_B: usize = 2;
pub const DATA: usize = 3;

impl Layout {
    pub fn new(spec: &DiskSpec, signature: u32) -> Layout {
        let mut offset = u64::from(spec.first_partition_kib) * 1024;
        let mut partitions = Vec::new();
        for (name, kind, mib) in
            [("boot", 0x0c, spec.boot_mib), ("rootA", 0x83, spec.root_slot_mib), ("rootB", 0x83, spec.root_slot_mib), ("data", 0x83, spec.data_mib)]
        {
            let size = u64::from(mib) * MIB;
            partitions.push(Partition { name, kind, offset, size });
            offset += size;
        }
        Layout { partitions, total: offset, signature }
    }

    /// The 512-byte MBR.
    pub fn mbr(&self) -> [u8; 512] {
        let mut mbr = [0u8; 512];
        mbr[440..444].copy_from_slice(&self.signature.to_le_bytes());
        for (i, p) in self.partitions.iter().enumerate() {
            let e = &mut mbr[446 + i * 16..446 + (i + 1) * 16];
            e[0] = if i == BOOT { 0x80 } else { 0 };
            // CHS fields unused (LBA only): the conventional "beyond 8 GiB" marker.
            e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
            e[4] = p.kind;
            e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
            e[8..12].copy_from_slice(&((p.offset / SECTOR) as u32).to_le_bytes());
            e[12..16].copy_from_slice(&((p.size / SECTOR) as u32).to_le_bytes());
        }
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        mbr
    }

    /// The signature as the initramfs reads it: the four bytes at offset 440, in hex.
    pub fn signature_hex(&self) -> String {
        hex::encode(self.signature.to_le_bytes())
    }
}

/// Writes the disk image: MBR, raw boot-loader writes, then each given partition image.
pub fn assemble(layout: &Layout, out: &Path, raw: &[(u64, Vec<u8>)], parts: &[(usize, &Path)]) -> std::io::Result<()> {
    let ctx = |p: &Path, e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", p.display()));
    let mut f = std::fs::File::create(out).map_err(|e| ctx(out, e))?;
    f.set_len(layout.total).map_err(|e| ctx(out, e))?;
    f.write_all(&layout.mbr()).map_err(|e| ctx(out, e))?;
    let first = layout.partitions[0].offset;
    let mut ranges: Vec<(u64, u64)> = raw.iter().map(|(o, d)| (*o, o + d.len() as u64)).collect();
    ranges.sort();
    if let Some(w) = ranges.windows(2).find(|w| w[0].1 > w[1].0) {
        return Err(std::io::Error::other(format!("raw writes at {} and {} overlap (a boot loader too big for the gap?)", w[0].0, w[1].0)));
    }
    for (offset, data) in raw {
        if offset + data.len() as u64 > first {
            return Err(std::io::Error::other(format!("raw write at {offset} ({} bytes) runs into the first partition at {first}", data.len())));
        }
        f.seek(SeekFrom::Start(*offset)).map_err(|e| ctx(out, e))?;
        f.write_all(data).map_err(|e| ctx(out, e))?;
    }
    for (index, image) in parts {
        let p = &layout.partitions[*index];
        let len = std::fs::metadata(image).map_err(|e| ctx(image, e))?.len();
        if len > p.size {
            return Err(std::io::Error::other(format!("{} is {len} bytes but partition {} holds {}", image.display(), p.name, p.size)));
        }
        let mut src = std::fs::File::open(image).map_err(|e| ctx(image, e))?;
        f.seek(SeekFrom::Start(p.offset)).map_err(|e| ctx(out, e))?;
        std::io::copy(&mut src, &mut f).map_err(|e| ctx(image, e))?;
    }
    f.sync_all().map_err(|e| ctx(out, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbr_layout() {
        let spec = DiskSpec { boot_mib: 64, root_slot_mib: 128, data_mib: 32, first_partition_kib: 1024 };
        let l = Layout::new(&spec, 0x1234_5678);
        assert_eq!(l.total, (1 + 64 + 256 + 32) * MIB);
        let mbr = l.mbr();
        assert_eq!(&mbr[510..], &[0x55, 0xaa]);
        assert_eq!(mbr[446 + 4], 0x0c);
        assert_eq!(u32::from_le_bytes(mbr[446 + 8..446 + 12].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(mbr[462 + 8..462 + 12].try_into().unwrap()), 2048 + 64 * 2048);
        assert_eq!(l.signature_hex(), "78563412");
    }
}
