//! [`FuseFs`]: `fuser::Filesystem` over the core's [`Fs`]. Each request
//! becomes one call of the core (two for an `O_SYNC` write, one per entry
//! for a readdirplus); each reply error goes through [`to_fuse`].
//!
//! Failure contract: every request is answered exactly once. Nothing here
//! unwraps or indexes by a request's values; a panic all the same (a bug,
//! in the core or here) is caught per request by [`guarded`], and the
//! reply's `Drop` answers EIO, so one bad request costs one EIO instead of
//! an event-loop thread (and with the last one, the mount).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::acl;
use super::convert::{self, OpenFh, Seek, Xattr};
use super::counts;
use super::errno::{own, to_fuse};
use super::flush::{Flusher, KernelCached};
use super::readdir::DirReply;
use crate::fs::{Attr, Ctx, Errno, Filled, Fs, FsResult, SetAttr};

/// The virtual xattr of the root directory that holds [`Fs::stats`]:
/// answered by the adapter, never stored, not listed, not settable.
/// (`trusted.*`: only CAP_SYS_ADMIN reads it; others get ENODATA.)
pub const STATS_XATTR: &str = "trusted.biofs.stats";

/// The virtual xattr of the root that says whether the core is writable
/// now: `rw`, `ro` (remounted read-only; `remount,rw` may undo it) or
/// `ro-only` (mounted read-only: the device is open read-only). `biofs -o
/// remount` reads it to know the daemon has followed the kernel.
pub const MODE_XATTR: &str = "trusted.biofs.mode";

/// The virtual xattr of the root that holds the serving process's id:
/// `biofs umount` waits for that process to end.
pub const PID_XATTR: &str = "trusted.biofs.pid";

/// The root's inode number, FUSE's and the core's.
const ROOT: u64 = 1;

/// How long the kernel may trust attributes and entries, negative ones
/// (a name that does not exist) included. biofs is the only writer of its
/// image and every change of a name or an attribute reaches it through
/// this kernel, which updates or drops its copy as it sends the request
/// (or, after a READ or WRITE, marks the times, size and blocks stale), so
/// a copy stays right however long it is kept. What changes with no
/// request about it, the block count when writeback or a commit gives a
/// file blocks, is sent as an attributes-only FUSE_NOTIFY_INVAL_INODE
/// ([`crate::fs::Fs::on_blocks_changed`]). The kernel still forgets under
/// memory pressure. An hour, as `fuse(4)`'s cache=always filesystems
/// (virtiofs) keep theirs for a day: each second the kernel may keep a
/// copy saves a LOOKUP or GETATTR round trip on every stat, open and
/// unlink.
pub(super) const TTL: Duration = Duration::from_secs(3600);

/// Largest write (and readahead) to negotiate: the kernel caps requests at
/// `max_pages` (256 pages here), which fuser derives from these.
const MAX_IO: u32 = 1 << 20;

/// Zeros for the answer to a read of holes: the largest read, never
/// written (so its pages are the kernel's shared zero page).
static ZEROS: [u8; MAX_IO as usize] = [0; MAX_IO as usize];

/// What the adapter negotiates with the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuseConfig {
    /// FUSE_WRITEBACK_CACHE: the kernel caches writes and owns file sizes.
    /// Off by default: with it a write() never reaches biofs, so a full
    /// filesystem can't refuse it (the error surfaces at fsync or close,
    /// after the application believed the data written); biofs has its
    /// own page cache.
    pub writeback_cache: bool,
    /// FUSE_POSIX_ACL: the kernel enforces POSIX ACLs stored as xattrs.
    /// On by default, as on ext4 (`-o noacl` turns it off).
    pub posix_acl: bool,
}

impl Default for FuseConfig {
    fn default() -> Self {
        FuseConfig {
            writeback_cache: false,
            posix_acl: true,
        }
    }
}

