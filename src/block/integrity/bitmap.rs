//! The dirty-region bitmap: dm-integrity's bitmap mode.
//!
//! One bit per region (the data covered by one tuple block). A set bit means
//! "data in this region may have been written without its tuples being
//! durable". The rules (docs/integrity.md has the whole crash story):
//!
//! 1. A bit is durable (bitmap block written and the device flushed) before
//!    [`DirtyLog::begin`] returns, i.e. before the data write is issued.
//! 2. A bit is cleared only by a flush, and only for regions that had no
//!    `begin` during the previous flush interval nor during this flush, had
//!    nothing in flight when the flush started, and were not left torn by a
//!    failed write: their tuples were written and flushed by this flush.
//! 3. Bitmap block writes are serialised (`io` mutex) and each writes a
//!    snapshot of the in-memory bitmap taken under that mutex, so the order
//!    on disk is the order of the snapshots: a clear never overwrites a
//!    later set.
//!
//! On disk, bit `r` is bit `r % 8` (LSB first) of byte `r / 8` of the bitmap
//! area; bitmap block `b` holds regions `b * 32768 .. (b + 1) * 32768`.

use std::collections::BTreeSet;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};

use super::error::io_ctx;
use super::layout::{
    encode_header, HeaderState, IntegrityLayout, META_BLOCK, REGIONS_PER_BITMAP_BLOCK,
};
use crate::block::backend::BlockBackend;
use crate::block::page::Page;

/// How many regions past a write's last one are also marked dirty when the
/// write looks sequential (the region before it is already dirty), at least.
/// The lookahead grows with the run of dirty regions behind the write, up to
/// [`MAX_LOOKAHEAD_REGIONS`], so a streaming writer commits the bitmap a
/// logarithmic number of times instead of once per region. It costs at most
/// that many extra regions to recompute after a crash. Untouched lookahead
/// bits are cleared by the next flushes.
pub const LOOKAHEAD_REGIONS: u64 = 4;

/// The largest lookahead (128 MiB of data at 4 KiB intervals).
pub const MAX_LOOKAHEAD_REGIONS: u64 = 64;

/// A plain bit set over regions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bits(Vec<u64>);

impl Bits {
    /// A bit set for `n` regions, all clear.
    pub fn new(n: u64) -> Bits {
        Bits(vec![0; n.div_ceil(64) as usize])
    }

    pub fn test(&self, r: u64) -> bool {
        self.0
            .get((r / 64) as usize)
            .is_some_and(|w| w & (1 << (r % 64)) != 0)
    }

    /// Set bit `r`; true if it was clear. Out-of-range bits are ignored.
    pub fn set(&mut self, r: u64) -> bool {
        match self.0.get_mut((r / 64) as usize) {
            Some(w) => {
                let was = *w & (1 << (r % 64)) != 0;
                *w |= 1 << (r % 64);
                !was
            }
            None => false,
        }
    }

    pub fn clear(&mut self, r: u64) {
        if let Some(w) = self.0.get_mut((r / 64) as usize) {
            *w &= !(1 << (r % 64));
        }
    }

    pub fn clear_all(&mut self) {
        self.0.fill(0);
    }

    /// The set bits, in order (skips zero words).
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().enumerate().flat_map(|(i, &w)| {
            (0..64u64)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| i as u64 * 64 + b)
        })
    }

    /// The on-disk bytes of bitmap block `block` (little-endian words).
    pub fn encode_block(&self, block: u64) -> Page {
        let words_per_block = (REGIONS_PER_BITMAP_BLOCK / 64) as usize;
        let mut page = Page::new();
        let buf = page.make_mut();
        let start = block as usize * words_per_block;
        let words = self.0.iter().skip(start).take(words_per_block);
        for (dst, w) in buf.chunks_exact_mut(8).zip(words) {
            dst.copy_from_slice(&w.to_le_bytes());
        }
        page
    }

    /// Merge the on-disk bytes of bitmap block `block` into this set;
    /// bits beyond the set's size are ignored.
    pub fn decode_block(&mut self, block: u64, bytes: &[u8]) {
        let words_per_block = (REGIONS_PER_BITMAP_BLOCK / 64) as usize;
        let start = block as usize * words_per_block;
        for (i, chunk) in bytes.chunks_exact(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            let word = u64::from_le_bytes(w);
            for b in (0..64).filter(|b| word & (1 << b) != 0) {
                self.set(((start + i) * 64 + b) as u64);
            }
        }
    }
}

