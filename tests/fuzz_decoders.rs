//! Deterministic fuzzing of the on-disk decoders of `src/format/`.
//!
//! Every target builds valid encodings of its structure with the public
//! encoders (random but realistic values), mutates them with a seeded PRNG
//! (bit flips, bytes set to 0x00/0xff/random, interesting integers at
//! aligned offsets and in the length and count fields, truncation and
//! extension, random runs, splices from another valid encoding, whole
//! random buffers, and values that break an invariant encoded as they are),
//! usually re-seals the checksum so the mutant reaches the validation
//! behind it, and feeds it to the decoder. Required of every case:
//!
//! - no panic (debug builds, so arithmetic overflow panics too): each case
//!   runs under `catch_unwind`, and a panic is reported with the seed, the
//!   iteration, the mutations applied and a hex dump of the input;
//! - no hang: a watchdog aborts the process, printing the same, if one
//!   case takes longer than `BIOFS_FUZZ_HANG_SECS` (default 60);
//! - for an `Ok`, the value obeys the structure's documented invariants and
//!   survives encode-then-decode unchanged.
//!
//! Besides the decoders: `Geometry::new` on random and extreme arguments
//! (never a panic; an `Ok` layout is consistent), `bitmap::find_free_run`
//! against a plain reference, and the journal's log decoder through a
//! `Dev` over memory (commit, mutate the log, open, scan, replay).
//!
//! Environment: `BIOFS_FUZZ_ITERS` (cases per target, default 2000; the
//! journal target runs a twentieth of it, it does I/O), `BIOFS_FUZZ_SEED`
//! (decimal or 0x-hex; default fixed, so `cargo test` is deterministic),
//! `BIOFS_FUZZ_START` (first iteration: `BIOFS_FUZZ_START=i
//! BIOFS_FUZZ_ITERS=1` reruns case `i` alone, each case has its own PRNG).
//! `docs/testing.md` has the commands for long runs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

mod common;

use common::rng::Rng;
use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use biofs::block::backend::MemBackend;
use biofs::format::bitmap;
use biofs::format::dev::{Dev, DevOptions};
use biofs::format::dir::{self, DirEntry, DirNode, NodeEntry, ENTRY_SPACE};
use biofs::format::extent::{self, Extent, ExtentNode, IndexEntry, MAX_EXTENT_LEN};
use biofs::format::geometry::{DESCS_PER_BLOCK, GROUP_DESC_SIZE, MAX_BLOCKS, MIN_JOURNAL_BLOCKS};
use biofs::format::group::{GroupDesc, BLOCK_UNINIT, INODE_UNINIT};
use biofs::format::inode::{self, FileType, Inode, InodeData, Timespec, INLINE_DATA};
use biofs::format::journal::{Journal, JournalSuper, LOG_MAGIC, MAX_SEQ, TAGS_PER_BLOCK};
use biofs::format::superblock::{self, Superblock, LABEL_MAX};
use biofs::format::xattr::{self, Namespace, Xattr};
use biofs::format::{
    block_csum, meta_csum, uuid_seed, Geometry, BLOCKS_PER_GROUP, BLOCK_SIZE, INODES_PER_BLOCK,
    INODE_SIZE, MAX_FILE_BLOCKS, NAME_MAX,
};

// ---------------------------------------------------------------------------
// PRNG and the values it draws
// ---------------------------------------------------------------------------

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim().replace('_', "");
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

/// The base seed of a run when `BIOFS_FUZZ_SEED` is unset.
const DEFAULT_SEED: u64 = 0xB10F_5EED;

// ---------------------------------------------------------------------------
// The runner: catch_unwind, reports, watchdog
// ---------------------------------------------------------------------------

thread_local! {
    /// True while this thread runs a fuzz case (panics are then recorded,
    /// not printed by the default hook).
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
    /// The last panic of a case on this thread: message and location.
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CASE.with(Cell::get) {
                let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
                    (*s).to_string()
                } else if let Some(s) = info.payload().downcast_ref::<String>() {
                    s.clone()
                } else {
                    "(non-string panic payload)".to_string()
                };
                let loc = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                    .unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = Some((msg, loc)));
            } else {
                default(info);
            }
        }));
    });
}

/// What the current case is: the input handed to the decoder and the notes
/// on how it was made, shared with the watchdog so a hang can be reported.
#[derive(Default)]
struct CaseState {
    input: Vec<u8>,
    notes: Vec<String>,
}

struct Trace<'a> {
    state: &'a Mutex<CaseState>,
}

impl Trace<'_> {
    fn note(&self, s: impl Into<String>) {
        self.state.lock().unwrap().notes.push(s.into());
    }

    /// Record `bytes` as the input about to be decoded.
    fn input(&self, bytes: &[u8]) {
        let mut st = self.state.lock().unwrap();
        st.input.clear();
        st.input.extend_from_slice(bytes);
    }
}

/// A hex dump, 16 bytes a line, runs of identical lines folded into `*`.
fn hex_dump(data: &[u8]) -> String {
    let mut out = String::new();
    let mut prev: Option<&[u8]> = None;
    let mut folded = false;
    for (i, line) in data.chunks(16).enumerate() {
        if prev == Some(line) && (i + 1) * 16 < data.len() {
            if !folded {
                out.push_str("*\n");
                folded = true;
            }
            continue;
        }
        folded = false;
        prev = Some(line);
        let _ = write!(out, "{:08x} ", i * 16);
        for (j, b) in line.iter().enumerate() {
            let _ = write!(out, "{}{b:02x}", if j == 8 { "  " } else { " " });
        }
        out.push('\n');
    }
    let _ = writeln!(out, "{:08x}", data.len());
    out
}

fn case_report(target: &str, seed: u64, iter: u64, what: &str, st: &CaseState) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "fuzz target `{target}`: seed {seed:#x} iteration {iter}: {what}"
    );
    let _ = writeln!(
        r,
        "  rerun: BIOFS_FUZZ_SEED={seed:#x} BIOFS_FUZZ_START={iter} BIOFS_FUZZ_ITERS=1 \
         cargo test --test fuzz_decoders {target} -- --nocapture"
    );
    for n in &st.notes {
        let _ = writeln!(r, "  {n}");
    }
    if !st.input.is_empty() {
        let _ = writeln!(r, "  input, {} bytes:", st.input.len());
        r.push_str(&hex_dump(&st.input));
    }
    r
}

/// How a case ended, for the statistics printed at the end of a target
/// (a target whose mutants are all rejected early tests little).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Rejected,
}
use Outcome::{Accepted, Rejected};

impl<T, E> From<&Result<T, E>> for Outcome {
    fn from(r: &Result<T, E>) -> Outcome {
        if r.is_ok() {
            Accepted
        } else {
            Rejected
        }
    }
}

/// Run `body` on `iters` cases, each with its own PRNG derived from the
/// base seed, the target and the iteration. Panics at the end if any case
/// failed, after printing every distinct failure (by panic location).
fn fuzz(target: &str, divisor: u64, mut body: impl FnMut(&mut Rng, &Trace) -> Outcome) {
    install_panic_hook();
    let seed = env_u64("BIOFS_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let iters = (env_u64("BIOFS_FUZZ_ITERS").unwrap_or(2000) / divisor).max(1);
    let first = env_u64("BIOFS_FUZZ_START").unwrap_or(0);
    let hang = Duration::from_secs(env_u64("BIOFS_FUZZ_HANG_SECS").unwrap_or(60));
    println!(
        "fuzz target `{target}`: seed {seed:#x}, iterations {first}..{}",
        first + iters
    );

    let state = Mutex::new(CaseState::default());
    let current = AtomicU64::new(first);
    let done = AtomicBool::new(false);
    let start = Instant::now();
    let mut elapsed = Duration::ZERO;
    let mut failures: Vec<(String, u64)> = Vec::new(); // (location, count)
    let mut failed_cases = 0u64;
    let mut accepted = 0u64;

    std::thread::scope(|s| {
        s.spawn(|| {
            let (mut seen, mut since) = (u64::MAX, Instant::now());
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                let now = current.load(Ordering::Relaxed);
                if now != seen {
                    (seen, since) = (now, Instant::now());
                } else if since.elapsed() > hang {
                    let st = state.lock().unwrap_or_else(|e| e.into_inner());
                    eprintln!(
                        "{}",
                        case_report(
                            target,
                            seed,
                            now,
                            &format!("no progress in {hang:?} (hang)"),
                            &st
                        )
                    );
                    std::process::abort();
                }
            }
        });
        let trace = Trace { state: &state };
        for iter in first..first + iters {
            current.store(iter, Ordering::Relaxed);
            *state.lock().unwrap() = CaseState::default();
            let mut rng = Rng(seed ^ fnv1a(target) ^ iter.wrapping_mul(0xD134_2543_DE82_EF95));
            rng.next();
            IN_CASE.with(|c| c.set(true));
            let res = catch_unwind(AssertUnwindSafe(|| body(&mut rng, &trace)));
            IN_CASE.with(|c| c.set(false));
            match res {
                Ok(o) => accepted += u64::from(o == Accepted),
                Err(_) => {
                    failed_cases += 1;
                    let (msg, loc) = LAST_PANIC
                        .with(|p| p.borrow_mut().take())
                        .unwrap_or_else(|| ("(unknown panic)".into(), String::new()));
                    match failures.iter_mut().find(|(l, _)| *l == loc) {
                        Some((_, n)) => *n += 1,
                        None => {
                            let st = state.lock().unwrap();
                            eprintln!(
                                "{}",
                                case_report(
                                    target,
                                    seed,
                                    iter,
                                    &format!("panicked at {loc}: {msg}"),
                                    &st
                                )
                            );
                            failures.push((loc, 1));
                        }
                    }
                }
            }
        }
        elapsed = start.elapsed();
        done.store(true, Ordering::Relaxed);
    });

    let secs = elapsed.as_secs_f64();
    println!(
        "fuzz target `{target}`: {iters} cases in {secs:.2} s ({:.0}/s), {:.1}% accepted, {failed_cases} failed",
        iters as f64 / secs.max(1e-9),
        100.0 * accepted as f64 / iters as f64,
    );
    if !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(|(l, n)| format!("{n} x {l}")).collect();
        panic!(
            "fuzz target `{target}` (seed {seed:#x}): {failed_cases} failing cases: {}",
            list.join(", ")
        );
    }
}

