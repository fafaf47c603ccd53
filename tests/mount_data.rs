//! File data through a mounted biofs, as a Linux user expects it of ext4:
//! reads and writes, holes, truncate, open flags, O_DIRECT, mmap, fsync,
//! fallocate, SEEK_DATA/SEEK_HOLE and the maximum file size.
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

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use common::check::{assert_file, data, expect_errno, ok};
use common::mount::Mounted;
use common::posix;
use common::rng::Rng;
use common::{assert_same, AlignedBuf};

const MIB: u64 = 1 << 20;

macro_rules! mount {
    () => {
        match Mounted::new() {
            Some(m) => m,
            None => return,
        }
    };
}

fn rw(path: &Path) -> File {
    ok(
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path),
        "open rw",
    )
}

/// Writes `buf` at `off` in both the file and its model.
fn write_both(f: &File, model: &mut Vec<u8>, off: u64, buf: &[u8]) {
    ok(f.write_all_at(buf, off), "pwrite");
    let end = off as usize + buf.len();
    if model.len() < end {
        model.resize(end, 0);
    }
    model[off as usize..end].copy_from_slice(buf);
}

fn read_all(f: &File) -> Vec<u8> {
    let len = ok(f.metadata(), "fstat").len() as usize;
    let mut v = vec![0u8; len];
    ok(f.read_exact_at(&mut v, 0), "pread all");
    v
}

fn blocks(path: &Path) -> u64 {
    ok(fs::metadata(path), "stat").blocks()
}

#[test]
fn write_then_read_back() {
    let m = mount!();
    let p = m.path("f");
    let d = data(1, 10_000);
    ok(fs::write(&p, &d), "write");
    assert_file(&p, &d);
    let f = rw(&p);
    let mut model = d.clone();
    write_both(&f, &mut model, 100, &data(2, 100));
    write_both(&f, &mut model, 9_990, &data(3, 30));
    assert_eq!(read_all(&f), model);
    assert_eq!(ok(f.metadata(), "fstat").len(), 10_020);
    let mut buf = [0u8; 64];
    assert_eq!(ok(f.read_at(&mut buf, 10_020), "pread at EOF"), 0);
    assert_eq!(ok(f.read_at(&mut buf, 1 << 30), "pread past EOF"), 0);
    assert_eq!(ok(f.read_at(&mut buf, 10_010), "pread to EOF"), 10);
    assert_eq!(&buf[..10], &model[10_010..]);
    // Sequential read and write through the file position.
    let mut g = ok(File::create(m.path("g")), "create g");
    for i in 0..10 {
        ok(g.write_all(&data(10 + i, 777)), "write");
    }
    drop(g);
    let mut got = Vec::new();
    ok(
        ok(File::open(m.path("g")), "open g").read_to_end(&mut got),
        "read g",
    );
    let want: Vec<u8> = (0..10).flat_map(|i| data(10 + i, 777)).collect();
    assert_same(&got, &want, "g");
    ok(File::create(m.path("empty")), "create empty");
    assert_file(&m.path("empty"), &[]);
}

#[test]
fn holes_read_as_zeros() {
    let m = mount!();
    let p = m.path("sparse");
    let f = rw(&p);
    let mut model = Vec::new();
    write_both(&f, &mut model, 0, &data(1, 4096));
    write_both(&f, &mut model, 10 * MIB + 3, &data(2, 5000));
    assert_eq!(ok(f.metadata(), "fstat").len(), 10 * MIB + 5003);
    assert_eq!(read_all(&f), model);
    ok(f.sync_all(), "fsync");
    assert!(
        blocks(&p) * 512 < MIB,
        "a 10 MiB file with 9 KiB of data should be sparse: {} sectors",
        blocks(&p)
    );
    // Filling part of the hole leaves the rest zero.
    write_both(&f, &mut model, 5 * MIB - 10, &data(3, 20));
    assert_eq!(read_all(&f), model);

    let big = m.path("truncated");
    let g = rw(&big);
    ok(g.set_len(1 << 30), "ftruncate 1 GiB");
    let mut rng = Rng(7);
    let mut buf = vec![0u8; 8192];
    for _ in 0..32 {
        let off = rng.below((1 << 30) - 8192);
        ok(g.read_exact_at(&mut buf, off), "read hole");
        assert!(buf.iter().all(|&b| b == 0), "hole at {off} not zero");
    }
    ok(g.sync_all(), "fsync");
    assert_eq!(blocks(&big), 0, "a file extended by truncate has no blocks");
}

