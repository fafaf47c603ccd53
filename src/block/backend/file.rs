//! A backend over an image file or a block device.
//!
//! The userspace `blkdev` of bcachefs-tools (`linux/blkdev.c`): a bio's
//! segments become one `preadv`/`pwritev2`, `REQ_FUA` becomes `RWF_DSYNC`,
//! `REQ_PREFLUSH` becomes `fdatasync`, discard becomes a punched hole (files)
//! or `BLKDISCARD` (devices), write-zeroes becomes a punched hole (files;
//! `FALLOC_FL_ZERO_RANGE`, then written zero pages, where punching is
//! unsupported) or `BLKZEROOUT` (devices).
//!
//! Errors: every error is the `io::Error` the kernel produced, so
//! `raw_os_error()` is the device's errno (the queue maps it to a
//! [`crate::block::BlkStatus`]). The context (path, op, offset, length) is
//! logged with `log::warn!` where the error happens, because an
//! `io::Error` can't carry both a message and a raw errno.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{check_range, iov_len, BackendInfo, BlockBackend, DirectFd};
use crate::block::page::Page;
use crate::block::types::{PAGE_SIZE, SECTOR_SIZE};
use crate::sys;

/// Whether to bypass the page cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DirectMode {
    /// `O_DIRECT` where the filesystem allows it, buffered I/O (with one
    /// warning) where it refuses it with `EINVAL` (tmpfs).
    #[default]
    Auto,
    /// `O_DIRECT` or fail to open.
    Require,
    /// Buffered I/O through the page cache.
    Off,
}

/// How to open a [`FileBackend`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOptions {
    pub direct: DirectMode,
    /// Open `O_RDONLY`; every modifying call fails with `EROFS`.
    pub read_only: bool,
}

/// Most bytes one write-zeroes fallback call writes (256 pages, 1 MiB).
const ZERO_CHUNK_PAGES: usize = 256;

/// A [`BlockBackend`] over a regular file or a block device.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    path: PathBuf,
    info: BackendInfo,
    block_device: bool,
    /// An `O_EXCL` descriptor of the block device, held while the
    /// exclusive lock is (see [`FileBackend::lock_exclusive`]).
    excl: std::sync::Mutex<Option<File>>,
    /// The descriptor holding the `flock`, apart from the one the I/O uses
    /// so that [`FileBackend::unlock`] can let go of it while the data
    /// descriptor is still open.
    flock: std::sync::Mutex<Option<File>>,
    read_only: bool,
    /// Memory alignment `O_DIRECT` needs for user buffers (1 when buffered).
    mem_align: usize,
}

impl FileBackend {
    /// Opens an image file or block device.
    ///
    /// Fails with the errno of `open(2)` (`ENOENT`, `EACCES`, ...); with
    /// `EINVAL` under [`DirectMode::Require`] where `O_DIRECT` is refused;
    /// or with the errno of the size/block-size ioctls on a device.
    pub fn open(path: impl AsRef<Path>, opts: FileOptions) -> io::Result<FileBackend> {
        let path = path.as_ref();
        let (file, direct) = open_with_mode(path, opts)?;
        let block_device = sys::is_block_device(&file)?;
        let (size, lbs, pbs, mem_align) = if block_device {
            let size = sys::blk_size_bytes(&file)?;
            let lbs = sys::blk_logical_block_size(&file)?.max(SECTOR_SIZE as u32);
            let pbs = sys::blk_physical_block_size(&file)?.max(lbs);
            (size, lbs, pbs, lbs as usize)
        } else {
            let size = file.metadata()?.len();
            let align = if direct { sys::dio_align(&file) } else { None };
            let lbs = align
                .map(|a| a.offset_align)
                .filter(|a| a.is_power_of_two())
                .unwrap_or(SECTOR_SIZE as u32)
                .max(SECTOR_SIZE as u32);
            let mem = align.map_or(lbs, |a| a.mem_align.max(1)) as usize;
            (size, lbs, (PAGE_SIZE as u32).max(lbs), mem)
        };
        // A trailing partial block is unaddressable.
        let size_bytes = size - size % u64::from(lbs);
        Ok(FileBackend {
            file,
            path: path.to_path_buf(),
            info: BackendInfo {
                size_bytes,
                logical_block_size: lbs,
                physical_block_size: pbs,
                direct_io: direct,
                kind: if block_device { "blockdev" } else { "file" },
                discard_zeroes: !block_device,
            },
            block_device,
            excl: std::sync::Mutex::new(None),
            flock: std::sync::Mutex::new(None),
            read_only: opts.read_only,
            mem_align: if direct { mem_align.max(1) } else { 1 },
        })
    }

