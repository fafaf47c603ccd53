//! Requests and merging.
//!
//! Counterpart of `struct request` and block/blk-merge.c. As there, "may
//! these two be merged" ([`rq_merge_ok`]: same op, flags and priority class,
//! no NOMERGE flags) is kept apart from "where" ([`try_merge`]: back or
//! front) and from "within the limits" ([`fits_limits`]). [`MergeIndex`] finds a
//! candidate in O(1): first the last request merged into (`q->last_merge`),
//! then hashes of request ends and starts (the elevator's merge hash).

use std::collections::VecDeque;
use std::time::Instant;

use rustc_hash::FxHashMap;
use slab::Slab;

use super::bio::Bio;
use super::ioc::SchedClass;
use super::limits::QueueLimits;
use super::types::{ReqFlags, ReqOp, Sector, SECTOR_SHIFT};

/// Bios merged into one device request: contiguous on the device, same op.
pub(crate) struct Request {
    pub(crate) op: ReqOp,
    pub(crate) flags: ReqFlags,
    pub(crate) class: SchedClass,
    pub(crate) sector: Sector,
    pub(crate) nr_sectors: u32,
    pub(crate) nr_segs: u32,
    pub(crate) bios: VecDeque<Bio>,
    /// When the request entered the scheduler.
    pub(crate) queued_at: Option<Instant>,
    /// Address of the first byte of the first segment and just past the
    /// last segment, kept for the virt-boundary check on merges.
    first_addr: Option<usize>,
    end_addr: Option<usize>,
}

impl Request {
    pub(crate) fn from_bio(bio: Bio) -> Request {
        let (first_addr, end_addr) = seg_bounds(&bio);
        Request {
            first_addr,
            end_addr,
            op: bio.op,
            flags: bio.flags,
            // Flushes bypass the classes (as blk-flush bypasses the
            // elevator): an idle process's fsync must not wait behind BE I/O.
            class: if bio.op == ReqOp::Flush {
                SchedClass::Rt
            } else {
                bio.ioprio.sched_class()
            },
            sector: bio.sector,
            nr_sectors: bio.sectors(),
            nr_segs: bio.nr_segs,
            bios: {
                let mut bios = VecDeque::with_capacity(32);
                bios.push_back(bio);
                bios
            },
            queued_at: None,
        }
    }

    pub(crate) fn end_sector(&self) -> u64 {
        self.sector.0 + u64::from(self.nr_sectors)
    }

    pub(crate) fn bytes(&self) -> u64 {
        u64::from(self.nr_sectors) << SECTOR_SHIFT
    }
}

/// Address of a bio's first data byte and just past its last.
#[inline]
fn seg_bounds(bio: &Bio) -> (Option<usize>, Option<usize>) {
    let first = bio.cur_segments().next().map(|s| s.addr());
    let end = bio.vecs.last().map(|v| v.addr() + v.len as usize);
    (first, end)
}

/// Where a bio joins a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MergeKind {
    /// The bio starts where the request ends.
    Back,
    /// The bio ends where the request starts.
    Front,
}

/// May `bio` be merged into `rq` at all (`blk_rq_merge_ok()`)?
pub(crate) fn rq_merge_ok(rq: &Request, bio: &Bio) -> bool {
    rq.op == bio.op
        && rq.op.has_data()
        && rq.flags.without(ReqFlags::SYNC) == bio.flags.without(ReqFlags::SYNC)
        && !bio.flags.intersects(ReqFlags::NOMERGE_FLAGS)
        && rq.class == bio.ioprio.sched_class()
}

/// Which side of `rq` `bio` is adjacent to (`blk_try_merge()`).
pub(crate) fn try_merge(rq: &Request, bio: &Bio) -> Option<MergeKind> {
    if rq.end_sector() == bio.sector.0 {
        Some(MergeKind::Back)
    } else if bio.end_sector().0 == rq.sector.0 {
        Some(MergeKind::Front)
    } else {
        None
    }
}

/// Would the merged request still obey the limits
/// (`ll_back_merge_fn()` / `ll_front_merge_fn()`)?
pub(crate) fn fits_limits(rq: &Request, bio: &Bio, kind: MergeKind, lim: &QueueLimits) -> bool {
    if u64::from(rq.nr_sectors) + u64::from(bio.sectors()) > u64::from(lim.max_sectors) {
        return false;
    }
    if rq.nr_segs + bio.nr_segs > lim.max_segments {
        return false;
    }
    if lim.virt_boundary_mask == 0 {
        return true;
    }
    let (bio_first, bio_end) = seg_bounds(bio);
    let (first, second) = match kind {
        MergeKind::Back => (rq.end_addr, bio_first),
        MergeKind::Front => (bio_end, rq.first_addr),
    };
    match (first, second) {
        (Some(end), Some(start)) => !lim.virt_gap(end, start),
        _ => true,
    }
}

/// Merge `bio` into `rq` on the given side. The caller has checked all
/// three conditions above.
#[inline]
fn do_merge(rq: &mut Request, bio: Bio, kind: MergeKind) {
    rq.nr_sectors += bio.sectors();
    rq.nr_segs += bio.nr_segs;
    let (first, end) = seg_bounds(&bio);
    match kind {
        MergeKind::Back => {
            rq.end_addr = end;
            rq.bios.push_back(bio);
        }
        MergeKind::Front => {
            rq.first_addr = first;
            rq.sector = bio.sector;
            rq.bios.push_front(bio);
        }
    }
}

/// O(1) lookup of merge candidates among a set of pending requests.
#[derive(Default)]
pub(crate) struct MergeIndex {
    by_end: FxHashMap<u64, usize>,
    by_start: FxHashMap<u64, usize>,
    last_merge: Option<usize>,
}