#[test]
fn truncate_shrinks_and_extends() {
    let mut m = mount!();
    let p = m.path("t");
    let f = rw(&p);
    let mut model = Vec::new();
    write_both(&f, &mut model, 0, &data(1, 3 * 4096 + 500));
    let sizes: [u64; 11] = [
        5000,
        20_000,
        4096,
        3 * 4096,
        1,
        70_000,
        65_536,
        0,
        MIB + 1,
        3 * 4096 + 17,
        MIB - 1,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        ok(f.set_len(size), "ftruncate");
        model.resize(size as usize, 0);
        assert_eq!(ok(f.metadata(), "fstat").len(), size);
        assert_eq!(read_all(&f), model, "after truncate to {size}");
        // Data in the last partial block, to be cut by the next shrink.
        let off = size.saturating_sub(3000);
        write_both(&f, &mut model, off, &data(100 + i as u64, 3000));
        assert_eq!(read_all(&f), model, "after write at {off}");
    }
    ok(posix::truncate(&p, 12_345), "truncate(2)");
    model.resize(12_345, 0);
    ok(posix::truncate(&p, 50_000), "truncate(2)");
    model.resize(50_000, 0);
    assert_eq!(read_all(&f), model);
    drop(f);
    m.remount();
    assert_file(&m.path("t"), &model);
}

#[test]
fn writes_across_page_and_mib_boundaries() {
    let mut m = mount!();
    let p = m.path("b");
    let f = rw(&p);
    let mut model = Vec::new();
    let fixed: [(u64, usize); 8] = [
        (4095, 2),
        (4096 - 100, 8192 + 200),
        (MIB - 1, 2),
        (MIB - 5000, MIB as usize + 10_000),
        (2 * MIB - 4096, 4096),
        (2 * MIB + 1, 4095),
        (7 * 4096 + 1, MIB as usize),
        (3 * MIB - 1, 1),
    ];
    for (i, &(off, len)) in fixed.iter().enumerate() {
        write_both(&f, &mut model, off, &data(i as u64, len));
    }
    assert_eq!(read_all(&f), model);
    let mut rng = Rng(42);
    for i in 0..150u64 {
        // Around a page or MiB boundary, of up to 300 KiB.
        let boundary = if rng.chance(1, 3) {
            rng.below(4) * MIB
        } else {
            rng.below(3 * MIB / 4096) * 4096
        };
        let off = (boundary + rng.below(8192)).saturating_sub(4096);
        let len = rng.range(1, 300 << 10) as usize;
        write_both(&f, &mut model, off, &data(1000 + i, len));
        if i % 50 == 49 {
            assert_eq!(read_all(&f), model, "after {} random writes", i + 1);
        }
    }
    // Unaligned reads that cross boundaries.
    for _ in 0..100 {
        let off = rng.below(model.len() as u64 - 1);
        let len = (rng.range(1, 600 << 10) as usize).min(model.len() - off as usize);
        let mut buf = vec![0u8; len];
        ok(f.read_exact_at(&mut buf, off), "pread");
        assert!(
            buf == model[off as usize..off as usize + len],
            "read {len} at {off}"
        );
    }
    drop(f);
    m.remount();
    assert_file(&m.path("b"), &model);
}