    /// Takes an exclusive advisory lock (`flock`) on the image or device
    /// without waiting, so that two biofs processes (a mount, mkfs, a
    /// repairing fsck) never write it at once; on a block device also an
    /// `O_EXCL` open, which the kernel refuses while the device is mounted
    /// or held by another exclusive user. Held until the backend is dropped.
    ///
    /// Fails with `EWOULDBLOCK` when another process holds the lock, or
    /// `EBUSY` when the block device is in use.
    pub fn lock_exclusive(&self) -> io::Result<()> {
        self.lock_exclusive_with(true)
    }

    /// [`FileBackend::lock_exclusive`], with the `O_EXCL` open of a block
    /// device only when `claim_device`: a `fuseblk` mount leaves the
    /// exclusive claim to the kernel, which takes it at mount(2) and
    /// refuses it while anyone else holds it.
    pub fn lock_exclusive_with(&self, claim_device: bool) -> io::Result<()> {
        let flock = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.path)?;
        sys::flock_exclusive_nonblock(&flock)?;
        if self.block_device && claim_device {
            let excl = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
                .open(&self.path)?;
            *self.excl.lock().unwrap_or_else(|e| e.into_inner()) = Some(excl);
        }
        *self.flock.lock().unwrap_or_else(|e| e.into_inner()) = Some(flock);
        Ok(())
    }

    /// Let go of what [`FileBackend::lock_exclusive`] took, before the
    /// backend is dropped: once a filesystem is shut down, the next mount
    /// or fsck may have the image while this process is still ending.
    pub fn unlock(&self) {
        self.excl.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.flock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Creates the image file `path` if missing and extends it (sparsely,
    /// with `ftruncate`) to `size_bytes` if shorter. Never shrinks a file.
    ///
    /// Fails with the errno of `open(2)`/`ftruncate(2)`.
    pub fn create(path: impl AsRef<Path>, size_bytes: u64) -> io::Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if file.metadata()?.len() < size_bytes {
            file.set_len(size_bytes)?;
        }
        Ok(())
    }

    /// The path this backend was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the backend is a block device rather than a regular file.
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Logs the context of a failed operation and hands the error back
    /// unchanged, so `raw_os_error()` survives.
    fn fail(&self, op: &str, offset: u64, len: u64, err: io::Error) -> io::Error {
        log::warn!(
            "{}: {op} at byte {offset} (+{len}) failed: {err}",
            self.path.display()
        );
        err
    }

    fn check(&self, op: &str, offset: u64, len: u64, modifies: bool) -> io::Result<()> {
        if modifies && self.read_only {
            return Err(self.fail(op, offset, len, io::Error::from_raw_os_error(libc::EROFS)));
        }
        check_range(&self.info, offset, len)
    }

    /// True when a buffer breaks the `O_DIRECT` memory or length rules, so
    /// the transfer must go through aligned bounce pages.
    fn needs_bounce<T: std::ops::Deref<Target = [u8]>>(&self, bufs: &[T]) -> bool {
        if !self.info.direct_io {
            return false;
        }
        let lbs = self.info.logical_block_size as usize;
        bufs.iter()
            .any(|b| (b.as_ptr() as usize) % self.mem_align != 0 || b.len() % lbs != 0)
    }

    /// The read path for buffers `O_DIRECT` can't take: read into aligned
    /// pages, then copy out.
    fn read_bounced(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        let total = iov_len(bufs) as usize;
        let mut pages = bounce_pages(total);
        {
            let mut iov: Vec<IoSliceMut<'_>> = page_slices_mut(&mut pages, total)
                .into_iter()
                .map(IoSliceMut::new)
                .collect();
            sys::preadv_full(&self.file, &mut iov, offset)?;
        }
        let mut pos = 0;
        for buf in bufs.iter_mut() {
            copy_from_pages(&pages, pos, buf);
            pos += buf.len();
        }
        Ok(())
    }

    /// The write path for buffers `O_DIRECT` can't take: copy into aligned
    /// pages, then write those.
    fn write_bounced(&self, bufs: &[IoSlice<'_>], offset: u64, fua: bool) -> io::Result<()> {
        let total = iov_len(bufs) as usize;
        let mut pages = bounce_pages(total);
        let mut pos = 0;
        for buf in bufs {
            copy_into_pages(&mut pages, pos, buf);
            pos += buf.len();
        }
        let iov: Vec<IoSlice<'_>> = pages
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let n = PAGE_SIZE.min(total - i * PAGE_SIZE);
                IoSlice::new(p.as_slice().get(..n).unwrap_or_default())
            })
            .collect();
        sys::pwritev_full(&self.file, &iov, offset, fua)
    }

    /// Writes zero pages over the range: the write-zeroes fallback where
    /// neither punching a hole nor `FALLOC_FL_ZERO_RANGE` is supported.
    fn write_zero_pages(&self, offset: u64, len: u64) -> io::Result<()> {
        let zero = Page::new();
        let chunk = (ZERO_CHUNK_PAGES * PAGE_SIZE) as u64;
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = (end - pos).min(chunk) as usize;
            let iov: Vec<IoSlice<'_>> = (0..n.div_ceil(PAGE_SIZE))
                .map(|i| {
                    let len = PAGE_SIZE.min(n - i * PAGE_SIZE);
                    IoSlice::new(zero.as_slice().get(..len).unwrap_or_default())
                })
                .collect();
            sys::pwritev_full(&self.file, &iov, pos, false)?;
            pos += n as u64;
        }
        Ok(())
    }
}

