//! The queue end to end over a recording backend: submission, splitting to
//! limits, plugging and merging, flush/FUA semantics, errors.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use biofs::block::backend::BlockBackend;
use biofs::block::{
    bio_chain, Bio, BioSet, BlkStatus, Gfp, Page, Plug, QueueLimits, ReqFlags, ReqOp, Sector,
    PAGE_SIZE,
};
use common::{checked_queue as queue, pattern_page, read_pages, write_pages, CheckedBackend, Op};

#[test]
fn write_then_read_round_trips() {
    let dev = CheckedBackend::new(8 << 20);
    let q = queue(&dev, None);
    let pages: Vec<Page> = (0..5).map(pattern_page).collect();
    let w = write_pages(&q, 64, &pages);
    assert_eq!(w.status(), BlkStatus::Ok);
    let (r, data) = read_pages(&q, 64, 5);
    assert_eq!(r.status(), BlkStatus::Ok);
    let want: Vec<u8> = pages.iter().flat_map(|p| p.as_slice().to_vec()).collect();
    assert_eq!(data, want);
}

#[test]
fn sequential_4k_bios_under_a_plug_merge_into_max_size_requests() {
    let dev = CheckedBackend::new(64 << 20);
    let lim = QueueLimits::for_backend(&dev.info());
    let q = queue(&dev, Some(lim.clone()));
    let done = Arc::new(AtomicUsize::new(0));
    let n = 4096; // 16 MiB of 4 KiB bios
    {
        let _plug = Plug::new();
        for i in 0..n {
            let mut bio = Bio::new(ReqOp::Write, Sector(i * 8), 1);
            bio.add_page(pattern_page(i), PAGE_SIZE as u32, 0);
            let d = Arc::clone(&done);
            bio.set_end_io(move |b| {
                assert!(b.status().is_ok());
                d.fetch_add(1, Ordering::SeqCst);
            });
            q.submit_bio(bio);
        }
    }
    q.drain();
    assert_eq!(done.load(Ordering::SeqCst), n as usize);
    let writes: Vec<u64> = dev
        .ops()
        .iter()
        .filter_map(|o| match o {
            Op::Write { len, .. } => Some(*len),
            _ => None,
        })
        .collect();
    let expect = (n * 4096).div_ceil(lim.max_bytes());
    assert_eq!(
        writes.len() as u64,
        expect,
        "every request is full-size: {writes:?}"
    );
    assert!(writes.iter().all(|&l| l == lim.max_bytes()));
    let s = q.stats();
    assert_eq!(s.merges_back, n - expect);
    assert_eq!(s.writes, expect);
    assert!(dev.violations().is_empty(), "{:?}", dev.violations());
}

#[test]
fn descending_submissions_front_merge() {
    let dev = CheckedBackend::new(8 << 20);
    let q = queue(&dev, None);
    {
        let _plug = Plug::new();
        for i in (0..8u64).rev() {
            let mut bio = Bio::new(ReqOp::Write, Sector(i * 8), 1);
            bio.add_page(pattern_page(i), PAGE_SIZE as u32, 0);
            q.submit_bio(bio);
        }
    }
    q.drain();
    assert_eq!(q.stats().merges_front, 7);
    assert_eq!(
        dev.ops(),
        vec![Op::Write {
            offset: 0,
            len: 32768,
            segs: 8,
            fua: false
        }]
    );
    let (_, data) = read_pages(&q, 0, 8);
    for i in 0..8u64 {
        assert_eq!(
            &data[i as usize * 4096..][..4096],
            pattern_page(i).as_slice()
        );
    }
}

