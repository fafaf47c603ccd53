//! Making a new filesystem on a device (the library under `mkfs.biofs`).
//!
//! Writes a constant amount whatever the size: the superblock and its
//! backup, the journal superblock, the GDT and group 0's inode table zeroed
//! with one write-zeroes each (every other group uninitialised), and group
//! 0's bitmaps, first inode-table block and the root directory's one block. A 1 TiB sparse image formats
//! in a few milliseconds.

use super::bitmap;
use super::dev::Dev;
use super::dir::{DirEntry, DirNode};
use super::error::{FormatError, Result};
use super::extent::Extent;
use super::geometry::{Geometry, MAX_DEFAULT_JOURNAL_BLOCKS, MIN_JOURNAL_BLOCKS};
use super::group::{bitmap_csum, uninit_block_bitmap, uninit_inode_bitmap, GroupDesc};
use super::inode::{FileType, Inode, InodeData, Timespec, S_IFDIR};
use super::journal::Journal;
use super::superblock::Superblock;
use super::{BLOCKS_PER_GROUP, BLOCK_SIZE, BLOCK_SIZE_U64, INODE_SIZE, LOST_FOUND_INO, ROOT_INO};

/// Default bytes of space per inode.
pub const DEFAULT_BYTES_PER_INODE: u64 = 16384;

/// How many inodes to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InodeCount {
    /// One inode per this many bytes of the filesystem.
    BytesPerInode(u64),
    /// About this many inodes in all (rounded up to whole table blocks per group).
    Total(u64),
}

/// What to make.
#[derive(Clone, Debug)]
pub struct MkfsParams {
    /// Blocks to use (at most the device's); `None`: all of it.
    pub blocks: Option<u64>,
    pub inodes: InodeCount,
    /// Journal blocks; `None`: 1/256 of the size, 256 to 32768.
    pub journal_blocks: Option<u64>,
    pub label: String,
    pub uuid: [u8; 16],
    pub hash_seed: u64,
    /// Seconds since the epoch, for the root's and superblock's times.
    pub now: Timespec,
    /// Owner of the root directory.
    pub root_uid: u32,
    pub root_gid: u32,
    /// Integrity profile recorded in the superblock: (interval bytes,
    /// checksum id), (0, 0) when the device has none.
    pub integrity: (u32, u16),
}

impl MkfsParams {
    /// Defaults with the given identity and time.
    pub fn new(uuid: [u8; 16], hash_seed: u64, now: Timespec) -> MkfsParams {
        MkfsParams {
            blocks: None,
            inodes: InodeCount::BytesPerInode(DEFAULT_BYTES_PER_INODE),
            journal_blocks: None,
            label: String::new(),
            uuid,
            hash_seed,
            now,
            root_uid: 0,
            root_gid: 0,
            integrity: (0, 0),
        }
    }
}

/// The layout `params` gives on a device of `dev_blocks` blocks.
pub fn plan(dev_blocks: u64, params: &MkfsParams) -> Result<Geometry> {
    let blocks = params.blocks.unwrap_or(dev_blocks);
    if blocks > dev_blocks {
        return Err(FormatError::invalid(
            "mkfs",
            format!("{blocks} blocks asked for, the device has {dev_blocks}"),
        ));
    }
    let journal = params
        .journal_blocks
        .unwrap_or_else(|| (blocks / 256).clamp(MIN_JOURNAL_BLOCKS, MAX_DEFAULT_JOURNAL_BLOCKS));
    if journal > blocks / 2 {
        return Err(FormatError::invalid(
            "mkfs",
            format!("a journal of {journal} blocks leaves too little of {blocks} blocks"),
        ));
    }
    let groups_estimate = blocks.div_ceil(u64::from(BLOCKS_PER_GROUP)).max(1);
    let ipg = match params.inodes {
        InodeCount::BytesPerInode(bpi) => {
            if !(1024..=1 << 26).contains(&bpi) {
                return Err(FormatError::invalid(
                    "mkfs",
                    format!("{bpi} bytes per inode is outside 1024..=64M"),
                ));
            }
            u64::from(BLOCKS_PER_GROUP) * BLOCK_SIZE_U64 / bpi
        }
        InodeCount::Total(n) => n.div_ceil(groups_estimate),
    };
    let ipg = ipg.clamp(16, u64::from(BLOCKS_PER_GROUP) / 2) as u32;
    let geo = Geometry::new(blocks, ipg, journal)?;
    // Room in group 0 for the root directory block.
    if geo.group_blocks(0) <= geo.group_meta_blocks() {
        return Err(FormatError::invalid("mkfs", "group 0 has no data block"));
    }
    Ok(geo)
}

