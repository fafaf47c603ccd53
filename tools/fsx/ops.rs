//! fsx's operations: how each is drawn from the generator, applied to the
//! file, and applied to the model (a `Vec<u8>` shadow of the file).

use crate::rng::Rng;
use crate::sys::{Errno, Fd};
use std::fmt;

const KIB4: u64 = 4096;
const MIB: u64 = 1 << 20;

const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;

/// The fallocate modes fsx uses; each can be found unsupported alone.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Falloc {
    Alloc,
    KeepSize,
    Punch,
    Zero,
    ZeroKeepSize,
}

impl Falloc {
    pub const ALL: [Falloc; 5] = [
        Falloc::Alloc,
        Falloc::KeepSize,
        Falloc::Punch,
        Falloc::Zero,
        Falloc::ZeroKeepSize,
    ];

    fn mode(self) -> i32 {
        match self {
            Falloc::Alloc => 0,
            Falloc::KeepSize => FALLOC_FL_KEEP_SIZE,
            Falloc::Punch => FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
            Falloc::Zero => FALLOC_FL_ZERO_RANGE,
            Falloc::ZeroKeepSize => FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Falloc::Alloc => "fallocate",
            Falloc::KeepSize => "fallocate_keep",
            Falloc::Punch => "punch_hole",
            Falloc::Zero => "zero_range",
            Falloc::ZeroKeepSize => "zero_range_keep",
        }
    }
}

/// One operation, with everything it needs but the data's bytes (drawn
/// when applied, from the per-op seed).
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Read { off: u64, len: u64 },
    Write { off: u64, len: u64, seed: u64 },
    MapRead { off: u64, len: u64 },
    MapWrite { off: u64, len: u64, seed: u64 },
    Truncate { size: u64 },
    Falloc { how: Falloc, off: u64, len: u64 },
    Fsync,
    Reopen,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = |f: &mut fmt::Formatter<'_>, name: &str, off: u64, len: u64| {
            write!(
                f,
                "{name:<15} {off:#x} thru {:#x} ({len:#x} bytes)",
                (off + len).saturating_sub(1)
            )
        };
        match *self {
            Op::Read { off, len } => range(f, "read", off, len),
            Op::Write { off, len, .. } => range(f, "write", off, len),
            Op::MapRead { off, len } => range(f, "mapread", off, len),
            Op::MapWrite { off, len, .. } => range(f, "mapwrite", off, len),
            Op::Truncate { size } => write!(f, "{:<15} to {size:#x}", "truncate"),
            Op::Falloc { how, off, len } => range(f, how.name(), off, len),
            Op::Fsync => write!(f, "fsync"),
            Op::Reopen => write!(f, "close/reopen"),
        }
    }
}

/// What may be drawn.
pub struct Limits {
    /// The file never grows past this.
    pub maxlen: u64,
    /// The largest ordinary transfer.
    pub maxop: u64,
    pub mmap: bool,
    pub falloc: bool,
}

/// An offset in `0..bound`, biased to land near a 4 KiB or 1 MiB boundary
/// (so that transfers cross them) or at the model's end of file.
fn offset(rng: &mut Rng, bound: u64, size: u64) -> u64 {
    if bound == 0 {
        return 0;
    }
    let o = match rng.below(8) {
        0 | 1 => {
            let b = rng.below(bound / KIB4 + 1) * KIB4;
            b.wrapping_add(rng.below(512)).wrapping_sub(256)
        }
        2 => {
            let b = rng.below(bound / MIB + 1) * MIB;
            b.wrapping_add(rng.below(8192)).wrapping_sub(4096)
        }
        3 => size.wrapping_add(rng.below(8192)).wrapping_sub(4096),
        _ => rng.below(bound),
    };
    if o >= bound {
        rng.below(bound)
    } else {
        o
    }
}

/// A transfer length in `1..=max`, mostly small, sometimes up to `max`.
fn length(rng: &mut Rng, max: u64) -> u64 {
    let max = max.max(1);
    match rng.below(8) {
        0 => 1 + rng.below(max.min(16)),
        1..=5 => 1 + rng.below(max.min(16 * KIB4)),
        _ => 1 + rng.below(max),
    }
}

