//! Hostile images (issue 13), built by construction with every checksum
//! valid (`tools/fuzz/cases.rs`), opened through the filesystem core: each
//! gives an error naming the damage (never a hang, never unbounded memory,
//! never a silent omission or truncation), the rest of the filesystem
//! keeps working, and `fsck -fy` repairs it to a state where a second check
//! is clean and every remaining file reads.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use biofs::block::backend::{BlockBackend, MemBackend};
use biofs::block::{Checksum, IntegrityProfile, IntegrityStore};
use biofs::format::fsck::{fsck, FsckOptions, Mode};
use biofs::format::image::Image;
use biofs::format::inode::Timespec;
use biofs::format::mkfs::{make_fs, MkfsParams};
use biofs::fs::{Ctx, Errno, Fs, MountOptions};

mod common;
use common::fsimage::dev_on;

#[path = "../tools/fuzz/cases.rs"]
#[allow(dead_code)]
mod cases;

const ROOT: u64 = 1;
/// Long enough that every case either finished or hung.
const DEADLINE: Duration = Duration::from_secs(60);

/// What the base image holds.
struct Base {
    mem: Arc<dyn BlockBackend>,
    /// A file with data, and its contents.
    file: u64,
    data: Vec<u8>,
    /// A second file the damage never touches.
    other: u64,
    /// A directory of `DIR_ENTRIES` names (about 20 leaves).
    dir: u64,
    symlink: u64,
}

const DIR_ENTRIES: usize = 2000;

fn name(i: usize) -> Vec<u8> {
    format!("entry-{i:05}-with-a-longer-name").into_bytes()
}

fn mount(mem: &Arc<dyn BlockBackend>) -> Fs {
    let _ = env_logger::builder().is_test(true).try_init();
    Fs::mount_dev(dev_on(mem.clone()), &MountOptions::default()).expect("mount")
}

fn base() -> Base {
    let mem: Arc<dyn BlockBackend> = Arc::new(MemBackend::new(64 << 20));
    IntegrityStore::format(
        &*mem,
        IntegrityProfile::new(4096, Checksum::Crc32c).unwrap(),
    )
    .unwrap();
    let dev = dev_on(mem.clone());
    make_fs(
        &dev,
        &MkfsParams::new([5; 16], 11, Timespec { sec: 1, nsec: 0 }),
    )
    .unwrap();
    dev.close().unwrap();
    let fs = mount(&mem);
    let c = Ctx::root();
    let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let file = fs.create(&c, ROOT, b"file", 0o644).unwrap().ino;
    fs.write(&c, file, 0, &data, false).unwrap();
    let other = fs.create(&c, ROOT, b"other", 0o644).unwrap().ino;
    fs.write(&c, other, 0, b"untouched", false).unwrap();
    let dir = fs.mkdir(&c, ROOT, b"dir", 0o755).unwrap().ino;
    for i in 0..DIR_ENTRIES {
        let a = fs.create(&c, dir, &name(i), 0o644).unwrap();
        fs.forget(a.ino, 1);
    }
    let symlink = fs.symlink(&c, ROOT, b"link", &[b'x'; 3000]).unwrap().ino;
    fs.syncfs().unwrap();
    fs.shutdown().unwrap();
    Base {
        mem,
        file,
        data,
        other,
        dir,
        symlink,
    }
}

/// Apply `damage` to the image.
fn damage(mem: &Arc<dyn BlockBackend>, damage: impl FnOnce(&Image<'_>)) {
    let dev = dev_on(mem.clone());
    {
        let img = Image::open(&dev, None).expect("open image");
        damage(&img);
    }
    dev.close().unwrap();
}

/// Run `f` on a thread; fail the test if it takes longer than `DEADLINE`
/// (the hang of the issue), leaving the thread behind.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(v) => {
            eprintln!("{what}: {:?}", start.elapsed());
            v
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no answer in {DEADLINE:?}: a hang"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: failed (above)"),
    }
}

