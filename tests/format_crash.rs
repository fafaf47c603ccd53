//! The journal protocol of docs/format.md under crashes: two transactions
//! done as the filesystem will do them (ordered data written and flushed
//! first, then `Journal::commit`, then a checkpoint to the homes, then
//! `Journal::reset`), recorded by the log-writes device. Every prefix of the
//! log, and every subset of the writes after each flush point, is a crash
//! state; each must recover (the engine's tuples, then journal replay by
//! fsck) to a filesystem fsck finds consistent, with each transaction
//! either wholly there or wholly absent, and no integrity error.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

use biofs::format::bitmap;
use biofs::format::builder::{Builder, ROOT};
use biofs::format::dev::Dev;
use biofs::format::dir::{DirEntry, DirNode};
use biofs::format::extent::{Extent, ExtentNode};
use biofs::format::fsck::{fsck, FsckOptions, Mode};
use biofs::format::group::bitmap_csum;
use biofs::format::image::Image;
use biofs::format::inode::{InodeData, Timespec};
use biofs::format::journal::Journal;
use biofs::format::mkfs::{make_fs, InodeCount, MkfsParams};
use biofs::format::{BLOCK_SIZE, INODE_SIZE};

mod common;
use common::fsimage::{crash_device, crash_states, dev_on, logged_device};

const SIZE: u64 = 24 << 20;

fn t0() -> Timespec {
    Timespec { sec: 1, nsec: 0 }
}

/// The inode of `name` in the root directory.
fn in_root(img: &Image<'_>, name: &[u8]) -> Option<u64> {
    let root = img.inode(ROOT).unwrap().unwrap();
    let ext = img.extents(ROOT, &root).extents;
    img.dir_lookup(ROOT, &ext, name).unwrap().0.map(|e| e.ino)
}

/// Transaction 1: rename /a.txt to /b.txt and chmod it 0600 (the root's
/// leaf and a.txt's inode block change together).
fn txn_rename(dev: &Dev) {
    let img = Image::open(dev, None).unwrap();
    let a = in_root(&img, b"a.txt").unwrap();
    let root = img.inode(ROOT).unwrap().unwrap();
    let ext = img.extents(ROOT, &root).extents;
    let mut es = img.dir_entries(ROOT, &root, &ext).entries;
    let e = es.iter_mut().find(|e| e.name == b"a.txt").unwrap();
    *e = DirEntry::new(img.sb.hash_seed, b"b.txt", e.ino, e.ftype);
    es.sort_by(|x, y| x.key().cmp(&y.key()));
    let leaf_block = ext[0].physical;
    let leaf = DirNode::Leaf {
        next: 0,
        entries: es,
    }
    .encode(img.seed, leaf_block, ROOT);
    let mut inode = img.inode(a).unwrap().unwrap();
    inode.mode = (inode.mode & !0o777) | 0o600;
    let (ib, mut itable, off) = img.inode_block(a).unwrap();
    inode.encode(img.seed, a, &mut itable[off..off + INODE_SIZE]);
    let mut j = Journal::open(dev, &img.sb).unwrap();
    let blocks = vec![(leaf_block, leaf), (ib, itable)];
    j.commit(dev, &blocks, &[]).unwrap();
    checkpoint(dev, &mut j, &blocks);
}

/// Transaction 2: append 8 blocks to /big.bin: data written and flushed
/// first (ordered data), then the inode, bitmap and descriptor together.
fn txn_append(dev: &Dev) {
    let img = Image::open(dev, None).unwrap();
    let big = in_root(&img, b"big.bin").unwrap();
    let mut inode = img.inode(big).unwrap().unwrap();
    let d = img.desc(0).unwrap();
    let mut bm = img.block_bitmap(0, &d).unwrap();
    let start = img.geo.group_start(0);
    let (run, len) = bitmap::find_free_run(
        &bm,
        img.geo.group_meta_blocks() as usize,
        img.geo.group_blocks(0) as usize,
        8,
    )
    .unwrap();
    assert_eq!(len, 8);
    let phys = start + run as u64;
    // Ordered data: the new blocks are on stable storage before the commit.
    let data: Vec<Vec<u8>> = (0..8u8).map(|i| vec![0xC0 | i; BLOCK_SIZE]).collect();
    let refs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
    dev.write_blocks(phys, &refs, false).unwrap();
    dev.flush().unwrap();
    let old_blocks = inode.size.div_ceil(BLOCK_SIZE as u64);
    let InodeData::Extents(ExtentNode::Leaf(es)) = &mut inode.data else {
        panic!("big.bin's extents are not inline")
    };
    es.push(Extent {
        logical: old_blocks,
        physical: phys,
        len: 8,
        unwritten: false,
    });
    inode.size = (old_blocks + 8) * BLOCK_SIZE as u64;
    inode.blocks += 8;
    let (ib, mut itable, off) = img.inode_block(big).unwrap();
    inode.encode(img.seed, big, &mut itable[off..off + INODE_SIZE]);
    bitmap::set_range(&mut bm, run, 8);
    let mut d2 = d;
    d2.free_blocks -= 8;
    d2.block_bitmap_csum = bitmap_csum(img.seed, img.geo.block_bitmap(0), &bm);
    let (gb, goff) = img.geo.desc_location(0);
    let mut gdt = img.read("gdt", gb).unwrap();
    d2.encode(img.seed, 0, &mut gdt[goff..]);
    let blocks = vec![(ib, itable), (img.geo.block_bitmap(0), bm), (gb, gdt)];
    let mut j = Journal::open(dev, &img.sb).unwrap();
    j.commit(dev, &blocks, &[]).unwrap();
    checkpoint(dev, &mut j, &blocks);
}

