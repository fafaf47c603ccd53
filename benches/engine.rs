//! The engine benchmark: 4 KiB bios through the whole block layer.
//!
//! `cargo bench --bench engine -- [--image PATH] [--size BYTES] [--json FILE]
//! [--only NAME] [--workers N] [--seconds S] [--inflight BYTES]`
//!
//! Cases (see docs/benchmarks.md for what each figure means):
//! - `seqwrite`: `--size` bytes as 4 KiB write bios under a plug, merged into
//!   requests, with crc32c integrity tuples, on an `O_DIRECT` image file;
//!   timed from the first submission to the completion of the final flush.
//!   Also gives `merge_overhead_pct`: device write requests above
//!   `bytes / max request size`, in percent.
//! - `seqread`: the same range read back as 4 KiB bios with verification.
//! - `randread`: 4 KiB reads at random places in that range, 32 in flight.
//! - `mem_bios`: 4 KiB write bios on the in-memory backend, no integrity,
//!   one worker: bios per second through alloc, add_page, submit, merge and
//!   completion. Run it pinned to one CPU (`taskset -c 0`) for the figure.
//!
//! `scripts/bench engine` runs this beside `fio` and prints the ratios.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "benchmark code (with its shared helpers), where a panic is a failed benchmark"
)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use biofs::block::backend::{BlockBackend, DirectMode, FileBackend, FileOptions, MemBackend};
use biofs::block::{
    Bio, BioSet, Checksum, Gfp, IntegrityMode, IntegrityProfile, IntegrityStore, IoMode, Page,
    Plug, Queue, QueueConfig, ReqOp, Sector, StatsSnapshot, PAGE_SIZE, SECTOR_SHIFT,
};

const USAGE: &str = "\
usage: cargo bench --bench engine -- [OPTIONS]

  --image PATH       image file for the file cases (default bench-out/engine.img);
                     created or extended as needed, and removed at the end if
                     this run created it (scripts/bench prefills it first, so
                     that every write is an overwrite, as for fio)
  --size BYTES       bytes written and read (default 1 GiB; suffixes K M G)
  --json FILE        also write the figures as JSON
  --only NAMES       run only these cases (comma-separated): seqwrite, seqread,
                     randread, mem_bios (seqread and randread need seqwrite's
                     data, so the image is always written first)
  --workers N        queue workers for randread (default 4)
  --verify-workers N verify workers for the file cases (default 1)
  --uring DEPTH      randread workers keep DEPTH reads in flight each through
                     io_uring (IoMode::Uring; default 8); 0: one blocking
                     preadv per worker (IoMode::Blocking)
  --seq-workers N    queue workers for seqwrite and seqread (default 4; the
                     queue depth is twice this)
  --integrity on|off crc32c tuples on the file cases (default on; off is a
                     diagnostic: the targets are for on)
  --seconds S        how long randread runs (default 10)
  --inflight BYTES   most bytes in flight for the sequential cases (default 128M)
  --mem-bios N       bios in the mem_bios case (default 8000000)
  --mem-device BYTES size of the memory device in mem_bios (default 64M)";

/// Bytes per bio in every case.
const BIO_BYTES: u64 = PAGE_SIZE as u64;
/// Sectors per bio.
const BIO_SECTORS: u64 = BIO_BYTES >> SECTOR_SHIFT;
/// Prepared pages the write cases cycle through.
const WRITE_PAGES: usize = 256;
/// Random reads in flight.
const RAND_DEPTH: usize = 32;
/// Queue workers for randread, each keeping `RAND_URING_DEPTH` reads in
/// flight through io_uring: 4 x 8 = the 32 in flight at the device.
/// Measured here (2026-11-22, alternating runs): 4 x 8 gave 91-99 k IOPS
/// where 2 x 16 gave 70-80 k, 8 x 4 70-80 k, and 12 blocking workers
/// (`--uring 0`, one `preadv` each) 55-69 k over the same minutes.
const RAND_WORKERS: usize = 4;
/// Reads each randread worker keeps in flight (`IoMode::Uring`).
const RAND_URING_DEPTH: u32 = 8;
/// Every case, in the order they run.
const CASES: [&str; 4] = ["seqwrite", "seqread", "randread", "mem_bios"];

type BenchResult<T> = Result<T, String>;

struct Args {
    image: PathBuf,
    size: u64,
    json: Option<PathBuf>,
    /// Cases to run; `None` runs all.
    only: Option<Vec<String>>,
    workers: usize,
    seq_workers: usize,
    verify_workers: usize,
    uring: u32,
    integrity: bool,
    seconds: f64,
    inflight: u64,
    mem_bios: u64,
    mem_device: u64,
}

