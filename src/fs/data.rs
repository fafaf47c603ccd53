//! The data path: a page cache per file with a global size limit,
//! mpage-style reads with readahead, and writeback with delayed
//! allocation through the bio engine.
//!
//! - **Reads** fill the missing pages of a request and its readahead
//!   window: holes and unwritten extents become zero pages without I/O;
//!   mapped pages go to the device through one [`BioBuilder`], page by page
//!   (`bio_add_page`), so pages on contiguous blocks share bios, split and
//!   merged by the engine. A sequential reader's window doubles from 128 KiB
//!   to 4 MiB.
//! - **Writes** land in the cache as dirty pages. **Writeback** walks a
//!   file's dirty pages in order, maps or allocates their blocks at that
//!   moment (delayed allocation: one call asks for the whole run), and
//!   writes them through a plugged `BioBuilder` whose parent completes when
//!   every chained piece has. Pages re-dirtied meanwhile stay dirty.
//!
//! Locks, always taken in this order: a file's `wb` (one writeback of the
//! file at a time), its `rw` (shared by reads,
//! writes and writeback; exclusive for truncate, hole punching and page
//! eviction), the writeback barrier (shared by writeback from mapping to
//! completion; exclusive for a commit, so no commit sees an extent whose
//! data is not written yet), then the metadata lock.

use std::sync::atomic::Ordering;
use std::sync::{Mutex, RwLock};

use crossbeam_channel::bounded;

use super::extmap::{self, Mapping};
use super::meta::{touch, Meta};
pub use super::pagecache::{lock, read_lock, write_lock};
use super::pagecache::{CachedPage, FileCache, PageCache};
use super::types::{Errno, FsResult};
use crate::block::ioc::IocRegistry;
use crate::block::{
    Bio, BioBuilder, BioSet, BlkStatus, Gfp, IoPrio, Page, Plug, ReqFlags, ReqOp, Sector,
    BIO_MAX_VECS,
};
use crate::format::dev::Dev;
use crate::format::extent::Extent;
use crate::format::inode::FileType;
use crate::format::{BLOCK_SIZE, BLOCK_SIZE_U64, MAX_FILE_BLOCKS};

/// Sectors per block.
const BLOCK_SECTORS: u64 = BLOCK_SIZE_U64 >> crate::block::SECTOR_SHIFT;
/// Readahead window bounds, in pages.
pub(super) const RA_MIN: u64 = 32;
const RA_MAX: u64 = 1024;
/// Pages per read bio (the engine splits to the queue's limits).
const BIO_VECS: usize = BIO_MAX_VECS;
/// Largest file, in bytes.
pub const MAX_FILE_SIZE: u64 = MAX_FILE_BLOCKS * BLOCK_SIZE_U64;

/// The shared state the data path needs.
pub struct DataCtx<'a> {
    pub dev: &'a Dev,
    pub bioset: &'a BioSet,
    pub meta: &'a Mutex<Meta>,
    pub barrier: &'a RwLock<()>,
    pub cache: &'a PageCache,
    /// Where asynchronous readahead goes (the `biofs-ra` threads).
    pub readahead: &'a crossbeam_channel::Sender<RaJob>,
}

/// A readahead window for a `biofs-ra` thread to read into the cache
/// while the reader goes on (the kernel's asynchronous readahead).
pub struct RaJob {
    pub fc: std::sync::Arc<FileCache>,
    pub ino: u64,
    pub first: u64,
    pub last: u64,
    pub ioprio: IoPrio,
}

/// Where a sequential reader's readahead stands (a file's
/// [`FileCache::ra`]): as the kernel's `file_ra_state`, with the
/// asynchronous readahead marker at half the window ahead of the reader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaState {
    /// The page a sequential reader reads next.
    pub next: u64,
    /// The window (0 after a random read).
    pub window: u64,
    /// The last page readahead was started for (read or being read).
    pub ahead_to: u64,
}

