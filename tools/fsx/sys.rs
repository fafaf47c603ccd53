//! The system calls fsx makes, each returning the errno on failure. All of
//! fsx's `unsafe` is here.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub type Errno = i32;

fn errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The page size mappings are aligned to.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// An open file descriptor, closed on drop.
pub struct Fd(i32);

impl Fd {
    pub fn open(path: &Path, truncate: bool) -> Result<Fd, Errno> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
        let mut flags = libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC;
        if truncate {
            flags |= libc::O_TRUNC;
        }
        // SAFETY: c is a NUL-terminated path that outlives the call.
        let fd = unsafe { libc::open(c.as_ptr(), flags, 0o644) };
        if fd < 0 {
            Err(errno())
        } else {
            Ok(Fd(fd))
        }
    }

    /// pread until `buf` is full or EOF; the count read.
    pub fn pread(&self, buf: &mut [u8], off: u64) -> Result<usize, Errno> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: rest is a live, writable buffer of rest.len() bytes.
            let n = unsafe {
                libc::pread(
                    self.0,
                    rest.as_mut_ptr().cast(),
                    rest.len(),
                    (off + done as u64) as libc::off_t,
                )
            };
            if n < 0 {
                let e = errno();
                if e == libc::EINTR {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                break;
            }
            done += n as usize;
        }
        Ok(done)
    }

    /// pwrite all of `buf`; a short write that makes no progress is EIO.
    pub fn pwrite(&self, buf: &[u8], off: u64) -> Result<(), Errno> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &buf[done..];
            // SAFETY: rest is a live buffer of rest.len() bytes.
            let n = unsafe {
                libc::pwrite(
                    self.0,
                    rest.as_ptr().cast(),
                    rest.len(),
                    (off + done as u64) as libc::off_t,
                )
            };
            if n < 0 {
                let e = errno();
                if e == libc::EINTR {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(libc::EIO);
            }
            done += n as usize;
        }
        Ok(())
    }

    pub fn truncate(&self, size: u64) -> Result<(), Errno> {
        // SAFETY: plain syscall on an owned descriptor.
        check(unsafe { libc::ftruncate(self.0, size as libc::off_t) })
    }

    pub fn fallocate(&self, mode: i32, off: u64, len: u64) -> Result<(), Errno> {
        // SAFETY: plain syscall on an owned descriptor.
        check(unsafe { libc::fallocate(self.0, mode, off as libc::off_t, len as libc::off_t) })
    }

    pub fn fsync(&self) -> Result<(), Errno> {
        // SAFETY: plain syscall on an owned descriptor.
        check(unsafe { libc::fsync(self.0) })
    }

    pub fn size(&self) -> Result<u64, Errno> {
        // SAFETY: st is written by fstat before it is read.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: st is a valid out-pointer.
        check(unsafe { libc::fstat(self.0, &mut st) })?;
        Ok(st.st_size as u64)
    }

    /// Read `buf.len()` bytes at `off` through a shared read-only mapping.
    /// The range must lie inside the file (else SIGBUS).
    pub fn map_read(&self, buf: &mut [u8], off: u64) -> Result<(), Errno> {
        let m = Map::new(self, off, buf.len(), false)?;
        buf.copy_from_slice(m.slice(off, buf.len()));
        Ok(())
    }

    /// Store `data` at `off` through a shared writable mapping, then
    /// msync(MS_SYNC). The range must lie inside the file.
    pub fn map_write(&self, data: &[u8], off: u64) -> Result<(), Errno> {
        let mut m = Map::new(self, off, data.len(), true)?;
        m.slice_mut(off, data.len()).copy_from_slice(data);
        m.sync()
    }
}

impl Fd {
    /// Close now (before an unmount); the value stays, closed.
    pub fn close_now(&mut self) {
        if self.0 >= 0 {
            // SAFETY: the descriptor is owned and closed once (-1 after).
            unsafe { libc::close(self.0) };
            self.0 = -1;
        }
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        self.close_now();
    }
}

fn check(rc: i32) -> Result<(), Errno> {
    if rc < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// A shared mapping of `[start, start+len)` of a file, page-aligned.
struct Map {
    addr: *mut libc::c_void,
    start: u64,
    len: usize,
}

impl Map {
    fn new(fd: &Fd, off: u64, len: usize, write: bool) -> Result<Map, Errno> {
        let start = off & !(page_size() - 1);
        let maplen = (off - start) as usize + len;
        let prot = if write {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping chosen by the kernel; checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                maplen,
                prot,
                libc::MAP_SHARED,
                fd.0,
                start as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(errno());
        }
        Ok(Map {
            addr,
            start,
            len: maplen,
        })
    }

    fn slice(&self, off: u64, len: usize) -> &[u8] {
        // SAFETY: [off, off+len) lies inside the mapping (Map::new), which
        // lives as long as the returned borrow.
        unsafe {
            std::slice::from_raw_parts(self.addr.cast::<u8>().add((off - self.start) as usize), len)
        }
    }

    fn slice_mut(&mut self, off: u64, len: usize) -> &mut [u8] {
        // SAFETY: as in slice(), and the mapping is writable (write=true).
        unsafe {
            std::slice::from_raw_parts_mut(
                self.addr.cast::<u8>().add((off - self.start) as usize),
                len,
            )
        }
    }

    fn sync(&self) -> Result<(), Errno> {
        // SAFETY: addr/len are this live mapping.
        check(unsafe { libc::msync(self.addr, self.len, libc::MS_SYNC) })
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: addr/len are this mapping, unmapped once.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}
