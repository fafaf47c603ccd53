//! Integrity through the queue: tuples generated on write, verified on
//! read; corruption and misdirected writes are protection errors naming the
//! sector, never data handed back as good; crashes never leave a torn write
//! reading as a protection error.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

mod common;

use std::sync::Arc;

use biofs::block::backend::fault::{CrashMode, FaultBackend};
use biofs::block::backend::{BlockBackend, LogWritesBackend, MemBackend};
use biofs::block::{
    Bio, BlkStatus, Checksum, IntegrityMode, IntegrityProfile, IntegrityStore, Queue, QueueConfig,
    QueueLimits, ReqFlags, ReqOp, Sector, PAGE_SIZE,
};
use common::{pattern_page, read_pages, write_pages};

const DEV: u64 = 32 << 20;

fn formatted(interval: u32, checksum: Checksum) -> Arc<MemBackend> {
    let mem = Arc::new(MemBackend::new(DEV));
    IntegrityStore::format(&*mem, IntegrityProfile::new(interval, checksum).unwrap()).unwrap();
    mem
}

fn open(dev: Arc<dyn BlockBackend>) -> Queue {
    Queue::new(
        dev,
        QueueConfig {
            integrity: IntegrityMode::on(),
            ..QueueConfig::default()
        },
    )
    .unwrap()
}

#[test]
fn round_trip_generates_and_verifies_for_both_profiles() {
    for (interval, checksum) in [
        (4096, Checksum::Crc32c),
        (512, Checksum::T10DifCrc16),
        (512, Checksum::Crc32c),
    ] {
        let q = open(formatted(interval, checksum));
        assert!(
            q.capacity() < DEV / 512,
            "the store takes its region from the data area"
        );
        let pages: Vec<_> = (0..16).map(pattern_page).collect();
        assert!(write_pages(&q, 64, &pages).status().is_ok());
        let (bio, data) = read_pages(&q, 64, 16);
        assert!(bio.status().is_ok());
        assert_eq!(
            data,
            pages
                .iter()
                .flat_map(|p| p.as_slice().to_vec())
                .collect::<Vec<_>>()
        );
        let s = q.stats();
        let per_page = 4096 / u64::from(interval);
        assert_eq!(s.integrity_generated, 16 * per_page);
        assert_eq!(s.integrity_verified, 16 * per_page);
        assert_eq!(s.integrity_failed, 0);
        // Never-written space reads as zeroes, and verifies.
        let (bio, data) = read_pages(&q, 4096, 2);
        assert!(bio.status().is_ok() && data.iter().all(|&b| b == 0));
    }
}

#[test]
fn a_flipped_bit_at_rest_is_a_protection_error_naming_the_sector() {
    let mem = formatted(4096, Checksum::Crc32c);
    let fault = Arc::new(FaultBackend::new(mem));
    let q = open(Arc::clone(&fault) as Arc<dyn BlockBackend>);
    let pages: Vec<_> = (0..8).map(pattern_page).collect();
    assert!(write_pages(&q, 0, &pages).status().is_ok());
    // Flip one bit in the data of the 6th page (sector 40).
    fault.corrupt_in_place(40 * 512 + 1234, 3).unwrap();
    let (bio, data) = read_pages(&q, 0, 8);
    assert_eq!(bio.status(), BlkStatus::Protection);
    assert_eq!(bio.error_sector(), Some(Sector(40)));
    assert_eq!(bio.status().to_errno(), libc::EILSEQ);
    drop(data); // the caller must not use it: the status says so
                // The undamaged pages around it still read fine on their own.
    let (ok, d) = read_pages(&q, 0, 5);
    assert!(ok.status().is_ok());
    assert_eq!(&d[..4096], pattern_page(0).as_slice());
    let (bad, _) = read_pages(&q, 40, 1);
    assert_eq!(bad.status(), BlkStatus::Protection);
    assert_eq!(q.stats().integrity_failed, 2);
}

