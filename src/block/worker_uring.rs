//! Queue workers that keep several transfers in flight through io_uring.
//!
//! The same worker as `worker.rs`, with the data transfer made
//! asynchronous: a worker takes up to `depth` read/write requests, runs
//! each one's `pre_io` (range lock, preflush, dirty bits), queues its
//! `preadv`/`pwritev2` on its ring, and as each completes runs `post_io`
//! (tuples stored or loaded) and finishes it exactly as the blocking worker
//! does. Other operations, and requests whose memory the device can't take
//! directly, are done synchronously in between. One thread then keeps many
//! transfers at the device instead of one.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::backend::DirectFd;
use super::merge::Request;
use super::queue::QueueInner;
use super::types::ReqOp;
use super::worker::{finish_request, pieces, worker_loop, IoCtx};
use crate::sys::Ring;

/// A transfer on the ring: the request, what `pre_io` holds, and the iovecs
/// the kernel reads until the completion is reaped.
struct InFlight<'q> {
    rq: Request,
    ctx: IoCtx<'q>,
    iov: Vec<libc::iovec>,
    bytes: u64,
}

/// Run a worker with a ring of `depth` entries; falls back to the blocking
/// worker if no ring can be set up.
pub(crate) fn uring_worker_loop(
    q: &Arc<QueueInner>,
    rx: &Receiver<Request>,
    verify_tx: &Sender<Request>,
    dev: DirectFd,
    depth: usize,
) {
    let depth = depth.max(1);
    let mut ring = match Ring::new(depth as u32) {
        Ok(ring) => ring,
        Err(e) => {
            log::warn!("io_uring unavailable ({e}); this queue worker does blocking I/O");
            return worker_loop(q, rx, verify_tx);
        }
    };
    let mut slots: Vec<Option<InFlight<'_>>> = (0..depth).map(|_| None).collect();
    let mut free: Vec<usize> = (0..depth).rev().collect();
    let mut ready: VecDeque<Request> = VecDeque::new();
    let mut reaped = Vec::with_capacity(depth);
    let mut submit_errors = 0u64;
    loop {
        // Fill the ring: requests handed back by io_done first, then the
        // channel (blocking only when nothing is in flight).
        while !free.is_empty() {
            let rq = match ready.pop_front() {
                Some(rq) => rq,
                None if free.len() == depth => match rx.recv() {
                    Ok(rq) => rq,
                    Err(_) => return,
                },
                None => match rx.try_recv() {
                    Ok(rq) => rq,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                },
            };
            if !rq.op.has_data() || !aligned(&rq, dev.mem_align) {
                let mut rq = rq;
                let result = q.execute(&mut rq);
                finish_request(q, rq, result, verify_tx);
                ready.extend(q.io_done());
                continue;
            }
            // Wait for a held range only with nothing of ours in flight:
            // the holder may be one of our own transfers.
            let ctx = match q.pre_io(&rq, free.len() == depth) {
                Ok(Some(ctx)) => ctx,
                Ok(None) => {
                    ready.push_front(rq);
                    break;
                }
                Err(e) => {
                    finish_request(q, rq, Err(e), verify_tx);
                    ready.extend(q.io_done());
                    continue;
                }
            };
            let Some(idx) = free.pop() else { break };
            let iov = iovecs(q, &rq);
            let (offset, write) = (rq.sector.to_bytes(), rq.op == ReqOp::Write);
            let dsync = write && rq.flags.contains(super::types::ReqFlags::FUA);
            let bytes = rq.bytes();
            #[allow(
                clippy::indexing_slicing,
                reason = "free holds only indices of slots, each once"
            )]
            let slot = slots[idx].insert(InFlight {
                rq,
                ctx,
                iov,
                bytes,
            });
            // SAFETY: the iovecs live in `slots[idx]`, and the pages they
            // point to in the request beside them, until this entry's
            // completion is reaped below; nobody else touches those bytes
            // meanwhile (the read pages are the engine's alone, the write
            // pages stable, see page.rs). The fd belongs to the backend,
            // which outlives the queue's workers.
            let queued =
                unsafe { ring.push_rw(dev.fd, &slot.iov, offset, write, dsync, idx as u64) };
            if !queued {
                // Cannot happen with a ring of `depth` entries; do it inline.
                if let Some(InFlight { mut rq, ctx, .. }) =
                    slots.get_mut(idx).and_then(Option::take)
                {
                    free.push(idx);
                    let result = q.post_io_after_sync(&mut rq, ctx);
                    finish_request(q, rq, result, verify_tx);
                    ready.extend(q.io_done());
                }
            }
        }
        if free.len() == depth {
            // Nothing in flight: the next pass blocks on the channel.
            continue;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            // Entries the kernel already took may still be in flight: their
            // buffers must stay where they are, so never finish them here.
            // Back off and try again (EBUSY/EAGAIN clear as completions are
            // reaped); a ring that never recovers leaves these bios pending
            // rather than freeing memory under the kernel.
            submit_errors += 1;
            if submit_errors == 1 || submit_errors % 1000 == 0 {
                log::error!("io_uring submit failed {submit_errors} time(s): {e}; retrying");
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        } else {
            submit_errors = 0;
        }
        reaped.clear();
        ring.reap(&mut reaped);
        let mut done = 0;
        for &(tag, res) in &reaped {
            let idx = tag as usize;
            let Some(InFlight {
                mut rq,
                ctx,
                iov,
                bytes,
            }) = slots.get_mut(idx).and_then(Option::take)
            else {
                continue;
            };
            drop(iov);
            free.push(idx);
            let transfer = match u64::try_from(res) {
                Ok(n) if n == bytes => Ok(()),
                // A short transfer: do the whole request again, blocking
                // (reads and writes of the same bytes are idempotent).
                Ok(_) => q.do_io(&rq),
                Err(_) => Err(io::Error::from_raw_os_error(-res)),
            };
            let result = q.post_io(&mut rq, ctx, transfer);
            finish_request(q, rq, result, verify_tx);
            done += 1;
        }
        // Free this batch's dispatch slots and refill under one lock.
        if done > 0 {
            q.io_done_n(done, |rq| ready.push_back(rq));
        }
    }
}

/// The iovecs of a request's current data, cut to the segment limits.
fn iovecs(q: &QueueInner, rq: &Request) -> Vec<libc::iovec> {
    pieces(rq, &q.limits)
        .map(|p| libc::iovec {
            iov_base: p.addr() as *mut libc::c_void,
            iov_len: p.len,
        })
        .collect()
}

/// True if every segment's address and length suit the device's `O_DIRECT`
/// memory alignment.
fn aligned(rq: &Request, mem_align: u32) -> bool {
    let a = mem_align.max(1) as usize;
    rq.bios.iter().all(|bio| {
        bio.cur_segments()
            .all(|s| s.addr() % a == 0 && s.len as usize % a == 0)
    })
}