// ---------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------

/// A field of a layout: offset and width in bytes (1, 2, 4 or 8). Mutations
/// aim at these (counts, lengths, block numbers) more than at random bytes.
#[derive(Clone, Copy, Debug)]
struct Field(usize, usize);

fn read_le(buf: &[u8], f: Field) -> Option<u64> {
    let s = buf.get(f.0..f.0 + f.1)?;
    let mut b = [0u8; 8];
    b[..f.1].copy_from_slice(s);
    Some(u64::from_le_bytes(b))
}

fn write_le(buf: &mut [u8], f: Field, v: u64) {
    if let Some(s) = buf.get_mut(f.0..f.0 + f.1) {
        s.copy_from_slice(&v.to_le_bytes()[..f.1]);
    }
}

/// Apply 1 to 3 (sometimes up to 16) random mutations to `buf`, noting each.
fn mutate(rng: &mut Rng, buf: &mut Vec<u8>, hot: &[Field], donor: &[u8], t: &Trace) {
    let many = rng.chance(1, 8);
    let n = 1 + rng.below(if many { 16 } else { 3 });
    for _ in 0..n {
        let len = buf.len();
        match rng.below(16) {
            0 | 1 if len > 0 => {
                let bit = rng.index(len * 8);
                buf[bit / 8] ^= 1 << (bit % 8);
                t.note(format!("flip bit {} of byte {}", bit % 8, bit / 8));
            }
            2 if len > 0 => {
                let (i, r) = (rng.index(len), rng.next() as u8);
                let v = rng.pick(&[0x00, 0xff, r]);
                buf[i] = v;
                t.note(format!("byte {i} = {v:#04x}"));
            }
            3 | 4 if len > 0 => {
                let w = rng.pick(&[1usize, 2, 4, 8]);
                if len >= w {
                    let off = rng.index(len / w) * w;
                    let v = rng.interesting();
                    write_le(buf, Field(off, w), v);
                    t.note(format!("u{} at {off} = {v:#x}", w * 8));
                }
            }
            5..=8 if !hot.is_empty() => {
                let f = rng.pick(hot);
                let Some(cur) = read_le(buf, f) else { continue };
                let mask = if f.1 == 8 {
                    u64::MAX
                } else {
                    (1u64 << (f.1 * 8)) - 1
                };
                let v = match rng.below(6) {
                    0 => cur.wrapping_add(1),
                    1 => cur.wrapping_sub(1),
                    2 => cur.wrapping_add(rng.range(2, 64)),
                    3 => (len as u64)
                        .wrapping_sub(rng.below(3))
                        .wrapping_add(rng.below(3)),
                    4 => cur.wrapping_mul(2),
                    _ => rng.interesting(),
                } & mask;
                write_le(buf, f, v);
                t.note(format!(
                    "field u{} at {} = {v:#x} (was {cur:#x})",
                    f.1 * 8,
                    f.0
                ));
            }
            9 if len > 0 => {
                let cut = if rng.chance(1, 2) {
                    len - 1
                } else {
                    rng.index(len)
                };
                buf.truncate(cut);
                t.note(format!("truncate to {cut} bytes"));
            }
            10 if len > 0 => {
                let off = rng.index(len);
                let n = (1 + rng.index(32)).min(len - off);
                rng.fill(&mut buf[off..off + n]);
                t.note(format!("random bytes {off}..{}", off + n));
            }
            11 if len > 1 => {
                let n = 1 + rng.index(64.min(len - 1));
                let (from, to) = (rng.index(len - n + 1), rng.index(len - n + 1));
                buf.copy_within(from..from + n, to);
                t.note(format!("copy {n} bytes from {from} to {to}"));
            }
            12 if !donor.is_empty() && len > 0 => {
                let off = rng.index(len.min(donor.len()));
                let n = (1 + rng.index(256)).min(len - off).min(donor.len() - off);
                buf[off..off + n].copy_from_slice(&donor[off..off + n]);
                t.note(format!(
                    "splice {off}..{} from another valid encoding",
                    off + n
                ));
            }
            13 => {
                let n = 1 + rng.index(64);
                let extra = rng.bytes(n);
                buf.extend_from_slice(&extra);
                t.note(format!("append {n} random bytes"));
            }
            14 if rng.chance(1, 8) => {
                let n = if rng.chance(1, 2) {
                    len
                } else {
                    rng.index(len + 64)
                };
                *buf = rng.bytes(n);
                if rng.chance(1, 2) {
                    // Keep the magic, or nothing gets past the first check.
                    let m = donor.len().min(8).min(buf.len());
                    buf[..m].copy_from_slice(&donor[..m]);
                }
                t.note(format!("whole buffer random ({n} bytes)"));
            }
            _ if len > 0 => {
                let i = rng.index(len);
                buf[i] = buf[i].wrapping_add(rng.pick(&[1, 0xff]));
                t.note(format!("byte {i} += / -= 1"));
            }
            _ => {}
        }
    }
}

/// Re-seal a CRC that covers `buf[..off]` (superblock, descriptor, inode).
fn reseal_meta(buf: &mut [u8], seed: u32, nr: u64, off: usize) {
    if buf.len() >= off + 4 {
        let c = meta_csum(seed, nr, &buf[..off]);
        buf[off..off + 4].copy_from_slice(&c.to_le_bytes());
    }
}

/// Re-seal a CRC that covers the whole buffer, itself counted as zero.
fn reseal_block(buf: &mut [u8], seed: u32, nr: u64, off: usize) {
    if buf.len() >= off + 4 {
        let c = block_csum(seed, nr, buf, off);
        buf[off..off + 4].copy_from_slice(&c.to_le_bytes());
    }
}

/// Most mutants get a valid checksum again, so that the validation behind
/// the checksum is what they test; a few keep the broken one.
fn reseal_often(rng: &mut Rng, t: &Trace) -> bool {
    if rng.chance(7, 8) {
        t.note("checksum re-sealed");
        true
    } else {
        false
    }
}

// ---------------------------------------------------------------------------
// Valid values
// ---------------------------------------------------------------------------

fn timespec(rng: &mut Rng) -> Timespec {
    Timespec {
        sec: if rng.chance(1, 4) {
            rng.interesting() as i64
        } else {
            1_600_000_000 + rng.below(200_000_000) as i64
        },
        nsec: if rng.chance(1, 8) {
            rng.pick(&[0, 999_999_999])
        } else {
            rng.below(1_000_000_000) as u32
        },
    }
}

/// A valid directory-entry name: 1..=255 bytes, no '/' or NUL, not . or ..
fn dir_name(rng: &mut Rng) -> Vec<u8> {
    loop {
        let len = match rng.below(8) {
            0 => NAME_MAX,
            1 => 1 + rng.index(NAME_MAX),
            _ => 1 + rng.index(24),
        };
        let mut n: Vec<u8> = (0..len)
            .map(|_| {
                if rng.chance(3, 4) {
                    rng.pick(b"abcdefghijklmnopqrstuvwxyz0123456789._-")
                } else {
                    rng.range(1, 255) as u8
                }
            })
            .collect();
        for b in &mut n {
            if *b == b'/' {
                *b = b'_';
            }
        }
        if dir::valid_name(&n) {
            return n;
        }
    }
}