/// Draw the next operation. `size` is the model's size. The draw uses the
/// same number of values whatever `lim` allows, so that `--no-mmap` or an
/// unsupported fallocate mode changes only the ops it replaces.
pub fn draw(rng: &mut Rng, size: u64, lim: &Limits) -> Op {
    let kind = rng.below(100);
    let off = offset(rng, lim.maxlen, size);
    let big = if rng.one_in(16) {
        lim.maxlen / 2
    } else {
        lim.maxop
    };
    let len = length(rng, big);
    let seed = rng.next_u64();
    let fits = |off: u64, len: u64| (off, len.min(lim.maxlen - off).max(1));
    let within = |off: u64, len: u64| {
        // a read or map read of the existing file
        if size == 0 {
            (0, 0)
        } else {
            let off = off % size;
            (off, len.min(size - off))
        }
    };
    let op = match kind {
        0..=19 => {
            let (off, len) = within(off, len);
            Op::Read { off, len }
        }
        20..=44 => {
            let (off, len) = fits(off, len);
            Op::Write { off, len, seed }
        }
        45..=52 => {
            let (off, len) = within(off, len);
            Op::MapRead { off, len }
        }
        53..=62 => {
            let (off, len) = fits(off, len);
            Op::MapWrite { off, len, seed }
        }
        63..=72 => Op::Truncate {
            size: if rng.one_in(2) {
                off
            } else {
                off & !(KIB4 - 1)
            },
        },
        73..=92 => {
            let how = Falloc::ALL[(seed % 5) as usize];
            let (off, len) = fits(off, len);
            Op::Falloc { how, off, len }
        }
        93..=96 => Op::Fsync,
        _ => Op::Reopen,
    };
    match op {
        Op::MapRead { off, len } if !lim.mmap => Op::Read { off, len },
        Op::MapWrite { off, len, seed } if !lim.mmap => Op::Write { off, len, seed },
        Op::Falloc { off, len, .. } if !lim.falloc => Op::Truncate {
            size: (off + len).min(lim.maxlen),
        },
        _ => op,
    }
}

/// A difference between the file and the model.
pub struct Mismatch {
    pub what: String,
    /// The first differing offset in the file, if the data differed.
    pub offset: Option<u64>,
    /// The file offset of `expected[0]` and `got[0]`.
    pub dump_from: u64,
    pub expected: Vec<u8>,
    pub got: Vec<u8>,
}

/// How an operation ended.
pub enum Outcome {
    Ok,
    /// fallocate said EOPNOTSUPP for this mode.
    Unsupported(Falloc),
    /// A system call failed.
    Failed(String, Errno),
    Mismatch(Mismatch),
}

/// Compare `got` (read at `off`) with the model.
pub fn compare(model: &[u8], off: u64, got: &[u8], what: &str) -> Outcome {
    let end = off as usize + got.len();
    let want = &model[off as usize..end];
    match want.iter().zip(got).position(|(a, b)| a != b) {
        None => Outcome::Ok,
        Some(i) => {
            let from = i.saturating_sub(8);
            let to = (i + 24).min(got.len());
            Outcome::Mismatch(Mismatch {
                what: what.to_string(),
                offset: Some(off + i as u64),
                dump_from: off + from as u64,
                expected: want[from..to].to_vec(),
                got: got[from..to].to_vec(),
            })
        }
    }
}

fn grow(model: &mut Vec<u8>, end: u64) {
    if (model.len() as u64) < end {
        model.resize(end as usize, 0);
    }
}

fn zero(model: &mut [u8], off: u64, len: u64) {
    let size = model.len() as u64;
    if off < size {
        let end = (off + len).min(size);
        model[off as usize..end as usize].fill(0);
    }
}

