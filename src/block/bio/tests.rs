use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::*;

fn counter_end_io(bio: &mut Bio, log: &Arc<Mutex<Vec<BlkStatus>>>) {
    let log = Arc::clone(log);
    bio.set_end_io(move |b| log.lock().unwrap().push(b.status()));
}

#[test]
fn add_page_returns_bytes_added_and_zero_when_full() {
    let mut bio = Bio::new(ReqOp::Write, Sector(0), 2);
    assert_eq!(bio.add_page(Page::new(), 4096, 0), 4096);
    assert_eq!(bio.add_page(Page::new(), 512, 0), 512);
    assert!(bio.is_full());
    assert_eq!(
        bio.add_page(Page::new(), 512, 0),
        0,
        "a third page doesn't fit"
    );
    assert_eq!(bio.size(), 4608);
    assert_eq!(bio.vcnt(), 2);
}

#[test]
fn add_page_coalesces_a_continuing_range() {
    let mut bio = Bio::new(ReqOp::Read, Sector(8), 1);
    let p = Page::new();
    assert_eq!(bio.add_page(p.clone(), 1024, 0), 1024);
    assert_eq!(
        bio.add_page(p.clone(), 1024, 1024),
        1024,
        "continues the segment: coalesced"
    );
    assert_eq!(bio.vcnt(), 1);
    assert_eq!(bio.segments().next().map(|v| v.len), Some(2048));
    assert_eq!(
        bio.add_page(p, 512, 3072),
        0,
        "a gap in a full bio is not coalesced"
    );
    assert_eq!(bio.end_sector(), Sector(12));
}

#[test]
fn add_page_rejects_ranges_outside_the_page_and_dataless_bios() {
    let mut bio = Bio::new(ReqOp::Write, Sector(0), 4);
    assert_eq!(bio.add_page(Page::new(), 4096, 512), 0);
    assert_eq!(bio.add_page(Page::new(), 0, 0), 0);
    let mut flush = Bio::new_flush();
    assert_eq!(flush.add_page(Page::new(), 512, 0), 0);
    assert_eq!(bio.size(), 0);
}

#[test]
fn segments_iterate_in_order_and_copy_data() {
    let mut bio = Bio::new(ReqOp::Write, Sector(0), 4);
    bio.add_page(Page::from_slice(&[1; 4096]), 512, 0);
    bio.add_page(Page::from_slice(&[2; 4096]), 512, 512);
    let lens: Vec<u32> = bio.segments().map(|v| v.offset).collect();
    assert_eq!(lens, vec![0, 512]);
    let data = bio.copy_data();
    assert_eq!(&data[..512], &[1; 512][..]);
    assert_eq!(&data[512..], &[2; 512][..]);
}

#[test]
fn end_io_runs_exactly_once() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut bio = Bio::new(ReqOp::Write, Sector(0), 1);
    counter_end_io(&mut bio, &log);
    bio_endio(bio);
    assert_eq!(*log.lock().unwrap(), vec![BlkStatus::Ok]);
}

#[test]
fn dropping_an_unended_bio_ends_it_with_an_error() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut bio = Bio::new(ReqOp::Write, Sector(0), 1);
    counter_end_io(&mut bio, &log);
    drop(bio);
    assert_eq!(
        *log.lock().unwrap(),
        vec![BlkStatus::IoErr],
        "the Drop backstop reports the lost bio"
    );
}

#[test]
fn parent_completes_after_all_children_with_first_error() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut parent = Bio::new(ReqOp::Write, Sector(0), 1);
    counter_end_io(&mut parent, &log);
    let mut children: Vec<Bio> = (0..3)
        .map(|i| Bio::new(ReqOp::Write, Sector(i), 1))
        .collect();
    for c in &mut children {
        bio_chain(c, &mut parent).unwrap();
    }
    // The parent's own I/O finishes first: nothing may run yet.
    bio_endio(parent);
    assert!(log.lock().unwrap().is_empty());
    let mut it = children.into_iter();
    let mut c0 = it.next().unwrap();
    c0.set_status(BlkStatus::Medium, Some(Sector(0)));
    bio_endio(c0);
    let mut c1 = it.next().unwrap();
    c1.set_status(BlkStatus::IoErr, Some(Sector(1)));
    bio_endio(c1);
    assert!(log.lock().unwrap().is_empty());
    bio_endio(it.next().unwrap());
    assert_eq!(
        *log.lock().unwrap(),
        vec![BlkStatus::Medium],
        "first error wins"
    );
}

