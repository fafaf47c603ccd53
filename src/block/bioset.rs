//! Bio sets: bounded pools of bios with a reserve that guarantees forward
//! progress.
//!
//! Counterpart of `struct bio_set`, `bioset_init()` and `bio_alloc_bioset()`
//! (block/bio.c), with the mempool rule from the kernel's documentation:
//! a waiting allocation always succeeds eventually, provided each caller
//! submits the bio it holds before allocating the next from the same set.
//! Bios a thread has submitted but still holds in its plug would break that
//! rule (nothing would ever free them while it waits), so before waiting an
//! allocation hands them to the set's rescuer thread, which submits them
//! (`punt_bios_to_rescuer()`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use crossbeam_queue::ArrayQueue;

use super::bio::{Bio, BioVec, BIO_MAX_VECS};
use super::plug;
use super::types::{ReqOp, Sector};

/// Whether an allocation may wait (`__GFP_DIRECT_RECLAIM` or not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gfp {
    /// Fail at once rather than dip into the reserve or wait.
    NoWait,
    /// Use the reserve, then wait for a bio to be freed. Never fails.
    Wait,
}

type RescueWork = Box<dyn FnOnce() + Send>;

pub(crate) struct BioSetInner {
    name: String,
    capacity: usize,
    reserve: usize,
    /// Bios of this set alive now; never above `capacity`.
    in_use: AtomicUsize,
    /// Threads blocked in a waiting allocation.
    waiters: AtomicUsize,
    wait_lock: Mutex<()>,
    freed: Condvar,
    /// Segment vectors of freed bios, reused by the next allocations.
    free_vecs: ArrayQueue<Vec<BioVec>>,
    rescuer: Mutex<Option<Sender<RescueWork>>>,
    rescue_enabled: AtomicBool,
    stats: BioSetCounters,
}

#[derive(Default)]
struct BioSetCounters {
    allocs: AtomicU64,
    nowait_failures: AtomicU64,
    waits: AtomicU64,
    rescues: AtomicU64,
}

/// Counters of a bio set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BioSetStats {
    pub allocs: u64,
    pub nowait_failures: u64,
    pub waits: u64,
    /// Times plugged bios were handed to the rescuer.
    pub rescues: u64,
    pub in_use: usize,
}

/// A bounded pool of bios.
#[derive(Clone)]
pub struct BioSet {
    inner: Arc<BioSetInner>,
}

/// A bio's claim on a slot of its set, given back when the bio is dropped.
pub(crate) struct PoolSlot {
    set: Arc<BioSetInner>,
}

impl PoolSlot {
    /// Give the slot back, keeping the segment vector for reuse.
    pub(crate) fn release(self, mut vecs: Vec<BioVec>) {
        vecs.clear();
        let set = &self.set;
        if vecs.capacity() > 0 {
            // A full queue just drops the vector.
            let _ = set.free_vecs.push(vecs);
        }
        set.in_use.fetch_sub(1, Ordering::SeqCst);
        // A waiter registers before its last check under `wait_lock`, so
        // either it sees this slot free or it is woken here.
        if set.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = set.wait_lock.lock().unwrap_or_else(|e| e.into_inner());
            set.freed.notify_one();
        }
    }
}

impl BioSet {
    /// A set of at most `capacity` bios in use at once, of which `reserve`
    /// can only be had by waiting allocations (`bioset_init(pool_size)`).
    /// `capacity` is at least 1 and `reserve` at most `capacity - 1`.
    pub fn new(name: &str, capacity: usize, reserve: usize) -> BioSet {
        let capacity = capacity.max(1);
        BioSet {
            inner: Arc::new(BioSetInner {
                name: name.to_string(),
                capacity,
                reserve: reserve.min(capacity - 1),
                in_use: AtomicUsize::new(0),
                waiters: AtomicUsize::new(0),
                wait_lock: Mutex::new(()),
                freed: Condvar::new(),
                free_vecs: ArrayQueue::new(capacity),
                rescuer: Mutex::new(None),
                rescue_enabled: AtomicBool::new(true),
                stats: BioSetCounters::default(),
            }),
        }
    }

