//! Bios: a start sector and a vector of page segments, with a completion that
//! runs exactly once.
//!
//! Counterpart of `struct bio`, `bio_add_page()`, `bio_chain()` and
//! `bio_endio()` (block/bio.c, include/linux/blk_types.h).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::bioset::PoolSlot;
use super::integrity_payload::BioIntegrity;
use super::ioc::IoPrio;
use super::page::Page;
use super::types::{BlkStatus, ReqFlags, ReqOp, Sector, PAGE_SIZE, SECTOR_SHIFT};

/// Most segments a bio can hold (`BIO_MAX_VECS`).
pub const BIO_MAX_VECS: usize = 256;

/// One segment of a bio: `len` bytes at `offset` in `page`. Counterpart of
/// `struct bio_vec`.
#[derive(Clone, Debug)]
pub struct BioVec {
    pub page: Page,
    pub offset: u32,
    pub len: u32,
}

impl BioVec {
    /// The segment's bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.page.slice(self.offset as usize, self.len as usize)
    }

    /// Address of the segment's first byte (for boundary and gap checks).
    pub fn addr(&self) -> usize {
        self.page.addr() + self.offset as usize
    }
}

/// A segment of the part of a bio still to be done.
#[derive(Clone, Copy)]
pub(crate) struct CurSeg<'a> {
    pub(crate) page: &'a Page,
    pub(crate) offset: u32,
    pub(crate) len: u32,
}

impl<'a> CurSeg<'a> {
    pub(crate) fn addr(&self) -> usize {
        self.page.addr() + self.offset as usize
    }

    pub(crate) fn as_slice(&self) -> &'a [u8] {
        self.page.slice(self.offset as usize, self.len as usize)
    }
}

/// A completion shared by many bios: one handler called once per bio
/// (counterpart of a `bi_end_io` function pointer with its `bi_private`),
/// set without allocating per bio.
pub type SharedEndIo = Arc<dyn Fn(Bio) + Send + Sync>;

/// A bio's completion, run exactly once with the bio handed back.
pub(crate) enum EndIo {
    /// A closure of this bio's own (the closure carries the private data).
    Once(Box<dyn FnOnce(Bio) + Send>),
    /// A handler shared with other bios.
    Shared(SharedEndIo),
}

impl EndIo {
    fn call(self, bio: Bio) {
        match self {
            EndIo::Once(f) => f(bio),
            EndIo::Shared(f) => f(bio),
        }
    }
}

/// The completion state a parent shares with the bios chained to it
/// (`__bi_remaining` and the parent's first error).
pub(crate) struct ChainNode {
    /// The parent's own I/O plus each chained child still outstanding.
    remaining: AtomicUsize,
    /// First error seen by any member (first error wins).
    error: Mutex<Option<(BlkStatus, Option<Sector>)>>,
    /// The parent bio, parked here once its own I/O is done while children
    /// are still outstanding; whoever drops `remaining` to zero ends it.
    parked: Mutex<Option<Bio>>,
}

impl ChainNode {
    fn new() -> Arc<ChainNode> {
        Arc::new(ChainNode {
            remaining: AtomicUsize::new(1),
            error: Mutex::new(None),
            parked: Mutex::new(None),
        })
    }

    fn record(&self, status: BlkStatus, sector: Option<Sector>) {
        if status.is_ok() {
            return;
        }
        let mut err = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if err.is_none() {
            *err = Some((status, sector));
        }
    }

