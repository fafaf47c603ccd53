//! The README's "Using the engine" example, run as written (in a temp dir).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

use std::sync::Arc;

use biofs::block::backend::{FileBackend, FileOptions};
use biofs::block::{
    Bio, Checksum, IntegrityMode, IntegrityProfile, IntegrityStore, Page, Queue, QueueConfig,
    ReqOp, Sector,
};

#[test]
fn the_readme_example_works() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    std::env::set_current_dir(dir.path())?;
    FileBackend::create("disk.img", 64 << 20)?;
    // --- as in README.md ---
    let dev = Arc::new(FileBackend::open("disk.img", FileOptions::default())?);
    IntegrityStore::format(&*dev, IntegrityProfile::new(4096, Checksum::Crc32c)?)?; // once
    let q = Queue::new(
        dev,
        QueueConfig {
            integrity: IntegrityMode::on(),
            ..Default::default()
        },
    )?;
    let mut bio = Bio::new(ReqOp::Write, Sector(0), 1);
    bio.add_page(Page::from_slice(b"hello"), 4096, 0);
    let done = q.submit_bio_wait(bio);
    assert!(done.status().is_ok());
    // --- end ---
    let mut read = Bio::new(ReqOp::Read, Sector(0), 1);
    read.add_page(Page::new(), 4096, 0);
    let read = q.submit_bio_wait(read);
    assert!(read.status().is_ok());
    assert_eq!(&read.copy_data()[..5], b"hello");
    Ok(())
}