#[test]
fn a_misdirected_write_is_caught() {
    let mem = formatted(4096, Checksum::Crc32c);
    let q = open(Arc::clone(&mem) as Arc<dyn BlockBackend>);
    assert!(write_pages(&q, 0, &[pattern_page(1)]).status().is_ok());
    assert!(write_pages(&q, 8, &[pattern_page(2)]).status().is_ok());
    // The device puts block 0's data where block 1 lives (tuple of block 1
    // unchanged): the same bytes, the wrong place.
    let block0 = pattern_page(1);
    mem.write_at(&[std::io::IoSlice::new(block0.as_slice())], 8 * 512, false)
        .unwrap();
    let (bio, _) = read_pages(&q, 8, 1);
    assert_eq!(
        bio.status(),
        BlkStatus::Protection,
        "position seeding catches it"
    );
}

#[test]
fn split_bios_carry_their_share_of_the_tuples() {
    let mem = formatted(512, Checksum::Crc32c);
    let mut lim = QueueLimits::for_backend(&mem.info());
    lim.max_sectors = 8;
    lim.max_segments = 3;
    let config = QueueConfig {
        limits: Some(lim),
        integrity: IntegrityMode::on(),
        ..QueueConfig::default()
    };
    let q = Queue::new(Arc::clone(&mem) as Arc<dyn BlockBackend>, config).unwrap();
    // Segments of 1.5 KiB force splits inside pages.
    let mut bio = Bio::new(ReqOp::Write, Sector(16), 8);
    let pages: Vec<_> = (0..8).map(pattern_page).collect();
    for p in &pages {
        bio.add_page(p.clone(), 1536, 512);
    }
    assert!(q.submit_bio_wait(bio).status().is_ok());
    assert!(q.stats().bios_split > 0);
    let (r, data) = read_pages(&q, 16, 3);
    assert!(r.status().is_ok(), "every piece's tuples matched its data");
    assert_eq!(&data[..1536], &pages[0].as_slice()[512..2048]);
    assert_eq!(&data[1536..3072], &pages[1].as_slice()[512..2048]);
}

#[test]
fn discard_and_write_zeroes_leave_zeroes_that_verify() {
    let q = open(formatted(4096, Checksum::Crc32c));
    assert!(
        write_pages(&q, 0, &(0..32).map(pattern_page).collect::<Vec<_>>())
            .status()
            .is_ok()
    );
    assert!(q
        .submit_bio_wait(Bio::new_range(ReqOp::Discard, Sector(0), 64))
        .status()
        .is_ok());
    assert!(q
        .submit_bio_wait(Bio::new_range(ReqOp::WriteZeroes, Sector(64), 64))
        .status()
        .is_ok());
    let (bio, data) = read_pages(&q, 0, 16);
    assert!(bio.status().is_ok());
    assert!(data.iter().all(|&b| b == 0));
    let (bio, data) = read_pages(&q, 128, 1);
    assert!(bio.status().is_ok());
    assert_eq!(data, pattern_page(16).as_slice());
}