/// What a read of pages `[first, last]` should read with itself and
/// what it should start reading ahead of itself, given where readahead
/// stands (`ra`, updated) and the file's last page `end`:
/// `(last page to read now, window to start asynchronously)`.
pub fn plan_readahead(
    ra: &mut RaState,
    first: u64,
    last: u64,
    end: u64,
) -> (u64, Option<(u64, u64)>) {
    if first == 0 {
        // The file read from its start again: a new run (what readahead
        // started for the last one says nothing of what is cached now).
        *ra = RaState::default();
    }
    // The kernel sends a sequential reader's requests several at a time,
    // so they can arrive out of order: one inside what readahead started
    // (and not far behind the reader) continues the run.
    let within = ra.window > 0
        && first <= ra.ahead_to.saturating_add(1)
        && first.saturating_add(RA_MAX) >= ra.next;
    let next = first == ra.next;
    if !(first == 0 || next || within) {
        // A random read: no readahead (and the next read starts over).
        ra.next = last + 1;
        ra.window = 0;
        ra.ahead_to = last;
        return (last, None);
    }
    ra.next = ra.next.max(last + 1);
    if first == 0 && ra.window == 0 {
        ra.window = RA_MIN;
    } else if next || first == 0 {
        ra.window = (ra.window * 2).clamp(RA_MIN, RA_MAX);
    }
    if ra.ahead_to < last || first == 0 && ra.ahead_to == 0 {
        // Nothing started covers this read (the file's start, or a
        // sequential run after a random read): read the request and a
        // first window with it.
        let to = (last + ra.window).min(end);
        ra.ahead_to = to;
        return (to, None);
    }
    // Inside what readahead started: past the marker (less than half a
    // window left ahead of the reader), start the next window now.
    if ra.ahead_to < end && ra.ahead_to - last < ra.window / 2 {
        let from = ra.ahead_to + 1;
        let to = (ra.ahead_to + ra.window).min(end);
        ra.ahead_to = to;
        return (last, Some((from, to)));
    }
    (last, None)
}

/// The I/O priority of task `pid`'s io_context (default for 0).
pub fn ioprio_of(pid: u32) -> IoPrio {
    match pid {
        0 => IoPrio::DEFAULT,
        _ => IocRegistry::global().task_ioprio(pid as i32),
    }
}

/// Write `pages` to their blocks through one [`BioBuilder`] (chained
/// bios under a plug) and wait: the status and the first bad sector.
fn write_pages(
    ctx: &DataCtx<'_>,
    ioprio: IoPrio,
    pages: &[(u64, Page)],
) -> (BlkStatus, Option<Sector>) {
    if pages.is_empty() {
        return (BlkStatus::Ok, None);
    }
    let (tx, rx) = bounded(1);
    let mut b = BioBuilder::new(
        ctx.dev.queue(),
        ctx.bioset,
        ReqOp::Write,
        ReqFlags::NONE,
        ioprio,
        move |bio| {
            let _ = tx.send((bio.status(), bio.error_sector()));
        },
    );
    for (physical, page) in pages {
        b.add_page(
            Sector(physical * BLOCK_SECTORS),
            page.clone(),
            BLOCK_SIZE as u32,
            0,
        );
    }
    b.finish();
    rx.recv().unwrap_or((BlkStatus::IoErr, None))
}

/// Read blocks `blocks` (in file order) into new pages, mpage-style:
/// consecutive blocks share a bio built page by page; a block that does
/// not continue the bio submits it and starts the next. All bios go out
/// under one plug. Returns the pages read (by index into `blocks`) and the
/// indexes that failed with their status.
#[allow(clippy::type_complexity)]
fn read_pages(
    ctx: &DataCtx<'_>,
    ioprio: IoPrio,
    blocks: &[u64],
) -> (Vec<(usize, Page)>, Vec<(usize, BlkStatus)>) {
    let (tx, rx) = crossbeam_channel::unbounded::<(usize, Bio)>();
    let mut submitted = 0usize;
    {
        let _plug = Plug::new();
        let mut cur: Option<(usize, Bio)> = None;
        let submit = |(first, mut bio): (usize, Bio)| {
            let tx = tx.clone();
            bio.set_ioprio(ioprio);
            bio.set_end_io(move |bio| {
                let _ = tx.send((first, bio));
            });
            ctx.dev.queue().submit_bio(bio);
        };
        for (k, &b) in blocks.iter().enumerate() {
            let sector = Sector(b * BLOCK_SECTORS);
            // The device fills each page whole: recycled pages need no zeroing.
            if let Some((_, bio)) = cur.as_mut() {
                if bio.end_sector() == sector
                    && bio.add_page(Page::new_for_overwrite(), BLOCK_SIZE as u32, 0)
                        == BLOCK_SIZE as u32
                {
                    continue;
                }
            }
            if let Some(done) = cur.take() {
                submit(done);
                submitted += 1;
            }
            let mut bio = match ctx.bioset.alloc(ReqOp::Read, sector, BIO_VECS, Gfp::NoWait) {
                Some(bio) => bio,
                None => {
                    // Let our own bios reach the device so one can be freed.
                    crate::block::plug::flush_current();
                    ctx.bioset
                        .alloc(ReqOp::Read, sector, BIO_VECS, Gfp::Wait)
                        .unwrap_or_else(|| Bio::new(ReqOp::Read, sector, BIO_VECS))
                }
            };
            bio.add_page(Page::new_for_overwrite(), BLOCK_SIZE as u32, 0);
            cur = Some((k, bio));
        }
        if let Some(done) = cur.take() {
            submit(done);
            submitted += 1;
        }
    }
    let mut got = Vec::with_capacity(blocks.len());
    let mut failed = Vec::new();
    for _ in 0..submitted {
        let Ok((first, mut bio)) = rx.recv() else {
            break;
        };
        let status = bio.status();
        let n = bio.vcnt();
        if status.is_ok() {
            for (j, seg) in bio.take_segments().into_iter().enumerate() {
                got.push((first + j, seg.page));
            }
        } else {
            failed.extend((first..first + n).map(|k| (k, status)));
        }
    }
    (got, failed)
}

