//! The mounted filesystem under crashes: a workload through `Fs` (files
//! written, renamed, linked, unlinked, truncated, fsynced) recorded by the
//! log-writes device, then replayed to every crash state (each log prefix,
//! and each write lost after each flush point). In every state:
//! - fsck -n finds nothing wrong (after reading through the journal);
//! - the filesystem mounts (replaying the journal) and unmounts clean;
//! - everything an fsync that returned before the crash covered is there
//!   in full;
//! - no file shows bytes that are neither zeros nor its own data (no stale
//!   or foreign blocks), and no read fails its integrity check.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

use std::sync::Arc;

use biofs::block::backend::BlockBackend;
use biofs::format::inode::{FileType, Timespec};
use biofs::format::mkfs::{make_fs, MkfsParams};
use biofs::fs::{Ctx, Fs, MountOptions, RenameFlags, SetAttr};

mod common;
use common::fsimage::{check_quietly, crash_device, crash_states, dev_on, logged_device};

const SIZE: u64 = 24 << 20;
const ROOT: u64 = 1;

/// Byte `o` of file `id`'s data: never zero, different per file.
fn byte(id: u8, o: usize) -> u8 {
    ((o / 7) as u8).wrapping_add(id.wrapping_mul(31)) | 1
}

fn data(id: u8, len: usize) -> Vec<u8> {
    (0..len).map(|o| byte(id, o)).collect()
}

fn opts() -> MountOptions {
    MountOptions {
        // No background commits: the workload decides every commit.
        commit_interval_secs: 3600,
        // A small buffer cache, so that blocks are evicted and read back
        // between the crash points (issue 12).
        meta_cache_bytes: Some(16 * 4096),
        ..MountOptions::default()
    }
}

fn lookup_path(fs: &Fs, path: &str) -> Option<u64> {
    let mut ino = ROOT;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = fs.lookup(ino, part.as_bytes()).ok()?.ino;
    }
    Some(ino)
}

fn read_all(fs: &Fs, ino: u64) -> Result<Vec<u8>, String> {
    let size = fs.getattr(ino).map_err(|e| e.to_string())?.size;
    fs.read(&Ctx::root(), ino, 0, size as u32)
        .map_err(|e| format!("read: {e}"))
}

