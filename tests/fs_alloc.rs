//! Block and inode allocation (`fs::alloc`) inside journaled transactions:
//! no block or inode handed out twice, lazy groups initialised on first
//! use, blocks freed in a transaction not reused before it commits, bitmaps
//! and counts that decode and add up, and, once everything is freed again,
//! a filesystem fsck finds nothing wrong with.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

use std::collections::HashSet;
use std::sync::Arc;

use biofs::block::backend::{BlockBackend, MemBackend};
use biofs::block::{Checksum, IntegrityProfile, IntegrityStore};
use biofs::format::image::Image;
use biofs::format::inode::Timespec;
use biofs::format::mkfs::{make_fs, InodeCount, MkfsParams};
use biofs::format::superblock::Superblock;
use biofs::fs::alloc::Allocator;
use biofs::fs::txn::{InTxn, Journaled, Txn};

mod common;
use common::fsimage::{check_quietly, dev_on};

#[test]
fn allocations_are_unique_lazy_delayed_and_leave_a_clean_filesystem() {
    let mem: Arc<dyn BlockBackend> = Arc::new(MemBackend::new(400 << 20));
    IntegrityStore::format(
        &*mem,
        IntegrityProfile::new(4096, Checksum::Crc32c).unwrap(),
    )
    .unwrap();
    let dev = Arc::new(dev_on(mem));
    let mut p = MkfsParams::new([8; 16], 3, Timespec { sec: 1, nsec: 0 });
    p.inodes = InodeCount::Total(3000);
    let sb = make_fs(&dev, &p).unwrap();
    let geo = sb.geometry().unwrap();
    assert!(geo.groups >= 3);
    let sb = Superblock::decode(&dev.read_block(0).unwrap(), 0).unwrap();
    let mut j = Journaled::open(dev.clone(), sb.clone()).unwrap();
    let mut a = Allocator::new(geo, sb.seed());

    // Runs of blocks and inodes, in a few transactions.
    let mut runs: Vec<(u64, u32)> = Vec::new();
    let mut used = HashSet::new();
    let mut inodes = Vec::new();
    for t in 0..4 {
        let mut txn = Txn::default();
        for _ in 0..25 {
            let (s, len) = a
                .alloc_blocks(&mut InTxn::new(&j, &mut txn), 0, 37)
                .unwrap();
            assert_eq!(len, 37, "an empty filesystem has room for whole runs");
            for b in s..s + u64::from(len) {
                assert!(geo.is_data_block(b), "block {b} is not a data block");
                assert!(used.insert(b), "block {b} handed out twice");
            }
            runs.push((s, len));
        }
        for i in 0..60 {
            let ino = a
                .alloc_inode(&mut InTxn::new(&j, &mut txn), t, i % 10 == 0)
                .unwrap();
            assert!(
                ino > 2 && !inodes.iter().any(|&(x, _)| x == ino),
                "inode {ino} twice"
            );
            inodes.push((ino, i % 10 == 0));
        }
        j.commit(txn).unwrap();
        a.committed();
    }
    // A run longer than a group: the longest a group has.
    let mut txn = Txn::default();
    let (s, len) = a
        .alloc_blocks(&mut InTxn::new(&j, &mut txn), geo.group_start(1), 40_000)
        .unwrap();
    assert!(len > 30_000 && len <= geo.group_blocks(1), "{len}");
    assert_eq!(geo.block_group(s).map(|x| x.0), Some(1));
    for b in s..s + u64::from(len) {
        assert!(used.insert(b), "block {b} handed out twice");
    }
    runs.push((s, len));
    j.commit(txn).unwrap();
    a.committed();
    j.checkpoint().unwrap();

    // What is on the device decodes and agrees.
    {
        let img = Image::open(&dev, None).unwrap();
        assert!(
            !img.desc(1).unwrap().block_uninit(),
            "group 1 was initialised"
        );
        for &b in &used {
            let (g, i) = geo.block_group(b).unwrap();
            let d = img.desc(g).unwrap();
            let map = img.block_bitmap(g, &d).unwrap();
            assert!(
                biofs::format::bitmap::test(&map, i as usize),
                "block {b} not marked"
            );
        }
        for &(ino, _) in &inodes {
            let (g, i) = geo.ino_group(ino);
            let d = img.desc(g).unwrap();
            let map = img.inode_bitmap(g, &d).unwrap();
            assert!(biofs::format::bitmap::test(&map, i as usize));
            assert!(d.itable_unused_from > i);
            // Its table slot reads as free (zeroed when the group's table
            // grew), so the caller can write the inode.
            assert!(img.inode(ino).unwrap().is_none());
        }
    }

    // Delayed reuse: blocks freed in a transaction are not handed out by it.
    let mut txn = Txn::default();
    let freed: Vec<(u64, u32)> = runs.drain(..50).collect();
    for &(s, len) in &freed {
        a.free_blocks(&mut InTxn::new(&j, &mut txn), s, len)
            .unwrap();
    }
    let freed_set: HashSet<u64> = freed
        .iter()
        .flat_map(|&(s, l)| s..s + u64::from(l))
        .collect();
    for _ in 0..40 {
        let (s, len) = a
            .alloc_blocks(&mut InTxn::new(&j, &mut txn), 0, 37)
            .unwrap();
        for b in s..s + u64::from(len) {
            assert!(
                !freed_set.contains(&b),
                "block {b} reused before its free committed"
            );
        }
        runs.push((s, len));
    }
    assert!(
        a.free_blocks(&mut InTxn::new(&j, &mut txn), freed[0].0, 1)
            .is_err(),
        "double free accepted"
    );
    j.commit(txn).unwrap();
    a.committed();
    let mut txn = Txn::default();
    let (s, _) = a
        .alloc_blocks(&mut InTxn::new(&j, &mut txn), freed[0].0, 37)
        .unwrap();
    assert!(
        freed_set.contains(&s),
        "after the commit the freed blocks are reused first near the goal"
    );
    runs.push((s, 37));
    j.commit(txn).unwrap();
    a.committed();

    // Free everything; the filesystem is as mkfs left it, as fsck sees it.
    let mut txn = Txn::default();
    for &(s, len) in &runs {
        a.free_blocks(&mut InTxn::new(&j, &mut txn), s, len)
            .unwrap();
    }
    for &(ino, dir) in &inodes {
        a.free_inode(&mut InTxn::new(&j, &mut txn), ino, dir)
            .unwrap();
    }
    j.commit(txn).unwrap();
    j.close().unwrap();
    drop(j);
    let (problems, said) = check_quietly(&dev);
    assert_eq!(problems, 0, "{said:?}");
    Arc::into_inner(dev).unwrap().close().unwrap();
}

