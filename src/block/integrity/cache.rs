//! A bounded write-back cache of tuple blocks.
//!
//! Each entry is one 4 KiB tuple block (512 tuples). An entry may be
//! *partial*: `end_write` stores new tuples without reading the block first
//! (it must not do I/O), marking only those slots valid; the rest are merged
//! in from the device when someone needs them (a load, or writeback).
//!
//! Invariants, all under the one `state` mutex:
//! - A device read or write of block `b` happens only while its entry is
//!   `busy`, and a busy entry is never removed. So when no entry for `b` is
//!   busy (and `b` is not being zeroed), the device copy of `b` is stable,
//!   and the truth is: valid slots of the cached entry, the device elsewhere.
//! - `dirty` is cleared only once the block's content is durable (written
//!   with FUA, or written and then flushed, with no change in between as
//!   `version` proves). So an absent or clean block is durable on disk.
//! - Every dirty block's region has its bitmap bit durably set (the store's
//!   `begin_write` rule), so writing a dirty block back early is always safe.
//!
//! Device I/O is never done with the mutex held.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, IoSlice, IoSliceMut};
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::error::io_ctx;
use super::layout::{IntegrityLayout, META_BLOCK, TUPLES_PER_BLOCK};
use super::profile::{IntegrityProfile, Tuple};
use crate::block::backend::BlockBackend;
use crate::block::page::Page;

const SLOTS: usize = TUPLES_PER_BLOCK as usize;
const TS: usize = IntegrityProfile::TUPLE_SIZE;
const ALL_VALID: [u64; SLOTS / 64] = [u64::MAX; SLOTS / 64];

struct Entry {
    buf: Page,
    valid: [u64; SLOTS / 64],
    dirty: bool,
    busy: bool,
    version: u64,
    stamp: u64,
}

impl Entry {
    fn new(stamp: u64) -> Entry {
        Entry {
            buf: Page::new(),
            valid: [0; SLOTS / 64],
            dirty: false,
            busy: false,
            version: 0,
            stamp,
        }
    }

    fn has(&self, slots: &Range<usize>) -> bool {
        slots.clone().all(|s| {
            self.valid
                .get(s / 64)
                .is_some_and(|w| w & (1 << (s % 64)) != 0)
        })
    }

    fn full(&self) -> bool {
        self.valid == ALL_VALID
    }
}

#[derive(Default)]
struct State {
    map: HashMap<u64, Entry>,
    /// LRU order of clean and dirty entries, by stamp.
    clean_lru: BTreeMap<u64, u64>,
    dirty_lru: BTreeMap<u64, u64>,
    clock: u64,
    /// Tuple block ranges being zeroed on the device by `zero_blocks`.
    zeroing: Vec<Range<u64>>,
    /// First writeback error from an eviction, reported by the next flush
    /// (the kernel's `errseq_t` / `AS_EIO` on the mapping).
    wb_error: Option<io::Error>,
}

impl State {
    fn zeroing(&self, block: u64) -> bool {
        self.zeroing.iter().any(|r| r.contains(&block))
    }

    fn unlink(&mut self, block: u64) {
        if let Some(e) = self.map.get(&block) {
            let stamp = e.stamp;
            self.clean_lru.remove(&stamp);
            self.dirty_lru.remove(&stamp);
        }
    }

    /// Re-file `block` at the young end of the right LRU list.
    fn touch(&mut self, block: u64) {
        self.unlink(block);
        self.clock += 1;
        let stamp = self.clock;
        if let Some(e) = self.map.get_mut(&block) {
            e.stamp = stamp;
            let lru = if e.dirty {
                &mut self.dirty_lru
            } else {
                &mut self.clean_lru
            };
            lru.insert(stamp, block);
        }
    }

    fn remove(&mut self, block: u64) {
        self.unlink(block);
        self.map.remove(&block);
    }

    fn insert_new(&mut self, block: u64) -> &mut Entry {
        self.map.insert(block, Entry::new(0));
        self.touch(block);
        self.map.entry(block).or_insert_with(|| Entry::new(0))
    }
}

/// The tuple block cache of one store.
pub struct TupleCache {
    backend: Arc<dyn BlockBackend>,
    layout: IntegrityLayout,
    capacity: usize,
    state: Mutex<State>,
    cv: Condvar,
}

