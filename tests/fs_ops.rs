//! The filesystem core (`biofs::fs::Fs`) driven without FUSE: namespace
//! and data operations checked against a model, through unmount and
//! mount, ending with a forced fsck that finds nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

use std::collections::BTreeMap;
use std::sync::Arc;

use biofs::block::backend::{BlockBackend, MemBackend};
use biofs::block::{Checksum, IntegrityProfile, IntegrityStore};
use biofs::format::inode::Timespec;
use biofs::format::mkfs::{make_fs, MkfsParams};
use biofs::fs::{
    AtimeMode, Ctx, Errno, FallocMode, Filled, Fs, MountOptions, RenameFlags, SeekWhence, SetAttr,
    TimeSet,
};

mod common;
use common::fsimage::{check_quietly, crash_device, dev_on, logged_device};
use common::rng::Rng;

const ROOT: u64 = 1;

fn new_device(size: u64) -> Arc<dyn BlockBackend> {
    let mem: Arc<dyn BlockBackend> = Arc::new(MemBackend::new(size));
    IntegrityStore::format(
        &*mem,
        IntegrityProfile::new(4096, Checksum::Crc32c).unwrap(),
    )
    .unwrap();
    mkfs_on(mem)
}

fn mkfs_on(mem: Arc<dyn BlockBackend>) -> Arc<dyn BlockBackend> {
    let dev = dev_on(mem.clone());
    make_fs(
        &dev,
        &MkfsParams::new([7; 16], 9, Timespec { sec: 1, nsec: 0 }),
    )
    .unwrap();
    dev.close().unwrap();
    mem
}

fn mount(mem: &Arc<dyn BlockBackend>) -> Fs {
    let _ = env_logger::builder().is_test(true).try_init();
    Fs::mount_dev(dev_on(mem.clone()), &MountOptions::default()).unwrap()
}

fn fsck_clean(mem: &Arc<dyn BlockBackend>) {
    let dev = dev_on(mem.clone());
    let (problems, said) = check_quietly(&dev);
    assert_eq!(problems, 0, "fsck found problems:\n{}", said.join("\n"));
    dev.close().unwrap();
}

fn read_all(fs: &Fs, ino: u64) -> Vec<u8> {
    let size = fs.getattr(ino).unwrap().size;
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let chunk = fs
            .read(&Ctx::root(), ino, out.len() as u64, 1 << 20)
            .unwrap();
        assert!(!chunk.is_empty(), "short read at {}", out.len());
        out.extend(chunk);
    }
    out
}