/// One measured figure.
struct Figure {
    name: &'static str,
    unit: &'static str,
    value: f64,
    note: String,
}

fn parse_bytes(s: &str) -> BenchResult<u64> {
    biofs::format::units::parse_size(s)
}

fn parse_args() -> BenchResult<Option<Args>> {
    let mut args = Args {
        image: PathBuf::from("bench-out/engine.img"),
        size: 1 << 30,
        json: None,
        only: None,
        workers: RAND_WORKERS,
        seq_workers: 4,
        verify_workers: 1,
        uring: RAND_URING_DEPTH,
        integrity: true,
        seconds: 10.0,
        inflight: 128 << 20,
        mem_bios: 8_000_000,
        mem_device: 64 << 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--image" => args.image = PathBuf::from(value("--image")?),
            "--size" => args.size = parse_bytes(&value("--size")?)?,
            "--json" => args.json = Some(PathBuf::from(value("--json")?)),
            "--only" => {
                let v = value("--only")?;
                args.only = Some(v.split(',').map(str::to_string).collect());
            }
            "--workers" => {
                let v = value("--workers")?;
                args.workers = v
                    .parse()
                    .map_err(|_| format!("--workers: bad count '{v}'"))?;
            }
            "--seq-workers" => {
                let v = value("--seq-workers")?;
                args.seq_workers = v
                    .parse()
                    .map_err(|_| format!("--seq-workers: bad count '{v}'"))?;
            }
            "--uring" => {
                let v = value("--uring")?;
                args.uring = v.parse().map_err(|_| format!("--uring: bad depth '{v}'"))?;
            }
            "--verify-workers" => {
                let v = value("--verify-workers")?;
                args.verify_workers = v
                    .parse()
                    .map_err(|_| format!("--verify-workers: bad count '{v}'"))?;
            }
            "--integrity" => {
                args.integrity = match value("--integrity")?.as_str() {
                    "on" => true,
                    "off" => false,
                    v => return Err(format!("--integrity: '{v}' is not on or off")),
                }
            }
            "--seconds" => {
                let v = value("--seconds")?;
                args.seconds = v
                    .parse()
                    .map_err(|_| format!("--seconds: bad value '{v}'"))?;
            }
            "--inflight" => args.inflight = parse_bytes(&value("--inflight")?)?,
            "--mem-bios" => args.mem_bios = parse_bytes(&value("--mem-bios")?)?,
            "--mem-device" => args.mem_device = parse_bytes(&value("--mem-device")?)?,
            // `cargo bench` passes --bench to harness = false targets.
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    if args.size < BIO_BYTES || args.size % BIO_BYTES != 0 {
        return Err(format!(
            "--size {} must be a non-zero multiple of {BIO_BYTES}",
            args.size
        ));
    }
    for name in args.only.iter().flatten() {
        if !CASES.contains(&name.as_str()) {
            return Err(format!("--only: no case named '{name}'\n{USAGE}"));
        }
    }
    if args.workers == 0
        || args.seq_workers == 0
        || args.inflight < BIO_BYTES
        || args.mem_device < (1 << 20)
        || args.seconds.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
    {
        return Err("--workers, --seq-workers, --inflight and --seconds must be positive, --mem-device at least 1M".into());
    }
    Ok(Some(args))
}

/// Bios in flight, bounded, with hysteresis: a submitter that hits the limit
/// flushes its plug and sleeps until half the budget has completed, so it
/// goes on to build full-size requests rather than trickling single bios.
///
/// A static so that completion closures capture nothing: boxing a
/// zero-sized closure does not allocate, and the bench measures the engine,
/// not its own bookkeeping.
struct Gate {
    inflight: AtomicU64,
    limit: AtomicU64,
    waiting: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

static GATE: Gate = Gate {
    inflight: AtomicU64::new(0),
    limit: AtomicU64::new(1),
    waiting: AtomicBool::new(false),
    lock: Mutex::new(()),
    cv: Condvar::new(),
};
static COMPLETED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);
static MISMATCHED: AtomicU64 = AtomicU64::new(0);

impl Gate {
    fn reset(&self, limit: u64) {
        self.inflight.store(0, Ordering::SeqCst);
        self.limit.store(limit.max(2), Ordering::SeqCst);
        COMPLETED.store(0, Ordering::SeqCst);
        FAILED.store(0, Ordering::SeqCst);
        MISMATCHED.store(0, Ordering::SeqCst);
    }

    /// Room for one more bio; may flush `plug` and wait.
    fn take(&self, plug: &Plug) {
        let limit = self.limit.load(Ordering::Relaxed);
        if self.inflight.load(Ordering::Acquire) >= limit {
            plug.flush();
            self.wait_until(limit / 2);
        }
        self.inflight.fetch_add(1, Ordering::AcqRel);
    }

    /// Sleep until at most `low` bios are in flight.
    fn wait_until(&self, low: u64) {
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            self.waiting.store(true, Ordering::SeqCst);
            if self.inflight.load(Ordering::SeqCst) <= low {
                break;
            }
            guard = match self.cv.wait_timeout(guard, Duration::from_millis(10)) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        self.waiting.store(false, Ordering::SeqCst);
    }

    /// A bio completed (call after dropping it, so its bio set slot is free).
    fn put(&self) {
        COMPLETED.fetch_add(1, Ordering::Relaxed);
        let left = self.inflight.fetch_sub(1, Ordering::SeqCst) - 1;
        let low = self.limit.load(Ordering::Relaxed) / 2;
        if left <= low && self.waiting.load(Ordering::SeqCst) {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cv.notify_all();
        }
    }
}

/// The write completion: count, free the bio, open the gate.
fn write_done(bio: Bio) {
    if !bio.status().is_ok() {
        FAILED.fetch_add(1, Ordering::Relaxed);
    }
    drop(bio);
    GATE.put();
}

/// Allocate from `set`; `Gfp::Wait` never fails, `None` is a bug in the set.
fn alloc(set: &BioSet, op: ReqOp, sector: u64) -> BenchResult<Bio> {
    set.alloc(op, Sector(sector), 1, Gfp::Wait)
        .ok_or_else(|| format!("bio set {} returned no bio to a waiting alloc", set.name()))
}

/// Page `i` of the write pattern: its index in the first 8 bytes, then a
/// byte pattern, so a read can tell which page landed where.
fn pattern_pages() -> Vec<Page> {
    (0..WRITE_PAGES)
        .map(|i| {
            let mut buf = vec![0u8; PAGE_SIZE];
            for (j, b) in buf.iter_mut().enumerate() {
                *b = (j as u8).wrapping_mul(31).wrapping_add(i as u8);
            }
            buf[..8].copy_from_slice(&(i as u64).to_le_bytes());
            Page::from_slice(&buf)
        })
        .collect()
}

/// CPU time this process (all its threads) has used so far.
fn cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000)
            };
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