/// What must hold once an fsync returned: each path has one of the listed
/// contents (`None`: absent).
struct Promise {
    log_len: usize,
    paths: Vec<(&'static str, Vec<Option<Vec<u8>>>)>,
}

/// The workload; returns the promises and the file id of each name.
fn workload(lw: &Arc<biofs::block::backend::LogWritesBackend>) -> Vec<Promise> {
    let fs = Fs::mount_dev(dev_on(lw.clone()), &opts()).unwrap();
    let c = Ctx::root();
    let mut promises = Vec::new();
    let promise = |paths: Vec<(&'static str, Vec<Option<Vec<u8>>>)>| Promise {
        log_len: lw.entries().len(),
        paths,
    };
    let a = fs.mkdir(&c, ROOT, b"a", 0o755).unwrap().ino;
    let f1 = fs.create(&c, a, b"f1", 0o644).unwrap().ino;
    fs.write(&c, f1, 0, &data(1, 20_000), false).unwrap();
    fs.fsync(f1, false).unwrap();
    promises.push(promise(vec![("a/f1", vec![Some(data(1, 20_000))])]));

    let g = fs.create(&c, ROOT, b"g", 0o644).unwrap().ino;
    fs.write(&c, g, 0, &data(2, 9_000), false).unwrap();
    fs.rename(ROOT, b"g", a, b"g2", RenameFlags::default())
        .unwrap();
    fs.fsync(g, false).unwrap();
    promises.push(promise(vec![
        // Unlinked below, and an fsync of another file commits that.
        ("a/f1", vec![Some(data(1, 20_000)), None]),
        ("a/g2", vec![Some(data(2, 9_000))]),
        ("g", vec![None]),
    ]));

    fs.link(f1, ROOT, b"h").unwrap();
    fs.unlink(a, b"f1").unwrap();
    let f3 = fs.create(&c, a, b"f3", 0o644).unwrap().ino;
    for k in 0..6 {
        // Interleaved with another file, so f3 gets more than one extent.
        fs.write(
            &c,
            f3,
            k * 50_000,
            &data(3, 300_000)[k as usize * 50_000..][..50_000],
            false,
        )
        .unwrap();
        fs.fsync(f3, true).unwrap();
        let junk = fs
            .create(&c, ROOT, format!("j{k}").as_bytes(), 0o644)
            .unwrap()
            .ino;
        fs.write(&c, junk, 0, &data(10 + k as u8, 4096), false)
            .unwrap();
    }
    fs.fsync(f3, false).unwrap();
    let f3_full = data(3, 300_000);
    // The truncate below zeroes the rest of its last block in place (as
    // ext4 does) before its transaction commits: a crash between shows
    // the old size with those bytes zero.
    let mut f3_zeroed_tail = f3_full.clone();
    f3_zeroed_tail[5_000..8_192].fill(0);
    promises.push(promise(vec![
        ("h", vec![Some(data(1, 20_000))]),
        ("a/f1", vec![None]),
        ("a/g2", vec![Some(data(2, 9_000))]),
        (
            "a/f3",
            vec![
                Some(f3_full.clone()),
                Some(f3_full[..5_000].to_vec()),
                Some(f3_zeroed_tail),
            ],
        ),
    ]));

    // Not fsynced: a truncate, a new file, an unlink of an open file.
    fs.setattr(
        &c,
        f3,
        &SetAttr {
            size: Some(5_000),
            ..SetAttr::default()
        },
    )
    .unwrap();
    let f5 = fs.create(&c, ROOT, b"f5", 0o644).unwrap().ino;
    fs.write(&c, f5, 0, &data(5, 70_000), false).unwrap();
    fs.unlink(ROOT, b"j0").unwrap();
    fs.shutdown().unwrap();
    promises
}

/// The file id of a name in the tree (renames and links keep it).
fn id_of(name: &str) -> Option<u8> {
    Some(match name {
        "f1" | "h" => 1,
        "g" | "g2" => 2,
        "f3" => 3,
        "f5" => 5,
        _ => 10 + name.strip_prefix('j')?.parse::<u8>().ok()?,
    })
}

/// Every regular file's bytes are zeros or its own.
fn check_tree(fs: &Fs, dir: u64, path: &str, errs: &mut Vec<String>) {
    let mut cookie = 0;
    loop {
        let batch = fs.readdir(dir, cookie, 64).unwrap();
        let Some(last) = batch.last() else { break };
        cookie = last.cookie;
        for e in batch {
            let name = String::from_utf8_lossy(&e.name).to_string();
            if name == "." || name == ".." {
                continue;
            }
            let p = format!("{path}/{name}");
            match e.kind {
                FileType::Directory => check_tree(fs, e.ino, &p, errs),
                FileType::Regular => match (read_all(fs, e.ino), id_of(&name)) {
                    (Err(err), _) => errs.push(format!("{p}: {err}")),
                    (Ok(d), Some(id)) => {
                        if let Some(o) = d
                            .iter()
                            .enumerate()
                            .position(|(o, &b)| b != 0 && b != byte(id, o))
                        {
                            errs.push(format!("{p}: foreign byte at {o}"));
                        }
                    }
                    (Ok(_), None) => errs.push(format!("{p}: a file the workload never made")),
                },
                _ => {}
            }
        }
    }
}

#[test]
fn every_crash_state_keeps_what_fsync_promised_and_nothing_foreign() {
    let lw = logged_device(SIZE);
    let base = make(&lw, 11);
    let promises = workload(&lw);
    let checked = check_every_state(&lw, base, &|fs, n, errs| {
        // The promise of the last fsync that returned before `n`.
        let Some(p) = promises.iter().rev().find(|p| p.log_len <= n) else {
            return;
        };
        for (path, allowed) in &p.paths {
            let got = lookup_path(fs, path).map(|ino| read_all(fs, ino));
            let got = match got {
                None => None,
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => {
                    errs.push(format!("{path}: {e}"));
                    continue;
                }
            };
            if !allowed.contains(&got) {
                let detail = match (&got, allowed.last()) {
                    (Some(g), Some(Some(w))) => {
                        let diff: Vec<usize> = (0..g.len().min(w.len()))
                            .filter(|&i| g[i] != w[i])
                            .collect();
                        format!(
                            "{} bytes differ from the last allowed, {:?}..={:?}",
                            diff.len(),
                            diff.first(),
                            diff.last()
                        )
                    }
                    _ => String::new(),
                };
                errs.push(format!(
                    "{path}: {:?} bytes, not what fsync promised {detail}",
                    got.map(|d| d.len())
                ));
            }
        }
    });
    assert!(checked > 50, "only {checked} crash states");
}

/// Four threads append to a file each and fsync after every append, so
/// that fsyncs arrive while another is committing and share its commit
/// (group commit): in every crash state each file holds at least what its
/// last fsync that returned covered.
#[test]
fn fsyncs_sharing_a_commit_keep_each_promise() {
    const THREADS: u8 = 4;
    const APPENDS: usize = 6;
    const CHUNK: usize = 8 << 10;
    let lw = logged_device(SIZE);
    let base = make(&lw, 12);
    let fs = Fs::mount_dev(dev_on(lw.clone()), &opts()).unwrap();
    let c = Ctx::root();
    // Names j20.. are files 30.. of id_of.
    let files: Vec<u64> = (0..THREADS)
        .map(|t| {
            let name = format!("j{}", 20 + t);
            fs.create(&c, ROOT, name.as_bytes(), 0o644).unwrap().ino
        })
        .collect();
    fs.syncfs().unwrap();
    // (log length when the fsync returned, thread, bytes it covered)
    let promises = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for (t, &ino) in files.iter().enumerate() {
            let (fs, lw, promises) = (&fs, &lw, &promises);
            s.spawn(move || {
                let all = data(30 + t as u8, APPENDS * CHUNK);
                for k in 0..APPENDS {
                    let chunk = &all[k * CHUNK..(k + 1) * CHUNK];
                    fs.write(&c, ino, (k * CHUNK) as u64, chunk, false).unwrap();
                    fs.fsync(ino, false).unwrap();
                    let n = lw.entries().len();
                    promises.lock().unwrap().push((n, t, (k + 1) * CHUNK));
                }
            });
        }
    });
    let (commits, fsyncs, shared) = fs.commit_counts();
    println!("{fsyncs} fsyncs, {commits} commits, {shared} fsyncs shared another's commit");
    assert_eq!(fsyncs, u64::from(THREADS) * APPENDS as u64);
    assert!(shared > 0, "no fsync shared another's commit");
    fs.shutdown().unwrap();
    let promises = promises.into_inner().unwrap();
    check_every_state(&lw, base, &|fs, n, errs| {
        for t in 0..THREADS as usize {
            let promised = promises
                .iter()
                .filter(|p| p.1 == t && p.0 <= n)
                .map(|p| p.2)
                .max()
                .unwrap_or(0);
            let path = format!("j{}", 20 + t);
            let len = lookup_path(fs, &path)
                .map(|ino| read_all(fs, ino).map(|d| d.iter().take_while(|&&b| b != 0).count()));
            match len {
                Some(Ok(len)) if len >= promised => {}
                None if promised == 0 => {}
                other => errs.push(format!(
                    "{path}: {other:?} bytes of data, its fsync promised {promised}"
                )),
            }
        }
    });
}