fn checkpoint(dev: &Dev, j: &mut Journal, blocks: &[(u64, Vec<u8>)]) {
    for (b, data) in blocks {
        dev.write_block(*b, data).unwrap();
    }
    dev.flush().unwrap();
    j.reset(dev).unwrap();
}

/// What a recovered state holds: (a.txt present, b.txt present, that
/// file's permissions, big.bin's size).
fn state(dev: &Dev) -> (bool, bool, u32, u64) {
    let img = Image::open(dev, None).unwrap();
    let find = |n: &[u8]| in_root(&img, n);
    let big = find(b"big.bin").unwrap();
    let size = img.inode(big).unwrap().unwrap().size;
    let (a, b) = (find(b"a.txt"), find(b"b.txt"));
    let f = a.or(b).unwrap();
    let mode = img.inode(f).unwrap().unwrap().mode & 0o777;
    (a.is_some(), b.is_some(), mode, size)
}

#[test]
fn every_crash_state_recovers_to_a_whole_transaction() {
    let lw = logged_device(SIZE);
    {
        let dev = dev_on(lw.clone());
        let mut p = MkfsParams::new([3; 16], 77, t0());
        p.inodes = InodeCount::Total(256);
        make_fs(&dev, &p).unwrap();
        let mut b = Builder::open(&dev, t0()).unwrap();
        b.create_file(ROOT, "a.txt", 0o644, b"hello").unwrap();
        b.create_file(ROOT, "big.bin", 0o644, &vec![7u8; 3 * BLOCK_SIZE])
            .unwrap();
        b.finish().unwrap();
        dev.close().unwrap();
    }
    let base = lw.mark("populated");
    {
        let dev = dev_on(lw.clone());
        txn_rename(&dev);
        txn_append(&dev);
        dev.close().unwrap();
    }
    let before = (true, false, 0o644, 3 * BLOCK_SIZE as u64);
    let after1 = (false, true, 0o600, 3 * BLOCK_SIZE as u64);
    let after2 = (false, true, 0o600, 11 * BLOCK_SIZE as u64);
    // Crash states: every prefix, and at each flush point every single
    // write after it dropped (a volatile cache losing one write).
    let mut checked = 0;
    for (n, drop) in crash_states(&lw, base) {
        let target = crash_device(&lw, (n, drop), SIZE);
        let dev = dev_on(target);
        let opts = FsckOptions {
            mode: Mode::Yes,
            force: true,
            verbose: false,
            scrub: false,
            backup: None,
        };
        let mut log_lines = Vec::new();
        let r = fsck(&dev, &opts, &mut |m| log_lines.push(m.to_string())).unwrap();
        assert_eq!(r.problems, 0, "crash state ({n}, {drop:?}): {log_lines:?}");
        let s = state(&dev);
        assert!(
            s == before || s == after1 || s == after2,
            "crash state ({n}, {drop:?}) is half a transaction: {s:?}"
        );
        if s == after2 {
            // The appended blocks hold what was written, never stale bytes.
            let img = Image::open(&dev, None).unwrap();
            let big = in_root(&img, b"big.bin").unwrap();
            let inode = img.inode(big).unwrap().unwrap();
            let es = img.extents(big, &inode).extents;
            for l in 3..11u64 {
                let data = dev.read_block(Image::map(&es, l).unwrap()).unwrap();
                assert!(
                    data.iter().all(|&x| x == 0xC0 | (l - 3) as u8),
                    "crash state ({n}, {drop:?}): block {l} stale"
                );
            }
        }
        dev.close().unwrap();
        checked += 1;
    }
    println!("{checked} crash states checked");
    assert!(checked > 20);
}
