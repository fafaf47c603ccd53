//! Raw syscalls, in one place. Every `unsafe` block here says why it is sound;
//! nothing outside this module calls into libc with raw pointers.
//!
//! `nix` is used where it offers the call (`preadv`, `pwritev`, `fdatasync`,
//! `fallocate`, `fstat`, the ioctl wrappers) and `libc` otherwise
//! (`pwritev2`, `statx`).
//!
//! Failure contract for every function: errors are `io::Error`s built with
//! [`io::Error::from_raw_os_error`], so `raw_os_error()` gives the errno the
//! kernel returned. Transfers never return short counts or `EINTR`: they are
//! retried here.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::FallocateFlags;

/// The most iovecs one `preadv`/`pwritev` call takes (`UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

fn errno_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn to_off(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

// ---------------------------------------------------------------------------
// open
// ---------------------------------------------------------------------------

/// Opens `path` for reading (and writing unless `read_only`), with
/// `O_DIRECT` when `direct`, and `O_CLOEXEC` always.
///
/// Fails with the errno of `open(2)`: `EINVAL` when the filesystem refuses
/// `O_DIRECT` (tmpfs), `ENOENT`, `EACCES`, `EROFS`, ...
pub fn open(path: &Path, read_only: bool, direct: bool) -> io::Result<File> {
    let mut flags = libc::O_CLOEXEC;
    if direct {
        flags |= libc::O_DIRECT;
    }
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(flags)
        .open(path)
}

// ---------------------------------------------------------------------------
// vectored transfers
// ---------------------------------------------------------------------------

/// Drops the first `n` bytes from a list of buffers: whole buffers that were
/// fully transferred are removed, a partly transferred one is shortened by
/// `reslice(buf, k)` (which returns `buf[k..]`).
fn advance<T: Default>(
    bufs: &mut Vec<T>,
    mut n: usize,
    len: impl Fn(&T) -> usize,
    reslice: impl Fn(T, usize) -> T,
) {
    let mut done = 0;
    for buf in bufs.iter() {
        let l = len(buf);
        if n < l {
            break;
        }
        n -= l;
        done += 1;
    }
    bufs.drain(..done);
    if n > 0 {
        if let Some(first) = bufs.first_mut() {
            let taken = std::mem::take(first);
            *first = reslice(taken, n);
        }
    }
}

/// Reads exactly `iov_len(bufs)` bytes at `offset` into `bufs`, retrying
/// short reads and `EINTR`, and splitting lists longer than [`IOV_MAX`].
///
/// Fails with the errno of `preadv(2)`, or `EIO` if the file ends before the
/// buffers are full (reading past the end of an image file is a device error,
/// not a short read the caller should see).
pub fn preadv_full<Fd: AsFd>(fd: Fd, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    // Fast path: one call moves everything (the common case).
    let first = if bufs.len() <= IOV_MAX {
        let off = to_off(offset)?;
        let n = retry_eintr(|| nix::sys::uio::preadv(fd.as_fd(), bufs, off))?;
        if n == total {
            return Ok(());
        }
        if n == 0 && total > 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        n
    } else {
        0
    };
    // Slow path: walk a private list of the remaining byte ranges.
    let mut rest: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut **b).collect();
    advance_mut(&mut rest, first);
    let mut pos = offset + first as u64;
    while !rest.is_empty() {
        let mut iov: Vec<IoSliceMut<'_>> = rest
            .iter_mut()
            .take(IOV_MAX)
            .map(|b| IoSliceMut::new(b))
            .collect();
        let off = to_off(pos)?;
        let n = retry_eintr(|| nix::sys::uio::preadv(fd.as_fd(), &mut iov, off))?;
        drop(iov);
        if n == 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        advance_mut(&mut rest, n);
        pos += n as u64;
    }
    Ok(())
}

