//! FaultBackend: every fault mode, and every crash mode checked against an
//! independent per-sector model of what must survive.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use biofs::block::backend::fault::FaultOps;
use biofs::block::backend::{BlockBackend, CrashMode, FaultBackend, MemBackend, RangeFault};
use biofs::block::Sector;
use common::{assert_same, errno, pattern, read, write};

const SZ: u64 = 64 << 10;
const LBS: usize = 512;

fn setup() -> (FaultBackend, Arc<MemBackend>, Vec<u8>) {
    let mem = Arc::new(MemBackend::new(SZ));
    let base = pattern(99, SZ as usize);
    write(&*mem, 0, &base, false).expect("fill");
    (FaultBackend::with_seed(mem.clone(), 7), mem, base)
}

#[test]
fn range_fault_errno_reaches_caller_and_changes_nothing() {
    let (f, mem, base) = setup();
    f.fail_range(
        RangeFault::new(Sector(8), 8)
            .ops(FaultOps::Writes)
            .errno(libc::ENOSPC),
    );
    let junk = vec![0xee; 4 * LBS];
    // Touching the range from either side fails; the medium is unchanged.
    assert_eq!(errno(write(&f, 14 * 512, &junk, false)), Some(libc::ENOSPC));
    assert_eq!(errno(write(&f, 6 * 512, &junk, true)), Some(libc::ENOSPC));
    assert_eq!(errno(f.discard(8 * 512, 512)), Some(libc::ENOSPC));
    assert_eq!(errno(f.write_zeroes(15 * 512, 512)), Some(libc::ENOSPC));
    assert_same(&mem.snapshot(), &base, "after failed writes");
    // Reads of the range and writes beside it succeed.
    assert_same(
        &read(&f, 8 * 512, 8 * LBS).expect("read"),
        &base[8 * 512..16 * 512],
        "read",
    );
    write(&f, 16 * 512, &junk, false).expect("write just past the range");
    write(&f, 4 * 512, &junk, false).expect("write just before the range");
    assert_eq!(f.counters().range_errors, 4);
    // Still armed ("always").
    assert_eq!(
        errno(write(&f, 8 * 512, &junk[..512], false)),
        Some(libc::ENOSPC)
    );
}

#[test]
fn once_read_fault_fires_once() {
    let (f, _mem, base) = setup();
    f.fail_range(RangeFault::new(Sector(32), 1).ops(FaultOps::Reads).once());
    write(&f, 32 * 512, &base[32 * 512..33 * 512], false).expect("writes are not hit");
    assert!(
        read(&f, 0, 32 * LBS).is_ok(),
        "a read ending before the range is not hit"
    );
    assert_eq!(errno(read(&f, 30 * 512, 4 * LBS)), Some(libc::EIO));
    assert_same(
        &read(&f, 30 * 512, 4 * LBS).expect("second read"),
        &base[30 * 512..34 * 512],
        "retry",
    );
    assert_eq!(f.counters().range_errors, 1);
}

#[test]
fn countdown_fires_exactly_at_n() {
    let (f, _mem, _) = setup();
    f.fail_nth(5, libc::EIO);
    let data = pattern(1, LBS);
    write(&f, 0, &data, false).expect("op 1");
    read(&f, 0, LBS).expect("op 2");
    f.flush().expect("op 3");
    // A malformed request is rejected before it counts.
    assert_eq!(errno(read(&f, 1, LBS)), Some(libc::EINVAL));
    f.discard(512, 512).expect("op 4");
    assert_eq!(errno(f.write_zeroes(0, 512)), Some(libc::EIO), "op 5");
    assert_same(
        &read(&f, 0, LBS).expect("op 6"),
        &data,
        "the failed op changed nothing",
    );
    for _ in 0..10 {
        f.flush().expect("disarmed after firing");
    }
    assert_eq!(f.counters().countdown_errors, 1);
    f.fail_nth(1, libc::ENODATA);
    assert_eq!(
        errno(read(&f, 0, LBS)),
        Some(libc::ENODATA),
        "n = 1 is the next op"
    );
    f.fail_nth(2, libc::EIO);
    f.fail_nth(0, libc::EIO);
    for _ in 0..3 {
        f.flush().expect("n = 0 disarms");
    }
}