/// Every file below the root reads whole; returns how many.
fn walk_and_read(fs: &Fs) -> usize {
    let mut n = 0;
    let mut dirs = vec![ROOT];
    while let Some(d) = dirs.pop() {
        let mut cookie = 0;
        loop {
            let batch = fs.readdir(d, cookie, 128).expect("readdir");
            let Some(last) = batch.last() else { break };
            cookie = last.cookie;
            for e in batch.iter().filter(|e| e.name != b"." && e.name != b"..") {
                let a = fs.lookup(d, &e.name).unwrap_or_else(|err| {
                    panic!(
                        "lookup {:?} in {d}: {err}",
                        String::from_utf8_lossy(&e.name)
                    )
                });
                match a.kind {
                    biofs::format::inode::FileType::Directory => dirs.push(a.ino),
                    biofs::format::inode::FileType::Symlink => {
                        fs.readlink(a.ino).expect("readlink");
                    }
                    biofs::format::inode::FileType::Regular => {
                        let got = fs
                            .read(&Ctx::root(), a.ino, 0, a.size.min(1 << 20) as u32)
                            .expect("read");
                        assert_eq!(got.len() as u64, a.size.min(1 << 20));
                    }
                    _ => {}
                }
                fs.forget(a.ino, 1);
                n += 1;
            }
        }
    }
    n
}

/// `fsck -fy` repairs (problems found), then `-fn` finds nothing, and a
/// mount reads every file left; returns the files read.
fn repair_and_check(mem: &Arc<dyn BlockBackend>) -> usize {
    let run = |mode| {
        let dev = dev_on(mem.clone());
        let opts = FsckOptions {
            mode,
            force: true,
            verbose: false,
            scrub: false,
            backup: None,
        };
        let mut said = Vec::new();
        let r = fsck(&dev, &opts, &mut |m| said.push(m.to_string())).expect("fsck runs");
        dev.close().unwrap();
        (r, said)
    };
    let (r, said) = run(Mode::Yes);
    assert!(
        r.problems > 0,
        "fsck -fy found nothing:\n{}",
        said.join("\n")
    );
    assert_eq!(r.left, 0, "fsck -fy left problems:\n{}", said.join("\n"));
    let (r, said) = run(Mode::No);
    assert_eq!(r.problems, 0, "fsck -fn after repair:\n{}", said.join("\n"));
    let fs = mount(mem);
    let n = walk_and_read(&fs);
    fs.shutdown().unwrap();
    n
}

/// Issue 13 case 1: index entries that all point at one child, level after
/// level (7 x 254^3 paths at depth 4). The mount read every path (a core at
/// 100%, memory growing without bound); at depth 2 it accepted the tree,
/// acknowledged writes and then failed the commit. Now: EUCLEAN at once,
/// the file refuses changes, the rest works, fsck rebuilds it.
#[test]
fn extent_tree_whose_index_entries_share_one_child() {
    for depth in [2u16, 4] {
        let b = base();
        damage(&b.mem, |img| {
            cases::extent_bomb(img, b.file, depth).unwrap()
        });
        let mem = b.mem.clone();
        let (file, other) = (b.file, b.other);
        within(&format!("depth {depth}"), move || {
            let fs = mount(&mem);
            let c = Ctx::root();
            assert_eq!(fs.getattr(file).err(), Some(Errno::EUCLEAN));
            assert_eq!(fs.lookup(ROOT, b"file").err(), Some(Errno::EUCLEAN));
            assert!(fs.write(&c, file, 0, b"lost?", false).is_err());
            assert!(fs.open(&c, file, true).is_err());
            // The rest of the filesystem works, and commits.
            assert_eq!(fs.read(&c, other, 0, 100).unwrap(), b"untouched");
            fs.write(&c, other, 9, b"!", false).unwrap();
            fs.syncfs().unwrap();
            fs.shutdown().unwrap();
        });
        repair_and_check(&b.mem);
    }
}

