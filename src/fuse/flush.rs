//! Writing back the kernel's cached pages of a file on demand, for the
//! requests FUSE sends without doing so itself (SEEK_DATA/SEEK_HOLE with
//! the writeback cache).

use std::sync::atomic::{AtomicUsize, Ordering};

use fuser::INodeNo;

use super::adapter::FuseFs;

/// What has the kernel write back its cached pages of a file: a FUSE
/// notification, which returns once the writes it causes are done. Those
/// writes need a free event-loop thread: at most `threads - 1` requests
/// wait on one at a time, so one thread is always left to serve them.
pub(super) struct Flusher {
    notifier: fuser::Notifier,
    slots: Slots,
}

impl Flusher {
    /// For a session of `threads` event-loop threads; `None` for one
    /// thread, which could never serve the writes it waited for.
    pub(super) fn new(notifier: fuser::Notifier, threads: usize) -> Option<Flusher> {
        (threads > 1).then(|| Flusher {
            notifier,
            slots: Slots(AtomicUsize::new(threads - 1)),
        })
    }
}

/// A count of free places, taken and given back by [`SlotGuard`].
struct Slots(AtomicUsize);

/// One place of [`Slots`], given back when dropped (a panic included).
struct SlotGuard<'a>(&'a Slots);

impl Slots {
    fn try_take(&self) -> Option<SlotGuard<'_>> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .ok()
            .map(|_| SlotGuard(self))
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_add(1, Ordering::AcqRel);
    }
}

impl FuseFs {
    /// Have the kernel write back (and drop) its cached pages of `ino`
    /// from `off` on, so that the core sees the data and size an lseek
    /// asks about: with the writeback cache, written data may still be
    /// only in the kernel, and FUSE sends SEEK_DATA/SEEK_HOLE without
    /// writing it back first (`fuse_lseek()`). The invalidation waits for
    /// those writes, which other event-loop threads serve.
    ///
    /// Without a free slot (every other thread waiting so already), or
    /// with one thread, the core answers from what it has.
    pub(super) fn write_back_cached(&self, ino: u64, off: u64) {
        let Some(f) = self.flusher.get() else { return };
        let page = i64::try_from(off & !4095).unwrap_or(i64::MAX);
        let Some(_slot) = f.slots.try_take() else {
            return log::debug!("inode {ino}: no thread free to write back its cached pages");
        };
        if let Err(e) = f.notifier.inval_inode(INodeNo(ino), page, 0) {
            log::debug!("inode {ino}: invalidating its cached pages: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{self, AssertUnwindSafe};

    use super::*;

    #[test]
    fn slots_leave_one_thread_free() {
        let s = Slots(AtomicUsize::new(2));
        let a = s.try_take();
        let b = s.try_take();
        assert!(a.is_some() && b.is_some());
        assert!(
            s.try_take().is_none(),
            "a third waiter would leave no thread"
        );
        drop(a);
        let c = s.try_take();
        assert!(c.is_some());
        // Given back even when the holder panics.
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            let _held = c;
            panic!("boom");
        }));
        assert!(r.is_err());
        assert!(s.try_take().is_some());
    }
}