#[test]
fn namespace_and_errnos() {
    let mem = new_device(64 << 20);
    let fs = mount(&mem);
    let c = Ctx::root();
    let d = fs.mkdir(&c, ROOT, b"d", 0o755).unwrap();
    assert_eq!(fs.getattr(ROOT).unwrap().nlink, 4, "root, lost+found, d");
    let f = fs.create(&c, d.ino, b"f", 0o644).unwrap();
    fs.release(f.ino).unwrap();
    assert_eq!(fs.create(&c, d.ino, b"f", 0o644), Err(Errno::EEXIST));
    assert_eq!(fs.rmdir(ROOT, b"d"), Err(Errno::ENOTEMPTY));
    assert_eq!(fs.unlink(ROOT, b"d"), Err(Errno::EISDIR));
    assert_eq!(fs.lookup(d.ino, &[b'x'; 256]), Err(Errno::ENAMETOOLONG));
    assert_eq!(
        fs.mkdir(&c, ROOT, &[b'x'; 256], 0o755),
        Err(Errno::ENAMETOOLONG)
    );
    fs.mkdir(&c, ROOT, &[b'x'; 255], 0o755).unwrap();
    assert_eq!(fs.link(d.ino, ROOT, b"dl"), Err(Errno::EPERM));
    let l = fs.link(f.ino, ROOT, b"hard").unwrap();
    assert_eq!(l.nlink, 2);
    let s = fs.symlink(&c, ROOT, b"s", b"d/f").unwrap();
    assert_eq!(fs.readlink(s.ino).unwrap(), b"d/f");
    let long = vec![b'y'; 3000];
    let s2 = fs.symlink(&c, ROOT, b"s2", &long).unwrap();
    assert_eq!(fs.readlink(s2.ino).unwrap(), long);
    // rename: into its own subdirectory, over a non-empty directory.
    let sub = fs.mkdir(&c, d.ino, b"sub", 0o755).unwrap();
    assert_eq!(
        fs.rename(ROOT, b"d", sub.ino, b"x", RenameFlags::default()),
        Err(Errno::EINVAL)
    );
    let e = fs.mkdir(&c, ROOT, b"e", 0o755).unwrap();
    assert_eq!(
        fs.rename(ROOT, b"e", ROOT, b"d", RenameFlags::default()),
        Err(Errno::ENOTEMPTY)
    );
    assert_eq!(
        fs.rename(ROOT, b"hard", ROOT, b"e", RenameFlags::default()),
        Err(Errno::EISDIR)
    );
    let noreplace = RenameFlags {
        noreplace: true,
        exchange: false,
    };
    assert_eq!(
        fs.rename(ROOT, b"s", ROOT, b"hard", noreplace),
        Err(Errno::EEXIST)
    );
    let exchange = RenameFlags {
        noreplace: false,
        exchange: true,
    };
    fs.rename(ROOT, b"e", d.ino, b"sub", exchange).unwrap();
    assert_eq!(fs.lookup(ROOT, b"e").unwrap().ino, sub.ino);
    assert_eq!(fs.lookup(d.ino, b"sub").unwrap().ino, e.ino);
    // Move a directory across parents: link counts follow.
    fs.rename(ROOT, b"e", d.ino, b"moved", RenameFlags::default())
        .unwrap();
    assert_eq!(fs.getattr(d.ino).unwrap().nlink, 4);
    // Over an empty directory.
    fs.rename(d.ino, b"moved", d.ino, b"sub", RenameFlags::default())
        .unwrap();
    assert_eq!(fs.getattr(d.ino).unwrap().nlink, 3);
    let names: Vec<Vec<u8>> = fs
        .readdir(d.ino, 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names.len(), 4, "., .., f, sub: {names:?}");
    fs.shutdown().unwrap();
    drop(fs);
    fsck_clean(&mem);
    let fs = mount(&mem);
    assert_eq!(fs.lookup(ROOT, b"hard").unwrap().nlink, 2);
    assert_eq!(
        fs.readlink(fs.lookup(ROOT, b"s2").unwrap().ino).unwrap(),
        long
    );
    drop(fs);
    fsck_clean(&mem);
}