#[test]
fn o_append_writes_at_the_end() {
    let m = mount!();
    let p = m.path("log");
    ok(fs::write(&p, b"hello"), "write");
    let mut a = ok(OpenOptions::new().append(true).open(&p), "open append");
    let mut b = ok(OpenOptions::new().append(true).open(&p), "open append");
    ok(a.write_all(b"abc"), "append");
    ok(a.seek(SeekFrom::Start(0)), "seek");
    ok(a.write_all(b"def"), "append after seek");
    ok(b.write_all(b"GHI"), "append from a second descriptor");
    ok(a.write_all(b"jkl"), "append");
    // Linux appends even for pwrite on an O_APPEND descriptor.
    ok(a.write_at(b"XY", 0), "pwrite with O_APPEND");
    assert_eq!(ok(a.stream_position(), "position"), 17, "pwrite leaves it");
    assert_file(&p, b"helloabcdefGHIjklXY");
}

#[test]
fn o_trunc_empties_the_file() {
    let m = mount!();
    let p = m.path("t");
    ok(fs::write(&p, data(1, 100_000)), "write");
    let mut f = ok(
        OpenOptions::new().write(true).truncate(true).open(&p),
        "open O_TRUNC",
    );
    let md = ok(fs::metadata(&p), "stat");
    assert_eq!(
        (md.len(), md.blocks()),
        (0, 0),
        "size and blocks after O_TRUNC"
    );
    ok(f.write_all(b"new"), "write");
    drop(f);
    assert_file(&p, b"new");
}

#[test]
fn o_excl_refuses_existing_names() {
    let m = mount!();
    let p = m.path("f");
    let excl = |p: &Path| OpenOptions::new().write(true).create_new(true).open(p);
    ok(excl(&p), "O_EXCL on a new name");
    let md = ok(fs::symlink_metadata(&p), "stat");
    assert!(md.file_type().is_file() && md.len() == 0);
    expect_errno(excl(&p), libc::EEXIST, "O_EXCL on a file");
    ok(fs::create_dir(m.path("d")), "mkdir");
    expect_errno(excl(&m.path("d")), libc::EEXIST, "O_EXCL on a directory");
    ok(
        std::os::unix::fs::symlink("target", m.path("dangling")),
        "symlink",
    );
    expect_errno(
        excl(&m.path("dangling")),
        libc::EEXIST,
        "O_EXCL on a dangling symlink",
    );
    assert!(
        !m.path("target").exists(),
        "O_EXCL must not create a symlink's target"
    );
}

#[test]
fn o_direct_reads_and_writes() {
    let m = mount!();
    let p = m.path("direct");
    let f = ok(
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_DIRECT)
            .open(&p),
        "open O_DIRECT",
    );
    let a = AlignedBuf::from_slice(&data(1, MIB as usize));
    let b = AlignedBuf::from_slice(&data(2, 256 << 10));
    ok(f.write_all_at(a.as_slice(), 0), "O_DIRECT write 1 MiB");
    ok(
        f.write_all_at(b.as_slice(), MIB + 4096),
        "O_DIRECT write 256 KiB",
    );
    let mut model = a.as_slice().to_vec();
    model.resize((MIB + 4096) as usize, 0);
    model.extend_from_slice(b.as_slice());
    let mut r = AlignedBuf::zeroed(model.len());
    ok(f.read_exact_at(r.as_mut_slice(), 0), "O_DIRECT read");
    assert_same(r.as_slice(), &model, "O_DIRECT read back");
    assert_file(&p, &model);
    // A buffered write is seen by a later O_DIRECT read.
    let g = rw(&p);
    ok(g.write_all_at(&data(3, 10_000), 5000), "buffered write");
    model[5000..15_000].copy_from_slice(&data(3, 10_000));
    let mut r = AlignedBuf::zeroed(64 << 10);
    ok(f.read_exact_at(r.as_mut_slice(), 0), "O_DIRECT read");
    assert_same(
        r.as_slice(),
        &model[..64 << 10],
        "O_DIRECT after buffered write",
    );
    // And an O_DIRECT write by a later buffered read.
    let c = AlignedBuf::from_slice(&data(4, 8192));
    ok(f.write_all_at(c.as_slice(), 8192), "O_DIRECT write");
    model[8192..16_384].copy_from_slice(c.as_slice());
    assert_eq!(read_all(&g), model);
}

