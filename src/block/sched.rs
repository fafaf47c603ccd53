//! The I/O scheduler: priority classes with deadlines.
//!
//! In the spirit of mq-deadline with BFQ's class ordering: requests wait in
//! one FIFO per class (RT, BE, IDLE), merge with later bios while they wait,
//! and are dispatched highest class first. Each request gets a deadline when
//! it enters (`expire[class]` later); once a request's deadline has passed it
//! is dispatched before any unexpired request, earliest deadline first.
//!
//! Starvation bound: a request of class C is dispatched no later than
//! `expire[C]` after it was queued plus the time the device takes to serve
//! the requests whose deadlines are earlier than its own (at most the
//! requests queued before `queued_at + expire[C]` with shorter expiries, and
//! one queue depth already in flight). With the defaults an IDLE request
//! waits at most 1 s plus that drain time under any RT/BE load.
//!
//! Levels within a class are carried but not used for ordering, as in
//! mq-deadline.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use slab::Slab;

use super::bio::Bio;
use super::ioc::SchedClass;
use super::limits::QueueLimits;
use super::merge::{MergeIndex, MergeOutcome, Request};

/// Default deadlines per class: RT, BE, IDLE.
pub const DEFAULT_EXPIRE: [Duration; 3] = [
    Duration::from_millis(25),
    Duration::from_millis(250),
    Duration::from_millis(1000),
];

/// Pending requests of one queue.
pub(crate) struct Scheduler {
    rqs: Slab<Request>,
    fifo: [VecDeque<usize>; 3],
    index: MergeIndex,
    expire: [Duration; 3],
}

impl Scheduler {
    pub(crate) fn new(expire: [Duration; 3]) -> Scheduler {
        Scheduler {
            rqs: Slab::new(),
            fifo: Default::default(),
            index: MergeIndex::default(),
            expire,
        }
    }

    /// Merge `bio` into a waiting request (`blk_mq_sched_bio_merge()`) or
    /// queue it as a new request.
    pub(crate) fn insert_bio(
        &mut self,
        bio: Bio,
        lim: &QueueLimits,
        now: Instant,
    ) -> Option<MergeOutcome> {
        match self.index.attempt(&mut self.rqs, bio, lim) {
            MergeOutcome::NotMerged(bio) => {
                self.insert_request(Request::from_bio(bio), now);
                None
            }
            merged => Some(merged),
        }
    }

    /// Queue a request (`blk_mq_sched_insert_request()`).
    pub(crate) fn insert_request(&mut self, mut rq: Request, now: Instant) {
        rq.queued_at = Some(now);
        let class = rq.class;
        let key = self.rqs.insert(rq);
        if let Some(rq) = self.rqs.get(key) {
            self.index.add(key, rq);
        }
        class.of_mut(&mut self.fifo).push_back(key);
    }

    fn deadline(&self, class: SchedClass, key: usize) -> Option<Instant> {
        let queued = self.rqs.get(key)?.queued_at?;
        Some(queued + *class.of(&self.expire))
    }

    /// The class to serve next at time `now`, or `None` if nothing waits.
    pub(crate) fn pick(&self, now: Instant) -> Option<SchedClass> {
        let mut expired: Option<(Instant, SchedClass)> = None;
        for class in SchedClass::ALL {
            let Some(&key) = class.of(&self.fifo).front() else {
                continue;
            };
            let Some(dl) = self.deadline(class, key) else {
                continue;
            };
            if dl <= now && expired.is_none_or(|(best, _)| dl < best) {
                expired = Some((dl, class));
            }
        }
        if let Some((_, class)) = expired {
            return Some(class);
        }
        SchedClass::ALL
            .into_iter()
            .find(|c| !c.of(&self.fifo).is_empty())
    }