    fn first_error(&self) -> Option<(BlkStatus, Option<Sector>)> {
        *self.error.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drop one reference; true when it was the last.
    fn put(&self) -> bool {
        self.remaining.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

/// A block I/O: an operation on a run of sectors, with the pages that hold
/// (or receive) the data.
pub struct Bio {
    pub(crate) op: ReqOp,
    pub(crate) flags: ReqFlags,
    pub(crate) sector: Sector,
    /// Bytes covered (`bi_iter.bi_size`); for data bios, the sum of `vecs`.
    pub(crate) size: u32,
    /// Every segment the owner added (`bi_io_vec`); kept whole for the owner
    /// even when the bio is split.
    pub(crate) vecs: Vec<BioVec>,
    /// Where the part still to be done starts (`bi_iter.bi_idx` and
    /// `bi_iter.bi_bvec_done`): the first segment index and bytes of it
    /// already done. The rest of `vecs` from there is the bio's data.
    pub(crate) iter_idx: usize,
    pub(crate) iter_skip: u32,
    /// Position and size as submitted, kept when the bio is split so that
    /// its owner gets back the bio it submitted (0 size: not split).
    pub(crate) submitted_sector: u64,
    pub(crate) submitted_size: u32,
    pub(crate) max_vecs: usize,
    /// Memory segments once split to the queue limits (set at submission).
    pub(crate) nr_segs: u32,
    pub(crate) status: BlkStatus,
    pub(crate) error_sector: Option<Sector>,
    pub(crate) ioprio: IoPrio,
    pub(crate) integrity: Option<Box<BioIntegrity>>,
    end_io: Option<EndIo>,
    /// Set when this bio is chained as a child: its parent's node.
    chain_parent: Option<Arc<ChainNode>>,
    /// Set when children are chained to this bio.
    chain_node: Option<Arc<ChainNode>>,
    pub(crate) pool: Option<PoolSlot>,
    ended: bool,
}

impl Bio {
    /// A bio not backed by any bio set (`bio_kmalloc()`), with room for
    /// `nr_vecs` segments (at most [`BIO_MAX_VECS`]).
    pub fn new(op: ReqOp, sector: Sector, nr_vecs: usize) -> Bio {
        let max_vecs = nr_vecs.clamp(1, BIO_MAX_VECS);
        Bio::with_vecs(op, sector, Vec::with_capacity(max_vecs), max_vecs)
    }

    pub(crate) fn with_vecs(op: ReqOp, sector: Sector, vecs: Vec<BioVec>, max_vecs: usize) -> Bio {
        Bio {
            op,
            flags: ReqFlags::NONE,
            sector,
            size: 0,
            vecs,
            iter_idx: 0,
            iter_skip: 0,
            submitted_sector: 0,
            submitted_size: 0,
            max_vecs,
            nr_segs: 0,
            status: BlkStatus::Ok,
            error_sector: None,
            ioprio: IoPrio::NONE,
            integrity: None,
            end_io: None,
            chain_parent: None,
            chain_node: None,
            pool: None,
            ended: false,
        }
    }

    /// A bio without data for a range: discard or write-zeroes of
    /// `nr_sectors` sectors. Bios of other ops get size 0.
    pub fn new_range(op: ReqOp, sector: Sector, nr_sectors: u32) -> Bio {
        let mut bio = Bio::new(op, sector, 1);
        if matches!(op, ReqOp::Discard | ReqOp::WriteZeroes) {
            bio.size = nr_sectors.saturating_mul(1 << SECTOR_SHIFT);
        }
        bio
    }

    /// An empty flush: makes every write completed before it durable.
    pub fn new_flush() -> Bio {
        Bio::new(ReqOp::Flush, Sector(0), 1)
    }

    /// Add `len` bytes at `offset` of `page` (`bio_add_page()`).
    ///
    /// Returns the number of bytes added: `len`, or 0 when the bio is full
    /// (all `max_vecs` segments used and the range does not continue the last
    /// one), would exceed 4 GiB, is not a data bio, or the range does not lie
    /// within the page. A range that continues the previous segment in the
    /// same page is coalesced into it.
    pub fn add_page(&mut self, page: Page, len: u32, offset: u32) -> u32 {
        let fits_page = len > 0 && (offset as usize) + (len as usize) <= PAGE_SIZE;
        if !fits_page || !self.op.has_data() || self.size.checked_add(len).is_none() {
            return 0;
        }
        if let Some(last) = self.vecs.last_mut() {
            if last.page.same_page(&page) && last.offset + last.len == offset {
                last.len += len;
                self.size += len;
                return len;
            }
        }
        if self.vecs.len() >= self.max_vecs {
            return 0;
        }
        self.vecs.push(BioVec { page, offset, len });
        self.size += len;
        len
    }

    pub fn op(&self) -> ReqOp {
        self.op
    }

    pub fn flags(&self) -> ReqFlags {
        self.flags
    }

    pub fn set_flags(&mut self, flags: ReqFlags) {
        self.flags = flags;
    }

    pub fn add_flags(&mut self, flags: ReqFlags) {
        self.flags |= flags;
    }

    /// First sector (`bi_iter.bi_sector`).
    pub fn sector(&self) -> Sector {
        self.sector
    }

    /// Move the bio (before submission).
    pub fn set_sector(&mut self, sector: Sector) {
        self.sector = sector;
    }

    /// Bytes covered.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Sectors covered (`bio_sectors()`).
    pub fn sectors(&self) -> u32 {
        self.size >> SECTOR_SHIFT
    }

    /// The sector just past the bio (`bio_end_sector()`).
    pub fn end_sector(&self) -> Sector {
        Sector(self.sector.0 + u64::from(self.sectors()))
    }

    /// The outcome; meaningful once the bio has completed.
    pub fn status(&self) -> BlkStatus {
        self.status
    }

    /// Where the first error was seen, when the device or the integrity
    /// check could tell.
    pub fn error_sector(&self) -> Option<Sector> {
        self.error_sector
    }

    /// Set the outcome (for drivers and for ending a bio with an error).
    pub fn set_status(&mut self, status: BlkStatus, sector: Option<Sector>) {
        self.status = status;
        self.error_sector = sector;
    }

    pub fn ioprio(&self) -> IoPrio {
        self.ioprio
    }

    pub fn set_ioprio(&mut self, ioprio: IoPrio) {
        self.ioprio = ioprio;
    }

    /// Number of segments (`bi_vcnt`).
    pub fn vcnt(&self) -> usize {
        self.vecs.len()
    }

    /// Room for segments (`bi_max_vecs`).
    pub fn max_vecs(&self) -> usize {
        self.max_vecs
    }

    /// True when no further page can be added (`bio_full()`).
    pub fn is_full(&self) -> bool {
        self.vecs.len() >= self.max_vecs
    }

    /// The segments, in order (`bio_for_each_segment_all()`).
    pub fn segments(&self) -> std::slice::Iter<'_, BioVec> {
        self.vecs.iter()
    }

    /// Take the segments out (after completion, to get the pages back).
    pub fn take_segments(&mut self) -> Vec<BioVec> {
        self.size = 0;
        self.iter_idx = 0;
        self.iter_skip = 0;
        std::mem::take(&mut self.vecs)
    }

    /// The segments still to be done (`bio_for_each_segment()`): the part
    /// of `vecs` the iterator has not passed.
    pub(crate) fn cur_segments(&self) -> impl Iterator<Item = CurSeg<'_>> {
        let skip = self.iter_skip;
        self.vecs
            .get(self.iter_idx..)
            .unwrap_or(&[])
            .iter()
            .enumerate()
            .map(move |(i, v)| {
                let s = if i == 0 { skip.min(v.len) } else { 0 };
                CurSeg {
                    page: &v.page,
                    offset: v.offset + s,
                    len: v.len - s,
                }
            })
    }

    /// Remember the position as submitted before the first split.
    pub(crate) fn mark_submitted(&mut self) {
        if self.submitted_size == 0 {
            self.submitted_sector = self.sector.0;
            self.submitted_size = self.size;
        }
    }

    /// Put a split bio back as it was submitted: all segments, first sector,
    /// full size (the owner sees what it submitted; it can be resubmitted).
    fn rewind(&mut self) {
        if self.submitted_size != 0 {
            self.sector = Sector(self.submitted_sector);
            self.size = self.submitted_size;
            self.iter_idx = 0;
            self.iter_skip = 0;
            self.submitted_size = 0;
        }
    }

    /// Move the iterator past `bytes` (`bio_advance()`).
    pub(crate) fn advance(&mut self, bytes: u32) {
        let mut left = bytes.min(self.size);
        self.size -= left;
        self.sector = Sector(self.sector.0 + u64::from(left >> SECTOR_SHIFT));
        while left > 0 {
            let Some(v) = self.vecs.get(self.iter_idx) else {
                break;
            };
            let here = v.len - self.iter_skip;
            if left < here {
                self.iter_skip += left;
                break;
            }
            left -= here;
            self.iter_idx += 1;
            self.iter_skip = 0;
        }
    }

    /// Copy the bio's data into one buffer (tests, small reads).
    pub fn copy_data(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size as usize);
        for v in &self.vecs {
            out.extend_from_slice(v.as_slice());
        }
        out
    }