#[test]
fn many_entries_readdir_and_unlink_all() {
    let mem = new_device(64 << 20);
    let fs = mount(&mem);
    let c = Ctx::root();
    for i in 0..3000 {
        let a = fs
            .create(&c, ROOT, format!("file-{i}").as_bytes(), 0o644)
            .unwrap();
        fs.release(a.ino).unwrap();
        fs.forget(a.ino, 1);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut cookie = 0;
    loop {
        let batch = fs.readdir(ROOT, cookie, 97).unwrap();
        if batch.is_empty() {
            break;
        }
        for e in &batch {
            assert!(seen.insert(e.name.clone()), "{:?} twice", e.name);
        }
        cookie = batch.last().unwrap().cookie;
    }
    assert_eq!(seen.len(), 3000 + 3);
    drop(fs);
    fsck_clean(&mem);
    let fs = mount(&mem);
    for i in 0..3000 {
        fs.unlink(ROOT, format!("file-{i}").as_bytes()).unwrap();
    }
    assert_eq!(fs.readdir(ROOT, 2, 10).unwrap().len(), 1, "lost+found");
    drop(fs);
    fsck_clean(&mem);
}

#[test]
fn file_data_against_a_model() {
    let mem = new_device(128 << 20);
    let mut fs = mount(&mem);
    let c = Ctx::root();
    let mut rng = Rng(42);
    let mut model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut inos = Vec::new();
    for i in 0..4 {
        let a = fs
            .create(&c, ROOT, format!("f{i}").as_bytes(), 0o644)
            .unwrap();
        inos.push(a.ino);
        model.insert(a.ino, Vec::new());
    }
    for step in 0..600 {
        let ino = inos[rng.below(inos.len() as u64) as usize];
        let m = model.get_mut(&ino).unwrap();
        match rng.below(10) {
            0..=4 => {
                let off = rng.below(3 << 20);
                let len = 1 + rng.below(300_000) as usize;
                let data: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
                assert_eq!(fs.write(&c, ino, off, &data, false).unwrap() as usize, len);
                let end = off as usize + len;
                if m.len() < end {
                    m.resize(end, 0);
                }
                m[off as usize..end].copy_from_slice(&data);
            }
            5 => {
                let size = rng.below(3 << 20);
                fs.setattr(
                    &c,
                    ino,
                    &SetAttr {
                        size: Some(size),
                        ..SetAttr::default()
                    },
                )
                .unwrap();
                m.resize(size as usize, 0);
            }
            6 => {
                let off = rng.below(3 << 20);
                let len = 1 + rng.below(200_000);
                let mode = match rng.below(3) {
                    0 => FallocMode::PunchHole,
                    1 => FallocMode::ZeroRange { keep_size: false },
                    _ => FallocMode::Allocate,
                };
                fs.fallocate(&c, ino, off, len, mode).unwrap();
                let end = (off + len) as usize;
                if mode != FallocMode::PunchHole && m.len() < end {
                    m.resize(end, 0);
                }
                if mode != FallocMode::Allocate {
                    let hi = end.min(m.len());
                    if (off as usize) < hi {
                        m[off as usize..hi].fill(0);
                    }
                }
            }
            7 => fs.fsync(ino, false).unwrap(),
            8 => {
                if step % 5 == 0 {
                    drop(fs);
                    fs = mount(&mem);
                }
            }
            _ => {
                let off = rng.below(m.len() as u64 + 10);
                let len = rng.below(500_000) as u32;
                let got = fs.read(&c, ino, off, len).unwrap();
                let lo = (off as usize).min(m.len());
                let hi = (off as usize + len as usize).min(m.len());
                assert_eq!(got, m[lo..hi], "step {step}: read {off}+{len} of {ino}");
            }
        }
        assert_eq!(fs.getattr(ino).unwrap().size, m.len() as u64, "step {step}");
    }
    for (&ino, m) in &model {
        assert_eq!(&read_all(&fs, ino), m);
    }
    drop(fs);
    fsck_clean(&mem);
    let fs = mount(&mem);
    for (&ino, m) in &model {
        assert_eq!(&read_all(&fs, ino), m, "after remount");
    }
    drop(fs);
    fsck_clean(&mem);
}

#[test]
fn seek_data_hole_and_sparse_files() {
    let mem = new_device(64 << 20);
    let fs = mount(&mem);
    let c = Ctx::root();
    let f = fs.create(&c, ROOT, b"sparse", 0o644).unwrap();
    fs.write(&c, f.ino, 1 << 20, b"hello", false).unwrap();
    assert_eq!(fs.lseek(f.ino, 0, SeekWhence::Data).unwrap(), 1 << 20);
    assert_eq!(fs.lseek(f.ino, 0, SeekWhence::Hole).unwrap(), 0);
    assert_eq!(
        fs.lseek(f.ino, 1 << 20, SeekWhence::Hole).unwrap(),
        (1 << 20) + 5
    );
    assert_eq!(
        fs.lseek(f.ino, 2 << 20, SeekWhence::Data),
        Err(Errno::ENXIO)
    );
    assert_eq!(fs.getattr(f.ino).unwrap().blocks, 8, "one 4 KiB block");
    let got = fs.read(&c, f.ino, 0, 4096).unwrap();
    assert!(got.iter().all(|&b| b == 0));
    drop(fs);
    fsck_clean(&mem);
}

#[test]
fn a_read_of_holes_is_said_not_written_and_data_always_wins() {
    let mem = new_device(64 << 20);
    let fs = mount(&mem);
    let c = Ctx::root();
    let f = fs.create(&c, ROOT, b"sparse", 0o644).unwrap();
    // Size 8 MiB: a hole; 4..5 MiB unwritten (fallocate); one page of
    // data at 2 MiB, written back; one dirty page over the hole at 6 MiB.
    let size = SetAttr {
        size: Some(8 << 20),
        ..SetAttr::default()
    };
    fs.setattr(&c, f.ino, &size).unwrap();
    fs.fallocate(&c, f.ino, 4 << 20, 1 << 20, FallocMode::KeepSize)
        .unwrap();
    fs.write(&c, f.ino, 2 << 20, &[1u8; 4096], false).unwrap();
    fs.fsync(f.ino, false).unwrap();
    fs.write(&c, f.ino, 6 << 20, &[2u8; 4096], false).unwrap();
    check_sparse_reads(&fs, f.ino);
    // Again with every page read from the device.
    drop(fs);
    let fs = mount(&mem);
    check_sparse_reads(&fs, f.ino);
    drop(fs);
    fsck_clean(&mem);
}

/// The reads of [`a_read_of_holes_is_said_not_written_and_data_always_wins`].
fn check_sparse_reads(fs: &Fs, ino: u64) {
    let c = Ctx::root();
    let mut buf = vec![9u8; 16];
    let mut read = |off: u64, len: u32| {
        (
            fs.read_into(&c, ino, off, len, &mut buf).unwrap(),
            buf.clone(),
        )
    };
    assert_eq!(
        read(0, 1 << 20),
        (Filled::Zeros(1 << 20), vec![]),
        "a hole: nothing written"
    );
    assert_eq!(
        read(4 << 20, 1 << 20),
        (Filled::Zeros(1 << 20), vec![]),
        "unwritten"
    );
    assert_eq!(
        read((8 << 20) - 100, 4096),
        (Filled::Zeros(100), vec![]),
        "to the end"
    );
    for (off, data) in [(2u64 << 20, 1u8), (6 << 20, 2)] {
        // The page alone, and the page inside a larger read of holes.
        assert_eq!(read(off, 4096), (Filled::Buffer, vec![data; 4096]));
        let mut want = vec![0u8; 16384];
        want[8192..12288].fill(data);
        assert_eq!(read(off - 8192, 16384), (Filled::Buffer, want));
    }
    // The plain read spells the zeros out.
    assert_eq!(fs.read(&c, ino, 1 << 20, 4096).unwrap(), vec![0u8; 4096]);
}

#[test]
fn enospc_then_room_again() {
    let mem = new_device(32 << 20);
    let fs = mount(&mem);
    let c = Ctx::root();
    let keep = fs.create(&c, ROOT, b"keep", 0o644).unwrap();
    fs.write(&c, keep.ino, 0, b"precious", false).unwrap();
    fs.fsync(keep.ino, false).unwrap();
    let big = fs.create(&c, ROOT, b"big", 0o644).unwrap();
    let chunk = vec![0xabu8; 1 << 20];
    let mut off = 0;
    let err = loop {
        match fs.write(&c, big.ino, off, &chunk, false) {
            Ok(n) => off += u64::from(n),
            Err(e) => break e,
        }
        if let Err(e) = fs.fsync(big.ino, false) {
            break e;
        }
        assert!(off < 64 << 20, "never ran out of space");
    };
    assert_eq!(err, Errno::ENOSPC);
    fs.release(big.ino).unwrap();
    fs.unlink(ROOT, b"big").unwrap();
    fs.forget(big.ino, 1);
    fs.syncfs().unwrap();
    let again = fs.create(&c, ROOT, b"again", 0o644).unwrap();
    fs.write(&c, again.ino, 0, &chunk, false).unwrap();
    fs.fsync(again.ino, false).unwrap();
    assert_eq!(fs.read(&c, keep.ino, 0, 100).unwrap(), b"precious");
    drop(fs);
    fsck_clean(&mem);
}

#[test]
fn unlinked_open_file_lives_until_release_or_next_mount() {
    const SIZE: u64 = 64 << 20;
    let lw = logged_device(SIZE);
    let mem = mkfs_on(lw.clone());
    let fs = mount(&mem);
    let c = Ctx::root();
    let f = fs.create(&c, ROOT, b"tmp", 0o644).unwrap();
    fs.write(&c, f.ino, 0, &vec![1u8; 100_000], false).unwrap();
    fs.unlink(ROOT, b"tmp").unwrap();
    assert_eq!(fs.read(&c, f.ino, 99_990, 100).unwrap(), vec![1u8; 10]);
    fs.syncfs().unwrap();
    let before = fs.statfs().unwrap().bfree;
    // A crash now: a copy of what the device holds, the file still open.
    let mem = crash_device(&lw, (lw.entries().len(), None), SIZE);
    let fs = mount(&mem);
    let after = fs.statfs().unwrap().bfree;
    assert!(
        after > before,
        "the orphan's blocks were freed: {before} -> {after}"
    );
    drop(fs);
    fsck_clean(&mem);
}

#[test]
fn a_rotten_data_block_reads_as_eio_never_as_data() {
    use biofs::format::image::Image;
    use std::io::IoSlice;
    let mem = new_device(64 << 20);
    let fs = mount(&mem);
    let c = Ctx::root();
    let f = fs.create(&c, ROOT, b"victim", 0o644).unwrap();
    fs.write(&c, f.ino, 0, &vec![0x5a; 3 * 4096], false)
        .unwrap();
    let g = fs.create(&c, ROOT, b"bystander", 0o644).unwrap();
    fs.write(&c, g.ino, 0, b"fine", false).unwrap();
    drop(fs);
    // Flip a byte of the victim's second block on the medium, under the
    // engine (its integrity tuple is not updated).
    let block = {
        let dev = dev_on(mem.clone());
        let img = Image::open(&dev, None).unwrap();
        let inode = img.inode(f.ino).unwrap().unwrap();
        let ext = img.extents(f.ino, &inode).extents;
        let b = Image::map(&ext, 1).unwrap();
        drop(img);
        dev.close().unwrap();
        b
    };
    let mut raw = vec![0u8; 512];
    let at = block * 4096 + 512;
    mem.read_at(&mut [std::io::IoSliceMut::new(&mut raw)], at)
        .unwrap();
    raw[100] ^= 0x10;
    mem.write_at(&[IoSlice::new(&raw)], at, false).unwrap();
    let fs = mount(&mem);
    assert_eq!(
        fs.read(&c, f.ino, 0, 4096).unwrap(),
        vec![0x5a; 4096],
        "block 0 is fine"
    );
    assert_eq!(fs.read(&c, f.ino, 4096, 4096), Err(Errno::EIO));
    assert_eq!(
        fs.read(&c, f.ino, 0, 3 * 4096),
        Err(Errno::EIO),
        "a read spanning it"
    );
    assert_eq!(fs.read(&c, g.ino, 0, 100).unwrap(), b"fine");
    drop(fs);
}

#[test]
fn many_orphans_released_in_any_order_leave_a_clean_list() {
    const SIZE: u64 = 64 << 20;
    let lw = logged_device(SIZE);
    let mem = mkfs_on(lw.clone());
    let fs = mount(&mem);
    let c = Ctx::root();
    let mut files = Vec::new();
    for i in 0..40 {
        let a = fs
            .create(&c, ROOT, format!("o{i}").as_bytes(), 0o644)
            .unwrap();
        fs.write(&c, a.ino, 0, &[i as u8; 5000], false).unwrap();
        files.push(a.ino);
    }
    for i in 0..40 {
        fs.unlink(ROOT, format!("o{i}").as_bytes()).unwrap();
    }
    // Releases re-examine inodes already on the list (the first unlinked
    // is its tail); forgets free them in a scattered order.
    let mut rng = Rng(7);
    for &ino in &files {
        fs.release(ino).unwrap();
    }
    let mut order = files.clone();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for &ino in &order[..25] {
        fs.forget(ino, 1);
    }
    fs.syncfs().unwrap();
    // A crash with 15 orphans still held: the next mount frees them.
    let copy = crash_device(&lw, (lw.entries().len(), None), SIZE);
    fsck_clean(&copy);
    let fs2 = mount(&copy);
    assert_eq!(
        fs2.readdir(ROOT, 2, 100).unwrap().len(),
        1,
        "lost+found only"
    );
    drop(fs2);
    fsck_clean(&copy);
    for &ino in &order[25..] {
        fs.forget(ino, 1);
    }
    drop(fs);
    fsck_clean(&mem);
}

#[test]
fn a_sequential_write_reaches_the_device_as_1_mib_requests() {
    let mem = new_device(256 << 20);
    // A page cache large enough that the 64 MiB stay under the background
    // writeback threshold (a quarter of it): the flusher would cut the
    // file at whatever page it had reached.
    let opts = MountOptions {
        cache_bytes: 512 << 20,
        ..MountOptions::default()
    };
    let fs = Fs::mount_dev(dev_on(mem.clone()), &opts).unwrap();
    let c = Ctx::root();
    let f = fs.create(&c, ROOT, b"seq", 0o644).unwrap();
    let before = fs.engine_stats();
    let chunk = vec![0x3c; 128 << 10];
    for k in 0..512u64 {
        fs.write(&c, f.ino, k * (128 << 10), &chunk, false).unwrap();
    }
    fs.fsync(f.ino, false).unwrap();
    let after = fs.engine_stats();
    // Bucket 8 is requests of more than 512 KiB, up to 1 MiB.
    let big = after.size_hist[8] - before.size_hist[8];
    let written = after.bytes_written - before.bytes_written;
    assert!(written >= 64 << 20, "{written} bytes written");
    assert!(
        big >= 64,
        "64 MiB went out as {big} requests of 1 MiB: {after}"
    );
    drop(fs);
    fsck_clean(&mem);
}

#[test]
fn a_readers_ionice_class_reaches_the_scheduler() {
    use biofs::block::ioc::SchedClass;
    let mem = new_device(64 << 20);
    let fs = mount(&mem);
    let c = Ctx::root();
    let f = fs.create(&c, ROOT, b"f", 0o644).unwrap();
    fs.write(&c, f.ino, 0, &vec![9u8; 1 << 20], false).unwrap();
    drop(fs);
    let fs = mount(&mem);
    let Ok(mut idle) = std::process::Command::new("ionice")
        .args(["-c", "3", "sleep", "30"])
        .spawn()
    else {
        println!("skipped: ionice (util-linux) is not installed");
        return;
    };
    // Let ionice set the class and exec sleep.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let who = Ctx {
        pid: idle.id(),
        ..Ctx::root()
    };
    let before = fs.engine_stats().class(SchedClass::Idle).submitted;
    assert_eq!(
        fs.read(&who, f.ino, 0, 1 << 20).unwrap(),
        vec![9u8; 1 << 20]
    );
    let after = fs.engine_stats().class(SchedClass::Idle).submitted;
    let _ = idle.kill();
    let _ = idle.wait();
    assert!(
        after > before,
        "the idle-class reader's bios were not idle class"
    );
    drop(fs);
}

