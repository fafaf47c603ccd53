//! The request queue: submission, splitting, scheduling and dispatch.
//!
//! Counterpart of `submit_bio()`, `submit_bio_wait()` and
//! `blk_mq_run_hw_queue()` (block/blk-core.c, block/blk-mq.c); the workers
//! that execute requests are in `worker.rs`. Submission
//! validates the bio, generates its integrity tuples (writes), splits it to
//! the limits, and adds it to the thread's plug or the scheduler. Requests
//! are dispatched while fewer than `queue_depth` are in flight, from the
//! submitting thread and from the worker that just finished one, and fed to
//! the workers through a `crossbeam-channel`.

use std::io;

use crossbeam_channel::Sender;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::backend::BlockBackend;
use super::bio::{bio_chain, bio_endio, bio_io_error, Bio};
use super::bioset::{BioSet, Gfp};
use super::integrity::{IntegrityError, IntegrityStore};
use super::integrity_payload::BioIntegrity;
use super::ioc::{IoContext, IoPrioClass};
use super::limits::{LimitsError, QueueLimits};
use super::merge::{MergeOutcome, Request};
use super::plug;
use super::range_lock::RangeLocks;
use super::sched::{Scheduler, DEFAULT_EXPIRE};
use super::split::{bio_segments, bio_split, max_range_sectors, range_split, split_point, SplitAt};
use super::stats::{QueueStats, StatsSnapshot};
use super::types::{BlkStatus, ReqOp, SECTOR_SHIFT, SECTOR_SIZE};
use super::worker;
use super::worker_uring;

/// How a queue is set up.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// Worker threads doing I/O (each does one request at a time).
    pub nr_workers: usize,
    /// Threads verifying integrity tuples of completed reads.
    pub nr_verify_workers: usize,
    /// Most requests dispatched and not yet done; the rest wait in the
    /// scheduler where they can still merge and be ordered by priority.
    /// More than `nr_workers` only makes requests wait in the channel.
    pub queue_depth: usize,
    /// Limits; `None` takes the defaults for the backend.
    pub limits: Option<QueueLimits>,
    /// Deadlines per class (RT, BE, IDLE).
    pub expire: [Duration; 3],
    /// Bios the queue keeps for splitting (its `bio_split` set).
    pub split_pool: usize,
    /// Integrity metadata: off, or kept in the store on the device.
    pub integrity: IntegrityMode,
    /// How workers do their transfers.
    pub io_mode: IoMode,
}

/// How queue workers do their reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// Each worker does one blocking `preadv`/`pwritev2` at a time.
    Blocking,
    /// Each worker keeps up to `depth` transfers in flight through io_uring
    /// (`IORING_OP_READV`/`WRITEV`), on backends that offer an `O_DIRECT`
    /// descriptor ([`BlockBackend::direct_fd`]); others use `Blocking`. Set
    /// `queue_depth` to `nr_workers * depth` to use them all.
    Uring { depth: u32 },
}

/// Whether the queue generates and verifies integrity tuples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntegrityMode {
    /// No tuples: the whole device is data.
    Off,
    /// Use the integrity store on the device (made by
    /// [`IntegrityStore::format`]); the data area shrinks to what it leaves.
    /// Writes always get tuples; reads are verified if `verify_reads`.
    On {
        verify_reads: bool,
        cache_bytes: usize,
    },
}

