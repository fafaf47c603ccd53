//! Where everything is: derived from a few superblock fields, checked once,
//! then used for all block arithmetic (none of it can overflow afterwards).

use super::error::{FormatError, Result};
use super::{BLOCKS_PER_GROUP, BLOCK_SIZE, INODES_PER_BLOCK};

/// Bytes of one group descriptor.
pub const GROUP_DESC_SIZE: usize = 32;
/// Descriptors in one GDT block.
pub const DESCS_PER_BLOCK: u64 = (BLOCK_SIZE / GROUP_DESC_SIZE) as u64;
/// Smallest journal, in blocks (its superblock plus room for a transaction
/// of a few hundred metadata blocks).
pub const MIN_JOURNAL_BLOCKS: u64 = 256;
/// Largest journal mkfs makes by default (128 MiB).
pub const MAX_DEFAULT_JOURNAL_BLOCKS: u64 = 32768;
/// Most blocks of a filesystem: block numbers fit 48 bits (1 EiB), far
/// beyond any device, so that sums of block numbers never overflow.
pub const MAX_BLOCKS: u64 = 1 << 48;
/// Fewest data blocks a group must keep beside its metadata.
const MIN_GROUP_DATA: u64 = 16;

/// The layout of one filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Blocks of the filesystem, superblock to backup superblock.
    pub blocks_count: u64,
    pub gdt_start: u64,
    pub gdt_blocks: u64,
    pub journal_start: u64,
    pub journal_blocks: u64,
    /// First block of group 0.
    pub head: u64,
    pub groups: u32,
    pub inodes_per_group: u32,
    /// Inode-table blocks of each group.
    pub itable_blocks: u32,
}

impl Geometry {
    /// Lay out `blocks_count` blocks with `inodes_per_group` inodes per group
    /// (rounded up to a whole table block) and a journal of `journal_blocks`.
    /// The last group is dropped if it would be too small to be useful; the
    /// caller reads the resulting `blocks_count`.
    pub fn new(blocks_count: u64, inodes_per_group: u32, journal_blocks: u64) -> Result<Geometry> {
        // Dropping a short tail group can shrink the GDT, which moves
        // everything: iterate to the size that lays out to itself, so that
        // the superblock's fields recompute to the same layout.
        let mut blocks = blocks_count;
        loop {
            let g = Geometry::compute(blocks, inodes_per_group, journal_blocks)?;
            if g.blocks_count == blocks {
                return Ok(g);
            }
            blocks = g.blocks_count;
        }
    }

    fn compute(blocks_count: u64, inodes_per_group: u32, journal_blocks: u64) -> Result<Geometry> {
        if blocks_count > MAX_BLOCKS {
            return Err(FormatError::invalid(
                "geometry",
                format!("{blocks_count} blocks is more than the {MAX_BLOCKS} supported"),
            ));
        }
        if inodes_per_group == 0 || inodes_per_group > BLOCKS_PER_GROUP {
            return Err(FormatError::invalid(
                "geometry",
                format!("{inodes_per_group} inodes per group is not in 1..={BLOCKS_PER_GROUP}"),
            ));
        }
        if journal_blocks < MIN_JOURNAL_BLOCKS {
            return Err(FormatError::invalid(
                "geometry",
                format!("a journal of {journal_blocks} blocks is below the minimum {MIN_JOURNAL_BLOCKS}"),
            ));
        }
        // Bounded by the device, so that the head below can't overflow.
        if journal_blocks >= blocks_count {
            return Err(FormatError::invalid(
                "geometry",
                format!(
                    "a journal of {journal_blocks} blocks does not fit in {blocks_count} blocks"
                ),
            ));
        }
        let ipg = inodes_per_group.div_ceil(INODES_PER_BLOCK) * INODES_PER_BLOCK;
        let itable_blocks = ipg / INODES_PER_BLOCK;
        let bpg = u64::from(BLOCKS_PER_GROUP);
        // An upper bound on the groups sizes the GDT.
        let max_groups = blocks_count.div_ceil(bpg).max(1);
        let gdt_blocks = max_groups.div_ceil(DESCS_PER_BLOCK);
        let gdt_start = 1;
        let journal_start = gdt_start + gdt_blocks;
        let head = journal_start + journal_blocks;
        let min_group = 2 + u64::from(itable_blocks) + MIN_GROUP_DATA;
        // Groups span [head, blocks_count - 1); the last block is the backup.
        let span = blocks_count.saturating_sub(head + 1);
        let mut groups = span / bpg;
        let mut tail = span % bpg;
        if tail >= min_group {
            groups += 1;
        } else {
            tail = 0;
        }
        if groups == 0 {
            return Err(FormatError::invalid(
                "geometry",
                format!(
                    "{blocks_count} blocks leave no room for a block group after {head} blocks of superblock, GDT and journal"
                ),
            ));
        }
        let full = if tail == 0 { groups } else { groups - 1 };
        let blocks_count = head + full * bpg + tail + 1;
        let groups = u32::try_from(groups)
            .map_err(|_| FormatError::invalid("geometry", "too many groups"))?;
        Ok(Geometry {
            blocks_count,
            gdt_start,
            gdt_blocks,
            journal_start,
            journal_blocks,
            head,
            groups,
            inodes_per_group: ipg,
            itable_blocks,
        })
    }

