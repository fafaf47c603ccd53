//! A recording wrapper: the userspace counterpart of dm-log-writes
//! (drivers/md/dm-log-writes.c).
//!
//! Every operation is forwarded to the inner backend; each one that succeeds
//! is appended to an in-memory log as a numbered [`LogEntry`] (its index in
//! [`LogWritesBackend::entries`]). Reads are not logged. The log can be
//! replayed onto another backend up to any entry
//! ([`LogWritesBackend::replay`]), or up to a flush point followed by any
//! subset of the writes after it ([`LogWritesBackend::replay_subset`]), which
//! builds the crash states CrashMonkey explores.
//!
//! Ordering: the log lock is held while a modifying operation runs on the
//! inner device, so the log order is the order in which the inner device
//! applied them (overlapping concurrent writes included). Writes are thereby
//! serialised; this backend is for tests.
//!
//! Memory: every logged write's data is copied and kept.

use std::io::{self, IoSlice, IoSliceMut};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{iov_len, BackendInfo, BlockBackend};

/// One logged operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEntry {
    /// A write of `data` at byte `offset`; `fua` if it was a FUA write.
    Write {
        offset: u64,
        data: Arc<[u8]>,
        fua: bool,
    },
    /// A completed flush: every earlier entry is durable.
    Flush,
    Discard {
        offset: u64,
        len: u64,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
    },
    /// A label the test placed with [`LogWritesBackend::mark`]; replay skips it.
    Mark(String),
}

/// A [`BlockBackend`] that records every modifying operation.
pub struct LogWritesBackend {
    inner: Arc<dyn BlockBackend>,
    log: Mutex<Vec<LogEntry>>,
}

impl LogWritesBackend {
    /// Wraps `inner` with an empty log.
    pub fn new(inner: Arc<dyn BlockBackend>) -> LogWritesBackend {
        LogWritesBackend {
            inner,
            log: Mutex::new(Vec::new()),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn BlockBackend> {
        &self.inner
    }

    fn lock(&self) -> MutexGuard<'_, Vec<LogEntry>> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a [`LogEntry::Mark`]; returns its index.
    pub fn mark(&self, label: impl Into<String>) -> usize {
        let mut log = self.lock();
        log.push(LogEntry::Mark(label.into()));
        log.len() - 1
    }

    /// A copy of the log (data buffers are shared, not copied).
    pub fn entries(&self) -> Vec<LogEntry> {
        self.lock().clone()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing has been logged.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// For each flush entry at index `i`, the flush point `i + 1`: the
    /// prefix length at which everything logged so far is durable.
    pub fn flush_points(&self) -> Vec<usize> {
        self.lock()
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, LogEntry::Flush))
            .map(|(i, _)| i + 1)
            .collect()
    }

    /// Applies entries `[0, upto)` in order to `target`, then flushes it.
    ///
    /// Fails with `EINVAL` if `upto` exceeds the log or `target`'s size
    /// differs from the inner device's, or with `target`'s error.
    pub fn replay(&self, upto: usize, target: &dyn BlockBackend) -> io::Result<()> {
        let log = self.entries();
        self.check_target(target)?;
        let prefix = log.get(..upto).ok_or_else(einval)?;
        for entry in prefix {
            apply(entry, target)?;
        }
        target.flush()
    }

    /// Applies entries `[0, flush_point)`, then entry `flush_point + j` for
    /// each `j` with `keep[j]` (marks are skipped either way), then flushes
    /// `target`. This is a crash state where the writes issued after the
    /// last completed flush reached the medium partly and in any order.
    ///
    /// Fails with `EINVAL` if `flush_point` is neither 0 nor a flush point,
    /// if `keep` reaches past the log or covers a flush entry (writes before
    /// a completed flush can't be lost), or if the sizes differ.
    pub fn replay_subset(
        &self,
        flush_point: usize,
        keep: &[bool],
        target: &dyn BlockBackend,
    ) -> io::Result<()> {
        let log = self.entries();
        self.check_target(target)?;
        let is_point = flush_point == 0
            || (flush_point <= log.len()
                && matches!(log.get(flush_point - 1), Some(LogEntry::Flush)));
        if !is_point {
            return Err(einval());
        }
        let after = log
            .get(flush_point..flush_point + keep.len())
            .ok_or_else(einval)?;
        if after.iter().any(|e| matches!(e, LogEntry::Flush)) {
            return Err(einval());
        }
        for entry in log.get(..flush_point).ok_or_else(einval)? {
            apply(entry, target)?;
        }
        for (entry, &k) in after.iter().zip(keep) {
            if k {
                apply(entry, target)?;
            }
        }
        target.flush()
    }

    fn check_target(&self, target: &dyn BlockBackend) -> io::Result<()> {
        if target.info().size_bytes != self.inner.info().size_bytes {
            return Err(einval());
        }
        Ok(())
    }
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// Performs one logged operation on `target`.
fn apply(entry: &LogEntry, target: &dyn BlockBackend) -> io::Result<()> {
    match entry {
        LogEntry::Write { offset, data, fua } => {
            target.write_at(&[IoSlice::new(data)], *offset, *fua)
        }
        LogEntry::Flush => target.flush(),
        LogEntry::Discard { offset, len } => target.discard(*offset, *len),
        LogEntry::WriteZeroes { offset, len } => target.write_zeroes(*offset, *len),
        LogEntry::Mark(_) => Ok(()),
    }
}

impl BlockBackend for LogWritesBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: "log-writes",
            ..self.inner.info()
        }
    }

    fn read_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        self.inner.read_at(bufs, offset)
    }

    fn write_at(&self, bufs: &[IoSlice<'_>], offset: u64, fua: bool) -> io::Result<()> {
        let mut log = self.lock();
        self.inner.write_at(bufs, offset, fua)?;
        let mut data = Vec::with_capacity(iov_len(bufs) as usize);
        for b in bufs {
            data.extend_from_slice(b);
        }
        log.push(LogEntry::Write {
            offset,
            data: data.into(),
            fua,
        });
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut log = self.lock();
        self.inner.flush()?;
        log.push(LogEntry::Flush);
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut log = self.lock();
        self.inner.discard(offset, len)?;
        log.push(LogEntry::Discard { offset, len });
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut log = self.lock();
        self.inner.write_zeroes(offset, len)?;
        log.push(LogEntry::WriteZeroes { offset, len });
        Ok(())
    }
}

