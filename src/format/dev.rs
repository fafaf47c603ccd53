//! Filesystem blocks through the block engine: what mkfs, fsck and the
//! journal use to read and write metadata. Every transfer is a bio on the
//! device's [`Queue`]. Reads are verified against their integrity tuples
//! when the device has them, the open is read-write and
//! [`DevOptions::verify`] is set (a read-only open can't use the store: it
//! would have to mark it in use, so a read-only check reads unverified).

use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::block::backend::{BlockBackend, DirectMode, FileBackend, FileOptions};
use crate::block::integrity::layout;
use crate::block::{
    Bio, BioBuilder, BioSet, BlkStatus, IntegrityMode, IntegrityStore, IoMode, IoPrio, Page, Queue,
    QueueConfig, ReqFlags, ReqOp, Sector, SECTOR_SHIFT,
};

use super::{BLOCK_SIZE, BLOCK_SIZE_U64};

/// Sectors per filesystem block.
const BLOCK_SECTORS: u64 = BLOCK_SIZE_U64 >> SECTOR_SHIFT;
/// Blocks per bio for multi-block transfers and zeroing.
const MAX_BIO_BLOCKS: u64 = 256;

/// Memory for the integrity tuple cache of a read-write open.
pub const TUPLE_CACHE_BYTES: u64 = 16 << 20;

/// How to open a device for the tools.
#[derive(Clone, Copy, Debug, Default)]
pub struct DevOptions {
    pub read_only: bool,
    /// Verify reads against integrity tuples (when the device has them).
    pub verify: bool,
    /// Queue workers (0: the engine's default).
    pub workers: usize,
    /// Requests in flight at the device: above 0, the workers share them
    /// through io_uring (`IoMode::Uring`) where the device offers an
    /// `O_DIRECT` descriptor; 0: the engine's default (one blocking
    /// transfer per worker).
    pub queue_depth: usize,
}

/// A device opened through the engine.
pub struct Dev {
    queue: Queue,
    /// Bios for [`Dev::write_batch`].
    bioset: BioSet,
    blocks: u64,
    read_only: bool,
    /// The image or device whose exclusive lock this open holds.
    locked: Option<Arc<FileBackend>>,
}

/// How a mount takes an image's exclusive lock ([`Dev::open_locked`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct LockHow {
    /// Leave a block device's `O_EXCL` claim to the kernel (a `fuseblk`
    /// mount of it).
    pub kernel_claims: bool,
    /// How long to wait for a lock another process holds (an earlier biofs
    /// still writing the image back after its unmount).
    pub wait: std::time::Duration,
}

/// A failed bio: the errno the kernel would return, and what failed where.
#[derive(Debug)]
pub struct BioError {
    pub errno: i32,
    pub block: u64,
    msg: String,
}

impl std::fmt::Display for BioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for BioError {}

impl BioError {
    /// The block a failed transfer named, if `e` is a [`BioError`].
    pub fn block_of(e: &io::Error) -> Option<u64> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<BioError>())
            .map(|b| b.block)
    }
}

impl BioError {
    /// The errno of an error made by [`Dev`] (or of any OS error).
    pub fn errno_of(e: &io::Error) -> Option<i32> {
        e.raw_os_error().or_else(|| {
            e.get_ref()
                .and_then(|inner| inner.downcast_ref::<BioError>())
                .map(|b| b.errno)
        })
    }
}

/// The `io::Error` for a failed bio: the errno's kind, and a message that
/// names the block and says whether the data failed its integrity check.
fn bio_error(what: &str, block: u64, status: BlkStatus) -> io::Error {
    let detail = if status == BlkStatus::Protection {
        "the data does not match its integrity checksum"
    } else {
        "I/O error"
    };
    let errno = status.to_errno().max(1);
    io::Error::new(
        io::Error::from_raw_os_error(errno).kind(),
        BioError {
            errno,
            block,
            msg: format!("{what} of block {block}: {detail} ({status})"),
        },
    )
}

impl Dev {
    /// Open the image or device at `path`. Its integrity store is used if it
    /// has one (recovering it first if it was not shut down cleanly).
    /// A read-write open takes the device's exclusive lock
    /// ([`FileBackend::lock_exclusive`]): it fails with `EWOULDBLOCK` while
    /// another biofs process writes it.
    pub fn open(path: &Path, opts: DevOptions) -> io::Result<Dev> {
        Dev::open_locked(path, opts, LockHow::default())
    }