/// Opens `path` as `opts.direct` asks. Returns the file and whether it is
/// open with `O_DIRECT`.
fn open_with_mode(path: &Path, opts: FileOptions) -> io::Result<(File, bool)> {
    match opts.direct {
        DirectMode::Off => Ok((sys::open(path, opts.read_only, false)?, false)),
        DirectMode::Require => Ok((sys::open(path, opts.read_only, true)?, true)),
        DirectMode::Auto => match sys::open(path, opts.read_only, true) {
            Ok(file) => Ok((file, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::warn!(
                    "{}: O_DIRECT refused by the filesystem, falling back to buffered I/O",
                    path.display()
                );
                Ok((sys::open(path, opts.read_only, false)?, false))
            }
            Err(e) => Err(e),
        },
    }
}

fn bounce_pages(total: usize) -> Vec<Page> {
    (0..total.div_ceil(PAGE_SIZE))
        .map(|_| Page::new())
        .collect()
}

/// Mutable slices over the first `total` bytes of `pages`.
fn page_slices_mut(pages: &mut [Page], total: usize) -> Vec<&mut [u8]> {
    let mut left = total;
    pages
        .iter_mut()
        .map(|p| {
            let n = left.min(PAGE_SIZE);
            left -= n;
            // Fresh bounce pages are unique, so this never copies.
            p.make_mut().get_mut(..n).unwrap_or_default()
        })
        .collect()
}

/// Copies `dst.len()` bytes starting at byte `pos` of the page run into `dst`.
fn copy_from_pages(pages: &[Page], mut pos: usize, dst: &mut [u8]) {
    let mut done = 0;
    while done < dst.len() {
        let (idx, off) = (pos / PAGE_SIZE, pos % PAGE_SIZE);
        let Some(page) = pages.get(idx) else { return };
        let n = (PAGE_SIZE - off).min(dst.len() - done);
        let to = dst.get_mut(done..done + n);
        let Some((to, from)) = to.zip(page.as_slice().get(off..off + n)) else {
            return;
        };
        to.copy_from_slice(from);
        done += n;
        pos += n;
    }
}

/// Copies `src` into the page run starting at byte `pos`.
fn copy_into_pages(pages: &mut [Page], mut pos: usize, src: &[u8]) {
    let mut done = 0;
    while done < src.len() {
        let (idx, off) = (pos / PAGE_SIZE, pos % PAGE_SIZE);
        let Some(page) = pages.get_mut(idx) else {
            return;
        };
        let n = (PAGE_SIZE - off).min(src.len() - done);
        let to = page.make_mut().get_mut(off..off + n);
        let Some((to, from)) = to.zip(src.get(done..done + n)) else {
            return;
        };
        to.copy_from_slice(from);
        done += n;
        pos += n;
    }
}

impl BlockBackend for FileBackend {
    fn direct_fd(&self) -> Option<DirectFd> {
        use std::os::fd::AsRawFd;
        (self.info.direct_io && !self.read_only).then(|| DirectFd {
            fd: self.file.as_raw_fd(),
            mem_align: u32::try_from(self.mem_align).unwrap_or(u32::MAX).max(1),
        })
    }

    fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    fn read_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        let len = iov_len(bufs);
        self.check("read", offset, len, false)?;
        let res = if self.needs_bounce(bufs) {
            self.read_bounced(bufs, offset)
        } else {
            sys::preadv_full(&self.file, bufs, offset)
        };
        res.map_err(|e| self.fail("read", offset, len, e))
    }

    fn write_at(&self, bufs: &[IoSlice<'_>], offset: u64, fua: bool) -> io::Result<()> {
        let len = iov_len(bufs);
        let op = if fua { "write (FUA)" } else { "write" };
        self.check(op, offset, len, true)?;
        let res = if self.needs_bounce(bufs) {
            self.write_bounced(bufs, offset, fua)
        } else {
            sys::pwritev_full(&self.file, bufs, offset, fua)
        };
        res.map_err(|e| self.fail(op, offset, len, e))
    }

    fn flush(&self) -> io::Result<()> {
        sys::fdatasync(&self.file).map_err(|e| self.fail("flush", 0, 0, e))
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check("discard", offset, len, true)?;
        if len == 0 {
            return Ok(());
        }
        let res = if self.block_device {
            sys::blk_discard(&self.file, offset, len)
        } else {
            sys::punch_hole(&self.file, offset, len)
        };
        res.map_err(|e| self.fail("discard", offset, len, e))
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check("write-zeroes", offset, len, true)?;
        if len == 0 {
            return Ok(());
        }
        let res = if self.block_device {
            sys::blk_zeroout(&self.file, offset, len)
        } else {
            // Punching keeps a sparse image sparse (zeroing a 1 GiB tuple
            // region of a 1 TiB image must not allocate 1 GiB);
            // ZERO_RANGE allocates, so it is only the fallback.
            let unsupported = |e: &io::Error| e.raw_os_error() == Some(libc::EOPNOTSUPP);
            match sys::punch_hole(&self.file, offset, len) {
                Err(e) if unsupported(&e) => match sys::zero_range(&self.file, offset, len) {
                    Err(e) if unsupported(&e) => self.write_zero_pages(offset, len),
                    other => other,
                },
                other => other,
            }
        };
        res.map_err(|e| self.fail("write-zeroes", offset, len, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_copies_cross_page_boundaries() {
        let mut pages = bounce_pages(3 * PAGE_SIZE);
        let src: Vec<u8> = (0..6000).map(|i| (i % 251) as u8).collect();
        copy_into_pages(&mut pages, 1000, &src);
        let mut back = vec![0u8; 6000];
        copy_from_pages(&pages, 1000, &mut back);
        assert_eq!(back, src);
        assert!(pages[0].as_slice()[..1000].iter().all(|&b| b == 0));
        assert_eq!(pages[1].as_slice()[0], src[PAGE_SIZE - 1000]);
    }
}
