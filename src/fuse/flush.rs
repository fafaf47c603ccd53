//! The kernel's page cache of a mount's files, kept coherent from here:
//! writing back its cached pages on demand, for the requests FUSE sends
//! without doing so itself (SEEK_DATA/SEEK_HOLE with the writeback
//! cache), and dropping them after a direct write
//! ([`FuseFs::answer_direct_write`]).

use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crossbeam_channel::{unbounded, Sender};
use fuser::INodeNo;

use super::adapter::FuseFs;

/// What has the kernel write back or drop its cached pages of a file: a
/// FUSE notification, which returns once the kernel has done so, and so
/// waits for the pages that are being read (their READ requests) and, with
/// the writeback cache, for the writes it causes. Those requests need a
/// free event-loop thread: at most `threads - 1` requests wait on one at a
/// time, so one thread is always left to serve them; past that, the
/// notification goes to the `biofs-inval` thread.
pub(super) struct Flusher {
    notifier: fuser::Notifier,
    slots: Slots,
    writeback_cache: bool,
    /// The `biofs-inval` thread's queue (None if it could not start).
    later: Option<Sender<Deferred>>,
}

/// An invalidation for the `biofs-inval` thread, and the reply to send
/// once it is done.
struct Deferred {
    ino: u64,
    off: i64,
    len: i64,
    then: Box<dyn FnOnce() + Send>,
}

impl Flusher {
    /// For a session of `threads` event-loop threads (one thread could
    /// never serve the requests it waited for: it gets no slot).
    pub(super) fn new(notifier: fuser::Notifier, threads: usize, writeback_cache: bool) -> Flusher {
        let (tx, rx) = unbounded::<Deferred>();
        let n = notifier.clone();
        let later = std::thread::Builder::new()
            .name("biofs-inval".into())
            .spawn(move || {
                // Ends when the session's FuseFs (and so the Flusher) goes.
                for d in rx {
                    let Deferred {
                        ino,
                        off,
                        len,
                        then,
                    } = d;
                    // A panic drops the unsent reply, which answers EIO.
                    let n = &n;
                    let _ = panic::catch_unwind(AssertUnwindSafe(move || {
                        inval_pages(n, ino, off, len);
                        then();
                    }));
                }
            })
            .inspect_err(|e| log::warn!("no biofs-inval thread: {e}"))
            .ok()
            .map(|_| tx);
        Flusher {
            notifier,
            slots: Slots(AtomicUsize::new(threads.saturating_sub(1))),
            writeback_cache,
            later,
        }
    }
}

impl Flusher {
    /// A function that has the kernel drop its cached attributes of an
    /// inode, later, from the `biofs-inval` thread (an attributes-only
    /// FUSE_NOTIFY_INVAL_INODE waits for nothing): for changes the kernel
    /// did not ask for, such as blocks given to dirty pages at writeback.
    pub(super) fn attrs_changed(&self) -> Option<impl Fn(u64) + Send + 'static> {
        let tx = self.later.clone()?;
        Some(move |ino| {
            let _ = tx.send(Deferred {
                ino,
                off: -1,
                len: 0,
                then: Box::new(|| {}),
            });
        })
    }
}

/// Have the kernel drop its cached pages of `ino` in `[off, off+len)`
/// (`len` 0: to the end), waiting for those being read.
fn inval_pages(n: &fuser::Notifier, ino: u64, off: i64, len: i64) {
    if let Err(e) = n.inval_inode(INodeNo(ino), off, len) {
        log::debug!("inode {ino}: invalidating its cached pages: {e}");
    }
}

/// The files whose pages the kernel may have cached: opened, read or
/// written other than by direct I/O since the kernel last forgot them. A
/// direct write to any other file has no cached copy to drop.
#[derive(Default)]
pub(super) struct KernelCached(RwLock<HashSet<u64>>);

impl KernelCached {
    // A panicked holder left a valid set: poisoning is ignored.
    fn read(&self) -> RwLockReadGuard<'_, HashSet<u64>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashSet<u64>> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Every buffered READ calls this: shared lock unless it's new.
    fn note(&self, ino: u64) {
        if !self.has(ino) {
            self.write().insert(ino);
        }
    }

    fn has(&self, ino: u64) -> bool {
        self.read().contains(&ino)
    }

