//! The metadata side of a mounted filesystem: the buffer cache in front of
//! the journal ([`Buffers`]), the running transaction, the inode cache
//! (decoded inodes with their whole extent maps) and the orphan list.
//! One `Meta` lives under the filesystem's metadata lock; everything here
//! runs with it held.
//!
//! Changes go into the running transaction as new block images
//! ([`MetaIo`]); inodes are encoded into their inode-table blocks, and
//! their extent trees rebuilt from the in-memory maps, when the transaction
//! commits ([`Meta::commit`]). The caller writes back the data those maps
//! point to before it commits (ordered data, docs/format.md rule 1).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::alloc::Allocator;
use super::buffer::Buffers;
use super::extmap;
use super::txn::{Journaled, MetaIo};
use super::types::{Errno, FsResult};
use crate::format::dev::{BioError, Dev};
use crate::format::error::{FormatError, Result};
use crate::format::extent::{build_tree, read_tree, Extent};
use crate::format::geometry::Geometry;
use crate::format::inode::{FileType, Inode, InodeData, Timespec};
use crate::format::superblock::Superblock;
use crate::format::INODE_SIZE;

/// Blocks a metadata operation may need at most (a directory split at
/// every level, an xattr block, a long symlink): it is refused with
/// ENOSPC up front when fewer are free, so it never fails half done.
const META_OP_BLOCKS: u64 = 16;

/// Most links to one inode (ext4's `EXT4_LINK_MAX`).
pub const LINK_MAX: u32 = 65000;

/// An inode in memory.
pub struct InodeState {
    pub inode: Inode,
    /// Every extent of its tree, sorted.
    pub map: Vec<Extent>,
    /// The tree's node blocks on disk.
    tree: Vec<u64>,
    /// `map` changed since the tree was written.
    tree_dirty: bool,
    /// FUSE lookups not yet forgotten.
    pub lookups: u64,
    /// Open file handles.
    pub opens: u32,
}

/// Metadata state of a mount.
pub struct Meta {
    pub bufs: Buffers,
    pub alloc: Allocator,
    pub geo: Geometry,
    pub seed: u32,
    pub hash_seed: u64,
    /// The superblock as it will be committed (orphan list head).
    pub sb: Superblock,
    sb_dirty: bool,
    /// The orphan list's back links (inode -> the inode before it, 0 for
    /// the head), kept in memory so that taking an inode off is O(1). The
    /// list on disk is the orphans of this mount only: the mount frees
    /// those of the last one first.
    orphan_prev: HashMap<u64, u64>,
    pub inodes: HashMap<u64, InodeState>,
    dirty: BTreeSet<u64>,
    /// Blocks free for use now (the bitmaps' count less blocks freed in
    /// the running transaction, which are not reusable before it commits).
    free_count: u64,
    /// Free inodes (the group descriptors' count), kept here so that
    /// statfs reads no descriptor.
    free_inodes: u64,
    /// Blocks promised to dirty pages that have none yet (delayed
    /// allocation): a write that can't be promised space gets ENOSPC then,
    /// not its writeback later.
    reserved: u64,
    /// Blocks data can't be promised: room for the metadata (extent trees,
    /// directories, xattrs) of changes already accepted.
    margin: u64,
    /// Transactions this mount has committed ([`Meta::running_tid`]).
    commits: u64,
    /// Set after a failed commit: no more changes (as ext4's
    /// errors=remount-ro).
    pub failed: bool,
    pub read_only: bool,
    /// Inodes found damaged while mounted (a directory whose walk failed):
    /// they refuse changes with EUCLEAN until fsck has repaired them, so
    /// no change is acknowledged on a structure the mount can't trust.
    pub damaged: std::collections::HashSet<u64>,
    /// Told of each inode whose block count changes with no request about
    /// it (blocks given to dirty pages at writeback, extent tree nodes at
    /// commit), so the FUSE adapter can have the kernel drop its cached
    /// attributes of it (they are trusted for an hour).
    pub blocks_hook: Option<Box<dyn Fn(u64) + Send>>,
    /// Unit tests: fail the directory change after this many more (EIO).
    #[cfg(test)]
    pub fail_dir_ops_after: Option<u32>,
}