#[test]
fn read_bit_flip_is_visible_and_transient() {
    let (f, mem, base) = setup();
    f.flip_on_read(1000, 3, false);
    for _ in 0..2 {
        let got = read(&f, 512, 4 * LBS).expect("read");
        let mut want = base[512..2560].to_vec();
        want[1000 - 512] ^= 0x08;
        assert_same(&got, &want, "every read sees the flip");
    }
    assert_same(
        &read(&f, 2048, LBS).expect("read"),
        &base[2048..2560],
        "reads not covering it",
    );
    assert_same(&mem.snapshot(), &base, "the medium is intact");
    f.clear_faults();
    f.flip_on_read(4095, 7, true);
    let got = read(&f, 0, 8 * LBS).expect("read");
    assert_eq!(got[4095], base[4095] ^ 0x80);
    assert_eq!(got[4094], base[4094]);
    assert_same(
        &read(&f, 0, 8 * LBS).expect("read"),
        &base[..4096],
        "once: second read clean",
    );
    assert_eq!(f.counters().read_flips, 3);
}

#[test]
fn corruption_in_place_persists_on_the_medium() {
    let (f, mem, base) = setup();
    f.corrupt_in_place(5000, 0).expect("corrupt");
    let mut want = base.clone();
    want[5000] ^= 1;
    assert_same(&mem.snapshot(), &want, "medium");
    assert_same(&read(&f, 0, SZ as usize).expect("read"), &want, "reads");
    assert_eq!(f.counters().corruptions, 1);
    assert_eq!(errno(f.corrupt_in_place(SZ, 0)), Some(libc::EINVAL));
}

// ---------------------------------------------------------------------------
// volatile write cache and crashes
// ---------------------------------------------------------------------------

/// One operation of the crash workload, as the model sees it.
#[derive(Clone, Debug)]
struct Op {
    sector: usize,
    /// `None`: write-zeroes (or discard, which reads as zeroes on memory).
    data: Option<Vec<u8>>,
    sectors: usize,
    fua: bool,
    /// Issued before the last flush.
    flushed: bool,
}

/// Runs a fixed workload: writes, a flush, then unflushed writes that
/// overlap each other and the flushed data, a FUA write overlapping older
/// cached writes, a discard and a write-zeroes. Returns the backend, the
/// medium, the initial image and the ops in issue order.
fn crash_workload(seed: u64) -> (FaultBackend, Arc<MemBackend>, Vec<u8>, Vec<Op>) {
    let mem = Arc::new(MemBackend::new(SZ));
    let base = pattern(1000 + seed, SZ as usize);
    write(&*mem, 0, &base, false).expect("fill");
    let f = FaultBackend::with_seed(mem.clone(), seed);
    f.set_volatile_cache(true).expect("cache on");
    let plan: [(usize, usize, u8); 10] = [
        // (sector, sectors, kind: 0 write, 1 FUA write, 2 flush, 3 zeroes, 4 discard)
        (0, 8, 0),
        (4, 8, 0),
        (0, 0, 2),
        (2, 6, 0),
        (10, 16, 0),
        (20, 4, 1),
        (12, 4, 3),
        (24, 12, 0),
        (30, 2, 4),
        (6, 10, 0),
    ];
    let mut ops: Vec<Op> = Vec::new();
    for (i, &(sector, sectors, kind)) in plan.iter().enumerate() {
        let off = (sector * LBS) as u64;
        let len = sectors * LBS;
        match kind {
            2 => {
                f.flush().expect("flush");
                ops.iter_mut().for_each(|o| o.flushed = true);
                continue;
            }
            3 => f.write_zeroes(off, len as u64).expect("write-zeroes"),
            4 => f.discard(off, len as u64).expect("discard"),
            _ => {
                let data = pattern(seed * 100 + i as u64, len);
                write(&f, off, &data, kind == 1).expect("write");
            }
        }
        let data = (kind <= 1).then(|| pattern(seed * 100 + i as u64, len));
        ops.push(Op {
            sector,
            data,
            sectors,
            fua: kind == 1,
            flushed: false,
        });
    }
    (f, mem, base, ops)
}

/// The unflushed, non-FUA ops: what the cache holds, in order.
fn pending(ops: &[Op]) -> Vec<usize> {
    (0..ops.len())
        .filter(|&i| !ops[i].flushed && !ops[i].fua)
        .collect()
}