fn mib_per_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / t.as_secs_f64()
}

/// Open the image with `O_DIRECT` and a queue over it.
fn open_queue(args: &Args, config: QueueConfig) -> BenchResult<Queue> {
    let opts = FileOptions {
        direct: DirectMode::Require,
        read_only: false,
    };
    let path = &args.image;
    let backend = FileBackend::open(path, opts)
        .map_err(|e| format!("{}: can't open with O_DIRECT: {e}", path.display()))?;
    let queue = Queue::new(Arc::new(backend), config)
        .map_err(|e| format!("{}: can't start the queue: {e}", path.display()))?;
    if queue.capacity() << SECTOR_SHIFT < args.size {
        return Err(format!(
            "{}: data area of {} bytes after integrity metadata is below --size {}",
            path.display(),
            queue.capacity() << SECTOR_SHIFT,
            args.size
        ));
    }
    Ok(queue)
}

/// Image bytes for `size` bytes of data plus the integrity metadata
/// (tuples are 1/512 of the data; the rest is slack).
fn image_bytes(size: u64) -> u64 {
    size + size / 128 + (16 << 20)
}

/// Create or extend the image, and lay out crc32c-4k integrity on it
/// (unless integrity is off).
fn format_image(args: &Args) -> BenchResult<()> {
    let path = &args.image;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    FileBackend::create(path, image_bytes(args.size))
        .map_err(|e| format!("{}: can't create the image: {e}", path.display()))?;
    let opts = FileOptions {
        direct: DirectMode::Require,
        read_only: false,
    };
    let backend = FileBackend::open(path, opts)
        .map_err(|e| format!("{}: can't open with O_DIRECT: {e}", path.display()))?;
    if !args.integrity {
        return Ok(());
    }
    let profile = IntegrityProfile::new(4096, Checksum::Crc32c).map_err(|e| e.to_string())?;
    IntegrityStore::format(&backend as &dyn BlockBackend, profile)
        .map_err(|e| format!("{}: integrity format: {e}", path.display()))?;
    Ok(())
}