#[test]
fn large_file_checksum() {
    let mut m = mount!();
    let p = m.path("large");
    const CHUNKS: u64 = 64;
    let mut want = xxhash_rust::xxh3::Xxh3::new();
    {
        let mut f = ok(File::create(&p), "create");
        for i in 0..CHUNKS {
            let d = data(i, MIB as usize);
            want.update(&d);
            ok(f.write_all(&d), "write 1 MiB");
        }
        ok(f.sync_all(), "fsync");
    }
    let want = want.digest();
    let digest = |p: &Path| {
        let mut f = ok(File::open(p), "open");
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut buf = vec![0u8; 333 << 10];
        let mut total = 0u64;
        loop {
            let n = ok(f.read(&mut buf), "read");
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            total += n as u64;
        }
        assert_eq!(total, CHUNKS * MIB, "bytes read back");
        h.digest()
    };
    assert_eq!(digest(&p), want, "checksum read back");
    m.remount();
    assert_eq!(digest(&m.path("large")), want, "checksum after remount");
}

#[test]
fn mmap_reads_file_data() {
    let m = mount!();
    let p = m.path("m");
    let mut model = data(1, 3 * 4096 + 123);
    ok(fs::write(&p, &model), "write");
    let f = rw(&p);
    let map = ok(posix::Mmap::map(&f, model.len(), 0, false), "mmap");
    assert_same(map.as_slice(), &model, "mapping");
    let second = ok(posix::Mmap::map(&f, 4096, 4096, false), "mmap at 4096");
    assert_same(
        second.as_slice(),
        &model[4096..8192],
        "mapping at an offset",
    );
    // A write(2) is seen through the mapping.
    write_both(&f, &mut model, 5000, &data(2, 100));
    assert_same(map.as_slice(), &model, "mapping after pwrite");
}

#[test]
fn mmap_shared_writes_reach_the_file() {
    let mut m = mount!();
    let p = m.path("m");
    let len = 3 * 4096 + 100;
    let want = data(9, len);
    {
        let f = rw(&p);
        ok(f.set_len(len as u64), "ftruncate");
        let mut map = ok(posix::Mmap::map(&f, len, 0, true), "mmap rw");
        map.as_mut_slice().copy_from_slice(&want);
        assert_eq!(read_all(&f), want, "read(2) sees the mapping's stores");
        ok(map.msync(), "msync");
        drop(map);
        assert_eq!(ok(f.metadata(), "fstat").len(), len as u64);
        assert_eq!(read_all(&f), want);
    }
    m.remount();
    assert_file(&m.path("m"), &want);
}

#[test]
fn fsync_and_fdatasync_succeed() {
    let m = mount!();
    let p = m.path("s");
    let mut f = ok(File::create(&p), "create");
    ok(f.write_all(&data(1, 50_000)), "write");
    ok(f.sync_all(), "fsync");
    ok(f.write_all(&data(2, 5000)), "write");
    ok(f.sync_data(), "fdatasync");
    ok(posix::syncfs(&f), "syncfs");
    ok(
        ok(File::open(&p), "open ro").sync_all(),
        "fsync on O_RDONLY",
    );
    let d = ok(File::open(m.root()), "open dir");
    ok(d.sync_all(), "fsync a directory");
    let want: Vec<u8> = [data(1, 50_000), data(2, 5000)].concat();
    assert_file(&p, &want);
}

#[test]
fn file_data_persists_across_remount() {
    let mut m = mount!();
    let sizes = [
        0usize,
        1,
        4095,
        4096,
        4097,
        65_543,
        MIB as usize + 1,
        3 << 20,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        ok(
            fs::write(m.path(&format!("f{i}")), data(i as u64, n)),
            "write",
        );
    }
    let sparse = m.path("sparse");
    let mut sparse_model = Vec::new();
    {
        let f = rw(&sparse);
        write_both(&f, &mut sparse_model, 0, &data(50, 4096));
        write_both(&f, &mut sparse_model, 5 * MIB, &data(51, 4096));
        let g = rw(&m.path("shrunk"));
        ok(g.write_all_at(&data(52, 200_000), 0), "write");
        ok(g.set_len(70_001), "ftruncate");
    }
    m.remount();
    for (i, &n) in sizes.iter().enumerate() {
        assert_file(&m.path(&format!("f{i}")), &data(i as u64, n));
    }
    assert_file(&m.path("sparse"), &sparse_model);
    assert!(blocks(&m.path("sparse")) * 512 < MIB, "still sparse");
    assert_file(&m.path("shrunk"), &data(52, 200_000)[..70_001]);
    // A second generation: append and overwrite, remount again.
    let mut g = ok(OpenOptions::new().append(true).open(m.path("f6")), "open");
    ok(g.write_all(&data(60, 3000)), "append");
    drop(g);
    ok(fs::write(m.path("f2"), data(61, 10)), "overwrite");
    m.remount();
    assert_file(
        &m.path("f6"),
        &[data(6, MIB as usize + 1), data(60, 3000)].concat(),
    );
    assert_file(&m.path("f2"), &data(61, 10));
}