    /// [`Dev::open`], taking the exclusive lock as `how` says. While it
    /// waits for another process's lock it says so once (a warning).
    pub fn open_locked(path: &Path, opts: DevOptions, how: LockHow) -> io::Result<Dev> {
        let backend = Arc::new(FileBackend::open(
            path,
            FileOptions {
                direct: DirectMode::Auto,
                read_only: opts.read_only,
            },
        )?);
        if opts.read_only {
            return Dev::from_backend(backend, opts);
        }
        let start = std::time::Instant::now();
        let mut said = false;
        loop {
            match backend.lock_exclusive_with(!how.kernel_claims) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && start.elapsed() < how.wait => {
                    if !said {
                        log::warn!(
                            "{}: in use by another biofs process; waiting up to {} s for it to end",
                            path.display(),
                            how.wait.as_secs()
                        );
                        said = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("in use (mounted, or open in another biofs process): {e}"),
                    ))
                }
            }
        }
        let mut dev = Dev::from_backend(backend.clone(), opts)?;
        dev.locked = Some(backend);
        Ok(dev)
    }

    /// Let go of the exclusive lock (once the device is shut down), so that
    /// the next mount may have it before this process ends.
    pub fn unlock(&self) {
        if let Some(b) = &self.locked {
            b.unlock();
        }
    }

    /// Open over any backend.
    pub fn from_backend(backend: Arc<dyn BlockBackend>, opts: DevOptions) -> io::Result<Dev> {
        let profile = IntegrityStore::probe(&*backend)
            .map_err(|e| io::Error::other(format!("integrity header: {e}")))?;
        let has_store = profile.is_some();
        let integrity = if has_store && !opts.read_only {
            IntegrityMode::On {
                verify_reads: opts.verify,
                cache_bytes: TUPLE_CACHE_BYTES as usize,
            }
        } else {
            // A read-only open can't mark the store in use or recover it;
            // reads are then not verified (fsck -n says so).
            IntegrityMode::Off
        };
        let mut config = QueueConfig {
            integrity,
            ..QueueConfig::default()
        };
        if opts.workers > 0 {
            config.nr_workers = opts.workers;
        }
        if opts.queue_depth > 0 {
            let per_worker = opts.queue_depth.div_ceil(config.nr_workers.max(1));
            config.io_mode = IoMode::Uring {
                depth: u32::try_from(per_worker).unwrap_or(u32::MAX),
            };
            config.queue_depth = opts.queue_depth.max(config.nr_workers);
        }
        // The filesystem lives in the data area before the tuples, whether
        // or not this open uses them.
        let data_bytes = match &profile {
            Some(p) => layout(backend.info().size_bytes, p)
                .map(|l| l.data_sectors << SECTOR_SHIFT)
                .map_err(|e| io::Error::other(format!("integrity layout: {e}")))?,
            None => backend.info().size_bytes,
        };
        let queue = Queue::new(backend, config).map_err(|e| io::Error::other(e.to_string()))?;
        let blocks = (queue.capacity() << SECTOR_SHIFT).min(data_bytes) / BLOCK_SIZE_U64;
        Ok(Dev {
            queue,
            blocks,
            read_only: opts.read_only,
            locked: None,
            bioset: BioSet::new("biofs-meta", 256, 16),
        })
    }

    /// Blocks the filesystem may use (the engine's data area).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The engine queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn check(&self, block: u64, n: u64) -> io::Result<()> {
        if block.checked_add(n).is_none_or(|end| end > self.blocks) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "blocks {block}+{n} are beyond the device's {} blocks",
                    self.blocks
                ),
            ));
        }
        Ok(())
    }

    /// Read `n` blocks from `block` as pages.
    pub fn read_pages(&self, block: u64, n: u64) -> io::Result<Vec<Page>> {
        self.check(block, n)?;
        let mut out = Vec::with_capacity(n as usize);
        let mut b = block;
        while b < block + n {
            let k = (block + n - b).min(MAX_BIO_BLOCKS);
            let mut bio = Bio::new(ReqOp::Read, Sector(b * BLOCK_SECTORS), k as usize);
            for _ in 0..k {
                bio.add_page(Page::new(), BLOCK_SIZE as u32, 0);
            }
            let mut done = self.queue.submit_bio_wait(bio);
            if !done.status().is_ok() {
                let at = done.error_sector().map_or(b, |s| s.0 / BLOCK_SECTORS);
                return Err(bio_error("read", at, done.status()));
            }
            out.extend(done.take_segments().into_iter().map(|s| s.page));
            b += k;
        }
        Ok(out)
    }

    /// Read one block.
    pub fn read_block(&self, block: u64) -> io::Result<Vec<u8>> {
        let page = self.read_pages(block, 1)?.pop().unwrap_or_default();
        Ok(page.as_slice().to_vec())
    }

    /// Write consecutive blocks from `block` (each `data` item one block).
    pub fn write_blocks(&self, block: u64, data: &[&[u8]], fua: bool) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.check(block, data.len() as u64)?;
        for (ci, chunk) in data.chunks(MAX_BIO_BLOCKS as usize).enumerate() {
            let b = block + ci as u64 * MAX_BIO_BLOCKS;
            let mut bio = Bio::new(ReqOp::Write, Sector(b * BLOCK_SECTORS), chunk.len());
            for d in chunk {
                if d.len() != BLOCK_SIZE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "not a whole block",
                    ));
                }
                bio.add_page(Page::from_slice(d), BLOCK_SIZE as u32, 0);
            }
            if fua {
                bio.add_flags(ReqFlags::FUA);
            }
            let done = self.queue.submit_bio_wait(bio);
            if !done.status().is_ok() {
                return Err(bio_error("write", b, done.status()));
            }
        }
        Ok(())
    }

    /// Write one block.
    pub fn write_block(&self, block: u64, data: &[u8]) -> io::Result<()> {
        self.write_blocks(block, &[data], false)
    }

    /// Write many blocks, each `(block, one block of data)`, as one batch:
    /// sorted by block, built into bios with a [`BioBuilder`] (adjacent
    /// blocks share a bio, the plug merges neighbouring bios into large
    /// requests) and all in flight at once, then waited for together; the
    /// way jbd2 submits a transaction's log blocks and a checkpoint its
    /// buffers, instead of one synchronous bio each. Nothing is flushed:
    /// the caller flushes (or FUAs a commit block) after.
    ///
    /// Fails with EROFS on a read-only open, `InvalidInput` for data not
    /// one block long, or the first error any block met (naming it); the
    /// other blocks may or may not have been written.
    pub fn write_batch(&self, blocks: &[(u64, &[u8])]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let mut order: Vec<(u64, &[u8])> = blocks.to_vec();
        order.sort_unstable_by_key(|(b, _)| *b);
        for (b, d) in &order {
            self.check(*b, 1)?;
            if d.len() != BLOCK_SIZE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a whole block",
                ));
            }
        }
        if order.is_empty() {
            return Ok(());
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mut builder = BioBuilder::new(
            &self.queue,
            &self.bioset,
            ReqOp::Write,
            ReqFlags::NONE,
            IoPrio::DEFAULT,
            move |bio: Bio| {
                let _ = tx.send((bio.status(), bio.error_sector()));
            },
        );
        for (b, d) in order {
            builder.add_page(
                Sector(b * BLOCK_SECTORS),
                Page::from_slice(d),
                BLOCK_SIZE as u32,
                0,
            );
        }
        builder.finish();
        let (status, sector) = rx
            .recv()
            .map_err(|_| io::Error::other("a batch of writes never completed"))?;
        if status.is_ok() {
            Ok(())
        } else {
            let b = sector.map_or(0, |s| s.0 / BLOCK_SECTORS);
            Err(bio_error("write", b, status))
        }
    }

    /// Make `n` blocks from `block` read as zeros (write-zeroes: cheap on
    /// image files and on devices that support it).
    pub fn zero_blocks(&self, block: u64, n: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.check(block, n)?;
        let chunk = 1u64 << 18; // 1 GiB of blocks per bio
        let mut b = block;
        while b < block + n {
            let k = (block + n - b).min(chunk);
            let bio = Bio::new_range(
                ReqOp::WriteZeroes,
                Sector(b * BLOCK_SECTORS),
                (k * BLOCK_SECTORS) as u32,
            );
            let done = self.queue.submit_bio_wait(bio);
            if !done.status().is_ok() {
                return Err(bio_error("zeroing", b, done.status()));
            }
            b += k;
        }
        Ok(())
    }

    /// Flush the device's write cache.
    pub fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        let done = self.queue.submit_bio_wait(Bio::new_flush());
        if done.status().is_ok() {
            Ok(())
        } else {
            Err(bio_error("flush", 0, done.status()))
        }
    }

    /// Flush and stop the engine (marking its integrity store clean).
    pub fn close(self) -> io::Result<()> {
        self.flush()?;
        self.queue.shutdown()
    }
}