/// Writes all of `bufs` at `offset`, retrying short writes and `EINTR`, and
/// splitting lists longer than [`IOV_MAX`]. With `dsync` each call is a
/// `pwritev2(RWF_DSYNC)`, so the data is durable on return (the `REQ_FUA`
/// mapping of bcachefs-tools' `linux/blkdev.c`).
///
/// Fails with the errno of `pwritev(2)`/`pwritev2(2)`; `EIO` if the kernel
/// reports writing nothing.
pub fn pwritev_full<Fd: AsFd>(
    fd: Fd,
    bufs: &[IoSlice<'_>],
    offset: u64,
    dsync: bool,
) -> io::Result<()> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let first = if bufs.len() <= IOV_MAX {
        let n = pwritev_once(fd.as_fd(), bufs, offset, dsync)?;
        if n == total {
            return Ok(());
        }
        if n == 0 && total > 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        n
    } else {
        0
    };
    let mut rest: Vec<&[u8]> = bufs.iter().map(|b| &**b).collect();
    advance_ref(&mut rest, first);
    let mut pos = offset + first as u64;
    while !rest.is_empty() {
        let iov: Vec<IoSlice<'_>> = rest.iter().take(IOV_MAX).map(|b| IoSlice::new(b)).collect();
        let n = pwritev_once(fd.as_fd(), &iov, pos, dsync)?;
        if n == 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        advance_ref(&mut rest, n);
        pos += n as u64;
    }
    Ok(())
}

fn advance_mut(bufs: &mut Vec<&mut [u8]>, n: usize) {
    advance(
        bufs,
        n,
        |b| b.len(),
        |b, k| b.get_mut(k..).unwrap_or_default(),
    );
}

fn advance_ref(bufs: &mut Vec<&[u8]>, n: usize) {
    advance(bufs, n, |b| b.len(), |b, k| b.get(k..).unwrap_or_default());
}

/// One `pwritev` (or `pwritev2(RWF_DSYNC)`), `EINTR` retried.
fn pwritev_once(
    fd: std::os::fd::BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    offset: u64,
    dsync: bool,
) -> io::Result<usize> {
    let off = to_off(offset)?;
    if !dsync {
        return retry_eintr(|| nix::sys::uio::pwritev(fd, bufs, off));
    }
    let cnt = libc::c_int::try_from(bufs.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    retry_eintr(|| {
        // SAFETY: `IoSlice` is guaranteed ABI-compatible with `struct iovec`
        // on Unix; `bufs` outlives the call and the kernel only reads from
        // the `cnt` buffers it describes. `fd` is a valid borrowed descriptor.
        let ret = unsafe {
            libc::pwritev2(
                fd.as_raw_fd(),
                bufs.as_ptr().cast::<libc::iovec>(),
                cnt,
                off,
                libc::RWF_DSYNC,
            )
        };
        if ret < 0 {
            return Err(errno_err(Errno::last()));
        }
        Ok(usize::try_from(ret).unwrap_or(0))
    })
}

/// Runs `f` until it fails with something other than `EINTR`.
fn retry_eintr<T, E: Into<io::Error>>(mut f: impl FnMut() -> Result<T, E>) -> io::Result<T> {
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) => {
                let e: io::Error = e.into();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(e);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// durability and space management
// ---------------------------------------------------------------------------

/// `fdatasync(2)`: the `REQ_PREFLUSH` mapping. Fails with its errno (`EIO`
/// when earlier writeback failed).
pub fn fdatasync<Fd: AsFd>(fd: Fd) -> io::Result<()> {
    retry_eintr(|| nix::unistd::fdatasync(fd.as_fd().as_raw_fd()))
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)`: the range reads as zeroes and its
/// blocks are freed. `EOPNOTSUPP` where the filesystem can't punch holes.
pub fn punch_hole<Fd: AsFd>(fd: Fd, offset: u64, len: u64) -> io::Result<()> {
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    fallocate(fd, flags, offset, len)
}

/// `fallocate(ZERO_RANGE | KEEP_SIZE)`: the range reads as zeroes, blocks
/// stay allocated. `EOPNOTSUPP` where unsupported (tmpfs, for one).
pub fn zero_range<Fd: AsFd>(fd: Fd, offset: u64, len: u64) -> io::Result<()> {
    let flags = FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    fallocate(fd, flags, offset, len)
}

fn fallocate<Fd: AsFd>(fd: Fd, flags: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
    let off = to_off(offset)?;
    let len = to_off(len)?;
    retry_eintr(|| nix::fcntl::fallocate(fd.as_fd().as_raw_fd(), flags, off, len))
}

// ---------------------------------------------------------------------------
// file metadata
// ---------------------------------------------------------------------------

/// The `O_DIRECT` alignment rules of an open file, from `statx(STATX_DIOALIGN)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DioAlign {
    /// Required alignment of user buffers in memory.
    pub mem_align: u32,
    /// Required alignment of file offsets and lengths.
    pub offset_align: u32,
}

/// The file's direct-I/O alignment, or `None` when the kernel or filesystem
/// does not report it (or reports that it does not support direct I/O).
pub fn dio_align<Fd: AsFd>(fd: Fd) -> Option<DioAlign> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    let empty = c"";
    // SAFETY: `empty` is a valid NUL-terminated string; with AT_EMPTY_PATH
    // the kernel stats `fd` itself. `stx` points to writable memory the size
    // of `struct statx`, which the kernel fills.
    let ret = unsafe {
        libc::statx(
            fd.as_fd().as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            stx.as_mut_ptr(),
        )
    };
    if ret != 0 {
        return None;
    }
    // SAFETY: statx returned 0, so the kernel initialised the struct (and it
    // was zeroed beforehand, so every field is a valid integer regardless).
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some(DioAlign {
        mem_align: stx.stx_dio_mem_align,
        offset_align: stx.stx_dio_offset_align,
    })
}

/// True when `file` is a block device (`S_ISBLK` of `fstat`).
pub fn is_block_device(file: &File) -> io::Result<bool> {
    let st = nix::sys::stat::fstat(file.as_raw_fd()).map_err(errno_err)?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFBLK)
}