#[test]
fn fallocate_allocates_and_extends() {
    let m = mount!();
    let p = m.path("fa");
    let f = rw(&p);
    ok(posix::fallocate(&f, 0, 0, MIB), "fallocate 1 MiB");
    assert_eq!(ok(f.metadata(), "fstat").len(), MIB);
    assert!(blocks(&p) >= MIB / 512, "allocated: {} sectors", blocks(&p));
    assert!(
        read_all(&f).iter().all(|&b| b == 0),
        "allocated space reads zero"
    );
    ok(posix::fallocate(&f, 0, MIB / 2, MIB), "fallocate past EOF");
    assert_eq!(ok(f.metadata(), "fstat").len(), 3 * MIB / 2);
    let mut model = vec![0u8; 3 * MIB as usize / 2];
    write_both(&f, &mut model, 100 << 10, &data(1, 300_000));
    // Allocating over data keeps it.
    ok(posix::fallocate(&f, 0, 0, 2 * MIB), "fallocate over data");
    model.resize(2 * MIB as usize, 0);
    assert_eq!(read_all(&f), model);
    expect_errno(
        posix::fallocate(&f, 0, 0, 0),
        libc::EINVAL,
        "fallocate of 0 bytes",
    );
}

#[test]
fn fallocate_keep_size() {
    let m = mount!();
    let p = m.path("ks");
    let f = rw(&p);
    let mut model = Vec::new();
    write_both(&f, &mut model, 0, &data(1, 10_000));
    let before = blocks(&p);
    ok(
        posix::fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 8192, MIB),
        "fallocate KEEP_SIZE",
    );
    assert_eq!(ok(f.metadata(), "fstat").len(), 10_000, "size kept");
    assert!(
        blocks(&p) >= before + (MIB - 16384) / 512,
        "preallocated: {} sectors, {before} before",
        blocks(&p)
    );
    assert_eq!(read_all(&f), model);
    // Preallocated space beyond the old size reads zero once the file
    // grows into it.
    ok(f.set_len(600 << 10), "ftruncate into the preallocation");
    model.resize(600 << 10, 0);
    assert_eq!(read_all(&f), model);
    write_both(&f, &mut model, (700 << 10) - 10, &data(2, 5000));
    assert_eq!(read_all(&f), model);
}

