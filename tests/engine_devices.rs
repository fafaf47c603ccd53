//! The whole engine (queue, plug, merge, integrity, workers) on real
//! devices: an O_DIRECT image file and a loop block device.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

mod common;

use std::sync::Arc;

use biofs::block::backend::{BlockBackend, DirectMode, FileBackend, FileOptions};
use biofs::block::{
    Bio, BlkStatus, Checksum, IntegrityMode, IntegrityProfile, IntegrityStore, IoMode, Plug, Queue,
    QueueConfig, ReqOp, Sector, PAGE_SIZE,
};
use common::{pattern_page, read_pages};

/// Format, write through a plug, flush, read back verified, discard,
/// reopen and read again; then flip a data bit behind the engine's back and
/// see a protection error.
/// `path` opened with `O_DIRECT` (required) and formatted for crc32c-4k
/// integrity.
fn formatted_direct(path: &std::path::Path) -> Arc<dyn BlockBackend> {
    let opts = FileOptions {
        direct: DirectMode::Require,
        read_only: false,
    };
    let dev: Arc<dyn BlockBackend> = Arc::new(FileBackend::open(path, opts).unwrap());
    assert!(dev.info().direct_io);
    IntegrityStore::format(
        &*dev,
        IntegrityProfile::new(4096, Checksum::Crc32c).unwrap(),
    )
    .unwrap();
    dev
}

fn exercise(path: &std::path::Path, backend_kind: &str, io_mode: IoMode) {
    let dev = formatted_direct(path);
    assert_eq!(dev.info().kind, backend_kind);
    let config = QueueConfig {
        integrity: IntegrityMode::on(),
        io_mode,
        queue_depth: 16,
        ..QueueConfig::default()
    };
    let q = Queue::new(Arc::clone(&dev), config.clone()).unwrap();
    {
        let _plug = Plug::new();
        for i in 0..512u64 {
            let mut bio = Bio::new(ReqOp::Write, Sector(i * 8), 1);
            bio.add_page(pattern_page(i), PAGE_SIZE as u32, 0);
            q.submit_bio(bio);
        }
    }
    assert!(q.submit_bio_wait(Bio::new_flush()).status().is_ok());
    let s = q.stats();
    assert_eq!(s.writes, 2, "512 4 KiB bios became two 1 MiB requests: {s}");
    // A bio holds at most 256 pages: read in two.
    let (first, mut data) = read_pages(&q, 0, 256);
    let (second, rest) = read_pages(&q, 256 * 8, 256);
    assert!(first.status().is_ok() && second.status().is_ok());
    data.extend_from_slice(&rest);
    for i in [0u64, 1, 255, 256, 511] {
        assert_eq!(
            &data[i as usize * 4096..][..4096],
            pattern_page(i).as_slice()
        );
    }
    assert!(q
        .submit_bio_wait(Bio::new_range(ReqOp::WriteZeroes, Sector(0), 64))
        .status()
        .is_ok());
    q.shutdown().unwrap();
    drop(q);

    let q = Queue::new(Arc::clone(&dev), config).unwrap();
    assert_eq!(
        q.integrity().unwrap().recovered_regions(),
        0,
        "clean shutdown"
    );
    let (bio, data) = read_pages(&q, 0, 16);
    assert!(bio.status().is_ok());
    assert!(data[..8 * 4096].iter().all(|&b| b == 0));
    assert_eq!(&data[8 * 4096..9 * 4096], pattern_page(8).as_slice());
    // Bit rot behind the engine's back.
    let mut page = [0u8; 4096];
    page.copy_from_slice(pattern_page(300).as_slice());
    page[17] ^= 0x40;
    let bad = biofs::block::Page::from_slice(&page);
    dev.write_at(&[std::io::IoSlice::new(bad.as_slice())], 300 * 4096, false)
        .unwrap();
    let (bio, _) = read_pages(&q, 300 * 8, 1);
    assert_eq!(bio.status(), BlkStatus::Protection);
    assert_eq!(bio.error_sector(), Some(Sector(300 * 8)));
}

fn image(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let image = dir.path().join(name);
    FileBackend::create(&image, 64 << 20).unwrap();
    (dir, image)
}

#[test]
fn the_engine_on_an_o_direct_image_file() {
    let (_dir, image) = image("disk.img");
    exercise(&image, "file", IoMode::Blocking);
}

#[test]
fn the_engine_on_an_o_direct_image_file_through_io_uring() {
    let (_dir, image) = image("disk.img");
    exercise(&image, "file", IoMode::Uring { depth: 8 });
}

#[test]
fn the_engine_on_a_loop_block_device() {
    let Some((dev, _guard)) = common::loop_device(64 << 20) else {
        return;
    };
    exercise(&dev, "blockdev", IoMode::Blocking);
}

