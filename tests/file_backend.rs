//! FileBackend-specific behaviour beyond the conformance suite: image
//! creation, persistence, read-only mode, the O_DIRECT modes and their
//! fallback warning, hole punching, and errno propagation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use biofs::block::backend::{BlockBackend, DirectMode, FileBackend, FileOptions};
use common::{assert_same, errno, pattern, read, write};

fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")
}

fn opts(direct: DirectMode, read_only: bool) -> FileOptions {
    FileOptions { direct, read_only }
}

#[test]
fn create_makes_a_sparse_image_and_never_shrinks() {
    let dir = tmpdir();
    let path = dir.path().join("img");
    FileBackend::create(&path, 64 << 20).expect("create");
    let md = std::fs::metadata(&path).expect("stat");
    assert_eq!(md.len(), 64 << 20);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "image is not sparse: {} blocks",
        md.blocks()
    );
    FileBackend::create(&path, 1 << 20).expect("create smaller");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 64 << 20);
    FileBackend::create(&path, 65 << 20).expect("extend");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 65 << 20);
}

#[test]
fn trailing_partial_block_is_not_addressable() {
    let dir = tmpdir();
    let path = dir.path().join("img");
    FileBackend::create(&path, (1 << 20) + 100).expect("create");
    let b = FileBackend::open(&path, FileOptions::default()).expect("open");
    assert_eq!(b.info().size_bytes, 1 << 20);
}

#[test]
fn data_persists_across_reopen_in_every_mode() {
    let dir = tmpdir();
    let path = dir.path().join("img");
    FileBackend::create(&path, 4 << 20).expect("create");
    let data = pattern(1, 64 << 10);
    {
        let b = FileBackend::open(&path, opts(DirectMode::Require, false)).expect("open");
        assert!(b.info().direct_io);
        write(&b, 1 << 20, &data, true).expect("FUA write");
    }
    let b = FileBackend::open(&path, opts(DirectMode::Off, true)).expect("reopen");
    assert!(!b.info().direct_io);
    assert_same(
        &read(&b, 1 << 20, data.len()).expect("read"),
        &data,
        "after reopen",
    );
    let on_disk = std::fs::read(&path).expect("read file");
    assert_same(
        &on_disk[1 << 20..(1 << 20) + data.len()],
        &data,
        "file contents",
    );
}

#[test]
fn read_only_refuses_every_change_with_erofs() {
    let dir = tmpdir();
    let path = dir.path().join("img");
    FileBackend::create(&path, 1 << 20).expect("create");
    let b = FileBackend::open(&path, opts(DirectMode::Auto, true)).expect("open");
    assert_eq!(errno(write(&b, 0, &[1; 512], false)), Some(libc::EROFS));
    assert_eq!(errno(b.discard(0, 512)), Some(libc::EROFS));
    assert_eq!(errno(b.write_zeroes(0, 512)), Some(libc::EROFS));
    assert!(read(&b, 0, 4096).expect("read").iter().all(|&x| x == 0));
    b.flush().expect("flush of a read-only file");
}

#[test]
fn open_errors_keep_their_errno() {
    let dir = tmpdir();
    let missing = FileBackend::open(dir.path().join("nope"), FileOptions::default());
    assert_eq!(errno(missing), Some(libc::ENOENT));
}

#[test]
fn discard_punches_a_hole_in_the_image() {
    let dir = tmpdir();
    let path = dir.path().join("img");
    FileBackend::create(&path, 4 << 20).expect("create");
    let b = FileBackend::open(&path, FileOptions::default()).expect("open");
    write(&b, 0, &pattern(2, 2 << 20), false).expect("write");
    b.flush().expect("flush");
    let before = std::fs::metadata(&path).expect("stat").blocks();
    b.discard(0, 1 << 20).expect("discard");
    let after = std::fs::metadata(&path).expect("stat").blocks();
    assert!(
        after * 512 <= before * 512 - (1 << 20),
        "discard freed too little: {before} -> {after} blocks"
    );
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        4 << 20,
        "size kept"
    );
}

/// Counts the fallback warnings logged by this test binary.
struct CountFallbackWarnings;

static FALLBACK_WARNINGS: AtomicUsize = AtomicUsize::new(0);

impl log::Log for CountFallbackWarnings {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if r.level() == log::Level::Warn && r.args().to_string().contains("O_DIRECT refused") {
            FALLBACK_WARNINGS.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn flush(&self) {}
}

static LOGGER: CountFallbackWarnings = CountFallbackWarnings;

/// ramfs refuses O_DIRECT: `Require` fails with EINVAL, `Auto` falls back
/// with exactly one warning naming the path, `Off` does not warn.
#[test]
fn direct_modes_on_a_filesystem_that_refuses_o_direct() {
    if !matches!(std::fs::metadata("/proc/self").map(|m| m.uid()), Ok(0)) {
        println!("skipped: mounting ramfs needs root");
        return;
    }
    let dir = tmpdir();
    let mounted = Command::new("mount")
        .args(["-t", "ramfs", "ramfs"])
        .arg(dir.path())
        .status();
    if !matches!(mounted, Ok(s) if s.success()) {
        println!("skipped: cannot mount ramfs: {mounted:?}");
        return;
    }
    let res = std::panic::catch_unwind(|| check_fallback(dir.path()));
    let umounted = Command::new("umount").arg(dir.path()).status();
    assert!(
        matches!(umounted, Ok(s) if s.success()),
        "umount: {umounted:?}"
    );
    if let Err(panic) = res {
        std::panic::resume_unwind(panic);
    }
}

fn check_fallback(dir: &Path) {
    log::set_logger(&LOGGER).expect("only this test sets a logger");
    log::set_max_level(log::LevelFilter::Warn);
    let path = dir.join("img");
    FileBackend::create(&path, 1 << 20).expect("create");
    let req = FileBackend::open(&path, opts(DirectMode::Require, false));
    assert_eq!(errno(req), Some(libc::EINVAL));
    assert_eq!(FALLBACK_WARNINGS.load(Ordering::SeqCst), 0);
    let b = FileBackend::open(&path, opts(DirectMode::Auto, false)).expect("auto");
    assert!(!b.info().direct_io);
    assert_eq!(FALLBACK_WARNINGS.load(Ordering::SeqCst), 1);
    let data = pattern(3, 8192);
    write(&b, 4096, &data, true).expect("write");
    b.flush().expect("flush");
    assert_same(
        &read(&b, 4096, 8192).expect("read"),
        &data,
        "buffered fallback",
    );
    let off = FileBackend::open(&path, opts(DirectMode::Off, false)).expect("off");
    assert!(!off.info().direct_io);
    assert_eq!(
        FALLBACK_WARNINGS.load(Ordering::SeqCst),
        1,
        "one warning per fallback"
    );
}