/// Write, crash the device (losing what was not flushed, in each way the
/// fault backend can), reopen: recovery runs, and nothing reads back as a
/// protection error; what was flushed or FUA-written is there.
#[test]
fn crashes_never_leave_protection_errors_and_keep_what_was_flushed() {
    for mode in [
        CrashMode::DropAll,
        CrashMode::KeepPrefix(2),
        CrashMode::RandomSubset { seed: 7 },
        CrashMode::TornLast,
    ] {
        let mem = formatted(512, Checksum::Crc32c);
        let fault = Arc::new(FaultBackend::with_seed(
            Arc::clone(&mem) as Arc<dyn BlockBackend>,
            11,
        ));
        fault.set_volatile_cache(true).unwrap();
        let q = open(Arc::clone(&fault) as Arc<dyn BlockBackend>);
        // Durable: flushed data and a FUA write.
        assert!(
            write_pages(&q, 0, &(0..4).map(pattern_page).collect::<Vec<_>>())
                .status()
                .is_ok()
        );
        assert!(q.submit_bio_wait(Bio::new_flush()).status().is_ok());
        let mut fua = Bio::new(ReqOp::Write, Sector(64), 1);
        fua.add_page(pattern_page(99), PAGE_SIZE as u32, 0);
        fua.set_flags(ReqFlags::FUA);
        assert!(q.submit_bio_wait(fua).status().is_ok());
        // Not durable: overwrites of the flushed blocks and new blocks.
        assert!(
            write_pages(&q, 0, &(10..12).map(pattern_page).collect::<Vec<_>>())
                .status()
                .is_ok()
        );
        assert!(
            write_pages(&q, 128, &(20..28).map(pattern_page).collect::<Vec<_>>())
                .status()
                .is_ok()
        );
        q.abandon();
        fault.crash(mode).unwrap();
        fault.set_volatile_cache(false).unwrap();

        let q = open(Arc::clone(&fault) as Arc<dyn BlockBackend>);
        assert!(
            q.integrity().unwrap().recovered_regions() > 0,
            "{mode:?}: recovery ran"
        );
        let (bio, data) = read_pages(&q, 0, 48);
        assert!(
            bio.status().is_ok(),
            "{mode:?}: a torn or lost write read back as {:?} at {:?}",
            bio.status(),
            bio.error_sector()
        );
        // Blocks 2-3 were flushed and not overwritten since.
        assert_eq!(
            &data[2 * 4096..4 * 4096],
            &[pattern_page(2).as_slice(), pattern_page(3).as_slice()].concat()[..],
            "{mode:?}"
        );
        // Blocks 0-1 hold the flushed or the newer data, whole per sector.
        for blk in 0..2usize {
            let (old_page, new_page) = (pattern_page(blk as u64), pattern_page(10 + blk as u64));
            for s in 0..8 {
                let got = &data[blk * 4096 + s * 512..][..512];
                let old = &old_page.as_slice()[s * 512..][..512];
                let new = &new_page.as_slice()[s * 512..][..512];
                assert!(
                    got == old || got == new,
                    "{mode:?}: block {blk} sector {s} is neither version"
                );
            }
        }
        let (f, d) = read_pages(&q, 64, 1);
        assert!(f.status().is_ok());
        assert_eq!(
            d,
            pattern_page(99).as_slice(),
            "{mode:?}: the FUA write survived"
        );
        q.shutdown().unwrap();
    }
}

/// Replay a recorded workload up to every prefix of its log (every flush
/// point and every point between) and check each crash state: it opens
/// (recovering), reads without protection errors, and holds every write
/// whose flush had completed.
#[test]
fn every_prefix_of_a_logged_workload_recovers_clean() {
    let mem = Arc::new(MemBackend::new(8 << 20));
    IntegrityStore::format(
        &*mem,
        IntegrityProfile::new(4096, Checksum::Crc32c).unwrap(),
    )
    .unwrap();
    let base = mem.snapshot();
    let log = Arc::new(LogWritesBackend::new(
        Arc::clone(&mem) as Arc<dyn BlockBackend>
    ));
    let q = open(Arc::clone(&log) as Arc<dyn BlockBackend>);
    let mut written: Vec<(u64, u64)> = Vec::new();
    let mut history: Vec<(u64, u64)> = Vec::new(); // every write, in order
                                                   // (log index of the mark after the flush, writes durable by then)
    let mut durable_marks: Vec<(usize, Vec<(u64, u64)>)> = Vec::new();
    for round in 0..5u64 {
        for i in 0..3u64 {
            // Overwrite earlier blocks too, so torn overwrites are exercised.
            let sector = ((round * 2 + i) % 8) * 8;
            assert!(write_pages(&q, sector, &[pattern_page(round * 100 + i)])
                .status()
                .is_ok());
            written.retain(|&(s, _)| s != sector);
            written.push((sector, round * 100 + i));
            history.push((sector, round * 100 + i));
        }
        assert!(q.submit_bio_wait(Bio::new_flush()).status().is_ok());
        durable_marks.push((log.mark(format!("flushed round {round}")), written.clone()));
    }
    q.abandon();
    let total = log.len();
    let mut states = 0;
    for upto in 0..=total {
        let target = Arc::new(MemBackend::from_bytes(base.clone(), 512));
        log.replay(upto, &*target).unwrap();
        let q = open(Arc::clone(&target) as Arc<dyn BlockBackend>);
        let (bio, _) = read_pages(&q, 0, 64);
        assert!(
            bio.status().is_ok(),
            "prefix {upto}: {:?} at {:?}",
            bio.status(),
            bio.error_sector()
        );
        let durable = durable_marks
            .iter()
            .rev()
            .find(|(m, _)| *m <= upto)
            .map(|(_, w)| w.as_slice())
            .unwrap_or(&[]);
        for &(sector, pat) in durable {
            let (_, data) = read_pages(&q, sector, 1);
            // The flushed version, or a later write of the same block that
            // also reached the device; anything else is a lost flushed write.
            let from = history.iter().position(|&w| w == (sector, pat)).unwrap();
            let ok = history[from..]
                .iter()
                .filter(|w| w.0 == sector)
                .any(|w| data == pattern_page(w.1).as_slice());
            assert!(
                ok,
                "prefix {upto}: sector {sector} lost its flushed contents"
            );
        }
        q.abandon();
        states += 1;
    }
    assert!(states > 30, "checked {states} crash states");
    assert!(total > durable_marks.len() * 3);
}

