//! The filesystem's operations ([`Fs`]): what the FUSE adapter, tests and
//! `mkfs.biofs -d` call. Inode numbers are the on-disk ones; the root is 1,
//! as FUSE's.
//!
//! `Fs` holds the metadata lock ([`Meta`]), the page cache and the
//! writeback barrier (`docs/design.md`; lock order in [`super::data`]), and
//! a flusher thread that writes back and commits every
//! `commit_interval_secs`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};

use super::atime::AtimePolicy;
use super::data::{
    allocate_unwritten, ioprio_of, lock, read_lock, write_lock, DataCtx, Filled, RaJob,
    MAX_FILE_SIZE,
};
use super::extmap;
use super::meta::{touch, Meta};
use super::namei::{attr_of, SYMLINK_MODE};
use super::pagecache::PageCache;
use super::types::*;
use crate::block::{BioSet, IoPrio, PoolReservation};
use crate::format::dev::{BioError, Dev, DevOptions};
use crate::format::inode::{FileType, Timespec, S_IFDIR, S_IFMT, S_IFREG};
use crate::format::superblock::Superblock;
use crate::format::{BLOCK_SIZE_U64, NAME_MAX, ROOT_INO};

/// Why a mount failed (with what to do about it, for the user).
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Format(#[from] crate::format::error::FormatError),
    #[error("{0}")]
    Refused(String),
}

struct Core {
    dev: Arc<Dev>,
    bioset: BioSet,
    meta: Mutex<Meta>,
    barrier: RwLock<()>,
    cache: PageCache,
    /// The page pool keeps the page cache's pages for reuse.
    _pool: PoolReservation,
    /// One commit at a time.
    commit_lock: Mutex<()>,
    /// Ask for a commit soon (the running transaction is big).
    want_commit: AtomicBool,
    /// Wakes the flusher for background writeback (dirty data past
    /// [`PageCache::over_background_limit`]); full means already asked.
    kick: (Sender<()>, crossbeam_channel::Receiver<()>),
    stopped: AtomicBool,
    /// Readahead windows for the `biofs-ra` threads.
    readahead: Sender<RaJob>,
    /// One remount at a time.
    remount_lock: Mutex<()>,
    /// fsyncs asked for, and those a commit run by another fsync (or
    /// sync) made durable (group commit).
    fsyncs: AtomicU64,
    fsyncs_shared: AtomicU64,
}

/// A mounted biofs.
pub struct Fs {
    core: Arc<Core>,
    flusher: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
    /// Read-only now: mounted so, or remounted so ([`Fs::remount`]).
    read_only: AtomicBool,
    /// The device was opened read-only: no remount can make it writable.
    opened_read_only: bool,
    atime: AtimePolicy,
}

/// Readahead windows waiting for a `biofs-ra` thread; past that a
/// reader's window is dropped (its pages are read when asked for).
const RA_QUEUE: usize = 64;
/// `biofs-ra` threads: two keep two sequential readers (or one reader's
/// window and the next) reading at once.
const RA_THREADS: usize = 2;

/// Start the `biofs-ra` threads: each reads the windows it is sent into
/// the cache, under the file's `rw` (shared) as a read would. They hold
/// the core weakly and end when it goes (its sender with it).
fn spawn_readahead(
    core: &Arc<Core>,
    rx: crossbeam_channel::Receiver<RaJob>,
) -> std::io::Result<()> {
    for k in 0..RA_THREADS {
        let (weak, rx) = (Arc::downgrade(core), rx.clone());
        std::thread::Builder::new()
            .name(format!("biofs-ra{k}"))
            .spawn(move || {
                for job in rx {
                    let Some(c) = weak.upgrade() else { return };
                    if c.stopped.load(Ordering::Relaxed) {
                        continue;
                    }
                    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        {
                            let _g = read_lock(&job.fc.rw);
                            c.data().fill_ahead(&job);
                        }
                        c.cache.shrink_for(&job.fc);
                    }));
                    if read.is_err() {
                        log::error!("readahead of inode {} panicked", job.ino);
                    }
                }
            })?;
    }
    Ok(())
}