// ---------------------------------------------------------------------------
// block-device ioctls (include/uapi/linux/fs.h)
// ---------------------------------------------------------------------------

mod blkioctl {
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t): the device size in bytes.
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    // BLKSSZGET = _IO(0x12, 104), writes an int: the logical block size.
    nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), libc::c_int);
    // BLKPBSZGET = _IO(0x12, 123), writes an unsigned int: the physical block size.
    nix::ioctl_read_bad!(blkpbszget, nix::request_code_none!(0x12, 123), libc::c_uint);
    // BLKDISCARD = _IO(0x12, 119), reads uint64_t[2] = {start, len}.
    nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
    // BLKZEROOUT = _IO(0x12, 127), reads uint64_t[2] = {start, len}.
    nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
}

/// `BLKGETSIZE64`: the size of a block device in bytes. `ENOTTY` on a
/// descriptor that is not a block device.
pub fn blk_size_bytes(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: the ioctl writes one u64 through the pointer, which points to
    // `size`, live for the call; the fd is open for the call's duration.
    unsafe { blkioctl::blkgetsize64(file.as_raw_fd(), &mut size) }.map_err(errno_err)?;
    Ok(size)
}

/// `BLKSSZGET`: the logical block size of a block device.
pub fn blk_logical_block_size(file: &File) -> io::Result<u32> {
    let mut lbs: libc::c_int = 0;
    // SAFETY: the ioctl writes one int into `lbs`, live for the call.
    unsafe { blkioctl::blksszget(file.as_raw_fd(), &mut lbs) }.map_err(errno_err)?;
    u32::try_from(lbs).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `BLKPBSZGET`: the physical block size of a block device.
pub fn blk_physical_block_size(file: &File) -> io::Result<u32> {
    let mut pbs: libc::c_uint = 0;
    // SAFETY: the ioctl writes one unsigned int into `pbs`, live for the call.
    unsafe { blkioctl::blkpbszget(file.as_raw_fd(), &mut pbs) }.map_err(errno_err)?;
    Ok(pbs)
}

/// `BLKDISCARD` over `[offset, offset + len)`. `EOPNOTSUPP` when the device
/// has no discard; `EINVAL` for ranges unaligned to its logical block size.
pub fn blk_discard(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let range = [offset, len];
    // SAFETY: the ioctl reads two u64s from `range`, live for the call.
    retry_eintr(|| unsafe { blkioctl::blkdiscard(file.as_raw_fd(), &range) }).map(|_| ())
}

/// `BLKZEROOUT` over `[offset, offset + len)`: the range reads as zeroes
/// (the kernel writes zeroes itself if the device has no offload).
pub fn blk_zeroout(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let range = [offset, len];
    // SAFETY: the ioctl reads two u64s from `range`, live for the call.
    retry_eintr(|| unsafe { blkioctl::blkzeroout(file.as_raw_fd(), &range) }).map(|_| ())
}

// ---------------------------------------------------------------------------
// Scheduling and identity (ioprio_get, getpriority, gettid), for block::ioc.
// ---------------------------------------------------------------------------

const IOPRIO_WHO_PROCESS: libc::c_int = 1;

/// `ioprio_get(IOPRIO_WHO_PROCESS, pid)`: the raw 16-bit I/O priority of a task.
pub fn ioprio_get_process(pid: i32) -> std::io::Result<u16> {
    // SAFETY: ioprio_get takes two integers and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, pid) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret as u16)
}

/// `ioprio_set(IOPRIO_WHO_PROCESS, pid, raw)`.
pub fn ioprio_set_process(pid: i32, raw: u16) -> std::io::Result<()> {
    // SAFETY: ioprio_set takes three integers and touches no memory of ours.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            pid,
            libc::c_int::from(raw),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The nice value of task `pid` (`getpriority(PRIO_PROCESS, pid)`).
pub fn nice_of(pid: i32) -> std::io::Result<i32> {
    let who =
        libc::id_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    nix::errno::Errno::clear();
    // SAFETY: getpriority takes integers only. It may legitimately return -1,
    // so errno is cleared first and checked after.
    let ret = unsafe { libc::getpriority(libc::PRIO_PROCESS, who) };
    if ret == -1 && nix::errno::Errno::last_raw() != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret)
}

/// The scheduling policy of task `pid` (`sched_getscheduler(2)`), e.g.
/// `SCHED_OTHER`, `SCHED_IDLE`, `SCHED_FIFO`.
pub fn sched_policy(pid: i32) -> std::io::Result<i32> {
    // SAFETY: sched_getscheduler takes an integer and touches no memory.
    let ret = unsafe { libc::sched_getscheduler(pid) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret)
}

/// The calling thread's id.
pub fn gettid() -> i32 {
    nix::unistd::gettid().as_raw()
}

/// The thread group (process) of task `tid`, from `/proc/TID/status`.
pub fn tgid_of(tid: i32) -> std::io::Result<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no Tgid in status"))
}