/// The FUSE filesystem of a mounted biofs.
pub struct FuseFs {
    pub(super) fs: Arc<Fs>,
    cfg: FuseConfig,
    ended: Arc<OnceLock<FsResult<()>>>,
    /// The kernel's page cache of the mount's files, once mounted: see
    /// [`FuseFs::write_back_cached`], [`FuseFs::answer_direct_write`].
    pub(super) flusher: Arc<OnceLock<Flusher>>,
    /// The files the kernel may cache pages of (see [`KernelCached`]).
    pub(super) kernel_cached: KernelCached,
}

impl FuseFs {
    pub fn new(fs: Arc<Fs>, cfg: FuseConfig) -> FuseFs {
        FuseFs {
            fs,
            cfg,
            ended: Arc::new(OnceLock::new()),
            flusher: Arc::new(OnceLock::new()),
            kernel_cached: KernelCached::default(),
        }
    }

    /// Where the session's [`Flusher`] goes once there is one (for
    /// [`FuseFs::write_back_cached`]; without it lseek asks the core only).
    pub(super) fn flusher_slot(&self) -> Arc<OnceLock<Flusher>> {
        self.flusher.clone()
    }

    /// Where `destroy` leaves the result of [`Fs::shutdown`] (empty until
    /// the session has ended).
    pub fn shutdown_result(&self) -> Arc<OnceLock<FsResult<()>>> {
        self.ended.clone()
    }

