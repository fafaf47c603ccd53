//! The queue workers: the "driver" side of the queue.
//!
//! Counterpart of a driver's `queue_rq` and of `kintegrityd`: queue workers
//! take requests (from the channel, or straight from the scheduler after
//! finishing one), do `preadv`/`pwritev2` on the backend with the integrity
//! store's protocol around the data transfer (docs/integrity.md), and hand
//! verified reads to a verify worker, which checks the data against its
//! tuples before the bios complete.

use std::io::{self, IoSlice, IoSliceMut};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::integrity_payload::{self, interval_range, BioIntegrity};
use super::limits::QueueLimits;
use super::merge::Request;
use super::page::Page;
use super::queue::QueueInner;
use super::range_lock::RangeGuard;
use super::types::{BlkStatus, ReqFlags, ReqOp};

/// One memory segment of a request as the device sees it: `len` bytes at
/// `offset` in `page`, within the segment size and boundary limits.
pub(crate) struct Piece<'a> {
    pub(crate) page: &'a Page,
    pub(crate) offset: usize,
    pub(crate) len: usize,
}

impl Piece<'_> {
    pub(crate) fn addr(&self) -> usize {
        self.page.addr() + self.offset
    }
}

/// The pieces of a request's current data, in order: each bio segment cut
/// where the limits require (`blk_rq_map_sg()` in spirit).
pub(crate) fn pieces<'a>(rq: &'a Request, lim: &'a QueueLimits) -> impl Iterator<Item = Piece<'a>> {
    rq.bios
        .iter()
        .flat_map(|bio| bio.cur_segments())
        .flat_map(move |seg| {
            let (start, len) = (seg.offset as usize, seg.len as usize);
            let mut off = 0usize;
            std::iter::from_fn(move || {
                (off < len).then(|| {
                    let n = lim.segment_len(seg.addr() + off, len - off);
                    let piece = Piece {
                        page: seg.page,
                        offset: start + off,
                        len: n,
                    };
                    off += n;
                    piece
                })
            })
        })
}

/// What [`QueueInner::pre_io`] holds until [`QueueInner::post_io`].
pub(crate) struct IoCtx<'a> {
    _range: Option<RangeGuard<'a>>,
    /// A write's interval ranges, one per bio, begun in the store.
    ranges: Vec<(u64, u64)>,
}

impl QueueInner {
    /// Do one request's I/O on the backend, with the integrity store's
    /// protocol around it (docs/integrity.md).
    pub(crate) fn execute(&self, rq: &mut Request) -> io::Result<()> {
        if rq.op.has_data() {
            let ctx = self
                .pre_io(rq, true)?
                .ok_or_else(|| io::Error::other("range lock not taken"))?;
            let result = self.do_io(rq);
            return self.post_io(rq, ctx, result);
        }
        let Some(store) = &self.integrity else {
            return self.do_io(rq);
        };
        let profile = *store.profile();
        match rq.op {
            ReqOp::Discard | ReqOp::WriteZeroes => {
                let _range = self.ranges.lock(rq.sector.0, rq.end_sector(), true);
                let (first, n) = interval_range(&profile, rq.sector, rq.bytes());
                store.begin_write(first, n)?;
                let result = self.do_io(rq);
                let zeroed = rq.op == ReqOp::WriteZeroes || self.backend.info().discard_zeroes;
                match result {
                    Ok(()) if zeroed => store.clear(first, n),
                    Ok(()) => {
                        // Contents undefined: the region stays dirty and its
                        // tuples are recomputed at shutdown or recovery.
                        store.end_write(first, n, None);
                        Ok(())
                    }
                    Err(e) => {
                        store.end_write(first, n, None);
                        Err(e)
                    }
                }
            }
            _ => store.flush(),
        }
    }