/// Up to `max` sorted, non-overlapping extents of a file.
fn extents(rng: &mut Rng, max: usize) -> Vec<Extent> {
    let n = rng.index(max + 1);
    let mut out = Vec::with_capacity(n);
    let mut logical = if rng.chance(1, 4) {
        MAX_FILE_BLOCKS - rng.range(1, 4) * u64::from(MAX_EXTENT_LEN)
    } else {
        rng.below(1 << 20)
    };
    for _ in 0..n {
        let len = match rng.below(4) {
            0 => MAX_EXTENT_LEN,
            1 => 1,
            _ => rng.range(1, u64::from(MAX_EXTENT_LEN)) as u32,
        };
        if logical + u64::from(len) > MAX_FILE_BLOCKS {
            break;
        }
        let physical = match rng.below(4) {
            0 => rng.range(1, 1 << 20),
            1 => rng.range(1, MAX_BLOCKS - u64::from(MAX_EXTENT_LEN)),
            _ => rng.range(1, 1 << 34),
        };
        out.push(Extent {
            logical,
            physical,
            len,
            unwritten: rng.chance(1, 4),
        });
        logical += u64::from(len)
            + if rng.chance(1, 2) {
                0
            } else {
                rng.below(1 << 16)
            };
    }
    out
}

fn index_entries(rng: &mut Rng, max: usize) -> Vec<IndexEntry> {
    let n = 1 + rng.index(max);
    let mut logical = if rng.chance(1, 2) {
        0
    } else {
        rng.below(1 << 24)
    };
    let mut out = Vec::new();
    for _ in 0..n {
        if logical >= MAX_FILE_BLOCKS {
            break;
        }
        out.push(IndexEntry {
            logical,
            child: if rng.chance(1, 4) {
                rng.range(1, u64::MAX)
            } else {
                rng.range(1, 1 << 30)
            },
        });
        logical += rng.range(1, 1 << 22);
    }
    out
}

/// A valid extent node (a leaf or an interior node of depth 1..=5).
fn extent_node(rng: &mut Rng, inline: bool) -> ExtentNode {
    if rng.chance(1, 2) {
        ExtentNode::Leaf(extents(rng, ExtentNode::capacity(true, inline)))
    } else {
        ExtentNode::Index {
            depth: rng.range(1, u64::from(extent::MAX_DEPTH)) as u16,
            entries: index_entries(rng, ExtentNode::capacity(false, inline)),
        }
    }
}

/// An extent node that breaks an invariant (unsorted, overlapping, empty,
/// too long, past the largest file, too deep, too many entries...), which
/// the encoder writes as it is.
fn bad_extent_node(rng: &mut Rng, inline: bool, t: &Trace) -> ExtentNode {
    let mut n = extent_node(rng, inline);
    let what = rng.below(6);
    match &mut n {
        ExtentNode::Leaf(es) => {
            if es.is_empty() {
                es.push(Extent {
                    logical: 0,
                    physical: 1,
                    len: 1,
                    unwritten: false,
                });
            }
            let i = rng.index(es.len());
            let v = rng.interesting();
            match what {
                0 => es[i].logical = v,
                1 => es[i].physical = v,
                2 => es[i].len = v as u32,
                3 => {
                    let e = es[i];
                    es.insert(i, e);
                }
                4 => es.reverse(),
                _ => {
                    n = ExtentNode::Index {
                        depth: rng.interesting() as u16,
                        entries: index_entries(rng, 3),
                    }
                }
            }
        }
        ExtentNode::Index { depth, entries } => {
            let i = rng.index(entries.len());
            match what {
                0 => entries[i].logical = rng.interesting(),
                1 => entries[i].child = rng.interesting(),
                2 => entries.clear(),
                3 => *depth = rng.interesting() as u16,
                4 => entries.reverse(),
                _ => {
                    let e = entries[i];
                    entries.push(e);
                }
            }
        }
    }
    t.note(format!("encoded an invalid node (change {what}): {n:?}"));
    n
}

/// The fields of an extent node's header and entries (`hdr`: header size).
fn extent_fields(node: &ExtentNode, hdr: usize) -> Vec<Field> {
    let mut f = vec![Field(2, 2), Field(4, 2), Field(6, 2)];
    let leaf = node.depth() == 0;
    for i in 0..node.len().max(1) + 1 {
        if leaf {
            let o = hdr + i * 24;
            f.extend([
                Field(o, 8),
                Field(o + 8, 8),
                Field(o + 16, 4),
                Field(o + 20, 4),
            ]);
        } else {
            let o = hdr + i * 16;
            f.extend([Field(o, 8), Field(o + 8, 8)]);
        }
    }
    f
}

/// A random inode of any type, valid.
fn inode_value(rng: &mut Rng) -> Inode {
    let ft = rng.pick(&[
        FileType::Regular,
        FileType::Regular,
        FileType::Directory,
        FileType::Symlink,
        FileType::Symlink,
        FileType::CharDev,
        FileType::BlockDev,
        FileType::Fifo,
        FileType::Socket,
    ]);
    let mut ino = Inode::new(
        ft.mode_bits() | rng.below(0o10000) as u32,
        rng.number(70000) as u32,
        rng.number(70000) as u32,
        timespec(rng),
    );
    ino.nlink = rng.number(10) as u32;
    ino.size = rng.number(1 << 40);
    ino.blocks = rng.number(1 << 28);
    ino.atime = timespec(rng);
    ino.mtime = timespec(rng);
    ino.ctime = timespec(rng);
    ino.generation = rng.next() as u32;
    ino.rdev_or_parent = rng.number(1 << 20);
    ino.xattr_block = if rng.chance(1, 2) {
        0
    } else {
        rng.number(1 << 30)
    };
    ino.orphan_next = if rng.chance(3, 4) {
        0
    } else {
        rng.number(1 << 20)
    };
    match ft {
        FileType::Symlink if rng.chance(2, 3) => {
            let len = rng.range(1, INLINE_DATA as u64) as usize;
            ino.data = InodeData::Symlink(rng.bytes(len));
            ino.size = len as u64;
        }
        FileType::Symlink | FileType::Regular | FileType::Directory => {
            ino.flags = 0;
            ino.data = InodeData::Extents(extent_node(rng, true));
        }
        _ => {}
    }
    ino
}

/// Sorted, unique attributes that fit one block.
fn xattrs(rng: &mut Rng) -> Vec<Xattr> {
    let n = if rng.chance(1, 4) {
        rng.index(120)
    } else {
        rng.index(8)
    };
    let mut out: Vec<Xattr> = Vec::new();
    let mut used = 0;
    for _ in 0..n {
        let name_len = if rng.chance(1, 8) {
            255
        } else {
            rng.range(1, 24) as usize
        };
        let value_len = match rng.below(8) {
            0 => 0,
            1 => rng.index(xattr::SPACE),
            _ => rng.index(64),
        };
        let a = Xattr {
            ns: rng.pick(&[
                Namespace::User,
                Namespace::Trusted,
                Namespace::Security,
                Namespace::System,
            ]),
            name: rng.bytes(name_len),
            value: rng.bytes(value_len),
        };
        if used + a.disk_len() > xattr::SPACE {
            continue;
        }
        used += a.disk_len();
        out.push(a);
    }
    out.sort_by(|a, b| (a.ns, &a.name).cmp(&(b.ns, &b.name)));
    out.dedup_by(|a, b| (a.ns, &a.name) == (b.ns, &b.name));
    out
}