    /// The capabilities to ask of the kernel.
    pub fn wanted_capabilities(cfg: FuseConfig) -> InitFlags {
        let mut want = InitFlags::FUSE_ASYNC_READ
            // Asynchronous direct I/O (libaio, io_uring with O_DIRECT)
            // reaches biofs as concurrent requests, not one at a time.
            | InitFlags::FUSE_ASYNC_DIO
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            // O_TRUNC reaches open (truncate=true) instead of a SETATTR.
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            // Symlink targets stay in the page cache: every change to
            // them comes through this kernel.
            | InitFlags::FUSE_CACHE_SYMLINKS
            // File handles (name_to_handle_at, NFS export) outlive the
            // kernel's inode: it decodes one by a LOOKUP of "." in the
            // handle's node (an inode number, stable across mounts) and
            // of ".." to reconnect a directory, and compares generations.
            | InitFlags::FUSE_EXPORT_SUPPORT
            // Clearing setuid and setgid is biofs's (privs.rs); the
            // superblock then gets SB_NOSEC, and a write no longer costs a
            // GETXATTR of security.capability.
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        if cfg.writeback_cache {
            want |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        if cfg.posix_acl {
            // The umask comes apart from the mode: a default ACL replaces it.
            want |= InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK;
        }
        want
    }

    /// Make a new inode (`make` is given the mode to create it with):
    /// with ACLs on (unless `-o noacl`), with the mode and ACLs its directory's default ACL
    /// gives, or else the umask (the kernel leaves both to us then);
    /// otherwise as asked (the kernel has applied the umask).
    fn make_inode(
        &self,
        parent: u64,
        mode: u32,
        umask: u32,
        make: impl FnOnce(u32) -> FsResult<Attr>,
    ) -> FsResult<Attr> {
        if !self.cfg.posix_acl {
            return make(mode);
        }
        let (mode, inherit) = self.acl_create_mode(parent, mode, umask)?;
        let a = make(mode)?;
        self.acl_inherit(a.ino, a.kind, inherit);
        Ok(a)
    }

    /// Shut the core down once; the result is kept for the session.
    fn shut_down(&self) {
        let r = self.fs.shutdown();
        if let Err(e) = r {
            log::error!("shutdown: {e}");
        }
        let _ = self.ended.set(r);
    }

    /// True for the root's virtual xattrs ([`STATS_XATTR`], [`MODE_XATTR`],
    /// [`PID_XATTR`]).
    fn virtual_xattr(&self, ino: INodeNo, name: &OsStr) -> bool {
        ino.0 == ROOT && self.virtual_value(name).is_some()
    }

    /// The value of a virtual xattr of the root, computed now.
    fn virtual_value(&self, name: &OsStr) -> Option<Vec<u8>> {
        let name = name.as_bytes();
        if name == STATS_XATTR.as_bytes() {
            Some(format!("{}{}", self.fs.stats(), counts::report()).into_bytes())
        } else if name == MODE_XATTR.as_bytes() {
            let mode = match (self.fs.is_read_only(), self.fs.can_be_writable()) {
                (false, _) => "rw",
                (true, true) => "ro",
                (true, false) => "ro-only",
            };
            Some(mode.as_bytes().to_vec())
        } else if name == PID_XATTR.as_bytes() {
            Some(std::process::id().to_string().into_bytes())
        } else {
            None
        }
    }

    /// Under `-o noacl` the ACL attributes don't exist (EOPNOTSUPP).
    fn acl_refused(&self, name: &OsStr) -> bool {
        !self.cfg.posix_acl && acl::is_acl_name(name.as_bytes())
    }
}

/// Run one request's handling; a panic in it is logged and its reply,
/// dropped unsent while unwinding, answers EIO.
fn guarded(op: &'static str, f: impl FnOnce()) {
    let start = Instant::now();
    if panic::catch_unwind(AssertUnwindSafe(f)).is_err() {
        log::error!("{op}: panicked; the request was answered EIO");
    }
    counts::record(op, start);
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn reply_entry(reply: ReplyEntry, r: FsResult<Attr>) {
    match r {
        Ok(a) => reply.entry(&TTL, &convert::file_attr(&a), generation(&a)),
        Err(e) => reply.error(to_fuse(e)),
    }
}

/// A LOOKUP's answer: the entry, or for a name that does not exist a
/// negative entry (node id 0) the kernel may keep for [`TTL`], so that
/// looking the name up again (a `stat` of a missing file, the lookup
/// before each create) costs no round trip until a create, link or
/// rename through the kernel replaces it. "." and ".." (file handle
/// lookups) get the plain ENOENT.
fn reply_lookup(reply: ReplyEntry, name: &[u8], r: FsResult<Attr>) {
    match r {
        Err(Errno::ENOENT) if !convert::is_dot(name) => {
            reply.entry(&TTL, &convert::negative_attr(), Generation(0))
        }
        r => reply_entry(reply, r),
    }
}

/// The generation a file handle of `a` carries: the inode's, except the
/// root's, which FUSE fixes at 0 (a LOOKUP of ".." that reaches the root
/// must agree with it).
pub(super) fn generation(a: &Attr) -> Generation {
    if a.ino == ROOT {
        Generation(0)
    } else {
        Generation(u64::from(a.generation))
    }
}

fn reply_attr(reply: ReplyAttr, r: FsResult<Attr>) {
    match r {
        Ok(a) => reply.attr(&TTL, &convert::file_attr(&a)),
        Err(e) => reply.error(to_fuse(e)),
    }
}

fn reply_empty(reply: ReplyEmpty, r: FsResult<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(to_fuse(e)),
    }
}

fn reply_xattr(reply: ReplyXattr, value: FsResult<Vec<u8>>, size: u32) {
    let value = match value {
        Ok(v) => v,
        Err(e) => return reply.error(to_fuse(e)),
    };
    match convert::xattr_reply(&value, size) {
        Ok(Xattr::Size(n)) => reply.size(n),
        Ok(Xattr::Data(d)) => reply.data(d),
        Err(e) => reply.error(e),
    }
}

/// Whether open flags `flags` ask for direct I/O (the kernel's page
/// cache bypassed).
fn is_direct(flags: i32) -> bool {
    flags & libc::O_DIRECT != 0
}

/// Evaluate to the checked name, or answer the request with its error.
macro_rules! name_or_reply {
    ($name:expr, $reply:expr) => {
        match convert::name($name) {
            Ok(n) => n,
            Err(e) => return $reply.error(e),
        }
    };
}

/// Read reply buffers, kept for the next read (a fresh megabyte buffer
/// per read is faulted in and zeroed by the kernel every time). Last in,
/// first out, so the few reads in flight at once reuse the same few
/// buffers, whatever the number of event-loop threads.
static READ_BUFS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

fn take_read_buf() -> Vec<u8> {
    READ_BUFS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
        .unwrap_or_default()
}

fn give_back_read_buf(buf: Vec<u8>) {
    READ_BUFS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(buf);
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let want = FuseFs::wanted_capabilities(self.cfg);
        let have = config.capabilities();
        if self.cfg.posix_acl && !have.contains(InitFlags::FUSE_POSIX_ACL) {
            return Err(io::Error::other(
                "POSIX ACLs: this kernel's FUSE does not offer them (FUSE_POSIX_ACL); \
                 mount with -o noacl",
            ));
        }
        let missing = want & !have;
        if !missing.is_empty() {
            log::warn!("the kernel does not offer FUSE capabilities {missing:?}");
        }
        if let Err(bits) = config.add_capabilities(want & have) {
            log::warn!("FUSE capabilities {bits:?} refused");
        }
        if let Err(max) = config.set_max_write(MAX_IO) {
            let _ = config.set_max_write(max);
        }
        // The kernel offers its readahead (128 KiB here) as the ceiling.
        if let Err(max) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(max);
        }
        // Room for readahead and writeback requests in flight in parallel.
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        log::debug!("FUSE init: asked {:?}", want & have);
        Ok(())
    }

    fn destroy(&mut self) {
        self.shut_down();
    }

    /// FUSE_DESTROY (a fuseblk mount's `umount` waits for its answer):
    /// everything written back and committed, the superblock marked clean
    /// and the image let go before `umount` returns.
    fn destroy_request(&self, _req: &Request) {
        guarded("destroy", || self.shut_down());
    }

    /// `sync(2)` and `syncfs(2)` (FUSE_SYNCFS; fuseblk mounts only).
    fn syncfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyEmpty) {
        guarded("syncfs", || reply_empty(reply, self.fs.syncfs()));
    }

    /// Also the kernel's lookups by node id for file handles: "." (the
    /// node itself; ENOENT once freed, which the kernel makes ESTALE) and
    /// ".." (a directory's parent), counted as lookups like any other.
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guarded("lookup", || {
            let name = name_or_reply!(name, reply);
            reply_lookup(reply, name, self.fs.lookup(parent.0, name));
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        // batch_forget's default calls this for each node.
        guarded("forget", || {
            self.fs.forget(ino.0, nlookup);
            self.forget_kernel_cached(ino.0);
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        guarded("getattr", || reply_attr(reply, self.fs.getattr(ino.0)));
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        guarded("setattr", || {
            let ctx = ctx(req);
            // The kernel sends the type bits too; a chmod changes only
            // the permission bits (with setuid, setgid and sticky).
            let mut mode = mode.map(|m| m & 0o7777);
            // A truncate clears setuid and setgid as a write does. So does
            // a SETATTR that sets nothing: what the kernel's FUSE sends
            // for file_remove_privs() when its own rules kill no bit (a
            // write through the writeback cache, which never reaches
            // write() here with the writer's credentials).
            let nothing = mode.is_none()
                && uid.is_none()
                && gid.is_none()
                && atime.is_none()
                && mtime.is_none()
                && ctime.is_none();
            if size.is_some() || nothing {
                mode = match self.killed_mode(&ctx, ino.0, mode) {
                    Ok(m) => m,
                    Err(e) => return reply.error(to_fuse(e)),
                };
            }
            // A chown clears setuid and setgid (privs.rs). chown(-1, -1)
            // comes as a SETATTR of ctime alone with the writeback cache,
            // and as one that sets nothing without it (taken above as a
            // data change: the same bits go, unless the caller has
            // CAP_FSETID, where a chown would still clear setuid).
            let ctime_alone = ctime.is_some()
                && mode.is_none()
                && size.is_none()
                && atime.is_none()
                && mtime.is_none();
            if uid.is_some() || gid.is_some() || ctime_alone {
                mode = match self.owner_killed_mode(&ctx, ino.0, mode) {
                    Ok(m) => m,
                    Err(e) => return reply.error(to_fuse(e)),
                };
            }
            let set = SetAttr {
                mode,
                uid,
                gid,
                size,
                atime: atime.map(convert::time_set),
                mtime: mtime.map(convert::time_set),
                ctime: ctime.map(convert::request_timespec),
            };
            reply_attr(reply, self.fs.setattr(&ctx, ino.0, &set));
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        guarded("readlink", || match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(to_fuse(e)),
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        guarded("mknod", || {
            let name = name_or_reply!(name, reply);
            let r = self.make_inode(parent.0, mode, umask, |mode| {
                self.fs.mknod(&ctx(req), parent.0, name, mode, rdev)
            });
            reply_entry(reply, r);
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        guarded("mkdir", || {
            let name = name_or_reply!(name, reply);
            let r = self.make_inode(parent.0, mode, umask, |mode| {
                self.fs.mkdir(&ctx(req), parent.0, name, mode)
            });
            reply_entry(reply, r);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("unlink", || {
            let name = name_or_reply!(name, reply);
            reply_empty(reply, self.fs.unlink(parent.0, name));
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("rmdir", || {
            let name = name_or_reply!(name, reply);
            reply_empty(reply, self.fs.rmdir(parent.0, name));
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        guarded("symlink", || {
            let name = name_or_reply!(link_name, reply);
            let target = target.as_os_str().as_bytes();
            reply_entry(reply, self.fs.symlink(&ctx(req), parent.0, name, target));
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        guarded("rename", || {
            let name = name_or_reply!(name, reply);
            let newname = name_or_reply!(newname, reply);
            let flags = match convert::rename_flags(flags.bits()) {
                Ok(f) => f,
                Err(e) => return reply.error(e),
            };
            let r = self.fs.rename(parent.0, name, newparent.0, newname, flags);
            reply_empty(reply, r);
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        guarded("link", || {
            let name = name_or_reply!(newname, reply);
            reply_entry(reply, self.fs.link(ino.0, newparent.0, name));
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guarded("open", || {
            let truncate = flags.0 & libc::O_TRUNC != 0;
            if truncate {
                // With FUSE_ATOMIC_O_TRUNC the kernel leaves the truncate's
                // setuid and setgid clearing to us entirely.
                if let Err(e) = self.remove_privs(&ctx(req), ino.0) {
                    return reply.error(to_fuse(e));
                }
            }
            match self.fs.open(&ctx(req), ino.0, truncate) {
                Ok(()) => {
                    if !is_direct(flags.0) {
                        self.note_kernel_cached(ino.0);
                    }
                    let fh = OpenFh::from_flags(flags.0).to_fh();
                    // Every change to a file's data comes through this
                    // kernel: its cached pages stay valid across opens.
                    // Unless a read must update atime: the kernel then
                    // drops them, so that the next read reaches biofs.
                    let reads = flags.0 & libc::O_ACCMODE != libc::O_WRONLY
                        && flags.0 & libc::O_NOATIME == 0;
                    let keep = if reads && self.fs.atime_due(ino.0) {
                        FopenFlags::empty()
                    } else {
                        FopenFlags::FOPEN_KEEP_CACHE
                    };
                    reply.opened(FileHandle(fh), keep)
                }
                Err(e) => reply.error(to_fuse(e)),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guarded("read", || {
            // Before the read: a direct write that lands after it sees
            // the note, and drops what this read brings into the kernel.
            if !is_direct(flags.0) {
                self.note_kernel_cached(ino.0);
            }
            let mut buf = take_read_buf();
            match self.fs.read_into(&ctx(req), ino.0, offset, size, &mut buf) {
                Ok(filled) => {
                    // Before the reply: the kernel then drops its cached
                    // atime (fuse_invalidate_atime), and stat asks again.
                    if flags.0 & libc::O_NOATIME == 0 {
                        self.fs.accessed(ino.0);
                    }
                    match filled {
                        Filled::Buffer => reply.data(&buf),
                        Filled::Zeros(n) => match ZEROS.get(..n) {
                            Some(zeros) => reply.data(zeros),
                            None => {
                                buf.resize(n, 0);
                                reply.data(&buf)
                            }
                        },
                    }
                }
                Err(e) => reply.error(to_fuse(e)),
            }
            give_back_read_buf(buf);
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        guarded("write", || {
            // Writeback from the page cache carries a guessed handle and
            // no caller's O_APPEND or O_SYNC: the kernel already placed it
            // and syncs through FSYNC. Otherwise the handle's flags and
            // the write's own (RWF_SYNC, RWF_DSYNC) count.
            let from_cache = write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
            // O_DIRECT in the file's flags: the kernel's page cache was
            // bypassed (and may hold the range's old bytes).
            let direct = !from_cache && is_direct(flags.0);
            if !direct {
                self.note_kernel_cached(ino.0);
            }
            let f = if from_cache {
                OpenFh::default()
            } else {
                OpenFh::from_fh(fh.0).union(OpenFh::from_flags(flags.0))
            };
            // With the writeback cache the kernel owns the size, and has
            // put an O_APPEND write at its end.
            let append = f.append && !self.cfg.writeback_cache;
            if !from_cache {
                if let Err(e) = self.remove_privs(&ctx(req), ino.0) {
                    return reply.error(to_fuse(e));
                }
            }
            let n = match self.fs.write(&ctx(req), ino.0, offset, data, append) {
                Ok(n) => n,
                Err(e) => return reply.error(to_fuse(e)),
            };
            let synced = if f.sync || f.dsync {
                self.fs.fsync(ino.0, !f.sync).map_err(to_fuse)
            } else {
                Ok(())
            };
            let answer = move || match synced {
                Ok(()) => reply.written(n),
                Err(e) => reply.error(e),
            };
            if !direct {
                return answer();
            }
            // The data landed (synced or not): the kernel's copies of its
            // range go. An appending write landed where biofs put it:
            // the whole file, then.
            let (off, len) = if append {
                (0, 0)
            } else {
                (offset, u64::from(n))
            };
            self.answer_direct_write(ino.0, off, len, answer);
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is buffered per open file here (durability is fsync's)
        // and locks are the kernel's: ENOSYS tells the kernel's FUSE to
        // send no more FLUSHes (`no_flush`), a round trip saved on every
        // close(). With the writeback cache the kernel still writes the
        // file back at close and reports its errors there.
        guarded("flush", || reply.error(fuser::Errno::ENOSYS));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        guarded("release", || reply_empty(reply, self.fs.release(ino.0)));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded("fsync", || {
            let r = self.fs.fsync(ino.0, datasync);
            self.invalidate_attrs(ino.0);
            reply_empty(reply, r)
        });
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Stateless: a readdir resumes from the cookie the kernel keeps.
        guarded("opendir", || {
            reply.opened(FileHandle(0), FopenFlags::empty())
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        guarded("readdir", || {
            self.fs.accessed(ino.0);
            self.fill_dir(ino.0, offset, DirReply::Plain(reply))
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        guarded("readdirplus", || {
            self.fs.accessed(ino.0);
            self.fill_dir(ino.0, offset, DirReply::Plus(reply))
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        guarded("releasedir", || reply.ok());
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded("fsyncdir", || {
            reply_empty(reply, self.fs.fsync(ino.0, datasync))
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        guarded("statfs", || match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(to_fuse(e)),
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        guarded("setxattr", || {
            if self.virtual_xattr(ino, name) {
                return reply.error(own(libc::EPERM));
            }
            if position != 0 {
                return reply.error(own(libc::EINVAL));
            }
            if self.acl_refused(name) {
                return reply.error(own(libc::EOPNOTSUPP));
            }
            let r = if self.cfg.posix_acl && name.as_bytes() == acl::ACCESS {
                self.acl_set_access(&ctx(req), ino.0, value)
            } else {
                self.fs.setxattr(ino.0, name.as_bytes(), value, flags)
            };
            reply_empty(reply, r);
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // Named, not computed: computing the stats twice per read of them
        // would be waste.
        let op = if ino.0 == ROOT && name.as_bytes().starts_with(b"trusted.biofs.") {
            "getxattr_biofs"
        } else {
            "getxattr"
        };
        guarded(op, || {
            let value = if let Some(v) = self
                .virtual_xattr(ino, name)
                .then(|| self.virtual_value(name))
                .flatten()
            {
                Ok(v)
            } else if self.acl_refused(name) {
                Err(Errno::EOPNOTSUPP)
            } else {
                self.fs.getxattr(ino.0, name.as_bytes())
            };
            reply_xattr(reply, value, size);
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        guarded("listxattr", || {
            let mut list = self.fs.listxattr(ino.0);
            if !self.cfg.posix_acl {
                list = list.map(|l| acl::without_acl_names(&l));
            }
            reply_xattr(reply, list, size)
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("removexattr", || {
            if self.virtual_xattr(ino, name) {
                return reply.error(own(libc::EPERM));
            }
            if self.acl_refused(name) {
                return reply.error(own(libc::EOPNOTSUPP));
            }
            reply_empty(reply, self.fs.removexattr(ino.0, name.as_bytes()));
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // With default_permissions (always on) the kernel checks access
        // itself and doesn't send this; if it does, existence is the answer.
        guarded("access", || {
            reply_empty(reply, self.fs.getattr(ino.0).map(|_| ()))
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        guarded("create", || {
            let name = name_or_reply!(name, reply);
            let r = self.make_inode(parent.0, mode, umask, |mode| {
                self.fs.create(&ctx(req), parent.0, name, mode)
            });
            match r {
                Ok(a) => {
                    if !is_direct(flags) {
                        self.note_kernel_cached(a.ino);
                    }
                    reply.created(
                        &TTL,
                        &convert::file_attr(&a),
                        generation(&a),
                        FileHandle(OpenFh::from_flags(flags).to_fh()),
                        FopenFlags::FOPEN_KEEP_CACHE,
                    )
                }
                Err(e) => reply.error(to_fuse(e)),
            }
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        guarded("fallocate", || {
            let mode = match convert::falloc_mode(mode) {
                Ok(m) => m,
                Err(e) => return reply.error(e),
            };
            // Every mode clears setuid and setgid, as file_modified() does.
            let r = self
                .remove_privs(&ctx(req), ino.0)
                .and_then(|()| self.fs.fallocate(&ctx(req), ino.0, offset, length, mode));
            self.invalidate_attrs(ino.0);
            reply_empty(reply, r);
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        guarded("lseek", || {
            let r = match convert::seek(offset, whence) {
                Ok(Seek::At(off)) => Ok(off),
                Ok(Seek::FromEnd(off)) => match self.fs.getattr(ino.0) {
                    Ok(a) => convert::seek_end(a.size, off),
                    Err(e) => Err(to_fuse(e)),
                },
                Ok(Seek::Core(off, w)) => {
                    self.write_back_cached(ino.0, off);
                    match self.fs.lseek(ino.0, off, w) {
                        Ok(r) => i64::try_from(r).map_err(|_| own(libc::EOVERFLOW)),
                        Err(e) => Err(to_fuse(e)),
                    }
                }
                Err(e) => Err(e),
            };
            match r {
                Ok(off) => reply.offset(off),
                Err(e) => reply.error(e),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_follow_the_options() {
        let on = FuseFs::wanted_capabilities(FuseConfig {
            writeback_cache: true,
            posix_acl: false,
        });
        for f in [
            InitFlags::FUSE_WRITEBACK_CACHE,
            InitFlags::FUSE_ASYNC_DIO,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_EXPORT_SUPPORT,
        ] {
            assert!(on.contains(f), "{f:?}");
        }
        assert!(!on.contains(InitFlags::FUSE_POSIX_ACL));
        // With -o noacl the kernel applies the umask.
        assert!(!on.contains(InitFlags::FUSE_DONT_MASK));
        let off = FuseFs::wanted_capabilities(FuseConfig {
            writeback_cache: false,
            posix_acl: true,
        });
        assert!(!off.contains(InitFlags::FUSE_WRITEBACK_CACHE));
        assert!(!FuseFs::wanted_capabilities(FuseConfig::default())
            .contains(InitFlags::FUSE_WRITEBACK_CACHE));
        assert!(off.contains(InitFlags::FUSE_POSIX_ACL));
        assert!(off.contains(InitFlags::FUSE_DONT_MASK));
    }

    #[test]
    fn a_panic_is_contained() {
        let mut after = false;
        guarded("test", || panic!("boom"));
        guarded("test", || after = true);
        assert!(after);
    }
}