    /// Set the completion (`bi_end_io`); it runs exactly once.
    pub fn set_end_io(&mut self, end_io: impl FnOnce(Bio) + Send + 'static) {
        self.end_io = Some(EndIo::Once(Box::new(end_io)));
    }

    /// Set a completion handler shared with other bios; it is called once
    /// for this bio. Cheaper than [`Bio::set_end_io`] on hot paths (no
    /// allocation per bio).
    pub fn set_end_io_shared(&mut self, end_io: &SharedEndIo) {
        self.end_io = Some(EndIo::Shared(Arc::clone(end_io)));
    }

    /// True once the bio has completed (its end_io has been called).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// True if this bio is a child in a chain.
    pub fn is_chained(&self) -> bool {
        self.chain_parent.is_some()
    }

    /// An empty bio with this one's op, flags, priority and position, for
    /// splitting (`bio_alloc_clone()` without the data).
    pub(crate) fn clone_header(&self, vecs: Vec<BioVec>, max_vecs: usize) -> Bio {
        let mut b = Bio::with_vecs(self.op, self.sector, vecs, max_vecs);
        b.flags = self.flags;
        b.ioprio = self.ioprio;
        b
    }

    /// Move everything out of `self`, leaving an inert husk (used by `Drop`).
    fn take(&mut self) -> Bio {
        let mut husk = Bio::with_vecs(self.op, self.sector, Vec::new(), 0);
        husk.ended = true;
        std::mem::replace(self, husk)
    }
}

