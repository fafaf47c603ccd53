//! The on-disk format of biofs: every structure, encoded and decoded
//! explicitly, little-endian, validated before any arithmetic uses it.
//!
//! `docs/format.md` has the byte diagrams and the crash-consistency
//! argument. In short, the filesystem lives in the block engine's data area
//! (the integrity tuples sit after it, owned by the engine) and is cut into
//! 4 KiB blocks:
//!
//! ```text
//! block 0      superblock
//! 1..          group descriptor table (GDT)
//! ..           journal (a physical redo log of metadata blocks)
//! head..       block groups of 32768 blocks: block bitmap, inode bitmap,
//!              inode table, data
//! last block   backup superblock
//! ```
//!
//! The decoders (superblock, group, inode, extent, dir, xattr, journal
//! blocks) take byte slices and do no I/O, so the fuzz harness can feed them
//! anything. I/O goes through [`dev`] (blocks through the engine), used by
//! the journal, [`image`] (metadata by structure), [`mkfs`], [`fsck`] and
//! [`builder`].

pub mod bitmap;
pub mod builder;
pub mod codec;
pub mod dev;
pub mod dir;
pub mod error;
pub mod extent;
pub mod fsck;
pub mod geometry;
pub mod group;
pub mod image;
pub mod inode;
pub mod journal;
pub mod mkfs;
pub mod superblock;
pub mod units;
pub mod xattr;

pub use error::FormatError;
pub use geometry::Geometry;
pub use superblock::Superblock;

/// Bytes per filesystem block (the only size this build supports).
pub const BLOCK_SIZE: usize = 4096;
/// `BLOCK_SIZE` as a `u64`.
pub const BLOCK_SIZE_U64: u64 = BLOCK_SIZE as u64;
/// Blocks per group: the bits of one 4 KiB bitmap block.
pub const BLOCKS_PER_GROUP: u32 = (BLOCK_SIZE * 8) as u32;
/// Bytes per on-disk inode.
pub const INODE_SIZE: usize = 256;
/// Inodes in one inode-table block.
pub const INODES_PER_BLOCK: u32 = (BLOCK_SIZE / INODE_SIZE) as u32;
/// The root directory's inode number (FUSE's root node id).
pub const ROOT_INO: u64 = 1;
/// `lost+found`, made by mkfs.
pub const LOST_FOUND_INO: u64 = 2;
/// The first inode number the allocator hands out.
pub const FIRST_FREE_INO: u64 = 3;
/// Longest name in a directory.
pub const NAME_MAX: usize = 255;
/// Largest logical block of a file (exclusive): files reach 16 TiB.
pub const MAX_FILE_BLOCKS: u64 = 1 << 32;
/// Largest file size in bytes (16 TiB): a write may end there, not past.
pub const MAX_FILE_SIZE: u64 = MAX_FILE_BLOCKS * BLOCK_SIZE as u64;

/// CRC32C of `data` seeded by `seed` (a filesystem's UUID CRC) and `nr`
/// (the block or inode number), so that a block written to the wrong place,
/// or one from another filesystem, fails its check.
pub fn meta_csum(seed: u32, nr: u64, data: &[u8]) -> u32 {
    let c = crc32c::crc32c_append(seed, &nr.to_le_bytes());
    crc32c::crc32c_append(c, data)
}

/// The per-filesystem checksum seed: CRC32C of the UUID.
pub fn uuid_seed(uuid: &[u8; 16]) -> u32 {
    crc32c::crc32c(uuid)
}

/// CRC of a block whose own checksum sits at `csum_off`: the 4 bytes there
/// count as zero.
pub fn block_csum(seed: u32, nr: u64, buf: &[u8], csum_off: usize) -> u32 {
    // A block too short for its checksum field just fails its check.
    let (head, rest) = buf.split_at_checked(csum_off).unwrap_or((buf, &[]));
    let c = meta_csum(seed, nr, head);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, rest.get(4..).unwrap_or_default())
}