    /// First block of group `g`.
    pub fn group_start(&self, g: u32) -> u64 {
        self.head + u64::from(g) * u64::from(BLOCKS_PER_GROUP)
    }

    /// Blocks in group `g` (the last group may be short).
    pub fn group_blocks(&self, g: u32) -> u32 {
        let end = (self.group_start(g) + u64::from(BLOCKS_PER_GROUP)).min(self.backup_block());
        (end - self.group_start(g)) as u32
    }

    /// The group holding block `b`, and its index there; `None` for blocks
    /// outside every group (superblocks, GDT, journal, beyond the end).
    pub fn block_group(&self, b: u64) -> Option<(u32, u32)> {
        if b < self.head || b >= self.backup_block() {
            return None;
        }
        let rel = b - self.head;
        let bpg = u64::from(BLOCKS_PER_GROUP);
        Some(((rel / bpg) as u32, (rel % bpg) as u32))
    }

    pub fn block_bitmap(&self, g: u32) -> u64 {
        self.group_start(g)
    }
    pub fn inode_bitmap(&self, g: u32) -> u64 {
        self.group_start(g) + 1
    }
    pub fn itable_start(&self, g: u32) -> u64 {
        self.group_start(g) + 2
    }

    /// Blocks at the start of every group used by its bitmaps and table.
    pub fn group_meta_blocks(&self) -> u32 {
        2 + self.itable_blocks
    }

    /// The backup superblock's location.
    pub fn backup_block(&self) -> u64 {
        self.blocks_count - 1
    }

    /// All inodes.
    pub fn inodes_count(&self) -> u64 {
        u64::from(self.groups) * u64::from(self.inodes_per_group)
    }

    /// True if `ino` is a valid inode number.
    pub fn ino_valid(&self, ino: u64) -> bool {
        ino >= 1 && ino <= self.inodes_count()
    }

    /// The group of `ino` and its index in that group (ino must be valid).
    pub fn ino_group(&self, ino: u64) -> (u32, u32) {
        let i = ino - 1;
        let ipg = u64::from(self.inodes_per_group);
        ((i / ipg) as u32, (i % ipg) as u32)
    }

    /// The inode-table block holding `ino`, and the byte offset inside it.
    pub fn ino_location(&self, ino: u64) -> (u64, usize) {
        let (g, idx) = self.ino_group(ino);
        let block = self.itable_start(g) + u64::from(idx / INODES_PER_BLOCK);
        (block, (idx % INODES_PER_BLOCK) as usize * super::INODE_SIZE)
    }