/// A memory device whose first write at `slow_offset` completes late:
/// the data is written at once, the call returns after a delay.
struct SlowAfterWrite {
    mem: MemBackend,
    slow_offset: u64,
    fired: std::sync::atomic::AtomicBool,
}

impl BlockBackend for SlowAfterWrite {
    fn info(&self) -> biofs::block::backend::BackendInfo {
        self.mem.info()
    }
    fn read_at(&self, bufs: &mut [std::io::IoSliceMut<'_>], offset: u64) -> std::io::Result<()> {
        self.mem.read_at(bufs, offset)
    }
    fn write_at(
        &self,
        bufs: &[std::io::IoSlice<'_>],
        offset: u64,
        fua: bool,
    ) -> std::io::Result<()> {
        self.mem.write_at(bufs, offset, fua)?;
        if offset == self.slow_offset && !self.fired.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        self.mem.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.mem.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.mem.write_zeroes(offset, len)
    }
}

#[test]
fn regression_overlapping_writes_in_flight_never_mismatch_data_and_tuples() {
    // Write A's data lands first but A completes last; write B (same
    // block) completes in between. Without range locks the device keeps
    // B's data and A's tuples: a false protection error.
    let mem = MemBackend::new(DEV);
    IntegrityStore::format(&mem, IntegrityProfile::new(4096, Checksum::Crc32c).unwrap()).unwrap();
    let dev = Arc::new(SlowAfterWrite {
        mem,
        slow_offset: 0,
        fired: Default::default(),
    });
    let q = Arc::new(
        Queue::new(
            dev as Arc<dyn BlockBackend>,
            QueueConfig {
                integrity: IntegrityMode::on(),
                ..QueueConfig::default()
            },
        )
        .unwrap(),
    );
    let (tx, rx) = crossbeam_channel::unbounded();
    for (i, delay) in [(1u64, 0u64), (2, 50)] {
        let (q, tx) = (Arc::clone(&q), tx.clone());
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(delay));
            tx.send(write_pages(&q, 0, &[pattern_page(i)]).status())
                .unwrap();
        });
    }
    assert!(rx.recv().unwrap().is_ok() && rx.recv().unwrap().is_ok());
    let (bio, data) = read_pages(&q, 0, 1);
    assert!(bio.status().is_ok(), "{:?}", bio.status());
    assert!(data == pattern_page(1).as_slice() || data == pattern_page(2).as_slice());
}

#[test]
fn regression_range_splits_keep_to_the_integrity_interval() {
    // 4 KiB intervals, discards split at 100 sectors: pieces must be whole
    // intervals or a tuple is left behind and reads as a protection error.
    let mem = formatted(4096, Checksum::Crc32c);
    let mut lim = QueueLimits::for_backend(&mem.info());
    lim.max_discard_sectors = 100;
    lim.max_write_zeroes_sectors = 100;
    let config = QueueConfig {
        limits: Some(lim),
        integrity: IntegrityMode::on(),
        ..QueueConfig::default()
    };
    let q = Queue::new(Arc::clone(&mem) as Arc<dyn BlockBackend>, config).unwrap();
    assert!(
        write_pages(&q, 0, &(0..50).map(pattern_page).collect::<Vec<_>>())
            .status()
            .is_ok()
    );
    assert!(q
        .submit_bio_wait(Bio::new_range(ReqOp::Discard, Sector(0), 200))
        .status()
        .is_ok());
    assert!(q
        .submit_bio_wait(Bio::new_range(ReqOp::WriteZeroes, Sector(200), 200))
        .status()
        .is_ok());
    let (bio, data) = read_pages(&q, 0, 50);
    assert!(
        bio.status().is_ok(),
        "{:?} at {:?}",
        bio.status(),
        bio.error_sector()
    );
    assert!(data.iter().all(|&b| b == 0));
}