/// The errno for a format-level error: the one mapping from
/// [`FormatError`] to the core's [`Errno`] (the adapter's
/// `fuse::errno::to_fuse` takes it from there). Exhaustive, so a new
/// variant must be classified here: damage is EUCLEAN (the kernel's
/// EFSCORRUPTED), a full filesystem ENOSPC, an I/O error keeps its errno.
pub fn errno(e: &FormatError) -> Errno {
    match e {
        FormatError::NoSpace { .. } => Errno::ENOSPC,
        FormatError::Io { source, .. } => {
            Errno::from_raw(BioError::errno_of(source).unwrap_or(libc::EIO))
        }
        FormatError::Unsupported { .. } => Errno::EIO,
        FormatError::BadMagic { .. }
        | FormatError::BadChecksum { .. }
        | FormatError::Invalid { .. }
        | FormatError::Corrupt { .. } => Errno::EUCLEAN,
    }
}

/// Log a format error and turn it into an errno.
/// An inode table block too short for the inode's slot.
fn short_itable() -> Errno {
    fail(
        "inode table",
        FormatError::invalid("inode table", "short block"),
    )
}

pub fn fail(what: &str, e: FormatError) -> Errno {
    let n = errno(&e);
    if n == Errno::ENOSPC {
        log::debug!("{what}: {e}");
    } else {
        log::error!("{what}: {e}");
    }
    n
}

impl Meta {
    /// Open the journal (replaying it) and the metadata, with a buffer
    /// cache of `cache_blocks` clean blocks; `read_only` writes nothing and
    /// refuses every change with EROFS.
    pub fn new(
        dev: Arc<Dev>,
        sb: Superblock,
        read_only: bool,
        cache_blocks: usize,
    ) -> Result<Meta> {
        let j = if read_only {
            Journaled::open_read_only(dev, sb)?
        } else {
            Journaled::open(dev, sb)?
        };
        let sb = j.superblock().clone();
        let geo = sb.geometry()?;
        let alloc = Allocator::new(geo, sb.seed());
        let mut bufs = Buffers::new(j, cache_blocks);
        let (free_count, free_inodes) = alloc.free_counts(&mut bufs)?;
        Ok(Meta {
            free_count,
            commits: 0,
            free_inodes,
            reserved: 0,
            margin: (geo.data_blocks() / 100).max(128),
            alloc,
            geo,
            seed: sb.seed(),
            hash_seed: sb.hash_seed,
            sb,
            sb_dirty: false,
            orphan_prev: HashMap::new(),
            inodes: HashMap::new(),
            dirty: BTreeSet::new(),
            failed: false,
            read_only,
            blocks_hook: None,
            damaged: std::collections::HashSet::new(),
            bufs,
            #[cfg(test)]
            fail_dir_ops_after: None,
        })
    }

    /// Remounted read-only or read-write ([`crate::fs::Fs::remount`]); the
    /// caller has committed everything before making it read-only.
    pub fn set_read_only(&mut self, read_only: bool) -> FsResult<()> {
        if !read_only && self.failed {
            return Err(Errno::EROFS);
        }
        self.read_only = read_only;
        Ok(())
    }

