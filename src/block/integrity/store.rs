//! The on-device tuple store: dm-integrity's bitmap mode for biofs.
//!
//! The store keeps one [`Tuple`] per data interval in tuple blocks at the end
//! of the device, behind a write-back [`TupleCache`], and a dirty-region
//! [`DirtyLog`] that makes torn data/tuple writes recoverable. See
//! docs/integrity.md for the layout and the crash story.
//!
//! Protocol for the queue workers, per data request:
//! - read: read the data, [`IntegrityStore::load`] the tuples, verify.
//! - write: [`IntegrityStore::begin_write`] (must succeed before the data
//!   write is issued), write the data, then [`IntegrityStore::end_write`]
//!   with the new tuples on success or `None` on failure; with FUA, then
//!   [`IntegrityStore::persist`].
//! - discard / write-zeroes: `begin_write`, issue it, then on success
//!   [`IntegrityStore::clear`] (which ends the write), on failure `end_write(None)`.
//! - flush: flush the data, then [`IntegrityStore::flush`].

use std::io::{self, IoSliceMut};
use std::sync::{Arc, Mutex};

use super::bitmap::{write_header, Bits, DirtyLog};
use super::cache::TupleCache;
use super::error::{io_ctx, IntegrityError};
use super::layout::{
    decode_header, header_offset, layout, HeaderState, IntegrityLayout, META_BLOCK,
    TUPLES_PER_BLOCK,
};
use super::profile::{IntegrityProfile, Tuple};
use crate::block::backend::BlockBackend;
use crate::block::page::Page;

/// The integrity tuples of one device, open for I/O.
///
/// All methods take `&self` and may be called from many threads at once.
/// Dropping the store without [`IntegrityStore::shutdown`] is a crash as far
/// as the device is concerned: the next `open` runs recovery.
pub struct IntegrityStore {
    backend: Arc<dyn BlockBackend>,
    layout: IntegrityLayout,
    cache: TupleCache,
    log: DirtyLog,
    recovered: u64,
    /// Serialises `flush` and `shutdown`.
    flush_lock: Mutex<()>,
}

/// Refuse devices whose logical block does not divide the 4 KiB metadata block.
fn check_device(backend: &dyn BlockBackend) -> Result<u64, IntegrityError> {
    let info = backend.info();
    let lbs = u64::from(info.logical_block_size);
    if lbs == 0 || lbs > META_BLOCK || META_BLOCK % lbs != 0 {
        return Err(IntegrityError::Unsupported(format!(
            "{} device with {lbs}-byte logical blocks: integrity metadata needs a block size dividing 4096",
            info.kind
        )));
    }
    Ok(info.size_bytes)
}

/// Read and validate the header; `Ok(None)` if there is none.
fn read_header(
    backend: &dyn BlockBackend,
) -> Result<Option<(IntegrityLayout, HeaderState)>, IntegrityError> {
    let size = check_device(backend)?;
    let Some(off) = header_offset(size) else {
        return Ok(None);
    };
    let mut page = Page::new();
    backend
        .read_at(&mut [IoSliceMut::new(page.make_mut())], off)
        .map_err(|e| IntegrityError::io("header read", off, e))?;
    decode_header(page.as_slice(), size)
}

impl IntegrityStore {
    /// Lay out the integrity metadata on `backend` for `profile`: zero the
    /// tuple and bitmap blocks (every interval "never written", every region
    /// clean) with one `write_zeroes`, write a clean header, flush.
    ///
    /// Fails with `DeviceTooSmall`, `Unsupported` (logical block size) or `Io`.
    /// Existing data is not touched.
    pub fn format(
        backend: &dyn BlockBackend,
        profile: IntegrityProfile,
    ) -> Result<IntegrityLayout, IntegrityError> {
        let size = check_device(backend)?;
        let l = layout(size, &profile)?;
        backend
            .write_zeroes(l.tuple_start, l.header_offset - l.tuple_start)
            .map_err(|e| IntegrityError::io("metadata zeroing", l.tuple_start, e))?;
        write_header(backend, &l, HeaderState::Clean)
            .map_err(|e| IntegrityError::io("format", l.header_offset, e))?;
        backend
            .flush()
            .map_err(|e| IntegrityError::io("format flush", l.header_offset, e))?;
        Ok(l)
    }