struct LogState {
    /// The in-memory bitmap: what the next bitmap write will say.
    bits: Bits,
    /// Per bitmap block: the `set_seq` of the last bit set in it.
    block_seq: Vec<u64>,
    /// Bitmap blocks changed in memory since they were last written.
    dirty_blocks: BTreeSet<u64>,
    set_seq: u64,
    /// Every bit set at or before this sequence number is durable.
    durable_seq: u64,
    /// Region ranges (inclusive) with a write between `begin` and `end`.
    in_flight: Vec<(u64, u64)>,
    /// Regions with a `begin` since the current flush epoch started.
    touched: Bits,
    /// Regions where a write failed: their data may be torn, so their bit
    /// stays set until their tuples are recomputed (at shutdown or recovery).
    torn: Bits,
    /// The header says clean: it must say in-use before a bit may be set.
    header_clean: bool,
}

/// The dirty-region log of an open store.
pub struct DirtyLog {
    backend: Arc<dyn BlockBackend>,
    layout: IntegrityLayout,
    st: Mutex<LogState>,
    /// Serialises bitmap and header writes; taken before `st`.
    io: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DirtyLog {
    /// The log of a store whose on-disk bitmap is all clear and whose header
    /// already says in-use.
    pub fn new(backend: Arc<dyn BlockBackend>, layout: IntegrityLayout) -> DirtyLog {
        let regions = layout.regions();
        DirtyLog {
            backend,
            layout,
            st: Mutex::new(LogState {
                bits: Bits::new(regions),
                block_seq: vec![0; layout.bitmap_blocks as usize],
                dirty_blocks: BTreeSet::new(),
                set_seq: 0,
                durable_seq: 0,
                in_flight: Vec::new(),
                touched: Bits::new(regions),
                torn: Bits::new(regions),
                header_clean: false,
            }),
            io: Mutex::new(()),
        }
    }

    /// Counterpart of dm-integrity's `dm_integrity_map_continue()` bitmap
    /// step: count a write into regions `r0..=r1` in flight and make sure
    /// their bits are durable. Cheap (no I/O) when they already are.
    ///
    /// On error the write is no longer counted in flight (the caller must not
    /// issue it, nor call [`DirtyLog::end`]); bits set in memory stay set,
    /// which is always safe.
    pub fn begin(&self, r0: u64, r1: u64) -> io::Result<()> {
        let wait_for = {
            let mut st = lock(&self.st);
            st.in_flight.push((r0, r1));
            let mut newly_set = false;
            let mut wait_for = 0;
            for r in r0..=r1 {
                st.touched.set(r);
                newly_set |= Self::set_bit(&mut st, r);
                // (A region past the bitmap waits for every set bit.)
                let seq = (st.block_seq.get((r / REGIONS_PER_BITMAP_BLOCK) as usize))
                    .map_or(st.set_seq, |&s| s);
                wait_for = wait_for.max(seq);
            }
            if newly_set && r0 > 0 && st.bits.test(r0 - 1) {
                let run = (1..=MAX_LOOKAHEAD_REGIONS)
                    .take_while(|&k| r0 >= k && st.bits.test(r0 - k))
                    .count() as u64;
                let ahead = run.clamp(LOOKAHEAD_REGIONS, MAX_LOOKAHEAD_REGIONS);
                let last = (r1 + ahead).min(self.layout.regions() - 1);
                for r in r1 + 1..=last {
                    Self::set_bit(&mut st, r);
                }
            }
            if wait_for <= st.durable_seq && !st.header_clean {
                return Ok(());
            }
            wait_for
        };
        let res = self.commit(wait_for);
        if res.is_err() {
            self.end(r0, r1, false);
        }
        res
    }

    /// Set bit `r` in memory; true if it was clear.
    fn set_bit(st: &mut LogState, r: u64) -> bool {
        if !st.bits.set(r) {
            return false;
        }
        let block = r / REGIONS_PER_BITMAP_BLOCK;
        st.set_seq += 1;
        let seq = st.set_seq;
        if let Some(s) = st.block_seq.get_mut(block as usize) {
            *s = seq;
        }
        st.dirty_blocks.insert(block);
        true
    }

    /// The write into `r0..=r1` is over. With `failed`, the regions' data may
    /// be torn: their bits stay set until the tuples are recomputed.
    pub fn end(&self, r0: u64, r1: u64, failed: bool) {
        let mut st = lock(&self.st);
        if let Some(i) = st.in_flight.iter().position(|&x| x == (r0, r1)) {
            st.in_flight.swap_remove(i);
        }
        if failed {
            for r in r0..=r1 {
                st.torn.set(r);
            }
        }
    }

    /// Write every dirty bitmap block and flush, unless bits up to `seq` are
    /// already durable (another thread's flush covered them: group commit).
    fn commit(&self, seq: u64) -> io::Result<()> {
        let _io = lock(&self.io);
        // Snapshot and target in one critical section: every bit set up to
        // `target` is in these blocks (or was written by an earlier snapshot).
        let (blocks, header, target) = {
            let mut st = lock(&self.st);
            if seq <= st.durable_seq && !st.header_clean {
                return Ok(());
            }
            (Self::take_dirty(&mut st), st.header_clean, st.set_seq)
        };
        let res = self.write_blocks(&blocks, header.then_some(HeaderState::InUse), true);
        let mut st = lock(&self.st);
        match res {
            Ok(()) => {
                st.durable_seq = st.durable_seq.max(target);
                if header {
                    st.header_clean = false;
                }
                Ok(())
            }
            Err(e) => {
                st.dirty_blocks.extend(blocks.iter().map(|(b, _)| *b));
                Err(e)
            }
        }
    }

    fn take_dirty(st: &mut LogState) -> Vec<(u64, Page)> {
        let blocks = std::mem::take(&mut st.dirty_blocks);
        blocks
            .into_iter()
            .map(|b| (b, st.bits.encode_block(b)))
            .collect()
    }

    /// Write `header` (if any), then `blocks`, then flush if asked.
    fn write_blocks(
        &self,
        blocks: &[(u64, Page)],
        header: Option<HeaderState>,
        flush: bool,
    ) -> io::Result<()> {
        if let Some(state) = header {
            write_header(&*self.backend, &self.layout, state)?;
        }
        for (b, page) in blocks {
            let off = self.layout.bitmap_block_offset(*b);
            self.backend
                .write_at(&[IoSlice::new(page.as_slice())], off, false)
                .map_err(|e| io_ctx("bitmap write", off, e))?;
        }
        if flush {
            self.backend
                .flush()
                .map_err(|e| io_ctx("bitmap flush", 0, e))?;
        }
        Ok(())
    }

    /// Start of a flush: the regions whose bits this flush may clear, and a
    /// new epoch for "touched".
    pub fn flush_begin(&self) -> Bits {
        let mut st = lock(&self.st);
        let mut cand = st.bits.clone();
        for (w, (t, torn)) in cand.0.iter_mut().zip(st.touched.0.iter().zip(&st.torn.0)) {
            *w &= !t & !torn;
        }
        for &(r0, r1) in &st.in_flight {
            for r in r0..=r1 {
                cand.clear(r);
            }
        }
        st.touched.clear_all();
        cand
    }

    /// End of a flush whose tuple writes and device flush succeeded: clear
    /// the candidates nobody touched meanwhile and write the bitmap (without
    /// a device flush: a lost clear only costs a recompute).
    pub fn flush_end(&self, cand: &Bits) -> io::Result<()> {
        let _io = lock(&self.io);
        let blocks = {
            let mut st = lock(&self.st);
            for r in cand.iter() {
                if !st.touched.test(r) && !st.torn.test(r) && st.bits.test(r) {
                    st.bits.clear(r);
                    st.dirty_blocks.insert(r / REGIONS_PER_BITMAP_BLOCK);
                }
            }
            Self::take_dirty(&mut st)
        };
        let res = self.write_blocks(&blocks, None, false);
        if res.is_err() {
            lock(&self.st)
                .dirty_blocks
                .extend(blocks.iter().map(|(b, _)| *b));
        }
        res
    }

    /// The regions left torn by failed writes.
    pub fn torn(&self) -> Bits {
        lock(&self.st).torn.clone()
    }

    /// True while any write is between `begin` and `end`.
    pub fn busy(&self) -> bool {
        !lock(&self.st).in_flight.is_empty()
    }

    /// Clean close, after every tuple is durable and torn regions were
    /// recomputed: clear every bit, write the bitmap, mark the header clean,
    /// flush. Fails with `EBUSY` while writes are in flight.
    pub fn close(&self) -> io::Result<()> {
        let _io = lock(&self.io);
        let blocks = {
            let mut st = lock(&self.st);
            if !st.in_flight.is_empty() {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            let dirty: Vec<u64> = st
                .bits
                .iter()
                .map(|r| r / REGIONS_PER_BITMAP_BLOCK)
                .collect();
            st.dirty_blocks.extend(dirty);
            st.bits.clear_all();
            st.torn.clear_all();
            Self::take_dirty(&mut st)
        };
        let res = self.write_blocks(&blocks, None, true).and_then(|()| {
            write_header(&*self.backend, &self.layout, HeaderState::Clean)?;
            self.backend
                .flush()
                .map_err(|e| io_ctx("header flush", 0, e))
        });
        let mut st = lock(&self.st);
        match res {
            Ok(()) => st.header_clean = true,
            Err(_) => st.dirty_blocks.extend(blocks.iter().map(|(b, _)| *b)),
        }
        res
    }
}

/// Write the header block in `state` (not flushed).
pub fn write_header(
    backend: &dyn BlockBackend,
    layout: &IntegrityLayout,
    state: HeaderState,
) -> io::Result<()> {
    let page = Page::from_slice(&encode_header(layout, state));
    let off = layout.header_offset;
    debug_assert_eq!(page.as_slice().len() as u64, META_BLOCK);
    backend
        .write_at(&[IoSlice::new(page.as_slice())], off, false)
        .map_err(|e| io_ctx("header write", off, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_encode_lsb_first_per_byte() {
        let mut b = Bits::new(70_000);
        b.set(0);
        b.set(9);
        b.set(32768 + 3);
        let p0 = b.encode_block(0);
        assert_eq!(&p0.as_slice()[..2], &[0b1, 0b10]);
        let p1 = b.encode_block(1);
        assert_eq!(p1.as_slice()[0], 0b1000);
        let mut back = Bits::new(70_000);
        back.decode_block(0, p0.as_slice());
        back.decode_block(1, p1.as_slice());
        assert_eq!(back, b);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 9, 32771]);
    }

    #[test]
    fn out_of_range_bits_are_ignored() {
        let mut b = Bits::new(10);
        assert!(!b.set(1000));
        assert!(!b.test(1000));
        // Garbage past the last region in an on-disk block is dropped.
        b.decode_block(0, &[0xff; 4096]);
        assert_eq!(b.iter().count(), 64, "the set rounds up to whole words");
        assert!(!b.test(64));
    }
}
