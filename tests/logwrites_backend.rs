//! LogWritesBackend: the log records what was done, and replaying any
//! prefix (or a flush point plus any subset of the later writes) gives the
//! image an independent model gives.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

mod common;

use std::io::IoSlice;
use std::sync::Arc;

use biofs::block::backend::{
    BlockBackend, FaultBackend, LogEntry, LogWritesBackend, MemBackend, RangeFault,
};
use biofs::block::Sector;
use common::{assert_same, errno, pattern, write};

const SZ: u64 = 256 << 10;

/// What the test did, in order; one per log entry.
#[derive(Clone, Debug)]
enum Op {
    Write(u64, Vec<u8>, bool),
    Flush,
    Zero(u64, u64),
    Mark(&'static str),
}

fn apply_model(img: &mut [u8], op: &Op) {
    match op {
        Op::Write(off, data, _) => {
            img[*off as usize..*off as usize + data.len()].copy_from_slice(data)
        }
        Op::Zero(off, len) => img[*off as usize..(*off + *len) as usize].fill(0),
        Op::Flush | Op::Mark(_) => {}
    }
}

/// A workload of writes (some FUA, some vectored), flushes, discards,
/// write-zeroes and marks. Ends with four unflushed writes.
fn workload() -> (LogWritesBackend, Arc<MemBackend>, Vec<Op>) {
    let mem = Arc::new(MemBackend::new(SZ));
    let lw = LogWritesBackend::new(mem.clone());
    let mut ops = Vec::new();
    for i in 0..24u64 {
        let off = (i * 7919 % 400) * 512;
        let len = (1 + i % 9) * 512;
        let op = match i % 8 {
            3 => {
                lw.flush().expect("flush");
                Op::Flush
            }
            5 => {
                lw.discard(off, len).expect("discard");
                Op::Zero(off, len)
            }
            6 => {
                lw.write_zeroes(off, len).expect("write-zeroes");
                Op::Zero(off, len)
            }
            7 if i == 7 => {
                lw.mark("checkpoint");
                Op::Mark("checkpoint")
            }
            _ => {
                let data = pattern(i, len as usize);
                // Vectored: split into two iovecs at a sector boundary.
                let (a, b) = data.split_at(512);
                lw.write_at(&[IoSlice::new(a), IoSlice::new(b)], off, i % 4 == 1)
                    .expect("write");
                Op::Write(off, data, i % 4 == 1)
            }
        };
        ops.push(op);
    }
    (lw, mem, ops)
}

#[test]
fn entries_record_what_was_done() {
    let (lw, _mem, ops) = workload();
    let entries = lw.entries();
    assert_eq!(entries.len(), ops.len());
    assert_eq!(lw.len(), ops.len());
    for (i, (e, op)) in entries.iter().zip(&ops).enumerate() {
        match (e, op) {
            (LogEntry::Write { offset, data, fua }, Op::Write(o, d, f)) => {
                assert_eq!((offset, &data[..], fua), (o, &d[..], f), "entry {i}");
            }
            (LogEntry::Flush, Op::Flush) => {}
            (LogEntry::Discard { offset, len }, Op::Zero(o, l))
            | (LogEntry::WriteZeroes { offset, len }, Op::Zero(o, l)) => {
                assert_eq!((offset, len), (o, l), "entry {i}");
            }
            (LogEntry::Mark(label), Op::Mark(l)) => assert_eq!(label, l),
            other => panic!("entry {i} does not match: {other:?}"),
        }
    }
    let want: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(ops[i], Op::Flush))
        .map(|i| i + 1)
        .collect();
    assert_eq!(lw.flush_points(), want);
    assert!(!want.is_empty());
}

#[test]
fn replay_of_every_prefix_matches_the_model() {
    let (lw, mem, ops) = workload();
    let mut img = vec![0u8; SZ as usize];
    for p in 0..=ops.len() {
        if p > 0 {
            apply_model(&mut img, &ops[p - 1]);
        }
        let target = MemBackend::new(SZ);
        lw.replay(p, &target).expect("replay");
        assert_same(&target.snapshot(), &img, &format!("replay of {p} entries"));
    }
    assert_same(&mem.snapshot(), &img, "full replay equals the device");
}

#[test]
fn replay_subset_builds_every_crash_state_after_the_last_flush() {
    let (lw, _mem, ops) = workload();
    let fp = *lw.flush_points().last().expect("a flush point");
    let tail = ops.len() - fp;
    assert!((2..=10).contains(&tail), "tail of {tail} entries");
    for mask in 0u32..(1 << tail) {
        let keep: Vec<bool> = (0..tail).map(|j| mask & (1 << j) != 0).collect();
        let mut img = vec![0u8; SZ as usize];
        ops[..fp].iter().for_each(|op| apply_model(&mut img, op));
        for (op, &k) in ops[fp..].iter().zip(&keep) {
            if k {
                apply_model(&mut img, op);
            }
        }
        let target = MemBackend::new(SZ);
        lw.replay_subset(fp, &keep, &target).expect("replay_subset");
        assert_same(&target.snapshot(), &img, &format!("keep {keep:?}"));
    }
}

#[test]
fn replay_rejects_impossible_requests() {
    let (lw, _mem, ops) = workload();
    let fps = lw.flush_points();
    let same = MemBackend::new(SZ);
    assert_eq!(errno(lw.replay(ops.len() + 1, &same)), Some(libc::EINVAL));
    assert_eq!(
        errno(lw.replay(1, &MemBackend::new(SZ * 2))),
        Some(libc::EINVAL)
    );
    // Not a flush point.
    assert_eq!(
        errno(lw.replay_subset(fps[0] - 1, &[], &same)),
        Some(libc::EINVAL)
    );
    // A keep list reaching past a later flush, or past the end.
    let across = vec![true; fps[1] - fps[0]];
    assert_eq!(
        errno(lw.replay_subset(fps[0], &across, &same)),
        Some(libc::EINVAL)
    );
    let last = *fps.last().expect("flush point");
    let past = vec![true; ops.len() - last + 1];
    assert_eq!(
        errno(lw.replay_subset(last, &past, &same)),
        Some(libc::EINVAL)
    );
    // Nothing was written to the target by any rejected call.
    assert!(same.snapshot().iter().all(|&b| b == 0));
    lw.replay_subset(0, &[], &same)
        .expect("flush point 0 is the empty prefix");
}

#[test]
fn failed_operations_are_not_logged() {
    let mem = Arc::new(MemBackend::new(SZ));
    let fault = Arc::new(FaultBackend::new(mem));
    let lw = LogWritesBackend::new(fault.clone());
    write(&lw, 0, &pattern(1, 512), false).expect("write");
    fault.fail_range(RangeFault::new(Sector(4), 4));
    assert_eq!(
        errno(write(&lw, 4 * 512, &pattern(2, 512), false)),
        Some(libc::EIO)
    );
    assert_eq!(errno(lw.discard(4 * 512, 512)), Some(libc::EIO));
    fault.fail_nth(1, libc::EIO);
    assert_eq!(errno(lw.flush()), Some(libc::EIO));
    assert_eq!(lw.len(), 1);
    assert_eq!(lw.mark("after"), 1);
    assert!(matches!(&lw.entries()[1], LogEntry::Mark(l) if l == "after"));
}
