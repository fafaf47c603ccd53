//! The metadata buffer cache: counterpart of the kernel's buffer heads
//! over the block device's page cache (fs/buffer.c, `__find_get_block`,
//! `__getblk`) and their LRU.
//!
//! - [`MetaBuf`] is one block's image, shared and never changed in place
//!   (as a buffer head's `b_data` that readers hold a reference to): a
//!   read hands out another reference, not a copy; a writer copies it once
//!   (`to_vec`) and gives the new image to the running transaction.
//! - [`BufferCache`] keeps clean images, at most its capacity, and drops the
//!   least recently used first.
//! - [`Buffers`] puts the running transaction and the journal's committed
//!   images in front of it: the [`MetaIo`] that allocation, directories,
//!   xattrs and inodes read and write through.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::txn::{Journaled, MetaIo, Txn};
use crate::format::error::Result;
use crate::format::BLOCK_SIZE;

/// One metadata block's contents, shared by the cache, the running
/// transaction, the journal and whoever read it. Immutable: to change a
/// block, copy it (`to_vec()`, through `Deref<Target = [u8]>`) and write
/// the copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaBuf(Arc<Vec<u8>>);

impl MetaBuf {
    /// Whether `a` and `b` are the same image in memory (not a copy).
    pub fn ptr_eq(a: &MetaBuf, b: &MetaBuf) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl From<Vec<u8>> for MetaBuf {
    /// Takes the vector over: no copy.
    fn from(v: Vec<u8>) -> MetaBuf {
        MetaBuf(Arc::new(v))
    }
}

impl std::ops::Deref for MetaBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl AsRef<[u8]> for MetaBuf {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// The smallest capacity [`BufferCache::new`] takes, in blocks.
const MIN_BLOCKS: usize = 16;

/// Clean metadata blocks with least-recently-used eviction. Each block
/// has the tick of its last use; `by_age` orders blocks by it, so the
/// oldest is its first entry. Counts hits, misses and evictions for
/// `biofs stats`.
pub struct BufferCache {
    blocks: FxHashMap<u64, (MetaBuf, u64)>,
    by_age: BTreeMap<u64, u64>,
    tick: u64,
    capacity: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// What `biofs stats` shows of the buffer cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufferStats {
    pub held: usize,
    pub capacity: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

impl BufferCache {
    /// A cache of at most `capacity` blocks (at least [`MIN_BLOCKS`]).
    pub fn new(capacity: usize) -> BufferCache {
        BufferCache {
            blocks: FxHashMap::default(),
            by_age: BTreeMap::new(),
            tick: 0,
            capacity: capacity.max(MIN_BLOCKS),
            hits: 0,
            misses: 0,
            evictions: 0,
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Block `b`'s image if cached, now the most recently used.
    pub fn get(&mut self, b: u64) -> Option<MetaBuf> {
        let tick = self.next_tick();
        let (img, used) = self.blocks.get_mut(&b)?;
        self.by_age.remove(used);
        *used = tick;
        self.by_age.insert(tick, b);
        Some(img.clone())
    }

    /// Cache `img` as block `b`'s (replacing an older one), the most
    /// recently used; the least recently used block goes if that makes one
    /// too many.
    pub fn insert(&mut self, b: u64, img: MetaBuf) {
        let tick = self.next_tick();
        if let Some((_, used)) = self.blocks.insert(b, (img, tick)) {
            self.by_age.remove(&used);
        }
        self.by_age.insert(tick, b);
        while self.blocks.len() > self.capacity {
            let Some((_, old)) = self.by_age.pop_first() else {
                break;
            };
            self.blocks.remove(&old);
            self.evictions += 1;
        }
    }

    /// Forget block `b` (freed, or about to be written behind the cache).
    pub fn remove(&mut self, b: u64) {
        if let Some((_, used)) = self.blocks.remove(&b) {
            self.by_age.remove(&used);
        }
    }

    pub fn stats(&self) -> BufferStats {
        BufferStats {
            held: self.blocks.len(),
            capacity: self.capacity,
            hits: self.hits,
            misses: self.misses,
            evictions: self.evictions,
        }
    }
}

/// Buffer cache capacity in blocks for a mount whose caches have
/// `cache_bytes` (`cache_size=`): an eighth of it, at least 16 MiB; the
/// page cache gets what is left (`MountOptions::page_cache_bytes`).
pub fn default_blocks(cache_bytes: u64) -> usize {
    let bytes = (cache_bytes / 8).max(16 << 20);
    usize::try_from(bytes / BLOCK_SIZE as u64).unwrap_or(usize::MAX)
}

/// The buffer cache in front of the journal: the running transaction's
/// images, then the journal's committed ones, then clean blocks read from
/// the device.
pub struct Buffers {
    pub j: Journaled,
    pub txn: Txn,
    pub cache: BufferCache,
}

impl Buffers {
    pub fn new(j: Journaled, capacity: usize) -> Buffers {
        Buffers {
            j,
            txn: Txn::default(),
            cache: BufferCache::new(capacity),
        }
    }

    /// Log the running transaction (`Journaled::commit`). Its images are
    /// then the blocks' latest contents: they go into the cache, shared
    /// with the journal, so a read after the checkpoint finds them there;
    /// its revoked blocks leave it.
    pub fn commit(&mut self) -> Result<()> {
        let txn = std::mem::take(&mut self.txn);
        let revokes: Vec<u64> = txn.revokes().to_vec();
        let images: Vec<(u64, MetaBuf)> = txn.images().map(|(b, i)| (b, i.clone())).collect();
        self.j.commit(txn)?;
        // As `Journaled::commit`: an image logged with a revoke of its
        // block in one transaction wins.
        for b in revokes {
            self.cache.remove(b);
        }
        for (b, img) in images {
            self.cache.insert(b, img);
        }
        Ok(())
    }
}

impl MetaIo for Buffers {
    fn read_meta(&mut self, b: u64) -> Result<MetaBuf> {
        let hit = match self.txn.image(b) {
            Some(img) => Some(img.clone()),
            None => match self.j.committed_image(b) {
                Some(img) => Some(img.clone()),
                None => self.cache.get(b),
            },
        };
        if let Some(img) = hit {
            self.cache.hits += 1;
            return Ok(img);
        }
        self.cache.misses += 1;
        let img = self.j.read(b)?;
        self.cache.insert(b, img.clone());
        Ok(img)
    }

    fn write_meta(&mut self, b: u64, data: Vec<u8>) {
        self.txn.write(b, data);
    }

    fn revoke_meta(&mut self, b: u64) {
        self.cache.remove(b);
        self.txn.revoke(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::mkfs::fresh_dev;
    use crate::format::superblock::Superblock;

    fn img(n: u8) -> MetaBuf {
        MetaBuf::from(vec![n; 8])
    }

    /// A new filesystem's journal opened, with a buffer cache of
    /// `capacity` blocks, and one block of its inode table.
    fn buffers(capacity: usize) -> (Buffers, u64) {
        let dev = fresh_dev(32 << 20);
        let sb = Superblock::decode(&dev.read_block(0).unwrap(), 0).unwrap();
        let itable = sb.geometry().unwrap().ino_location(1).0;
        let j = Journaled::open(Arc::new(dev), sb).unwrap();
        (Buffers::new(j, capacity), itable)
    }

    /// A cached block read twice is one image, not two copies; a write
    /// makes one copy, which the transaction, the journal and the cache
    /// then share, through a commit and a checkpoint.
    #[test]
    fn reads_share_one_image() {
        let (mut bufs, b) = buffers(64);
        let first = bufs.read_meta(b).unwrap();
        let again = bufs.read_meta(b).unwrap();
        assert!(MetaBuf::ptr_eq(&first, &again));
        assert_eq!((bufs.cache.misses, bufs.cache.hits), (1, 1));

        let mut changed = again.to_vec();
        changed[100] ^= 0xff;
        bufs.write_meta(b, changed.clone());
        let in_txn = bufs.read_meta(b).unwrap();
        assert_eq!(&in_txn[..], &changed[..]);
        assert!(MetaBuf::ptr_eq(&in_txn, &bufs.read_meta(b).unwrap()));
        bufs.commit().unwrap();
        let committed = bufs.read_meta(b).unwrap();
        assert!(
            MetaBuf::ptr_eq(&in_txn, &committed),
            "commit copies nothing"
        );
        bufs.j.checkpoint().unwrap();
        let after = bufs.read_meta(b).unwrap();
        assert!(MetaBuf::ptr_eq(&in_txn, &after), "the cache kept it");
        assert_eq!(bufs.cache.misses, 1);
        // A revoke drops it: the next read is the device's.
        bufs.revoke_meta(b);
        bufs.commit().unwrap();
        bufs.j.checkpoint().unwrap();
        let reread = bufs.read_meta(b).unwrap();
        assert!(!MetaBuf::ptr_eq(&after, &reread));
        assert_eq!(&reread[..], &changed[..], "the home has the image");
        assert_eq!(bufs.cache.misses, 2);
    }

    /// Past its capacity the cache evicts, and every read still sees the
    /// latest contents.
    #[test]
    fn evicted_blocks_read_back_the_same() {
        let (mut bufs, b0) = buffers(MIN_BLOCKS);
        let blocks: Vec<u64> = (b0..b0 + 100).collect();
        let first: Vec<MetaBuf> = blocks.iter().map(|&b| bufs.read_meta(b).unwrap()).collect();
        for (k, &b) in blocks.iter().enumerate().step_by(10) {
            let mut v = first[k].to_vec();
            v[0] = k as u8 + 1;
            bufs.write_meta(b, v);
        }
        bufs.commit().unwrap();
        bufs.j.checkpoint().unwrap();
        for (k, &b) in blocks.iter().enumerate() {
            let now = bufs.read_meta(b).unwrap();
            let want = if k % 10 == 0 {
                k as u8 + 1
            } else {
                first[k][0]
            };
            assert_eq!(now[0], want, "block {b}");
            assert_eq!(&now[1..], &first[k][1..], "block {b}");
        }
        let s = bufs.cache.stats();
        assert!(s.held <= MIN_BLOCKS && s.evictions > 0, "{s:?}");
    }

    #[test]
    fn least_recently_used_goes_first() {
        let mut c = BufferCache::new(MIN_BLOCKS);
        for b in 0..MIN_BLOCKS as u64 {
            c.insert(b, img(b as u8));
        }
        // Block 0 is used again: block 1 is now the least recently used.
        assert!(c.get(0).is_some());
        c.insert(100, img(100));
        assert!(c.get(1).is_none(), "the least recently used went");
        assert!(c.get(0).is_some(), "the one used again stayed");
        // Re-inserting refreshes too: 2 stays, 3 goes.
        c.insert(2, img(22));
        c.insert(101, img(101));
        assert!(c.get(3).is_none());
        assert_eq!(c.get(2).as_deref(), Some(&[22u8; 8][..]));
        assert_eq!(c.evictions, 2);
    }

    #[test]
    fn capacity_is_respected() {
        let mut c = BufferCache::new(40);
        for b in 0..1000u64 {
            c.insert(b, img(0));
            if b % 3 == 0 {
                c.get(b / 2);
            }
            assert!(c.stats().held <= 40);
        }
        let s = c.stats();
        assert_eq!((s.held, s.capacity), (40, 40));
        assert_eq!(s.evictions, 1000 - 40);
        assert_eq!(c.by_age.len(), c.blocks.len());
        // Removing leaves no stale age behind.
        c.remove(999);
        assert_eq!((c.blocks.len(), c.by_age.len()), (39, 39));
        assert_eq!(BufferCache::new(1).stats().capacity, MIN_BLOCKS);
    }

    #[test]
    fn default_capacity_follows_the_page_cache() {
        assert_eq!(default_blocks(256 << 20), (32 << 20) / BLOCK_SIZE);
        assert_eq!(default_blocks(16 << 20), (16 << 20) / BLOCK_SIZE);
    }
}
