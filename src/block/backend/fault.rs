//! A fault-injecting wrapper around another backend, for tests.
//!
//! In the spirit of dm-flakey/dm-dust and of redb's countdown and crash
//! backends: faults are armed at run time from any thread, and everything
//! random is drawn from a seeded generator, so a failing test replays exactly.
//!
//! Fault kinds:
//! - **Range faults** ([`RangeFault`]): reads and/or writes touching a sector
//!   range fail with a chosen errno, once or always. "Writes" include discard
//!   and write-zeroes.
//! - **Countdown** ([`FaultBackend::fail_nth`]): the Nth operation from now
//!   fails. Every `read_at`, `write_at`, `flush`, `discard` and
//!   `write_zeroes` that passes the range check counts; `info` does not.
//! - **Bit rot**: [`FaultBackend::flip_on_read`] flips a bit in the data
//!   reads return; [`FaultBackend::corrupt_in_place`] flips it on the medium.
//! - **Volatile write cache** ([`FaultBackend::set_volatile_cache`]): writes
//!   since the last flush live in an overlay that reads see; `flush` writes
//!   them to the inner device in order; FUA writes go straight through and
//!   mask the sectors of older cached writes they overlap (so those can never
//!   overwrite them later); [`FaultBackend::crash`] loses the overlay as a
//!   [`CrashMode`] says.
//!
//! A failed (injected) operation changes nothing.

use std::io::{self, IoSlice, IoSliceMut};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{check_range, iov_len, BackendInfo, BlockBackend};
use crate::block::types::{Sector, SECTOR_SHIFT};

/// Which operations a [`RangeFault`] hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOps {
    Reads,
    /// `write_at`, `discard` and `write_zeroes`.
    Writes,
    Both,
}

/// Fail operations touching `[start, start + nr_sectors)` with `errno`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeFault {
    pub start: Sector,
    pub nr_sectors: u64,
    pub ops: FaultOps,
    /// The errno the caller sees (`EIO` unless set).
    pub errno: i32,
    /// Disarm after the first hit.
    pub once: bool,
}

impl RangeFault {
    /// A fault failing reads and writes of the range with `EIO`, always.
    pub fn new(start: Sector, nr_sectors: u64) -> RangeFault {
        RangeFault {
            start,
            nr_sectors,
            ops: FaultOps::Both,
            errno: libc::EIO,
            once: false,
        }
    }

    /// Only these operations fail.
    pub fn ops(mut self, ops: FaultOps) -> RangeFault {
        self.ops = ops;
        self
    }

    /// Fail with `errno` instead of `EIO`.
    pub fn errno(mut self, errno: i32) -> RangeFault {
        self.errno = errno;
        self
    }

    /// Fail only the first matching operation.
    pub fn once(mut self) -> RangeFault {
        self.once = true;
        self
    }

    fn hits(&self, write: bool, offset: u64, len: u64) -> bool {
        let op_ok = match self.ops {
            FaultOps::Reads => !write,
            FaultOps::Writes => write,
            FaultOps::Both => true,
        };
        let start = self.start.to_bytes();
        let end = start.saturating_add(self.nr_sectors << SECTOR_SHIFT);
        op_ok && len > 0 && offset < end && start < offset + len
    }
}

/// What a crash keeps of the writes cached since the last flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unflushed write is lost.
    DropAll,
    /// The first `n` unflushed writes survive, in order; the rest are lost.
    KeepPrefix(usize),
    /// Each unflushed write survives with probability 1/2, drawn from `seed`;
    /// survivors land in their original order.
    RandomSubset { seed: u64 },
    /// Every unflushed write but the last survives; the last survives only
    /// as its first k logical blocks, `k` drawn from the backend's seed in
    /// `0..n` (n = its length in blocks), so it is never whole.
    TornLast,
}

/// What a [`FaultBackend::crash`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Unflushed writes (including discards and write-zeroes) at the crash.
    pub pending: usize,
    /// Indices (in issue order) of the unflushed writes that survived whole.
    pub kept: Vec<usize>,
    /// For [`CrashMode::TornLast`]: how many leading logical blocks of the
    /// last write survived.
    pub torn_blocks: Option<u64>,
}

