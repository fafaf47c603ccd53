//! Block devices behind one trait: what the queue workers do I/O against.
//!
//! Counterpart of a `struct block_device` plus its driver's `queue_rq`, in the
//! spirit of bcachefs-tools' userspace `linux/blkdev.c`: bvecs become
//! `preadv`/`pwritev2`, `REQ_PREFLUSH` becomes `fdatasync`, `REQ_FUA` becomes
//! `RWF_DSYNC`.
//!
//! Every backend passes the same conformance suite (`tests/backend_conformance.rs`).

use std::io::{self, IoSlice, IoSliceMut};

pub mod fault;
pub mod file;
pub mod logwrites;
pub mod mem;

pub use fault::{CrashMode, CrashReport, FaultBackend, FaultCounters, RangeFault};
pub use file::{DirectMode, FileBackend, FileOptions};
pub use logwrites::{LogEntry, LogWritesBackend};
pub use mem::MemBackend;

/// What a backend tells the queue about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    /// Size of the device in bytes.
    pub size_bytes: u64,
    /// Smallest unit the device can address (512 or 4096).
    pub logical_block_size: u32,
    /// The device's atomic write unit.
    pub physical_block_size: u32,
    /// True when I/O bypasses the host page cache (`O_DIRECT`).
    pub direct_io: bool,
    /// A short name for logs: "file", "blockdev", "memory", "fault", "log-writes".
    pub kind: &'static str,
    /// True when a discarded range is guaranteed to read back as zeroes
    /// (image files, memory); false for block devices.
    pub discard_zeroes: bool,
}

/// A device the block layer can read and write.
///
/// Contract for every method:
/// - `offset` and every length are multiples of `logical_block_size`, and the
///   range lies inside `size_bytes`; otherwise the call fails with
///   `EINVAL` and changes nothing.
/// - A transfer moves all the bytes or fails: short reads and writes and
///   `EINTR` are retried inside the backend, never returned.
/// - Errors are `io::Error`s carrying the errno the device reported; the
///   queue turns them into a [`crate::block::BlkStatus`].
pub trait BlockBackend: Send + Sync {
    /// Size, block sizes and I/O mode.
    fn info(&self) -> BackendInfo;

    /// Fill `bufs`, in order, from the bytes starting at `offset`.
    fn read_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()>;

    /// Write `bufs`, in order, starting at `offset`. With `fua` the data is
    /// durable when the call returns (`RWF_DSYNC`).
    fn write_at(&self, bufs: &[IoSlice<'_>], offset: u64, fua: bool) -> io::Result<()>;

    /// Make every write that has returned durable (`fdatasync`).
    fn flush(&self) -> io::Result<()>;

    /// Drop the range's contents. Afterwards the range reads as zeroes on
    /// backends that can promise it (files, memory); a block device may
    /// return anything. `ErrorKind::Unsupported` if the device can't.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Make the range read as zeroes.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;

    /// The file descriptor of a writable `O_DIRECT` file or device, for
    /// queue workers that submit their reads and writes asynchronously
    /// (io_uring) instead of through [`BlockBackend::read_at`] /
    /// [`BlockBackend::write_at`]. Backends that must see every transfer
    /// (memory, fault injection, write logging) return `None`, the default.
    fn direct_fd(&self) -> Option<DirectFd> {
        None
    }
}

/// A descriptor the engine may do `O_DIRECT` I/O on directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectFd {
    pub fd: std::os::fd::RawFd,
    /// Buffer addresses and lengths must be multiples of this.
    pub mem_align: u32,
}

/// Checks the alignment and bounds rule of the [`BlockBackend`] contract.
///
/// Fails with a raw `EINVAL` (so `raw_os_error()` and the queue's
/// errno-to-status mapping see it); the range and the reason are logged at
/// debug level, since an `io::Error` can't carry both a message and an errno.
pub fn check_range(info: &BackendInfo, offset: u64, len: u64) -> io::Result<()> {
    let lbs = u64::from(info.logical_block_size.max(1));
    let end = offset.checked_add(len);
    if offset % lbs != 0 || len % lbs != 0 || end.is_none_or(|e| e > info.size_bytes) {
        log::debug!(
            "{} backend: range {offset}+{len} is unaligned to {lbs} or beyond the end ({})",
            info.kind,
            info.size_bytes
        );
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(())
}

/// Total length of a set of buffers.
pub fn iov_len<T: std::ops::Deref<Target = [u8]>>(bufs: &[T]) -> u64 {
    bufs.iter().map(|b| b.len() as u64).sum()
}
