//! Splitting bios to the queue limits.
//!
//! Counterpart of `bio_split()`, `bio_split_rw_at()` and
//! `__bio_split_to_limits()` (block/bio.c, block/blk-merge.c). The split is
//! exact: every piece obeys every limit, so no request the device sees breaks
//! one (merging keeps to the same rules, see `merge.rs`).

use super::bio::{Bio, BioVec};
use super::limits::QueueLimits;
use super::types::{ReqOp, SECTOR_SHIFT};

/// Where a bio must be split, or how many segments it has if it fits.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SplitAt {
    /// The bio fits; it has this many segments.
    Fits(u32),
    /// Split after this many bytes (a multiple of the alignment).
    Bytes(u32),
}

/// Walk the bio's segments under the limits (`bio_split_rw_at()`).
///
/// `align` is the granularity a split must keep (the logical block size, or
/// the integrity interval when larger). Returns `None` when the bio can't be
/// split at all (a single aligned unit already breaks a limit): the caller
/// fails it with `BlkStatus::Invalid`.
pub(crate) fn split_point(bio: &Bio, lim: &QueueLimits, align: u32) -> Option<SplitAt> {
    let max_bytes = lim.max_bytes();
    let mut bytes: u64 = 0;
    let mut nsegs: u32 = 0;
    let mut prev_end: Option<usize> = None;
    for bv in bio.cur_segments() {
        if let Some(pe) = prev_end {
            if lim.virt_gap(pe, bv.addr()) {
                return round(bytes, align);
            }
        }
        let mut off = 0usize;
        while off < bv.len as usize {
            let addr = bv.addr() + off;
            let seg = lim.segment_len(addr, bv.len as usize - off) as u64;
            if nsegs + 1 > lim.max_segments {
                return round(bytes, align);
            }
            if bytes + seg > max_bytes {
                return round(max_bytes, align);
            }
            nsegs += 1;
            bytes += seg;
            off += seg as usize;
        }
        prev_end = Some(bv.addr() + bv.len as usize);
    }
    Some(SplitAt::Fits(nsegs))
}

fn round(bytes: u64, align: u32) -> Option<SplitAt> {
    let split = bytes - bytes % u64::from(align);
    (split > 0).then_some(SplitAt::Bytes(split as u32))
}

/// Number of segments of a bio that fits the limits (0 for bios without data).
pub(crate) fn bio_segments(bio: &Bio, lim: &QueueLimits) -> u32 {
    let mut n = 0;
    for bv in bio.cur_segments() {
        let mut off = 0usize;
        while off < bv.len as usize {
            off += lim.segment_len(bv.addr() + off, bv.len as usize - off);
            n += 1;
        }
    }
    n
}

/// Split the first `bytes` off `bio` (`bio_split()`).
///
/// Returns the front piece, with `bio`'s op, flags and priority, covering
/// `bio`'s first `bytes`; `bio` is advanced past them. The caller chains the
/// front to `bio` and submits both. The front holds references to the
/// pages it covers; `bio` keeps every segment (its owner gets them all back
/// at completion) and only its iterator moves, as with `bi_iter` in the
/// kernel. Both pieces cover disjoint bytes. `front` is an empty bio from
/// the queue's split set, filled in here. `bytes` must be a multiple of the
/// sector size and less than the bio's size.
pub(crate) fn bio_split(bio: &mut Bio, bytes: u32, mut front: Bio) -> Bio {
    front.vecs.clear();
    let mut left = bytes;
    for seg in bio.cur_segments() {
        if left == 0 {
            break;
        }
        let len = seg.len.min(left);
        front.vecs.push(BioVec {
            page: seg.page.clone(),
            offset: seg.offset,
            len,
        });
        left -= len;
    }
    front.iter_idx = 0;
    front.iter_skip = 0;
    front.max_vecs = front.vecs.len().max(1);
    front.op = bio.op;
    front.flags = bio.flags;
    front.ioprio = bio.ioprio;
    front.sector = bio.sector;
    front.size = bytes;
    if let Some(integrity) = bio.integrity.as_mut() {
        front.integrity = Some(Box::new(integrity.split_front(bytes)));
    }
    bio.mark_submitted();
    bio.advance(bytes);
    front
}

/// Split a data-less range bio (discard, write-zeroes) at `sectors`.
pub(crate) fn range_split(bio: &mut Bio, sectors: u32) -> Bio {
    let mut front = bio.clone_header(Vec::new(), 1);
    front.size = sectors << SECTOR_SHIFT;
    bio.mark_submitted();
    bio.advance(sectors << SECTOR_SHIFT);
    front
}

/// Largest range-op piece, in sectors, for this op: its limit rounded down
/// to `align_bytes` (the logical block or the integrity interval, whichever
/// is larger), and never less than one such unit.
pub(crate) fn max_range_sectors(op: ReqOp, lim: &QueueLimits, align_bytes: u32) -> u32 {
    let max = match op {
        ReqOp::Discard => lim.max_discard_sectors,
        _ => lim.max_write_zeroes_sectors,
    };
    let align = (align_bytes >> SECTOR_SHIFT).max(1);
    (max - max % align).max(align)
}