impl Core {
    fn data(&self) -> DataCtx<'_> {
        DataCtx {
            dev: &self.dev,
            bioset: &self.bioset,
            meta: &self.meta,
            barrier: &self.barrier,
            cache: &self.cache,
            readahead: &self.readahead,
        }
    }

    /// Write back every dirty page, then commit the running transaction
    /// (or, with nothing to commit, flush the device so that data written
    /// in place is durable).
    fn sync(&self, ioprio: IoPrio) -> FsResult<()> {
        let c = lock(&self.commit_lock);
        self.sync_locked(&c, ioprio)
    }

    /// Make transaction `tid` durable (group commit, as jbd2's
    /// `jbd2_log_wait_commit`): fsyncs that arrive while another is
    /// committing wait for that one, and return without a commit of their
    /// own if it took their transaction; the first to find it still
    /// uncommitted commits for all.
    fn sync_through(&self, tid: u64, ioprio: IoPrio) -> FsResult<()> {
        let c = lock(&self.commit_lock);
        if lock(&self.meta).committed() >= tid {
            self.fsyncs_shared.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.sync_locked(&c, ioprio)
    }

    /// [`Core::sync`] with `commit_lock` held.
    fn sync_locked(&self, _commit: &std::sync::MutexGuard<'_, ()>, ioprio: IoPrio) -> FsResult<()> {
        let mut first_err = None;
        let mut no_space = Vec::new();
        for ino in self.cache.dirty_files() {
            match self.data().writeback(ino, ioprio) {
                Ok(()) => {}
                Err(Errno::ENOSPC) => no_space.push(ino),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let mut committed = self.commit_now()?;
        if !no_space.is_empty() && committed {
            // Blocks freed in the transaction just committed are usable
            // now: try those files again (as ext4 retries after a commit).
            for ino in no_space {
                if let Err(e) = self.data().writeback(ino, ioprio) {
                    first_err.get_or_insert(e);
                }
            }
            committed = self.commit_now()? || committed;
        } else if !no_space.is_empty() {
            first_err.get_or_insert(Errno::ENOSPC);
        }
        self.want_commit.store(false, Ordering::Relaxed);
        if !committed && !self.dev.is_read_only() {
            self.dev.flush().map_err(|e| {
                log::error!("flush: {e}");
                Errno::from_raw(BioError::errno_of(&e).unwrap_or(libc::EIO))
            })?;
        }
        self.cache.shrink();
        first_err.map_or(Ok(()), Err)
    }

    /// Background writeback (the flusher, woken by a writer past the
    /// background threshold): write back dirty files until the cache is
    /// under the threshold again, without committing.
    /// Writers go on meanwhile; they block only at the throttling
    /// threshold. Errors stay with the pages (still dirty), for fsync.
    fn background_writeback(&self) {
        for ino in self.cache.dirty_files() {
            if !self.cache.over_background_limit() || self.stopped.load(Ordering::Relaxed) {
                break;
            }
            match self.data().writeback(ino, IoPrio::DEFAULT) {
                // Blocks freed but not committed yet: the next commit
                // (or fsync, which retries after it) writes these.
                Ok(()) | Err(Errno::ENOSPC) => {}
                Err(e) => log::warn!("background writeback of inode {ino}: {e}"),
            }
            self.cache.shrink_ino(ino);
        }
    }

    /// Commit the running transaction (no writeback may be in flight).
    fn commit_now(&self) -> FsResult<bool> {
        let _b = write_lock(&self.barrier);
        lock(&self.meta).commit()
    }

    /// After a change: commit if the running transaction grew big, write
    /// back if too much of the cache is dirty.
    fn after_change(&self, ino: Option<u64>, pid: u32) {
        if lock(&self.meta).txn_is_big() {
            self.want_commit.store(true, Ordering::Relaxed);
        }
        if let Some(ino) = ino {
            if self.cache.over_background_limit() {
                let _ = self.kick.0.try_send(());
            }
            if self.cache.over_dirty_limit() {
                if let Err(e) = self.data().writeback(ino, ioprio_of(pid)) {
                    log::warn!("writeback of inode {ino}: {e}");
                }
            }
            // The file being written is always busy: wait for it, so its
            // pages written back can go.
            self.cache.shrink_ino(ino);
        }
        if self.want_commit.load(Ordering::Relaxed) {
            if let Err(e) = self.sync(ioprio_of(pid)) {
                log::error!("commit: {e}");
            }
        }
    }

    /// Free `ino` if nothing holds it any more (its pages first).
    fn release_inode(&self, ino: u64) -> FsResult<()> {
        let gone = {
            let m = lock(&self.meta);
            m.inodes
                .get(&ino)
                .is_some_and(|s| s.inode.nlink == 0 && s.lookups == 0 && s.opens == 0)
        };
        if gone {
            let fc = self.cache.file(ino);
            let _g = write_lock(&fc.rw);
            let released = self.cache.forget_file(ino);
            lock(&self.meta).unreserve(released);
        }
        lock(&self.meta).maybe_evict(ino)
    }
}

/// Now, or the given time.
fn time_of(t: TimeSet) -> Timespec {
    match t {
        TimeSet::Now => Timespec::now(),
        TimeSet::At(t) => t,
    }
}

impl Fs {
    /// Open the image or device at `path` and mount it: replay the journal,
    /// free the orphans of an earlier crash, start the flusher thread.
    pub fn mount(path: &Path, opts: &MountOptions) -> Result<Fs, MountError> {
        let dev = Dev::open_locked(
            path,
            DevOptions {
                read_only: opts.read_only,
                verify: opts.verify_reads,
                workers: opts.workers,
                queue_depth: opts.queue_depth,
            },
            opts.lock,
        )
        .map_err(|e| MountError::Refused(format!("{}: can't open: {e}", path.display())))?;
        Fs::mount_dev(dev, opts)
    }

    /// Mount an opened device.
    pub fn mount_dev(dev: Dev, opts: &MountOptions) -> Result<Fs, MountError> {
        let raw = dev.read_block(0)?;
        let sb = Superblock::decode(&raw, 0).map_err(|e| {
            MountError::Refused(format!(
                "not a biofs filesystem, or its superblock is damaged ({e}); fsck.biofs can restore it from the backup"
            ))
        })?;
        if !opts.read_only && !sb.writable_features() {
            return Err(MountError::Refused(
                "the filesystem has features this biofs can't write; mount it read-only".into(),
            ));
        }
        let dev = Arc::new(dev);
        let mut meta = Meta::new(dev.clone(), sb, opts.read_only, opts.meta_cache_blocks())?;
        let root = meta.get(ROOT_INO).map_err(|e| {
            MountError::Refused(format!(
                "the root directory can't be read ({e}); run fsck.biofs"
            ))
        })?;
        if root.file_type() != FileType::Directory {
            return Err(MountError::Refused(
                "the root inode is not a directory; run fsck.biofs".into(),
            ));
        }
        if !opts.read_only {
            let n = meta
                .free_orphans()
                .map_err(|e| MountError::Refused(format!("freeing orphans: {e}")))?;
            if n > 0 {
                log::info!("freed {n} unlinked inodes left open by the last mount");
            }
            meta.commit()
                .map_err(|e| MountError::Refused(format!("first commit: {e}")))?;
        }
        let (ra_tx, ra_rx) = bounded::<RaJob>(RA_QUEUE);
        let core = Arc::new(Core {
            bioset: BioSet::new("biofs-fs", 1024, 64),
            dev,
            meta: Mutex::new(meta),
            barrier: RwLock::new(()),
            cache: PageCache::new(opts.page_cache_bytes()),
            _pool: PoolReservation::new((opts.page_cache_bytes() / BLOCK_SIZE_U64) as usize),
            commit_lock: Mutex::new(()),
            want_commit: AtomicBool::new(false),
            kick: bounded(1),
            stopped: AtomicBool::new(false),
            readahead: ra_tx,
            remount_lock: Mutex::new(()),
            fsyncs: AtomicU64::new(0),
            fsyncs_shared: AtomicU64::new(0),
        });
        spawn_readahead(&core, ra_rx)?;
        let flusher = if opts.read_only {
            None
        } else {
            let (tx, rx) = bounded::<()>(1);
            let c = core.clone();
            let every = Duration::from_secs(opts.commit_interval_secs.max(1));
            let h = std::thread::Builder::new()
                .name("biofs-flush".into())
                .spawn(move || {
                    let kick = c.kick.1.clone();
                    let mut due = std::time::Instant::now() + every;
                    // A panic must not end periodic commits silently (one
                    // inside the commit itself already marked the
                    // filesystem failed: `Meta::commit`).
                    let guarded =
                        |what: &str, f: &dyn Fn() -> FsResult<()>| match std::panic::catch_unwind(
                            std::panic::AssertUnwindSafe(f),
                        ) {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => log::error!("{what}: {e}"),
                            Err(_) => log::error!("{what} panicked; retrying later"),
                        };
                    loop {
                        crossbeam_channel::select! {
                            recv(rx) -> _ => return,
                            recv(kick) -> _ => guarded("background writeback", &|| {
                                c.background_writeback();
                                Ok(())
                            }),
                            default(due.saturating_duration_since(std::time::Instant::now())) => {
                                guarded("periodic commit", &|| c.sync(IoPrio::DEFAULT));
                                due = std::time::Instant::now() + every;
                            }
                        }
                    }
                })?;
            Some((tx, h))
        };
        Ok(Fs {
            core,
            flusher: Mutex::new(flusher),
            read_only: AtomicBool::new(opts.read_only),
            opened_read_only: opts.read_only,
            atime: AtimePolicy::new(opts.atime, opts.nodiratime),
        })
    }

    /// Write everything back, checkpoint, mark the filesystem clean and stop
    /// the engine. Later changes fail with EROFS. Idempotent.
    pub fn shutdown(&self) -> FsResult<()> {
        if let Some((tx, h)) = lock(&self.flusher).take() {
            drop(tx);
            let _ = h.join();
        }
        if self.core.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let synced = if self.is_read_only() {
            Ok(())
        } else {
            self.core.sync(IoPrio::DEFAULT)
        };
        let closed = {
            let _b = write_lock(&self.core.barrier);
            lock(&self.core.meta).close()
        };
        let stopped = self.core.dev.queue().shutdown().map_err(|e| {
            log::error!("stopping the engine: {e}");
            Errno::EIO
        });
        // Everything is on the device: the next mount may have it now.
        self.core.dev.unlock();
        synced.and(closed).and(stopped)
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::SeqCst)
    }

    /// False when no remount can make it writable: mounted read-only (the
    /// device is open read-only), shut down, or failed.
    pub fn can_be_writable(&self) -> bool {
        !self.opened_read_only
            && !self.core.stopped.load(Ordering::SeqCst)
            && lock(&self.core.meta).check_failed().is_ok()
    }

    /// Make the mounted filesystem read-only (everything written back and
    /// committed first; then changes fail with EROFS) or writable again,
    /// as `mount -o remount,ro` / `remount,rw` do. EROFS when it can't be
    /// made writable: mounted read-only from the start (the device was
    /// opened read-only), shut down, or failed.
    pub fn remount(&self, read_only: bool) -> FsResult<()> {
        let _c = lock(&self.core.remount_lock);
        if read_only {
            if self.is_read_only() {
                return Ok(());
            }
            // Changes already under way finish; new ones see the flag.
            {
                let _b = write_lock(&self.core.barrier);
                self.read_only.store(true, Ordering::SeqCst);
            }
            let synced = self.core.sync(IoPrio::DEFAULT);
            let closed = synced.and_then(|()| lock(&self.core.meta).set_read_only(true));
            if let Err(e) = closed {
                log::error!("remount read-only: {e}");
                return Err(e);
            }
            log::info!("remounted read-only");
            Ok(())
        } else {
            if !self.is_read_only() {
                return Ok(());
            }
            if !self.can_be_writable() {
                return Err(Errno::EROFS);
            }
            lock(&self.core.meta).set_read_only(false)?;
            self.read_only.store(false, Ordering::SeqCst);
            log::info!("remounted read-write");
            Ok(())
        }
    }

    /// The engine's statistics, the page cache's, the buffer cache's and
    /// the journal's, as text.
    pub fn stats(&self) -> String {
        let s = self.core.dev.queue().stats();
        let (cached, dirty, limit) = self.core.cache.stats();
        let b = self.buffer_stats();
        let (commits, fsyncs, shared) = self.commit_counts();
        format!(
            "{s}\npage cache: {cached} pages ({} MiB) cached, {dirty} dirty, limit {} MiB\n\
             buffer cache: {} of {} blocks held, {} hits, {} misses, {} evictions\n{}\n\
             journal: {commits} commits; {fsyncs} fsyncs, {shared} made durable by a commit of another's\n",
            (cached * 4096) >> 20,
            (limit * 4096) >> 20,
            b.held,
            b.capacity,
            b.hits,
            b.misses,
            b.evictions,
            crate::block::pool_stats()
        )
    }

    /// Transactions committed by this mount, fsyncs asked for, and fsyncs
    /// that shared a commit another ran (group commit).
    pub fn commit_counts(&self) -> (u64, u64, u64) {
        (
            lock(&self.core.meta).committed(),
            self.core.fsyncs.load(Ordering::Relaxed),
            self.core.fsyncs_shared.load(Ordering::Relaxed),
        )
    }

    /// The buffer cache's counts.
    pub fn buffer_stats(&self) -> super::buffer::BufferStats {
        self.meta().bufs.cache.stats()
    }

    /// The engine's statistics, as numbers.
    pub fn engine_stats(&self) -> crate::block::StatsSnapshot {
        self.core.dev.queue().stats()
    }

    /// Run `op`; if it finds no space while blocks freed in the running
    /// transaction wait for its commit, commit and run it again (as ext4
    /// retries an allocation after forcing a commit).
    fn with_room<T>(&self, pid: u32, op: impl Fn() -> FsResult<T>) -> FsResult<T> {
        match op() {
            Err(Errno::ENOSPC) if self.meta().pending_frees() > 0 => {
                self.core.sync(ioprio_of(pid))?;
                op()
            }
            r => r,
        }
    }

    /// Call `hook` with each inode whose block count changes with no
    /// request about it (see [`Meta::blocks_hook`]). It runs under the
    /// metadata lock: it must only hand the number on.
    pub fn on_blocks_changed(&self, hook: impl Fn(u64) + Send + 'static) {
        self.meta().blocks_hook = Some(Box::new(hook));
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, Meta> {
        lock(&self.core.meta)
    }

    fn writable(&self) -> FsResult<()> {
        if self.is_read_only() {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// The entry `name` of directory `parent`; counts one lookup of it
    /// (released by [`Fs::forget`]).
    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        self.meta().lookup(parent, name)
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        let unused = {
            let mut m = self.meta();
            m.inodes.get_mut(&ino).is_none_or(|st| {
                st.lookups = st.lookups.saturating_sub(n);
                st.lookups == 0 && st.opens == 0
            })
        };
        if unused {
            self.core.cache.release_file(ino);
        }
        if let Err(e) = self.core.release_inode(ino) {
            log::error!("freeing inode {ino}: {e}");
        }
    }

    /// Whether the kernel holds `ino`: looked up and not all forgotten,
    /// or open.
    pub fn held(&self, ino: u64) -> bool {
        self.meta()
            .inodes
            .get(&ino)
            .is_some_and(|st| st.lookups > 0 || st.opens > 0)
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let mut m = self.meta();
        Ok(attr_of(ino, m.get(ino)?))
    }

    /// chmod/chown/truncate/utimens. Permission checks are the kernel's
    /// (`default_permissions`); this applies the change.
    pub fn setattr(&self, ctx: &Ctx, ino: u64, set: &SetAttr) -> FsResult<Attr> {
        self.writable()?;
        if let Some(size) = set.size {
            self.core.data().truncate(ino, size, ctx.pid)?;
        }
        let mut m = self.meta();
        let st = m.get_mut(ino)?;
        let i = &mut st.inode;
        if let Some(mode) = set.mode {
            i.mode = (i.mode & S_IFMT) | (mode & 0o7777);
        }
        if let Some(uid) = set.uid {
            i.uid = uid;
        }
        if let Some(gid) = set.gid {
            i.gid = gid;
        }
        if let Some(t) = set.atime {
            i.atime = time_of(t);
        }
        if let Some(t) = set.mtime {
            i.mtime = time_of(t);
        }
        i.ctime = set.ctime.unwrap_or_else(Timespec::now);
        Ok(attr_of(ino, i))
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.meta().readlink(ino)
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
        self.writable()?;
        let ft = FileType::from_mode(mode).ok_or(Errno::EINVAL)?;
        if matches!(ft, FileType::Directory | FileType::Symlink) {
            return Err(Errno::EINVAL);
        }
        let a = self.with_room(ctx.pid, || {
            self.meta().make(ctx, parent, name, mode, &mut |m, ino| {
                if matches!(ft, FileType::CharDev | FileType::BlockDev) {
                    m.get_mut(ino)?.inode.rdev_or_parent = u64::from(rdev);
                }
                Ok(())
            })
        })?;
        self.core.after_change(None, ctx.pid);
        Ok(a)
    }

    pub fn mkdir(&self, ctx: &Ctx, parent: u64, name: &[u8], mode: u32) -> FsResult<Attr> {
        self.writable()?;
        let mode = S_IFDIR | (mode & 0o7777);
        let a = self.with_room(ctx.pid, || {
            self.meta()
                .make(ctx, parent, name, mode, &mut |_, _| Ok(()))
        })?;
        self.core.after_change(None, ctx.pid);
        Ok(a)
    }

    /// A new regular file, opened (release it with [`Fs::release`]);
    /// EEXIST if the name exists. Counts one lookup.
    pub fn create(&self, ctx: &Ctx, parent: u64, name: &[u8], mode: u32) -> FsResult<Attr> {
        self.writable()?;
        let mode = S_IFREG | (mode & 0o7777);
        let a = self.with_room(ctx.pid, || {
            self.meta().make(ctx, parent, name, mode, &mut |m, ino| {
                m.get_mut(ino)?.opens = 1;
                Ok(())
            })
        })?;
        self.core.after_change(None, ctx.pid);
        Ok(a)
    }

    pub fn symlink(&self, ctx: &Ctx, parent: u64, name: &[u8], target: &[u8]) -> FsResult<Attr> {
        self.writable()?;
        let a = self.with_room(ctx.pid, || {
            self.meta()
                .make(ctx, parent, name, SYMLINK_MODE, &mut |m, ino| {
                    m.set_symlink(ino, target)
                })
        })?;
        self.core.after_change(None, ctx.pid);
        Ok(a)
    }

    /// A new name for `ino` (not a directory); counts one lookup.
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> FsResult<Attr> {
        self.writable()?;
        let a = self.meta().link(ino, parent, name)?;
        self.core.after_change(None, 0);
        Ok(a)
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.writable()?;
        self.meta().unlink(parent, name)?;
        self.core.after_change(None, 0);
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.writable()?;
        self.meta().rmdir(parent, name)?;
        self.core.after_change(None, 0);
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: RenameFlags,
    ) -> FsResult<()> {
        self.writable()?;
        self.meta()
            .rename(parent, name, newparent, newname, flags)?;
        self.core.after_change(None, 0);
        Ok(())
    }

    /// Open `ino` (`truncate`: O_TRUNC). An unlinked file stays until its
    /// last release.
    pub fn open(&self, ctx: &Ctx, ino: u64, truncate: bool) -> FsResult<()> {
        if truncate {
            self.writable()?;
            self.core.data().truncate(ino, 0, ctx.pid)?;
        }
        self.meta().load(ino)?.opens += 1;
        Ok(())
    }

    pub fn release(&self, ino: u64) -> FsResult<()> {
        {
            let mut m = self.meta();
            let st = m.load(ino)?;
            st.opens = st.opens.saturating_sub(1);
        }
        self.core.release_inode(ino)
    }

    /// Change the atime options of the mount (`noatime`, `relatime`,
    /// `strictatime`, `nodiratime`), as a remount does.
    pub fn set_atime(&self, mode: AtimeMode, nodiratime: bool) {
        self.atime.set(mode, nodiratime);
    }

    /// Would a read of `ino` now update its atime? (The adapter lets the
    /// kernel keep its cached pages only when not, so that the read
    /// reaches biofs.) Never on a read-only mount.
    pub fn atime_due(&self, ino: u64) -> bool {
        if self.is_read_only() || self.atime.get().0 == AtimeMode::NoAtime {
            return false;
        }
        let now = Timespec::now();
        let mut m = self.meta();
        m.get(ino).is_ok_and(|i| self.atime.needs_update(i, now))
    }

    /// Counterpart of `touch_atime()`: `ino`'s data or entries were read;
    /// update its atime as the mount's options say. The change joins the
    /// running transaction (the next commit writes it); nothing is written
    /// now, and nothing on a read-only mount. Best effort: a failure
    /// (the inode gone, the filesystem refusing changes) is ignored.
    pub fn accessed(&self, ino: u64) {
        if self.is_read_only() || self.atime.get().0 == AtimeMode::NoAtime {
            return;
        }
        let now = Timespec::now();
        let mut m = self.meta();
        if !m.get(ino).is_ok_and(|i| self.atime.needs_update(i, now)) {
            return;
        }
        if let Ok(st) = m.get_mut(ino) {
            st.inode.atime = now;
        }
    }

    /// Up to `size` bytes from `off` (fewer at the end of the file).
    pub fn read(&self, ctx: &Ctx, ino: u64, off: u64, size: u32) -> FsResult<Vec<u8>> {
        self.core.data().read(ino, off, size, ctx.pid)
    }

    /// [`Fs::read`] into `out` (cleared first), so a caller can keep one
    /// buffer for all its reads; a range of holes is said, not written
    /// ([`Filled::Zeros`]).
    pub fn read_into(
        &self,
        ctx: &Ctx,
        ino: u64,
        off: u64,
        size: u32,
        out: &mut Vec<u8>,
    ) -> FsResult<Filled> {
        self.core.data().read_into(ino, off, size, ctx.pid, out)
    }

    /// Write `data` at `off` (at the end of the file if `append`); returns
    /// the bytes written.
    pub fn write(&self, ctx: &Ctx, ino: u64, off: u64, data: &[u8], append: bool) -> FsResult<u32> {
        self.writable()?;
        let n = self.with_room(ctx.pid, || {
            self.core.data().write(ino, off, data, append, ctx.pid)
        })?;
        self.core.after_change(Some(ino), ctx.pid);
        Ok(n)
    }

    /// Make `ino`'s data and metadata durable (the whole running
    /// transaction commits: `datasync` changes nothing here).
    pub fn fsync(&self, ino: u64, datasync: bool) -> FsResult<()> {
        let _ = datasync;
        if self.is_read_only() {
            return Ok(());
        }
        self.core.fsyncs.fetch_add(1, Ordering::Relaxed);
        // ENOSPC may be blocks freed but not yet committed: the commit in
        // `sync` frees them and writes back again.
        match self.core.data().writeback(ino, IoPrio::DEFAULT) {
            Ok(()) => {
                // The file's data is on the device and its metadata in the
                // running transaction or one before: that transaction's
                // commit (its flush before the commit block) makes both
                // durable, whoever runs it.
                let tid = lock(&self.core.meta).running_tid();
                return self.core.sync_through(tid, IoPrio::DEFAULT);
            }
            Err(Errno::ENOSPC) => {}
            Err(e) => return Err(e),
        }
        self.core.sync(IoPrio::DEFAULT)?;
        if self.core.cache.dirty_files().contains(&ino) {
            return Err(Errno::ENOSPC);
        }
        Ok(())
    }

    /// Make everything durable.
    pub fn syncfs(&self) -> FsResult<()> {
        if self.is_read_only() {
            return Ok(());
        }
        self.core.sync(IoPrio::DEFAULT)
    }

    /// Entries of directory `ino` after `cookie` (0: from the start,
    /// including "." and ".."), at most `max`.
    pub fn readdir(&self, ino: u64, cookie: u64, max: usize) -> FsResult<Vec<DirEntryOut>> {
        let mut m = self.meta();
        let d = m.get(ino)?;
        if d.file_type() != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        let parent = if ino == ROOT_INO {
            ROOT_INO
        } else {
            d.rdev_or_parent
        };
        let mut out = Vec::new();
        if cookie == 0 && max > 0 {
            out.push(DirEntryOut {
                ino,
                name: b".".to_vec(),
                kind: FileType::Directory,
                cookie: 1,
            });
        }
        if cookie <= 1 && out.len() < max {
            out.push(DirEntryOut {
                ino: parent,
                name: b"..".to_vec(),
                kind: FileType::Directory,
                cookie: 2,
            });
        }
        if out.len() < max {
            for e in m.dir_list(ino, cookie.max(2), max - out.len())? {
                out.push(DirEntryOut {
                    ino: e.ino,
                    cookie: e.hash,
                    name: e.name,
                    kind: e.ftype,
                });
            }
        }
        Ok(out)
    }

    pub fn statfs(&self) -> FsResult<StatFs> {
        let m = self.meta();
        let ffree = m.free_inodes();
        let (bfree, bavail) = m.block_counts();
        Ok(StatFs {
            blocks: m.geo.data_blocks(),
            bfree,
            bavail,
            files: m.geo.inodes_count(),
            ffree,
            bsize: BLOCK_SIZE_U64 as u32,
            namelen: NAME_MAX as u32,
            frsize: BLOCK_SIZE_U64 as u32,
        })
    }

    /// `flags`: `libc::XATTR_CREATE` / `libc::XATTR_REPLACE` or 0.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        self.writable()?;
        self.meta().setxattr(ino, name, value, flags)?;
        self.core.after_change(None, 0);
        Ok(())
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        self.meta().getxattr(ino, name)
    }

    /// Names, each followed by a NUL, as `listxattr(2)`.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.meta().listxattr(ino)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        self.writable()?;
        self.meta().removexattr(ino, name)?;
        self.core.after_change(None, 0);
        Ok(())
    }

    pub fn fallocate(
        &self,
        ctx: &Ctx,
        ino: u64,
        off: u64,
        len: u64,
        mode: FallocMode,
    ) -> FsResult<()> {
        self.writable()?;
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let end = off.checked_add(len).ok_or(Errno::EFBIG)?;
        if end > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        {
            let mut m = self.meta();
            match m.get(ino)?.file_type() {
                FileType::Regular => {}
                FileType::Directory => return Err(Errno::EISDIR),
                _ => return Err(Errno::ENODEV),
            }
        }
        let data = self.core.data();
        match mode {
            FallocMode::Allocate | FallocMode::KeepSize => {
                let fc = self.core.cache.file(ino);
                let _g = write_lock(&fc.rw);
                let mut m = self.meta();
                allocate_unwritten(
                    &mut m,
                    ino,
                    off / BLOCK_SIZE_U64,
                    end.div_ceil(BLOCK_SIZE_U64),
                )?;
                let st = m.get_mut(ino)?;
                if mode == FallocMode::Allocate && end > st.inode.size {
                    st.inode.size = end;
                }
                touch(&mut st.inode, false);
            }
            FallocMode::PunchHole => data.zero_range(ino, off, len, false, ctx.pid)?,
            FallocMode::ZeroRange { keep_size } => {
                data.zero_range(ino, off, len, true, ctx.pid)?;
                let mut m = self.meta();
                let st = m.get_mut(ino)?;
                if !keep_size && end > st.inode.size {
                    st.inode.size = end;
                }
            }
        }
        self.core.after_change(None, ctx.pid);
        Ok(())
    }

    /// SEEK_DATA / SEEK_HOLE from `off`: ENXIO at or past the end.
    pub fn lseek(&self, ino: u64, off: u64, whence: SeekWhence) -> FsResult<u64> {
        // Dirty pages are data: give them blocks first.
        if !self.is_read_only() {
            self.core.data().writeback(ino, IoPrio::DEFAULT)?;
        }
        let mut m = self.meta();
        let st = m.load(ino)?;
        let size = st.inode.size;
        if off >= size {
            return Err(Errno::ENXIO);
        }
        let l = off / BLOCK_SIZE_U64;
        match whence {
            SeekWhence::Data => match extmap::next_data(&st.map, l) {
                Some(d) if d * BLOCK_SIZE_U64 < size => Ok((d * BLOCK_SIZE_U64).max(off)),
                _ => Err(Errno::ENXIO),
            },
            SeekWhence::Hole => {
                let h = extmap::next_hole(&st.map, l);
                Ok((h * BLOCK_SIZE_U64).max(off).min(size))
            }
        }
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::error!("unmount: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