    /// Forget `ino` unless `held` says the kernel holds it (again): a
    /// FORGET of an evicted inode may come after a new lookup of it and a
    /// READ that noted it. `held` runs under this set's lock, so no note
    /// comes between it and the removal.
    fn forget(&self, ino: u64, held: impl FnOnce() -> bool) {
        if !self.has(ino) {
            return;
        }
        let mut s = self.write();
        if s.contains(&ino) && !held() {
            s.remove(&ino);
        }
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
    /// The kernel may cache pages of `ino` from now on: it was opened,
    /// read or written other than with `O_DIRECT` (or written back from
    /// the kernel's cache).
    pub(super) fn note_kernel_cached(&self, ino: u64) {
        self.kernel_cached.note(ino);
    }

    /// The kernel has forgotten lookups of `ino` (call after the core
    /// has counted them): if it holds it no more, its pages went with it.
    pub(super) fn forget_kernel_cached(&self, ino: u64) {
        self.kernel_cached.forget(ino, || self.fs.held(ino));
    }

    /// Answer a direct write of `len` bytes at `off` of `ino` (`answer`
    /// sends the reply) once the kernel has dropped every page of that
    /// range it caches (`len` 0: from `off` to the end).
    ///
    /// The kernel drops them itself before it sends a direct write, and
    /// after a synchronous one, but not after an asynchronous one
    /// (FUSE_ASYNC_DIO: libaio, io_uring): a buffered reader meanwhile
    /// caches the old bytes again, and reads them after the write has
    /// completed. Invalidating here, before the reply, closes that window:
    /// the kernel waits for pages being read (their READs were served from
    /// before the write landed or after), and pages read later are read
    /// from biofs, which has the new bytes.
    pub(super) fn answer_direct_write(
        &self,
        ino: u64,
        off: u64,
        len: u64,
        answer: impl FnOnce() + Send + 'static,
    ) {
        let Some(f) = self.flusher.get() else {
            return answer();
        };
        if !self.kernel_cached.has(ino) {
            return answer();
        }
        let off = i64::try_from(off & !4095).unwrap_or(i64::MAX);
        let len = i64::try_from(len).unwrap_or(0);
        if let Some(_slot) = f.slots.try_take() {
            inval_pages(&f.notifier, ino, off, len);
            return answer();
        }
        // Every other thread waits on the kernel already: this one must
        // return to serve the READs they wait for.
        let then: Box<dyn FnOnce() + Send> = Box::new(answer);
        match &f.later {
            Some(tx) => {
                if let Err(e) = tx.send(Deferred {
                    ino,
                    off,
                    len,
                    then,
                }) {
                    log::warn!("inode {ino}: cached pages not dropped after a direct write");
                    (e.into_inner().then)();
                }
            }
            None => {
                log::warn!("inode {ino}: cached pages not dropped after a direct write");
                then();
            }
        }
    }

    /// Have the kernel drop its cached attributes of `ino` (not its
    /// pages): after an fsync or fallocate changed the blocks a file
    /// holds, `stat` must show them at once, as on a kernel filesystem.
    pub(super) fn invalidate_attrs(&self, ino: u64) {
        if let Some(f) = self.flusher.get() {
            if let Err(e) = f.notifier.inval_inode(INodeNo(ino), -1, 0) {
                log::debug!("inode {ino}: invalidating its attributes: {e}");
            }
        }
    }

    /// Have the kernel write back (and drop) its cached pages of `ino`
    /// from `off` on, so that the core sees the data and size an lseek
    /// asks about: with the writeback cache, written data may still be
    /// only in the kernel, and FUSE sends SEEK_DATA/SEEK_HOLE without
    /// writing it back first (`fuse_lseek()`). The invalidation waits for
    /// those writes, which other event-loop threads serve.
    ///
    /// Without the writeback cache there is nothing to write back; without
    /// a free slot (every other thread waiting so already), or with one
    /// thread, the core answers from what it has.
    pub(super) fn write_back_cached(&self, ino: u64, off: u64) {
        let Some(f) = self.flusher.get() else { return };
        if !f.writeback_cache {
            return;
        }
        let page = i64::try_from(off & !4095).unwrap_or(i64::MAX);
        let Some(_slot) = f.slots.try_take() else {
            return log::debug!("inode {ino}: no thread free to write back its cached pages");
        };
        inval_pages(&f.notifier, ino, page, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_cached_files_until_forgotten() {
        let k = KernelCached::default();
        assert!(!k.has(5));
        k.note(5);
        k.note(5);
        assert!(k.has(5) && !k.has(6));
        k.forget(5, || true);
        assert!(k.has(5), "held again: kept");
        k.forget(5, || false);
        assert!(!k.has(5));
    }

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