#[test]
fn incompatible_bios_do_not_merge() {
    let dev = CheckedBackend::new(8 << 20);
    let q = queue(&dev, None);
    let idle = biofs::block::IoPrio::new(biofs::block::IoPrioClass::Idle, 0).unwrap();
    {
        let _plug = Plug::new();
        let mk = |i: u64| {
            let mut b = Bio::new(ReqOp::Write, Sector(i * 8), 1);
            b.add_page(pattern_page(i), PAGE_SIZE as u32, 0);
            b
        };
        q.submit_bio(mk(0));
        let mut fua = mk(1);
        fua.add_flags(ReqFlags::FUA);
        q.submit_bio(fua); // FUA never merges
        let mut other_class = mk(2);
        other_class.set_ioprio(idle);
        q.submit_bio(other_class); // different priority class
        let mut read = Bio::new(ReqOp::Read, Sector(24), 1);
        read.add_page(Page::new(), PAGE_SIZE as u32, 0);
        q.submit_bio(read); // different op
    }
    q.drain();
    let s = q.stats();
    assert_eq!(s.merges_back + s.merges_front, 0);
    assert_eq!(s.writes + s.reads, 4);
    assert_eq!(s.fua_writes, 1);
}

#[test]
fn preflush_flushes_before_the_write_and_fua_reaches_the_device() {
    let dev = CheckedBackend::new(8 << 20);
    let q = queue(&dev, None);
    let mut bio = Bio::new(ReqOp::Write, Sector(0), 1);
    bio.add_page(pattern_page(1), PAGE_SIZE as u32, 0);
    bio.set_flags(ReqFlags::PREFLUSH | ReqFlags::FUA);
    assert!(q.submit_bio_wait(bio).status().is_ok());
    assert_eq!(
        dev.ops(),
        vec![
            Op::Flush,
            Op::Write {
                offset: 0,
                len: 4096,
                segs: 1,
                fua: true
            }
        ]
    );
    let flush = q.submit_bio_wait(Bio::new_flush());
    assert!(flush.status().is_ok());
    assert_eq!(dev.ops().last(), Some(&Op::Flush));
    assert_eq!(q.stats().flushes, 1);
    assert_eq!(q.stats().preflushes, 1);
}

#[test]
fn discard_and_write_zeroes_split_to_their_limits() {
    let dev = CheckedBackend::new(8 << 20);
    let mut lim = QueueLimits::for_backend(&dev.info());
    lim.max_discard_sectors = 64;
    lim.max_write_zeroes_sectors = 128;
    let q = queue(&dev, Some(lim));
    write_pages(&q, 0, &(0..64).map(pattern_page).collect::<Vec<_>>());
    let d = q.submit_bio_wait(Bio::new_range(ReqOp::Discard, Sector(0), 256));
    assert!(d.status().is_ok());
    let z = q.submit_bio_wait(Bio::new_range(ReqOp::WriteZeroes, Sector(256), 256));
    assert!(z.status().is_ok());
    let ops = dev.ops();
    let discards = ops
        .iter()
        .filter(|o| matches!(o, Op::Discard { len: 32768, .. }))
        .count();
    let zeroes = ops
        .iter()
        .filter(|o| matches!(o, Op::WriteZeroes { len: 65536, .. }))
        .count();
    assert_eq!((discards, zeroes), (4, 2), "{ops:?}");
    let (_, data) = read_pages(&q, 0, 64);
    assert!(data.iter().all(|&b| b == 0));
}

#[test]
fn device_errors_reach_the_completion_with_the_sector() {
    let dev = CheckedBackend::new(8 << 20);
    let q = queue(&dev, None);
    *dev.fail_at.lock().unwrap() = Some((100, libc::EIO));
    let (bio, _) = read_pages(&q, 96, 2);
    assert_eq!(bio.status(), BlkStatus::IoErr);
    assert_eq!(bio.status().to_errno(), libc::EIO);
    assert!(bio.error_sector().is_some());
    *dev.fail_at.lock().unwrap() = Some((0, libc::ENOSPC));
    let w = write_pages(&q, 0, &[pattern_page(0)]);
    assert_eq!(w.status(), BlkStatus::NoSpc);
    assert_eq!(q.stats().errors, 2);
    // The queue keeps working after errors.
    *dev.fail_at.lock().unwrap() = None;
    assert!(write_pages(&q, 0, &[pattern_page(0)]).status().is_ok());
}