/// The image after a crash, computed per sector: each sector holds the data
/// of the newest op that reached the medium (flushed, FUA, or a surviving
/// cached op, the torn one only in its first `torn.1` sectors).
fn model(base: &[u8], ops: &[Op], kept: &BTreeSet<usize>, torn: Option<(usize, usize)>) -> Vec<u8> {
    let mut img = base.to_vec();
    for s in 0..base.len() / LBS {
        let newest = (0..ops.len()).rev().find(|&i| {
            let o = &ops[i];
            let mut end = o.sector + o.sectors;
            let durable = if o.flushed || o.fua || kept.contains(&i) {
                true
            } else if let Some((ti, k)) = torn.filter(|t| t.0 == i) {
                end = ops[ti].sector + k;
                true
            } else {
                false
            };
            durable && (o.sector..end).contains(&s)
        });
        if let Some(i) = newest {
            let o = &ops[i];
            let dst = &mut img[s * LBS..(s + 1) * LBS];
            match &o.data {
                Some(d) => dst.copy_from_slice(&d[(s - o.sector) * LBS..(s - o.sector + 1) * LBS]),
                None => dst.fill(0),
            }
        }
    }
    img
}

fn all(ops: &[Op]) -> BTreeSet<usize> {
    (0..ops.len()).collect()
}

#[test]
fn volatile_cache_reads_see_unflushed_writes() {
    let (f, mem, base, ops) = crash_workload(1);
    let live = model(&base, &ops, &all(&ops), None);
    assert_same(
        &read(&f, 0, SZ as usize).expect("read"),
        &live,
        "reads through the cache",
    );
    let durable = model(&base, &ops, &BTreeSet::new(), None);
    assert_same(&mem.snapshot(), &durable, "medium before flush");
    assert_eq!(f.pending_writes(), pending(&ops).len());
    f.flush().expect("flush");
    assert_eq!(f.pending_writes(), 0);
    assert_same(&mem.snapshot(), &live, "medium after flush");
}

#[test]
fn crash_drop_all_keeps_only_flushed_and_fua() {
    let (f, mem, base, ops) = crash_workload(2);
    let report = f.crash(CrashMode::DropAll).expect("crash");
    assert_eq!(report.pending, pending(&ops).len());
    assert!(report.kept.is_empty());
    let want = model(&base, &ops, &BTreeSet::new(), None);
    assert_same(&mem.snapshot(), &want, "medium after DropAll");
    assert_same(
        &read(&f, 0, SZ as usize).expect("read"),
        &want,
        "reads after DropAll",
    );
    assert_eq!(f.pending_writes(), 0);
    let c = f.counters();
    assert_eq!((c.crashes, c.lost_writes), (1, report.pending as u64));
}

#[test]
fn crash_keep_prefix_keeps_exactly_the_first_n() {
    let n_pending = pending(&crash_workload(3).3).len();
    assert!(
        n_pending >= 5,
        "the workload must leave several writes cached"
    );
    for n in 0..=n_pending + 1 {
        let (f, mem, base, ops) = crash_workload(3);
        let report = f.crash(CrashMode::KeepPrefix(n)).expect("crash");
        let kept: BTreeSet<usize> = pending(&ops).into_iter().take(n).collect();
        assert_eq!(report.kept, (0..n.min(n_pending)).collect::<Vec<_>>());
        let want = model(&base, &ops, &kept, None);
        assert_same(&mem.snapshot(), &want, &format!("KeepPrefix({n})"));
    }
}

#[test]
fn crash_random_subset_is_seeded_and_matches_the_model() {
    let mut subsets = BTreeSet::new();
    for seed in 0..8 {
        let (f, mem, base, ops) = crash_workload(4);
        let report = f.crash(CrashMode::RandomSubset { seed }).expect("crash");
        let again = crash_workload(4).0.crash(CrashMode::RandomSubset { seed });
        assert_eq!(
            again.expect("crash").kept,
            report.kept,
            "same seed, same subset"
        );
        let pend = pending(&ops);
        let kept: BTreeSet<usize> = report.kept.iter().map(|&i| pend[i]).collect();
        let want = model(&base, &ops, &kept, None);
        assert_same(
            &mem.snapshot(),
            &want,
            &format!("RandomSubset {{ seed: {seed} }}"),
        );
        subsets.insert(report.kept);
    }
    assert!(
        subsets.len() > 2,
        "seeds should give different subsets: {subsets:?}"
    );
}

