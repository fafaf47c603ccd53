//! Bio sets under pressure: forward progress with the rescuer, the
//! deadlock without it, and the never-fails builder.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use biofs::block::backend::{BlockBackend, MemBackend};
use biofs::block::{
    Bio, BioBuilder, BioSet, BlkStatus, Gfp, IoPrio, Plug, Queue, QueueConfig, ReqFlags, ReqOp,
    Sector, PAGE_SIZE,
};
use common::{pattern_page, read_pages};

/// N threads, each plugging, allocate from a 4-bio pool and submit, over
/// and over. Each thread's plugged bios hold pool slots while it waits for
/// another: only the rescuer lets them through. Returns true if all
/// threads finished within `timeout`.
fn hammer(rescuer: bool, timeout: Duration) -> bool {
    let mem: Arc<dyn BlockBackend> = Arc::new(MemBackend::new(16 << 20));
    let q = Arc::new(
        Queue::new(
            mem,
            QueueConfig {
                nr_workers: 2,
                ..QueueConfig::default()
            },
        )
        .unwrap(),
    );
    let set = BioSet::new("tiny", 4, 1);
    set.set_rescuer_enabled(rescuer);
    let completed = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let threads = 8;
    let per_thread = 200;
    for t in 0..threads {
        let (q, set, completed, done_tx) = (
            Arc::clone(&q),
            set.clone(),
            Arc::clone(&completed),
            done_tx.clone(),
        );
        std::thread::spawn(move || {
            let _plug = Plug::new();
            for i in 0..per_thread {
                // Scattered sectors: no merging, every bio keeps its own slot.
                let sector = Sector(((t * per_thread + i) as u64 * 7919 % 4000) * 8);
                let mut bio = set
                    .alloc(ReqOp::Write, sector, 1, Gfp::Wait)
                    .expect("Wait never fails");
                bio.add_page(pattern_page(i as u64), PAGE_SIZE as u32, 0);
                let c = Arc::clone(&completed);
                bio.set_end_io(move |b| {
                    assert!(b.status().is_ok());
                    c.fetch_add(1, Ordering::SeqCst);
                });
                q.submit_bio(bio);
            }
            drop(_plug);
            done_tx.send(()).ok();
        });
    }
    for _ in 0..threads {
        if done_rx.recv_timeout(timeout).is_err() {
            return false;
        }
    }
    // Punted work may still be on its way through the rescuer: wait for
    // every completion rather than for the queue to look idle.
    let deadline = std::time::Instant::now() + timeout;
    while completed.load(Ordering::SeqCst) < threads * per_thread
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    q.drain();
    assert_eq!(completed.load(Ordering::SeqCst), threads * per_thread);
    assert!(
        set.stats().rescues > 0,
        "the pool ran dry and the rescuer was needed"
    );
    assert_eq!(set.stats().in_use, 0);
    true
}

#[test]
fn many_threads_on_a_tiny_pool_never_deadlock() {
    for _ in 0..3 {
        assert!(
            hammer(true, Duration::from_secs(60)),
            "deadlock with the rescuer on"
        );
    }
}

#[test]
fn without_the_rescuer_the_same_load_deadlocks() {
    // The negative control: proves the test above can fail. The stuck
    // threads stay blocked until the test process exits.
    assert!(
        !hammer(false, Duration::from_secs(2)),
        "expected a deadlock without the rescuer"
    );
}

#[test]
fn builder_never_fails_on_a_starved_pool_and_merges_through_the_hint() {
    let mem: Arc<dyn BlockBackend> = Arc::new(MemBackend::new(32 << 20));
    let q = Queue::new(mem, QueueConfig::default()).unwrap();
    let set = BioSet::new("builder", 8, 2);
    let (tx, rx) = crossbeam_channel::bounded(1);
    let pages = 2048u64; // 8 MiB, one page at a time
    let mut b = BioBuilder::new(
        &q,
        &set,
        ReqOp::Write,
        ReqFlags::NONE,
        IoPrio::DEFAULT,
        move |bio: Bio| {
            tx.send(bio.status()).ok();
        },
    );
    for i in 0..pages {
        // A hole every 300 pages: the builder must start a new bio there.
        let sector = Sector(i * 8 + (i / 300) * 8);
        b.add_page(sector, pattern_page(i), PAGE_SIZE as u32, 0);
    }
    assert!(
        b.bios_submitted() > (pages as usize) / 64,
        "bios were cut at 64 pages and at holes"
    );
    b.finish();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30)).unwrap(),
        BlkStatus::Ok
    );
    assert!(
        set.stats().nowait_failures > 0,
        "the pool ran dry and the builder waited instead of failing"
    );
    let s = q.stats();
    assert!(
        s.merge_hint_hits > 0,
        "consecutive bios merged through the last-merge hint"
    );
    assert_eq!(
        s.merge_hint_hits, s.merges_back,
        "every back merge found its request through the hint: {s}"
    );
    for i in [0u64, 299, 300, 1000, 2047] {
        let sector = i * 8 + (i / 300) * 8;
        let (_, data) = read_pages(&q, sector, 1);
        assert_eq!(data, pattern_page(i).as_slice(), "page {i}");
    }
}