/// What a read put in the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filled {
    /// The bytes read (possibly none, at or past the end of the file).
    Buffer,
    /// The range read is all holes or unwritten extents: this many zero
    /// bytes, not written to the buffer.
    Zeros(usize),
}

impl DataCtx<'_> {
    /// Make pages `[first, last]` of `ino` present in the cache, reading
    /// `[first, ra_last]` in one batch (readahead). Holes and unwritten
    /// extents are skipped whole, extent by extent: they read as zeros,
    /// with no page and no I/O. The caller holds the file's `rw`. A failed
    /// read of a requested page is EIO, logged with the file and offset;
    /// failed readahead pages are just not cached.
    pub fn fill(
        &self,
        fc: &FileCache,
        ino: u64,
        first: u64,
        last: u64,
        ra_last: u64,
        ioprio: IoPrio,
    ) -> FsResult<()> {
        // Under the caller's `rw` a page with data on the device keeps its
        // block (truncate and hole punching take `rw` exclusively), and a
        // hole gains one only at the writeback of a page already cached.
        let blocks = self.data_blocks(ino, first, ra_last.max(last))?;
        if blocks.is_empty() {
            return Ok(());
        }
        // Pages nobody has or reads are ours to read; requested pages
        // another reader is reading, we wait for.
        let (missing, theirs): (Vec<(u64, u64)>, Vec<u64>) = {
            let mut pm = lock(&fc.pages);
            let mine: Vec<(u64, u64)> = blocks
                .iter()
                .filter(|(i, _)| !pm.pages.contains_key(i) && !pm.reading.contains(i))
                .copied()
                .collect();
            pm.reading.extend(mine.iter().map(|m| m.0));
            let theirs = blocks
                .iter()
                .map(|b| b.0)
                .filter(|i| {
                    (first..=last).contains(i)
                        && pm.reading.contains(i)
                        && mine.binary_search_by_key(i, |m| m.0).is_err()
                })
                .collect();
            (mine, theirs)
        };
        let result = self.read_missing(fc, ino, (first, last), &missing, ioprio);
        {
            let mut pm = lock(&fc.pages);
            for (i, _) in &missing {
                pm.reading.remove(i);
            }
        }
        fc.read_done.notify_all();
        result?;
        if theirs.is_empty() {
            return Ok(());
        }
        let mut pm = lock(&fc.pages);
        while theirs.iter().any(|i| pm.reading.contains(i)) {
            pm = fc.read_done.wait(pm).unwrap_or_else(|e| e.into_inner());
        }
        if theirs.iter().all(|i| pm.pages.contains_key(i)) {
            return Ok(());
        }
        // The other reader failed: try ourselves (and report the error).
        drop(pm);
        self.fill(fc, ino, first, last, last, ioprio)
    }

    /// The pages of `[first, last]` of `ino` that have data on the device,
    /// each with its block, in order: one extent lookup per run, so a hole
    /// of any size costs one step.
    fn data_blocks(&self, ino: u64, first: u64, last: u64) -> FsResult<Vec<(u64, u64)>> {
        let mut m = lock(self.meta);
        let st = m.load(ino)?;
        let mut out = Vec::new();
        let mut i = first;
        while i <= last {
            let step = match extmap::lookup(&st.map, i) {
                Mapping::Hole { len } => len,
                Mapping::Mapped {
                    physical,
                    len,
                    unwritten,
                } => {
                    let n = len.min(last - i + 1);
                    if !unwritten {
                        out.extend((0..n).map(|k| (i + k, physical + k)));
                    }
                    n
                }
            };
            i = i.saturating_add(step.max(1));
        }
        Ok(out)
    }

    /// Read pages `[first, last]` into the cache for a `biofs-ra` thread:
    /// those nobody has or reads; a failure is not an error of anybody's
    /// (the pages are read again when asked for). The caller holds the
    /// file's `rw` (shared).
    pub fn fill_ahead(&self, job: &RaJob) {
        if job.first == 0 || job.last < job.first {
            return;
        }
        // `last` below `first`: no page is wanted, none waited for.
        let _ = self.fill(
            &job.fc,
            job.ino,
            job.first,
            job.first - 1,
            job.last,
            job.ioprio,
        );
    }

    /// Read pages `missing`, each `(page, block)` (which this caller marked
    /// as being read), into the cache; EIO if one inside `want` failed.
    #[allow(
        clippy::indexing_slicing,
        reason = "k is an index into reads that read_pages hands back, and idx has one entry per read"
    )]
    fn read_missing(
        &self,
        fc: &FileCache,
        ino: u64,
        (first, last): (u64, u64),
        missing: &[(u64, u64)],
        ioprio: IoPrio,
    ) -> FsResult<()> {
        if missing.is_empty() {
            return Ok(());
        }
        let (idx, reads): (Vec<u64>, Vec<u64>) = missing.iter().copied().unzip();
        let (got, failed) = read_pages(self, ioprio, &reads);
        let mut result = Ok(());
        let mut loaded: Vec<(u64, Page)> = got.into_iter().map(|(k, p)| (idx[k], p)).collect();
        // A failed bio fails all its pages: read each requested one again
        // on its own, so a bad block fails only the reads that need it
        // (as mpage falls back to block_read_full_page).
        for (k, _) in failed
            .into_iter()
            .filter(|(k, _)| (first..=last).contains(&idx[*k]))
        {
            let (mut one, bad) = read_pages(self, ioprio, &reads[k..=k]);
            if let Some(page) = one.pop().map(|p| p.1) {
                loaded.push((idx[k], page));
                continue;
            }
            let status = bad.first().map_or(BlkStatus::IoErr, |b| b.1);
            log::error!(
                "inode {ino}, offset {}: read failed: {}",
                idx[k] * BLOCK_SIZE_U64,
                if status == BlkStatus::Protection {
                    "the data does not match its integrity checksum".to_string()
                } else {
                    format!("{status}")
                }
            );
            result = Err(Errno::EIO);
        }
        let mut pages = lock(&fc.pages);
        if pages.gone {
            return result;
        }
        for (i, page) in loaded {
            if let std::collections::btree_map::Entry::Vacant(v) = pages.entry(i) {
                v.insert(CachedPage {
                    page,
                    dirty: false,
                    gen: 0,
                    reserved: false,
                });
                self.cache.cached.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Read up to `size` bytes of `ino` at `off`.
    pub fn read(&self, ino: u64, off: u64, size: u32, pid: u32) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        if let Filled::Zeros(n) = self.read_into(ino, off, size, pid, &mut out)? {
            out.resize(n, 0);
        }
        Ok(out)
    }

    /// Read up to `size` bytes of `ino` at `off` into `out` (cleared
    /// first; a caller that keeps `out` reuses its memory), or say that
    /// the range read is all holes ([`Filled::Zeros`], `out` left empty),
    /// so that a caller can answer from zeros it already has.
    pub fn read_into(
        &self,
        ino: u64,
        off: u64,
        size: u32,
        pid: u32,
        out: &mut Vec<u8>,
    ) -> FsResult<Filled> {
        out.clear();
        let fc = self.cache.file(ino);
        let filled = {
            let _g = read_lock(&fc.rw);
            self.read_locked(&fc, ino, off, size, pid, out)?
        };
        // Reads fill the cache too: keep it to its size (this file's
        // pages behind its readers first).
        self.cache.shrink_for(&fc);
        Ok(filled)
    }

    /// [`DataCtx::read_into`] under the file's `rw` (shared).
    fn read_locked(
        &self,
        fc: &std::sync::Arc<FileCache>,
        ino: u64,
        off: u64,
        size: u32,
        pid: u32,
        out: &mut Vec<u8>,
    ) -> FsResult<Filled> {
        let fsize = {
            let mut m = lock(self.meta);
            let i = m.get(ino)?;
            match i.file_type() {
                FileType::Regular => i.size,
                FileType::Directory => return Err(Errno::EISDIR),
                _ => return Err(Errno::EINVAL),
            }
        };
        if off >= fsize || size == 0 {
            return Ok(Filled::Buffer);
        }
        let end = (off + u64::from(size)).min(fsize);
        let first = off / BLOCK_SIZE_U64;
        let last = (end - 1) / BLOCK_SIZE_U64;
        // On-demand readahead: a read that continues the last one (or
        // starts the file) grows the window and, past the marker, starts
        // the next one asynchronously; a random read gets none.
        let (ra_last, ahead) = {
            let end = (fsize - 1) / BLOCK_SIZE_U64;
            plan_readahead(&mut lock(&fc.ra), first, last, end)
        };
        let ioprio = ioprio_of(pid);
        if let Some((from, to)) = ahead {
            // Advisory: a full queue drops it (the pages are read when
            // asked for).
            let _ = self.readahead.try_send(RaJob {
                fc: fc.clone(),
                ino,
                first: from,
                last: to,
                ioprio,
            });
        }
        self.fill(fc, ino, first, last, ra_last, ioprio)?;
        let pages = lock(&fc.pages);
        // No page cached after a fill that succeeded (pages leave the cache
        // only under `rw` held exclusively): holes or unwritten extents.
        if pages.range(first..=last).next().is_none() {
            return Ok(Filled::Zeros((end - off) as usize));
        }
        out.reserve((end - off) as usize);
        for i in first..=last {
            let lo = if i == first {
                (off % BLOCK_SIZE_U64) as usize
            } else {
                0
            };
            let hi = if i == last {
                (end - i * BLOCK_SIZE_U64) as usize
            } else {
                BLOCK_SIZE
            };
            match pages.get(&i) {
                Some(p) => out.extend_from_slice(p.page.as_slice().get(lo..hi).ok_or(Errno::EIO)?),
                // Not cached after a fill that succeeded (pages leave the
                // cache only under `rw` held exclusively): a hole or an
                // unwritten extent.
                None => out.resize(out.len() + (hi - lo), 0),
            }
        }
        Ok(Filled::Buffer)
    }

    /// Write `data` at `off` of `ino` into the cache (`append`: at the
    /// end). Returns the bytes written.
    pub fn write(&self, ino: u64, off: u64, data: &[u8], append: bool, pid: u32) -> FsResult<u32> {
        let fc = self.cache.file(ino);
        let _g = read_lock(&fc.rw);
        let (off, old_size) = {
            let mut m = lock(self.meta);
            m.check_writable()?;
            let i = m.get(ino)?;
            match i.file_type() {
                FileType::Regular => {}
                FileType::Directory => return Err(Errno::EISDIR),
                _ => return Err(Errno::EINVAL),
            }
            (if append { i.size } else { off }, i.size)
        };
        if data.is_empty() {
            return Ok(0);
        }
        if off >= MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        let len = (data.len() as u64).min(MAX_FILE_SIZE - off) as usize;
        let data = data.get(..len).unwrap_or(data);
        let end = off + len as u64;
        let first = off / BLOCK_SIZE_U64;
        let last = (end - 1) / BLOCK_SIZE_U64;
        // Partial pages inside the old size need their old contents.
        for i in [first, last] {
            let start = i * BLOCK_SIZE_U64;
            let whole = off <= start && end >= start + BLOCK_SIZE_U64;
            if !whole && start < old_size {
                self.fill(&fc, ino, i, i, i, ioprio_of(pid))?;
            }
        }
        {
            let mut pages = lock(&fc.pages);
            // Promise a block to each page this write dirties over a hole
            // (delayed allocation): no room is ENOSPC now, before anything
            // changes, not a lost write later.
            let unpromised: Vec<u64> = (first..=last)
                .filter(|i| pages.get(i).is_none_or(|p| !p.reserved))
                .collect();
            let holes: Vec<u64> = {
                let mut m = lock(self.meta);
                let st = m.load(ino)?;
                let holes: Vec<u64> = unpromised
                    .into_iter()
                    .filter(|&i| matches!(extmap::lookup(&st.map, i), Mapping::Hole { .. }))
                    .collect();
                m.reserve(holes.len() as u64)?;
                holes
            };
            for i in first..=last {
                let start = i * BLOCK_SIZE_U64;
                let lo = off.max(start);
                let hi = end.min(start + BLOCK_SIZE_U64);
                let whole = lo == start && hi == start + BLOCK_SIZE_U64;
                let cp = pages.entry(i).or_insert_with(|| {
                    self.cache.cached.fetch_add(1, Ordering::Relaxed);
                    CachedPage {
                        // A page this write covers whole needs no zeroing
                        // (a memset of every new page was a fifth of the
                        // daemon's CPU in a sequential write).
                        page: if whole {
                            Page::new_for_overwrite()
                        } else {
                            Page::new()
                        },
                        dirty: false,
                        gen: 0,
                        reserved: false,
                    }
                });
                if holes.binary_search(&i).is_ok() {
                    cp.reserved = true;
                }
                let buf = cp.page.make_mut();
                let dst = buf.get_mut((lo - start) as usize..(hi - start) as usize);
                let src = data.get((lo - off) as usize..(hi - off) as usize);
                let (Some(dst), Some(src)) = (dst, src) else {
                    return Err(Errno::EIO);
                };
                dst.copy_from_slice(src);
                if !cp.dirty {
                    cp.dirty = true;
                    self.cache.dirty.fetch_add(1, Ordering::Relaxed);
                }
                cp.gen += 1;
            }
        }
        {
            let mut m = lock(self.meta);
            let st = m.get_mut(ino)?;
            if end > st.inode.size {
                st.inode.size = end;
            }
            touch(&mut st.inode, true);
        }
        Ok(len as u32)
    }

    /// Write back `ino`'s dirty pages: map or allocate their blocks (one
    /// allocation per run of pages), write them, mark unwritten extents
    /// written, and clean the pages not re-dirtied meanwhile.
    pub fn writeback(&self, ino: u64, ioprio: IoPrio) -> FsResult<()> {
        let Some(fc) = self.cache.existing(ino) else {
            return Ok(());
        };
        let _w = lock(&fc.wb);
        let _g = read_lock(&fc.rw);
        let _b = read_lock(self.barrier);
        let dirty: Vec<(u64, Page, u64)> = lock(&fc.pages)
            .iter()
            .filter(|(_, p)| p.dirty)
            .map(|(i, p)| (*i, p.page.clone(), p.gen))
            .collect();
        if dirty.is_empty() {
            return Ok(());
        }
        let (plan, new, converts, err) = self.map_for_writeback(ino, &dirty)?;
        let io: Vec<(u64, Page)> = plan.iter().map(|(_, p, pg, _)| (*p, pg.clone())).collect();
        let (status, _) = write_pages(self, ioprio, &io);
        let mut m = lock(self.meta);
        if !status.is_ok() {
            // Nothing may point at blocks whose data did not land.
            log::error!("inode {ino}: writeback failed: {status}");
            for e in new {
                if let Ok(st) = m.get_mut(ino) {
                    extmap::remove(&mut st.map, e.logical, e.logical_end());
                    st.inode.blocks = st.inode.blocks.saturating_sub(u64::from(e.len));
                }
                m.map_changed(ino);
                m.free_blocks(e.physical, e.len, false)?;
            }
            return Err(Errno::EIO);
        }
        if !converts.is_empty() {
            if let Ok(st) = m.get_mut(ino) {
                for (a, b) in &converts {
                    extmap::mark_written(&mut st.map, *a, *b);
                }
            }
            m.map_changed(ino);
        }
        drop(m);
        let mut released = 0;
        {
            let mut pages = lock(&fc.pages);
            for (i, _, _, gen) in &plan {
                if let Some(p) = pages.get_mut(i) {
                    // The page has its block now, written again or not.
                    if std::mem::take(&mut p.reserved) {
                        released += 1;
                    }
                    if p.gen == *gen && p.dirty {
                        p.dirty = false;
                        self.cache.dirty.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
        }
        lock(self.meta).unreserve(released);
        err.map_or(Ok(()), Err)
    }

    /// Blocks for the dirty pages: `(page, block, page data, gen)` for the
    /// pages that got one, the extents allocated, the unwritten ranges to
    /// convert, and the error that stopped allocation early (ENOSPC).
    #[allow(clippy::type_complexity)]
    #[allow(
        clippy::indexing_slicing,
        reason = "k < r <= dirty.len(), dirty[k..r] is a run of consecutive pages and l + j < run_end stays inside it"
    )]
    fn map_for_writeback(
        &self,
        ino: u64,
        dirty: &[(u64, Page, u64)],
    ) -> FsResult<(
        Vec<(u64, u64, Page, u64)>,
        Vec<Extent>,
        Vec<(u64, u64)>,
        Option<Errno>,
    )> {
        let mut m = lock(self.meta);
        m.check_writable()?;
        let size = m.get(ino)?.size;
        let mut plan = Vec::with_capacity(dirty.len());
        let mut new = Vec::new();
        let mut converts = Vec::new();
        let mut k = 0;
        while k < dirty.len() {
            // A run of consecutive dirty pages.
            let mut r = k + 1;
            while r < dirty.len() && dirty[r].0 == dirty[r - 1].0 + 1 {
                r += 1;
            }
            let mut l = dirty[k].0;
            let run_end = dirty[r - 1].0 + 1;
            while l < run_end {
                if l * BLOCK_SIZE_U64 >= size {
                    // Pages past the end (a racing truncate) are not written.
                    break;
                }
                let (mapping, goal) = map_and_goal(&mut m, ino, l)?;
                let (physical, n) = match mapping {
                    Mapping::Mapped {
                        physical,
                        len,
                        unwritten,
                    } => {
                        let n = len.min(run_end - l);
                        if unwritten {
                            converts.push((l, l + n));
                        }
                        (physical, n)
                    }
                    Mapping::Hole { len } => {
                        let want = len.min(run_end - l).min(u64::from(u32::MAX)) as u32;
                        let (p, got) = match m.alloc_blocks(goal, want) {
                            Ok(x) => x,
                            Err(e) => return Ok((plan, new, converts, Some(e))),
                        };
                        let e = Extent {
                            logical: l,
                            physical: p,
                            len: got,
                            unwritten: false,
                        };
                        let st = m.get_mut(ino)?;
                        extmap::insert(&mut st.map, e);
                        st.inode.blocks += u64::from(got);
                        m.map_changed(ino);
                        m.blocks_changed(ino);
                        new.push(e);
                        (p, u64::from(got))
                    }
                };
                for j in 0..n {
                    let d = &dirty[k + (l + j - dirty[k].0) as usize];
                    plan.push((d.0, physical + j, d.1.clone(), d.2));
                }
                l += n;
            }
            k = r;
        }
        Ok((plan, new, converts, None))
    }

    /// Truncate `ino` to `size` bytes (the caller holds nothing).
    pub fn truncate(&self, ino: u64, size: u64, pid: u32) -> FsResult<()> {
        if size > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        let fc = self.cache.file(ino);
        let _g = write_lock(&fc.rw);
        let old = {
            let mut m = lock(self.meta);
            m.check_writable()?;
            let i = m.get(ino)?;
            match i.file_type() {
                FileType::Regular => i.size,
                FileType::Directory => return Err(Errno::EISDIR),
                _ => return Err(Errno::EINVAL),
            }
        };
        if size < old {
            self.zero_partial(&fc, ino, size, size.next_multiple_of(BLOCK_SIZE_U64), pid)?;
            let keep = size.div_ceil(BLOCK_SIZE_U64);
            let released = self.cache.drop_range(&fc, keep, u64::MAX);
            let mut m = lock(self.meta);
            m.unreserve(released);
            m.punch(ino, keep, u64::MAX)?;
        }
        let mut m = lock(self.meta);
        let st = m.get_mut(ino)?;
        st.inode.size = size;
        touch(&mut st.inode, true);
        Ok(())
    }

    /// Zero bytes `[from, to)` of the page holding `from` (up to that
    /// page's end), loading it first if it holds data.
    fn zero_partial(&self, fc: &FileCache, ino: u64, from: u64, to: u64, pid: u32) -> FsResult<()> {
        if to <= from {
            return Ok(());
        }
        let i = from / BLOCK_SIZE_U64;
        self.fill(fc, ino, i, i, i, ioprio_of(pid))?;
        let mut pages = lock(&fc.pages);
        if let Some(cp) = pages.get_mut(&i) {
            let start = i * BLOCK_SIZE_U64;
            let hi = to.min(start + BLOCK_SIZE_U64);
            let range = (from - start) as usize..(hi - start) as usize;
            if cp
                .page
                .as_slice()
                .get(range.clone())
                .is_none_or(|s| s.iter().all(|&b| b == 0))
            {
                // Nothing changes (a hole's page, or zeros already).
                return Ok(());
            }
            cp.page
                .make_mut()
                .get_mut(range)
                .unwrap_or_default()
                .fill(0);
            if !cp.dirty {
                cp.dirty = true;
                self.cache.dirty.fetch_add(1, Ordering::Relaxed);
            }
            cp.gen += 1;
        }
        Ok(())
    }

    /// Make `[off, off+len)` read as zeros: partial pages zeroed in the
    /// cache, whole blocks unmapped (and, if `keep_allocated`, allocated
    /// again as unwritten).
    pub fn zero_range(
        &self,
        ino: u64,
        off: u64,
        len: u64,
        keep_allocated: bool,
        pid: u32,
    ) -> FsResult<()> {
        let fc = self.cache.file(ino);
        let _g = write_lock(&fc.rw);
        let size = lock(self.meta).get(ino)?.size;
        let end = off.saturating_add(len).min(size.max(off));
        let first_full = off.div_ceil(BLOCK_SIZE_U64);
        let end_full = end / BLOCK_SIZE_U64;
        if first_full > end_full {
            // Inside one page.
            return self.zero_partial(&fc, ino, off, end, pid);
        }
        self.zero_partial(&fc, ino, off, first_full * BLOCK_SIZE_U64, pid)?;
        if end % BLOCK_SIZE_U64 != 0 {
            self.zero_partial(&fc, ino, end_full * BLOCK_SIZE_U64, end, pid)?;
        }
        let released = self.cache.drop_range(&fc, first_full, end_full);
        let mut m = lock(self.meta);
        m.unreserve(released);
        m.punch(ino, first_full, end_full)?;
        if keep_allocated {
            allocate_unwritten(&mut m, ino, first_full, end_full)?;
        }
        touch(&mut m.get_mut(ino)?.inode, true);
        Ok(())
    }
}

/// The mapping of logical block `l` of `ino`, and where to look for
/// blocks if it is a hole: after the extent before it, else the start of
/// the inode's group.
fn map_and_goal(m: &mut Meta, ino: u64, l: u64) -> FsResult<(Mapping, u64)> {
    let fallback = m.geo.group_start(m.geo.ino_group(ino).0);
    let st = m.load(ino)?;
    let i = st.map.partition_point(|e| e.logical < l);
    let goal = match i.checked_sub(1).and_then(|k| st.map.get(k)) {
        Some(e) => e.physical_end() + l.saturating_sub(e.logical_end()),
        None => fallback,
    };
    Ok((extmap::lookup(&st.map, l), goal))
}

/// Allocate unwritten extents over the holes of `[from, to)` (blocks).
pub fn allocate_unwritten(m: &mut Meta, ino: u64, from: u64, to: u64) -> FsResult<()> {
    let mut l = from;
    while l < to {
        let (mapping, goal) = map_and_goal(m, ino, l)?;
        match mapping {
            Mapping::Mapped { len, .. } => l += len.min(to - l),
            Mapping::Hole { len } => {
                let want = len.min(to - l).min(u64::from(u32::MAX)) as u32;
                m.check_data_room(u64::from(want))?;
                let (p, got) = m.alloc_blocks(goal, want)?;
                let st = m.get_mut(ino)?;
                extmap::insert(
                    &mut st.map,
                    Extent {
                        logical: l,
                        physical: p,
                        len: got,
                        unwritten: true,
                    },
                );
                st.inode.blocks += u64::from(got);
                m.map_changed(ino);
                l += u64::from(got);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sequential reader of 64-page requests: the first read takes a
    /// window with it, later ones start the next window asynchronously
    /// once less than half a window is left ahead, never a page twice,
    /// never past the file's end; a random read stops readahead.
    #[test]
    fn readahead_stays_ahead_of_a_sequential_reader() {
        let end = 100_000;
        let mut ra = RaState::default();
        let (to, ahead) = plan_readahead(&mut ra, 0, 63, end);
        assert_eq!(
            (to, ahead),
            (63 + RA_MIN, None),
            "first read: request and window"
        );
        let mut started = to;
        let mut asyncs = 0;
        let mut first = 64;
        while first + 63 <= end {
            let last = first + 63;
            let (to, ahead) = plan_readahead(&mut ra, first, last, end);
            if to > last {
                // A window read with the request: only when nothing
                // started covers the request.
                assert!(started < last, "read {first}: reads to {to} itself");
                started = to;
            }
            assert!(
                started >= last,
                "read {first}..{last} not covered ({started})"
            );
            if let Some((a, b)) = ahead {
                assert_eq!(a, started + 1, "a window starts where the last ended");
                assert!(b >= a && b <= end);
                assert!(started - last < ra.window / 2 + 64);
                started = b;
                asyncs += 1;
            }
            first += 64;
        }
        assert_eq!(started, end, "readahead reaches the end and stops there");
        assert!(asyncs > 10, "{asyncs} asynchronous windows");
        assert_eq!(ra.window, RA_MAX);
        // Requests arriving out of order inside the started region keep
        // the run going.
        let mut ra2 = RaState::default();
        plan_readahead(&mut ra2, 0, 63, end);
        plan_readahead(&mut ra2, 64, 127, end);
        plan_readahead(&mut ra2, 192, 255, end);
        let before = ra2;
        let (to, _) = plan_readahead(&mut ra2, 128, 191, end);
        assert_eq!(
            to, 191,
            "an earlier request inside the run reads itself only"
        );
        assert_eq!((ra2.window, ra2.next), (before.window, before.next));
        // Read from the start again (the file bigger than the cache): a
        // new run, with its window, not the old run's end.
        let (to, ahead) = plan_readahead(&mut ra2, 0, 63, end);
        assert_eq!((to, ahead), (63 + RA_MIN, None));
        // A jump elsewhere: no readahead, and the next sequential read
        // starts a window of its own again.
        let (to, ahead) = plan_readahead(&mut ra, 5_000, 5_063, end);
        assert_eq!((to, ahead, ra.window), (5_063, None, 0));
        let (to, ahead) = plan_readahead(&mut ra, 5_064, 5_127, end);
        assert_eq!((to, ahead), (5_127 + RA_MIN, None));
    }
}