/// Result of a merge attempt.
pub(crate) enum MergeOutcome {
    Merged { kind: MergeKind, hint_hit: bool },
    NotMerged(Bio),
}

impl MergeIndex {
    /// Index a request (`elv_rqhash_add()`).
    pub(crate) fn add(&mut self, key: usize, rq: &Request) {
        if rq.op.has_data() && !rq.flags.intersects(ReqFlags::NOMERGE_FLAGS) {
            self.by_end.insert(rq.end_sector(), key);
            self.by_start.insert(rq.sector.0, key);
        }
    }

    /// Forget a request (`elv_rqhash_del()`).
    pub(crate) fn remove(&mut self, key: usize, rq: &Request) {
        if self.by_end.get(&rq.end_sector()) == Some(&key) {
            self.by_end.remove(&rq.end_sector());
        }
        if self.by_start.get(&rq.sector.0) == Some(&key) {
            self.by_start.remove(&rq.sector.0);
        }
        if self.last_merge == Some(key) {
            self.last_merge = None;
        }
    }

    /// Try to merge `bio` into one of `rqs` (`elv_merge()` +
    /// `bio_attempt_{back,front}_merge()`): the last-merge hint first, then
    /// the hashes, looked up only when the hint misses.
    #[inline]
    pub(crate) fn attempt(
        &mut self,
        rqs: &mut Slab<Request>,
        bio: Bio,
        lim: &QueueLimits,
    ) -> MergeOutcome {
        if !bio.op.has_data() || bio.flags.intersects(ReqFlags::NOMERGE_FLAGS) {
            return MergeOutcome::NotMerged(bio);
        }
        if let Some(key) = self.last_merge {
            if let Some(kind) = Self::mergeable(rqs, key, &bio, lim) {
                return self.merge_into(rqs, key, bio, kind, true);
            }
        }
        let by_end = self.by_end.get(&bio.sector.0).copied();
        let by_start = || self.by_start.get(&bio.end_sector().0).copied();
        for key in [by_end, by_start()].into_iter().flatten() {
            if Some(key) == self.last_merge {
                continue;
            }
            if let Some(kind) = Self::mergeable(rqs, key, &bio, lim) {
                return self.merge_into(rqs, key, bio, kind, false);
            }
        }
        MergeOutcome::NotMerged(bio)
    }

    #[inline]
    fn mergeable(
        rqs: &Slab<Request>,
        key: usize,
        bio: &Bio,
        lim: &QueueLimits,
    ) -> Option<MergeKind> {
        let rq = rqs.get(key)?;
        if !rq_merge_ok(rq, bio) {
            return None;
        }
        let kind = try_merge(rq, bio)?;
        fits_limits(rq, bio, kind, lim).then_some(kind)
    }

    /// Merge and keep the index in step: a back merge moves the request's
    /// end, a front merge its start.
    #[inline]
    fn merge_into(
        &mut self,
        rqs: &mut Slab<Request>,
        key: usize,
        bio: Bio,
        kind: MergeKind,
        hint_hit: bool,
    ) -> MergeOutcome {
        let Some(rq) = rqs.get_mut(key) else {
            return MergeOutcome::NotMerged(bio);
        };
        match kind {
            MergeKind::Back => {
                let old = rq.end_sector();
                if self.by_end.get(&old) == Some(&key) {
                    self.by_end.remove(&old);
                }
                do_merge(rq, bio, kind);
                self.by_end.insert(rq.end_sector(), key);
            }
            MergeKind::Front => {
                let old = rq.sector.0;
                if self.by_start.get(&old) == Some(&key) {
                    self.by_start.remove(&old);
                }
                do_merge(rq, bio, kind);
                self.by_start.insert(rq.sector.0, key);
            }
        }
        self.last_merge = Some(key);
        MergeOutcome::Merged { kind, hint_hit }
    }

    pub(crate) fn clear(&mut self) {
        self.by_end.clear();
        self.by_start.clear();
        self.last_merge = None;
    }
}

/// Requests gathered in a plug, in submission order.
#[derive(Default)]
pub(crate) struct RequestList {
    rqs: Slab<Request>,
    order: Vec<usize>,
    index: MergeIndex,
}

impl RequestList {
    /// Merge `bio` into a pending request, or start a new one. When a new
    /// request is needed and the list already holds `max` requests, the list
    /// is drained first and returned, so that the new request opens the next
    /// batch (`blk_add_rq_to_plug()`).
    pub(crate) fn add(
        &mut self,
        bio: Bio,
        lim: &QueueLimits,
        max: usize,
    ) -> (Option<MergeOutcome>, Vec<Request>) {
        match self.index.attempt(&mut self.rqs, bio, lim) {
            MergeOutcome::NotMerged(bio) => {
                let full = if self.order.len() >= max {
                    self.drain()
                } else {
                    Vec::new()
                };
                let rq = Request::from_bio(bio);
                let key = self.rqs.insert(rq);
                if let Some(rq) = self.rqs.get(key) {
                    self.index.add(key, rq);
                }
                self.order.push(key);
                self.index.last_merge = Some(key);
                (None, full)
            }
            merged => (Some(merged), Vec::new()),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// All requests, in order, leaving the list empty.
    pub(crate) fn drain(&mut self) -> Vec<Request> {
        self.index.clear();
        let order = std::mem::take(&mut self.order);
        let mut out = Vec::with_capacity(order.len());
        for key in order {
            if self.rqs.contains(key) {
                out.push(self.rqs.remove(key));
            }
        }
        out
    }
}