/// A superblock for a random layout, every field in range.
fn superblock_value(rng: &mut Rng) -> Superblock {
    let g = loop {
        let blocks = match rng.below(4) {
            0 => rng.range(278, 1 << 16),
            1 => rng.range(1 << 16, 1 << 24),
            2 => rng.range(1 << 24, MAX_BLOCKS),
            _ => rng.pick(&[262_144, 1 << 20, 1 << 28, MAX_BLOCKS]),
        };
        let ipg = if rng.chance(1, 4) {
            rng.pick(&[1, 15, 16, 17, BLOCKS_PER_GROUP - 1, BLOCKS_PER_GROUP])
        } else {
            rng.range(1, u64::from(BLOCKS_PER_GROUP)) as u32
        };
        let r = rng.range(MIN_JOURNAL_BLOCKS, 1 << 16);
        let journal = rng.pick(&[MIN_JOURNAL_BLOCKS, 2048, 32768, r]);
        if let Ok(g) = Geometry::new(blocks, ipg, journal) {
            break g;
        }
    };
    let labels = [
        "",
        "data",
        "höhe",
        "日本語のラベル",
        "a😀b",
        &"x".repeat(LABEL_MAX),
        &"é".repeat(LABEL_MAX / 2),
    ];
    let label = if rng.chance(1, 2) {
        rng.pick(&labels).to_string()
    } else {
        (0..rng.index(LABEL_MAX + 1))
            .map(|_| rng.range(0x20, 0x7e) as u8 as char)
            .collect()
    };
    let mut uuid = [0u8; 16];
    rng.fill(&mut uuid);
    // `Superblock::new` sums the data blocks of every group (billions of
    // them in a debug build for the largest layouts): start from a small
    // layout and put the real one's fields in.
    let small = Geometry::new(1 << 16, 16, MIN_JOURNAL_BLOCKS).unwrap();
    let mut sb = Superblock::new(&small, uuid, &label, rng.next(), rng.interesting() as i64);
    sb.blocks_count = g.blocks_count;
    sb.inodes_count = g.inodes_count();
    sb.free_blocks = g.blocks_count;
    sb.free_inodes = g.inodes_count();
    sb.inodes_per_group = g.inodes_per_group;
    sb.groups = g.groups;
    sb.gdt_start = g.gdt_start;
    sb.gdt_blocks = g.gdt_blocks;
    sb.journal_start = g.journal_start;
    sb.journal_blocks = g.journal_blocks;
    sb.head = g.head;
    sb.incompat = rng.pick(&[0, superblock::INCOMPAT_RECOVER]);
    sb.compat = rng.number(16) as u32;
    sb.ro_compat = rng.number(4) as u32;
    sb.state = rng.below(4) as u16;
    sb.free_blocks = rng.number(sb.free_blocks + 1);
    sb.free_inodes = rng.number(sb.free_inodes + 1);
    sb.lost_found_ino = rng.range(1, g.inodes_count());
    sb.orphan_head = if rng.chance(1, 2) {
        0
    } else {
        rng.range(1, g.inodes_count())
    };
    sb.mount_time = timespec(rng).sec;
    sb.write_time = timespec(rng).sec;
    sb.check_time = timespec(rng).sec;
    sb.mount_count = rng.number(1000) as u32;
    sb.integrity_interval = rng.pick(&[0, 512, 4096]);
    sb.integrity_checksum = rng.below(3) as u16;
    sb
}

// ---------------------------------------------------------------------------
// Invariants
// ---------------------------------------------------------------------------

fn check_extent_node(n: &ExtentNode, inline: bool) {
    match n {
        ExtentNode::Leaf(es) => {
            assert!(
                es.len() <= ExtentNode::capacity(true, inline),
                "leaf of {} extents",
                es.len()
            );
            for e in es {
                assert!(
                    e.len >= 1 && e.len <= MAX_EXTENT_LEN,
                    "extent length: {e:?}"
                );
                assert!(e.physical != 0, "extent at block 0: {e:?}");
                assert!(
                    e.logical_end() <= MAX_FILE_BLOCKS,
                    "extent past the largest file: {e:?}"
                );
                // The accessors of a decoded extent must not overflow.
                let _ = e.physical_end();
            }
            for w in es.windows(2) {
                assert!(
                    w[0].logical_end() <= w[1].logical,
                    "extents unsorted or overlapping: {w:?}"
                );
            }
        }
        ExtentNode::Index { depth, entries } => {
            assert!(
                *depth >= 1 && *depth <= extent::MAX_DEPTH,
                "index depth {depth}"
            );
            assert!(!entries.is_empty(), "empty interior node");
            assert!(entries.len() <= ExtentNode::capacity(false, inline));
            for e in entries {
                assert!(
                    e.child != 0 && e.logical < MAX_FILE_BLOCKS,
                    "index entry {e:?}"
                );
            }
            for w in entries.windows(2) {
                assert!(w[0].logical < w[1].logical, "index entries unsorted: {w:?}");
            }
        }
    }
}

/// Everything `Geometry::new(blocks, ipg, journal)` promises of an `Ok`.
fn check_geometry(g: &Geometry, blocks: u64, ipg: u32, journal: u64) {
    let bpg = u64::from(BLOCKS_PER_GROUP);
    assert!(
        g.blocks_count <= blocks && g.blocks_count <= MAX_BLOCKS,
        "{g:?} from {blocks}"
    );
    assert_eq!(g.gdt_start, 1);
    assert_eq!(g.journal_start, g.gdt_start + g.gdt_blocks);
    assert_eq!(g.journal_blocks, journal);
    assert!(journal >= MIN_JOURNAL_BLOCKS);
    assert_eq!(g.head, g.journal_start + g.journal_blocks);
    assert!(g.groups >= 1);
    assert!(
        g.gdt_blocks * DESCS_PER_BLOCK >= u64::from(g.groups),
        "GDT too small: {g:?}"
    );
    assert!(g.inodes_per_group >= ipg && g.inodes_per_group - ipg < INODES_PER_BLOCK);
    assert!(g.inodes_per_group % INODES_PER_BLOCK == 0 && g.inodes_per_group <= BLOCKS_PER_GROUP);
    assert_eq!(g.itable_blocks * INODES_PER_BLOCK, g.inodes_per_group);
    let meta = g.group_meta_blocks();
    assert_eq!(meta, 2 + g.itable_blocks);
    // Every block is accounted for: head + sum(group_blocks) + 1.
    let last = g.groups - 1;
    let in_groups = u64::from(last) * bpg + u64::from(g.group_blocks(last));
    assert_eq!(g.head + in_groups + 1, g.blocks_count, "{g:?}");
    // The tail dropped from the device is too small for a group, but for
    // the blocks a smaller GDT freed when the layout was made a fixed point
    // (the GDT `blocks` itself implies, less the one laid out).
    let gdt_shrink = blocks.div_ceil(bpg).max(1).div_ceil(DESCS_PER_BLOCK) - g.gdt_blocks;
    assert!(
        blocks - g.blocks_count < u64::from(meta) + 16 + gdt_shrink,
        "{g:?} wastes a group's room of {blocks}"
    );
    let mut sample = vec![0, last, last / 2, last.saturating_sub(1)];
    if g.groups > 1 {
        sample.push(1);
    }
    for gr in sample {
        let gb = g.group_blocks(gr);
        let start = g.group_start(gr);
        assert_eq!(start, g.head + u64::from(gr) * bpg);
        assert!(
            gb >= meta + 16 && gb <= BLOCKS_PER_GROUP,
            "group {gr} of {gb} blocks: {g:?}"
        );
        if gr < last {
            assert_eq!(gb, BLOCKS_PER_GROUP);
        }
        // The group's metadata lies inside the group.
        assert_eq!(g.block_bitmap(gr), start);
        assert_eq!(g.inode_bitmap(gr), start + 1);
        assert_eq!(g.itable_start(gr), start + 2);
        assert!(g.itable_start(gr) + u64::from(g.itable_blocks) <= start + u64::from(gb));
        assert_eq!(g.block_group(start), Some((gr, 0)));
        assert_eq!(g.block_group(start + u64::from(gb) - 1), Some((gr, gb - 1)));
        assert!(!g.is_data_block(g.itable_start(gr)));
        assert!(g.is_data_block(start + u64::from(meta)));
        let (db, doff) = g.desc_location(gr);
        assert!(db >= g.gdt_start && db < g.journal_start && doff + GROUP_DESC_SIZE <= BLOCK_SIZE);
        let first_ino = g.ino_of(gr, 0);
        assert_eq!(g.ino_group(first_ino), (gr, 0));
        let last_ino = g.ino_of(gr, g.inodes_per_group - 1);
        let (ib, ioff) = g.ino_location(last_ino);
        assert!(ib >= g.itable_start(gr) && ib < g.itable_start(gr) + u64::from(g.itable_blocks));
        assert!(ioff + INODE_SIZE <= BLOCK_SIZE);
    }
    // The superblock stores a layout and its decoder recomputes it from
    // the stored fields: the layout must be a fixed point.
    let again = Geometry::new(g.blocks_count, g.inodes_per_group, g.journal_blocks);
    assert_eq!(
        again.as_ref().ok(),
        Some(g),
        "Geometry::new is not idempotent"
    );
    assert_eq!(g.block_group(g.head - 1), None);
    assert_eq!(g.block_group(g.backup_block()), None);
    assert!(g.ino_valid(g.inodes_count()) && !g.ino_valid(g.inodes_count() + 1));
    if g.groups <= 4096 {
        let sum: u64 = (0..g.groups)
            .map(|gr| u64::from(g.group_blocks(gr) - meta))
            .sum();
        assert_eq!(g.data_blocks(), sum);
    }
}