fn seq_config(args: &Args) -> QueueConfig {
    QueueConfig {
        nr_workers: args.seq_workers,
        queue_depth: args.seq_workers * 2,
        nr_verify_workers: args.verify_workers,
        integrity: if args.integrity {
            IntegrityMode::on()
        } else {
            IntegrityMode::Off
        },
        ..QueueConfig::default()
    }
}

/// Percent of device data requests above the least possible number.
fn merge_overhead(requests: u64, bytes: u64, max_bytes: u64) -> (f64, u64) {
    let ideal = bytes.div_ceil(max_bytes).max(1);
    let over = requests.saturating_sub(ideal) as f64 / ideal as f64 * 100.0;
    (over, ideal)
}

fn check_clean(what: &str, s: &StatsSnapshot) -> BenchResult<()> {
    let (failed, mismatched) = (
        FAILED.load(Ordering::SeqCst),
        MISMATCHED.load(Ordering::SeqCst),
    );
    if failed > 0 || mismatched > 0 || s.errors > 0 || s.integrity_failed > 0 {
        return Err(format!(
            "{what}: {failed} bios failed, {mismatched} read wrong data, {} queue errors, {} integrity failures",
            s.errors, s.integrity_failed
        ));
    }
    Ok(())
}

/// `seqwrite`: returns the MiB/s figure and the merge figure.
fn seq_write(args: &Args) -> BenchResult<Vec<Figure>> {
    format_image(args)?;
    let q = open_queue(args, seq_config(args))?;
    let nbios = args.size / BIO_BYTES;
    let budget = args.inflight / BIO_BYTES;
    let pages = pattern_pages();
    let set = BioSet::new("bench-write", budget as usize + 1, 1);
    GATE.reset(budget);
    let start = Instant::now();
    {
        let plug = Plug::new();
        for i in 0..nbios {
            GATE.take(&plug);
            let mut bio = alloc(&set, ReqOp::Write, i * BIO_SECTORS)?;
            bio.add_page(pages[i as usize % WRITE_PAGES].clone(), BIO_BYTES as u32, 0);
            bio.set_end_io(write_done);
            q.submit_bio(bio);
        }
    }
    // A flush makes durable what has completed: wait for every write first.
    GATE.wait_until(0);
    let flush = q.submit_bio_wait(Bio::new_flush());
    let elapsed = start.elapsed();
    if !flush.status().is_ok() {
        return Err(format!("final flush failed: {:?}", flush.status()));
    }
    let s = q.stats();
    check_clean("seqwrite", &s)?;
    q.shutdown().map_err(|e| format!("queue shutdown: {e}"))?;
    let (over, ideal) = merge_overhead(s.writes, args.size, q.limits().max_bytes());
    Ok(vec![
        Figure {
            name: "seqwrite",
            unit: "MiB/s",
            value: mib_per_s(args.size, elapsed),
            note: format!(
                "{} MiB in {:.2} s, {} tuples",
                args.size >> 20,
                elapsed.as_secs_f64(),
                s.integrity_generated
            ),
        },
        Figure {
            name: "merge_overhead_pct",
            unit: "%",
            value: over,
            note: format!(
                "{} write requests for {ideal} of {} KiB; {} back merges",
                s.writes,
                q.limits().max_bytes() >> 10,
                s.merges_back
            ),
        },
    ])
}

/// Check a completed read bio against the write pattern, free it, and
/// send its page back for reuse.
fn read_done(mut bio: Bio, index: u64, pages: &crossbeam_channel::Sender<Page>) {
    if !bio.status().is_ok() {
        FAILED.fetch_add(1, Ordering::Relaxed);
    }
    let segs = bio.take_segments();
    drop(bio);
    for seg in segs {
        let stamp = seg.page.as_slice().get(..8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        });
        if stamp != Some(index % WRITE_PAGES as u64) {
            MISMATCHED.fetch_add(1, Ordering::Relaxed);
        }
        let _ = pages.send(seg.page);
    }
    GATE.put();
}