    /// The profile of the valid header on `backend`; `Ok(None)` if there is no
    /// header (magic absent), `Err(BadHeader)` if there is a damaged one.
    pub fn probe(backend: &dyn BlockBackend) -> Result<Option<IntegrityProfile>, IntegrityError> {
        Ok(read_header(backend)?.map(|(l, _)| l.profile))
    }

    /// Open the store on a formatted device with a tuple cache of about
    /// `cache_bytes`. If the header says in-use (the last user crashed),
    /// recompute the tuples of every dirty region from the data on the
    /// device first. Then mark the header in-use, durably.
    ///
    /// Fails with `NoHeader`, `BadHeader`, `Unsupported` or `Io`; on failure
    /// the device is left as it was or with recovery partly done (which the
    /// next open redoes).
    pub fn open(
        backend: Arc<dyn BlockBackend>,
        cache_bytes: usize,
    ) -> Result<IntegrityStore, IntegrityError> {
        let (l, state) = read_header(&*backend)?.ok_or_else(|| IntegrityError::NoHeader {
            offset: header_offset(backend.info().size_bytes).unwrap_or(0),
        })?;
        let recovered = match state {
            HeaderState::InUse => recover(&*backend, &l)?,
            HeaderState::Clean => 0,
        };
        write_header(&*backend, &l, HeaderState::InUse)
            .map_err(|e| IntegrityError::io("open", l.header_offset, e))?;
        backend
            .flush()
            .map_err(|e| IntegrityError::io("open flush", l.header_offset, e))?;
        let capacity = cache_bytes / META_BLOCK as usize;
        Ok(IntegrityStore {
            cache: TupleCache::new(backend.clone(), l, capacity),
            log: DirtyLog::new(backend.clone(), l),
            backend,
            layout: l,
            recovered,
            flush_lock: Mutex::new(()),
        })
    }

    pub fn profile(&self) -> &IntegrityProfile {
        &self.layout.profile
    }

    /// Sectors of data: the filesystem may use `[0, data_sectors)`.
    pub fn data_sectors(&self) -> u64 {
        self.layout.data_sectors
    }

    /// Where the metadata lives.
    pub fn layout(&self) -> &IntegrityLayout {
        &self.layout
    }

    /// Regions whose tuples `open` recomputed after an unclean shutdown.
    pub fn recovered_regions(&self) -> u64 {
        self.recovered
    }

