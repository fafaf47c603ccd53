//! Block and inode allocation over the group bitmaps, inside transactions
//! (`docs/format.md`; `docs/design.md`, Allocation).
//!
//! - Blocks: the group of the goal first, then the others in order,
//!   skipping groups whose free count can't help; inside a group
//!   `bitmap::find_free_run` finds the first run of the wanted length, or
//!   else the longest, so sequential allocations get long extents.
//! - Lazy groups: the first allocation in an uninitialised group writes its
//!   real bitmap into the transaction and clears the flag; a new inode past
//!   the group's unused mark gets its inode-table blocks written whole
//!   (zeroed) in the same transaction, and the mark raised.
//! - Delayed reuse (rule 4): blocks freed in the running transaction are
//!   not handed out until [`Allocator::committed`] is called after its
//!   commit.
//!
//! Every change goes into the caller's [`Txn`]; reads see the latest image
//! (the transaction's, else the journal's committed one, else the device).

use std::collections::HashSet;

use super::buffer::MetaBuf;
use super::txn::MetaIo;
use crate::format::bitmap;
use crate::format::error::{FormatError, Result};
use crate::format::geometry::Geometry;
use crate::format::group::{bitmap_csum, uninit_block_bitmap, uninit_inode_bitmap, GroupDesc};
use crate::format::{BLOCK_SIZE, INODES_PER_BLOCK};

/// Allocation state of a mounted filesystem.
pub struct Allocator {
    geo: Geometry,
    seed: u32,
    /// Blocks freed by the running transaction: not reusable before it
    /// commits.
    pending_free: HashSet<u64>,
}

impl Allocator {
    pub fn new(geo: Geometry, seed: u32) -> Allocator {
        Allocator {
            geo,
            seed,
            pending_free: HashSet::new(),
        }
    }

    /// Free blocks and free inodes over all groups, from the descriptors.
    pub fn free_counts(&self, io: &mut dyn MetaIo) -> Result<(u64, u64)> {
        let (mut blocks, mut inodes) = (0u64, 0u64);
        for g in 0..self.geo.groups {
            let d = self.desc(io, g)?;
            blocks += u64::from(d.free_blocks);
            inodes += u64::from(d.free_inodes);
        }
        // Blocks freed in the running transaction are not usable yet.
        Ok((
            blocks.saturating_sub(self.pending_free.len() as u64),
            inodes,
        ))
    }

    /// Blocks freed in the running transaction (reusable after it commits).
    pub fn pending_len(&self) -> u64 {
        self.pending_free.len() as u64
    }

    /// The running transaction committed: its frees become reusable.
    pub fn committed(&mut self) {
        self.pending_free.clear();
    }

    fn desc(&self, io: &mut dyn MetaIo, g: u32) -> Result<GroupDesc> {
        let (b, off) = self.geo.desc_location(g);
        let raw = io.read_meta(b)?;
        GroupDesc::decode(&self.geo, self.seed, g, raw.get(off..).unwrap_or_default())
    }

    fn put_desc(&self, io: &mut dyn MetaIo, g: u32, d: &GroupDesc) -> Result<()> {
        let (b, off) = self.geo.desc_location(g);
        let mut raw = io.read_meta(b)?.to_vec();
        let slot = raw.get_mut(off..);
        d.encode(
            self.seed,
            g,
            slot.ok_or_else(|| FormatError::invalid("group descriptor table", "short"))?,
        );
        io.write_meta(b, raw);
        Ok(())
    }

    fn block_bitmap(&self, io: &mut dyn MetaIo, g: u32, d: &GroupDesc) -> Result<MetaBuf> {
        if d.block_uninit() {
            return Ok(MetaBuf::from(uninit_block_bitmap(&self.geo, g)));
        }
        let b = self.geo.block_bitmap(g);
        let raw = io.read_meta(b)?;
        FormatError::check_csum(
            "block bitmap",
            b,
            d.block_bitmap_csum,
            bitmap_csum(self.seed, b, &raw),
        )?;
        Ok(raw)
    }

    fn inode_bitmap(&self, io: &mut dyn MetaIo, g: u32, d: &GroupDesc) -> Result<MetaBuf> {
        if d.inode_uninit() {
            return Ok(MetaBuf::from(uninit_inode_bitmap(&self.geo)));
        }
        let b = self.geo.inode_bitmap(g);
        let raw = io.read_meta(b)?;
        FormatError::check_csum(
            "inode bitmap",
            b,
            d.inode_bitmap_csum,
            bitmap_csum(self.seed, b, &raw),
        )?;
        Ok(raw)
    }

