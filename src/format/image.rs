//! Reading and writing a filesystem's metadata by structure: the
//! superblock (or its backup), group descriptors, bitmaps, inodes, extent
//! trees and directories. Used by fsck, by tests, and by `mkfs -d`.
//!
//! Everything read is validated; damaged structures come back as errors or
//! as problems listed beside what could be read, never as a panic.

use std::collections::BTreeMap;

use super::dev::Dev;
use super::dir::{DirEntry, DirNode, NodeEntry, ENTRY_SPACE, NODE_ENTRY};
use super::error::{FormatError, Result};
use super::extent::{build_tree, walk_tree, Extent};
use super::geometry::Geometry;
use super::group::{bitmap_csum, uninit_block_bitmap, uninit_inode_bitmap, GroupDesc};
use super::inode::{Inode, InodeData};
use super::superblock::Superblock;
use super::{BLOCK_SIZE, BLOCK_SIZE_U64, INODE_SIZE};

/// How far from the device's end mkfs may have left the backup superblock
/// (a dropped tail group is at most this long).
pub(crate) const BACKUP_SEARCH: u64 = 2 + 1024 + 16 + 1;

/// An open filesystem image.
pub struct Image<'d> {
    pub dev: &'d Dev,
    pub sb: Superblock,
    pub geo: Geometry,
    pub seed: u32,
    /// The GDT block read last (groups are mostly visited in order).
    gdt_cache: std::cell::RefCell<Option<(u64, Vec<u8>)>>,
    /// Block images that read in place of the device's: the journal's
    /// committed transactions, when a read-only check can't replay them.
    pub overlay: std::collections::HashMap<u64, Vec<u8>>,
}

/// Where the superblock came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SbSource {
    Primary,
    Backup(u64),
}

/// The leaf extents of a file and what was wrong on the way to them.
#[derive(Clone, Debug, Default)]
pub struct ExtentScan {
    /// Valid extents, sorted and non-overlapping.
    pub extents: Vec<Extent>,
    /// Blocks of the tree below the inode (index and leaf nodes read).
    pub tree_blocks: Vec<u64>,
    /// Damage found; non-empty means the tree must be rewritten.
    pub problems: Vec<String>,
    /// A read failed for a reason other than damage (the device is in
    /// trouble): nothing may be concluded from this scan.
    pub fatal: Option<String>,
}

/// A directory's entries and what was wrong on the way to them.
#[derive(Clone, Debug, Default)]
pub struct DirScan {
    pub entries: Vec<DirEntry>,
    pub problems: Vec<String>,
    /// As [`ExtentScan::fatal`].
    pub fatal: Option<String>,
    /// Leaves in index order: (logical block, its `next` link).
    pub leaves: Vec<(u64, u64)>,
}

