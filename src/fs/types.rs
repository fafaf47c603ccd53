//! The filesystem core's API types: what [`super::Fs`] takes and returns.
//! They are FUSE-free; `src/fuse/` translates them.

use crate::format::inode::{FileType, Timespec};

/// Errors are the errno values the kernel's filesystems return.
pub use nix::errno::Errno;

/// Result of a filesystem operation.
pub type FsResult<T> = std::result::Result<T, Errno>;

/// Who asks: the caller's credentials and process (for ownership of new
/// inodes and for the io_context of the bios it causes).
#[derive(Clone, Copy, Debug, Default)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Ctx {
    /// Root, pid 0: for tools and tests.
    pub fn root() -> Ctx {
        Ctx::default()
    }
}

/// An inode's attributes, as `stat(2)` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    /// 512-byte units, as `st_blocks`.
    pub blocks: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
    pub kind: FileType,
    /// Permission bits, with setuid, setgid and sticky (no type bits).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    pub generation: u32,
}

/// A time to set: a given time, or now (`UTIME_NOW`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(Timespec),
}

/// The changes of a `setattr` (`None`: leave alone).
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<Timespec>,
}

/// `renameat2` flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
}

/// `fallocate(2)` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallocMode {
    /// Allocate, extending the size.
    Allocate,
    /// Allocate, size unchanged (`FALLOC_FL_KEEP_SIZE`).
    KeepSize,
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`.
    PunchHole,
    /// `FALLOC_FL_ZERO_RANGE` (with `keep_size` for `FALLOC_FL_KEEP_SIZE`).
    ZeroRange { keep_size: bool },
}

/// `lseek(2)` targets the core answers (SEEK_SET/CUR/END are the kernel's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeekWhence {
    Data,
    Hole,
}

/// One directory entry of a readdir; `cookie` resumes after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntryOut {
    pub ino: u64,
    pub name: Vec<u8>,
    pub kind: FileType,
    pub cookie: u64,
}

/// `statfs(2)` counts, in 4 KiB blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// A mount's requests in flight at the device (`queue_depth=`): random
/// I/O at QD32 finds 32 requests at the device, as fio's reference does.
pub const DEFAULT_QUEUE_DEPTH: usize = 32;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    pub read_only: bool,
    /// Memory for the caches, in bytes (`cache_size=`): the metadata
    /// buffer cache and the integrity tuple cache take their share of it,
    /// the page cache the rest ([`MountOptions::page_cache_bytes`]).
    pub cache_bytes: u64,
    /// Metadata buffer cache limit in bytes (`None`: an eighth of
    /// `cache_bytes`, at least 16 MiB).
    pub meta_cache_bytes: Option<u64>,
    /// Engine queue workers (0: the engine's default).
    pub workers: usize,
    /// Requests in flight at the device, spread over the workers through
    /// io_uring where the device allows (0: one per worker, blocking).
    pub queue_depth: usize,
    /// Verify data reads against their integrity tuples.
    pub verify_reads: bool,
    /// Seconds between background commits (and writeback of dirty pages).
    pub commit_interval_secs: u64,
    /// How the image's exclusive lock is taken.
    pub lock: crate::format::dev::LockHow,
    /// When reads update atime (`relatime`, `strictatime`, `noatime`).
    pub atime: AtimeMode,
    /// Directory reads leave atime alone (`nodiratime`).
    pub nodiratime: bool,
}

/// When a read of a file's data or a directory's entries updates its
/// atime: the mount's `noatime`, `relatime` (the default) or
/// `strictatime`, as the kernel's `MNT_NOATIME`, `MNT_RELATIME` and
/// `MS_STRICTATIME`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AtimeMode {
    /// Never.
    NoAtime,
    /// When atime is not after mtime or ctime, or is a day old.
    #[default]
    Relatime,
    /// On every read.
    Strict,
}

impl MountOptions {
    /// The page cache's limit: `cache_bytes` less the buffer cache and the
    /// integrity tuple cache, but at least half of `cache_bytes` (a
    /// `meta_cache_size=` set above that takes memory beyond the budget).
    pub fn page_cache_bytes(&self) -> u64 {
        let others = self.meta_cache_blocks() as u64 * crate::format::BLOCK_SIZE_U64
            + crate::format::dev::TUPLE_CACHE_BYTES;
        self.cache_bytes
            .saturating_sub(others)
            .max(self.cache_bytes / 2)
    }

    /// The buffer cache's capacity, in blocks.
    pub fn meta_cache_blocks(&self) -> usize {
        match self.meta_cache_bytes {
            Some(n) => usize::try_from(n / crate::format::BLOCK_SIZE as u64).unwrap_or(usize::MAX),
            None => super::buffer::default_blocks(self.cache_bytes),
        }
    }
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: false,
            cache_bytes: 256 << 20,
            meta_cache_bytes: None,
            workers: 0,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            verify_reads: true,
            commit_interval_secs: 5,
            lock: crate::format::dev::LockHow::default(),
            atime: AtimeMode::Relatime,
            nodiratime: false,
        }
    }
}