/// A crash state of a write log: `(n, None)` is the prefix of `n` entries;
/// `(flush point, Some(d))` is everything up to that flush point plus the
/// writes after it up to the next flush, except the `d`-th of them.
pub type CrashState = (usize, Option<usize>);

/// Crash states of `lw`'s log from entry `base` on: every prefix
/// `(n, None)`, and at each flush point each single write after it lost
/// `(flush point, Some(index of the lost write))`, except FUA writes (see
/// below). CrashMonkey's states, bounded to one lost write.
pub fn crash_states(lw: &LogWritesBackend, base: usize) -> Vec<CrashState> {
    let len = lw.entries().len();
    let mut states: Vec<CrashState> = (base..=len).map(|n| (n, None)).collect();
    let log = lw.entries();
    for fp in lw.flush_points().into_iter().filter(|&f| f >= base) {
        for d in 0..writes_after(lw, fp) {
            // A FUA write is durable once it completes, and every later
            // write was issued after that: losing it while keeping later
            // ones can't happen (losing it with none after is a prefix).
            let fua = matches!(log.get(fp + d), Some(LogEntry::Write { fua: true, .. }));
            if !fua {
                states.push((fp, Some(d)));
            }
        }
    }
    states
}

/// Entries after flush point `fp` up to the next flush.
pub fn writes_after(lw: &LogWritesBackend, fp: usize) -> usize {
    let log = lw.entries();
    log.get(fp..)
        .unwrap_or_default()
        .iter()
        .position(|e| matches!(e, LogEntry::Flush))
        .unwrap_or(log.len().saturating_sub(fp))
}

/// A fresh memory device of `size` bytes holding crash state `(n, drop)`
/// of `lw`.
pub fn crash_device(
    lw: &LogWritesBackend,
    (n, drop): CrashState,
    size: u64,
) -> io::Result<Arc<dyn BlockBackend>> {
    let target: Arc<dyn BlockBackend> = Arc::new(super::MemBackend::new(size));
    match drop {
        None => lw.replay(n, &*target)?,
        Some(d) => {
            let keep: Vec<bool> = (0..writes_after(lw, n)).map(|i| i != d).collect();
            lw.replay_subset(n, &keep, &*target)?;
        }
    }
    Ok(target)
}