/// `seqread`: read back what `seqwrite` wrote, verified.
fn seq_read(args: &Args) -> BenchResult<Vec<Figure>> {
    let q = open_queue(args, seq_config(args))?;
    let nbios = args.size / BIO_BYTES;
    let budget = args.inflight / BIO_BYTES;
    let (page_tx, page_rx) = crossbeam_channel::unbounded::<Page>();
    for _ in 0..budget {
        let _ = page_tx.send(Page::new());
    }
    let set = BioSet::new("bench-read", budget as usize + 1, 1);
    GATE.reset(budget);
    let start = Instant::now();
    {
        let plug = Plug::new();
        for i in 0..nbios {
            GATE.take(&plug);
            let page = page_rx
                .recv()
                .map_err(|_| "the page channel closed".to_string())?;
            let mut bio = alloc(&set, ReqOp::Read, i * BIO_SECTORS)?;
            bio.add_page(page, BIO_BYTES as u32, 0);
            let tx = page_tx.clone();
            bio.set_end_io(move |b| read_done(b, i, &tx));
            q.submit_bio(bio);
        }
    }
    GATE.wait_until(0);
    let elapsed = start.elapsed();
    let s = q.stats();
    check_clean("seqread", &s)?;
    if args.integrity && s.integrity_verified < nbios {
        return Err(format!(
            "seqread: only {} of {nbios} intervals were verified",
            s.integrity_verified
        ));
    }
    let (over, _) = merge_overhead(s.reads, args.size, q.limits().max_bytes());
    Ok(vec![Figure {
        name: "seqread",
        unit: "MiB/s",
        value: mib_per_s(args.size, elapsed),
        note: format!(
            "{:.2} s, {} intervals verified, {} read requests ({over:.2}% above ideal)",
            elapsed.as_secs_f64(),
            s.integrity_verified,
            s.reads
        ),
    }])
}

/// `randread`: 4 KiB reads at random blocks of the written range, with
/// `RAND_DEPTH` bios in flight. Each completion submits the next read from
/// the completion context, as an asynchronous user of the engine would.
fn rand_read(args: &Args) -> BenchResult<Vec<Figure>> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let io_mode = if args.uring > 0 {
        IoMode::Uring { depth: args.uring }
    } else {
        IoMode::Blocking
    };
    let config = QueueConfig {
        nr_workers: args.workers,
        queue_depth: args.workers * args.uring.max(1) as usize,
        io_mode,
        ..seq_config(args)
    };
    let q = Arc::new(open_queue(args, config)?);
    let blocks = args.size / BIO_BYTES;
    let run_for = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0x9E37_79B9_7F4A_7C15));
    let (idle_tx, idle_rx) = crossbeam_channel::unbounded::<()>();
    // splitmix64 over a shared counter: a random block per read, any thread.
    let next_block = {
        let seq = Arc::clone(&seq);
        move || {
            let mut z = seq.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) % blocks
        }
    };
    // The handler resubmits with itself: it finds itself through a slot the
    // bench owns (a weak link, so nothing outlives the run).
    let slot: Arc<std::sync::OnceLock<biofs::block::SharedEndIo>> =
        Arc::new(std::sync::OnceLock::new());
    let handler: biofs::block::SharedEndIo = {
        let (q, done, failed) = (Arc::downgrade(&q), Arc::clone(&done), Arc::clone(&failed));
        let next_block = next_block.clone();
        let me = Arc::downgrade(&slot);
        Arc::new(move |mut bio: Bio| {
            done.fetch_add(1, Ordering::Relaxed);
            if !bio.status().is_ok() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            let page = bio.take_segments().pop().map(|s| s.page);
            drop(bio);
            let me = me.upgrade();
            let me = me.as_ref().and_then(|slot| slot.get());
            match (page, q.upgrade(), me, start.elapsed() < run_for) {
                (Some(page), Some(q), Some(me), true) => {
                    let mut next = Bio::new(ReqOp::Read, Sector(next_block() * BIO_SECTORS), 1);
                    next.add_page(page, BIO_BYTES as u32, 0);
                    next.set_end_io_shared(me);
                    q.submit_bio(next);
                }
                _ => {
                    let _ = idle_tx.send(());
                }
            }
        })
    };
    let _ = slot.set(Arc::clone(&handler));
    for _ in 0..RAND_DEPTH {
        let mut bio = Bio::new(ReqOp::Read, Sector(next_block() * BIO_SECTORS), 1);
        bio.add_page(Page::new(), BIO_BYTES as u32, 0);
        bio.set_end_io_shared(&handler);
        q.submit_bio(bio);
    }
    for _ in 0..RAND_DEPTH {
        idle_rx
            .recv()
            .map_err(|_| "the completion channel closed".to_string())?;
    }
    let elapsed = start.elapsed();
    let (done, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let s = q.stats();
    if failed > 0 || s.integrity_failed > 0 {
        return Err(format!(
            "randread: {failed} bios failed, {} integrity failures",
            s.integrity_failed
        ));
    }
    Ok(vec![Figure {
        name: "randread",
        unit: "IOPS",
        value: done as f64 / elapsed.as_secs_f64(),
        note: format!(
            "{done} reads in {:.1} s, {RAND_DEPTH} in flight, {} workers{}, {}",
            elapsed.as_secs_f64(),
            args.workers,
            if args.uring > 0 {
                format!(" x {} via io_uring", args.uring)
            } else {
                " (blocking)".to_string()
            },
            if args.integrity {
                "verified"
            } else {
                "integrity off"
            }
        ),
    }])
}