#[test]
fn parent_io_finishing_last_also_completes_once() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut parent = Bio::new(ReqOp::Read, Sector(0), 1);
    counter_end_io(&mut parent, &log);
    let mut child = Bio::new(ReqOp::Read, Sector(8), 1);
    bio_chain(&mut child, &mut parent).unwrap();
    bio_endio(child);
    assert!(log.lock().unwrap().is_empty());
    parent.set_status(BlkStatus::IoErr, None);
    bio_endio(parent);
    assert_eq!(*log.lock().unwrap(), vec![BlkStatus::IoErr]);
}

#[test]
fn deep_chains_complete_without_recursion() {
    // A chain 200,000 deep would overflow the stack if completion recursed.
    let done = Arc::new(AtomicUsize::new(0));
    let mut root = Bio::new(ReqOp::Write, Sector(0), 1);
    let d = Arc::clone(&done);
    root.set_end_io(move |b| {
        assert_eq!(b.status(), BlkStatus::Protection);
        d.fetch_add(1, Ordering::SeqCst);
    });
    let mut chain = vec![root];
    for i in 1..200_000u64 {
        let mut child = Bio::new(ReqOp::Write, Sector(i), 1);
        let parent = chain.last_mut().unwrap();
        bio_chain(&mut child, parent).unwrap();
        chain.push(child);
    }
    // End every parent first (they park), then the deepest child with an
    // error: its completion walks all the way up.
    let leaf_status = BlkStatus::Protection;
    let mut leaf = chain.pop().unwrap();
    for bio in chain.into_iter().rev() {
        bio_endio(bio);
    }
    assert_eq!(done.load(Ordering::SeqCst), 0);
    leaf.set_status(leaf_status, None);
    bio_endio(leaf);
    assert_eq!(done.load(Ordering::SeqCst), 1);
}

#[test]
fn chaining_from_many_threads_completes_once() {
    for _ in 0..50 {
        let done = Arc::new(AtomicUsize::new(0));
        let mut parent = Bio::new(ReqOp::Write, Sector(0), 1);
        let d = Arc::clone(&done);
        parent.set_end_io(move |_| {
            d.fetch_add(1, Ordering::SeqCst);
        });
        let mut kids = Vec::new();
        for i in 0..8 {
            let mut c = Bio::new(ReqOp::Write, Sector(i), 1);
            bio_chain(&mut c, &mut parent).unwrap();
            kids.push(c);
        }
        let handles: Vec<_> = kids
            .into_iter()
            .map(|c| std::thread::spawn(move || bio_endio(c)))
            .collect();
        bio_endio(parent);
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }
}

#[test]
fn bio_stays_small() {
    // Bios are moved by value through submission and merging: keep them
    // within a few cache lines.
    let size = std::mem::size_of::<Bio>();
    println!("size_of::<Bio>() = {size}");
    assert!(size <= 160, "Bio grew to {size} bytes");
}

#[test]
fn regression_chaining_an_already_chained_bio_is_refused() {
    let mut p1 = Bio::new(ReqOp::Write, Sector(0), 1);
    let mut p2 = Bio::new(ReqOp::Write, Sector(0), 1);
    let mut child = Bio::new(ReqOp::Write, Sector(8), 1);
    bio_chain(&mut child, &mut p1).unwrap();
    assert_eq!(
        bio_chain(&mut child, &mut p2),
        Err(ChainError::AlreadyChained)
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    counter_end_io(&mut p1, &log);
    bio_endio(p1);
    bio_endio(child);
    assert_eq!(
        *log.lock().unwrap(),
        vec![BlkStatus::Ok],
        "the first parent still completes"
    );
}
