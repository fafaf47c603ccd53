//! Group descriptors: 32 bytes per group in the GDT.
//!
//! A descriptor of all zero bytes was never written: its group is
//! *uninitialised* (`BLOCK_UNINIT | INODE_UNINIT`), everything in it free but
//! its own bitmaps and inode table, and its bitmaps and table hold garbage
//! nobody reads. That is how mkfs formats a 1 TiB image without writing
//! anything proportional to it (ext4's `uninit_bg`, made implicit). Group
//! 0 is always in use: its descriptor all zero is damage. Every
//! written descriptor carries a CRC32C seeded with the UUID and its group
//! number, and the CRCs of its two bitmap blocks.

use super::codec::{Reader, Writer};
use super::error::{FormatError, Result};
use super::geometry::{Geometry, GROUP_DESC_SIZE};
use super::meta_csum;

/// The group's block bitmap was never written: computed, not read.
pub const BLOCK_UNINIT: u16 = 1 << 0;
/// The group's inode bitmap and table were never written: all inodes free.
pub const INODE_UNINIT: u16 = 1 << 1;
/// Flags this build knows.
const KNOWN_FLAGS: u16 = BLOCK_UNINIT | INODE_UNINIT;

/// One group's descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupDesc {
    pub flags: u16,
    pub free_blocks: u32,
    pub free_inodes: u32,
    pub used_dirs: u32,
    pub block_bitmap_csum: u32,
    pub inode_bitmap_csum: u32,
    /// Inodes at and beyond this index were never used (the allocator and
    /// fsck need not look at them).
    pub itable_unused_from: u32,
}

impl GroupDesc {
    /// The descriptor an all-zero entry stands for in group `g`.
    pub fn uninit(geo: &Geometry, g: u32) -> GroupDesc {
        GroupDesc {
            flags: BLOCK_UNINIT | INODE_UNINIT,
            free_blocks: geo.group_blocks(g) - geo.group_meta_blocks(),
            free_inodes: geo.inodes_per_group,
            used_dirs: 0,
            block_bitmap_csum: 0,
            inode_bitmap_csum: 0,
            itable_unused_from: 0,
        }
    }

    pub fn block_uninit(&self) -> bool {
        self.flags & BLOCK_UNINIT != 0
    }

    pub fn inode_uninit(&self) -> bool {
        self.flags & INODE_UNINIT != 0
    }

    /// Encode for group `g` into `out` (`GROUP_DESC_SIZE` bytes).
    #[allow(
        clippy::indexing_slicing,
        reason = "callers pass a descriptor slot of the table they sized, GROUP_DESC_SIZE bytes or more"
    )]
    pub fn encode(&self, seed: u32, g: u32, out: &mut [u8]) {
        let mut w = Writer(&mut out[..GROUP_DESC_SIZE]);
        w.u16(0, self.flags);
        w.u16(2, 0);
        w.u32(4, self.free_blocks);
        w.u32(8, self.free_inodes);
        w.u32(12, self.used_dirs);
        w.u32(16, self.block_bitmap_csum);
        w.u32(20, self.inode_bitmap_csum);
        w.u32(24, self.itable_unused_from);
        let csum = meta_csum(seed, u64::from(g), &out[..28]);
        Writer(&mut out[..GROUP_DESC_SIZE]).u32(28, csum);
    }

    /// Decode group `g`'s descriptor from its `GROUP_DESC_SIZE` bytes.
    pub fn decode(geo: &Geometry, seed: u32, g: u32, raw: &[u8]) -> Result<GroupDesc> {
        let raw = raw
            .first_chunk::<GROUP_DESC_SIZE>()
            .ok_or_else(|| FormatError::invalid("group descriptor", "short"))?;
        if raw.iter().all(|&b| b == 0) {
            // Group 0 always holds the root, lost+found and the journal:
            // mkfs writes its descriptor, so zeros there are damage (a
            // zeroed GDT block), not a group never used. Read as unused,
            // it hid every inode of the group from fsck, which then
            // freed them all (biofs-fuzz seed 1600301).
            if g == 0 {
                return Err(FormatError::invalid(
                    "group descriptor",
                    "group 0: all zero (group 0 is always in use)",
                ));
            }
            return Ok(GroupDesc::uninit(geo, g));
        }
        let r = Reader(raw);
        let stored = r.u32(28);
        let computed = meta_csum(seed, u64::from(g), &raw[..28]);
        FormatError::check_csum("group descriptor", u64::from(g), stored, computed)?;
        let d = GroupDesc {
            flags: r.u16(0),
            free_blocks: r.u32(4),
            free_inodes: r.u32(8),
            used_dirs: r.u32(12),
            block_bitmap_csum: r.u32(16),
            inode_bitmap_csum: r.u32(20),
            itable_unused_from: r.u32(24),
        };
        let data = geo.group_blocks(g) - geo.group_meta_blocks();
        if d.flags & !KNOWN_FLAGS != 0
            || d.free_blocks > data
            || d.free_inodes > geo.inodes_per_group
            || d.used_dirs > geo.inodes_per_group
            || d.itable_unused_from > geo.inodes_per_group
        {
            return Err(FormatError::invalid(
                "group descriptor",
                format!("group {g}: fields out of range: {d:?}"),
            ));
        }
        Ok(d)
    }
}

