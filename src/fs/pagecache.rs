//! The page cache of a mount: per file, its pages (dirty or clean) and
//! those being read, under a global size limit with eviction of clean
//! pages. The data path (`super::data`) fills and writes back through it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use crate::block::Page;
use crate::format::BLOCK_SIZE_U64;

use super::data::RA_MIN;

/// A cached page of a file.
pub(super) struct CachedPage {
    pub(super) page: Page,
    pub(super) dirty: bool,
    /// Bumped by every write, so writeback cleans only what it wrote.
    pub(super) gen: u64,
    /// A block is promised to this page (`Meta::reserve`): it was dirtied
    /// over a hole and has not been written back since.
    pub(super) reserved: bool,
}

/// A file's pages, and those being read right now (the kernel's locked
/// pages: a second reader waits for them rather than reading them again).
#[derive(Default)]
pub(super) struct PageMap {
    pub(super) pages: BTreeMap<u64, CachedPage>,
    pub(super) reading: HashSet<u64>,
    /// The file's cache was dropped ([`PageCache::forget_file`]): a read
    /// still holding it (a readahead thread's) must not add pages, which
    /// nobody would count off again.
    pub(super) gone: bool,
}

impl std::ops::Deref for PageMap {
    type Target = BTreeMap<u64, CachedPage>;
    fn deref(&self) -> &Self::Target {
        &self.pages
    }
}

impl std::ops::DerefMut for PageMap {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.pages
    }
}

/// One file's cache.
pub struct FileCache {
    pub rw: RwLock<()>,
    /// One writeback of the file at a time (a second writer waits for it,
    /// then finds its pages clean, rather than writing them again).
    pub(super) wb: Mutex<()>,
    pub(super) pages: Mutex<PageMap>,
    /// Signalled when reads of this file's pages complete.
    pub(super) read_done: Condvar,
    /// Where readahead of the file stands.
    pub(super) ra: Mutex<super::data::RaState>,
}

/// The page cache of a mount.
pub struct PageCache {
    files: Mutex<HashMap<u64, Arc<FileCache>>>,
    pub(super) cached: AtomicUsize,
    pub(super) dirty: AtomicUsize,
    limit: usize,
}

/// Lock a mutex, surviving a poisoned one (a panicked holder left the
/// data as it was; the filesystem reports errors rather than dying).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn read_lock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

pub fn write_lock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

impl PageCache {
    pub fn new(limit_bytes: u64) -> PageCache {
        PageCache {
            files: Mutex::new(HashMap::new()),
            cached: AtomicUsize::new(0),
            dirty: AtomicUsize::new(0),
            limit: (limit_bytes / BLOCK_SIZE_U64).max(256) as usize,
        }
    }

    /// The cache of file `ino` (made if absent).
    pub fn file(&self, ino: u64) -> Arc<FileCache> {
        lock(&self.files)
            .entry(ino)
            .or_insert_with(|| {
                Arc::new(FileCache {
                    rw: RwLock::new(()),
                    wb: Mutex::new(()),
                    pages: Mutex::new(PageMap::default()),
                    read_done: Condvar::new(),
                    ra: Mutex::new(super::data::RaState::default()),
                })
            })
            .clone()
    }

    pub(super) fn existing(&self, ino: u64) -> Option<Arc<FileCache>> {
        lock(&self.files).get(&ino).cloned()
    }

    /// Files with dirty pages.
    pub fn dirty_files(&self) -> Vec<u64> {
        let files: Vec<(u64, Arc<FileCache>)> = lock(&self.files)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        files
            .into_iter()
            .filter(|(_, f)| lock(&f.pages).values().any(|p| p.dirty))
            .map(|(k, _)| k)
            .collect()
    }

    /// Drop file `ino`'s cache (its inode is gone).
    /// Returns the block reservations its pages held (for the caller to
    /// give back).
    pub fn forget_file(&self, ino: u64) -> u64 {
        let Some(fc) = lock(&self.files).remove(&ino) else {
            return 0;
        };
        let pages = {
            let mut pm = lock(&fc.pages);
            pm.gone = true;
            std::mem::take(&mut pm.pages)
        };
        let dirty = pages.values().filter(|p| p.dirty).count();
        self.cached.fetch_sub(pages.len(), Ordering::Relaxed);
        self.dirty.fetch_sub(dirty, Ordering::Relaxed);
        pages.values().filter(|p| p.reserved).count() as u64
    }