#[test]
fn malformed_bios_fail_cleanly() {
    let dev = CheckedBackend::new(1 << 20);
    let q = queue(&dev, None);
    // Beyond the end of the device.
    let w = write_pages(&q, (1 << 20) / 512 - 4, &[pattern_page(0)]);
    assert_eq!(w.status(), BlkStatus::IoErr);
    // A segment not sector-aligned.
    let mut bio = Bio::new(ReqOp::Write, Sector(0), 1);
    bio.add_page(Page::new(), 100, 0);
    assert_eq!(q.submit_bio_wait(bio).status(), BlkStatus::Invalid);
    // Empty data bio.
    assert_eq!(
        q.submit_bio_wait(Bio::new(ReqOp::Read, Sector(0), 1))
            .status(),
        BlkStatus::Invalid
    );
    // A read into a page someone else also holds.
    let shared = Page::new();
    let _other = shared.clone();
    let mut bio = Bio::new(ReqOp::Read, Sector(0), 1);
    bio.add_page(shared, 4096, 0);
    assert_eq!(q.submit_bio_wait(bio).status(), BlkStatus::Invalid);
    assert!(dev.ops().is_empty(), "nothing reached the device");
}

#[test]
fn chained_bios_through_the_queue_complete_the_parent_last() {
    let dev = CheckedBackend::new(8 << 20);
    let q = queue(&dev, None);
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut parent = Bio::new(ReqOp::Write, Sector(0), 1);
    parent.add_page(pattern_page(0), PAGE_SIZE as u32, 0);
    let o = Arc::clone(&order);
    parent.set_end_io(move |b| o.lock().unwrap().push(("parent", b.status())));
    let mut kids = Vec::new();
    for i in 1..4u64 {
        let mut c = Bio::new(ReqOp::Write, Sector(i * 8), 1);
        c.add_page(pattern_page(i), PAGE_SIZE as u32, 0);
        bio_chain(&mut c, &mut parent).unwrap();
        kids.push(c);
    }
    *dev.fail_at.lock().unwrap() = Some((16, libc::EIO));
    q.submit_bio(parent);
    for c in kids {
        q.submit_bio(c);
    }
    q.drain();
    assert_eq!(*order.lock().unwrap(), vec![("parent", BlkStatus::IoErr)]);
}