/// How many faults were injected, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounters {
    pub range_errors: u64,
    pub countdown_errors: u64,
    pub read_flips: u64,
    pub corruptions: u64,
    pub crashes: u64,
    /// Unflushed writes lost whole in crashes.
    pub lost_writes: u64,
    /// Unflushed writes that survived a crash only in part.
    pub torn_writes: u64,
}

#[derive(Clone, Copy, Debug)]
struct ReadFlip {
    byte: u64,
    bit: u8,
    once: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PendingKind {
    Write,
    Discard,
    WriteZeroes,
}

/// One write held by the volatile cache.
#[derive(Debug)]
struct Pending {
    kind: PendingKind,
    offset: u64,
    /// The data for `Write`, empty for the zeroing kinds.
    data: Vec<u8>,
    /// Per logical block: false once a later FUA write has superseded it.
    live: Vec<bool>,
}

impl Pending {
    /// Maximal runs `(first_block, nr_blocks)` of live blocks among the
    /// first `limit` blocks.
    fn live_runs(&self, limit: usize) -> Vec<(usize, usize)> {
        let mut runs = Vec::new();
        let mut i = 0;
        let limit = limit.min(self.live.len());
        while i < limit {
            if self.live.get(i) != Some(&true) {
                i += 1;
                continue;
            }
            let start = i;
            while i < limit && self.live.get(i) == Some(&true) {
                i += 1;
            }
            runs.push((start, i - start));
        }
        runs
    }
}

#[derive(Debug, Default)]
struct State {
    range_faults: Vec<RangeFault>,
    /// Operations left before the armed one, and its errno.
    countdown: Option<(u64, i32)>,
    flips: Vec<ReadFlip>,
    /// `Some` in volatile-cache mode: the unflushed writes, oldest first.
    cache: Option<Vec<Pending>>,
    rng: SplitMix64,
    counters: FaultCounters,
}

/// A [`BlockBackend`] that injects faults into another one.
pub struct FaultBackend {
    inner: Arc<dyn BlockBackend>,
    state: Mutex<State>,
}

impl FaultBackend {
    /// Wraps `inner` with nothing armed and seed 0.
    pub fn new(inner: Arc<dyn BlockBackend>) -> FaultBackend {
        FaultBackend::with_seed(inner, 0)
    }

    /// Wraps `inner`; random choices ([`CrashMode::TornLast`]) come from `seed`.
    pub fn with_seed(inner: Arc<dyn BlockBackend>, seed: u64) -> FaultBackend {
        FaultBackend {
            inner,
            state: Mutex::new(State {
                rng: SplitMix64(seed),
                ..State::default()
            }),
        }
    }