// ---------------------------------------------------------------------------
// io_uring, for queue workers that keep several transfers in flight.
// ---------------------------------------------------------------------------

/// An io_uring instance submitting vectored reads and writes
/// (`IORING_OP_READV` / `IORING_OP_WRITEV`: `preadv` / `pwritev2` made
/// asynchronous).
pub struct Ring {
    ring: io_uring::IoUring,
}

impl Ring {
    /// A ring with room for `entries` operations in flight.
    pub fn new(entries: u32) -> std::io::Result<Ring> {
        Ok(Ring {
            ring: io_uring::IoUring::new(entries.max(1).next_power_of_two())?,
        })
    }

    /// Queue a `preadv` (or, with `write`, a `pwritev2`, with `RWF_DSYNC`
    /// when `dsync`) of `iov` at `offset` on `fd`, tagged `user_data`.
    /// Returns false when the submission queue is full.
    ///
    /// # Safety
    /// `iov`, and every buffer it points to, must stay valid and untouched
    /// by anyone else until the completion tagged `user_data` has been
    /// reaped; `fd` must stay open until then.
    pub unsafe fn push_rw(
        &mut self,
        fd: std::os::fd::RawFd,
        iov: &[libc::iovec],
        offset: u64,
        write: bool,
        dsync: bool,
        user_data: u64,
    ) -> bool {
        use io_uring::{opcode, types};
        let len = u32::try_from(iov.len()).unwrap_or(u32::MAX);
        let entry = if write {
            opcode::Writev::new(types::Fd(fd), iov.as_ptr(), len)
                .offset(offset)
                .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
                .build()
        } else {
            opcode::Readv::new(types::Fd(fd), iov.as_ptr(), len)
                .offset(offset)
                .build()
        };
        // SAFETY: the caller keeps the iovecs and buffers alive and unshared
        // until the completion is reaped (this function's contract).
        unsafe {
            self.ring
                .submission()
                .push(&entry.user_data(user_data))
                .is_ok()
        }
    }