#[test]
fn bio_sets_reserve_is_only_for_waiting_allocations() {
    let set = BioSet::new("t", 4, 2);
    let a = set.alloc(ReqOp::Write, Sector(0), 1, Gfp::NoWait).unwrap();
    let b = set.alloc(ReqOp::Write, Sector(0), 1, Gfp::NoWait).unwrap();
    assert!(
        set.alloc(ReqOp::Write, Sector(0), 1, Gfp::NoWait).is_none(),
        "the rest is reserve"
    );
    let c = set.alloc(ReqOp::Write, Sector(0), 1, Gfp::Wait).unwrap();
    let d = set.alloc(ReqOp::Write, Sector(0), 1, Gfp::Wait).unwrap();
    assert_eq!(set.stats().in_use, 4);
    // A fifth waits until one is freed.
    let set2 = set.clone();
    let t = std::thread::spawn(move || {
        set2.alloc(ReqOp::Write, Sector(0), 1, Gfp::Wait)
            .map(|_| ())
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!t.is_finished());
    drop(a);
    assert!(t.join().unwrap().is_some());
    drop((b, c, d));
    assert_eq!(set.stats().in_use, 0);
    assert_eq!(set.stats().nowait_failures, 1);
}

#[test]
fn regression_a_plug_does_not_keep_a_dropped_queue_alive() {
    let dev = CheckedBackend::new(1 << 20);
    let q = queue(&dev, None);
    {
        let _plug = Plug::new();
        let mut b = Bio::new(ReqOp::Write, Sector(0), 1);
        b.add_page(pattern_page(0), PAGE_SIZE as u32, 0);
        q.submit_bio(b);
        {
            let _nested = Plug::new(); // nested: does nothing
        }
        assert_eq!(q.stats().writes, 0, "still plugged");
    }
    q.drain();
    assert_eq!(q.stats().writes, 1);
    // Keep an outer plug open on this thread while the queue goes away.
    let _plug = Plug::new();
    drop(q);
    assert_eq!(
        Arc::strong_count(&dev),
        1,
        "the backend was released with the queue"
    );
}

#[test]
fn regression_a_split_bio_comes_back_as_submitted() {
    let dev = CheckedBackend::new(8 << 20);
    let mut lim = QueueLimits::for_backend(&dev.info());
    lim.max_sectors = 64;
    let q = queue(&dev, Some(lim));
    let pages: Vec<Page> = (0..64).map(pattern_page).collect();
    let bio = write_pages(&q, 512, &pages);
    assert!(bio.status().is_ok());
    assert!(q.stats().bios_split > 0);
    assert_eq!(
        (bio.sector(), bio.size(), bio.vcnt()),
        (Sector(512), 64 * 4096, 64)
    );
    // It can be submitted again as it is.
    let again = q.submit_bio_wait(bio);
    assert!(again.status().is_ok(), "{:?}", again.status());
}

#[test]
fn sync_bios_merge_and_are_not_held_in_the_plug() {
    let dev = CheckedBackend::new(8 << 20);
    let q = queue(&dev, None);
    let _plug = Plug::new();
    for i in 0..3u64 {
        let mut b = Bio::new(ReqOp::Write, Sector(i * 8), 1);
        b.add_page(pattern_page(i), PAGE_SIZE as u32, 0);
        if i == 2 {
            b.add_flags(ReqFlags::SYNC);
        }
        q.submit_bio(b);
    }
    q.drain();
    assert_eq!(
        dev.ops(),
        vec![Op::Write {
            offset: 0,
            len: 3 * 4096,
            segs: 3,
            fua: false
        }],
        "merged and sent at once"
    );
}

#[test]
fn the_builder_sends_preflush_once_and_fua_on_every_piece() {
    let dev = CheckedBackend::new(8 << 20);
    let q = queue(&dev, None);
    let set = BioSet::new("b", 64, 2);
    let (tx, rx) = crossbeam_channel::bounded(1);
    let mut b = biofs::block::BioBuilder::new(
        &q,
        &set,
        ReqOp::Write,
        ReqFlags::PREFLUSH | ReqFlags::FUA,
        biofs::block::IoPrio::DEFAULT,
        move |bio: Bio| {
            tx.send(bio.status()).unwrap();
        },
    );
    for i in 0..200u64 {
        b.add_page(Sector(i * 8), pattern_page(i), PAGE_SIZE as u32, 0);
    }
    b.finish();
    assert_eq!(rx.recv().unwrap(), BlkStatus::Ok);
    let ops = dev.ops();
    assert_eq!(
        ops.iter().filter(|o| **o == Op::Flush).count(),
        1,
        "{ops:?}"
    );
    assert_eq!(ops.first(), Some(&Op::Flush));
    assert!(ops
        .iter()
        .all(|o| matches!(o, Op::Flush | Op::Write { fua: true, .. })));
}

#[test]
fn nomerge_bios_are_never_merged() {
    let dev = CheckedBackend::new(8 << 20);
    let q = queue(&dev, None);
    {
        let _plug = Plug::new();
        for i in 0..4u64 {
            let mut b = Bio::new(ReqOp::Write, Sector(i * 8), 1);
            b.add_page(pattern_page(i), PAGE_SIZE as u32, 0);
            b.add_flags(ReqFlags::NOMERGE);
            q.submit_bio(b);
        }
    }
    q.drain();
    assert_eq!(q.stats().merges_back + q.stats().merges_front, 0);
    assert_eq!(q.stats().writes, 4, "four adjacent bios, four requests");
}