/// Apply `op` to the file and the model, checking what it reads.
pub fn apply(op: Op, fd: &mut Fd, model: &mut Vec<u8>, path: &std::path::Path) -> Outcome {
    let fail = |call: &str, e: Errno| Outcome::Failed(call.to_string(), e);
    match op {
        Op::Read { off, len } => {
            let mut buf = vec![0u8; len as usize];
            match fd.pread(&mut buf, off) {
                Err(e) => fail("pread", e),
                Ok(n) if n as u64 != len => Outcome::Mismatch(Mismatch {
                    what: format!("pread returned {n:#x} bytes, the model has {len:#x} there"),
                    offset: None,
                    dump_from: 0,
                    expected: Vec::new(),
                    got: Vec::new(),
                }),
                Ok(_) => compare(model, off, &buf, "pread"),
            }
        }
        Op::Write { off, len, seed } => {
            let mut buf = vec![0u8; len as usize];
            Rng::new(seed).fill(&mut buf);
            if let Err(e) = fd.pwrite(&buf, off) {
                return fail("pwrite", e);
            }
            grow(model, off + len);
            model[off as usize..(off + len) as usize].copy_from_slice(&buf);
            Outcome::Ok
        }
        Op::MapRead { off, len } => {
            if len == 0 {
                return Outcome::Ok;
            }
            let mut buf = vec![0u8; len as usize];
            match fd.map_read(&mut buf, off) {
                Err(e) => fail("mmap", e),
                Ok(()) => compare(model, off, &buf, "mmap read"),
            }
        }
        Op::MapWrite { off, len, seed } => {
            let mut buf = vec![0u8; len as usize];
            Rng::new(seed).fill(&mut buf);
            if off + len > model.len() as u64 {
                // a store past EOF is SIGBUS: extend first, as fsx does
                if let Err(e) = fd.truncate(off + len) {
                    return fail("ftruncate (before mapwrite)", e);
                }
                grow(model, off + len);
            }
            if let Err(e) = fd.map_write(&buf, off) {
                return fail("mmap/msync", e);
            }
            model[off as usize..(off + len) as usize].copy_from_slice(&buf);
            Outcome::Ok
        }
        Op::Truncate { size } => {
            if let Err(e) = fd.truncate(size) {
                return fail("ftruncate", e);
            }
            model.resize(size as usize, 0);
            Outcome::Ok
        }
        Op::Falloc { how, off, len } => {
            match fd.fallocate(how.mode(), off, len) {
                Err(libc::EOPNOTSUPP) => return Outcome::Unsupported(how),
                Err(e) => return fail(how.name(), e),
                Ok(()) => {}
            }
            match how {
                Falloc::Alloc | Falloc::Zero => {
                    if how == Falloc::Zero {
                        zero(model, off, len);
                    }
                    grow(model, off + len);
                }
                Falloc::KeepSize => {}
                Falloc::Punch | Falloc::ZeroKeepSize => zero(model, off, len),
            }
            Outcome::Ok
        }
        Op::Fsync => match fd.fsync() {
            Err(e) => fail("fsync", e),
            Ok(()) => Outcome::Ok,
        },
        Op::Reopen => {
            // the old descriptor closes when replaced
            match Fd::open(path, false) {
                Err(e) => fail("open", e),
                Ok(new) => {
                    *fd = new;
                    Outcome::Ok
                }
            }
        }
    }
}

/// The file's size and every byte against the model.
pub fn check_all(fd: &Fd, model: &[u8]) -> Outcome {
    match fd.size() {
        Err(e) => return Outcome::Failed("fstat".into(), e),
        Ok(s) if s != model.len() as u64 => {
            return Outcome::Mismatch(Mismatch {
                what: format!("file size {s:#x}, the model's {:#x}", model.len()),
                offset: None,
                dump_from: 0,
                expected: Vec::new(),
                got: Vec::new(),
            })
        }
        Ok(_) => {}
    }
    let mut buf = vec![0u8; model.len()];
    match fd.pread(&mut buf, 0) {
        Err(e) => Outcome::Failed("pread (full check)".into(), e),
        Ok(n) if n != model.len() => Outcome::Mismatch(Mismatch {
            what: format!("full read returned {n:#x} bytes of {:#x}", model.len()),
            offset: None,
            dump_from: 0,
            expected: Vec::new(),
            got: Vec::new(),
        }),
        Ok(_) => compare(model, 0, &buf, "full check"),
    }
}