/// `mem_bios`: the engine's own cost per bio, on a memory device.
fn mem_bios(args: &Args) -> BenchResult<Vec<Figure>> {
    let device = args.mem_device;
    let config = QueueConfig {
        nr_workers: 1,
        nr_verify_workers: 1,
        ..QueueConfig::default()
    };
    let backend = Arc::new(MemBackend::new(device));
    let q = Queue::new(backend, config).map_err(|e| format!("memory queue: {e}"))?;
    let blocks = device / BIO_BYTES;
    let budget = (16u64 << 20) / BIO_BYTES;
    let pages = pattern_pages();
    let set = BioSet::new("bench-mem", budget as usize + 1, 1);
    GATE.reset(budget);
    let (start, cpu0) = (Instant::now(), cpu_time());
    {
        let plug = Plug::new();
        for i in 0..args.mem_bios {
            GATE.take(&plug);
            let mut bio = alloc(&set, ReqOp::Write, (i % blocks) * BIO_SECTORS)?;
            bio.add_page(pages[i as usize % WRITE_PAGES].clone(), BIO_BYTES as u32, 0);
            bio.set_end_io(write_done);
            q.submit_bio(bio);
        }
    }
    GATE.wait_until(0);
    let (elapsed, cpu) = (start.elapsed(), cpu_time().saturating_sub(cpu0));
    let s = q.stats();
    check_clean("mem_bios", &s)?;
    let done = COMPLETED.load(Ordering::SeqCst) as f64;
    Ok(vec![Figure {
        name: "mem_bios",
        unit: "bios/s",
        value: done / elapsed.as_secs_f64(),
        note: format!(
            "{} bios in {:.2} s ({:.0} per CPU-second), {} requests, 1 worker, {} MiB device",
            s.bios_completed,
            elapsed.as_secs_f64(),
            done / cpu.as_secs_f64().max(1e-9),
            s.writes,
            device >> 20
        ),
    }])
}

fn print_table(figures: &[Figure]) {
    println!("{:<20} {:>14} {:<7} notes", "case", "value", "unit");
    for f in figures {
        println!("{:<20} {:>14.2} {:<7} {}", f.name, f.value, f.unit, f.note);
    }
}

fn json_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn to_json(figures: &[Figure]) -> String {
    let mut out = String::from("{\"suite\": \"engine\", \"results\": [");
    for (i, f) in figures.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(
            out,
            "{sep}{{\"name\": \"{}\", \"unit\": \"{}\", \"biofs\": {:.3}, \"raw\": null, \"note\": \"{}\"}}",
            f.name,
            f.unit,
            f.value,
            json_escape(&f.note)
        );
    }
    out.push_str("]}\n");
    out
}

fn run(args: &Args) -> BenchResult<Vec<Figure>> {
    let wants = |name: &str| {
        args.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|n| n == name))
    };
    let mut figures = Vec::new();
    let file_cases = ["seqwrite", "seqread", "randread"];
    if file_cases.iter().any(|c| wants(c)) {
        // The reads need the data and tuples seqwrite leaves behind.
        let existed = args.image.exists();
        let written = seq_write(args)?;
        if wants("seqwrite") {
            figures.extend(written);
        }
        if wants("seqread") {
            figures.extend(seq_read(args)?);
        }
        if wants("randread") {
            figures.extend(rand_read(args)?);
        }
        if !existed {
            std::fs::remove_file(&args.image)
                .map_err(|e| format!("{}: can't remove: {e}", args.image.display()))?;
        }
    }
    if wants("mem_bios") {
        figures.extend(mem_bios(args)?);
    }
    Ok(figures)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engine bench: {e}");
            return ExitCode::from(2);
        }
    };
    let figures = match run(&args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("engine bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_table(&figures);
    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, to_json(&figures)) {
            eprintln!("engine bench: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