impl IntegrityMode {
    /// On, verifying reads, with a 64 MiB tuple cache.
    pub fn on() -> IntegrityMode {
        IntegrityMode::On {
            verify_reads: true,
            cache_bytes: 64 << 20,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> QueueConfig {
        QueueConfig {
            nr_workers: 4,
            nr_verify_workers: 1,
            queue_depth: 4,
            limits: None,
            expire: DEFAULT_EXPIRE,
            split_pool: 64,
            integrity: IntegrityMode::Off,
            io_mode: IoMode::Blocking,
        }
    }
}

/// Why a queue could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Limits(#[from] LimitsError),
    #[error("queue limits ask for {asked}-byte logical blocks but the device needs {device}")]
    BlockSize { asked: u32, device: u32 },
    #[error("can't start queue worker threads: {0}")]
    Spawn(io::Error),
    #[error("integrity store: {0}")]
    Integrity(#[from] IntegrityError),
}

struct QueueState {
    sched: Scheduler,
    inflight: usize,
    work_tx: Option<Sender<Request>>,
    dying: bool,
}

/// The shared part of a queue, referenced by workers and plugs.
pub(crate) struct QueueInner {
    pub(crate) limits: QueueLimits,
    pub(crate) stats: QueueStats,
    pub(crate) backend: Arc<dyn BlockBackend>,
    capacity: u64,
    align: u32,
    depth: usize,
    state: Mutex<QueueState>,
    /// Requests dispatched and not yet completed (including verification).
    outstanding: AtomicUsize,
    idle: Condvar,
    split_set: BioSet,
    pub(crate) integrity: Option<IntegrityStore>,
    pub(crate) verify_reads: bool,
    /// Sector ranges of requests being executed (integrity on only).
    pub(crate) ranges: RangeLocks,
}

/// A block device queue.
pub struct Queue {
    inner: Arc<QueueInner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    shut_down: AtomicBool,
}

impl Queue {
    /// Start a queue over `backend` with `config`'s workers and limits.
    pub fn new(backend: Arc<dyn BlockBackend>, config: QueueConfig) -> Result<Queue, QueueError> {
        let info = backend.info();
        let limits = config
            .limits
            .clone()
            .unwrap_or_else(|| QueueLimits::for_backend(&info));
        limits.validate()?;
        if limits.logical_block_size < info.logical_block_size {
            return Err(QueueError::BlockSize {
                asked: limits.logical_block_size,
                device: info.logical_block_size,
            });
        }
        let (integrity, verify_reads) = match config.integrity {
            IntegrityMode::Off => (None, false),
            IntegrityMode::On {
                verify_reads,
                cache_bytes,
            } => (
                Some(IntegrityStore::open(Arc::clone(&backend), cache_bytes)?),
                verify_reads,
            ),
        };
        let (capacity, align) = match &integrity {
            Some(store) => {
                let isize = store.profile().interval_size() as u32;
                (store.data_sectors(), limits.logical_block_size.max(isize))
            }
            None => (info.size_bytes >> SECTOR_SHIFT, limits.logical_block_size),
        };
        let (work_tx, work_rx) = crossbeam_channel::unbounded::<Request>();
        let inner = Arc::new(QueueInner {
            stats: QueueStats::default(),
            backend,
            capacity,
            align,
            depth: config.queue_depth.max(1),
            state: Mutex::new(QueueState {
                sched: Scheduler::new(config.expire),
                inflight: 0,
                work_tx: Some(work_tx),
                dying: false,
            }),
            outstanding: AtomicUsize::new(0),
            idle: Condvar::new(),
            split_set: BioSet::new("bio_split", config.split_pool.max(2), 1),
            integrity,
            verify_reads,
            ranges: RangeLocks::default(),
            limits,
        });
        let queue = Queue {
            inner,
            threads: Mutex::new(Vec::new()),
            shut_down: AtomicBool::new(false),
        };
        let (verify_tx, verify_rx) = crossbeam_channel::unbounded::<Request>();
        let direct = match config.io_mode {
            IoMode::Uring { depth } => queue
                .inner
                .backend
                .direct_fd()
                .map(|fd| (fd, depth as usize)),
            IoMode::Blocking => None,
        };
        for i in 0..config.nr_workers.max(1) {
            let inner = Arc::clone(&queue.inner);
            let rx = work_rx.clone();
            let vtx = verify_tx.clone();
            match direct {
                Some((fd, depth)) => queue.spawn(format!("biofs-queue-{i}"), move || {
                    worker_uring::uring_worker_loop(&inner, &rx, &vtx, fd, depth)
                })?,
                None => queue.spawn(format!("biofs-queue-{i}"), move || {
                    worker::worker_loop(&inner, &rx, &vtx)
                })?,
            }
        }
        drop(verify_tx);
        for i in 0..config.nr_verify_workers.max(1) {
            let inner = Arc::clone(&queue.inner);
            let rx = verify_rx.clone();
            queue.spawn(format!("biofs-verify-{i}"), move || {
                worker::verify_loop(&inner, &rx)
            })?;
        }
        Ok(queue)
    }

    fn spawn(&self, name: String, f: impl FnOnce() + Send + 'static) -> Result<(), QueueError> {
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(f)
            .map_err(QueueError::Spawn)?;
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle);
        Ok(())
    }

    /// Submit a bio (`submit_bio()`). Its completion runs exactly once, on
    /// success or failure; errors are reported through the bio's status,
    /// never by this call. The bio's priority, if unset, is taken from the
    /// calling process's io_context.
    #[inline]
    pub fn submit_bio(&self, bio: Bio) {
        self.inner.submit(bio);
    }

    /// Submit a bio and wait for it (`submit_bio_wait()`): returns the
    /// completed bio; check [`Bio::status`]. Flushes the caller's plug first
    /// so the bio can't wait behind itself.
    pub fn submit_bio_wait(&self, mut bio: Bio) -> Bio {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (op, sector) = (bio.op(), bio.sector());
        bio.set_end_io(move |b| {
            let _ = tx.send(b);
        });
        self.submit_bio(bio);
        plug::flush_current();
        match rx.recv() {
            Ok(b) => b,
            Err(_) => {
                let mut b = Bio::new(op, sector, 1);
                b.set_status(BlkStatus::IoErr, Some(sector));
                b
            }
        }
    }

    /// The limits requests obey.
    pub fn limits(&self) -> &QueueLimits {
        &self.inner.limits
    }

    /// Usable size in sectors.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// The device.
    pub fn backend(&self) -> &Arc<dyn BlockBackend> {
        &self.inner.backend
    }

    /// The integrity store, when integrity is on.
    pub fn integrity(&self) -> Option<&IntegrityStore> {
        self.inner.integrity.as_ref()
    }

    /// The counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Wait until nothing is queued or in flight (bios still in another
    /// thread's plug are not seen).
    pub fn drain(&self) {
        let mut st = self.inner.lock();
        while !st.sched.is_empty() || self.inner.outstanding.load(Ordering::Acquire) > 0 {
            st = match self.inner.idle.wait_timeout(st, Duration::from_millis(20)) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Stop as a killed process would: wait for I/O already queued, stop the
    /// workers, and write nothing more (the integrity store is not shut
    /// down, so the next open recovers it). For crash tests.
    pub fn abandon(self) {
        plug::flush_current();
        self.drain();
        self.stop_workers();
        self.shut_down.store(true, Ordering::Release);
    }

    fn stop_workers(&self) {
        {
            let mut st = self.inner.lock();
            st.dying = true;
            st.work_tx = None;
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            if t.join().is_err() {
                log::error!("a queue worker thread panicked");
            }
        }
    }

    /// Finish all I/O, stop the workers, and close the integrity store
    /// cleanly. Bios submitted afterwards fail with `BlkStatus::IoErr`.
    /// Once it has succeeded, further calls do nothing; after a failure
    /// (the store could not be written) a later call tries again.
    pub fn shutdown(&self) -> io::Result<()> {
        if self.shut_down.load(Ordering::Acquire) {
            return Ok(());
        }
        plug::flush_current();
        self.drain();
        self.stop_workers();
        if let Some(store) = &self.inner.integrity {
            store.shutdown()?;
        }
        self.shut_down.store(true, Ordering::Release);
        Ok(())
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::error!("queue shutdown: {e}");
        }
    }
}

impl QueueInner {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn submit(self: &Arc<Self>, mut bio: Bio) {
        if bio.ioprio.class() == IoPrioClass::None {
            bio.ioprio = IoContext::current_ioprio();
        }
        self.stats.bio_submitted(bio.ioprio.sched_class());
        if let Err(status) = self.check(&bio) {
            log::debug!("rejecting {bio:?}: {status}");
            self.stats.error();
            bio.error_sector = Some(bio.sector);
            bio_io_error(bio, status);
            return;
        }
        if let (Some(store), ReqOp::Write) = (&self.integrity, bio.op) {
            let payload = BioIntegrity::generate(store.profile(), &bio);
            self.stats.integrity(payload.tuples().len() as u64, 0, 0);
            bio.integrity = Some(Box::new(payload));
        }
        loop {
            match self.split_once(&mut bio) {
                Ok(None) => break,
                Ok(Some(mut front)) => {
                    self.stats.bio_split();
                    // A fresh piece: it can be neither chained nor ended.
                    if bio_chain(&mut front, &mut bio).is_err() {
                        bio_io_error(front, BlkStatus::Invalid);
                        continue;
                    }
                    self.queue_bio(front);
                }
                Err(status) => {
                    self.stats.error();
                    bio.error_sector = Some(bio.sector);
                    bio_io_error(bio, status);
                    return;
                }
            }
        }
        self.queue_bio(bio);
    }

    /// Reject what no device could do (`bio_check_eod()`, alignment checks,
    /// and the exclusive-pages rule for reads).
    fn check(&self, bio: &Bio) -> Result<(), BlkStatus> {
        let op = bio.op;
        if op == ReqOp::Flush {
            return Ok(());
        }
        let align = u64::from(self.align);
        let end = bio.sector.0.checked_add(u64::from(bio.sectors()));
        if bio.size == 0 || u64::from(bio.size) % align != 0 || bio.sector.to_bytes() % align != 0 {
            return Err(BlkStatus::Invalid);
        }
        if end.is_none_or(|e| e > self.capacity) {
            return Err(BlkStatus::IoErr);
        }
        if !op.has_data() {
            return Ok(());
        }
        let dma = SECTOR_SIZE as u32 - 1;
        let mut total = 0u64;
        for bv in &bio.vecs {
            if bv.offset & dma != 0 || bv.len & dma != 0 {
                return Err(BlkStatus::Invalid);
            }
            total += u64::from(bv.len);
        }
        if total != u64::from(bio.size) {
            return Err(BlkStatus::Invalid);
        }
        if op == ReqOp::Read && !read_pages_exclusive(bio) {
            return Err(BlkStatus::Invalid);
        }
        Ok(())
    }

    /// Split one piece off `bio` if it breaks a limit (`bio_split_to_limits()`).
    fn split_once(&self, bio: &mut Bio) -> Result<Option<Bio>, BlkStatus> {
        match bio.op {
            ReqOp::Flush => Ok(None),
            ReqOp::Discard | ReqOp::WriteZeroes => {
                let max = max_range_sectors(bio.op, &self.limits, self.align);
                Ok((bio.sectors() > max).then(|| range_split(bio, max)))
            }
            ReqOp::Read | ReqOp::Write => match split_point(bio, &self.limits, self.align) {
                None => Err(BlkStatus::Invalid),
                Some(SplitAt::Fits(nsegs)) => {
                    bio.nr_segs = nsegs;
                    Ok(None)
                }
                Some(SplitAt::Bytes(bytes)) => {
                    let holder = self.split_set.alloc(bio.op, bio.sector, 16, Gfp::Wait);
                    let holder = holder.unwrap_or_else(|| Bio::new(bio.op, bio.sector, 16));
                    let mut front = bio_split(bio, bytes, holder);
                    front.nr_segs = bio_segments(&front, &self.limits);
                    Ok(Some(front))
                }
            },
        }
    }

    /// Into the plug, or straight into the scheduler.
    #[inline]
    fn queue_bio(self: &Arc<Self>, bio: Bio) {
        let Some(bio) = plug::plug_bio(self, bio) else {
            return;
        };
        let outcome = {
            let mut st = self.lock();
            if st.dying {
                Err(bio)
            } else {
                Ok(st.sched.insert_bio(bio, &self.limits, Instant::now()))
            }
        };
        match outcome {
            Ok(Some(MergeOutcome::Merged { kind, hint_hit })) => {
                self.stats.record_merge(kind, hint_hit)
            }
            Ok(_) => {}
            Err(bio) => {
                self.stats.error();
                bio_io_error(bio, BlkStatus::IoErr);
                return;
            }
        }
        self.run_queue();
    }

    /// Add requests flushed from a plug to the scheduler and run the queue.
    pub(crate) fn insert_requests(&self, rqs: Vec<Request>) {
        let now = Instant::now();
        let rejected = {
            let mut st = self.lock();
            if st.dying {
                rqs
            } else {
                for rq in rqs {
                    st.sched.insert_request(rq, now);
                }
                Vec::new()
            }
        };
        for rq in rejected {
            self.end_request(rq, BlkStatus::IoErr, false);
        }
        self.run_queue();
    }

    /// Dispatch waiting requests while the device has room
    /// (`blk_mq_run_hw_queue()`).
    fn run_queue(&self) {
        let failed = self.run_queue_locked(&mut self.lock());
        self.fail_requests(failed);
    }

    /// Dispatch into the channel while slots are free. Returns the requests
    /// that could not be sent (the workers are gone): the caller fails them
    /// with [`QueueInner::fail_requests`] once the lock is dropped.
    fn run_queue_locked(&self, st: &mut QueueState) -> Vec<Request> {
        let mut failed = Vec::new();
        while st.inflight < self.depth {
            let Some(rq) = self.take_request(st) else {
                break;
            };
            let sent = match &st.work_tx {
                Some(tx) => tx.send(rq).map_err(|e| e.into_inner()),
                None => Err(rq),
            };
            if let Err(rq) = sent {
                st.inflight -= 1;
                failed.push(rq);
            }
        }
        failed
    }

    fn fail_requests(&self, failed: Vec<Request>) {
        for rq in failed {
            self.end_request(rq, BlkStatus::IoErr, false);
        }
    }

    /// Take the next request off the scheduler into a dispatch slot
    /// (`__blk_mq_do_dispatch_sched()`): the caller sends or executes it.
    fn take_request(&self, st: &mut QueueState) -> Option<Request> {
        if st.inflight >= self.depth {
            return None;
        }
        let now = Instant::now();
        let rq = st.sched.dispatch(now)?;
        let waited = rq
            .queued_at
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.stats
            .dispatched(rq.op, rq.flags, rq.class, rq.bytes(), waited);
        st.inflight += 1;
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        Some(rq)
    }

    /// The worker is done with a request: free its slot and take the next
    /// waiting request for itself, if any (running the queue from the
    /// completion context, as blk-mq does, saves waking another worker).
    /// Other free slots are filled through the channel.
    pub(crate) fn io_done(&self) -> Option<Request> {
        let mut mine = None;
        self.io_done_n(1, |rq| mine = Some(rq));
        mine
    }

    /// [`QueueInner::io_done`] for `n` requests at once, under one lock: up
    /// to `n` waiting requests are handed to `take` for the caller.
    pub(crate) fn io_done_n(&self, n: usize, mut take: impl FnMut(Request)) {
        let failed = {
            let mut st = self.lock();
            st.inflight = st.inflight.saturating_sub(n);
            for _ in 0..n {
                if st.work_tx.is_none() {
                    break;
                }
                match self.take_request(&mut st) {
                    Some(rq) => take(rq),
                    None => break,
                }
            }
            self.run_queue_locked(&mut st)
        };
        self.fail_requests(failed);
    }

    /// Complete every bio of a request with `status` (unless a bio already
    /// carries an error of its own).
    pub(crate) fn end_request(&self, mut rq: Request, status: BlkStatus, at_request: bool) {
        if !status.is_ok() {
            self.stats.error();
        }
        self.stats.bios_completed(rq.bios.len() as u64);
        for mut bio in rq.bios.drain(..) {
            if !status.is_ok() && bio.status.is_ok() {
                bio.status = status;
                bio.error_sector = Some(if at_request { rq.sector } else { bio.sector });
            }
            bio_endio(bio);
        }
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_all();
        }
    }
}

/// True if every page of a read bio is referenced only by this bio, and
/// segments sharing a page don't overlap.
fn read_pages_exclusive(bio: &Bio) -> bool {
    if bio.vecs.iter().all(|bv| bv.page.is_unique()) {
        return true;
    }
    for (i, bv) in bio.vecs.iter().enumerate() {
        let mut uses = 0;
        for (j, other) in bio.vecs.iter().enumerate() {
            if !other.page.same_page(&bv.page) {
                continue;
            }
            uses += 1;
            let disjoint =
                other.offset >= bv.offset + bv.len || bv.offset >= other.offset + other.len;
            if i != j && !disjoint {
                return false;
            }
        }
        if bv.page.ref_count() != uses {
            return false;
        }
    }
    true
}