/// Issue 13 case 2a: a directory leaf whose `next` points back to itself or
/// to an earlier leaf made `ls` spin (2^32 hops). Now: EUCLEAN from
/// readdir, naming the directory and block.
#[test]
fn directory_leaf_chain_that_loops() {
    for (k, back) in [(5usize, 5usize), (7, 2)] {
        let b = base();
        damage(&b.mem, |img| {
            cases::dir_leaf_loop(img, b.dir, k, back).unwrap()
        });
        let mem = b.mem.clone();
        let dir = b.dir;
        within(&format!("leaf {k} -> {back}"), move || {
            let fs = mount(&mem);
            let mut cookie = 0;
            let mut listed = 0;
            let err = loop {
                match fs.readdir(dir, cookie, 128) {
                    Ok(batch) if batch.is_empty() => break None,
                    Ok(batch) => {
                        listed += batch.len();
                        cookie = batch.last().map_or(0, |e| e.cookie);
                    }
                    Err(e) => break Some(e),
                }
            };
            assert_eq!(err, Some(Errno::EUCLEAN), "listed {listed} entries");
            assert!(listed < DIR_ENTRIES + 2);
            fs.shutdown().unwrap();
        });
        let n = repair_and_check(&b.mem);
        assert!(n >= DIR_ENTRIES, "only {n} files after repair");
    }
}

/// Issue 13 case 2b: a chain cut short (`next` = 0 in the middle) listed
/// 167 of 2000 entries with no error. Now: EUCLEAN, never a short listing.
#[test]
fn directory_leaf_chain_cut_short() {
    let b = base();
    damage(&b.mem, |img| cases::dir_leaf_cut(img, b.dir, 3).unwrap());
    let mem = b.mem.clone();
    let dir = b.dir;
    within("cut chain", move || {
        let fs = mount(&mem);
        let mut cookie = 0;
        let mut listed = 0;
        let err = loop {
            match fs.readdir(dir, cookie, 128) {
                Ok(batch) if batch.is_empty() => break None,
                Ok(batch) => {
                    listed += batch.len();
                    cookie = batch.last().map_or(0, |e| e.cookie);
                }
                Err(e) => break Some(e),
            }
        };
        assert_eq!(
            err,
            Some(Errno::EUCLEAN),
            "listed {listed} entries silently"
        );
        // Lookups descend the index and still find every name.
        for i in [0, DIR_ENTRIES / 2, DIR_ENTRIES - 1] {
            let a = fs.lookup(dir, &name(i)).unwrap();
            fs.forget(a.ino, 1);
        }
        fs.shutdown().unwrap();
    });
    let n = repair_and_check(&b.mem);
    assert!(n >= DIR_ENTRIES, "only {n} files after repair");
}

/// Issue 13 case 3: an inode slot zeroed on disk reads as free;
/// readdirplus dropped the name silently, or `lstat` gave ENOENT. Now the
/// lookup of the name is EUCLEAN; fsck removes the entry.
#[test]
fn directory_entry_naming_a_zeroed_inode() {
    let b = base();
    let fs = mount(&b.mem);
    let victim = fs.lookup(b.dir, &name(17)).unwrap().ino;
    fs.shutdown().unwrap();
    damage(&b.mem, |img| cases::zero_inode(img, victim).unwrap());
    let fs = mount(&b.mem);
    assert_eq!(fs.lookup(b.dir, &name(17)).err(), Some(Errno::EUCLEAN));
    // The listing still shows the name (nothing silently dropped).
    let mut names = 0;
    let mut cookie = 0;
    loop {
        let batch = fs.readdir(b.dir, cookie, 500).unwrap();
        let Some(last) = batch.last() else { break };
        cookie = last.cookie;
        names += batch.iter().filter(|e| e.name == name(17)).count();
    }
    assert_eq!(names, 1);
    fs.shutdown().unwrap();
    let n = repair_and_check(&b.mem);
    assert!(n >= DIR_ENTRIES - 1, "only {n} files after repair");
}