/// A read's atime (Fs::accessed, relatime by default) is only a change of
/// the running transaction: no write reaches the device until the commit,
/// which then keeps it across a remount. Under noatime, and on a
/// read-only mount, nothing changes.
#[test]
fn an_atime_update_rides_in_the_next_commit() {
    let mem = new_device(64 << 20);
    // No background commit between the read and the count of writes.
    let quiet = MountOptions {
        commit_interval_secs: 3600,
        ..MountOptions::default()
    };
    let fs = Fs::mount_dev(dev_on(mem.clone()), &quiet).unwrap();
    let c = Ctx::root();
    let f = fs.create(&c, ROOT, b"f", 0o644).unwrap().ino;
    fs.write(&c, f, 0, b"data", false).unwrap();
    fs.release(f).unwrap();
    let old = Timespec {
        sec: 1_000_000_000,
        nsec: 0,
    };
    let set = SetAttr {
        atime: Some(TimeSet::At(old)),
        ..SetAttr::default()
    };
    fs.setattr(&c, f, &set).unwrap();
    fs.syncfs().unwrap();

    fs.set_atime(AtimeMode::NoAtime, false);
    assert!(!fs.atime_due(f));
    fs.accessed(f);
    assert_eq!(fs.getattr(f).unwrap().atime, old);

    fs.set_atime(AtimeMode::Relatime, false);
    assert!(fs.atime_due(f));
    let writes = fs.engine_stats().writes;
    fs.accessed(f);
    let now = fs.getattr(f).unwrap().atime;
    assert!(now > old, "relatime: an atime before mtime is updated");
    assert_eq!(fs.engine_stats().writes, writes, "the read wrote nothing");
    assert!(!fs.atime_due(f), "relatime: once is enough");
    drop(fs);

    let ro = MountOptions {
        read_only: true,
        ..MountOptions::default()
    };
    let fs = Fs::mount_dev(dev_on(mem.clone()), &ro).unwrap();
    assert_eq!(fs.getattr(f).unwrap().atime, now, "kept by the commit");
    fs.set_atime(AtimeMode::Strict, false);
    assert!(!fs.atime_due(f));
    fs.accessed(f);
    assert_eq!(fs.getattr(f).unwrap().atime, now, "never on ro");
    drop(fs);
    fsck_clean(&mem);
}