/// Why [`bio_chain`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The child is already chained to a parent (the kernel `BUG_ON`s).
    #[error("the bio is already chained to a parent")]
    AlreadyChained,
    /// The child has already ended.
    #[error("the bio has already ended")]
    Ended,
}

/// Make `parent` complete only after `child` has (`bio_chain()`).
///
/// The child's completion is taken over by the chain: a child must not have
/// an end_io of its own (one that is set is dropped without running, and a
/// warning is logged). The parent's end_io runs once, after its own I/O and
/// every chained child's, with the first error any of them saw.
///
/// Fails, changing nothing, if the child is already chained or has ended.
pub fn bio_chain(child: &mut Bio, parent: &mut Bio) -> Result<(), ChainError> {
    if child.chain_parent.is_some() {
        return Err(ChainError::AlreadyChained);
    }
    if child.ended {
        return Err(ChainError::Ended);
    }
    if child.end_io.take().is_some() {
        log::warn!(
            "bio_chain: the child at {} had its own end_io; it will not run",
            child.sector
        );
    }
    let node = parent.chain_node.get_or_insert_with(ChainNode::new);
    node.remaining.fetch_add(1, Ordering::AcqRel);
    child.chain_parent = Some(Arc::clone(node));
    Ok(())
}

/// End a bio (`bio_endio()`): runs its completion, or, if it still has
/// chained children outstanding, parks it until the last one ends.
///
/// Chains of any depth are walked iteratively, never by recursion.
pub fn bio_endio(bio: Bio) {
    let mut bio = bio;
    loop {
        // A parent with children: its own part is done; park it and drop
        // its own reference. Whoever drops the last reference resumes it.
        if let Some(node) = bio.chain_node.clone() {
            node.record(bio.status, bio.error_sector);
            *node.parked.lock().unwrap_or_else(|e| e.into_inner()) = Some(bio);
            if !node.put() {
                return;
            }
            match node.parked.lock().unwrap_or_else(|e| e.into_inner()).take() {
                Some(parked) => bio = parked,
                None => return,
            }
            bio.chain_node = None;
            if let Some((status, sector)) = node.first_error() {
                bio.status = status;
                bio.error_sector = sector;
            }
        }
        // A child: hand the result to the parent; end the parent if this
        // was its last outstanding member.
        if let Some(parent) = bio.chain_parent.take() {
            parent.record(bio.status, bio.error_sector);
            bio.ended = true;
            drop(bio);
            if !parent.put() {
                return;
            }
            let parked = parent
                .parked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            match parked {
                Some(p) => {
                    bio = p;
                    bio.chain_node = None;
                    if let Some((status, sector)) = parent.first_error() {
                        bio.status = status;
                        bio.error_sector = sector;
                    }
                    continue;
                }
                None => return,
            }
        }
        bio.ended = true;
        bio.rewind();
        if let Some(end_io) = bio.end_io.take() {
            end_io.call(bio);
        }
        return;
    }
}

/// End a bio with an error (`bio_io_error()`).
pub fn bio_io_error(mut bio: Bio, status: BlkStatus) {
    bio.status = status;
    bio_endio(bio);
}

impl Drop for Bio {
    fn drop(&mut self) {
        if !self.ended
            && (self.end_io.is_some() || self.chain_parent.is_some() || self.chain_node.is_some())
        {
            // Backstop: a bio someone waits for was dropped without ending.
            log::error!(
                "bio {:?} at {} dropped without being ended; ending it with an I/O error",
                self.op,
                self.sector
            );
            let mut orphan = self.take();
            orphan.status = BlkStatus::IoErr;
            bio_endio(orphan);
            return;
        }
        if let Some(slot) = self.pool.take() {
            slot.release(std::mem::take(&mut self.vecs));
        }
    }
}

impl fmt::Debug for Bio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bio")
            .field("op", &self.op)
            .field("flags", &self.flags)
            .field("sector", &self.sector.0)
            .field("size", &self.size)
            .field("vcnt", &self.vecs.len())
            .field("status", &self.status)
            .field("ioprio", &self.ioprio)
            .finish()
    }
}

#[cfg(test)]
mod tests;
