//! Metadata transactions (`fs::txn`) under crashes: a run of transactions,
//! each giving a group of blocks one value together, with checkpoints in
//! between, recorded by the log-writes device. In every crash state (each
//! log prefix, and each write lost after each flush point), opening again
//! (engine recovery, then journal replay) must show every group whole at
//! one transaction's value, no older than the last commit that returned
//! before the crash, and fsck must find nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

use std::sync::Arc;

use biofs::format::dev::Dev;
use biofs::format::image::Image;
use biofs::format::inode::Timespec;
use biofs::format::mkfs::{make_fs, InodeCount, MkfsParams};
use biofs::format::superblock::{Superblock, INCOMPAT_RECOVER, STATE_CLEAN};
use biofs::format::BLOCK_SIZE;
use biofs::fs::txn::{Journaled, Txn};

mod common;
use common::fsimage::{check_quietly, crash_device, crash_states, dev_on, logged_device};

const SIZE: u64 = 16 << 20;
const TXNS: u64 = 9;

fn image(v: u64) -> Vec<u8> {
    let mut d = vec![0u8; BLOCK_SIZE];
    for c in d.chunks_mut(8) {
        c.copy_from_slice(&v.to_le_bytes());
    }
    d
}

fn value(d: &[u8]) -> Option<u64> {
    let v = u64::from_le_bytes(d[..8].try_into().unwrap());
    d.chunks(8).all(|c| c == v.to_le_bytes()).then_some(v)
}

fn superblock(dev: &Dev) -> Superblock {
    Superblock::decode(&dev.read_block(0).unwrap(), 0).unwrap()
}

#[test]
fn every_crash_state_shows_whole_transactions() {
    let lw = logged_device(SIZE);
    // Group A: 6 blocks every transaction writes; group B: 3 blocks only
    // even transactions write. Free data blocks of group 0 stand in for
    // metadata (their contents are nobody's business to fsck).
    let (a, b) = {
        let dev = Arc::new(dev_on(lw.clone()));
        let mut p = MkfsParams::new([5; 16], 9, Timespec { sec: 1, nsec: 0 });
        p.inodes = InodeCount::Total(64);
        p.journal_blocks = Some(256);
        let sb = make_fs(&dev, &p).unwrap();
        let g = sb.geometry().unwrap();
        let first = g.group_start(0) + u64::from(g.group_meta_blocks()) + 50;
        let a: Vec<u64> = (first..first + 6).collect();
        let b: Vec<u64> = (first + 20..first + 23).collect();
        // Start every block at value 0.
        let zero = image(0);
        for &x in a.iter().chain(&b) {
            dev.write_block(x, &zero).unwrap();
        }
        Arc::into_inner(dev).unwrap().close().unwrap();
        (a, b)
    };
    let base = lw.mark("made");
    let mut returned = Vec::new(); // (log index when commit k returned, k)
    {
        let dev = Arc::new(dev_on(lw.clone()));
        let mut j = Journaled::open(dev.clone(), superblock(&dev)).unwrap();
        for k in 1..=TXNS {
            let mut t = Txn::default();
            for &x in &a {
                t.write(x, image(k));
            }
            if k % 2 == 0 {
                for &x in &b {
                    t.write(x, image(k));
                }
            }
            j.commit(t).unwrap();
            returned.push((lw.mark(format!("committed {k}")), k));
            // Reads see the committed images before any checkpoint.
            assert_eq!(value(&j.read(a[0]).unwrap()), Some(k));
            if k % 3 == 0 {
                j.checkpoint().unwrap();
            }
        }
        j.close().unwrap();
        drop(j);
        Arc::into_inner(dev).unwrap().close().unwrap();
    }
    let mut checked = 0;
    for (n, drop) in crash_states(&lw, base) {
        let target = crash_device(&lw, (n, drop), SIZE);
        let dev = Arc::new(dev_on(target));
        let mut j = Journaled::open(dev.clone(), superblock(&dev)).unwrap();
        let va: Vec<Option<u64>> = a.iter().map(|&x| value(&j.read(x).unwrap())).collect();
        let vb: Vec<Option<u64>> = b.iter().map(|&x| value(&j.read(x).unwrap())).collect();
        let v = va[0].unwrap_or_else(|| panic!("state ({n}, {drop:?}): torn block {va:?}"));
        assert!(
            va.iter().all(|&x| x == Some(v)),
            "state ({n}, {drop:?}): group A torn: {va:?}"
        );
        let even = v - v % 2;
        assert!(
            vb.iter().all(|&x| x == Some(even)),
            "state ({n}, {drop:?}): group B {vb:?} with A at {v}"
        );
        // Durable: no older than the last commit that returned.
        let floor = returned
            .iter()
            .filter(|(at, _)| *at <= n)
            .map(|(_, k)| *k)
            .max()
            .unwrap_or(0);
        assert!(
            v >= floor,
            "state ({n}, {drop:?}): at {v}, but commit {floor} had returned"
        );
        j.close().unwrap();
        let sb = superblock(&dev);
        assert!(sb.state & STATE_CLEAN != 0 && sb.incompat & INCOMPAT_RECOVER == 0);
        let (problems, said) = check_quietly(&dev);
        assert_eq!(problems, 0, "state ({n}, {drop:?}): {said:?}");
        let _ = Image::open(&dev, None).unwrap();
        std::mem::drop(j);
        Arc::into_inner(dev).unwrap().close().unwrap();
        checked += 1;
    }
    println!("{checked} crash states checked");
    assert!(checked > 50);
}