    /// The inode number of index `idx` in group `g`.
    pub fn ino_of(&self, g: u32, idx: u32) -> u64 {
        u64::from(g) * u64::from(self.inodes_per_group) + u64::from(idx) + 1
    }

    /// True if `b` is a block a file may own (a data block of some group,
    /// not a bitmap or inode table).
    pub fn is_data_block(&self, b: u64) -> bool {
        match self.block_group(b) {
            Some((_, idx)) => idx >= self.group_meta_blocks(),
            None => false,
        }
    }

    /// Data blocks of the whole filesystem (what statfs calls total).
    pub fn data_blocks(&self) -> u64 {
        (0..self.groups)
            .map(|g| u64::from(self.group_blocks(g) - self.group_meta_blocks()))
            .sum()
    }

    /// The GDT block holding group `g`'s descriptor and the offset in it.
    pub fn desc_location(&self, g: u32) -> (u64, usize) {
        let g = u64::from(g);
        (
            self.gdt_start + g / DESCS_PER_BLOCK,
            (g % DESCS_PER_BLOCK) as usize * GROUP_DESC_SIZE,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_one_gib() {
        let g = Geometry::new(262_144, 8192, 2048).unwrap();
        assert_eq!(g.gdt_blocks, 1);
        assert_eq!(g.journal_start, 2);
        assert_eq!(g.head, 2050);
        assert_eq!(g.groups, 8);
        assert_eq!(g.itable_blocks, 512);
        // Every block is accounted for: head, groups, backup.
        let in_groups: u64 = (0..g.groups).map(|i| u64::from(g.group_blocks(i))).sum();
        assert_eq!(g.head + in_groups + 1, g.blocks_count);
        assert!(g.blocks_count <= 262_144);
    }

    #[test]
    fn a_too_small_tail_group_is_dropped() {
        let bpg = u64::from(BLOCKS_PER_GROUP);
        let g = Geometry::new(258 + bpg + 10 + 1, 16, 256).unwrap();
        assert_eq!(g.groups, 1);
        assert_eq!(g.blocks_count, g.head + bpg + 1);
    }

    #[test]
    fn refuses_devices_without_room() {
        assert!(Geometry::new(200, 16, 256).is_err());
        assert!(Geometry::new(10_000, 0, 256).is_err());
        assert!(Geometry::new(10_000, 16, 10).is_err());
        assert!(Geometry::new(u64::MAX, 16, 256).is_err());
    }

    /// Found by tests/fuzz_decoders.rs: a journal length near u64::MAX (a
    /// damaged superblock field) overflowed `journal_start + journal_blocks`.
    #[test]
    fn regression_huge_journal_does_not_overflow() {
        assert!(Geometry::new(1024, 12729, u64::MAX).is_err());
        assert!(Geometry::new(9962, 17081, u64::MAX - 2).is_err());
        assert!(Geometry::new(10_000, 16, 10_000).is_err());
    }

    #[test]
    fn a_layout_recomputes_to_itself() {
        // Dropping the tail group here shrinks the GDT by a block.
        for (blocks, ipg, journal) in [
            (4_194_305, 16384, 32000),
            (4_194_305, 8192, 32500),
            (262_144, 8192, 2048),
        ] {
            let g = Geometry::new(blocks, ipg, journal).unwrap();
            assert_eq!(Geometry::new(g.blocks_count, ipg, journal).unwrap(), g);
        }
    }

    #[test]
    fn inode_locations() {
        let g = Geometry::new(100_000, 64, 256).unwrap();
        assert_eq!(g.ino_location(1), (g.itable_start(0), 0));
        assert_eq!(g.ino_location(17), (g.itable_start(0) + 1, 0));
        assert_eq!(g.ino_location(65), (g.itable_start(1), 0));
        assert_eq!(g.ino_of(1, 0), 65);
        assert!(g.ino_valid(g.inodes_count()) && !g.ino_valid(0));
        assert!(!g.ino_valid(g.inodes_count() + 1));
    }
}