/// Checksum of a bitmap block at `block` as stored in its descriptor.
pub fn bitmap_csum(seed: u32, block: u64, data: &[u8]) -> u32 {
    meta_csum(seed, block, data)
}

/// The block bitmap of an uninitialised group `g`: its bitmaps and inode
/// table in use, and the bits past the end of a short group set.
pub fn uninit_block_bitmap(geo: &Geometry, g: u32) -> Vec<u8> {
    let mut map = vec![0u8; super::BLOCK_SIZE];
    super::bitmap::set_range(&mut map, 0, geo.group_meta_blocks() as usize);
    let n = geo.group_blocks(g) as usize;
    super::bitmap::set_range(&mut map, n, super::BLOCKS_PER_GROUP as usize - n);
    map
}

/// The inode bitmap of an uninitialised group: all free, the bits past
/// `inodes_per_group` set.
pub fn uninit_inode_bitmap(geo: &Geometry) -> Vec<u8> {
    let mut map = vec![0u8; super::BLOCK_SIZE];
    let n = geo.inodes_per_group as usize;
    super::bitmap::set_range(&mut map, n, super::BLOCKS_PER_GROUP as usize - n);
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_zero_means_uninit() {
        let geo = Geometry::new(100_000, 1024, 256).unwrap();
        let d = GroupDesc {
            flags: 0,
            free_blocks: 100,
            free_inodes: 7,
            used_dirs: 2,
            block_bitmap_csum: 0xdead,
            inode_bitmap_csum: 0xbeef,
            itable_unused_from: 9,
        };
        let mut raw = [0u8; GROUP_DESC_SIZE];
        d.encode(5, 1, &mut raw);
        assert_eq!(GroupDesc::decode(&geo, 5, 1, &raw).unwrap(), d);
        assert!(GroupDesc::decode(&geo, 5, 2, &raw).is_err(), "wrong group");
        assert!(GroupDesc::decode(&geo, 6, 1, &raw).is_err(), "wrong fs");
        let zero = GroupDesc::decode(&geo, 5, 1, &[0u8; GROUP_DESC_SIZE]).unwrap();
        assert!(zero.block_uninit() && zero.inode_uninit());
        assert_eq!(zero.free_inodes, 1024);
    }

    #[test]
    fn out_of_range_counts_are_refused() {
        let geo = Geometry::new(100_000, 1024, 256).unwrap();
        let d = GroupDesc {
            free_inodes: 5000,
            ..GroupDesc::uninit(&geo, 0)
        };
        let mut raw = [0u8; GROUP_DESC_SIZE];
        d.encode(5, 0, &mut raw);
        assert!(GroupDesc::decode(&geo, 5, 0, &raw).is_err());
    }
}