impl<'d> Image<'d> {
    /// Open the filesystem on `dev` from its primary superblock, or, if
    /// `backup` is given, from the superblock at that block.
    pub fn open(dev: &'d Dev, backup: Option<u64>) -> Result<Image<'d>> {
        let at = backup.unwrap_or(0);
        let raw = dev
            .read_block(at)
            .map_err(|e| FormatError::io("superblock", at, e))?;
        let sb = Superblock::decode(&raw, at)?;
        Image::with_superblock(dev, sb)
    }

    /// Open with a superblock already read and validated.
    pub fn with_superblock(dev: &'d Dev, sb: Superblock) -> Result<Image<'d>> {
        let geo = sb.geometry()?;
        if geo.blocks_count > dev.blocks() {
            return Err(FormatError::invalid(
                "superblock",
                format!(
                    "the filesystem has {} blocks but the device only {}",
                    geo.blocks_count,
                    dev.blocks()
                ),
            ));
        }
        Ok(Image {
            dev,
            seed: sb.seed(),
            sb,
            geo,
            overlay: Default::default(),
            gdt_cache: Default::default(),
        })
    }

    /// Blocks near the end of `dev` that start with the superblock magic,
    /// last first, with their bytes: where mkfs leaves its backup. Read in
    /// one pass (block by block only if that fails: some may not read).
    fn superblock_candidates(dev: &Dev) -> Vec<(u64, Vec<u8>)> {
        let end = dev.blocks();
        let from = end.saturating_sub(BACKUP_SEARCH);
        let blocks: Vec<(u64, Vec<u8>)> = match dev.read_pages(from, end - from) {
            Ok(pages) => (from..end)
                .zip(pages)
                .map(|(b, p)| (b, p.as_slice().to_vec()))
                .collect(),
            Err(_) => (from..end)
                .filter_map(|b| dev.read_block(b).ok().map(|raw| (b, raw)))
                .collect(),
        };
        blocks
            .into_iter()
            .rev()
            .filter(|(_, raw)| raw.starts_with(&super::superblock::MAGIC))
            .collect()
    }

    /// Look for a valid backup superblock near the end of the device.
    /// A candidate counts only if the journal superblock it points to
    /// verifies under its UUID: a stale backup left by an earlier
    /// filesystem (mkfs made the new one a little shorter) fails that,
    /// because mkfs rewrote the journal superblock with the new UUID.
    pub fn find_backup(dev: &Dev) -> Option<(u64, Superblock)> {
        Image::superblock_candidates(dev)
            .into_iter()
            .find_map(|(b, raw)| {
                let sb = Superblock::decode(&raw, b).ok()?;
                if sb.blocks_count != b + 1 {
                    return None;
                }
                let jraw = dev.read_block(sb.journal_start).ok()?;
                super::journal::JournalSuper::decode(
                    sb.seed(),
                    sb.journal_start,
                    sb.journal_blocks,
                    &jraw,
                )
                .ok()?;
                Some((b, sb))
            })
    }

    /// Block `b` (from the overlay if it holds it).
    pub fn read(&self, what: &'static str, b: u64) -> Result<Vec<u8>> {
        if let Some(data) = self.overlay.get(&b) {
            return Ok(data.clone());
        }
        self.dev
            .read_block(b)
            .map_err(|e| FormatError::io(what, b, e))
    }

    /// Put `data` in the overlay as block `b` (read-only checks).
    pub fn overlay_put(&mut self, b: u64, data: Vec<u8>) {
        *self.gdt_cache.borrow_mut() = None;
        self.overlay.insert(b, data);
    }

    /// Write block `b`.
    pub fn write(&self, what: &'static str, b: u64, data: &[u8]) -> Result<()> {
        let mut cache = self.gdt_cache.borrow_mut();
        if cache.as_ref().is_some_and(|(cb, _)| *cb == b) {
            *cache = None;
        }
        drop(cache);
        self.dev
            .write_block(b, data)
            .map_err(|e| FormatError::io(what, b, e))
    }

    /// Write the superblock to its primary and backup places.
    pub fn write_superblock(&self) -> Result<()> {
        let backup = self.geo.backup_block();
        self.write("backup superblock", backup, &self.sb.encode(backup))?;
        self.write("superblock", 0, &self.sb.encode(0))
    }

    /// Group `g`'s descriptor.
    pub fn desc(&self, g: u32) -> Result<GroupDesc> {
        let (b, off) = self.geo.desc_location(g);
        let mut cache = self.gdt_cache.borrow_mut();
        let raw = match cache.take() {
            Some((cb, raw)) if cb == b => raw,
            _ => self.read("group descriptor table", b)?,
        };
        let d = GroupDesc::decode(&self.geo, self.seed, g, raw.get(off..).unwrap_or_default());
        *cache = Some((b, raw));
        d
    }

    /// Write group `g`'s descriptor.
    pub fn write_desc(&self, g: u32, d: &GroupDesc) -> Result<()> {
        let (b, off) = self.geo.desc_location(g);
        // An unreadable GDT block is rewritten from zeros (its other
        // groups read as uninitialised until fsck rewrites them too).
        let mut raw = match self.read("group descriptor table", b) {
            Ok(raw) => raw,
            Err(e) if e.is_corruption() => vec![0u8; BLOCK_SIZE],
            Err(e) => return Err(e),
        };
        let slot = raw
            .get_mut(off..)
            .ok_or_else(|| FormatError::invalid("group descriptor table", "short"))?;
        d.encode(self.seed, g, slot);
        self.write("group descriptor table", b, &raw)
    }

    /// Group `g`'s block bitmap (computed for an uninitialised group),
    /// checked against the descriptor's checksum.
    pub fn block_bitmap(&self, g: u32, d: &GroupDesc) -> Result<Vec<u8>> {
        if d.block_uninit() {
            return Ok(uninit_block_bitmap(&self.geo, g));
        }
        let b = self.geo.block_bitmap(g);
        let raw = self.read("block bitmap", b)?;
        check_bitmap(self.seed, b, &raw, d.block_bitmap_csum, "block bitmap")?;
        Ok(raw)
    }

    /// Group `g`'s inode bitmap, like [`Image::block_bitmap`].
    pub fn inode_bitmap(&self, g: u32, d: &GroupDesc) -> Result<Vec<u8>> {
        if d.inode_uninit() {
            return Ok(uninit_inode_bitmap(&self.geo));
        }
        let b = self.geo.inode_bitmap(g);
        let raw = self.read("inode bitmap", b)?;
        check_bitmap(self.seed, b, &raw, d.inode_bitmap_csum, "inode bitmap")?;
        Ok(raw)
    }

    /// Write group `g`'s bitmaps and descriptor (checksums updated, the
    /// group marked initialised).
    pub fn write_group(&self, g: u32, d: &mut GroupDesc, bmap: &[u8], imap: &[u8]) -> Result<()> {
        let (bb, ib) = (self.geo.block_bitmap(g), self.geo.inode_bitmap(g));
        d.block_bitmap_csum = bitmap_csum(self.seed, bb, bmap);
        d.inode_bitmap_csum = bitmap_csum(self.seed, ib, imap);
        d.flags = 0;
        self.write("block bitmap", bb, bmap)?;
        self.write("inode bitmap", ib, imap)?;
        self.write_desc(g, d)
    }

    /// The raw inode-table block holding `ino` and the offset of `ino` in it.
    pub fn inode_block(&self, ino: u64) -> Result<(u64, Vec<u8>, usize)> {
        if !self.geo.ino_valid(ino) {
            return Err(FormatError::invalid(
                "inode",
                format!("{ino} is not an inode number"),
            ));
        }
        let (b, off) = self.geo.ino_location(ino);
        Ok((b, self.read("inode table", b)?, off))
    }

    /// Inode `ino`; `Ok(None)` if free.
    pub fn inode(&self, ino: u64) -> Result<Option<Inode>> {
        let (_, raw, off) = self.inode_block(ino)?;
        Inode::decode(self.seed, ino, raw.get(off..).unwrap_or_default())
    }

    /// Write inode `ino` (`None`: free it, zeroing its bytes).
    pub fn write_inode(&self, ino: u64, inode: Option<&Inode>) -> Result<()> {
        let (b, mut raw, off) = self.inode_block(ino)?;
        let slot = raw
            .get_mut(off..off + INODE_SIZE)
            .ok_or_else(|| FormatError::invalid("inode table", "short"))?;
        match inode {
            Some(i) => i.encode(self.seed, ino, slot),
            None => slot.fill(0),
        }
        self.write("inode table", b, &raw)
    }

    /// Every extent of inode `ino`'s tree, checking each node (checksum,
    /// owner, depth, keys within the parent's range) and each extent (inside
    /// the data area, sorted, not overlapping). Bad subtrees and extents are
    /// left out and listed in `problems`.
    pub fn extents(&self, ino: u64, inode: &Inode) -> ExtentScan {
        let mut scan = ExtentScan::default();
        let Some(root) = inode.extent_root() else {
            return scan;
        };
        let mut read = |b: u64| self.read("extent block", b);
        match walk_tree(self.seed, ino, root, &self.geo, &mut read, false) {
            Ok(w) => {
                scan.extents = w.extents;
                scan.tree_blocks = w.nodes;
                scan.problems = w.problems.iter().map(short_problem).collect();
            }
            Err(e) => scan.fatal = Some(e.to_string()),
        }
        scan
    }

    /// Replace inode `ino`'s extent tree with one holding `extents` (sorted,
    /// non-overlapping), taking node blocks from `alloc`. The old tree's
    /// blocks are the caller's to free. Returns the new tree's blocks.
    pub fn write_extent_tree(
        &self,
        ino: u64,
        inode: &mut Inode,
        extents: &[Extent],
        alloc: &mut dyn FnMut() -> Result<u64>,
    ) -> Result<Vec<u64>> {
        let (root, nodes) = build_tree(self.seed, ino, extents, alloc)?;
        let mut blocks = Vec::with_capacity(nodes.len());
        for (b, raw) in nodes {
            self.write("extent block", b, &raw)?;
            blocks.push(b);
        }
        inode.data = InodeData::Extents(root);
        Ok(blocks)
    }

    /// The physical block of logical block `l` in `extents`.
    pub fn map(extents: &[Extent], l: u64) -> Option<u64> {
        let i = extents.partition_point(|e| e.logical_end() <= l);
        extents
            .get(i)
            .filter(|e| e.logical <= l && !e.unwritten)
            .map(|e| e.physical + (l - e.logical))
    }

    /// Every entry of directory `ino` (whose extents are `extents`), walking
    /// its tree from the root; damaged blocks are listed and skipped.
    pub fn dir_entries(&self, ino: u64, inode: &Inode, extents: &[Extent]) -> DirScan {
        self.dir_entries_ahead(&std::collections::HashMap::new(), ino, inode, extents)
    }

    /// [`Image::dir_entries`], taking each block from `ahead` (blocks read
    /// ahead in large batches, by physical block) where it holds it and
    /// is not in the overlay, else through [`Image::read`] (a block whose
    /// batch failed is read alone, so its error is the one a plain read
    /// gives).
    pub fn dir_entries_ahead(
        &self,
        ahead: &std::collections::HashMap<u64, crate::block::Page>,
        ino: u64,
        inode: &Inode,
        extents: &[Extent],
    ) -> DirScan {
        let mut scan = DirScan::default();
        if inode.size == 0 {
            return scan;
        }
        let mut seen = std::collections::HashSet::new();
        let mut w = DirWalk {
            img: self,
            ahead,
            ino,
            extents,
            seen: &mut seen,
            scan: &mut scan,
        };
        w.walk(0, None, (0, u64::MAX));
        // readdir follows the leaves' links: they must chain the leaves in
        // index order and end with 0.
        let chain_ok = scan
            .leaves
            .iter()
            .zip(scan.leaves.iter().skip(1))
            .all(|(a, b)| a.1 == b.0)
            && scan.leaves.last().is_none_or(|l| l.1 == 0);
        if !chain_ok {
            scan.problems
                .push("directory leaves are not linked in order".into());
        }
        scan
    }

    /// Look `name` up in directory `ino` by descending its index from the
    /// root: one block per level. Returns the entry, if any, and the number
    /// of directory blocks read.
    pub fn dir_lookup(
        &self,
        ino: u64,
        extents: &[Extent],
        name: &[u8],
    ) -> Result<(Option<DirEntry>, u32)> {
        let hash = super::dir::name_hash(self.sb.hash_seed, name);
        let mut logical = 0u64;
        let mut reads = 0u32;
        for _ in 0..=super::dir::MAX_DEPTH {
            let Some(phys) = Image::map(extents, logical) else {
                return Ok((None, reads));
            };
            let raw = self.read("directory block", phys)?;
            reads += 1;
            match DirNode::decode(self.seed, self.sb.hash_seed, phys, ino, &raw)? {
                DirNode::Leaf { entries, .. } => {
                    let e = entries
                        .into_iter()
                        .find(|e| e.hash == hash && e.name == name);
                    return Ok((e, reads));
                }
                DirNode::Node { entries, .. } => {
                    // The last entry whose hash is <= the name's.
                    let i = entries.partition_point(|e| e.hash <= hash);
                    let Some(e) = entries.get(i.saturating_sub(1)) else {
                        return Err(FormatError::invalid(
                            "directory",
                            format!("inode {ino}: empty index node"),
                        ));
                    };
                    logical = e.child;
                }
            }
        }
        Err(FormatError::invalid(
            "directory",
            format!("inode {ino}: index deeper than allowed"),
        ))
    }

    /// Write directory `ino` afresh holding `entries`: leaves packed in hash
    /// order, interior nodes above, the root at logical block 0; node blocks
    /// from `alloc`, then its extent tree. Sets the inode's size and block
    /// count for the directory's own blocks (plus `extra_blocks`, e.g. an
    /// xattr block). The old blocks are the caller's to free. Returns all
    /// new blocks (directory and extent-tree).
    pub fn write_dir(
        &self,
        ino: u64,
        inode: &mut Inode,
        mut entries: Vec<DirEntry>,
        extra_blocks: u64,
        alloc: &mut dyn FnMut() -> Result<u64>,
    ) -> Result<Vec<u64>> {
        entries.sort_by(|a, b| a.key().cmp(&b.key()));
        entries.dedup_by(|a, b| a.key() == b.key());
        let mut logical_nodes: BTreeMap<u64, DirNode> = BTreeMap::new();
        if !entries.is_empty() {
            // Pack leaves.
            let mut leaves: Vec<Vec<DirEntry>> = vec![Vec::new()];
            let mut used = 0;
            for e in entries {
                let n = e.disk_len();
                let same_hash = leaves
                    .last()
                    .and_then(|l| l.last())
                    .is_some_and(|p: &DirEntry| p.hash == e.hash);
                if used + n > ENTRY_SPACE && !same_hash {
                    leaves.push(Vec::new());
                    used = 0;
                }
                used += n;
                if let Some(l) = leaves.last_mut() {
                    l.push(e);
                }
            }
            if leaves.len() == 1 {
                let entries = leaves.pop().unwrap_or_default();
                logical_nodes.insert(0, DirNode::Leaf { next: 0, entries });
            } else {
                let count = leaves.len() as u64;
                let mut level: Vec<NodeEntry> = Vec::new();
                for (i, l) in leaves.into_iter().enumerate() {
                    let logical = 1 + i as u64;
                    let next = if logical < count { logical + 1 } else { 0 };
                    level.push(NodeEntry {
                        hash: if i == 0 {
                            0
                        } else {
                            l.first().map_or(0, |e| e.hash)
                        },
                        child: logical,
                    });
                    logical_nodes.insert(logical, DirNode::Leaf { next, entries: l });
                }
                let mut next_logical = 1 + count;
                let per_node = ENTRY_SPACE / NODE_ENTRY;
                let mut depth = 1u16;
                while level.len() > per_node {
                    let mut up = Vec::new();
                    for chunk in level.chunks(per_node) {
                        up.push(NodeEntry {
                            hash: if up.is_empty() {
                                0
                            } else {
                                chunk.first().map_or(0, |e| e.hash)
                            },
                            child: next_logical,
                        });
                        logical_nodes.insert(
                            next_logical,
                            DirNode::Node {
                                depth,
                                entries: chunk.to_vec(),
                            },
                        );
                        next_logical += 1;
                    }
                    level = up;
                    depth += 1;
                }
                logical_nodes.insert(
                    0,
                    DirNode::Node {
                        depth,
                        entries: level,
                    },
                );
            }
        }
        let mut new_blocks = Vec::new();
        let mut extents: Vec<Extent> = Vec::new();
        for (&logical, node) in &logical_nodes {
            let b = alloc()?;
            self.write("directory block", b, &node.encode(self.seed, b, ino))?;
            new_blocks.push(b);
            match extents.last_mut() {
                Some(e) if e.logical_end() == logical && e.physical_end() == b => e.len += 1,
                _ => extents.push(Extent {
                    logical,
                    physical: b,
                    len: 1,
                    unwritten: false,
                }),
            }
        }
        let nblocks = logical_nodes.len() as u64;
        let tree = self.write_extent_tree(ino, inode, &extents, alloc)?;
        inode.size = nblocks * BLOCK_SIZE_U64;
        inode.blocks = nblocks + tree.len() as u64 + extra_blocks;
        new_blocks.extend(tree);
        Ok(new_blocks)
    }
}

/// A walker's problem as fsck lists it (the inode is named by the caller).
fn short_problem(e: &FormatError) -> String {
    match e {
        FormatError::Corrupt { what, .. } => what.clone(),
        other => other.to_string(),
    }
}

fn check_bitmap(seed: u32, b: u64, raw: &[u8], stored: u32, what: &'static str) -> Result<()> {
    FormatError::check_csum(what, b, stored, bitmap_csum(seed, b, raw))
}

/// Blocks of `BLOCK_SIZE` bytes in `n` bytes, rounded up.
pub fn blocks_for(n: u64) -> u64 {
    n.div_ceil(BLOCK_SIZE as u64)
}

/// The walk's state, threaded through the recursion.
struct DirWalk<'a, 'd> {
    img: &'a Image<'d>,
    ahead: &'a std::collections::HashMap<u64, crate::block::Page>,
    ino: u64,
    extents: &'a [Extent],
    seen: &'a mut std::collections::HashSet<u64>,
    scan: &'a mut DirScan,
}

impl DirWalk<'_, '_> {
    fn walk(&mut self, logical: u64, parent_depth: Option<u16>, (lo, hi): (u64, u64)) {
        if !self.seen.insert(logical) {
            self.scan
                .problems
                .push(format!("directory block {logical} is referenced twice"));
            return;
        }
        let Some(phys) = Image::map(self.extents, logical) else {
            self.scan
                .problems
                .push(format!("directory block {logical} is not mapped"));
            return;
        };
        let raw = match self.ahead.get(&phys) {
            Some(p) if !self.img.overlay.contains_key(&phys) => Ok(p.as_slice().to_vec()),
            _ => self.img.read("directory block", phys),
        };
        let node = raw.and_then(|raw| {
            DirNode::decode(self.img.seed, self.img.sb.hash_seed, phys, self.ino, &raw)
        });
        match node {
            Err(e) if !e.is_corruption() => {
                self.scan
                    .fatal
                    .get_or_insert(format!("directory block {logical}: {e}"));
            }
            Err(e) => self
                .scan
                .problems
                .push(format!("directory block {logical}: {e}")),
            Ok(DirNode::Leaf { entries, next }) => {
                self.scan.leaves.push((logical, next));
                if parent_depth.is_some_and(|d| d != 1) {
                    self.scan
                        .problems
                        .push(format!("directory leaf {logical} at the wrong depth"));
                }
                // Lookups descend by hash and readdir checks it: an entry
                // outside its leaf's range is found by neither.
                if let Some(e) = entries.iter().find(|e| e.hash < lo || e.hash >= hi) {
                    self.scan.problems.push(format!(
                        "directory leaf {logical}: entry hash {:#x} outside the leaf's range",
                        e.hash
                    ));
                }
                self.scan.entries.extend(entries);
            }
            Ok(DirNode::Node { depth, entries }) => {
                if parent_depth.is_some_and(|d| d != depth + 1) {
                    self.scan
                        .problems
                        .push(format!("directory node {logical} at the wrong depth"));
                    return;
                }
                for (i, e) in entries.iter().enumerate() {
                    let end = entries.get(i + 1).map_or(hi, |n| n.hash);
                    let start = if i == 0 { lo } else { e.hash };
                    self.walk(e.child, Some(depth), (start, end));
                }
            }
        }
    }
}
