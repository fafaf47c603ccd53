//! The filesystem's operations ([`Fs`]): what the FUSE adapter, tests and
//! `mkfs.biofs -d` call. Inode numbers are the on-disk ones; the root is 1,
//! as FUSE's.

use std::path::Path;

use super::types::*;

/// A mounted biofs.
pub struct Fs {
    _private: (),
}

/// Why a mount failed (with what to do about it, for the user).
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Format(#[from] crate::format::error::FormatError),
}

#[allow(unused_variables)]
impl Fs {
    /// Open the image or device at `path` and mount it: replay the journal,
    /// free the orphans of an earlier crash, start the writeback thread.
    pub fn mount(path: &Path, opts: &MountOptions) -> Result<Fs, MountError> {
        Err(MountError::Io(std::io::Error::other("not built yet")))
    }

    /// Write everything back, checkpoint, mark the filesystem clean and stop
    /// the engine. Later calls of any operation fail with EIO (or EROFS).
    /// Idempotent.
    pub fn shutdown(&self) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }

    pub fn is_read_only(&self) -> bool {
        false
    }

    /// The engine's statistics (merges, request sizes, ...), as text.
    pub fn stats(&self) -> String {
        String::new()
    }

    /// The entry `name` of directory `parent`; counts one lookup of it
    /// (released by [`Fs::forget`]).
    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        Err(Errno::ENOSYS)
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {}

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        Err(Errno::ENOSYS)
    }

    /// chmod/chown/truncate/utimens. Permission checks are the kernel's
    /// (`default_permissions`); this applies the change.
    pub fn setattr(&self, ctx: &Ctx, ino: u64, set: &SetAttr) -> FsResult<Attr> {
        Err(Errno::ENOSYS)
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        Err(Errno::ENOSYS)
    }

    /// A new fifo, socket, device node or regular file (`mode` has the
    /// type bits); counts one lookup.
    pub fn mknod(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> FsResult<Attr> {
        Err(Errno::ENOSYS)
    }

    pub fn mkdir(&self, ctx: &Ctx, parent: u64, name: &[u8], mode: u32) -> FsResult<Attr> {
        Err(Errno::ENOSYS)
    }

    /// A new regular file, opened (release it with [`Fs::release`]);
    /// EEXIST if the name exists. Counts one lookup.
    pub fn create(&self, ctx: &Ctx, parent: u64, name: &[u8], mode: u32) -> FsResult<Attr> {
        Err(Errno::ENOSYS)
    }

    pub fn symlink(&self, ctx: &Ctx, parent: u64, name: &[u8], target: &[u8]) -> FsResult<Attr> {
        Err(Errno::ENOSYS)
    }

    /// A new name for `ino` (not a directory); counts one lookup.
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> FsResult<Attr> {
        Err(Errno::ENOSYS)
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: RenameFlags,
    ) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }

    /// Open `ino` (`truncate`: O_TRUNC). An unlinked file stays until its
    /// last release.
    pub fn open(&self, ctx: &Ctx, ino: u64, truncate: bool) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }

    pub fn release(&self, ino: u64) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }

    /// Up to `size` bytes from `off` (fewer at the end of the file).
    pub fn read(&self, ctx: &Ctx, ino: u64, off: u64, size: u32) -> FsResult<Vec<u8>> {
        Err(Errno::ENOSYS)
    }

    /// Write `data` at `off` (at the end of the file if `append`); returns
    /// the bytes written.
    pub fn write(&self, ctx: &Ctx, ino: u64, off: u64, data: &[u8], append: bool) -> FsResult<u32> {
        Err(Errno::ENOSYS)
    }

    /// Make `ino`'s data (and, unless `datasync` and only times changed,
    /// its metadata) durable.
    pub fn fsync(&self, ino: u64, datasync: bool) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }

    /// Make everything durable.
    pub fn syncfs(&self) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }

    /// Entries of directory `ino` after `cookie` (0: from the start,
    /// including "." and ".."), at most `max`.
    pub fn readdir(&self, ino: u64, cookie: u64, max: usize) -> FsResult<Vec<DirEntryOut>> {
        Err(Errno::ENOSYS)
    }

    pub fn statfs(&self) -> FsResult<StatFs> {
        Err(Errno::ENOSYS)
    }

    /// `flags`: `libc::XATTR_CREATE` / `libc::XATTR_REPLACE` or 0.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        Err(Errno::ENOSYS)
    }

    /// Names, each followed by a NUL, as `listxattr(2)`.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        Err(Errno::ENOSYS)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }

    pub fn fallocate(
        &self,
        ctx: &Ctx,
        ino: u64,
        off: u64,
        len: u64,
        mode: FallocMode,
    ) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }

    /// SEEK_DATA / SEEK_HOLE from `off`: ENXIO past the end.
    pub fn lseek(&self, ino: u64, off: u64, whence: SeekWhence) -> FsResult<u64> {
        Err(Errno::ENOSYS)
    }
}
