//! Splitting is exact: for random bios and random valid limits, no request
//! the device sees breaks a limit, and the data round-trips.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

mod common;

use std::sync::Arc;

use biofs::block::backend::BlockBackend;
use biofs::block::{Bio, Page, Queue, QueueConfig, QueueLimits, ReqOp, Sector, PAGE_SIZE};
use common::CheckedBackend;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Seg {
    offset: u32,
    len: u32,
}

fn seg() -> impl Strategy<Value = Seg> {
    (0u32..8, 1u32..=8).prop_map(|(o, l)| {
        let offset = o * 512;
        let len = (l * 512).min(PAGE_SIZE as u32 - offset);
        Seg { offset, len }
    })
}

fn limits() -> impl Strategy<Value = (u32, u32, u32, u64, u64)> {
    (
        prop::sample::select(vec![8u32, 16, 24, 64, 2048]),
        prop::sample::select(vec![1u32, 2, 3, 4, 16, 256]),
        prop::sample::select(vec![4096u32, 8192, 65536]),
        prop::sample::select(vec![0u64, 511, 4095]),
        prop::sample::select(vec![u64::MAX, 4095, 8191, 65535]),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn split_requests_obey_every_limit(
        segs in prop::collection::vec(seg(), 1..48),
        read_segs in prop::collection::vec(seg(), 1..48),
        (max_sectors, max_segments, max_segment_size, virt, boundary) in limits(),
        start in 0u64..64,
        seed in any::<u8>(),
    ) {
        let dev = CheckedBackend::new(4 << 20);
        let mut lim = QueueLimits::for_backend(&dev.info());
        lim.max_sectors = max_sectors;
        lim.max_segments = max_segments;
        lim.max_segment_size = max_segment_size;
        lim.virt_boundary_mask = virt;
        lim.seg_boundary_mask = boundary;
        prop_assume!(lim.validate().is_ok());
        dev.set_limits(lim.clone());
        let q = Queue::new(Arc::clone(&dev) as Arc<dyn BlockBackend>, QueueConfig { limits: Some(lim), ..QueueConfig::default() }).unwrap();

        // Write: each segment in its own page, filled with a pattern.
        let mut model = Vec::new();
        let mut bio = Bio::new(ReqOp::Write, Sector(start), segs.len());
        for (i, s) in segs.iter().enumerate() {
            let mut data = vec![0u8; PAGE_SIZE];
            for (j, b) in data.iter_mut().enumerate() { *b = (i as u8).wrapping_mul(37) ^ (j as u8) ^ seed; }
            model.extend_from_slice(&data[s.offset as usize..(s.offset + s.len) as usize]);
            prop_assert_eq!(bio.add_page(Page::from_slice(&data), s.len, s.offset), s.len);
        }
        let w = q.submit_bio_wait(bio);
        prop_assert!(w.status().is_ok(), "write failed: {:?}", w.status());
        // Regression: a split must not take pages away from the bio's owner.
        prop_assert_eq!(w.vcnt(), segs.len());
        prop_assert!(w.copy_data() == model, "the completed bio lost segments to its split pieces");

        // Read back the same bytes through a different segmentation.
        let mut read_len = 0u32;
        let mut bio = Bio::new(ReqOp::Read, Sector(start), read_segs.len());
        for s in &read_segs {
            if read_len >= model.len() as u32 { break; }
            let len = s.len.min(model.len() as u32 - read_len);
            prop_assert_eq!(bio.add_page(Page::new(), len, s.offset), len);
            read_len += len;
        }
        let r = q.submit_bio_wait(bio);
        prop_assert!(r.status().is_ok(), "read failed: {:?}", r.status());
        let got = r.copy_data();
        let first_bad = got.iter().zip(&model).position(|(a, b)| a != b);
        prop_assert!(first_bad.is_none() && got.len() == read_len as usize, "data differs at byte {:?} of {}", first_bad, read_len);
        let v = dev.violations();
        prop_assert!(v.is_empty(), "limit violations: {:?}", v);
    }
}

#[test]
fn a_bio_that_cannot_be_split_to_the_limits_fails_invalid() {
    // 4 KiB logical blocks, one segment per request, and a bio of 512-byte
    // segments: no 4 KiB piece fits in one segment.
    let dev = CheckedBackend::new(4 << 20);
    let mut lim = QueueLimits::for_backend(&dev.info());
    lim.logical_block_size = 4096;
    lim.max_segments = 1;
    let q = common::checked_queue(&dev, Some(lim));
    let mut bio = Bio::new(ReqOp::Write, Sector(0), 8);
    for _ in 0..8 {
        bio.add_page(Page::new(), 512, 0);
    }
    assert_eq!(
        q.submit_bio_wait(bio).status(),
        biofs::block::BlkStatus::Invalid
    );
    assert!(dev.ops().is_empty());
}

#[test]
fn splits_are_counted() {
    let dev = CheckedBackend::new(4 << 20);
    let mut lim = QueueLimits::for_backend(&dev.info());
    lim.max_sectors = 16;
    let q = common::checked_queue(&dev, Some(lim));
    let mut bio = Bio::new(ReqOp::Write, Sector(0), 8);
    for _ in 0..8 {
        bio.add_page(Page::new(), 4096, 0);
    }
    assert!(q.submit_bio_wait(bio).status().is_ok());
    assert_eq!(
        q.stats().bios_split,
        3,
        "32 KiB in 8 KiB requests: three splits"
    );
    assert_eq!(q.stats().writes, 4);
}