    /// Drop file `ino`'s cache entry if it holds no dirty page and nobody
    /// uses it (the kernel forgot the inode): clean pages go with it, so
    /// the map of files doesn't grow with every file ever touched.
    pub fn release_file(&self, ino: u64) {
        let mut files = lock(&self.files);
        let Some(fc) = files.get(&ino) else { return };
        if Arc::strong_count(fc) > 1 {
            return;
        }
        let n = {
            let pm = lock(&fc.pages);
            if pm.values().any(|p| p.dirty) || !pm.reading.is_empty() {
                return;
            }
            pm.len()
        };
        files.remove(&ino);
        self.cached.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn over_dirty_limit(&self) -> bool {
        self.dirty.load(Ordering::Relaxed) > self.limit / 2
    }

    /// More than a quarter of the cache is dirty: time for background
    /// writeback (the kernel's `dirty_background_ratio`, half of the
    /// throttling threshold).
    pub fn over_background_limit(&self) -> bool {
        self.dirty.load(Ordering::Relaxed) > self.limit / 4
    }

    /// Evict clean pages until the cache is under its limit (files busy
    /// right now are skipped).
    pub fn shrink(&self) {
        self.shrink_inner(None);
    }

    /// After a read of `fc`: evict clean pages if the cache is over its
    /// limit, waiting for `fc`'s other users if need be (a file being
    /// streamed is always busy, and it is what fills the cache).
    pub(super) fn shrink_for(&self, fc: &FileCache) {
        self.shrink_inner(Some(fc));
    }

    /// [`PageCache::shrink_for`] file `ino` (the caller holds nothing).
    pub fn shrink_ino(&self, ino: u64) {
        if self.cached.load(Ordering::Relaxed) <= self.limit {
            return;
        }
        if let Some(fc) = self.existing(ino) {
            self.shrink_inner(Some(&fc));
        }
    }

    /// Evict down to three quarters of the limit: first the clean pages
    /// outside each file's readahead window (behind its reader, or never
    /// read sequentially), then, if that is not enough, every clean page.
    /// Counterpart of reclaim's inactive-list scan: pages a streaming
    /// reader has passed go first, the window it is about to read last.
    fn shrink_inner(&self, mine: Option<&FileCache>) {
        if self.cached.load(Ordering::Relaxed) <= self.limit {
            return;
        }
        let target = self.limit * 3 / 4;
        let files: Vec<Arc<FileCache>> = lock(&self.files).values().cloned().collect();
        for keep_window in [true, false] {
            if let Some(fc) = mine.filter(|_| self.cached.load(Ordering::Relaxed) > target) {
                let _g = write_lock(&fc.rw);
                self.evict_clean(fc, keep_window);
            }
            for fc in &files {
                if self.cached.load(Ordering::Relaxed) <= target {
                    return;
                }
                let Ok(_g) = fc.rw.try_write() else {
                    continue;
                };
                self.evict_clean(fc, keep_window);
            }
            if self.cached.load(Ordering::Relaxed) <= target {
                return;
            }
        }
    }

    /// Drop `fc`'s clean pages (but those in its readahead window if
    /// `keep_window`). The caller holds `fc.rw` exclusively.
    fn evict_clean(&self, fc: &FileCache, keep_window: bool) {
        let ra = *lock(&fc.ra);
        let end = ra
            .next
            .saturating_add(ra.window.max(RA_MIN) * 2)
            .max(ra.ahead_to.saturating_add(1));
        let ahead = ra.next..end;
        let mut pages = lock(&fc.pages);
        let before = pages.len();
        pages.retain(|i, p| p.dirty || (keep_window && ahead.contains(i)));
        self.cached
            .fetch_sub(before - pages.len(), Ordering::Relaxed);
    }

    /// Drop pages `[first, end)` (truncate and hole punching; the caller
    /// holds the file's `rw` exclusively).
    /// Returns the block reservations the dropped pages held.
    pub(super) fn drop_range(&self, fc: &FileCache, first: u64, end: u64) -> u64 {
        let mut pages = lock(&fc.pages);
        let gone: Vec<u64> = pages.range(first..end).map(|(k, _)| *k).collect();
        let mut reserved = 0;
        for k in gone {
            if let Some(p) = pages.remove(&k) {
                self.cached.fetch_sub(1, Ordering::Relaxed);
                if p.dirty {
                    self.dirty.fetch_sub(1, Ordering::Relaxed);
                }
                reserved += u64::from(p.reserved);
            }
        }
        reserved
    }

    pub fn stats(&self) -> (usize, usize, usize) {
        (
            self.cached.load(Ordering::Relaxed),
            self.dirty.load(Ordering::Relaxed),
            self.limit,
        )
    }
}