#[test]
fn fallocate_punch_hole() {
    let m = mount!();
    let p = m.path("ph");
    let f = rw(&p);
    let mut model = Vec::new();
    write_both(&f, &mut model, 0, &data(1, MIB as usize));
    ok(f.sync_all(), "fsync");
    let before = blocks(&p);
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // Bytes 12388..32388: partial blocks 3 and 7, whole blocks 4..=6.
    ok(posix::fallocate(&f, punch, 3 * 4096 + 100, 20_000), "punch");
    model[3 * 4096 + 100..3 * 4096 + 20_100].fill(0);
    assert_eq!(ok(f.metadata(), "fstat").len(), MIB, "size kept");
    assert_eq!(read_all(&f), model);
    assert!(
        blocks(&p) <= before - 24,
        "3 blocks freed: {} of {before}",
        blocks(&p)
    );
    assert_eq!(
        ok(posix::lseek(&f, 0, libc::SEEK_HOLE), "SEEK_HOLE"),
        4 * 4096
    );
    assert_eq!(
        ok(posix::lseek(&f, 4 * 4096, libc::SEEK_DATA), "SEEK_DATA"),
        7 * 4096
    );
    ok(
        posix::fallocate(&f, punch, MIB / 2, 256 << 10),
        "punch 256 KiB",
    );
    model[MIB as usize / 2..(MIB as usize / 2) + (256 << 10)].fill(0);
    assert!(blocks(&p) <= before - 24 - 512, "256 KiB freed");
    ok(
        posix::fallocate(&f, punch, MIB - 100, 10_000),
        "punch across EOF",
    );
    model[MIB as usize - 100..].fill(0);
    assert_eq!(ok(f.metadata(), "fstat").len(), MIB, "size kept");
    assert_eq!(read_all(&f), model);
    expect_errno(
        posix::fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE, 0, 4096),
        libc::EOPNOTSUPP,
        "PUNCH_HOLE without KEEP_SIZE",
    );
}

#[test]
fn fallocate_zero_range() {
    let mut m = mount!();
    let p = m.path("zr");
    let f = rw(&p);
    let mut model = Vec::new();
    write_both(&f, &mut model, 0, &data(1, 256 << 10));
    let zero = libc::FALLOC_FL_ZERO_RANGE;
    ok(
        posix::fallocate(&f, zero, 1000, 50_000),
        "ZERO_RANGE unaligned",
    );
    model[1000..51_000].fill(0);
    ok(
        posix::fallocate(&f, zero, 64 << 10, 64 << 10),
        "ZERO_RANGE aligned",
    );
    model[64 << 10..128 << 10].fill(0);
    assert_eq!(ok(f.metadata(), "fstat").len(), 256 << 10);
    assert_eq!(read_all(&f), model);
    ok(
        posix::fallocate(&f, zero | libc::FALLOC_FL_KEEP_SIZE, 250 << 10, 20 << 10),
        "ZERO_RANGE KEEP_SIZE past EOF",
    );
    model[250 << 10..].fill(0);
    assert_eq!(ok(f.metadata(), "fstat").len(), 256 << 10, "KEEP_SIZE");
    ok(
        posix::fallocate(&f, zero, 250 << 10, 20 << 10),
        "ZERO_RANGE past EOF",
    );
    model.resize(270 << 10, 0);
    assert_eq!(ok(f.metadata(), "fstat").len(), 270 << 10, "extended");
    assert_eq!(read_all(&f), model);
    drop(f);
    m.remount();
    assert_file(&m.path("zr"), &model);
}

/// Data at [0, 64K) and [1M, 1M+4K), size 2M.
fn sparse_layout(f: &File) {
    ok(f.write_all_at(&data(1, 64 << 10), 0), "write");
    ok(f.write_all_at(&data(2, 4096), MIB), "write");
    ok(f.set_len(2 * MIB), "ftruncate");
}

fn check_sparse_layout(f: &File) {
    let seek = |off, whence, what| ok(posix::lseek(f, off, whence), what);
    assert_eq!(seek(0, libc::SEEK_DATA, "SEEK_DATA 0"), 0);
    assert_eq!(seek(0, libc::SEEK_HOLE, "SEEK_HOLE 0"), 64 << 10);
    assert_eq!(seek(1000, libc::SEEK_HOLE, "SEEK_HOLE 1000"), 64 << 10);
    assert_eq!(seek(64 << 10, libc::SEEK_DATA, "SEEK_DATA 64K"), MIB);
    assert_eq!(seek(100 << 10, libc::SEEK_DATA, "SEEK_DATA 100K"), MIB);
    assert_eq!(seek(MIB, libc::SEEK_HOLE, "SEEK_HOLE 1M"), MIB + 4096);
    assert_eq!(
        seek(MIB + 4096, libc::SEEK_HOLE, "SEEK_HOLE 1M+4K"),
        MIB + 4096
    );
    expect_errno(
        posix::lseek(f, MIB + 4096, libc::SEEK_DATA),
        libc::ENXIO,
        "SEEK_DATA in the trailing hole",
    );
    assert_eq!(
        seek(2 * MIB - 1, libc::SEEK_HOLE, "SEEK_HOLE last byte"),
        2 * MIB - 1
    );
}