impl TupleCache {
    /// A cache of at most about `capacity` blocks (at least 4). Entries with
    /// I/O in progress are never evicted, so the bound is soft.
    pub fn new(
        backend: Arc<dyn BlockBackend>,
        layout: IntegrityLayout,
        capacity: usize,
    ) -> TupleCache {
        TupleCache {
            backend,
            layout,
            capacity: capacity.max(4),
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.cv.wait(st).unwrap_or_else(|e| e.into_inner())
    }

    fn read_block(&self, block: u64) -> io::Result<Page> {
        let mut page = Page::new();
        let off = self.layout.tuple_block_offset(block);
        self.backend
            .read_at(&mut [IoSliceMut::new(page.make_mut())], off)
            .map_err(|e| io_ctx("tuple block read", off, e))?;
        Ok(page)
    }

    /// Make the entry for `block` exist and hold valid `slots`, reading the
    /// block from the device if needed. Returns with the lock held.
    fn ensure<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        block: u64,
        slots: Range<usize>,
    ) -> (MutexGuard<'a, State>, io::Result<()>) {
        loop {
            if st.zeroing(block) {
                st = self.wait(st);
                continue;
            }
            match st.map.get_mut(&block) {
                Some(e) if e.has(&slots) => return (st, Ok(())),
                Some(e) if e.busy => {
                    st = self.wait(st);
                    continue;
                }
                Some(e) => e.busy = true,
                None => st.insert_new(block).busy = true,
            }
            drop(st);
            let res = self.read_block(block);
            st = self.lock();
            let res = Self::fill(&mut st, block, res);
            self.cv.notify_all();
            if res.is_err() {
                return (st, res);
            }
        }
    }

    /// Complete a device read of `block`: merge it under the valid slots.
    fn fill(st: &mut State, block: u64, read: io::Result<Page>) -> io::Result<()> {
        let Some(e) = st.map.get_mut(&block) else {
            return Ok(());
        };
        e.busy = false;
        match read {
            Ok(page) => {
                let (buf, dev) = (e.buf.make_mut(), page.as_slice());
                let slots = buf.chunks_exact_mut(TS).zip(dev.chunks_exact(TS));
                for (s, (mine, read)) in slots.enumerate().take(SLOTS) {
                    if e.valid
                        .get(s / 64)
                        .is_some_and(|w| w & (1 << (s % 64)) == 0)
                    {
                        mine.copy_from_slice(read);
                    }
                }
                e.valid = ALL_VALID;
                Ok(())
            }
            Err(err) => {
                if !e.dirty && e.valid == [0; SLOTS / 64] {
                    st.remove(block);
                }
                Err(err)
            }
        }
    }

    /// Copy tuples `first_slot..` of `block` into `out`.
    pub fn load(&self, block: u64, first_slot: usize, out: &mut [Tuple]) -> io::Result<()> {
        let slots = first_slot..first_slot + out.len();
        let (mut st, res) = self.ensure(self.lock(), block, slots.clone());
        res?;
        if let Some(e) = st.map.get(&block) {
            let buf = e.buf.as_slice();
            for (t, s) in out.iter_mut().zip(slots) {
                let src = buf.get(s * TS..(s + 1) * TS);
                t.0.copy_from_slice(src.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?);
            }
        }
        st.touch(block);
        Ok(())
    }

    /// Store `tuples` at `first_slot..` of `block` and mark it dirty. No I/O.
    pub fn update(&self, block: u64, first_slot: usize, tuples: &[Tuple]) {
        let mut st = self.lock();
        let e = match st.map.get_mut(&block) {
            Some(e) => e,
            None => st.insert_new(block),
        };
        let buf = e.buf.make_mut();
        // (Callers pass pieces of one block: every slot is below SLOTS.)
        for (s, t) in (first_slot..).zip(tuples) {
            if let (Some(dst), Some(w)) =
                (buf.get_mut(s * TS..(s + 1) * TS), e.valid.get_mut(s / 64))
            {
                dst.copy_from_slice(&t.0);
                *w |= 1 << (s % 64);
            }
        }
        e.dirty = true;
        e.version += 1;
        st.touch(block);
    }