    /// The wrapped backend (the "medium" that survives crashes).
    pub fn inner(&self) -> &Arc<dyn BlockBackend> {
        &self.inner
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms a range fault.
    pub fn fail_range(&self, fault: RangeFault) {
        self.lock().range_faults.push(fault);
    }

    /// Makes the `n`th operation from now fail with `errno` (`n == 1`: the
    /// next one). `n == 0` disarms the countdown.
    pub fn fail_nth(&self, n: u64, errno: i32) {
        self.lock().countdown = n.checked_sub(1).map(|left| (left, errno));
    }

    /// Flips bit `bit` (0..8) of the byte at device offset `byte` in the data
    /// of reads covering it: the next such read if `once`, every one if not.
    pub fn flip_on_read(&self, byte: u64, bit: u8, once: bool) {
        self.lock().flips.push(ReadFlip {
            byte,
            bit: bit % 8,
            once,
        });
    }

    /// Flips bit `bit` of the byte at offset `byte` on the inner device
    /// (read-modify-write of its logical block). A cached write covering that
    /// byte still shadows it until a crash drops it.
    ///
    /// Fails with `EINVAL` beyond the end, or with the inner device's error.
    pub fn corrupt_in_place(&self, byte: u64, bit: u8) -> io::Result<()> {
        let info = self.inner.info();
        let lbs = u64::from(info.logical_block_size.max(1));
        let block = byte - byte % lbs;
        check_range(&info, block, lbs)?;
        let mut st = self.lock();
        let mut buf = vec![0u8; lbs as usize];
        self.inner
            .read_at(&mut [IoSliceMut::new(&mut buf)], block)?;
        if let Some(b) = buf.get_mut((byte - block) as usize) {
            *b ^= 1 << (bit % 8);
        }
        self.inner.write_at(&[IoSlice::new(&buf)], block, false)?;
        st.counters.corruptions += 1;
        Ok(())
    }

    /// Disarms every range fault, the countdown and every read flip.
    pub fn clear_faults(&self) {
        let mut st = self.lock();
        st.range_faults.clear();
        st.countdown = None;
        st.flips.clear();
    }

    /// Turns the volatile write cache on or off. Turning it off flushes the
    /// cache first (and fails, leaving it on, if that flush fails).
    pub fn set_volatile_cache(&self, on: bool) -> io::Result<()> {
        let mut st = self.lock();
        match (on, st.cache.is_some()) {
            (true, false) => st.cache = Some(Vec::new()),
            (false, true) => {
                self.writeback(&mut st)?;
                st.cache = None;
            }
            _ => {}
        }
        Ok(())
    }

    /// How many writes the volatile cache holds (0 when it is off).
    pub fn pending_writes(&self) -> usize {
        self.lock().cache.as_ref().map_or(0, Vec::len)
    }

    /// Injected-fault counters.
    pub fn counters(&self) -> FaultCounters {
        self.lock().counters
    }

    /// Power loss: the volatile cache loses its writes as `mode` says; the
    /// survivors are written to the inner device in issue order and flushed.
    /// The cache stays on, empty. Armed faults stay armed.
    ///
    /// Fails with the inner device's error while writing survivors (the cache
    /// is emptied regardless: what was not written is lost).
    pub fn crash(&self, mode: CrashMode) -> io::Result<CrashReport> {
        let mut st = self.lock();
        let pending = st.cache.as_mut().map(std::mem::take).unwrap_or_default();
        let n = pending.len();
        let mut report = CrashReport {
            pending: n,
            ..CrashReport::default()
        };
        let mut torn: Option<(usize, usize)> = None;
        match mode {
            CrashMode::DropAll => {}
            CrashMode::KeepPrefix(k) => report.kept = (0..k.min(n)).collect(),
            CrashMode::RandomSubset { seed } => {
                let mut rng = SplitMix64(seed);
                report.kept = (0..n).filter(|_| rng.next() & 1 == 1).collect();
            }
            CrashMode::TornLast => {
                if let Some(last) = pending.last() {
                    report.kept = (0..n - 1).collect();
                    let blocks = last.live.len() as u64;
                    let k = if blocks == 0 {
                        0
                    } else {
                        st.rng.next() % blocks
                    };
                    report.torn_blocks = Some(k);
                    torn = Some((n - 1, k as usize));
                }
            }
        }
        st.counters.crashes += 1;
        let survivors = report.kept.len() + usize::from(torn.is_some());
        st.counters.lost_writes += (n - survivors) as u64;
        st.counters.torn_writes += u64::from(torn.is_some());
        drop(st);
        let lbs = u64::from(self.inner.info().logical_block_size.max(1));
        for &i in &report.kept {
            if let Some(p) = pending.get(i) {
                self.apply(p, p.live.len(), lbs)?;
            }
        }
        if let Some((i, k)) = torn {
            if let Some(p) = pending.get(i) {
                self.apply(p, k, lbs)?;
            }
        }
        self.inner.flush()?;
        Ok(report)
    }

    /// Writes the live blocks among the first `limit` blocks of `p` to the
    /// inner device.
    fn apply(&self, p: &Pending, limit: usize, lbs: u64) -> io::Result<()> {
        for (first, nr) in p.live_runs(limit) {
            let off = p.offset + first as u64 * lbs;
            let len = nr as u64 * lbs;
            match p.kind {
                PendingKind::Write => {
                    let s = first * lbs as usize;
                    let data = p.data.get(s..s + len as usize).ok_or_else(|| {
                        io::Error::other("a pending write is shorter than its live blocks")
                    })?;
                    self.inner.write_at(&[IoSlice::new(data)], off, false)?;
                }
                PendingKind::Discard => self.inner.discard(off, len)?,
                PendingKind::WriteZeroes => self.inner.write_zeroes(off, len)?,
            }
        }
        Ok(())
    }

    /// Writes the whole cache to the inner device in order and flushes it.
    /// On error the writes already applied leave the cache; the rest stay.
    fn writeback(&self, st: &mut State) -> io::Result<()> {
        let lbs = u64::from(self.inner.info().logical_block_size.max(1));
        if let Some(cache) = st.cache.as_mut() {
            let mut done = 0;
            let mut res = Ok(());
            for p in cache.iter() {
                res = self.apply(p, p.live.len(), lbs);
                if res.is_err() {
                    break;
                }
                done += 1;
            }
            cache.drain(..done);
            res?;
        }
        self.inner.flush()
    }

    /// Range and countdown faults for one operation. `range` is `None` for
    /// flush. Returns the errno to fail with.
    fn inject(st: &mut State, write: bool, range: Option<(u64, u64)>) -> Option<i32> {
        if let Some((left, errno)) = st.countdown {
            if left == 0 {
                st.countdown = None;
                st.counters.countdown_errors += 1;
                return Some(errno);
            }
            st.countdown = Some((left - 1, errno));
        }
        let (offset, len) = range?;
        let idx = st
            .range_faults
            .iter()
            .position(|f| f.hits(write, offset, len))?;
        let (errno, once) = st.range_faults.get(idx).map(|f| (f.errno, f.once))?;
        if once {
            st.range_faults.remove(idx);
        }
        st.counters.range_errors += 1;
        Some(errno)
    }

    /// Validates the range, then injects. On success returns the locked state.
    fn begin(&self, write: bool, range: Option<(u64, u64)>) -> io::Result<MutexGuard<'_, State>> {
        if let Some((offset, len)) = range {
            check_range(&self.info(), offset, len)?;
        }
        let mut st = self.lock();
        match Self::inject(&mut st, write, range) {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(st),
        }
    }

