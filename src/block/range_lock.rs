//! Range locks: overlapping requests in flight at once take turns.
//!
//! Counterpart of dm-integrity's range locks (`dm_integrity_range`). With
//! integrity on, a request's data and its tuples must change together: two
//! overlapping writes in flight could otherwise leave one's data with the
//! other's tuples, and a read racing a write could load the new tuples for
//! the old data. Workers therefore hold the sector range of the request
//! they execute: writes exclusively, reads shared. A worker holds at most
//! one range at a time, so waiting cannot deadlock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

#[derive(Clone, Copy, PartialEq, Eq)]
struct Held {
    start: u64,
    end: u64,
    exclusive: bool,
}

/// The ranges held by workers right now.
#[derive(Default)]
pub(crate) struct RangeLocks {
    held: Mutex<Vec<Held>>,
    released: Condvar,
    /// Threads waiting for a range: a release notifies only when some do
    /// (a condvar notify is a syscall even with nobody waiting).
    waiters: AtomicUsize,
}

/// A held range, released when dropped.
pub(crate) struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    range: Held,
}

impl RangeLocks {
    /// Wait until no conflicting range `[start, end)` is held, then hold it.
    pub(crate) fn lock(&self, start: u64, end: u64, exclusive: bool) -> RangeGuard<'_> {
        let range = Held {
            start,
            end,
            exclusive,
        };
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while held
            .iter()
            .any(|h| h.start < end && start < h.end && (h.exclusive || exclusive))
        {
            self.waiters.fetch_add(1, Ordering::SeqCst);
            held = self.released.wait(held).unwrap_or_else(|e| e.into_inner());
            self.waiters.fetch_sub(1, Ordering::SeqCst);
        }
        held.push(range);
        RangeGuard { locks: self, range }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = held.iter().position(|h| *h == self.range) {
            held.swap_remove(pos);
        }
        // Waiters register under `held`'s lock, which we still hold: none
        // can be missed.
        if self.locks.waiters.load(Ordering::SeqCst) > 0 {
            self.locks.released.notify_all();
        }
        drop(held);
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
}
