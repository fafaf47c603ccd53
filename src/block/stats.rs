//! Queue statistics, readable while the queue runs.
//!
//! Counterpart of the numbers in `/sys/block/*/stat` and
//! `/sys/kernel/debug/block/*`: bios submitted and split, merges, requests
//! dispatched and their sizes, flushes, integrity tuples, per priority class.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::ioc::SchedClass;
use super::merge::MergeKind;
use super::types::{ReqFlags, ReqOp};

/// Request size buckets: <=4K, 8K, 16K, ... 1M, 2M, >2M.
pub const SIZE_BUCKETS: usize = 11;

fn bucket_label(i: usize) -> String {
    if i == SIZE_BUCKETS - 1 {
        format!(">{}K", 4 << (i - 1))
    } else {
        format!("<={}K", 4 << i)
    }
}

#[derive(Default)]
struct PerClass {
    submitted: AtomicU64,
    dispatched: AtomicU64,
    dispatched_bytes: AtomicU64,
    wait_ns_total: AtomicU64,
    wait_ns_max: AtomicU64,
}

/// Live counters of a queue.
#[derive(Default)]
pub struct QueueStats {
    class: [PerClass; 3],
    bios_completed: AtomicU64,
    bios_split: AtomicU64,
    merges_back: AtomicU64,
    merges_front: AtomicU64,
    merge_hint_hits: AtomicU64,
    size_hist: [AtomicU64; SIZE_BUCKETS],
    reads: AtomicU64,
    writes: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    flushes: AtomicU64,
    preflushes: AtomicU64,
    fua_writes: AtomicU64,
    discards: AtomicU64,
    write_zeroes: AtomicU64,
    errors: AtomicU64,
    integrity_generated: AtomicU64,
    integrity_verified: AtomicU64,
    integrity_failed: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl QueueStats {
    pub(crate) fn bio_submitted(&self, class: SchedClass) {
        add(&class.of(&self.class).submitted, 1);
    }

    pub(crate) fn bios_completed(&self, n: u64) {
        add(&self.bios_completed, n);
    }

    pub(crate) fn bio_split(&self) {
        add(&self.bios_split, 1);
    }

    pub(crate) fn record_merge(&self, kind: MergeKind, hint_hit: bool) {
        match kind {
            MergeKind::Back => add(&self.merges_back, 1),
            MergeKind::Front => add(&self.merges_front, 1),
        }
        if hint_hit {
            add(&self.merge_hint_hits, 1);
        }
    }

    /// A request went to a worker after waiting `waited` in the scheduler.
    pub(crate) fn dispatched(
        &self,
        op: ReqOp,
        flags: ReqFlags,
        class: SchedClass,
        bytes: u64,
        waited: Duration,
    ) {
        let pc = class.of(&self.class);
        add(&pc.dispatched, 1);
        add(&pc.dispatched_bytes, bytes);
        let ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        add(&pc.wait_ns_total, ns);
        pc.wait_ns_max.fetch_max(ns, Ordering::Relaxed);
        match op {
            ReqOp::Read => {
                add(&self.reads, 1);
                add(&self.bytes_read, bytes);
            }
            ReqOp::Write => {
                add(&self.writes, 1);
                add(&self.bytes_written, bytes);
            }
            ReqOp::Flush => add(&self.flushes, 1),
            ReqOp::Discard => add(&self.discards, 1),
            ReqOp::WriteZeroes => add(&self.write_zeroes, 1),
        }
        if op.has_data() {
            let kib4 = bytes.div_ceil(4096).max(1);
            let bucket = (64 - (kib4 - 1).leading_zeros()) as usize;
            add(
                self.size_hist
                    .get(bucket)
                    .unwrap_or(&self.size_hist[SIZE_BUCKETS - 1]),
                1,
            );
        }
        if flags.contains(ReqFlags::PREFLUSH) {
            add(&self.preflushes, 1);
        }
        if flags.contains(ReqFlags::FUA) {
            add(&self.fua_writes, 1);
        }
    }

    pub(crate) fn error(&self) {
        add(&self.errors, 1);
    }

    pub(crate) fn integrity(&self, generated: u64, verified: u64, failed: u64) {
        add(&self.integrity_generated, generated);
        add(&self.integrity_verified, verified);
        add(&self.integrity_failed, failed);
    }

    /// A consistent-enough copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            classes: SchedClass::ALL.map(|c| {
                let pc = c.of(&self.class);
                ClassStats {
                    class: c,
                    submitted: l(&pc.submitted),
                    dispatched: l(&pc.dispatched),
                    dispatched_bytes: l(&pc.dispatched_bytes),
                    wait_ns_total: l(&pc.wait_ns_total),
                    wait_ns_max: l(&pc.wait_ns_max),
                }
            }),
            bios_completed: l(&self.bios_completed),
            bios_split: l(&self.bios_split),
            merges_back: l(&self.merges_back),
            merges_front: l(&self.merges_front),
            merge_hint_hits: l(&self.merge_hint_hits),
            size_hist: self.size_hist.each_ref().map(l),
            reads: l(&self.reads),
            writes: l(&self.writes),
            bytes_read: l(&self.bytes_read),
            bytes_written: l(&self.bytes_written),
            flushes: l(&self.flushes),
            preflushes: l(&self.preflushes),
            fua_writes: l(&self.fua_writes),
            discards: l(&self.discards),
            write_zeroes: l(&self.write_zeroes),
            errors: l(&self.errors),
            integrity_generated: l(&self.integrity_generated),
            integrity_verified: l(&self.integrity_verified),
            integrity_failed: l(&self.integrity_failed),
        }
    }
}