    /// Write `block` if it is dirty. With `fua` the block is durable (and
    /// marked clean) on return. Returns the version written, `None` if
    /// there was nothing to write. Waits for other I/O on the block first.
    pub fn writeback(&self, block: u64, fua: bool) -> io::Result<Option<u64>> {
        let mut st = self.lock();
        loop {
            if st.zeroing(block) {
                st = self.wait(st);
                continue;
            }
            let Some(e) = st.map.get_mut(&block) else {
                return Ok(None);
            };
            if !e.dirty {
                return Ok(None);
            }
            if e.busy {
                st = self.wait(st);
                continue;
            }
            if !e.full() {
                let (g, res) = self.ensure(st, block, 0..SLOTS);
                st = g;
                res?;
                continue;
            }
            e.busy = true;
            let (snap, version) = (Page::from_slice(e.buf.as_slice()), e.version);
            drop(st);
            let off = self.layout.tuple_block_offset(block);
            let res = self
                .backend
                .write_at(&[IoSlice::new(snap.as_slice())], off, fua);
            st = self.lock();
            if let Some(e) = st.map.get_mut(&block) {
                e.busy = false;
                if res.is_ok() && fua && e.version == version {
                    e.dirty = false;
                }
            }
            st.touch(block);
            self.cv.notify_all();
            res.map_err(|e| io_ctx("tuple block write", off, e))?;
            return Ok(Some(version));
        }
    }

    /// After a device flush: blocks written at these versions and unchanged
    /// since are durable, so clean.
    pub fn mark_clean(&self, written: &[(u64, u64)]) {
        let mut st = self.lock();
        for &(block, version) in written {
            if let Some(e) = st.map.get_mut(&block) {
                if e.version == version && e.full() {
                    e.dirty = false;
                    st.touch(block);
                }
            }
        }
    }

    /// The dirty blocks, oldest first.
    pub fn dirty_blocks(&self) -> Vec<u64> {
        self.lock().dirty_lru.values().copied().collect()
    }

    /// The first eviction writeback error since the last call.
    pub fn take_error(&self) -> Option<io::Error> {
        self.lock().wb_error.take()
    }

    /// Evict until within capacity: the least recently used clean block
    /// first; if none, write back (FUA) and drop the oldest dirty one. A
    /// writeback error is kept for the next flush and stops the shrink.
    pub fn shrink(&self) {
        loop {
            // The bound is soft: if another thread holds the lock, leave the
            // trimming to a later call instead of queueing on the lock (the
            // read path calls this once per request).
            let mut st = match self.state.try_lock() {
                Ok(st) => st,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            if st.map.len() <= self.capacity {
                return;
            }
            let idle = |st: &State, b: &u64| st.map.get(b).is_some_and(|e| !e.busy);
            let clean = st.clean_lru.values().copied().find(|b| idle(&st, b));
            if let Some(b) = clean {
                st.remove(b);
                continue;
            }
            let Some(b) = st.dirty_lru.values().copied().find(|b| idle(&st, b)) else {
                return;
            };
            drop(st);
            if let Err(e) = self.writeback(b, true) {
                log::error!("integrity: evicting tuple block {b}: {e}");
                let mut st = self.lock();
                st.wb_error.get_or_insert(e);
                return;
            }
        }
    }

    /// Make tuple blocks `blocks` all-zero on the device, dropping any cached
    /// copies. Loads and writebacks of these blocks wait until it is done.
    pub fn zero_blocks(&self, blocks: Range<u64>) -> io::Result<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        let mut st = self.lock();
        st.zeroing.push(blocks.clone());
        while st.map.iter().any(|(b, e)| e.busy && blocks.contains(b)) {
            st = self.wait(st);
        }
        let doomed: Vec<u64> = st
            .map
            .keys()
            .copied()
            .filter(|b| blocks.contains(b))
            .collect();
        for b in doomed {
            st.remove(b);
        }
        drop(st);
        let off = self.layout.tuple_block_offset(blocks.start);
        let len = (blocks.end - blocks.start) * META_BLOCK;
        let res = self.backend.write_zeroes(off, len);
        let mut st = self.lock();
        if let Some(i) = st.zeroing.iter().position(|r| *r == blocks) {
            st.zeroing.swap_remove(i);
        }
        self.cv.notify_all();
        res.map_err(|e| io_ctx("tuple block zeroing", off, e))
    }

    /// Drop every cached copy of `block` (after it was rewritten behind the
    /// cache, e.g. recomputed). Waits for I/O on it to finish.
    pub fn invalidate(&self, block: u64) {
        let mut st = self.lock();
        while st.map.get(&block).is_some_and(|e| e.busy) {
            st = self.wait(st);
        }
        st.remove(block);
    }

    /// Number of cached blocks (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }
}