#[test]
fn the_engine_on_a_loop_block_device_through_io_uring() {
    let Some((dev, _guard)) = common::loop_device(64 << 20) else {
        return;
    };
    exercise(&dev, "blockdev", IoMode::Uring { depth: 8 });
}

#[test]
fn io_uring_random_reads_and_overwrites_match_a_model() {
    // Many transfers in flight at once against a model of the device.
    let (_dir, image) = image("model.img");
    let dev = formatted_direct(&image);
    let config = QueueConfig {
        integrity: IntegrityMode::on(),
        io_mode: IoMode::Uring { depth: 16 },
        nr_workers: 2,
        queue_depth: 32,
        ..QueueConfig::default()
    };
    let q = Queue::new(dev, config).unwrap();
    let blocks = 256u64;
    let mut model: Vec<Option<u64>> = vec![None; blocks as usize];
    let mut x = 12345u64;
    for round in 0..20u64 {
        // A burst of writes to random blocks, all in flight together, each
        // block written at most once per burst.
        let mut chosen = std::collections::BTreeMap::new();
        for i in 0..64u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            chosen.insert((x >> 33) % blocks, round * 1000 + i);
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        for (&block, &pat) in &chosen {
            let mut bio = Bio::new(ReqOp::Write, Sector(block * 8), 1);
            bio.add_page(pattern_page(pat), PAGE_SIZE as u32, 0);
            let tx = tx.clone();
            bio.set_end_io(move |b| tx.send(b.status()).unwrap());
            q.submit_bio(bio);
            model[block as usize] = Some(pat);
        }
        for _ in 0..chosen.len() {
            assert!(rx.recv().unwrap().is_ok());
        }
        // Read everything back, many reads in flight.
        let (tx, rx) = crossbeam_channel::unbounded();
        for block in 0..blocks {
            let mut bio = Bio::new(ReqOp::Read, Sector(block * 8), 1);
            bio.add_page(biofs::block::Page::new(), PAGE_SIZE as u32, 0);
            let tx = tx.clone();
            bio.set_end_io(move |b| tx.send((block, b.status(), b.copy_data())).unwrap());
            q.submit_bio(bio);
        }
        for _ in 0..blocks {
            let (block, status, data) = rx.recv().unwrap();
            assert!(status.is_ok(), "round {round} block {block}: {status:?}");
            match model[block as usize] {
                Some(pat) => assert_eq!(
                    data,
                    pattern_page(pat).as_slice(),
                    "round {round} block {block}"
                ),
                None => assert!(data.iter().all(|&b| b == 0)),
            }
        }
    }
    assert_eq!(q.stats().integrity_failed, 0);
}

/// Regression: an io_uring worker with a write in flight took a read of the
/// same range and waited for the range lock, i.e. for itself: the queue
/// hung (seen as a stuck `the_engine_on_an_o_direct_image_file_through_io_uring`).
/// One worker, overlapping writes and reads submitted together, many times.
#[test]
fn regression_an_io_uring_worker_never_waits_for_its_own_transfer() {
    let (_dir, image) = image("disk.img");
    let dev = formatted_direct(&image);
    let config = QueueConfig {
        integrity: IntegrityMode::on(),
        io_mode: IoMode::Uring { depth: 8 },
        nr_workers: 1,
        queue_depth: 8,
        ..QueueConfig::default()
    };
    let q = Arc::new(Queue::new(Arc::clone(&dev), config).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let qq = Arc::clone(&q);
    std::thread::spawn(move || {
        for round in 0..200u64 {
            let (done_tx, done_rx) = crossbeam_channel::unbounded();
            {
                let _plug = Plug::new();
                for k in 0..4u64 {
                    let sector = Sector((round % 16) * 8);
                    let mut w = Bio::new(ReqOp::Write, sector, 1);
                    w.add_page(pattern_page(round + k), PAGE_SIZE as u32, 0);
                    let t = done_tx.clone();
                    w.set_end_io(move |b| {
                        let _ = t.send(b.status());
                    });
                    qq.submit_bio(w);
                    let mut r = Bio::new(ReqOp::Read, sector, 1);
                    r.add_page(biofs::block::Page::new(), PAGE_SIZE as u32, 0);
                    let t = done_tx.clone();
                    r.set_end_io(move |b| {
                        let _ = t.send(b.status());
                    });
                    qq.submit_bio(r);
                }
            }
            for _ in 0..8 {
                assert!(done_rx.recv().unwrap().is_ok());
            }
        }
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(std::time::Duration::from_secs(60)).is_ok(),
        "the queue hung: a worker waited for its own in-flight transfer"
    );
}
