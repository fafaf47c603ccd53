//! The system calls the mount tests make that `std` doesn't wrap: the one
//! place with `unsafe` for them. Every wrapper returns `io::Result`, so a
//! test asserts an errno with [`super::errno`].

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn cname(s: &str) -> CString {
    CString::new(s).expect("name without NUL")
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// `sync(2)`.
pub fn sync() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() }
}

/// `kill(2)` with SIGKILL.
pub fn kill9(pid: u32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }).map(drop)
}

/// `renameat2(2)` with `libc::RENAME_NOREPLACE` / `RENAME_EXCHANGE`.
pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (f, t) = (cpath(from), cpath(to));
    // SAFETY: both are NUL-terminated strings that outlive the call.
    cvt(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// `mknod(2)`; `mode` carries the type bits.
pub fn mknod(path: &Path, mode: u32, dev: libc::dev_t) -> io::Result<()> {
    let p = cpath(path);
    // SAFETY: `p` is a NUL-terminated string that outlives the call.
    cvt(unsafe { libc::mknod(p.as_ptr(), mode, dev) }).map(drop)
}

pub fn makedev(major: u32, minor: u32) -> libc::dev_t {
    libc::makedev(major, minor)
}

/// `truncate(2)` by path.
pub fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let p = cpath(path);
    // SAFETY: `p` is a NUL-terminated string that outlives the call.
    cvt(unsafe { libc::truncate(p.as_ptr(), len as libc::off_t) }).map(drop)
}

/// `fallocate(2)` with `libc::FALLOC_FL_*` `mode` bits.
pub fn fallocate(f: &File, mode: i32, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain integer arguments on an open descriptor.
    cvt(unsafe { libc::fallocate(f.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t) })
        .map(drop)
}