    /// Applies the armed read flips to data read at `offset`.
    fn apply_flips(st: &mut State, bufs: &mut [IoSliceMut<'_>], offset: u64, len: u64) {
        let mut fired = 0;
        st.flips.retain(|f| {
            if f.byte < offset || f.byte >= offset + len {
                return true;
            }
            if let Some(b) = byte_at(bufs, f.byte - offset) {
                *b ^= 1 << f.bit;
                fired += 1;
            }
            !f.once
        });
        st.counters.read_flips += fired;
    }

    /// Overlays the cached writes on data read from `[offset, offset+len)`.
    fn apply_cache(
        cache: &[Pending],
        bufs: &mut [IoSliceMut<'_>],
        offset: u64,
        len: u64,
        lbs: u64,
    ) {
        for p in cache {
            let p_end = p.offset + p.live.len() as u64 * lbs;
            if p_end <= offset || p.offset >= offset + len {
                continue;
            }
            for (first, nr) in p.live_runs(p.live.len()) {
                let run_start = p.offset + first as u64 * lbs;
                let run_end = run_start + nr as u64 * lbs;
                let s = run_start.max(offset);
                let e = run_end.min(offset + len);
                if s >= e {
                    continue;
                }
                let src = match p.kind {
                    PendingKind::Write => {
                        let ds = (s - p.offset) as usize;
                        p.data.get(ds..ds + (e - s) as usize)
                    }
                    _ => None,
                };
                scatter(bufs, s - offset, (e - s) as usize, src);
            }
        }
    }
}

/// The byte at position `pos` of a scatter list.
fn byte_at<'a>(bufs: &'a mut [IoSliceMut<'_>], mut pos: u64) -> Option<&'a mut u8> {
    for buf in bufs.iter_mut() {
        let len = buf.len() as u64;
        if pos < len {
            return buf.get_mut(pos as usize);
        }
        pos -= len;
    }
    None
}

/// Copies `src` (or `len` zeroes when `None`) into a scatter list at `pos`.
fn scatter(bufs: &mut [IoSliceMut<'_>], pos: u64, len: usize, src: Option<&[u8]>) {
    let mut base = 0u64;
    let mut done = 0usize;
    for buf in bufs.iter_mut() {
        let blen = buf.len() as u64;
        let at = pos + done as u64;
        if done < len && at < base + blen {
            let off = (at - base) as usize;
            let n = (buf.len() - off).min(len - done);
            let Some(dst) = buf.get_mut(off..off + n) else {
                return;
            };
            match src.map(|s| s.get(done..done + n)) {
                Some(Some(s)) => dst.copy_from_slice(s),
                Some(None) => return,
                None => dst.fill(0),
            }
            done += n;
        }
        base += blen;
    }
}

impl BlockBackend for FaultBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: "fault",
            ..self.inner.info()
        }
    }

    fn read_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        let len = iov_len(bufs);
        let mut st = self.begin(false, Some((offset, len)))?;
        if st.cache.is_some() {
            // Hold the lock so a concurrent flush can't move data between
            // the inner read and the overlay.
            self.inner.read_at(bufs, offset)?;
            let lbs = u64::from(self.inner.info().logical_block_size.max(1));
            if let Some(cache) = st.cache.as_deref() {
                Self::apply_cache(cache, bufs, offset, len, lbs);
            }
        } else {
            drop(st);
            self.inner.read_at(bufs, offset)?;
            st = self.lock();
        }
        Self::apply_flips(&mut st, bufs, offset, len);
        Ok(())
    }