    /// Take the next request to send to the device (`dd_dispatch_request()`).
    pub(crate) fn dispatch(&mut self, now: Instant) -> Option<Request> {
        let class = self.pick(now)?;
        let key = class.of_mut(&mut self.fifo).pop_front()?;
        if !self.rqs.contains(key) {
            return None;
        }
        let rq = self.rqs.remove(key);
        self.index.remove(key, &rq);
        Some(rq)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rqs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::ioc::{IoPrio, IoPrioClass};
    use crate::block::types::{ReqOp, Sector};
    use crate::block::{Page, QueueLimits};

    fn limits() -> QueueLimits {
        QueueLimits::for_backend(&crate::block::backend::BackendInfo {
            size_bytes: 1 << 30,
            logical_block_size: 512,
            physical_block_size: 4096,
            direct_io: true,
            kind: "test",
            discard_zeroes: true,
        })
    }

    fn bio(sector: u64, class: IoPrioClass) -> Bio {
        let mut b = Bio::new(ReqOp::Read, Sector(sector), 1);
        b.add_page(Page::new(), 4096, 0);
        b.nr_segs = 1;
        b.set_ioprio(IoPrio::new(class, 0).unwrap());
        b
    }

    fn class_of(rq: &Request) -> SchedClass {
        rq.class
    }

    #[test]
    fn higher_classes_go_first() {
        let mut s = Scheduler::new(DEFAULT_EXPIRE);
        let t0 = Instant::now();
        let lim = limits();
        s.insert_bio(bio(0, IoPrioClass::Idle), &lim, t0);
        s.insert_bio(bio(100, IoPrioClass::BestEffort), &lim, t0);
        s.insert_bio(bio(200, IoPrioClass::RealTime), &lim, t0);
        let order: Vec<SchedClass> = std::iter::from_fn(|| s.dispatch(t0))
            .map(|r| class_of(&r))
            .collect();
        assert_eq!(
            order,
            vec![SchedClass::Rt, SchedClass::Be, SchedClass::Idle]
        );
    }

    #[test]
    fn an_expired_idle_request_overtakes_an_rt_flood() {
        let mut s = Scheduler::new(DEFAULT_EXPIRE);
        let lim = limits();
        let t0 = Instant::now();
        s.insert_bio(bio(0, IoPrioClass::Idle), &lim, t0);
        // A continuous RT stream: one new RT request per millisecond, each
        // dispatched as soon as the device takes one.
        let mut idle_served_at = None;
        for ms in 0..2000u64 {
            let now = t0 + Duration::from_millis(ms);
            s.insert_bio(bio(1000 + ms * 16, IoPrioClass::RealTime), &lim, now);
            let rq = s.dispatch(now).unwrap();
            if rq.class == SchedClass::Idle {
                idle_served_at = Some(ms);
                break;
            }
        }
        let expire_idle = DEFAULT_EXPIRE[SchedClass::Idle.index()].as_millis() as u64;
        assert_eq!(
            idle_served_at,
            Some(expire_idle),
            "served exactly when its deadline passed"
        );
    }

    #[test]
    fn expired_requests_go_earliest_deadline_first() {
        let mut s = Scheduler::new([
            Duration::from_millis(10),
            Duration::from_millis(50),
            Duration::from_millis(20),
        ]);
        let lim = limits();
        let t0 = Instant::now();
        s.insert_bio(bio(0, IoPrioClass::BestEffort), &lim, t0); // deadline 50
        s.insert_bio(bio(100, IoPrioClass::Idle), &lim, t0); // deadline 20
        let later = t0 + Duration::from_millis(60);
        // Both expired: IDLE's deadline is earlier, so it goes first.
        assert_eq!(s.dispatch(later).map(|r| r.class), Some(SchedClass::Idle));
        assert_eq!(s.dispatch(later).map(|r| r.class), Some(SchedClass::Be));
        assert!(s.dispatch(later).is_none());
    }

    #[test]
    fn bios_merge_into_waiting_requests() {
        let mut s = Scheduler::new(DEFAULT_EXPIRE);
        let lim = limits();
        let t0 = Instant::now();
        assert!(s
            .insert_bio(bio(0, IoPrioClass::BestEffort), &lim, t0)
            .is_none());
        assert!(matches!(
            s.insert_bio(bio(8, IoPrioClass::BestEffort), &lim, t0),
            Some(MergeOutcome::Merged { .. })
        ));
        assert!(
            s.insert_bio(bio(16, IoPrioClass::RealTime), &lim, t0)
                .is_none(),
            "other class: no merge"
        );
        let rq = s.dispatch(t0).unwrap();
        assert_eq!(rq.class, SchedClass::Rt);
        let rq = s.dispatch(t0).unwrap();
        assert_eq!((rq.nr_sectors, rq.bios.len()), (16, 2));
    }
}