/// mkfs on `lw`; returns the log position after it.
fn make(lw: &Arc<biofs::block::backend::LogWritesBackend>, hash_seed: u64) -> usize {
    let dev = dev_on(lw.clone());
    make_fs(
        &dev,
        &MkfsParams::new([3; 16], hash_seed, Timespec { sec: 1, nsec: 0 }),
    )
    .unwrap();
    dev.close().unwrap();
    lw.mark("made")
}

/// Replay every crash state of `lw` from `base` on: in each, fsck -n finds
/// nothing, the filesystem mounts, `check` finds nothing (given the state's
/// log length), no file has foreign bytes, it unmounts clean and fsck
/// finds nothing again. Returns the states checked; fails listing every
/// state that broke a rule.
fn check_every_state(
    lw: &Arc<biofs::block::backend::LogWritesBackend>,
    base: usize,
    check: &dyn Fn(&Fs, usize, &mut Vec<String>),
) -> usize {
    let states = crash_states(lw, base);
    let mut checked = 0;
    let mut failures = Vec::new();
    for (n, drop) in states {
        let target: Arc<dyn BlockBackend> = crash_device(lw, (n, drop), SIZE);
        let mut errs = Vec::new();
        {
            let dev = dev_on(target.clone());
            let (problems, said) = check_quietly(&dev);
            if problems != 0 {
                errs.push(format!("fsck -n: {}", said.join("; ")));
            }
            dev.close().unwrap();
        }
        match Fs::mount_dev(dev_on(target.clone()), &opts()) {
            Err(e) => errs.push(format!("mount: {e}")),
            Ok(fs) => {
                check(&fs, n, &mut errs);
                check_tree(&fs, ROOT, "", &mut errs);
                if let Err(e) = fs.shutdown() {
                    errs.push(format!("unmount: {e}"));
                }
            }
        }
        let dev = dev_on(target);
        let (problems, said) = check_quietly(&dev);
        if problems != 0 {
            errs.push(format!("fsck after the mount: {}", said.join("; ")));
        }
        dev.close().unwrap();
        if !errs.is_empty() {
            failures.push(format!("state ({n}, {drop:?}): {}", errs.join(" | ")));
        }
        checked += 1;
    }
    println!("checked {checked} crash states");
    assert!(
        failures.is_empty(),
        "{} of {checked} states failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    checked
}