    /// Whether inode `ino` is allocated (its bit set in its group's
    /// bitmap); false for a number that is no inode's.
    pub fn inode_in_use(&self, io: &mut dyn MetaIo, ino: u64) -> Result<bool> {
        if !self.geo.ino_valid(ino) {
            return Ok(false);
        }
        let (g, idx) = self.geo.ino_group(ino);
        let d = self.desc(io, g)?;
        let map = self.inode_bitmap(io, g, &d)?;
        Ok(bitmap::test(&map, idx as usize))
    }

    /// A run of up to `want` free blocks, as close after `goal` as the
    /// groups allow: `(first block, length)`, length at least 1. Fails with
    /// [`FormatError::NoSpace`] when no block is free.
    pub fn alloc_blocks(
        &mut self,
        io: &mut dyn MetaIo,
        goal: u64,
        want: u32,
    ) -> Result<(u64, u32)> {
        let want = want.max(1);
        let start_g = self.geo.block_group(goal).map_or(0, |(g, _)| g);
        let mut best: Option<(u32, usize, usize)> = None; // (group, start, len)
        for k in 0..self.geo.groups {
            let g = (start_g + k) % self.geo.groups;
            let d = self.desc(io, g)?;
            if d.free_blocks == 0 {
                continue;
            }
            let shared = self.block_bitmap(io, g, &d)?;
            // Blocks freed in this transaction look used to the search: a
            // copy marks them, where the group has any.
            let pending: Vec<usize> = self
                .pending_free
                .iter()
                .filter_map(|&b| self.geo.block_group(b))
                .filter(|&(pg, _)| pg == g)
                .map(|(_, i)| i as usize)
                .collect();
            let marked;
            let map: &[u8] = if pending.is_empty() {
                &shared
            } else {
                let mut m = shared.to_vec();
                for i in pending {
                    bitmap::set(&mut m, i);
                }
                marked = m;
                &marked
            };
            let from = match self.geo.block_group(goal) {
                Some((gg, i)) if gg == g => i as usize,
                _ => self.geo.group_meta_blocks() as usize,
            };
            let limit = self.geo.group_blocks(g) as usize;
            // From the goal on; if that finds no whole run, the longest of
            // that and a search from the group's start.
            let meta = self.geo.group_meta_blocks() as usize;
            let after = bitmap::find_free_run(map, from, limit, want as usize);
            let found = match after {
                Some((s, l)) if l >= want as usize => Some((s, l)),
                _ if from > meta => {
                    let whole = bitmap::find_free_run(map, meta, limit, want as usize);
                    match (after, whole) {
                        (Some(a), Some(w)) => Some(if w.1 > a.1 { w } else { a }),
                        (a, w) => a.or(w),
                    }
                }
                other => other,
            };
            if let Some((s, len)) = found {
                if len >= want as usize {
                    best = Some((g, s, len));
                    break;
                }
                if best.is_none_or(|(_, _, l)| len > l) {
                    best = Some((g, s, len));
                }
            }
        }
        let Some((g, s, len)) = best else {
            return Err(FormatError::NoSpace { what: "a block" });
        };
        let len = len.min(want as usize);
        let mut d = self.desc(io, g)?;
        let mut map = self.block_bitmap(io, g, &d)?.to_vec();
        bitmap::set_range(&mut map, s, len);
        d.free_blocks -= len as u32;
        d.flags &= !crate::format::group::BLOCK_UNINIT;
        let bb = self.geo.block_bitmap(g);
        d.block_bitmap_csum = bitmap_csum(self.seed, bb, &map);
        // An inode side still uninitialised keeps its computed bitmap.
        io.write_meta(bb, map);
        self.put_desc(io, g, &d)?;
        Ok((self.geo.group_start(g) + s as u64, len as u32))
    }

    /// Free `len` blocks from `start` (all in one group) in `txn`; they
    /// become reusable once the transaction commits.
    pub fn free_blocks(&mut self, io: &mut dyn MetaIo, start: u64, len: u32) -> Result<()> {
        let Some((g, i)) = self.geo.block_group(start) else {
            return Err(FormatError::invalid(
                "free",
                format!("block {start} is not in a group"),
            ));
        };
        if self
            .geo
            .block_group(start + u64::from(len) - 1)
            .map(|x| x.0)
            != Some(g)
            || !self.geo.is_data_block(start)
        {
            return Err(FormatError::invalid(
                "free",
                format!("blocks {start}+{len} are not data blocks of one group"),
            ));
        }
        let mut d = self.desc(io, g)?;
        let mut map = self.block_bitmap(io, g, &d)?.to_vec();
        for k in 0..len as usize {
            if !bitmap::test(&map, i as usize + k) {
                return Err(FormatError::invalid(
                    "free",
                    format!("block {} is already free", start + k as u64),
                ));
            }
            bitmap::clear(&mut map, i as usize + k);
            self.pending_free.insert(start + k as u64);
        }
        d.free_blocks = d.free_blocks.saturating_add(len);
        d.flags &= !crate::format::group::BLOCK_UNINIT;
        let bb = self.geo.block_bitmap(g);
        d.block_bitmap_csum = bitmap_csum(self.seed, bb, &map);
        io.write_meta(bb, map);
        self.put_desc(io, g, &d)
    }