/// `lseek(2)`, for `SEEK_DATA` / `SEEK_HOLE`.
pub fn lseek(f: &File, off: u64, whence: i32) -> io::Result<u64> {
    // SAFETY: plain integer arguments on an open descriptor.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// One timestamp for [`utimensat`].
#[derive(Clone, Copy, Debug)]
pub enum Time {
    At(i64, i64),
    Now,
    Omit,
}

impl Time {
    fn raw(self) -> libc::timespec {
        let (sec, nsec) = match self {
            Time::At(s, n) => (s, n),
            Time::Now => (0, libc::UTIME_NOW),
            Time::Omit => (0, libc::UTIME_OMIT),
        };
        libc::timespec {
            tv_sec: sec as libc::time_t,
            tv_nsec: nsec as _,
        }
    }
}

/// `utimensat(2)`; `nofollow` sets a symlink's own times.
pub fn utimensat(path: &Path, atime: Time, mtime: Time, nofollow: bool) -> io::Result<()> {
    let p = cpath(path);
    let ts = [atime.raw(), mtime.raw()];
    let flags = if nofollow {
        libc::AT_SYMLINK_NOFOLLOW
    } else {
        0
    };
    // SAFETY: `p` is NUL-terminated and `ts` holds the two timespecs the
    // call reads; both outlive it.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), ts.as_ptr(), flags) }).map(drop)
}

/// `setxattr(2)` (`nofollow`: `lsetxattr`) with `libc::XATTR_*` flags.
pub fn setxattr(
    path: &Path,
    name: &str,
    value: &[u8],
    flags: i32,
    nofollow: bool,
) -> io::Result<()> {
    let (p, n) = (cpath(path), cname(name));
    let (v, len) = (value.as_ptr().cast(), value.len());
    // SAFETY: NUL-terminated path and name, and `len` readable bytes at
    // `v`, all outliving the call.
    let r = unsafe {
        if nofollow {
            libc::lsetxattr(p.as_ptr(), n.as_ptr(), v, len, flags)
        } else {
            libc::setxattr(p.as_ptr(), n.as_ptr(), v, len, flags)
        }
    };
    cvt(r).map(drop)
}

/// `getxattr(2)` into a buffer of `cap` bytes (0: ask for the size):
/// the value's length.
pub fn getxattr_into(path: &Path, name: &str, buf: &mut [u8]) -> io::Result<usize> {
    let (p, n) = (cpath(path), cname(name));
    // SAFETY: NUL-terminated path and name; `buf.len()` writable bytes at
    // its pointer (a null-sized query when empty), all outliving the call.
    cvt_size(unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// The whole value of `name`.
pub fn getxattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let len = getxattr_into(path, name, &mut [])?;
    let mut buf = vec![0u8; len];
    let n = getxattr_into(path, name, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// `listxattr(2)` into `buf` (empty: ask for the size).
pub fn listxattr_into(path: &Path, buf: &mut [u8]) -> io::Result<usize> {
    let p = cpath(path);
    // SAFETY: NUL-terminated path; `buf.len()` writable bytes.
    cvt_size(unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// The names `listxattr(2)` returns, sorted.
pub fn listxattr(path: &Path) -> io::Result<Vec<String>> {
    let len = listxattr_into(path, &mut [])?;
    let mut buf = vec![0u8; len];
    let n = listxattr_into(path, &mut buf)?;
    let mut names: Vec<String> = buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    names.sort();
    Ok(names)
}

pub fn removexattr(path: &Path, name: &str) -> io::Result<()> {
    let (p, n) = (cpath(path), cname(name));
    // SAFETY: NUL-terminated path and name.
    cvt(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) }).map(drop)
}

/// What `statfs(2)` reports, widened to `u64`/`i64`.
#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    pub fs_type: i64,
    pub bsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub namelen: u64,
}

/// `statfs(2)`.
pub fn statfs(path: &Path) -> io::Result<StatFs> {
    let p = cpath(path);
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated path and a statfs the call fills.
    cvt(unsafe { libc::statfs(p.as_ptr(), &mut st) })?;
    #[allow(clippy::unnecessary_cast)] // the field types vary by target
    Ok(StatFs {
        fs_type: st.f_type as i64,
        bsize: st.f_bsize as u64,
        blocks: st.f_blocks as u64,
        bfree: st.f_bfree as u64,
        bavail: st.f_bavail as u64,
        files: st.f_files as u64,
        ffree: st.f_ffree as u64,
        namelen: st.f_namelen as u64,
    })
}

/// `syncfs(2)` on the filesystem holding `f`.
pub fn syncfs(f: &File) -> io::Result<()> {
    // SAFETY: an open descriptor.
    cvt(unsafe { libc::syncfs(f.as_raw_fd()) }).map(drop)
}

/// The calling thread's umask is the process's: tests set modes with
/// `chmod` after creating, except where creation itself is tested.
pub fn open_mode(path: &Path, flags: i32, mode: u32) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    let p = cpath(path);
    // SAFETY: NUL-terminated path; the returned descriptor is new and
    // owned by the File.
    let fd = cvt(unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A shared file mapping, unmapped on drop.
pub struct Mmap {
    ptr: *mut u8,
    len: usize,
}

impl Mmap {
    /// Map `len` bytes of `f` from `offset` (page-aligned), shared;
    /// writable if `write`.
    pub fn map(f: &File, len: usize, offset: u64, write: bool) -> io::Result<Mmap> {
        let prot = if write {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping chosen by the kernel (no fixed address),
        // over an open descriptor; failure is MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmap { ptr: p.cast(), len })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` bytes mapped readable at `ptr` until drop.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Only for a mapping made with `write`.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `len` bytes mapped writable at `ptr` until drop, and
        // `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// `msync(MS_SYNC)` of the whole mapping.
    pub fn msync(&self) -> io::Result<()> {
        // SAFETY: the range is exactly this mapping.
        cvt(unsafe { libc::msync(self.ptr.cast(), self.len, libc::MS_SYNC) }).map(drop)
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: the range is exactly this mapping, and no slice of it
        // outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Run `f` on a new thread whose credentials are `uid`/`gid` with no
/// supplementary groups (`groups` added if given). Linux keeps credentials
/// per thread and the raw system calls (unlike glibc's wrappers) change
/// only the calling thread's, so the rest of the test process stays root.
pub fn as_user<R: Send + 'static>(
    uid: u32,
    gid: u32,
    groups: &[u32],
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    let groups: Vec<libc::gid_t> = groups.to_vec();
    std::thread::spawn(move || {
        // SAFETY: raw credential system calls with valid arguments (a
        // pointer to `groups.len()` gids); they affect only this thread,
        // which ends when `f` returns.
        unsafe {
            let r = libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr());
            assert_eq!(r, 0, "setgroups: {}", io::Error::last_os_error());
            let r = libc::syscall(libc::SYS_setresgid, gid, gid, gid);
            assert_eq!(r, 0, "setresgid: {}", io::Error::last_os_error());
            let r = libc::syscall(libc::SYS_setresuid, uid, uid, uid);
            assert_eq!(r, 0, "setresuid: {}", io::Error::last_os_error());
            assert_eq!(libc::geteuid(), uid, "thread credentials");
        }
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// One entry of [`getdents`].
#[derive(Clone, Debug)]
pub struct Dirent {
    pub ino: u64,
    pub off: i64,
    pub kind: u8,
    pub name: Vec<u8>,
}

impl Dirent {
    pub fn name_str(&self) -> &str {
        std::str::from_utf8(&self.name).unwrap_or("<non-utf8>")
    }
}

/// One `getdents64(2)` call with a buffer of `buf_len` bytes on a
/// directory opened with `O_DIRECTORY`: the entries it returned (none at
/// the end).
pub fn getdents(dir: &File, buf_len: usize) -> io::Result<Vec<Dirent>> {
    let mut buf = vec![0u8; buf_len];
    // SAFETY: `buf_len` writable bytes at `buf`, an open descriptor.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.as_raw_fd(),
            buf.as_mut_ptr(),
            buf_len,
        )
    };
    let n = cvt_size(n as isize)?;
    let mut out = Vec::new();
    let mut pos = 0;
    // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
    while pos + 19 <= n {
        let ino = u64::from_ne_bytes(buf[pos..pos + 8].try_into().expect("8 bytes"));
        let off = i64::from_ne_bytes(buf[pos + 8..pos + 16].try_into().expect("8 bytes"));
        let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
        let kind = buf[pos + 18];
        assert!(reclen >= 20 && pos + reclen <= n, "bad d_reclen {reclen}");
        let name_area = &buf[pos + 19..pos + reclen];
        let len = name_area
            .iter()
            .position(|&b| b == 0)
            .expect("NUL in d_name");
        out.push(Dirent {
            ino,
            off,
            kind,
            name: name_area[..len].to_vec(),
        });
        pos += reclen;
    }
    Ok(out)
}

/// Every entry of a directory, "." and ".." included, read with
/// `getdents64` in buffers of `buf_len` bytes.
pub fn read_dir_all(path: &Path, buf_len: usize) -> io::Result<Vec<Dirent>> {
    let dir = open_mode(path, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let mut all = Vec::new();
    loop {
        let batch = getdents(&dir, buf_len)?;
        if batch.is_empty() {
            return Ok(all);
        }
        all.extend(batch);
    }
}

/// A name as an `OsStr`, for paths built from raw bytes.
pub fn os(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}