    /// `EINVAL` unless `first..first + count` lies within the data intervals.
    fn check_range(&self, first: u64, count: u64) -> io::Result<()> {
        match first.checked_add(count) {
            Some(end) if end <= self.layout.intervals() => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "integrity: intervals {first}+{count} beyond the data area ({} intervals)",
                    self.layout.intervals()
                ),
            )),
        }
    }

    /// The regions (inclusive) touched by `count > 0` intervals from `first`.
    fn regions(first: u64, count: u64) -> (u64, u64) {
        (
            first / TUPLES_PER_BLOCK,
            (first + count - 1) / TUPLES_PER_BLOCK,
        )
    }

    /// Split `first..first + count` by tuple block: (block, first slot, n, offset in range).
    fn pieces(first: u64, count: u64) -> impl Iterator<Item = (u64, usize, usize, usize)> {
        let mut i = first;
        let end = first + count;
        std::iter::from_fn(move || {
            if i >= end {
                return None;
            }
            let slot = i % TUPLES_PER_BLOCK;
            let n = (TUPLES_PER_BLOCK - slot).min(end - i);
            let piece = (
                i / TUPLES_PER_BLOCK,
                slot as usize,
                n as usize,
                (i - first) as usize,
            );
            i += n;
            Some(piece)
        })
    }

    /// The stored tuples of intervals `first_interval..+out.len()`, from the
    /// cache or the tuple blocks. Fails with `EINVAL` out of range or the
    /// device's error (with context) when a tuple block cannot be read.
    pub fn load(&self, first_interval: u64, out: &mut [Tuple]) -> io::Result<()> {
        self.check_range(first_interval, out.len() as u64)?;
        for (block, slot, n, at) in Self::pieces(first_interval, out.len() as u64) {
            let out = out
                .get_mut(at..at + n)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            self.cache.load(block, slot, out)?;
        }
        self.cache.shrink();
        Ok(())
    }

    /// Before a data write (or discard) of `count` intervals is issued:
    /// make every region it touches durably dirty, and count it in flight.
    /// No I/O when the bits are already durable.
    ///
    /// On error the data write must not be issued and `end_write` must not
    /// be called. May write back cached tuple blocks to stay within the cache
    /// size (errors from that are reported by the next `flush`).
    pub fn begin_write(&self, first_interval: u64, count: u64) -> io::Result<()> {
        self.check_range(first_interval, count)?;
        if count == 0 {
            return Ok(());
        }
        let (r0, r1) = Self::regions(first_interval, count);
        self.log.begin(r0, r1)?;
        self.cache.shrink();
        Ok(())
    }

    /// After the data write started by `begin_write` completed. With
    /// `Some(tuples)` (one per interval) the write succeeded: the tuples go to
    /// the cache, dirty. With `None` it failed: the stored tuples are left
    /// as they were and the regions stay dirty until recomputed (at shutdown
    /// or recovery), since the data may be torn. Never does I/O.
    ///
    /// A `tuples` of the wrong length is a caller bug: logged, and handled as
    /// a failed write.
    pub fn end_write(&self, first_interval: u64, count: u64, tuples: Option<&[Tuple]>) {
        if count == 0 || self.check_range(first_interval, count).is_err() {
            return;
        }
        let (r0, r1) = Self::regions(first_interval, count);
        let tuples = tuples.filter(|t| {
            let ok = t.len() as u64 == count;
            if !ok {
                log::error!(
                    "integrity: end_write of {count} intervals got {} tuples",
                    t.len()
                );
            }
            ok
        });
        if let Some(tuples) = tuples {
            for (block, slot, n, at) in Self::pieces(first_interval, count) {
                if let Some(piece) = tuples.get(at..at + n) {
                    self.cache.update(block, slot, piece);
                }
            }
        }
        self.log.end(r0, r1, tuples.is_none());
    }

    /// Completion of a successful discard / write-zeroes bracketed by
    /// `begin_write`: the intervals become "never written" (all-zero tuples,
    /// which verify only all-zero data), and the write is no longer in
    /// flight, like `end_write(Some)`. Use it only when the device now reads
    /// the range as zeroes. Whole tuple blocks are zeroed on the device with
    /// one `write_zeroes`; partial ones go through the cache.
    ///
    /// On error (zeroing the tuple blocks failed) the write is still ended
    /// and the regions stay dirty until recomputed, like `end_write(None)`.
    pub fn clear(&self, first_interval: u64, count: u64) -> io::Result<()> {
        self.check_range(first_interval, count)?;
        if count == 0 {
            return Ok(());
        }
        let (r0, r1) = Self::regions(first_interval, count);
        let (first, end) = (first_interval, first_interval + count);
        let full = first.div_ceil(TUPLES_PER_BLOCK)..end / TUPLES_PER_BLOCK;
        let mut res = Ok(());
        if !full.is_empty() {
            res = self.cache.zero_blocks(full.clone());
        }
        let zeros = [Tuple::UNWRITTEN; TUPLES_PER_BLOCK as usize];
        for (block, slot, n, _) in Self::pieces(first_interval, count) {
            if !full.contains(&block) {
                self.cache
                    .update(block, slot, zeros.get(..n).unwrap_or(&zeros));
            }
        }
        self.log.end(r0, r1, res.is_err());
        res
    }

    /// For a FUA write: the tuple blocks covering the range are durable on
    /// return (written with FUA if dirty). Fails with the device's error.
    pub fn persist(&self, first_interval: u64, count: u64) -> io::Result<()> {
        self.check_range(first_interval, count)?;
        if count == 0 {
            return Ok(());
        }
        let (r0, r1) = Self::regions(first_interval, count);
        for block in r0..=r1 {
            self.cache.writeback(block, true)?;
        }
        Ok(())
    }

    /// Make every tuple of every completed write durable: write the dirty
    /// tuple blocks, flush the device, then clear the bits of regions idle
    /// since the previous flush. Also reports (once) a writeback error from
    /// an earlier eviction. Call after flushing the data.
    pub fn flush(&self) -> io::Result<()> {
        let _g = self.flush_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.flush_locked()
    }

    fn flush_locked(&self) -> io::Result<()> {
        let cand = self.log.flush_begin();
        let mut written = Vec::new();
        for block in self.cache.dirty_blocks() {
            if let Some(version) = self.cache.writeback(block, false)? {
                written.push((block, version));
            }
        }
        self.backend
            .flush()
            .map_err(|e| io_ctx("tuple flush", 0, e))?;
        self.cache.mark_clean(&written);
        self.log.flush_end(&cand)?;
        match self.cache.take_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Clean close: flush, recompute regions torn by failed writes, clear
    /// every bit, mark the header clean, flush. Idempotent; the store stays
    /// usable (the next `begin_write` marks the header in-use again).
    /// Fails with `EBUSY` while writes are in flight, or the device's error.
    pub fn shutdown(&self) -> io::Result<()> {
        let _g = self.flush_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.log.busy() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        self.flush_locked()?;
        for region in self
            .log
            .torn()
            .iter()
            .filter(|&r| r < self.layout.regions())
        {
            self.cache.invalidate(region);
            recompute_region(&*self.backend, &self.layout, region)?;
        }
        self.log.close()
    }
}