/// Issue 13 case 4: sizes past the format's limits, and a long symlink of
/// 4097 bytes, passed `fsck -fn`/`-fy` while the mount failed them without
/// a log line. Now the mount refuses each with EUCLEAN (and a log line),
/// and fsck repairs: a file's size is set from its extents, the symlink
/// is cleared.
#[test]
fn sizes_past_the_format_limits() {
    for size in [u64::MAX, i64::MAX as u64, (1u64 << 44) + 1] {
        let b = base();
        damage(&b.mem, |img| cases::set_size(img, b.file, size).unwrap());
        let fs = mount(&b.mem);
        assert_eq!(
            fs.getattr(b.file).err(),
            Some(Errno::EUCLEAN),
            "size {size}"
        );
        assert_eq!(fs.getattr(b.other).unwrap().size, 9);
        fs.shutdown().unwrap();
        repair_and_check(&b.mem);
        let fs = mount(&b.mem);
        let a = fs.getattr(b.file).unwrap();
        assert_eq!(a.size, 40_960, "the size of its blocks");
        let got = fs.read(&Ctx::root(), b.file, 0, 40_000).unwrap();
        assert_eq!(got, b.data, "the data survives the repair");
        fs.shutdown().unwrap();
    }
}

#[test]
fn symlink_longer_than_a_block() {
    let b = base();
    damage(&b.mem, |img| cases::set_size(img, b.symlink, 4097).unwrap());
    let fs = mount(&b.mem);
    assert_eq!(fs.readlink(b.symlink).err(), Some(Errno::EUCLEAN));
    assert_eq!(fs.lookup(ROOT, b"link").err(), Some(Errno::EUCLEAN));
    fs.shutdown().unwrap();
    repair_and_check(&b.mem);
    let fs = mount(&b.mem);
    assert_eq!(fs.lookup(ROOT, b"link").err(), Some(Errno::ENOENT));
    fs.shutdown().unwrap();
}

/// An orphan list that loops (A -> B -> A, A unlinked): the mount freed A,
/// came back to it, found it free and refused to mount. Now the walk keeps
/// a visited set: the loop is logged and cut, the mount goes on, and fsck
/// drops the name of the freed inode.
#[test]
fn orphan_list_that_loops() {
    let b = base();
    damage(&b.mem, |img| {
        cases::orphan_loop(img, b.file, b.other).unwrap()
    });
    let mem = b.mem.clone();
    let other = b.other;
    within("orphan loop", move || {
        let fs = mount(&mem);
        assert_eq!(fs.read(&Ctx::root(), other, 0, 100).unwrap(), b"untouched");
        assert_eq!(fs.lookup(ROOT, b"file").err(), Some(Errno::EUCLEAN));
        fs.shutdown().unwrap();
    });
    repair_and_check(&b.mem);
}

/// Found by biofs-fuzz (seed 1008): a block count of ~2^63 made `stat`
/// overflow computing 512-byte sectors (a panic in a debug build, garbage
/// in a release one). Now the mount refuses a count past the filesystem's
/// size (EUCLEAN) and fsck recounts it.
#[test]
fn inode_block_count_past_the_filesystem() {
    let b = base();
    damage(&b.mem, |img| {
        cases::set_blocks(img, b.file, 15256583812118952084).unwrap()
    });
    let fs = mount(&b.mem);
    assert_eq!(fs.getattr(b.file).err(), Some(Errno::EUCLEAN));
    fs.shutdown().unwrap();
    repair_and_check(&b.mem);
    let fs = mount(&b.mem);
    assert_eq!(fs.getattr(b.file).unwrap().blocks, 10 * 8);
    fs.shutdown().unwrap();
}