fn check_superblock(sb: &Superblock) {
    assert!(sb.blocks_count <= MAX_BLOCKS);
    let g = sb
        .geometry()
        .expect("a decoded superblock's geometry is valid");
    check_geometry(&g, sb.blocks_count, sb.inodes_per_group, sb.journal_blocks);
    assert_eq!(sb.version, superblock::VERSION);
    assert_eq!(sb.incompat & !superblock::INCOMPAT_SUPPORTED, 0);
    assert_eq!(sb.root_ino, biofs::format::ROOT_INO);
    assert!(g.ino_valid(sb.lost_found_ino));
    assert!(sb.orphan_head == 0 || g.ino_valid(sb.orphan_head));
    assert!(
        sb.label.len() <= LABEL_MAX && !sb.label.contains('\0'),
        "label {:?}",
        sb.label
    );
}

fn check_inode(ino: &Inode) {
    let ft = FileType::from_mode(ino.mode).expect("a decoded inode has a file type");
    assert_eq!(ino.mode & !(inode::S_IFMT | 0o7777), 0);
    // On disk the flag marks an inline symlink; in memory the data variant
    // says so and `flags` never holds it.
    assert_eq!(ino.flags, 0);
    for t in [ino.atime, ino.mtime, ino.ctime, ino.crtime] {
        assert!(t.nsec < 1_000_000_000, "{t:?}");
    }
    match &ino.data {
        InodeData::Symlink(target) => {
            assert_eq!(ft, FileType::Symlink);
            assert!(!target.is_empty() && target.len() <= INLINE_DATA);
            assert_eq!(ino.size, target.len() as u64);
        }
        InodeData::Extents(n) => {
            assert!(ft.has_extents());
            check_extent_node(n, true);
        }
        InodeData::None => assert!(!ft.has_extents(), "{ft:?} without extents"),
    }
}

fn check_dir(node: &DirNode, hash_seed: u64) {
    assert!(node.fits());
    match node {
        DirNode::Leaf { entries, .. } => {
            for e in entries {
                assert!(dir::valid_name(&e.name), "invalid name {:?}", e.name);
                assert_eq!(
                    e.hash,
                    dir::name_hash(hash_seed, &e.name),
                    "hash of {:?}",
                    e.name
                );
                assert!(e.ino != 0);
            }
            for w in entries.windows(2) {
                assert!(w[0].key() < w[1].key(), "entries unsorted: {w:?}");
            }
        }
        DirNode::Node { depth, entries } => {
            assert!(*depth >= 1 && *depth <= dir::MAX_DEPTH);
            assert!(!entries.is_empty());
            assert!(entries.iter().all(|e| e.child != 0));
            for w in entries.windows(2) {
                assert!(w[0].hash < w[1].hash, "interior entries unsorted: {w:?}");
            }
        }
    }
}