    /// Allocate a bio for `op` at `sector` with room for `nr_vecs` segments
    /// (`bio_alloc_bioset()`).
    ///
    /// With [`Gfp::NoWait`] returns `None` when only the reserve is left.
    /// With [`Gfp::Wait`] never returns `None`: it takes from the reserve and
    /// then waits for a bio of this set to be freed, after handing this
    /// thread's plugged bios to the rescuer so that they can complete.
    pub fn alloc(&self, op: ReqOp, sector: Sector, nr_vecs: usize, gfp: Gfp) -> Option<Bio> {
        let set = &self.inner;
        let limit = match gfp {
            Gfp::NoWait => set.capacity - set.reserve,
            Gfp::Wait => set.capacity,
        };
        if !set.try_take(limit) {
            if gfp == Gfp::NoWait {
                set.stats.nowait_failures.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            self.wait_for_slot(limit);
        }
        set.stats.allocs.fetch_add(1, Ordering::Relaxed);
        let max_vecs = nr_vecs.clamp(1, BIO_MAX_VECS);
        let mut vecs = set.free_vecs.pop().unwrap_or_default();
        vecs.reserve(max_vecs);
        let mut bio = Bio::with_vecs(op, sector, vecs, max_vecs);
        bio.pool = Some(PoolSlot {
            set: Arc::clone(set),
        });
        Some(bio)
    }

    /// Block until a slot under `limit` is ours, punting this thread's
    /// plugged bios to the rescuer first.
    fn wait_for_slot(&self, limit: usize) {
        let set = &self.inner;
        set.stats.waits.fetch_add(1, Ordering::Relaxed);
        set.waiters.fetch_add(1, Ordering::SeqCst);
        loop {
            self.punt_plugged_to_rescuer();
            let guard = set.wait_lock.lock().unwrap_or_else(|e| e.into_inner());
            if set.try_take(limit) {
                break;
            }
            drop(set.freed.wait_timeout(guard, Duration::from_millis(50)));
            if set.try_take(limit) {
                break;
            }
        }
        set.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Hand the calling thread's plugged requests to the rescuer thread,
    /// which inserts them into their queues.
    fn punt_plugged_to_rescuer(&self) {
        if !self.inner.rescue_enabled.load(Ordering::Relaxed) {
            return;
        }
        let Some(work) = plug::take_plugged_work() else {
            return;
        };
        let set = &self.inner;
        let mut rescuer = set.rescuer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = rescuer.get_or_insert_with(|| spawn_rescuer(&set.name));
        set.stats.rescues.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = tx.send(work) {
            // The rescuer is gone: submit from here instead.
            (e.into_inner())();
        }
    }

    /// Turn the rescuer off or on. With it off, a thread that waits for a
    /// bio while its own plugged bios hold the pool deadlocks: this switch
    /// exists so a test can show that the rescuer is what prevents it.
    pub fn set_rescuer_enabled(&self, enabled: bool) {
        self.inner.rescue_enabled.store(enabled, Ordering::Relaxed);
    }

    /// The set's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    pub fn stats(&self) -> BioSetStats {
        let s = &self.inner.stats;
        BioSetStats {
            allocs: s.allocs.load(Ordering::Relaxed),
            nowait_failures: s.nowait_failures.load(Ordering::Relaxed),
            waits: s.waits.load(Ordering::Relaxed),
            rescues: s.rescues.load(Ordering::Relaxed),
            in_use: self.inner.in_use.load(Ordering::SeqCst),
        }
    }
}

impl BioSetInner {
    /// Take a slot if fewer than `limit` are in use.
    fn try_take(&self, limit: usize) -> bool {
        let mut cur = self.in_use.load(Ordering::SeqCst);
        while cur < limit {
            match self.in_use.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
        false
    }
}

fn spawn_rescuer(name: &str) -> Sender<RescueWork> {
    let (tx, rx): (Sender<RescueWork>, Receiver<RescueWork>) = crossbeam_channel::unbounded();
    let spawned = std::thread::Builder::new()
        .name(format!("{name}-rescuer"))
        .spawn(move || {
            for work in rx {
                work();
            }
        });
    if let Err(e) = spawned {
        log::error!("bio set {name}: can't start the rescuer thread: {e}");
    }
    tx
}