/// Recovery after an unclean shutdown: recompute every dirty region's tuples
/// from the data on the device, flush, clear the bitmap. Returns how many
/// regions were recomputed.
fn recover(backend: &dyn BlockBackend, l: &IntegrityLayout) -> Result<u64, IntegrityError> {
    let mut dirty = Bits::new(l.regions());
    for block in 0..l.bitmap_blocks {
        let mut page = Page::new();
        let off = l.bitmap_block_offset(block);
        backend
            .read_at(&mut [IoSliceMut::new(page.make_mut())], off)
            .map_err(|e| IntegrityError::io("recovery bitmap read", off, e))?;
        dirty.decode_block(block, page.as_slice());
    }
    let mut n = 0;
    for region in dirty.iter().filter(|&r| r < l.regions()) {
        recompute_region(backend, l, region)
            .map_err(|e| IntegrityError::io("recovery", l.tuple_block_offset(region), e))?;
        n += 1;
    }
    if n > 0 {
        log::warn!("integrity: unclean shutdown, recomputed the tuples of {n} dirty regions");
    }
    backend
        .flush()
        .map_err(|e| IntegrityError::io("recovery flush", 0, e))?;
    backend
        .write_zeroes(l.bitmap_start, l.bitmap_blocks * META_BLOCK)
        .map_err(|e| IntegrityError::io("recovery bitmap clear", l.bitmap_start, e))?;
    Ok(n)
}

/// Rewrite region `region`'s tuple block from the data now on the device
/// (not flushed). Counterpart of dm-integrity's `integrity_recalc()`.
fn recompute_region(
    backend: &dyn BlockBackend,
    l: &IntegrityLayout,
    region: u64,
) -> io::Result<()> {
    let profile = l.profile;
    let shift = profile.interval_shift();
    let first = region * TUPLES_PER_BLOCK;
    let n = TUPLES_PER_BLOCK.min(l.intervals().saturating_sub(first));
    let (off, bytes) = (first << shift, n << shift);
    let mut pages: Vec<Page> = (0..bytes.div_ceil(META_BLOCK))
        .map(|_| Page::new())
        .collect();
    {
        let mut iov: Vec<IoSliceMut<'_>> = pages
            .iter_mut()
            .map(|p| IoSliceMut::new(p.make_mut()))
            .collect();
        backend
            .read_at(&mut iov, off)
            .map_err(|e| io_ctx("recompute data read", off, e))?;
    }
    let mut block = Page::new();
    let tb = block.make_mut();
    let size = profile.interval_size();
    for (i, slot) in tb.chunks_exact_mut(8).take(n as usize).enumerate() {
        let (page, at) = (
            (i << shift) / META_BLOCK as usize,
            (i << shift) % META_BLOCK as usize,
        );
        let data = pages
            .get(page)
            .and_then(|p| p.as_slice().get(at..at + size))
            .ok_or_else(|| io::Error::other("recompute: interval outside the data read"))?;
        let t = profile.generate(first + i as u64, data);
        slot.copy_from_slice(&t.0);
    }
    let toff = l.tuple_block_offset(region);
    backend
        .write_at(&[io::IoSlice::new(block.as_slice())], toff, false)
        .map_err(|e| io_ctx("recompute tuple write", toff, e))
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