    /// EROFS once a commit failed (whether or not remounted read-only).
    pub fn check_failed(&self) -> FsResult<()> {
        if self.failed {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// Refuse changes after a failed commit.
    pub fn check_writable(&self) -> FsResult<()> {
        if self.failed || self.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// Load inode `ino` into the cache (ENOENT if it is free or not an
    /// inode number, EUCLEAN if it is damaged).
    pub fn load(&mut self, ino: u64) -> FsResult<&mut InodeState> {
        if !self.inodes.contains_key(&ino) {
            let st = self.read_inode(ino)?;
            self.inodes.insert(ino, st);
        }
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn read_inode(&mut self, ino: u64) -> FsResult<InodeState> {
        if !self.geo.ino_valid(ino) {
            return Err(Errno::ENOENT);
        }
        let (b, off) = self.geo.ino_location(ino);
        let raw = self.bufs.read_meta(b).map_err(|e| fail("inode table", e))?;
        let inode = Inode::decode(self.seed, ino, raw.get(off..).unwrap_or_default())
            .map_err(|e| fail(&format!("inode {ino}"), e))?
            .ok_or(Errno::ENOENT)?;
        let (map, tree) = match inode.extent_root() {
            Some(root) => {
                let (seed, geo) = (self.seed, self.geo);
                read_tree(seed, ino, root, &geo, &mut |b| self.bufs.read_meta(b))
                    .map_err(|e| fail(&format!("extent tree of inode {ino}"), e))?
            }
            None => (Vec::new(), Vec::new()),
        };
        if inode.blocks > self.geo.blocks_count {
            let what = format!(
                "block count {} is more than the filesystem has",
                inode.blocks
            );
            return Err(fail(
                &format!("inode {ino}"),
                FormatError::corrupt(ino, 0, what),
            ));
        }
        if inode.xattr_block != 0 && !self.geo.is_data_block(inode.xattr_block) {
            let what = format!("xattr block {} is outside the data area", inode.xattr_block);
            return Err(fail(
                &format!("inode {ino}"),
                FormatError::corrupt(ino, inode.xattr_block, what),
            ));
        }
        if let Err(what) = inode.check_fields(&map) {
            return Err(fail(
                &format!("inode {ino}"),
                FormatError::corrupt(ino, 0, what),
            ));
        }
        Ok(InodeState {
            inode,
            map,
            tree,
            tree_dirty: false,
            lookups: 0,
            opens: 0,
        })
    }

    /// The cached inode (loaded first if needed).
    pub fn get(&mut self, ino: u64) -> FsResult<&Inode> {
        Ok(&self.load(ino)?.inode)
    }

    /// Inode `ino` for changing; it is written at the next commit.
    pub fn get_mut(&mut self, ino: u64) -> FsResult<&mut InodeState> {
        self.check_writable()?;
        if self.damaged.contains(&ino) {
            return Err(Errno::EUCLEAN);
        }
        self.dirty.insert(ino);
        self.load(ino)
    }

    /// Mark `ino`'s extent map changed (its tree is rebuilt at commit).
    /// `ino`'s block count changed with no request about it: tell the
    /// hook ([`Meta::blocks_hook`]).
    pub fn blocks_changed(&self, ino: u64) {
        if let Some(h) = &self.blocks_hook {
            h(ino);
        }
    }

    pub fn map_changed(&mut self, ino: u64) {
        self.dirty.insert(ino);
        if let Some(st) = self.inodes.get_mut(&ino) {
            st.tree_dirty = true;
        }
    }

    /// A new inode of `mode` (near `parent`'s group), in the cache and the
    /// running transaction, with one lookup counted.
    pub fn new_inode(&mut self, parent: u64, mut inode: Inode) -> FsResult<u64> {
        self.check_writable()?;
        let dir = inode.file_type() == FileType::Directory;
        let hint = self.geo.ino_group(parent).0;
        let ino = self
            .alloc
            .alloc_inode(&mut self.bufs, hint, dir)
            .map_err(|e| fail("allocating an inode", e))?;
        self.free_inodes = self.free_inodes.saturating_sub(1);
        let old = self.inodes.get(&ino).map(|s| s.inode.generation);
        inode.generation = new_generation(ino, old);
        self.inodes.insert(
            ino,
            InodeState {
                inode,
                map: Vec::new(),
                tree: Vec::new(),
                tree_dirty: false,
                lookups: 1,
                opens: 0,
            },
        );
        self.dirty.insert(ino);
        Ok(ino)
    }

    /// Allocate up to `want` blocks near `goal`.
    pub fn alloc_blocks(&mut self, goal: u64, want: u32) -> FsResult<(u64, u32)> {
        self.check_writable()?;
        let (b, got) = self
            .alloc
            .alloc_blocks(&mut self.bufs, goal, want)
            .map_err(|e| fail("allocating", e))?;
        self.free_count = self.free_count.saturating_sub(u64::from(got));
        Ok((b, got))
    }

    /// Promise `n` blocks to dirty pages (ENOSPC if they would cut into
    /// the metadata margin).
    pub fn reserve(&mut self, n: u64) -> FsResult<()> {
        self.check_data_room(n)?;
        self.reserved += n;
        Ok(())
    }

    /// `n` promised blocks were allocated (or their pages dropped).
    pub fn unreserve(&mut self, n: u64) {
        self.reserved = self.reserved.saturating_sub(n);
    }

    /// ENOSPC unless `n` blocks can go to data.
    pub fn check_data_room(&self, n: u64) -> FsResult<()> {
        if self.free_count < self.reserved + self.margin + n {
            return Err(Errno::ENOSPC);
        }
        Ok(())
    }

    /// ENOSPC unless a metadata operation surely finds its blocks.
    pub fn check_meta_room(&self) -> FsResult<()> {
        if self.free_count < self.reserved + META_OP_BLOCKS {
            return Err(Errno::ENOSPC);
        }
        Ok(())
    }

    /// Blocks freed in the running transaction, usable once it commits.
    pub fn pending_frees(&self) -> u64 {
        self.alloc.pending_len()
    }

    /// Free blocks for statfs: free now, and available to data.
    pub fn block_counts(&self) -> (u64, u64) {
        let free = self.free_count.saturating_sub(self.reserved);
        (free, free.saturating_sub(self.margin))
    }

    /// Free blocks `[start, start+len)`; `metadata`: revoke them too (they
    /// were journaled).
    pub fn free_blocks(&mut self, start: u64, len: u32, metadata: bool) -> FsResult<()> {
        if metadata {
            for b in start..start + u64::from(len) {
                self.bufs.revoke_meta(b);
            }
        }
        // Runs never cross a group: extents don't, and tree blocks are one.
        self.alloc
            .free_blocks(&mut self.bufs, start, len)
            .map_err(|e| fail("freeing", e))
    }

    /// Remove `[from, to)` from `ino`'s map, freeing its blocks. Blocks of
    /// directories and symlinks are metadata (journaled) and get revoked.
    pub fn punch(&mut self, ino: u64, from: u64, to: u64) -> FsResult<()> {
        let st = self.get_mut(ino)?;
        let metadata = st.inode.file_type() != FileType::Regular;
        let freed = extmap::remove(&mut st.map, from, to);
        if freed.is_empty() {
            return Ok(());
        }
        let n: u64 = freed.iter().map(|r| u64::from(r.1)).sum();
        st.inode.blocks = st.inode.blocks.saturating_sub(n);
        self.map_changed(ino);
        for (start, len) in freed {
            self.free_blocks(start, len, metadata)?;
        }
        Ok(())
    }

    /// Free inode `ino` and everything it owns (its last link and last
    /// user are gone).
    pub fn evict(&mut self, ino: u64) -> FsResult<()> {
        self.punch(ino, 0, u64::MAX)?;
        let st = self.get_mut(ino)?;
        let xattr = std::mem::take(&mut st.inode.xattr_block);
        let tree = std::mem::take(&mut st.tree);
        let dir = st.inode.file_type() == FileType::Directory;
        let orphan_next = st.inode.orphan_next;
        for b in tree.into_iter().chain((xattr != 0).then_some(xattr)) {
            self.free_blocks(b, 1, true)?;
        }
        self.orphan_remove(ino, orphan_next)?;
        let (b, off) = self.geo.ino_location(ino);
        let mut raw = self
            .bufs
            .read_meta(b)
            .map_err(|e| fail("inode table", e))?
            .to_vec();
        raw.get_mut(off..off + INODE_SIZE)
            .ok_or_else(short_itable)?
            .fill(0);
        self.bufs.write_meta(b, raw);
        self.alloc
            .free_inode(&mut self.bufs, ino, dir)
            .map_err(|e| fail("freeing an inode", e))?;
        self.free_inodes += 1;
        self.dirty.remove(&ino);
        self.inodes.remove(&ino);
        Ok(())
    }

    /// Free `ino` if nothing holds it any more: no links, no lookups, not
    /// open. An unlinked inode still held goes on the orphan list, so that
    /// a crash before its release frees it at the next mount.
    pub fn maybe_evict(&mut self, ino: u64) -> FsResult<()> {
        let Some(st) = self.inodes.get(&ino) else {
            return Ok(());
        };
        if st.inode.nlink > 0 {
            if st.lookups == 0 && st.opens == 0 && !self.dirty.contains(&ino) {
                self.inodes.remove(&ino);
            }
            return Ok(());
        }
        if st.lookups == 0 && st.opens == 0 {
            return self.evict(ino);
        }
        if !self.orphan_prev.contains_key(&ino) {
            let head = self.sb.orphan_head;
            self.get_mut(ino)?.inode.orphan_next = head;
            if head != 0 {
                self.orphan_prev.insert(head, ino);
            }
            self.orphan_prev.insert(ino, 0);
            self.sb.orphan_head = ino;
            self.sb_dirty = true;
        }
        Ok(())
    }

    /// Take `ino` (whose successor is `next`) off the orphan list, if it
    /// is on it.
    fn orphan_remove(&mut self, ino: u64, next: u64) -> FsResult<()> {
        let Some(prev) = self.orphan_prev.remove(&ino) else {
            return Ok(());
        };
        if prev == 0 {
            self.sb.orphan_head = next;
            self.sb_dirty = true;
        } else {
            self.get_mut(prev)?.inode.orphan_next = next;
        }
        if next != 0 {
            self.orphan_prev.insert(next, prev);
        }
        Ok(())
    }

    /// Free the orphans a crash left (at mount, before anything else).
    ///
    /// Guarded as every walker of on-disk structures: each inode at most
    /// once (a visited set: a loop ends the walk), at most the inode count
    /// of hops, and each inode valid and in use. A list that breaks these is
    /// logged, naming the inode, and cut there: the inodes after it stay
    /// allocated for fsck.biofs to reclaim, and the mount goes on.
    pub fn free_orphans(&mut self) -> FsResult<u64> {
        let mut n = 0;
        let mut seen = std::collections::HashSet::new();
        while self.sb.orphan_head != 0 {
            let ino = self.sb.orphan_head;
            let bad = if !seen.insert(ino) {
                Some("comes twice (the list loops)".to_string())
            } else if seen.len() as u64 > self.geo.inodes_count() {
                Some("is past the inode count".to_string())
            } else {
                self.get_mut(ino)
                    .err()
                    .map(|e| format!("can't be used ({e})"))
            };
            if let Some(why) = bad {
                log::error!(
                    "orphan list: inode {ino} {why}; the rest of the list is left \
                     for fsck.biofs"
                );
                self.sb.orphan_head = 0;
                self.sb_dirty = true;
                break;
            }
            let st = self.get_mut(ino)?;
            let next = std::mem::take(&mut st.inode.orphan_next);
            let unlinked = st.inode.nlink == 0;
            st.lookups = 0;
            st.opens = 0;
            self.sb.orphan_head = next;
            self.sb_dirty = true;
            if unlinked {
                self.evict(ino)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Encode the changed inodes (rebuilding changed extent trees) and the
    /// superblock into the running transaction.
    fn flush_inodes(&mut self) -> FsResult<()> {
        let dirty: Vec<u64> = std::mem::take(&mut self.dirty).into_iter().collect();
        for ino in dirty {
            let Some(st) = self.inodes.get(&ino) else {
                continue;
            };
            if st.tree_dirty {
                self.rewrite_tree(ino)?;
            }
            let Some(st) = self.inodes.get(&ino) else {
                continue;
            };
            let inode = st.inode.clone();
            let (b, off) = self.geo.ino_location(ino);
            let mut raw = self
                .bufs
                .read_meta(b)
                .map_err(|e| fail("inode table", e))?
                .to_vec();
            let slot = raw
                .get_mut(off..off + INODE_SIZE)
                .ok_or_else(short_itable)?;
            inode.encode(self.seed, ino, slot);
            self.bufs.write_meta(b, raw);
            if let Some(st) = self.inodes.get(&ino) {
                if st.lookups == 0 && st.opens == 0 && st.inode.nlink > 0 {
                    self.inodes.remove(&ino);
                }
            }
        }
        if self.sb_dirty {
            let raw = self.sb.encode(0);
            self.bufs.write_meta(0, raw);
            self.sb_dirty = false;
        }
        Ok(())
    }

    /// Replace `ino`'s tree by one built from its map.
    fn rewrite_tree(&mut self, ino: u64) -> FsResult<()> {
        let Some(st) = self.inodes.get_mut(&ino) else {
            return Ok(());
        };
        let old = std::mem::take(&mut st.tree);
        let map = st.map.clone();
        let goal = map.last().map_or(0, |e| e.physical_end());
        for b in &old {
            self.free_blocks(*b, 1, true)?;
        }
        let seed = self.seed;
        let mut err = None;
        let built = build_tree(seed, ino, &map, &mut || match self.alloc_blocks(goal, 1) {
            Ok((b, _)) => Ok(b),
            Err(e) => {
                err = Some(e);
                Err(FormatError::NoSpace {
                    what: "an extent tree block",
                })
            }
        });
        let (root, nodes) = match built {
            Ok(x) => x,
            Err(e) => return Err(err.unwrap_or_else(|| fail("extent tree", e))),
        };
        let new: Vec<u64> = nodes.iter().map(|n| n.0).collect();
        for (b, raw) in nodes {
            self.bufs.write_meta(b, raw);
        }
        if new.len() != old.len() {
            self.blocks_changed(ino);
        }
        if let Some(st) = self.inodes.get_mut(&ino) {
            st.inode.blocks = (st.inode.blocks + new.len() as u64).saturating_sub(old.len() as u64);
            st.inode.data = InodeData::Extents(root);
            st.tree = new;
            st.tree_dirty = false;
        }
        Ok(())
    }

    /// True when the running transaction should be committed soon (a
    /// quarter of the journal).
    pub fn txn_is_big(&self) -> bool {
        let (_, size) = self.bufs.j.log_usage();
        self.bufs.txn.log_blocks() * 4 > size || self.dirty.len() > 4096
    }

    /// Commit the running transaction; false if there was nothing to
    /// commit. The caller has written back the data the maps point to. On
    /// failure the filesystem refuses further changes.
    ///
    /// A panic inside (a bug, or a damaged structure an assertion met) is
    /// caught here: the dirty inodes may be half encoded, so the
    /// filesystem is marked failed exactly as for an error, instead of
    /// running on with those updates silently dropped.
    pub fn commit(&mut self) -> FsResult<bool> {
        if self.read_only {
            return Ok(false);
        }
        if self.failed {
            return Err(Errno::EIO);
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.commit_inner()));
        match r {
            Ok(r) => r,
            Err(p) => {
                self.failed = true;
                let why = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                log::error!(
                    "commit panicked ({why}); no more changes will be accepted, reads go on"
                );
                Err(Errno::EIO)
            }
        }
    }

    fn commit_inner(&mut self) -> FsResult<bool> {
        if let Err(e) = self.flush_inodes() {
            // Some inodes may be encoded and others not: nothing of this
            // transaction may reach the disk.
            self.failed = true;
            log::error!("commit failed; no more changes will be accepted");
            return Err(e);
        }
        if self.bufs.txn.is_empty() {
            return Ok(false);
        }
        if let Err(e) = self.bufs.commit() {
            self.failed = true;
            return Err(fail("journal commit (no more changes will be accepted)", e));
        }
        self.free_count += self.alloc.pending_len();
        self.alloc.committed();
        self.commits += 1;
        Ok(true)
    }

    /// The transaction running now, as a number: every change made so far
    /// is in it or in one before it, and it is committed once
    /// [`Meta::committed`] reaches it (jbd2's `tid`).
    pub fn running_tid(&self) -> u64 {
        self.commits + 1
    }

    /// Transactions committed by this mount.
    pub fn committed(&self) -> u64 {
        self.commits
    }

    /// Commit, write everything home and mark the filesystem clean; no
    /// change is accepted after.
    pub fn close(&mut self) -> FsResult<()> {
        self.commit()?;
        self.bufs.j.close().map_err(|e| fail("unmount", e))?;
        self.read_only = true;
        Ok(())
    }

    /// Free inodes (for statfs).
    pub fn free_inodes(&self) -> u64 {
        self.free_inodes
    }

    /// The free blocks and inodes kept in memory against the group
    /// descriptors' counts (which the allocator changes with them): a
    /// walk of every descriptor, for tests. `Err` names both.
    #[cfg(test)]
    pub fn check_free_counts(&mut self) -> std::result::Result<(), String> {
        let walked = self
            .alloc
            .free_counts(&mut self.bufs)
            .map_err(|e| e.to_string())?;
        let kept = (self.free_count, self.free_inodes);
        if walked != kept {
            return Err(format!(
                "free (blocks, inodes): {kept:?} in memory, {walked:?} in the descriptors"
            ));
        }
        Ok(())
    }
}

/// The generation of a new inode numbered `ino` (whose previous user had
/// generation `old`, if still known): unpredictable, as ext4's
/// (`get_random_u32()`), so that a file handle of a freed inode does not
/// open the next file given its number, this mount or a later one (a
/// freed inode's slot is zeroed, its generation forgotten). A reused
/// number matches an old handle's generation with odds of 2^-32.
fn new_generation(ino: u64, old: Option<u32>) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // Each RandomState is keyed from the OS's randomness (per thread, then
    // stepped per call), so SipHash of anything is an unpredictable value.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(ino);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let g = h.finish() as u32;
    if old == Some(g) {
        g.wrapping_add(1)
    } else {
        g
    }
}

/// Bump `ctime` (and `mtime` if `modify`) of `inode` to now.
pub fn touch(inode: &mut Inode, modify: bool) {
    let now = Timespec::now();
    inode.ctime = now;
    if modify {
        inode.mtime = now;
    }
}

#[cfg(test)]
mod tests {
    use super::new_generation;

    #[test]
    fn generations_differ_for_one_inode_number() {
        let gens: std::collections::HashSet<u32> =
            (0..1000).map(|_| new_generation(12, None)).collect();
        assert!(gens.len() > 990, "{} distinct of 1000", gens.len());
        for g in gens {
            assert_ne!(new_generation(12, Some(g)), g);
        }
    }
}
