//! Metadata transactions (`fs::txn`) under crashes: a run of transactions,
//! each giving a group of blocks one value together, with checkpoints in
//! between, recorded by the log-writes device. In every crash state (each
//! log prefix, and each write lost after each flush point), opening again
//! (engine recovery, then journal replay) must show every group whole at
//! one transaction's value, no older than the last commit that returned
//! before the crash, and fsck must find nothing.

use std::sync::Arc;

use biofs::block::backend::{BlockBackend, LogEntry, LogWritesBackend, MemBackend};
use biofs::block::{Checksum, IntegrityProfile, IntegrityStore};
use biofs::format::dev::{Dev, DevOptions};
use biofs::format::fsck::{fsck, FsckOptions, Mode};
use biofs::format::image::Image;
use biofs::format::inode::Timespec;
use biofs::format::mkfs::{make_fs, InodeCount, MkfsParams};
use biofs::format::superblock::{Superblock, INCOMPAT_RECOVER, STATE_CLEAN};
use biofs::format::BLOCK_SIZE;
use biofs::fs::txn::{Journaled, Txn};

const SIZE: u64 = 16 << 20;
const TXNS: u64 = 9;

fn dev_on(b: Arc<dyn BlockBackend>) -> Dev {
    Dev::from_backend(
        b,
        DevOptions {
            read_only: false,
            verify: true,
        },
    )
    .unwrap()
}

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
    let mem: Arc<dyn BlockBackend> = Arc::new(MemBackend::new(SIZE));
    IntegrityStore::format(
        &*mem,
        IntegrityProfile::new(4096, Checksum::Crc32c).unwrap(),
    )
    .unwrap();
    let lw = Arc::new(LogWritesBackend::new(mem));
    // Group A: 6 blocks every transaction writes; group B: 3 blocks only
    // even transactions write. Free data blocks of group 0 stand in for
    // metadata (their contents are nobody's business to fsck).
    let (a, b) = {
        let dev = dev_on(lw.clone());
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
        dev.close().unwrap();
        (a, b)
    };
    let base = lw.mark("made");
    let mut returned = Vec::new(); // (log index when commit k returned, k)
    {
        let dev = dev_on(lw.clone());
        let mut j = Journaled::open(&dev, superblock(&dev)).unwrap();
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
        dev.close().unwrap();
    }
    let log = lw.entries();
    let span_after = |fp: usize| {
        log[fp..]
            .iter()
            .position(|e| matches!(e, LogEntry::Flush))
            .unwrap_or(log.len() - fp)
    };
    let mut states: Vec<(usize, Option<usize>)> = (base..=log.len()).map(|n| (n, None)).collect();
    for fp in lw.flush_points().into_iter().filter(|&f| f >= base) {
        for d in 0..span_after(fp) {
            states.push((fp, Some(d)));
        }
    }
    let mut checked = 0;
    for (n, drop) in states {
        let target: Arc<dyn BlockBackend> = Arc::new(MemBackend::new(SIZE));
        match drop {
            None => lw.replay(n, &*target).unwrap(),
            Some(d) => {
                let keep: Vec<bool> = (0..span_after(n)).map(|i| i != d).collect();
                lw.replay_subset(n, &keep, &*target).unwrap();
            }
        }
        let dev = dev_on(target);
        let j = Journaled::open(&dev, superblock(&dev)).unwrap();
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
        let opts = FsckOptions {
            mode: Mode::No,
            force: true,
            verbose: false,
            scrub: false,
            backup: None,
        };
        let mut said = Vec::new();
        let r = fsck(&dev, &opts, &mut |m| said.push(m.to_string())).unwrap();
        assert_eq!(r.problems, 0, "state ({n}, {drop:?}): {said:?}");
        let _ = Image::open(&dev, None).unwrap();
        dev.close().unwrap();
        checked += 1;
    }
    println!("{checked} crash states checked");
    assert!(checked > 50);
}
