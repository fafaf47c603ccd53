//! Range locks: overlapping requests in flight at once take turns.
//!
//! Counterpart of dm-integrity's range locks (`dm_integrity_range`). With
//! integrity on, a request's data and its tuples must change together: two
//! overlapping writes in flight could otherwise leave one's data with the
//! other's tuples, and a read racing a write could load the new tuples for
//! the old data. Workers therefore hold the sector range of the request
//! they execute: writes exclusively, reads shared.
//!
//! The held ranges are kept in shards by 2 MiB region, so workers on
//! unrelated regions don't contend for one lock. A request registers in the
//! shards of the regions it covers in ascending shard order and waits only
//! before registering in a shard, so waits always point to higher shards
//! and cannot form a cycle; a worker holds at most one range at a time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

/// log2 of the sectors per shard region (2 MiB).
const REGION_SHIFT: u32 = 12;
/// Number of shards.
const SHARDS: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
struct Held {
    start: u64,
    end: u64,
    exclusive: bool,
}

#[derive(Default)]
struct Shard {
    held: Mutex<Vec<Held>>,
    released: Condvar,
    /// Threads waiting in this shard: a release notifies only when some do
    /// (a condvar notify is a syscall even with nobody waiting).
    waiters: AtomicUsize,
}

/// The ranges held by workers right now.
pub(crate) struct RangeLocks {
    shards: Vec<Shard>,
}

impl Default for RangeLocks {
    fn default() -> RangeLocks {
        RangeLocks {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

/// A held range, released when dropped.
pub(crate) struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    range: Held,
}

impl RangeLocks {
    /// The shards covering sectors `[start, end)`, in ascending order.
    fn shards_of(start: u64, end: u64) -> impl Iterator<Item = usize> {
        let first = start >> REGION_SHIFT;
        let last = end.saturating_sub(1).max(start) >> REGION_SHIFT;
        let all = last - first + 1 >= SHARDS as u64;
        let (a, b) = (
            (first % SHARDS as u64) as usize,
            (last % SHARDS as u64) as usize,
        );
        (0..SHARDS).filter(move |&i| {
            all || if a <= b {
                (a..=b).contains(&i)
            } else {
                i >= a || i <= b
            }
        })
    }

    /// Wait until no conflicting range `[start, end)` is held, then hold it.
    pub(crate) fn lock(&self, start: u64, end: u64, exclusive: bool) -> RangeGuard<'_> {
        let range = Held {
            start,
            end,
            exclusive,
        };
        for i in Self::shards_of(start, end) {
            #[allow(
                clippy::indexing_slicing,
                reason = "shards_of yields indices below SHARDS, the length of shards"
            )]
            let shard = &self.shards[i];
            let mut held = shard.held.lock().unwrap_or_else(|e| e.into_inner());
            while held
                .iter()
                .any(|h| h.start < end && start < h.end && (h.exclusive || exclusive))
            {
                shard.waiters.fetch_add(1, Ordering::SeqCst);
                held = shard.released.wait(held).unwrap_or_else(|e| e.into_inner());
                shard.waiters.fetch_sub(1, Ordering::SeqCst);
            }
            held.push(range);
        }
        RangeGuard { locks: self, range }
    }
}

impl RangeLocks {
    /// Hold `[start, end)` if no conflicting range is held; `None` (holding
    /// nothing) otherwise. For a worker that must not wait while it has
    /// transfers of its own in flight: it could be waiting for itself.
    pub(crate) fn try_lock(&self, start: u64, end: u64, exclusive: bool) -> Option<RangeGuard<'_>> {
        let range = Held {
            start,
            end,
            exclusive,
        };
        let shards: Vec<usize> = Self::shards_of(start, end).collect();
        for (k, &i) in shards.iter().enumerate() {
            #[allow(
                clippy::indexing_slicing,
                reason = "shards_of yields indices below SHARDS, the length of shards"
            )]
            let mut held = self.shards[i]
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if held
                .iter()
                .any(|h| h.start < end && start < h.end && (h.exclusive || exclusive))
            {
                drop(held);
                self.release(range, shards.iter().take(k).copied());
                return None;
            }
            held.push(range);
        }
        Some(RangeGuard { locks: self, range })
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let r = self.range;
        self.locks.release(r, RangeLocks::shards_of(r.start, r.end));
    }
}

impl RangeLocks {
    /// Stop holding `r` in `shards`, waking whoever waits there.
    fn release(&self, r: Held, shards: impl Iterator<Item = usize>) {
        for i in shards {
            #[allow(
                clippy::indexing_slicing,
                reason = "shards_of yields indices below SHARDS, the length of shards"
            )]
            let shard = &self.shards[i];
            let mut held = shard.held.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(pos) = held.iter().position(|h| *h == r) {
                held.swap_remove(pos);
            }
            // Waiters register under this shard's lock, which we hold: none
            // can be missed.
            if shard.waiters.load(Ordering::SeqCst) > 0 {
                shard.released.notify_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn overlapping_exclusive_ranges_wait_and_disjoint_ones_do_not() {
        let locks = Arc::new(RangeLocks::default());
        let g = locks.lock(0, 8, true);
        let _disjoint = locks.lock(8, 16, true);
        let _shared_elsewhere = locks.lock(100, 108, false);
        let got = Arc::new(AtomicBool::new(false));
        let (l, gt) = (Arc::clone(&locks), Arc::clone(&got));
        let t = std::thread::spawn(move || {
            let _g = l.lock(4, 12, false);
            gt.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !got.load(Ordering::SeqCst),
            "a reader overlapping a writer waits"
        );
        drop(g);
        drop(_disjoint);
        t.join().unwrap();
        assert!(got.load(Ordering::SeqCst));
        let _r1 = locks.lock(0, 8, false);
        let _r2 = locks.lock(0, 8, false); // readers share
    }

    #[test]
    fn shards_cover_every_region_of_a_range_in_ascending_order() {
        let s: Vec<usize> = RangeLocks::shards_of(4090, 4100).collect();
        assert_eq!(
            s,
            vec![0, 1],
            "a range across a region boundary takes both shards"
        );
        let wrap: Vec<usize> =
            RangeLocks::shards_of(63 << REGION_SHIFT, (64 << REGION_SHIFT) + 1).collect();
        assert_eq!(wrap, vec![0, 63], "wrapping around still ascends");
        assert_eq!(
            RangeLocks::shards_of(0, u64::MAX).count(),
            SHARDS,
            "a huge range takes every shard"
        );
        assert_eq!(RangeLocks::shards_of(5000, 5000).count(), 1);
    }

    #[test]
    fn crossing_ranges_from_many_threads_never_deadlock() {
        // Ranges straddling shard boundaries, exclusive and shared, taken
        // concurrently: every thread must finish.
        let locks = Arc::new(RangeLocks::default());
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let l = Arc::clone(&locks);
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        let start = ((i * 7 + t * 13) % 200) << (REGION_SHIFT - 2);
                        let _g = l.lock(start, start + (3 << REGION_SHIFT), (i + t) % 3 == 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