    /// Submit what is queued and wait for at least `want` completions.
    /// `EINTR` is retried.
    pub fn submit_and_wait(&mut self, want: usize) -> std::io::Result<usize> {
        loop {
            match self.ring.submit_and_wait(want) {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                other => return other,
            }
        }
    }

    /// Take the completions available now: `(user_data, result)`, the
    /// result being bytes transferred or a negated errno.
    pub fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        out.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
    }
}

/// Take an exclusive `flock(2)` on `fd` without waiting.
///
/// Fails with `EWOULDBLOCK` when another open file description holds a lock.
pub fn flock_exclusive_nonblock<Fd: AsFd>(fd: Fd) -> io::Result<()> {
    // SAFETY: flock on a valid descriptor borrowed for the call.
    let r = unsafe { libc::flock(fd.as_fd().as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Fill `buf` with random bytes from the kernel (`getrandom(2)`).
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while let Some(tail) = buf.get_mut(done..).filter(|t| !t.is_empty()) {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(tail.as_mut_ptr().cast::<libc::c_void>(), tail.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The mount daemon: fork, signals, unmount, xattrs of a path.
// ---------------------------------------------------------------------------

/// The number of threads of this process, from `/proc/self/status`.
fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Threads in status"))
}

/// `fork(2)`, refused (`EBUSY`) unless this process has one thread: a
/// child of a multi-threaded process may find locks held forever by
/// threads it does not have. Returns the child's pid in the parent, `None`
/// in the child.
pub fn fork_single_threaded() -> io::Result<Option<i32>> {
    if thread_count()? != 1 {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            "fork with more than one thread running",
        ));
    }
    // SAFETY: the process has a single thread (checked above; nothing in
    // between starts one), so the child inherits no lock another thread
    // holds and may go on to run any code.
    match unsafe { nix::unistd::fork() }.map_err(errno_err)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Some(child.as_raw())),
        nix::unistd::ForkResult::Child => Ok(None),
    }
}

fn sigset(signals: &[i32]) -> io::Result<libc::sigset_t> {
    // SAFETY: sigemptyset initialises the set it is given; sigaddset
    // fails (EINVAL) on an invalid signal number, which is returned.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for &s in signals {
            if libc::sigaddset(&mut set, s) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(set)
    }
}