/// An entry moved into the leaf before its own (every block valid): a
/// lookup descends by hash to the other leaf and never finds it. readdir
/// now says EUCLEAN, and fsck (which did not check leaf ranges) rebuilds
/// the directory, after which the name is found again.
#[test]
fn directory_entry_outside_its_leaf_range() {
    let b = base();
    damage(&b.mem, |img| {
        cases::dir_entry_out_of_range(img, b.dir).unwrap()
    });
    let fs = mount(&b.mem);
    let mut cookie = 0;
    let err = loop {
        match fs.readdir(b.dir, cookie, 128) {
            Ok(batch) if batch.is_empty() => break None,
            Ok(batch) => cookie = batch.last().map_or(0, |e| e.cookie),
            Err(e) => break Some(e),
        }
    };
    assert_eq!(err, Some(Errno::EUCLEAN));
    fs.shutdown().unwrap();
    let n = repair_and_check(&b.mem);
    assert!(n >= DIR_ENTRIES, "only {n} files after repair");
}

/// A directory found damaged while mounted refuses changes (EUCLEAN) until
/// fsck repairs it, so nothing is acknowledged on a structure the mount
/// can't trust; other directories take changes as before.
#[test]
fn a_directory_found_damaged_refuses_changes() {
    let b = base();
    damage(&b.mem, |img| cases::dir_leaf_cut(img, b.dir, 3).unwrap());
    let fs = mount(&b.mem);
    let c = Ctx::root();
    // Before its damage is seen, a change may go in.
    let mut cookie = 0;
    loop {
        match fs.readdir(b.dir, cookie, 128) {
            Ok(batch) if batch.is_empty() => panic!("the damage went unseen"),
            Ok(batch) => cookie = batch.last().map_or(0, |e| e.cookie),
            Err(e) => {
                assert_eq!(e, Errno::EUCLEAN);
                break;
            }
        }
    }
    assert_eq!(
        fs.create(&c, b.dir, b"new", 0o644).err(),
        Some(Errno::EUCLEAN)
    );
    assert_eq!(fs.unlink(b.dir, &name(5)).err(), Some(Errno::EUCLEAN));
    assert_eq!(
        fs.rename(b.dir, &name(6), ROOT, b"moved", Default::default())
            .err(),
        Some(Errno::EUCLEAN)
    );
    // Lookups and reads go on; other directories change as before.
    let a = fs.lookup(b.dir, &name(6)).unwrap();
    fs.forget(a.ino, 1);
    fs.create(&c, ROOT, b"elsewhere", 0o644).unwrap();
    fs.syncfs().unwrap();
    fs.shutdown().unwrap();
    let n = repair_and_check(&b.mem);
    assert!(n > DIR_ENTRIES, "only {n} files after repair");
}

/// A zeroed group descriptor table block (found by `biofs-fuzz`, seed
/// 1600301): an all-zero descriptor stands for a group never used, so
/// group 0 read as empty. fsck then saw no inode at all, made a new root
/// and marked every inode free (its -fn run afterwards found 1519
/// problems); a mount would have allocated over live data. Group 0 is
/// always in use: zeros there are damage, fsck scans its whole inode
/// table, rewrites the descriptor and every file reads again.
#[test]
fn group_descriptor_table_zeroed() {
    let b = base();
    damage(&b.mem, |img| {
        let gdt = img.geo.gdt_start;
        img.write("group descriptor table", gdt, &[0u8; 4096])
            .unwrap()
    });
    // Refused or working, a mount must not take group 0 for empty: a
    // write that allocates fails rather than landing on live blocks.
    let dev = dev_on(b.mem.clone());
    match Fs::mount_dev(dev, &MountOptions::default()) {
        Err(e) => eprintln!("mount refused: {e}"),
        Ok(fs) => {
            let c = Ctx::root();
            let r = fs
                .create(&c, ROOT, b"new", 0o644)
                .and_then(|a| fs.write(&c, a.ino, 0, &[1u8; 65536], false))
                .and_then(|_| fs.syncfs());
            assert!(r.is_err(), "allocated in a group whose descriptor is gone");
            let _ = fs.shutdown();
        }
    }
    let n = repair_and_check(&b.mem);
    assert!(n >= DIR_ENTRIES + 3, "only {n} files after repair");
    let fs = mount(&b.mem);
    let got = fs
        .read(&Ctx::root(), b.file, 0, b.data.len() as u32)
        .unwrap();
    assert_eq!(got, b.data);
    fs.shutdown().unwrap();
}