fn check_xattrs(attrs: &[Xattr]) {
    assert!(xattr::fits(attrs));
    for a in attrs {
        assert!(!a.name.is_empty() && a.name.len() <= 255);
    }
    for w in attrs.windows(2) {
        assert!(
            (w[0].ns, &w[0].name) < (w[1].ns, &w[1].name),
            "attributes unsorted: {w:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------

#[test]
fn superblock() {
    let hot: Vec<Field> = [8, 12, 16, 20, 24, 144, 148, 152, 264, 272]
        .iter()
        .map(|&o| Field(o, 4))
        .chain([28, 30, 276].iter().map(|&o| Field(o, 2)))
        .chain((112..=256).step_by(8).map(|o| Field(o, 8)))
        .collect();
    fuzz("superblock", 1, |rng, t| {
        let sb = superblock_value(rng);
        let backup = sb.blocks_count - 1;
        let block = rng.pick(&[0, backup]);
        let mut buf = sb.encode(block);
        t.note(format!("base: {sb:?} at block {block}"));
        let donor = superblock_value(rng).encode(block);
        if rng.chance(1, 3) {
            // Re-lay the layout fields after mutating them, so a layout that
            // is consistent but unusual gets past the cross-check.
            mutate(rng, &mut buf, &hot[..], &donor, t);
            if buf.len() >= BLOCK_SIZE {
                let f = |o| read_le(&buf, Field(o, 8)).unwrap();
                let (blocks, ipg, journal) =
                    (f(112), read_le(&buf, Field(148, 4)).unwrap() as u32, f(184));
                t.note(format!("re-lay geometry ({blocks}, {ipg}, {journal})"));
                if let Ok(g) = Geometry::new(blocks, ipg, journal) {
                    for (o, v) in [
                        (112, g.blocks_count),
                        (120, g.inodes_count()),
                        (160, g.gdt_start),
                        (168, g.gdt_blocks),
                        (176, g.journal_start),
                        (192, g.head),
                    ] {
                        write_le(&mut buf, Field(o, 8), v);
                    }
                    write_le(&mut buf, Field(148, 4), u64::from(g.inodes_per_group));
                    write_le(&mut buf, Field(152, 4), u64::from(g.groups));
                }
            }
        } else {
            mutate(rng, &mut buf, &hot[..], &donor, t);
        }
        if reseal_often(rng, t) && buf.len() >= 48 {
            let uuid: [u8; 16] = buf[32..48].try_into().unwrap();
            reseal_meta(&mut buf, uuid_seed(&uuid), block, BLOCK_SIZE - 4);
        }
        t.input(&buf);
        let res = Superblock::decode(&buf, block);
        if let Ok(sb) = &res {
            check_superblock(sb);
            let again = Superblock::decode(&sb.encode(block), block)
                .expect("re-encoded superblock decodes");
            assert_eq!(&again, sb, "superblock round trip");
        }
        (&res).into()
    });
}

#[test]
fn group_desc() {
    let hot = [
        Field(0, 2),
        Field(2, 2),
        Field(4, 4),
        Field(8, 4),
        Field(12, 4),
        Field(24, 4),
    ];
    fuzz("group_desc", 1, |rng, t| {
        let sb = superblock_value(rng);
        let geo = sb.geometry().unwrap();
        let g = if rng.chance(1, 2) {
            geo.groups - 1
        } else {
            rng.below(u64::from(geo.groups)) as u32
        };
        let seed = sb.seed();
        let zero = GroupDesc::uninit(&geo, g);
        let data = zero.free_blocks;
        let d = GroupDesc {
            flags: rng.pick(&[0, BLOCK_UNINIT, INODE_UNINIT, BLOCK_UNINIT | INODE_UNINIT]),
            free_blocks: rng.range(0, u64::from(data)) as u32,
            free_inodes: rng.range(0, u64::from(geo.inodes_per_group)) as u32,
            used_dirs: rng.range(0, u64::from(geo.inodes_per_group)) as u32,
            block_bitmap_csum: rng.next() as u32,
            inode_bitmap_csum: rng.next() as u32,
            itable_unused_from: rng.range(0, u64::from(geo.inodes_per_group)) as u32,
        };
        let mut raw = vec![0u8; GROUP_DESC_SIZE];
        if rng.chance(7, 8) {
            d.encode(seed, g, &mut raw);
        }
        t.note(format!("geometry {geo:?}, group {g}, base {d:?}"));
        let donor = raw.clone();
        mutate(rng, &mut raw, &hot, &donor, t);
        if reseal_often(rng, t) {
            reseal_meta(&mut raw, seed, u64::from(g), 28);
        }
        t.input(&raw);
        let res = GroupDesc::decode(&geo, seed, g, &raw);
        if let Ok(d) = &res {
            assert_eq!(d.flags & !(BLOCK_UNINIT | INODE_UNINIT), 0);
            assert!(d.free_blocks <= geo.group_blocks(g) - geo.group_meta_blocks());
            assert!(d.free_inodes <= geo.inodes_per_group && d.used_dirs <= geo.inodes_per_group);
            assert!(d.itable_unused_from <= geo.inodes_per_group);
            let mut again = [0u8; GROUP_DESC_SIZE];
            d.encode(seed, g, &mut again);
            assert_eq!(
                &GroupDesc::decode(&geo, seed, g, &again).expect("re-encoded descriptor decodes"),
                d
            );
        }
        (&res).into()
    });
}

#[test]
fn inode() {
    let mut hot = vec![
        Field(0, 4),
        Field(4, 2),
        Field(16, 4),
        Field(20, 8),
        Field(28, 8),
    ];
    hot.extend((68..84).step_by(4).map(|o| Field(o, 4)));
    hot.extend((36..68).step_by(8).map(|o| Field(o, 8)));
    fuzz("inode", 1, |rng, t| {
        let seed = rng.next() as u32;
        let ino_nr = rng.range(1, 1 << 32);
        let mut ino = inode_value(rng);
        if rng.chance(1, 4) && ino.extent_root().is_some() {
            ino.data = InodeData::Extents(bad_extent_node(rng, true, t));
        }
        let mut raw = vec![0u8; INODE_SIZE];
        ino.encode(seed, ino_nr, &mut raw);
        t.note(format!("base: inode {ino_nr} {ino:?}"));
        let mut hot = hot.clone();
        if let Some(root) = ino.extent_root() {
            hot.extend(
                extent_fields(root, 8)
                    .into_iter()
                    .map(|f| Field(f.0 + 112, f.1)),
            );
        }
        let mut donor = vec![0u8; INODE_SIZE];
        inode_value(rng).encode(seed, ino_nr, &mut donor);
        mutate(rng, &mut raw, &hot, &donor, t);
        if reseal_often(rng, t) {
            reseal_meta(&mut raw, seed, ino_nr, INODE_SIZE - 4);
        }
        t.input(&raw);
        let res = Inode::decode(seed, ino_nr, &raw);
        match &res {
            Ok(None) => assert!(
                raw.len() >= INODE_SIZE && Inode::is_free(&raw),
                "free but not zero"
            ),
            Ok(Some(ino)) => {
                check_inode(ino);
                let mut again = [0u8; INODE_SIZE];
                ino.encode(seed, ino_nr, &mut again);
                let back = Inode::decode(seed, ino_nr, &again).expect("re-encoded inode decodes");
                assert_eq!(back.as_ref(), Some(ino), "inode round trip");
            }
            Err(_) => {}
        }
        (&res).into()
    });
}

#[test]
fn extent_inline() {
    fuzz("extent_inline", 1, |rng, t| {
        let node = if rng.chance(1, 4) {
            bad_extent_node(rng, true, t)
        } else {
            extent_node(rng, true)
        };
        let mut raw = vec![0u8; extent::INLINE_EXTENT_BYTES];
        node.encode_inline(&mut raw);
        t.note(format!("base: {node:?}"));
        let mut donor = vec![0u8; extent::INLINE_EXTENT_BYTES];
        extent_node(rng, true).encode_inline(&mut donor);
        if rng.chance(3, 4) {
            mutate(rng, &mut raw, &extent_fields(&node, 8), &donor, t);
        }
        t.input(&raw);
        let res = ExtentNode::decode_inline(&raw);
        if let Ok(n) = &res {
            check_extent_node(n, true);
            let mut again = [0u8; extent::INLINE_EXTENT_BYTES];
            n.encode_inline(&mut again);
            assert_eq!(
                &ExtentNode::decode_inline(&again).expect("re-encoded root decodes"),
                n
            );
        }
        (&res).into()
    });
}

#[test]
fn extent_block() {
    fuzz("extent_block", 1, |rng, t| {
        let (seed, block, owner) = (
            rng.next() as u32,
            rng.range(1, 1 << 40),
            rng.range(1, 1 << 32),
        );
        let node = if rng.chance(1, 4) {
            bad_extent_node(rng, false, t)
        } else {
            extent_node(rng, false)
        };
        let mut raw = node.encode_block(seed, block, owner);
        t.note(format!("base: block {block} of inode {owner}: {node:?}"));
        let donor = extent_node(rng, false).encode_block(seed, block, owner);
        let mut hot = extent_fields(&node, 24);
        hot.push(Field(8, 8));
        if rng.chance(3, 4) {
            mutate(rng, &mut raw, &hot, &donor, t);
        }
        if reseal_often(rng, t) {
            reseal_block(&mut raw, seed, block, 16);
        }
        t.input(&raw);
        let res = ExtentNode::decode_block(seed, block, owner, &raw);
        if let Ok(n) = &res {
            check_extent_node(n, false);
            let again = n.encode_block(seed, block, owner);
            assert_eq!(
                &ExtentNode::decode_block(seed, block, owner, &again)
                    .expect("re-encoded node decodes"),
                n
            );
        }
        (&res).into()
    });
}

/// Recompute the stored hash of every leaf entry the bytes describe, so a
/// mutated name meets the name checks rather than the hash check.
fn rehash_dir_leaf(buf: &mut [u8], hash_seed: u64) {
    let count = read_le(buf, Field(2, 2)).unwrap_or(0) as usize;
    let mut off = dir::HDR;
    for _ in 0..count {
        let Some(&len) = buf.get(off + 17) else {
            return;
        };
        let end = off + dir::ENTRY_FIXED + usize::from(len);
        let Some(name) = buf.get(off + dir::ENTRY_FIXED..end) else {
            return;
        };
        let h = dir::name_hash(hash_seed, name);
        write_le(buf, Field(off, 8), h);
        off = end;
    }
}

fn dir_leaf(rng: &mut Rng, hash_seed: u64) -> DirNode {
    let n = if rng.chance(1, 4) {
        rng.index(400)
    } else {
        rng.index(20)
    };
    let mut entries = Vec::new();
    let mut used = 0;
    for _ in 0..n {
        let e = DirEntry::new(
            hash_seed,
            &dir_name(rng),
            rng.range(1, 1 << 32),
            rng.pick(&[
                FileType::Regular,
                FileType::Directory,
                FileType::Symlink,
                FileType::Fifo,
                FileType::Socket,
                FileType::CharDev,
                FileType::BlockDev,
            ]),
        );
        if used + e.disk_len() > ENTRY_SPACE {
            break;
        }
        used += e.disk_len();
        entries.push(e);
    }
    entries.sort_by(|a, b| a.key().cmp(&b.key()));
    entries.dedup_by(|a, b| a.key() == b.key());
    DirNode::Leaf {
        next: if rng.chance(1, 2) {
            0
        } else {
            rng.number(1 << 20)
        },
        entries,
    }
}

fn dir_node(rng: &mut Rng) -> DirNode {
    let n = 1 + rng.index(ENTRY_SPACE / dir::NODE_ENTRY);
    let mut hashes: Vec<u64> = (0..n).map(|_| rng.next() >> 1).collect();
    hashes.sort_unstable();
    hashes.dedup();
    DirNode::Node {
        depth: rng.range(1, u64::from(dir::MAX_DEPTH)) as u16,
        entries: hashes
            .into_iter()
            .map(|hash| NodeEntry {
                hash,
                child: rng.range(1, 1 << 20),
            })
            .collect(),
    }
}

#[test]
fn dir_block() {
    fuzz("dir_block", 1, |rng, t| {
        let (seed, hash_seed) = (rng.next() as u32, rng.next());
        let (block, owner) = (rng.range(1, 1 << 40), rng.range(1, 1 << 32));
        let mut node = if rng.chance(2, 3) {
            dir_leaf(rng, hash_seed)
        } else {
            dir_node(rng)
        };
        if rng.chance(1, 4) {
            // Break an invariant at the value level; the encoder writes it.
            let what = rng.below(5);
            match &mut node {
                DirNode::Leaf { entries, .. } if !entries.is_empty() => {
                    let i = rng.index(entries.len());
                    match what {
                        0 => {
                            entries[i].name =
                                rng.pick(&[&b""[..], b".", b"..", b"a/b", b"a\0b"]).to_vec()
                        }
                        1 => entries[i].ino = 0,
                        2 => entries.reverse(),
                        3 => {
                            let e = entries[i].clone();
                            entries.insert(i, e);
                        }
                        _ => entries[i].hash = rng.interesting(),
                    }
                    if what == 0 && rng.chance(1, 2) {
                        entries[i].hash = dir::name_hash(hash_seed, &entries[i].name);
                    }
                }
                DirNode::Node { depth, entries } => match what {
                    0 => *depth = rng.interesting() as u16,
                    1 => entries.clear(),
                    2 => entries.reverse(),
                    _ => {
                        let i = rng.index(entries.len());
                        entries[i].child = 0;
                    }
                },
                _ => {}
            }
            t.note(format!("encoded an invalid node (change {what})"));
        }
        let mut raw = node.encode(seed, block, owner);
        t.note(format!(
            "base: block {block} of directory {owner}, hash seed {hash_seed:#x}: {node:?}"
        ));
        let donor = dir_leaf(rng, hash_seed).encode(seed, block, owner);
        let mut hot = vec![
            Field(2, 2),
            Field(4, 2),
            Field(6, 2),
            Field(8, 8),
            Field(24, 8),
        ];
        if let DirNode::Leaf { entries, .. } = &node {
            let mut off = dir::HDR;
            for e in entries {
                hot.extend([Field(off + 8, 8), Field(off + 16, 1), Field(off + 17, 1)]);
                off += e.disk_len();
            }
        }
        if rng.chance(3, 4) {
            mutate(rng, &mut raw, &hot, &donor, t);
        }
        if rng.chance(1, 2) {
            rehash_dir_leaf(&mut raw, hash_seed);
            t.note("leaf hashes recomputed");
        }
        if reseal_often(rng, t) {
            reseal_block(&mut raw, seed, block, 16);
        }
        t.input(&raw);
        let res = DirNode::decode(seed, hash_seed, block, owner, &raw);
        if let Ok(n) = &res {
            check_dir(n, hash_seed);
            let again = n.encode(seed, block, owner);
            assert_eq!(
                &DirNode::decode(seed, hash_seed, block, owner, &again)
                    .expect("re-encoded directory block decodes"),
                n
            );
        }
        (&res).into()
    });
}

#[test]
fn xattr_block() {
    fuzz("xattr_block", 1, |rng, t| {
        let (seed, block, owner) = (
            rng.next() as u32,
            rng.range(1, 1 << 40),
            rng.range(1, 1 << 32),
        );
        let mut attrs = xattrs(rng);
        if rng.chance(1, 4) && !attrs.is_empty() {
            let i = rng.index(attrs.len());
            let what = rng.below(3);
            match what {
                0 => attrs.reverse(),
                1 => {
                    let a = attrs[i].clone();
                    attrs.insert(i, a);
                }
                _ => attrs[i].name.clear(),
            }
            t.note(format!("invalid attributes (change {what})"));
        }
        let Ok(mut raw) = xattr::encode(seed, block, owner, &attrs) else {
            return Rejected;
        };
        t.note(format!("base: block {block} of inode {owner}: {attrs:?}"));
        let donor = xattr::encode(seed, block, owner, &xattrs(rng)).unwrap();
        let mut hot = vec![Field(4, 2), Field(6, 2), Field(8, 8)];
        let mut off = 24;
        for a in &attrs {
            hot.extend([Field(off, 1), Field(off + 1, 1), Field(off + 2, 2)]);
            off += a.disk_len();
        }
        if rng.chance(3, 4) {
            mutate(rng, &mut raw, &hot, &donor, t);
        }
        if reseal_often(rng, t) {
            reseal_block(&mut raw, seed, block, 16);
        }
        t.input(&raw);
        let res = xattr::decode(seed, block, owner, &raw);
        if let Ok(a) = &res {
            check_xattrs(a);
            let again = xattr::encode(seed, block, owner, a).expect("decoded attributes encode");
            assert_eq!(
                &xattr::decode(seed, block, owner, &again).expect("re-encoded attributes decode"),
                a
            );
        }
        (&res).into()
    });
}

#[test]
fn journal_super() {
    let hot = [Field(8, 4), Field(24, 8), Field(32, 8), Field(40, 8)];
    fuzz("journal_super", 1, |rng, t| {
        let (seed, block) = (rng.next() as u32, rng.range(2, 1 << 20));
        let r = rng.range(MIN_JOURNAL_BLOCKS, 1 << 20);
        let len = rng.pick(&[MIN_JOURNAL_BLOCKS, 2048, 32768, r]);
        let j = JournalSuper {
            len,
            start: if rng.chance(1, 3) {
                0
            } else {
                rng.range(1, len - 1)
            },
            seq: rng.number(1 << 40),
        };
        let mut raw = j.encode(seed, block);
        t.note(format!("base: {j:?} at block {block}"));
        let donor = JournalSuper { start: 0, ..j }.encode(seed, block);
        if rng.chance(3, 4) {
            mutate(rng, &mut raw, &hot, &donor, t);
        }
        if reseal_often(rng, t) {
            reseal_block(&mut raw, seed, block, 20);
        }
        let expect = if rng.chance(7, 8) {
            len
        } else {
            rng.interesting()
        };
        t.note(format!("expected length {expect}"));
        t.input(&raw);
        let res = JournalSuper::decode(seed, block, expect, &raw);
        if let Ok(j) = &res {
            assert!(
                j.len == expect && j.start < j.len && j.seq <= MAX_SEQ,
                "{j:?}"
            );
            let again = JournalSuper::decode(seed, block, expect, &j.encode(seed, block))
                .expect("re-encoded journal superblock decodes");
            assert_eq!(&again, j);
        }
        (&res).into()
    });
}

/// A log block header as the journal writes it (the format of
/// `journal.rs`: magic, type, seq, count, CRC at 20, tags from 24).
fn log_block(seed: u32, block: u64, seq: u64, kind: u32, count: u32, tags: &[u64]) -> Vec<u8> {
    let mut buf = vec![0u8; BLOCK_SIZE];
    write_le(&mut buf, Field(0, 4), u64::from(LOG_MAGIC));
    write_le(&mut buf, Field(4, 4), u64::from(kind));
    write_le(&mut buf, Field(8, 8), seq);
    write_le(&mut buf, Field(16, 4), u64::from(count));
    for (i, &tag) in tags.iter().enumerate().take(TAGS_PER_BLOCK) {
        write_le(&mut buf, Field(24 + i * 8, 8), tag);
    }
    reseal_block(&mut buf, seed, block, 20);
    buf
}

/// The journal's log, through a device: commit transactions, check that
/// a scan gives them back, mutate log blocks (often re-sealed), then open,
/// scan and replay, which must not panic, loop or take a block they must
/// not (outside the filesystem or inside the journal).
#[test]
fn journal_log() {
    const DEV_BLOCKS: u64 = 1200;
    let mem = Arc::new(MemBackend::new(DEV_BLOCKS * BLOCK_SIZE as u64));
    let dev = Dev::from_backend(mem, DevOptions::default()).expect("memory device");
    fuzz("journal_log", 20, |rng, t| {
        let r = rng.range(MIN_JOURNAL_BLOCKS, 700);
        let journal_blocks = rng.pick(&[MIN_JOURNAL_BLOCKS, r]);
        let geo = loop {
            if let Ok(g) = Geometry::new(
                rng.range(journal_blocks + 22, DEV_BLOCKS),
                16,
                journal_blocks,
            ) {
                break g;
            }
        };
        let mut uuid = [0u8; 16];
        rng.fill(&mut uuid);
        let sb = Superblock::new(&geo, uuid, "", 0, 0);
        let (seed, area, len) = (sb.seed(), sb.journal_start, sb.journal_blocks);
        let in_fs = |rng: &mut Rng| loop {
            let b = rng.below(geo.blocks_count);
            if !(area..area + len).contains(&b) {
                return b;
            }
        };
        t.note(format!("geometry {geo:?}"));
        dev.zero_blocks(area, len).unwrap();
        // Leftovers of older transactions.
        let seq0 = match rng.below(16) {
            0 => rng.interesting(),
            1 | 2 => rng.interesting() >> 1,
            _ => rng.below(1 << 32),
        };
        for _ in 0..rng.below(8) {
            let at = area + rng.range(1, len - 1);
            let s = seq0.wrapping_sub(rng.range(1, 3));
            let tags: Vec<u64> = (0..rng.below(4)).map(|_| in_fs(rng)).collect();
            dev.write_block(
                at,
                &log_block(
                    seed,
                    at,
                    s,
                    rng.range(1, 3) as u32,
                    tags.len() as u32,
                    &tags,
                ),
            )
            .unwrap();
        }
        let start = if rng.chance(1, 4) {
            0
        } else {
            rng.range(1, len - 1)
        };
        let jsb = JournalSuper {
            len,
            start,
            seq: seq0,
        };
        dev.write_block(area, &jsb.encode(seed, area)).unwrap();
        t.note(format!("journal superblock {jsb:?}"));
        // Commit a few transactions.
        let mut j = match Journal::open(&dev, &sb) {
            Ok(j) => j,
            Err(e) => {
                // Only a sequence number near the end of the u64 range may
                // be refused.
                assert!(seq0 >= 1 << 62, "fresh journal refused: {e}");
                return Rejected;
            }
        };
        let first_seq = if j.needs_recovery() {
            j.sb.seq.wrapping_add(j.scan(&dev).unwrap().0.len() as u64)
        } else {
            j.sb.seq
        };
        let before = j.scan(&dev).unwrap().0;
        let mut committed = Vec::new();
        for _ in 0..rng.below(5) {
            let nb = if rng.chance(1, 16) {
                rng.range(100, 300)
            } else {
                rng.below(6)
            };
            let blocks: Vec<(u64, Vec<u8>)> = (0..nb)
                .map(|_| (in_fs(rng), rng.bytes(BLOCK_SIZE)))
                .collect();
            let nr = if rng.chance(1, 16) {
                rng.range(500, 1100)
            } else {
                rng.below(4)
            };
            let revokes: Vec<u64> = (0..nr)
                .map(|_| rng.next() % (geo.blocks_count + 10))
                .collect();
            if let Ok(s) = j.commit(&dev, &blocks, &revokes) {
                assert_eq!(s, first_seq.wrapping_add(committed.len() as u64));
                // A revoke of a block the same transaction logs is
                // cancelled (the new image wins), as in JBD2.
                let revokes: Vec<u64> = revokes
                    .into_iter()
                    .filter(|r| !blocks.iter().any(|(b, _)| b == r))
                    .collect();
                committed.push((blocks, revokes));
            }
        }
        t.note(format!(
            "committed {} transactions from seq {first_seq}",
            committed.len()
        ));
        // What was committed reads back (after whatever the leftovers made).
        let j2 = Journal::open(&dev, &sb).unwrap();
        let (txns, _) = j2.scan(&dev).unwrap();
        assert_eq!(
            txns.len(),
            before.len() + committed.len(),
            "scan of unmutated log"
        );
        for (txn, (blocks, revokes)) in txns[before.len()..].iter().zip(&committed) {
            assert_eq!(&txn.revokes, revokes);
            assert_eq!(txn.blocks.len(), blocks.len());
            for (&(target, log), (b, data)) in txn.blocks.iter().zip(blocks) {
                assert_eq!(target, *b);
                assert_eq!(&dev.read_block(log).unwrap(), data);
            }
        }
        // Mutate a few log blocks (or the superblock), mostly re-sealed.
        let mut dumped = Vec::new();
        for _ in 0..rng.range(1, 3) {
            let idx = match rng.below(6) {
                0 => 0,
                1 => rng.below(len),
                _ => {
                    let s = if start == 0 { 1 } else { start };
                    let span = committed
                        .iter()
                        .map(|(b, r)| Journal::blocks_needed(b.len(), r.len()))
                        .sum::<u64>()
                        .max(1);
                    (s + rng.below(span) - 1) % (len - 1) + 1
                }
            };
            let at = area + idx;
            let mut raw = dev.read_block(at).unwrap();
            let hot = [
                Field(4, 4),
                Field(8, 8),
                Field(16, 4),
                Field(24, 8),
                Field(32, 8),
                Field(40, 8),
            ];
            if idx != 0 && rng.chance(1, 2) {
                // A well-formed header with odd contents.
                let r = rng.interesting() as u32;
                let kind = rng.pick(&[1, 2, 3, r]);
                let s = read_le(&raw, Field(8, 8)).unwrap().wrapping_add(rng.pick(&[
                    0,
                    0,
                    1,
                    u64::MAX,
                ]));
                let tags: Vec<u64> = (0..rng.below(6))
                    .map(|_| {
                        if rng.chance(1, 2) {
                            in_fs(rng)
                        } else {
                            rng.interesting()
                        }
                    })
                    .collect();
                let count = if rng.chance(3, 4) {
                    tags.len() as u32
                } else {
                    rng.interesting() as u32
                };
                raw = log_block(seed, at, s, kind, count, &tags);
                if kind == 2 {
                    write_le(&mut raw, Field(24, 4), rng.next());
                    reseal_block(&mut raw, seed, at, 20);
                }
                t.note(format!(
                    "log block {idx}: header type {kind}, seq {s}, count {count}, tags {tags:?}"
                ));
            } else {
                let donor = raw.clone();
                mutate(rng, &mut raw, &hot, &donor, t);
                raw.resize(BLOCK_SIZE, 0);
                if reseal_often(rng, t) {
                    reseal_block(&mut raw, seed, at, 20);
                }
                t.note(format!("log block {idx} mutated as above"));
            }
            dev.write_block(at, &raw).unwrap();
            dumped.extend_from_slice(&raw);
        }
        t.input(&dumped);
        let Ok(mut j) = Journal::open(&dev, &sb) else {
            return Rejected;
        };
        let (txns, end) = j.scan(&dev).unwrap();
        assert!(end >= 1 && end < len, "log end {end}");
        for (k, txn) in txns.iter().enumerate() {
            assert_eq!(
                Some(txn.seq),
                j.sb.seq.checked_add(k as u64),
                "sequence numbers"
            );
            assert!(txn.seq < MAX_SEQ, "transaction {}", txn.seq);
            for &(target, log) in &txn.blocks {
                assert!(
                    target < geo.blocks_count && !(area..area + len).contains(&target),
                    "target {target}"
                );
                assert!(log > area && log < area + len, "log block {log}");
            }
        }
        assert_eq!(
            j.scan(&dev).unwrap(),
            (txns.clone(), end),
            "scan is repeatable"
        );
        let seq_before = j.sb.seq;
        let report = j.replay(&dev).expect("replay");
        assert_eq!(report.transactions, txns.len() as u64);
        assert_eq!(
            report.blocks + report.revoked,
            txns.iter().map(|t| t.blocks.len() as u64).sum::<u64>()
        );
        let mut j = Journal::open(&dev, &sb).expect("journal opens after replay");
        assert!(!j.needs_recovery());
        assert_eq!(j.sb.seq, seq_before + txns.len() as u64);
        let _ = j.commit(&dev, &[(in_fs(rng), vec![0u8; BLOCK_SIZE])], &[]);
        if txns.is_empty() {
            Rejected
        } else {
            Accepted
        }
    });
    dev.close().unwrap();
}

#[test]
fn geometry_new() {
    fuzz("geometry_new", 1, |rng, t| {
        let blocks = match rng.below(6) {
            0 => rng.interesting(),
            1 => rng.range(250, 70_000),
            2 => rng.below(1 << 20),
            3 => rng.below(MAX_BLOCKS + 2),
            4 => rng.next(),
            _ => MAX_BLOCKS - rng.below(1 << 20),
        };
        let ipg = match rng.below(4) {
            0 => rng.interesting() as u32,
            1 | 2 => rng.range(0, u64::from(BLOCKS_PER_GROUP) + 1) as u32,
            _ => rng.next() as u32,
        };
        let journal = match rng.below(5) {
            0 => rng.interesting(),
            1 | 2 => rng.range(MIN_JOURNAL_BLOCKS - 1, 1 << 16),
            3 => blocks.wrapping_sub(rng.below(1 << 16)),
            _ => rng.next(),
        };
        t.note(format!("Geometry::new({blocks}, {ipg}, {journal})"));
        let res = Geometry::new(blocks, ipg, journal);
        if let Ok(g) = &res {
            check_geometry(g, blocks, ipg, journal);
        }
        (&res).into()
    });
}

/// `find_free_run`'s contract, the plain way.
fn reference_free_run(
    map: &[u8],
    from: usize,
    limit: usize,
    want: usize,
) -> Option<(usize, usize)> {
    let limit = limit.min(map.len() * 8);
    let want = want.max(1);
    let set = |i: usize| map[i / 8] >> (i % 8) & 1 == 1;
    let mut best: Option<(usize, usize)> = None;
    let mut i = from;
    while i < limit {
        if set(i) {
            i += 1;
            continue;
        }
        let start = i;
        while i < limit && !set(i) {
            i += 1;
        }
        if i - start >= want {
            return Some((start, want));
        }
        if best.is_none_or(|(_, l)| i - start > l) {
            best = Some((start, i - start));
        }
    }
    best
}

#[test]
fn find_free_run() {
    fuzz("find_free_run", 1, |rng, t| {
        let r = rng.index(600);
        let len = rng.pick(&[0, 1, 2, 7, 8, 9, 64, 512, r]);
        let mut map = vec![0u8; len];
        match rng.below(5) {
            0 => rng.fill(&mut map),
            1 => map.fill(0xff),
            2 => {}
            _ => {
                // Runs of set and clear bits of random lengths.
                let mut i = 0;
                let mut on = rng.chance(1, 2);
                while i < len * 8 {
                    let n = 1 + if rng.chance(1, 2) {
                        rng.index(12)
                    } else {
                        rng.index(200)
                    };
                    if on {
                        bitmap::set_range(&mut map, i, n.min(len * 8 - i));
                    }
                    i += n;
                    on = !on;
                }
            }
        }
        for _ in 0..rng.below(4) {
            if len > 0 {
                let bit = rng.index(len * 8);
                map[bit / 8] ^= 1 << (bit % 8);
            }
        }
        let bits = len * 8;
        let arg = |rng: &mut Rng| match rng.below(4) {
            0 => rng.pick(&[
                0,
                1,
                7,
                8,
                9,
                bits.saturating_sub(1),
                bits,
                bits + 1,
                usize::MAX,
            ]),
            _ => rng.index(bits + 17),
        };
        let (from, limit, want) = (arg(rng), arg(rng), arg(rng));
        t.note(format!("find_free_run(map, {from}, {limit}, {want})"));
        t.input(&map);
        let got = bitmap::find_free_run(&map, from, limit, want);
        assert_eq!(got, reference_free_run(&map, from, limit, want));
        if got.is_some() {
            Accepted
        } else {
            Rejected
        }
    });
}