#[test]
fn crash_torn_last_keeps_a_proper_prefix_of_the_last_write() {
    let mut ks = BTreeSet::new();
    for seed in 0..8 {
        let (f, mem, base, ops) = crash_workload(seed);
        let report = f.crash(CrashMode::TornLast).expect("crash");
        let pend = pending(&ops);
        let last = *pend.last().expect("pending writes");
        let k = report.torn_blocks.expect("torn block count") as usize;
        assert!(
            k < ops[last].sectors,
            "the torn write must not survive whole"
        );
        let kept: BTreeSet<usize> = pend[..pend.len() - 1].iter().copied().collect();
        assert_eq!(report.kept, (0..pend.len() - 1).collect::<Vec<_>>());
        let want = model(&base, &ops, &kept, Some((last, k)));
        assert_same(&mem.snapshot(), &want, &format!("TornLast seed {seed}"));
        let again = crash_workload(seed)
            .0
            .crash(CrashMode::TornLast)
            .expect("crash");
        assert_eq!(
            again.torn_blocks, report.torn_blocks,
            "same seed, same tear"
        );
        ks.insert(k);
        assert_eq!(f.counters().torn_writes, 1);
    }
    assert!(
        ks.len() > 2,
        "seeds should tear at different points: {ks:?}"
    );
}

#[test]
fn fua_data_is_never_overwritten_by_older_cached_writes() {
    let (f, mem, _base, _) = crash_workload(5);
    let old = pattern(1, 8 * LBS);
    let fua = pattern(2, 4 * LBS);
    write(&f, 40 * 512, &old, false).expect("cached write");
    write(&f, 42 * 512, &fua, true).expect("FUA write");
    assert_same(
        &mem.snapshot()[42 * 512..46 * 512],
        &fua,
        "FUA is on the medium at once",
    );
    f.flush().expect("flush");
    let got = read(&f, 40 * 512, 8 * LBS).expect("read");
    let mut want = old.clone();
    want[2 * LBS..6 * LBS].copy_from_slice(&fua);
    assert_same(
        &got,
        &want,
        "flush must not write the older data over the FUA write",
    );
    assert_same(&mem.snapshot()[40 * 512..48 * 512], &want, "medium");
}

#[test]
fn cache_off_writes_back_and_crash_after_flush_loses_nothing() {
    let (f, mem, base, ops) = crash_workload(6);
    let live = model(&base, &ops, &all(&ops), None);
    f.set_volatile_cache(false).expect("cache off");
    assert_same(
        &mem.snapshot(),
        &live,
        "turning the cache off writes it back",
    );
    f.set_volatile_cache(true).expect("cache on");
    write(&f, 0, &pattern(3, LBS), false).expect("write");
    f.flush().expect("flush");
    let report = f.crash(CrashMode::DropAll).expect("crash");
    assert_eq!(report.pending, 0);
    assert_same(
        &mem.snapshot()[..LBS],
        &pattern(3, LBS),
        "flushed write survives",
    );
}

#[test]
fn failed_writeback_keeps_the_unwritten_tail_cached() {
    let mem = Arc::new(MemBackend::new(SZ));
    let inner = Arc::new(FaultBackend::new(mem.clone()));
    let f = FaultBackend::new(inner.clone());
    f.set_volatile_cache(true).expect("cache on");
    write(&f, 0, &pattern(1, LBS), false).expect("write");
    write(&f, 8 * 512, &pattern(2, LBS), false).expect("write");
    inner.fail_range(RangeFault::new(Sector(8), 1).once());
    assert_eq!(errno(f.flush()), Some(libc::EIO));
    assert_eq!(
        f.pending_writes(),
        1,
        "the first write left the cache, the failed one stayed"
    );
    assert_same(
        &mem.snapshot()[..LBS],
        &pattern(1, LBS),
        "first write reached the medium",
    );
    f.flush().expect("retry");
    assert_same(
        &mem.snapshot()[8 * 512..9 * 512],
        &pattern(2, LBS),
        "retried write",
    );
}