    /// Before a read or write's data transfer: hold its sector range, do a
    /// PREFLUSH, and mark the regions a write touches dirty (integrity on).
    /// On error nothing is held and the transfer must not be issued.
    /// Without `wait`, `Ok(None)` (nothing done) if the range is held by
    /// another transfer: a worker with transfers of its own in flight must
    /// reap them rather than wait, as it may be waiting for itself.
    pub(crate) fn pre_io(&self, rq: &Request, wait: bool) -> io::Result<Option<IoCtx<'_>>> {
        let hold = |excl: bool| {
            if wait {
                Some(self.ranges.lock(rq.sector.0, rq.end_sector(), excl))
            } else {
                self.ranges.try_lock(rq.sector.0, rq.end_sector(), excl)
            }
        };
        let preflush = rq.op == ReqOp::Write && rq.flags.contains(ReqFlags::PREFLUSH);
        let Some(store) = &self.integrity else {
            if preflush {
                self.backend.flush()?;
            }
            return Ok(Some(IoCtx {
                _range: None,
                ranges: Vec::new(),
            }));
        };
        let profile = *store.profile();
        // Data and tuples of overlapping requests change together; a read
        // needs the range only if it will load tuples to verify against.
        if rq.op != ReqOp::Write {
            let range = match self.verify_reads {
                true => match hold(false) {
                    Some(g) => Some(g),
                    None => return Ok(None),
                },
                false => None,
            };
            return Ok(Some(IoCtx {
                _range: range,
                ranges: Vec::new(),
            }));
        }
        let Some(range) = hold(true) else {
            return Ok(None);
        };
        if preflush {
            store.flush()?;
        }
        let ranges: Vec<(u64, u64)> = rq
            .bios
            .iter()
            .map(|b| interval_range(&profile, b.sector, u64::from(b.size)))
            .collect();
        for (i, &(first, n)) in ranges.iter().enumerate() {
            if let Err(e) = store.begin_write(first, n) {
                for &(f, n) in ranges.iter().take(i) {
                    store.end_write(f, n, None);
                }
                return Err(e);
            }
        }
        Ok(Some(IoCtx {
            _range: Some(range),
            ranges,
        }))
    }

    /// After a read or write's data transfer ended with `result`: store a
    /// write's tuples (or record its failure) and persist them for FUA; load
    /// a read's tuples for the verify worker. Releases the range.
    pub(crate) fn post_io(
        &self,
        rq: &mut Request,
        ctx: IoCtx<'_>,
        result: io::Result<()>,
    ) -> io::Result<()> {
        let Some(store) = &self.integrity else {
            return result;
        };
        let profile = *store.profile();
        match rq.op {
            ReqOp::Write => {
                for (bio, &(first, n)) in rq.bios.iter().zip(&ctx.ranges) {
                    let tuples = result
                        .is_ok()
                        .then(|| bio.integrity.as_ref().map(|p| p.tuples()))
                        .flatten();
                    store.end_write(first, n, tuples);
                }
                result?;
                if rq.flags.contains(ReqFlags::FUA) {
                    let (first, n) = interval_range(&profile, rq.sector, rq.bytes());
                    store.persist(first, n)?;
                }
                Ok(())
            }
            _ => {
                result?;
                if self.verify_reads {
                    // Fill each bio's PI buffer from the store.
                    for bio in rq.bios.iter_mut() {
                        let mut payload = BioIntegrity::for_read(&profile, bio);
                        let (first, _) = interval_range(&profile, bio.sector, u64::from(bio.size));
                        store.load(first, &mut payload.tuples)?;
                        bio.integrity = Some(Box::new(payload));
                    }
                }
                Ok(())
            }
        }
    }

    /// The transfer done blocking, then [`QueueInner::post_io`].
    pub(crate) fn post_io_after_sync(&self, rq: &mut Request, ctx: IoCtx<'_>) -> io::Result<()> {
        let result = self.do_io(rq);
        self.post_io(rq, ctx, result)
    }

    /// The data transfer itself.
    pub(crate) fn do_io(&self, rq: &Request) -> io::Result<()> {
        let offset = rq.sector.to_bytes();
        match rq.op {
            ReqOp::Read => {
                let mut iov = Vec::with_capacity(rq.nr_segs as usize);
                for p in pieces(rq, &self.limits) {
                    // SAFETY: the queue checked at submission that this read
                    // bio's pages were referenced only by the bio itself; the
                    // bio and its split pieces are owned by the engine until
                    // completion, and the pieces cover disjoint byte ranges,
                    // so nobody else reads or writes these bytes meanwhile.
                    let buf = unsafe { p.page.slice_mut_in_flight(p.offset, p.len) };
                    iov.push(IoSliceMut::new(buf));
                }
                self.backend.read_at(&mut iov, offset)
            }
            ReqOp::Write => {
                let iov: Vec<IoSlice<'_>> = pieces(rq, &self.limits)
                    .map(|p| IoSlice::new(p.page.slice(p.offset, p.len)))
                    .collect();
                self.backend
                    .write_at(&iov, offset, rq.flags.contains(ReqFlags::FUA))
            }
            ReqOp::Flush => self.backend.flush(),
            ReqOp::Discard => self.backend.discard(offset, rq.bytes()),
            ReqOp::WriteZeroes => self.backend.write_zeroes(offset, rq.bytes()),
        }
    }
}