/// Counters of one priority class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassStats {
    pub class: SchedClass,
    pub submitted: u64,
    pub dispatched: u64,
    pub dispatched_bytes: u64,
    pub wait_ns_total: u64,
    pub wait_ns_max: u64,
}

/// A copy of a queue's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub classes: [ClassStats; 3],
    pub bios_completed: u64,
    pub bios_split: u64,
    pub merges_back: u64,
    pub merges_front: u64,
    pub merge_hint_hits: u64,
    pub size_hist: [u64; SIZE_BUCKETS],
    pub reads: u64,
    pub writes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub flushes: u64,
    pub preflushes: u64,
    pub fua_writes: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    pub errors: u64,
    pub integrity_generated: u64,
    pub integrity_verified: u64,
    pub integrity_failed: u64,
}

impl StatsSnapshot {
    pub fn bios_submitted(&self) -> u64 {
        self.classes.iter().map(|c| c.submitted).sum()
    }

    /// Data requests (reads and writes) sent to the device.
    pub fn data_requests(&self) -> u64 {
        self.reads + self.writes
    }

    pub fn class(&self, class: SchedClass) -> &ClassStats {
        class.of(&self.classes)
    }

    /// The counters as one JSON object.
    pub fn to_json(&self) -> String {
        let classes: Vec<String> = self
            .classes
            .iter()
            .map(|c| {
                format!(
                    "\"{}\":{{\"submitted\":{},\"dispatched\":{},\"dispatched_bytes\":{},\"wait_ns_total\":{},\"wait_ns_max\":{}}}",
                    c.class.name(), c.submitted, c.dispatched, c.dispatched_bytes, c.wait_ns_total, c.wait_ns_max
                )
            })
            .collect();
        let hist: Vec<String> = self
            .size_hist
            .iter()
            .enumerate()
            .map(|(i, n)| format!("\"{}\":{}", bucket_label(i), n))
            .collect();
        format!(
            "{{\"classes\":{{{}}},\"bios_completed\":{},\"bios_split\":{},\"merges_back\":{},\"merges_front\":{},\"merge_hint_hits\":{},\"request_sizes\":{{{}}},\"reads\":{},\"writes\":{},\"bytes_read\":{},\"bytes_written\":{},\"flushes\":{},\"preflushes\":{},\"fua_writes\":{},\"discards\":{},\"write_zeroes\":{},\"errors\":{},\"integrity_generated\":{},\"integrity_verified\":{},\"integrity_failed\":{}}}",
            classes.join(","),
            self.bios_completed,
            self.bios_split,
            self.merges_back,
            self.merges_front,
            self.merge_hint_hits,
            hist.join(","),
            self.reads,
            self.writes,
            self.bytes_read,
            self.bytes_written,
            self.flushes,
            self.preflushes,
            self.fua_writes,
            self.discards,
            self.write_zeroes,
            self.errors,
            self.integrity_generated,
            self.integrity_verified,
            self.integrity_failed
        )
    }
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "bios: submitted {} completed {} split {}",
            self.bios_submitted(),
            self.bios_completed,
            self.bios_split
        )?;
        writeln!(
            f,
            "merges: back {} front {} (last-merge hint hits {})",
            self.merges_back, self.merges_front, self.merge_hint_hits
        )?;
        writeln!(
            f,
            "requests: reads {} ({} B) writes {} ({} B) flushes {} preflush {} fua {} discard {} write-zeroes {} errors {}",
            self.reads, self.bytes_read, self.writes, self.bytes_written, self.flushes, self.preflushes, self.fua_writes, self.discards, self.write_zeroes, self.errors
        )?;
        write!(f, "request sizes:")?;
        for (i, n) in self.size_hist.iter().enumerate() {
            if *n > 0 {
                write!(f, " {}:{}", bucket_label(i), n)?;
            }
        }
        writeln!(f)?;
        writeln!(
            f,
            "integrity: generated {} verified {} failed {}",
            self.integrity_generated, self.integrity_verified, self.integrity_failed
        )?;
        for c in &self.classes {
            let avg = c.wait_ns_total.checked_div(c.dispatched).unwrap_or(0);
            writeln!(
                f,
                "class {:>4}: submitted {} dispatched {} ({} B) wait avg {} us max {} us",
                c.class.name(),
                c.submitted,
                c.dispatched,
                c.dispatched_bytes,
                avg / 1000,
                c.wait_ns_max / 1000
            )?;
        }
        Ok(())
    }
}