#[test]
fn seek_data_and_hole() {
    let mut m = mount!();
    let f = rw(&m.path("s"));
    sparse_layout(&f);
    check_sparse_layout(&f);
    drop(f);
    m.remount();
    check_sparse_layout(&rw(&m.path("s")));
}

#[test]
fn seek_data_and_hole_past_eof_is_enxio() {
    let m = mount!();
    let empty = rw(&m.path("empty"));
    expect_errno(
        posix::lseek(&empty, 0, libc::SEEK_DATA),
        libc::ENXIO,
        "SEEK_DATA empty",
    );
    expect_errno(
        posix::lseek(&empty, 0, libc::SEEK_HOLE),
        libc::ENXIO,
        "SEEK_HOLE empty",
    );
    let f = rw(&m.path("f"));
    ok(f.write_all_at(&data(1, 10_000), 0), "write");
    assert_eq!(
        ok(posix::lseek(&f, 0, libc::SEEK_HOLE), "SEEK_HOLE"),
        10_000,
        "EOF is a hole"
    );
    assert_eq!(
        ok(posix::lseek(&f, 9999, libc::SEEK_HOLE), "SEEK_HOLE"),
        10_000
    );
    assert_eq!(
        ok(posix::lseek(&f, 9999, libc::SEEK_DATA), "SEEK_DATA"),
        9999
    );
    for off in [10_000, 10_001, 1 << 40] {
        expect_errno(
            posix::lseek(&f, off, libc::SEEK_DATA),
            libc::ENXIO,
            "SEEK_DATA at/past EOF",
        );
        expect_errno(
            posix::lseek(&f, off, libc::SEEK_HOLE),
            libc::ENXIO,
            "SEEK_HOLE at/past EOF",
        );
    }
}

/// biofs maps logical blocks below 2^32 (16 TiB); ext4 with 4 KiB blocks
/// stops one block short of that. Only what both agree on is checked.
///
/// The write past the limit is O_DIRECT: the kernel knows no FUSE
/// filesystem's maximum size (its `s_maxbytes` is `MAX_LFS_FILESIZE`), so
/// with the writeback cache a buffered write there lands in the page cache
/// and only its writeback can fail. An O_DIRECT write and a truncate reach
/// the filesystem in every cache mode.
#[test]
fn writes_past_the_maximum_file_size_fail_with_efbig() {
    let m = mount!();
    if !m.is_biofs() && m.fs_type() != libc::EXT4_SUPER_MAGIC {
        println!("skipped: the 16 TiB limit is biofs's and ext4's, not this filesystem's");
        return;
    }
    const LIMIT: u64 = 1 << 44;
    let p = m.path("huge");
    let f = rw(&p);
    ok(
        f.write_all_at(b"z", LIMIT - 4097),
        "write in the last block ext4 allows",
    );
    assert_eq!(ok(f.metadata(), "fstat").len(), LIMIT - 4096);
    let direct = ok(
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&p),
        "open O_DIRECT",
    );
    let page = AlignedBuf::from_slice(&data(1, 4096));
    expect_errno(
        direct.write_at(page.as_slice(), LIMIT),
        libc::EFBIG,
        "O_DIRECT write at 16 TiB",
    );
    expect_errno(
        f.set_len(LIMIT + 4096),
        libc::EFBIG,
        "ftruncate past 16 TiB",
    );
    assert_eq!(
        ok(f.metadata(), "fstat").len(),
        LIMIT - 4096,
        "size unchanged"
    );
    let mut b = [0u8; 2];
    assert_eq!(ok(f.read_at(&mut b, LIMIT - 4098), "read"), 2);
    assert_eq!(b, [0, b'z']);
    assert_eq!(
        ok(posix::lseek(&f, 0, libc::SEEK_DATA), "SEEK_DATA"),
        LIMIT - 8192,
        "the only data block"
    );
    ok(f.sync_all(), "fsync");
}