/// A goal near the end of a group with only a short free tail after it
/// gets a whole run earlier in the same group, not a short one or one in
/// the next group.
#[test]
fn a_goal_near_a_groups_end_still_gets_a_whole_run_in_that_group() {
    let mem: Arc<dyn BlockBackend> = Arc::new(MemBackend::new(400 << 20));
    let dev = Arc::new(dev_on(mem));
    let sb = make_fs(
        &dev,
        &MkfsParams::new([8; 16], 3, Timespec { sec: 1, nsec: 0 }),
    )
    .unwrap();
    let geo = sb.geometry().unwrap();
    let mut j = Journaled::open(dev.clone(), sb.clone()).unwrap();
    let mut a = Allocator::new(geo, sb.seed());
    let mut txn = Txn::default();
    let goal = geo.group_start(0) + u64::from(geo.group_blocks(0)) - 5;
    let (s, len) = a
        .alloc_blocks(&mut InTxn::new(&j, &mut txn), goal, 100)
        .unwrap();
    assert_eq!(len, 100);
    assert_eq!(geo.block_group(s).map(|x| x.0), Some(0), "run at {s}");
    j.commit(txn).unwrap();
    j.close().unwrap();
    drop(j);
    Arc::into_inner(dev).unwrap().close().unwrap();
}