/// Block `signals` in the calling thread, and so in every thread it starts
/// afterwards (`pthread_sigmask(SIG_BLOCK)`), for [`wait_signal`] to take.
pub fn block_signals(signals: &[i32]) -> io::Result<()> {
    let set = sigset(signals)?;
    // SAFETY: `set` is an initialised signal set; the old mask isn't asked for.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// Wait for one of `signals` (blocked with [`block_signals`]) and return it
/// (`sigwait(3)`).
pub fn wait_signal(signals: &[i32]) -> io::Result<i32> {
    let set = sigset(signals)?;
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is initialised and `sig` is a valid place for the result.
    let r = unsafe { libc::sigwait(&set, &mut sig) };
    if r == 0 {
        Ok(sig)
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// `umount2(2)` of `path` (not following a symlink there); `detach`: a lazy
/// unmount (`MNT_DETACH`), which succeeds while files are open.
///
/// Fails with `EBUSY` (files open, without `detach`), `EINVAL` (not a
/// mount point), `EPERM` (not privileged).
pub fn umount(path: &Path, detach: bool) -> io::Result<()> {
    let c = path_cstring(path)?;
    let flags = libc::UMOUNT_NOFOLLOW | if detach { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let r = unsafe { libc::umount2(c.as_ptr(), flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Open `/dev/fuse` and mount a FUSE filesystem served through it on
/// `mountpoint`: `mount(2)` of type `fstype` (`fuse.SUBTYPE`, shown so in
/// /proc/mounts) from `source`, with `flags` (`MS_*`) and the kernel FUSE
/// options `options` (comma-separated: `default_permissions`,
/// `allow_other`) besides the `fd=`, `rootmode=`, `user_id=` and
/// `group_id=` the kernel needs. Returns the `/dev/fuse` descriptor (never
/// 0, 1 or 2); the kernel's FUSE_INIT is waiting on it.
///
/// Fails with `EPERM` when not privileged (a user's mount goes through
/// fusermount3), `ENOENT` (no `/dev/fuse` or mount point), `ENODEV`, ...
pub fn fuse_mount(
    source: &str,
    mountpoint: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    options: &str,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    let root_mode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")?;
    let mut fd = std::os::fd::OwnedFd::from(dev);
    if fd.as_raw_fd() <= 2 {
        // stdin, stdout or stderr was closed: a daemon's redirection of
        // them would take the device away.
        fd = fd.as_fd().try_clone_to_owned()?;
    }
    // SAFETY: getuid and getgid take nothing and can't fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={},rootmode={:o},user_id={uid},group_id={gid}",
        fd.as_raw_fd(),
        root_mode,
    );
    if !options.is_empty() {
        data.push(',');
        data.push_str(options);
    }
    let cstr =
        |s: &str| std::ffi::CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
    let (src, ty, data) = (cstr(source)?, cstr(fstype)?, cstr(&data)?);
    let target = path_cstring(mountpoint)?;
    // SAFETY: all four strings are NUL-terminated and outlive the call; the
    // data is the text FUSE's mount parses.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            ty.as_ptr(),
            flags,
            data.as_ptr().cast::<libc::c_void>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn path_cstring(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The value of extended attribute `name` of `path` (`getxattr(2)`,
/// following symlinks), however long it is: a value that grows between the
/// size query and the read is read again.
///
/// Fails with `ENODATA` (no such attribute, or a `trusted.` one without
/// CAP_SYS_ADMIN), `EOPNOTSUPP`, `ENOENT`, ...
pub fn getxattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let p = path_cstring(path)?;
    let n = std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    loop {
        // SAFETY: both strings are NUL-terminated; a NULL buffer of size 0
        // asks for the size only.
        let size = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: `buf` has `buf.len()` writable bytes.
        let got = unsafe {
            libc::getxattr(
                p.as_ptr(),
                n.as_ptr(),
                buf.as_mut_ptr().cast::<libc::c_void>(),
                buf.len(),
            )
        };
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

/// A private anonymous mapping of `len` bytes (page-aligned, zero-filled,
/// faulted in on first touch): the page pool's slabs. Never unmapped.
pub fn map_anonymous(len: usize) -> io::Result<std::ptr::NonNull<u8>> {
    // SAFETY: a new private anonymous mapping at an address the kernel
    // picks aliases no existing memory; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    std::ptr::NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// Give the memory behind `len` bytes at `ptr` back to the kernel,
/// keeping the mapping (`madvise(MADV_DONTNEED)`: the bytes read as zeros
/// afterwards, faulted in again on next touch). Best effort.
///
/// # Safety
/// `ptr..ptr+len` must be page-aligned memory of a private anonymous
/// mapping ([`map_anonymous`]) that nobody reads or writes meanwhile.
pub unsafe fn discard_memory(ptr: *mut u8, len: usize) {
    // SAFETY: the caller owns the range, which lies in a private anonymous
    // mapping; MADV_DONTNEED only drops its contents.
    unsafe {
        libc::madvise(ptr.cast(), len, libc::MADV_DONTNEED);
    }
}

/// Keep large allocations (a FUSE read's or write's megabyte buffers) in
/// the heap instead of a fresh `mmap` each time: every fresh mapping is
/// faulted in and zeroed page by page, which cost a mount more CPU than
/// its copies did. Allocations of 8 MiB and more still get a mapping of
/// their own: those are fuser's per-thread request buffers (16 MiB each,
/// allocated once and zeroed), of which only the first megabyte is ever
/// used; from recycled heap memory `calloc` zeroes (and so makes
/// resident) all 16 MiB, from a fresh mapping nothing until it is used.
/// Best effort: `mallopt` failing changes nothing else.
pub fn keep_large_allocations_in_heap() {
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // the process starts its threads and has no memory-safety contract.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// `mount(2)` with `MS_REMOUNT` and `flags` (`MS_RDONLY`, `MS_NODEV`, ...)
/// on `mountpoint`: the kernel's half of `mount -o remount`. It refuses
/// a read-only remount with `EBUSY` while files are open for writing.
pub fn remount(mountpoint: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let target = path_cstring(mountpoint)?;
    // SAFETY: `target` is NUL-terminated and outlives the call; source,
    // type and data may be null for a remount.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | flags,
            std::ptr::null(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `LOOP_CTL_GET_FREE`, `LOOP_CONFIGURE` and the flags of `<linux/loop.h>`.
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attach `image` to a free loop device, as `losetup --find --direct-io=on`
/// does, with autoclear: the device detaches itself when its last user
/// (the kernel's mount of it) lets go. Returns the device's path and an
/// open descriptor of it (close it once the device has another user).
///
/// Fails with `ENOENT` where there is no `/dev/loop-control` (no loop
/// devices, as in many containers), or the errno of the ioctls.
pub fn loop_attach(image: &Path, read_only: bool) -> io::Result<(std::path::PathBuf, File)> {
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")?;
    let backing = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(image)?;
    // Another attach may take the free device first: try again.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument on a valid descriptor.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let path = std::path::PathBuf::from(format!("/dev/loop{n}"));
        let dev = match OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(d) => d,
            // The node appears a moment after the device (udev, devtmpfs).
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut name = [0u8; LO_NAME_SIZE];
        let full = std::path::absolute(image).unwrap_or_else(|_| image.to_path_buf());
        let bytes = full.as_os_str().as_encoded_bytes();
        // At most LO_NAME_SIZE - 1 bytes: the last stays NUL.
        for (d, s) in name.iter_mut().zip(bytes).take(LO_NAME_SIZE - 1) {
            *d = *s;
        }
        let cfg = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO | if read_only { 1 } else { 0 },
                lo_file_name: name,
                lo_crypt_name: [0; LO_NAME_SIZE],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `cfg`
        // is (repr(C), the kernel's layout), for the duration of the call.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE as _, &cfg) };
        if r == 0 {
            return Ok((path, dev));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EBUSY))
}

/// Wait until the mount table of this process's namespace changes
/// (`poll(2)` of `/proc/self/mountinfo` for `POLLPRI`), or `timeout_ms`
/// passes (-1: no limit). `mountinfo` is an open descriptor of it, read to
/// its end since the last change.
pub fn wait_mount_change(mountinfo: &File, timeout_ms: i32) -> io::Result<bool> {
    poll_one(mountinfo, libc::POLLPRI | libc::POLLERR, timeout_ms)
}

/// `pidfd_open(2)`: a descriptor of process `pid` that becomes readable
/// when it ends (and pins its number meanwhile).
pub fn pidfd_open(pid: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `r` is a new descriptor this process owns from here on.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(r as i32) })
}

/// Wait up to `timeout_ms` for `fd` to become readable; true if it did.
pub fn wait_readable<Fd: AsFd>(fd: Fd, timeout_ms: i32) -> io::Result<bool> {
    poll_one(fd, libc::POLLIN, timeout_ms)
}

/// `poll(2)` of one descriptor for `events`, up to `timeout_ms` (-1: no
/// limit): true if any came, false on a timeout or an interrupted wait.
fn poll_one<Fd: AsFd>(fd: Fd, events: libc::c_short, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    match r {
        r if r > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_drops_whole_and_partial_buffers() {
        let (a, b, c) = ([1u8; 4], [2u8; 4], [3u8; 4]);
        let mut bufs: Vec<&[u8]> = vec![&a, &b, &c];
        advance_ref(&mut bufs, 6);
        assert_eq!(bufs, vec![&[2u8, 2][..], &c[..]]);
        advance_ref(&mut bufs, 2);
        assert_eq!(bufs, vec![&c[..]]);
        advance_ref(&mut bufs, 4);
        assert!(bufs.is_empty());
    }

    /// More iovecs than one syscall takes: the split path must place every
    /// byte at its offset.
    #[test]
    fn transfers_longer_than_iov_max_are_split() -> io::Result<()> {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR"))?;
        let path = dir.path().join("iov");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let n = IOV_MAX * 2 + 7;
        let src: Vec<[u8; 3]> = (0..n).map(|i| [i as u8, (i >> 8) as u8, 0xa5]).collect();
        let iov: Vec<IoSlice<'_>> = src.iter().map(|b| IoSlice::new(b)).collect();
        pwritev_full(&file, &iov, 100, false)?;
        pwritev_full(&file, &iov[..1], 0, true)?;
        let mut dst = vec![[0u8; 3]; n];
        let mut riov: Vec<IoSliceMut<'_>> = dst.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        preadv_full(&file, &mut riov, 100)?;
        assert_eq!(dst, src);
        // Reading past the end of the file is an error, never a short read.
        let mut tail = [0u8; 16];
        let end = 100 + 3 * n as u64 - 8;
        let err = preadv_full(&file, &mut [IoSliceMut::new(&mut tail)], end);
        assert_eq!(err.map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)));
        Ok(())
    }

    #[test]
    fn block_ioctls_refuse_regular_files() -> io::Result<()> {
        let file = tempfile::tempfile_in(env!("CARGO_MANIFEST_DIR"))?;
        assert!(!is_block_device(&file)?);
        assert_eq!(
            blk_size_bytes(&file).map_err(|e| e.raw_os_error()),
            Err(Some(libc::ENOTTY))
        );
        Ok(())
    }

    #[test]
    fn getxattr_reads_a_value_and_reports_a_missing_one() -> io::Result<()> {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR"))?;
        let path = dir.path().join("x");
        std::fs::write(&path, b"")?;
        let c = path_cstring(&path)?;
        let value = vec![b'v'; 3000];
        // SAFETY: NUL-terminated strings and a buffer of the given length.
        let r = unsafe {
            libc::setxattr(
                c.as_ptr(),
                c"user.biofs.test".as_ptr(),
                value.as_ptr().cast::<libc::c_void>(),
                value.len(),
                0,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                eprintln!("skipped: the test directory's filesystem has no user xattrs");
                return Ok(());
            }
            return Err(e);
        }
        assert_eq!(getxattr(&path, "user.biofs.test")?, value);
        let missing = getxattr(&path, "user.biofs.none").map_err(|e| e.raw_os_error());
        assert_eq!(missing, Err(Some(libc::ENODATA)));
        Ok(())
    }

    #[test]
    fn umount_of_a_directory_that_is_no_mount_point_fails() -> io::Result<()> {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR"))?;
        let e = umount(dir.path(), false).map_err(|e| e.raw_os_error());
        // EINVAL as root, EPERM for anyone else.
        assert!(matches!(e, Err(Some(libc::EINVAL | libc::EPERM))), "{e:?}");
        Ok(())
    }

    #[test]
    fn a_blocked_signal_is_taken_by_wait_signal() -> io::Result<()> {
        block_signals(&[libc::SIGUSR2])?;
        // SAFETY: a signal to this thread, where it is blocked.
        let r = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR2) };
        assert_eq!(r, 0);
        assert_eq!(wait_signal(&[libc::SIGUSR2])?, libc::SIGUSR2);
        Ok(())
    }

    /// The test harness runs tests on threads of their own: fork must refuse.
    #[test]
    fn fork_refuses_a_multi_threaded_process() {
        let r = fork_single_threaded().map_err(|e| e.kind());
        assert_eq!(r, Err(io::ErrorKind::ResourceBusy));
    }
}