/// Make the filesystem. Returns its superblock.
pub fn make_fs(dev: &Dev, params: &MkfsParams) -> Result<Superblock> {
    let geo = plan(dev.blocks(), params)?;
    let mut sb = Superblock::new(
        &geo,
        params.uuid,
        &params.label,
        params.hash_seed,
        params.now.sec,
    );
    sb.integrity_interval = params.integrity.0;
    sb.integrity_checksum = params.integrity.1;
    let seed = sb.seed();
    let io = |what, b| move |e| FormatError::io(what, b, e);

    // Old backup superblocks near the end (an earlier filesystem of
    // another size) must not be found by fsck in place of ours: every
    // block where one can be is zeroed, before anything of ours is
    // written. Not read first: under an integrity store laid out anew the
    // old bytes have no valid tuples, and reading them fails (it logged a
    // protection error for each on every mkfs -f of an old image).
    let end = dev.blocks();
    let from = end.saturating_sub(super::image::BACKUP_SEARCH);
    dev.zero_blocks(from, end - from)
        .map_err(io("old backup zeroing", from))?;
    // Every group uninitialised: one write-zeroes over the GDT.
    dev.zero_blocks(geo.gdt_start, geo.gdt_blocks)
        .map_err(io("GDT zeroing", geo.gdt_start))?;
    // Group 0's inode table reads as free inodes (one write-zeroes: a
    // hole on an image file), whatever the device held before.
    dev.zero_blocks(geo.itable_start(0), u64::from(geo.itable_blocks))
        .map_err(io("inode table zeroing", geo.itable_start(0)))?;
    Journal::format(dev, &sb, 1)?;

    // Group 0: its metadata, the root's directory block, two inodes.
    let root_block = geo.group_start(0) + u64::from(geo.group_meta_blocks());
    let mut bmap = uninit_block_bitmap(&geo, 0);
    bitmap::set(&mut bmap, geo.group_meta_blocks() as usize);
    let mut imap = uninit_inode_bitmap(&geo);
    bitmap::set_range(&mut imap, 0, 2);

    let now = params.now;
    let mut root = Inode::new(S_IFDIR | 0o755, params.root_uid, params.root_gid, now);
    root.nlink = 3;
    root.rdev_or_parent = ROOT_INO;
    root.size = BLOCK_SIZE_U64;
    root.blocks = 1;
    if let InodeData::Extents(n) = &mut root.data {
        if let Some(es) = n.extents_mut() {
            es.push(Extent {
                logical: 0,
                physical: root_block,
                len: 1,
                unwritten: false,
            });
        }
    }
    let mut lf = Inode::new(S_IFDIR | 0o700, 0, 0, now);
    lf.nlink = 2;
    lf.rdev_or_parent = ROOT_INO;
    let mut itable = vec![0u8; BLOCK_SIZE];
    let (root_slot, rest) = itable.split_at_mut(INODE_SIZE.min(BLOCK_SIZE));
    root.encode(seed, ROOT_INO, root_slot);
    lf.encode(seed, LOST_FOUND_INO, rest);
    let leaf = DirNode::Leaf {
        next: 0,
        entries: vec![DirEntry::new(
            params.hash_seed,
            b"lost+found",
            LOST_FOUND_INO,
            FileType::Directory,
        )],
    };
    let desc = GroupDesc {
        flags: 0,
        free_blocks: geo.group_blocks(0) - geo.group_meta_blocks() - 1,
        free_inodes: geo.inodes_per_group - 2,
        used_dirs: 2,
        block_bitmap_csum: bitmap_csum(seed, geo.block_bitmap(0), &bmap),
        inode_bitmap_csum: bitmap_csum(seed, geo.inode_bitmap(0), &imap),
        itable_unused_from: 2,
    };
    let (gdt_block, off) = geo.desc_location(0);
    let mut gdt = vec![0u8; BLOCK_SIZE];
    let slot = gdt
        .get_mut(off..)
        .ok_or_else(|| FormatError::invalid("group descriptor table", "short"))?;
    desc.encode(seed, 0, slot);
    sb.free_blocks = geo.data_blocks() - 1;
    sb.free_inodes = geo.inodes_count() - 2;

    let writes: [(u64, Vec<u8>); 5] = [
        (geo.block_bitmap(0), bmap),
        (geo.inode_bitmap(0), imap),
        (geo.itable_start(0), itable),
        (root_block, leaf.encode(seed, root_block, ROOT_INO)),
        (gdt_block, gdt),
    ];
    for (b, data) in &writes {
        dev.write_block(*b, data).map_err(io("mkfs write", *b))?;
    }
    // The backup first, the primary last: until the primary is written the
    // device is not a biofs (or still the old one, which -f overrides).
    let backup = geo.backup_block();
    dev.write_block(backup, &sb.encode(backup))
        .map_err(io("backup superblock", backup))?;
    dev.flush().map_err(io("flush", 0))?;
    dev.write_block(0, &sb.encode(0))
        .map_err(io("superblock", 0))?;
    dev.flush().map_err(io("flush", 0))?;
    Ok(sb)
}

/// Unit tests: a new filesystem of `bytes` on an in-memory device (no
/// integrity store), opened for reading and writing.
#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code, where a panic is a failed test"
)]
pub(crate) fn fresh_dev(bytes: u64) -> Dev {
    use crate::block::backend::MemBackend;
    let dev = Dev::from_backend(
        std::sync::Arc::new(MemBackend::new(bytes)),
        super::dev::DevOptions {
            read_only: false,
            verify: false,
            workers: 0,
            queue_depth: 0,
        },
    )
    .unwrap();
    make_fs(
        &dev,
        &MkfsParams::new([3; 16], 5, Timespec { sec: 1, nsec: 0 }),
    )
    .unwrap();
    dev
}
