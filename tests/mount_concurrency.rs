//! Several threads on one mounted biofs at once: writers of different
//! files, readers of one file, writers of disjoint ranges of one file
//! (sharing pages), creators in one directory, and a reader racing an
//! appender. Every byte is checked against the data that was written.
//!
//! Each test mounts its own image (tests/common/mount.rs); set
//! `BIOFS_TEST_DIR` to run them against a directory of another filesystem.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

mod common;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::check::{assert_file, data, ok};
use common::mount::Mounted;
use common::rng::Rng;

const THREADS: u64 = 4;
const MIB: usize = 1 << 20;

macro_rules! mount {
    () => {
        match Mounted::new() {
            Some(m) => m,
            None => return,
        }
    };
}

/// Runs `f(t)` on `THREADS` threads at once; a panic in any fails the test.
fn in_parallel(f: impl Fn(u64) + Send + Sync + 'static) {
    let f = Arc::new(f);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let f = Arc::clone(&f);
            thread::spawn(move || f(t))
        })
        .collect();
    for h in handles {
        h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    }
}

#[test]
fn writers_of_different_files() {
    let m = mount!();
    let root = m.root().to_path_buf();
    let file = move |t: u64| root.join(format!("t{t}"));
    let f2 = file.clone();
    in_parallel(move |t| {
        let want = data(100 + t, 8 * MIB);
        let mut f = ok(File::create(f2(t)), "create");
        let mut rng = Rng(t);
        let mut pos = 0;
        while pos < want.len() {
            let n = (rng.range(1, 256 << 10) as usize).min(want.len() - pos);
            ok(f.write_all(&want[pos..pos + n]), "write");
            pos += n;
        }
        ok(f.sync_all(), "fsync");
        assert_file(&f2(t), &want);
    });
    for t in 0..THREADS {
        assert_file(&file(t), &data(100 + t, 8 * MIB));
    }
}

#[test]
fn readers_of_one_file() {
    let m = mount!();
    let p = m.path("shared");
    let want = Arc::new(data(1, 16 * MIB));
    ok(fs::write(&p, &*want), "write");
    let f = Arc::new(ok(File::open(&p), "open"));
    in_parallel(move |t| {
        let mut rng = Rng(t);
        if t == 0 {
            // One thread reads it whole, through its own descriptor.
            assert_file(&p, &want);
        }
        for _ in 0..200 {
            let off = rng.below(want.len() as u64) as usize;
            let len = (rng.range(1, 256 << 10) as usize).min(want.len() - off);
            let mut buf = vec![0u8; len];
            ok(f.read_exact_at(&mut buf, off as u64), "pread");
            assert!(
                buf == want[off..off + len],
                "thread {t}: {len} bytes at {off}"
            );
        }
    });
}

#[test]
fn writers_of_disjoint_ranges_of_one_file() {
    let m = mount!();
    let p = m.path("striped");
    // Chunks of 100,000 bytes: neighbours written by different threads
    // share pages and blocks.
    const CHUNK: usize = 100_000;
    const CHUNKS: usize = 80;
    let want = Arc::new(data(7, CHUNK * CHUNKS));
    let f = Arc::new(ok(
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p),
        "create",
    ));
    let w = Arc::clone(&want);
    let g = Arc::clone(&f);
    in_parallel(move |t| {
        for c in (0..CHUNKS).filter(|c| *c as u64 % THREADS == t) {
            let off = c * CHUNK;
            ok(g.write_all_at(&w[off..off + CHUNK], off as u64), "pwrite");
        }
    });
    ok(f.sync_all(), "fsync");
    assert_file(&p, &want);
}

#[test]
fn creators_in_one_directory() {
    let m = mount!();
    let d = m.path("d");
    ok(fs::create_dir(&d), "mkdir");
    let dd = d.clone();
    in_parallel(move |t| {
        for j in 0..300 {
            ok(
                fs::write(dd.join(format!("t{t}-{j}")), format!("{t}/{j}")),
                "create",
            );
            if j % 2 == 1 {
                ok(
                    fs::remove_file(dd.join(format!("t{t}-{}", j - 1))),
                    "unlink",
                );
            }
        }
    });
    let got: BTreeSet<String> = ok(fs::read_dir(&d), "readdir")
        .map(|e| ok(e, "entry").file_name().to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = (0..THREADS)
        .flat_map(|t| (1..300).step_by(2).map(move |j| format!("t{t}-{j}")))
        .collect();
    assert_eq!(got, want);
    for name in &want {
        let (t, j) = name[1..].split_once('-').expect("t-j");
        assert_file(&d.join(name), format!("{t}/{j}").as_bytes());
    }
}

#[test]
fn a_reader_racing_an_appender_sees_only_written_bytes() {
    let m = mount!();
    let p: PathBuf = m.path("log");
    let want = Arc::new(data(3, 4 * MIB));
    ok(File::create(&p), "create");
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (p, want) = (p.clone(), Arc::clone(&want));
        let (done, reads) = (Arc::clone(&done), Arc::clone(&reads));
        thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                let got = ok(fs::read(&p), "read");
                assert!(got.len() <= want.len());
                if let Some(i) = got.iter().zip(want.iter()).position(|(a, b)| a != b) {
                    panic!("read {} bytes, byte {i} was never written there", got.len());
                }
                reads.fetch_add(1, Ordering::AcqRel);
            }
        })
    };
    let mut f = ok(OpenOptions::new().append(true).open(&p), "open");
    let mut rng = Rng(5);
    let mut pos = 0;
    for i in 0.. {
        if pos == want.len() {
            break;
        }
        let n = (rng.range(1, 64 << 10) as usize).min(want.len() - pos);
        ok(f.write_all(&want[pos..pos + n]), "append");
        pos += n;
        // Every 8 appends, let the reader finish a read: they interleave.
        if i % 8 == 0 {
            let seen = reads.load(Ordering::Acquire);
            let start = Instant::now();
            while reads.load(Ordering::Acquire) == seen && !reader.is_finished() {
                assert!(start.elapsed() < Duration::from_secs(10), "reader stuck");
                thread::yield_now();
            }
        }
    }
    done.store(true, Ordering::Release);
    reader
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(
        reads.load(Ordering::Acquire) >= 16,
        "reads interleaved with appends"
    );
    assert_file(&p, &want);
}