    fn write_at(&self, bufs: &[IoSlice<'_>], offset: u64, fua: bool) -> io::Result<()> {
        let len = iov_len(bufs);
        let mut st = self.begin(true, Some((offset, len)))?;
        let lbs = u64::from(self.inner.info().logical_block_size.max(1));
        let Some(cache) = st.cache.as_mut() else {
            drop(st);
            return self.inner.write_at(bufs, offset, fua);
        };
        if fua {
            self.inner.write_at(bufs, offset, true)?;
            supersede(cache, offset, len, lbs);
            return Ok(());
        }
        let mut data = Vec::with_capacity(len as usize);
        for b in bufs {
            data.extend_from_slice(b);
        }
        cache.push(Pending {
            kind: PendingKind::Write,
            offset,
            data,
            live: vec![true; (len / lbs) as usize],
        });
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut st = self.begin(true, None)?;
        if st.cache.is_some() {
            return self.writeback(&mut st);
        }
        drop(st);
        self.inner.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.cached_zeroing(PendingKind::Discard, offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.cached_zeroing(PendingKind::WriteZeroes, offset, len)
    }
}

impl FaultBackend {
    /// Discard or write-zeroes: cached in volatile mode, passed on otherwise.
    fn cached_zeroing(&self, kind: PendingKind, offset: u64, len: u64) -> io::Result<()> {
        let mut st = self.begin(true, Some((offset, len)))?;
        let lbs = u64::from(self.inner.info().logical_block_size.max(1));
        if let Some(cache) = st.cache.as_mut() {
            cache.push(Pending {
                kind,
                offset,
                data: Vec::new(),
                live: vec![true; (len / lbs) as usize],
            });
            return Ok(());
        }
        drop(st);
        match kind {
            PendingKind::Discard => self.inner.discard(offset, len),
            _ => self.inner.write_zeroes(offset, len),
        }
    }
}

/// Marks the blocks of cached writes that a FUA write of `[offset,
/// offset+len)` has made durable as dead, so they never overwrite it.
fn supersede(cache: &mut [Pending], offset: u64, len: u64, lbs: u64) {
    for p in cache.iter_mut() {
        for (i, live) in p.live.iter_mut().enumerate() {
            let b = p.offset + i as u64 * lbs;
            if b >= offset && b < offset + len {
                *live = false;
            }
        }
    }
}

/// SplitMix64: a tiny, well-mixed, seedable generator (Steele et al., 2014).
#[derive(Clone, Copy, Debug, Default)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_runs_skip_superseded_blocks() {
        let p = Pending {
            kind: PendingKind::Write,
            offset: 0,
            data: vec![0; 6 * 512],
            live: vec![true, true, false, true, false, true],
        };
        assert_eq!(p.live_runs(6), vec![(0, 2), (3, 1), (5, 1)]);
        assert_eq!(p.live_runs(4), vec![(0, 2), (3, 1)]);
        assert_eq!(p.live_runs(0), vec![]);
    }

    #[test]
    fn scatter_crosses_buffers() {
        let mut a = [1u8; 3];
        let mut b = [1u8; 5];
        let mut bufs = [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)];
        scatter(&mut bufs, 2, 3, Some(&[7, 8, 9]));
        *byte_at(&mut bufs, 7).expect("in range") = 5;
        assert!(byte_at(&mut bufs, 8).is_none());
        assert_eq!(a, [1, 1, 7]);
        assert_eq!(b, [8, 9, 1, 1, 5]);
    }

    #[test]
    fn splitmix_is_deterministic() {
        let (mut a, mut b) = (SplitMix64(42), SplitMix64(42));
        let xs: Vec<u64> = (0..4).map(|_| a.next()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
    }
}