    /// A free inode number, preferring group `hint`; directories go to the
    /// group with the most free inodes instead. The inode itself is the
    /// caller's to write (in the same transaction).
    pub fn alloc_inode(&mut self, io: &mut dyn MetaIo, hint: u32, dir: bool) -> Result<u64> {
        let groups = self.geo.groups;
        let mut order: Vec<u32> = (0..groups).map(|k| (hint % groups + k) % groups).collect();
        if dir {
            let mut counts = Vec::with_capacity(groups as usize);
            for g in 0..groups {
                counts.push((self.desc(io, g)?.free_inodes, g));
            }
            counts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            order = counts.into_iter().map(|(_, g)| g).collect();
        }
        for g in order {
            let mut d = self.desc(io, g)?;
            if d.free_inodes == 0 {
                continue;
            }
            let map = self.inode_bitmap(io, g, &d)?;
            let Some((idx, _)) =
                bitmap::find_free_run(&map, 0, self.geo.inodes_per_group as usize, 1)
            else {
                continue;
            };
            let idx = idx as u32;
            let old_mark = if d.inode_uninit() {
                0
            } else {
                d.itable_unused_from
            };
            if idx >= old_mark {
                // Table blocks from the old mark through this inode's are
                // written whole, zeroed, before any inode in them is used.
                let first = old_mark / INODES_PER_BLOCK;
                let last = idx / INODES_PER_BLOCK;
                for tb in first..=last {
                    let b = self.geo.itable_start(g) + u64::from(tb);
                    if tb * INODES_PER_BLOCK < old_mark {
                        continue; // holds live inodes already
                    }
                    io.write_meta(b, vec![0u8; BLOCK_SIZE]);
                }
                d.itable_unused_from = (last + 1) * INODES_PER_BLOCK;
            }
            let mut map = map.to_vec();
            bitmap::set(&mut map, idx as usize);
            d.free_inodes -= 1;
            if dir {
                d.used_dirs += 1;
            }
            if d.block_uninit() {
                // Initialising the inode side initialises the group: its
                // block bitmap becomes a real one too.
                let bb = self.geo.block_bitmap(g);
                let bmap = uninit_block_bitmap(&self.geo, g);
                d.block_bitmap_csum = bitmap_csum(self.seed, bb, &bmap);
                io.write_meta(bb, bmap);
            }
            d.flags = 0;
            let ib = self.geo.inode_bitmap(g);
            d.inode_bitmap_csum = bitmap_csum(self.seed, ib, &map);
            io.write_meta(ib, map);
            self.put_desc(io, g, &d)?;
            return Ok(self.geo.ino_of(g, idx));
        }
        Err(FormatError::NoSpace { what: "an inode" })
    }

    /// Free inode `ino` in `txn` (its bytes are the caller's to zero).
    pub fn free_inode(&mut self, io: &mut dyn MetaIo, ino: u64, dir: bool) -> Result<()> {
        if !self.geo.ino_valid(ino) {
            return Err(FormatError::invalid(
                "free",
                format!("{ino} is not an inode number"),
            ));
        }
        let (g, idx) = self.geo.ino_group(ino);
        let mut d = self.desc(io, g)?;
        let mut map = self.inode_bitmap(io, g, &d)?.to_vec();
        if !bitmap::test(&map, idx as usize) {
            return Err(FormatError::invalid(
                "free",
                format!("inode {ino} is already free"),
            ));
        }
        bitmap::clear(&mut map, idx as usize);
        d.free_inodes += 1;
        if dir {
            d.used_dirs = d.used_dirs.saturating_sub(1);
        }
        let ib = self.geo.inode_bitmap(g);
        d.inode_bitmap_csum = bitmap_csum(self.seed, ib, &map);
        io.write_meta(ib, map);
        self.put_desc(io, g, &d)
    }
}