/// A queue worker: take requests, do the I/O, complete or hand to verify.
pub(crate) fn worker_loop(
    q: &Arc<QueueInner>,
    rx: &Receiver<Request>,
    verify_tx: &Sender<Request>,
) {
    for rq in rx {
        let mut next = Some(rq);
        while let Some(mut rq) = next.take() {
            let result = q.execute(&mut rq);
            // Complete first, while this worker still holds the slot: a
            // completion that submits more I/O leaves it in the scheduler,
            // where `io_done` hands it straight back to this worker.
            finish_request(q, rq, result, verify_tx);
            next = q.io_done();
        }
    }
}

/// Hand a request whose I/O is done to the verify worker, or complete it.
pub(crate) fn finish_request(
    q: &QueueInner,
    rq: Request,
    result: io::Result<()>,
    verify_tx: &Sender<Request>,
) {
    match result {
        Ok(()) if rq.op == ReqOp::Read && q.verify_reads => {
            if let Err(e) = verify_tx.send(rq) {
                // No verify worker left: never hand back unverified data.
                q.end_request(e.into_inner(), BlkStatus::IoErr, false);
            }
        }
        Ok(()) => q.end_request(rq, BlkStatus::Ok, false),
        Err(e) => {
            log::warn!(
                "{:?} of {} sectors at {} failed on the {} device: {e}",
                rq.op,
                rq.nr_sectors,
                rq.sector,
                q.backend.info().kind
            );
            let status = BlkStatus::from_io_error(&e);
            q.end_request(rq, status, true);
        }
    }
}

/// A verify worker (`kintegrityd`): checks read data against its tuples.
pub(crate) fn verify_loop(q: &Arc<QueueInner>, rx: &Receiver<Request>) {
    for mut rq in rx {
        let Some(store) = &q.integrity else {
            q.end_request(rq, BlkStatus::Ok, false);
            continue;
        };
        let (mut checked, mut failed) = (0, 0);
        for bio in rq.bios.iter_mut() {
            let (n, bad) = integrity_payload::verify(store.profile(), bio);
            checked += n;
            if let Some(sector) = bad {
                failed += 1;
                log::error!(
                    "integrity: protection error reading {} ({} profile): the data does not match its tuple",
                    sector,
                    store.profile().name()
                );
                bio.status = BlkStatus::Protection;
                bio.error_sector = Some(sector);
                q.stats.error();
            }
            bio.integrity = None;
        }
        q.stats.integrity(0, checked, failed);
        q.end_request(rq, BlkStatus::Ok, false);
    }
}