#[test]
fn regression_a_failed_shutdown_can_be_retried() {
    let mem = formatted(4096, Checksum::Crc32c);
    let fault = Arc::new(FaultBackend::new(Arc::clone(&mem) as Arc<dyn BlockBackend>));
    let q = open(Arc::clone(&fault) as Arc<dyn BlockBackend>);
    assert!(write_pages(&q, 0, &[pattern_page(1)]).status().is_ok());
    fault.fail_nth(1, libc::EIO);
    assert!(q.shutdown().is_err(), "the store's shutdown write failed");
    q.shutdown().expect("the second try succeeds");
    drop(q);
    let q = open(fault as Arc<dyn BlockBackend>);
    assert_eq!(
        q.integrity().unwrap().recovered_regions(),
        0,
        "it was closed cleanly"
    );
    let (bio, data) = read_pages(&q, 0, 1);
    assert!(bio.status().is_ok());
    assert_eq!(data, pattern_page(1).as_slice());
}

#[test]
fn a_read_whose_tuples_cannot_be_read_fails_instead_of_returning_unverified_data() {
    use biofs::block::backend::fault::{FaultOps, RangeFault};
    let mem = formatted(4096, Checksum::Crc32c);
    let fault = Arc::new(FaultBackend::new(Arc::clone(&mem) as Arc<dyn BlockBackend>));
    let q = open(Arc::clone(&fault) as Arc<dyn BlockBackend>);
    assert!(write_pages(&q, 0, &[pattern_page(1)]).status().is_ok());
    q.shutdown().unwrap();
    drop(q);
    // A fresh queue has no tuples cached: it must read the tuple region.
    let q = open(Arc::clone(&fault) as Arc<dyn BlockBackend>);
    let l = *q.integrity().unwrap().layout();
    let tuple_sector = Sector(l.tuple_start / 512);
    fault.fail_range(RangeFault::new(tuple_sector, 8).ops(FaultOps::Reads));
    let (bio, _) = read_pages(&q, 0, 1);
    assert_eq!(bio.status(), BlkStatus::IoErr, "no tuples, no data");
    fault.clear_faults();
    let (bio, data) = read_pages(&q, 0, 1);
    assert!(bio.status().is_ok());
    assert_eq!(data, pattern_page(1).as_slice());
}

#[test]
fn a_write_whose_dirty_bit_cannot_be_made_durable_fails_and_writes_no_data() {
    use biofs::block::backend::fault::{FaultOps, RangeFault};
    let mem = formatted(4096, Checksum::Crc32c);
    let fault = Arc::new(FaultBackend::new(Arc::clone(&mem) as Arc<dyn BlockBackend>));
    let q = open(Arc::clone(&fault) as Arc<dyn BlockBackend>);
    let l = *q.integrity().unwrap().layout();
    let bitmap = Sector(l.bitmap_start / 512);
    fault.fail_range(
        RangeFault::new(bitmap, l.bitmap_blocks * 8)
            .ops(FaultOps::Writes)
            .errno(libc::ENOSPC),
    );
    let far = 64 * 512; // a region nothing has touched yet
    let w = write_pages(&q, far, &[pattern_page(7)]);
    assert_eq!(w.status(), BlkStatus::NoSpc);
    fault.clear_faults();
    let before = mem.snapshot();
    assert!(
        before[(far * 512) as usize..][..4096]
            .iter()
            .all(|&b| b == 0),
        "the data was not written"
    );
    let (bio, data) = read_pages(&q, far, 1);
    assert!(bio.status().is_ok(), "{:?}", bio.status());
    assert!(data.iter().all(|&b| b == 0));
    // And the queue goes on working.
    assert!(write_pages(&q, far, &[pattern_page(7)]).status().is_ok());
}
