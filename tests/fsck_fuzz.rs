//! A deterministic fuzz harness for fsck: mutated images (random bytes in
//! metadata blocks, with and without their checksums recomputed) must never
//! make fsck panic or hang, and after `fsck -y` a second forced check must
//! find nothing (the repair converged), unless the first run gave up with
//! an operational error.
//!
//! `BIOFS_FSCK_FUZZ_ITERS` (default 6) sets the number of images,
//! `BIOFS_FSCK_FUZZ_SEED` the seed (printed), `BIOFS_FSCK_FUZZ_ONLY` one
//! image to rerun, `BIOFS_FSCK_FUZZ_VERBOSE` prints what fsck said.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use biofs::format::dev::Dev;
use biofs::format::fsck::{fsck, FsckError, FsckOptions, FsckReport, Mode};
use biofs::format::image::Image;
use biofs::format::{block_csum, meta_csum, BLOCK_SIZE, INODE_SIZE};
use common::fsimage::*;
use common::rng::Rng;

/// A metadata block and how its checksum is computed.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Superblock,
    Plain,
    /// CRC at this offset (`block_csum`).
    Csum(usize),
    InodeTable,
}

fn targets(img: &Image<'_>) -> Vec<(u64, Kind)> {
    let geo = img.geo;
    let mut t = vec![
        (0, Kind::Superblock),
        (geo.gdt_start, Kind::Plain),
        (img.sb.journal_start, Kind::Csum(20)),
        (geo.block_bitmap(0), Kind::Plain),
        (geo.inode_bitmap(0), Kind::Plain),
        (geo.backup_block(), Kind::Superblock),
    ];
    for b in 0..4 {
        t.push((geo.itable_start(0) + b, Kind::InodeTable));
    }
    for path in ["/", "/dir1", "/bigdir", "/frag.bin", "/slow", "/xattrs"] {
        let Some(ino) = lookup(img, path) else {
            continue;
        };
        let Ok(Some(inode)) = img.inode(ino) else {
            continue;
        };
        let scan = img.extents(ino, &inode);
        for b in scan.tree_blocks {
            t.push((b, Kind::Csum(16)));
        }
        if path == "/" || path.starts_with("/dir") || path == "/bigdir" {
            for e in scan.extents.iter().take(3) {
                t.push((e.physical, Kind::Csum(16)));
            }
        }
        if inode.xattr_block != 0 {
            t.push((inode.xattr_block, Kind::Csum(16)));
        }
    }
    t
}

fn mutate(rng: &mut Rng, img: &Image<'_>, block: u64, kind: Kind) {
    let mut raw = img.read("fuzz", block).unwrap();
    let n = 1 + rng.below(8);
    for _ in 0..n {
        let off = rng.below(BLOCK_SIZE as u64) as usize;
        match rng.below(4) {
            0 => raw[off] ^= 1 << rng.below(8),
            1 => raw[off] = rng.next() as u8,
            2 => {
                let v = [0u64, 1, u64::MAX, 4096, 32768, 1 << 32, 1 << 48, rng.next()]
                    [rng.below(8) as usize];
                let o = off & !7;
                if o + 8 <= BLOCK_SIZE {
                    raw[o..o + 8].copy_from_slice(&v.to_le_bytes());
                }
            }
            _ => {
                let o = off & !3;
                if o + 4 <= BLOCK_SIZE {
                    raw[o..o + 4].copy_from_slice(&(rng.next() as u32 % 70_000).to_le_bytes());
                }
            }
        }
    }
    // Half the time the checksum is made right again, so that the damage
    // reaches the validation behind it.
    if rng.below(2) == 0 {
        match kind {
            Kind::Superblock => {
                let c = meta_csum(img.seed, block, &raw[..BLOCK_SIZE - 4]);
                raw[BLOCK_SIZE - 4..].copy_from_slice(&c.to_le_bytes());
            }
            Kind::Csum(off) => {
                let c = block_csum(img.seed, block, &raw, off);
                raw[off..off + 4].copy_from_slice(&c.to_le_bytes());
            }
            Kind::InodeTable => {
                let first = (block - img.geo.itable_start(0)) * 16 + 1;
                for i in 0..16usize {
                    let s = &mut raw[i * INODE_SIZE..(i + 1) * INODE_SIZE];
                    if s.iter().all(|&x| x == 0) {
                        continue;
                    }
                    let c = meta_csum(img.seed, first + i as u64, &s[..INODE_SIZE - 4]);
                    s[INODE_SIZE - 4..].copy_from_slice(&c.to_le_bytes());
                }
            }
            Kind::Plain => {}
        }
    }
    img.write("fuzz", block, &raw).unwrap();
}

/// Run fsck in-process with a time limit; a panic or a hang fails.
fn run_fsck(path: &Path, mode: Mode, what: &str) -> Result<FsckReport, FsckError> {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    let label = what.to_string();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(|| {
            let dev = Dev::open(
                &p,
                biofs::format::dev::DevOptions {
                    read_only: mode == Mode::No,
                    verify: true,
                    workers: 0,
                    queue_depth: 0,
                },
            )
            .unwrap();
            let opts = FsckOptions {
                mode,
                force: true,
                verbose: false,
                scrub: false,
                backup: None,
            };
            let mut log = Vec::new();
            let r = fsck(&dev, &opts, &mut |m| log.push(m.to_string()));
            if mode != Mode::No {
                let _ = dev.close();
            }
            (r, log)
        });
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(300)) {
        Ok(Ok((r, log))) => {
            if std::env::var_os("BIOFS_FSCK_FUZZ_VERBOSE").is_some() {
                eprintln!("{label}:\n  {}", log.join("\n  "));
            }
            r
        }
        Ok(Err(_)) => panic!("{label}: fsck panicked"),
        Err(_) => panic!("{label}: fsck hung (no result in 300 s)"),
    }
}

#[test]
fn mutated_images_never_panic_and_repairs_converge() {
    let iters: u64 = std::env::var("BIOFS_FSCK_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("BIOFS_FSCK_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("fsck fuzz: seed {seed}, {iters} images (BIOFS_FSCK_FUZZ_SEED={seed} to repeat)");
    let only: Option<u64> = std::env::var("BIOFS_FSCK_FUZZ_ONLY")
        .ok()
        .and_then(|v| v.parse().ok());
    let template = populated_with(600);
    for it in 0..iters {
        if only.is_some_and(|o| o != it) {
            continue;
        }
        // Each image's own generator: any one can be rerun alone.
        let mut rng = Rng(seed ^ it.wrapping_mul(0xA24B_AED4_963E_E407));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fuzz.img");
        std::fs::copy(&template.image, &path).unwrap();
        let picks = {
            let dev = open_rw(&path);
            let picks = {
                let img = Image::open(&dev, None).unwrap();
                let t = targets(&img);
                let k = 1 + rng.below(3);
                let picks: Vec<(u64, Kind)> = (0..k)
                    .map(|_| t[rng.below(t.len() as u64) as usize])
                    .collect();
                for &(b, kind) in &picks {
                    mutate(&mut rng, &img, b, kind);
                }
                picks
            };
            dev.close().unwrap();
            picks
        };
        let what = format!("seed {seed} image {it} (blocks {picks:?})");
        // Read-only first: must not panic or hang, whatever it finds.
        let _ = run_fsck(&path, Mode::No, &format!("{what}, -n"));
        match run_fsck(&path, Mode::Yes, &format!("{what}, -y")) {
            Ok(_) => {
                let second = run_fsck(&path, Mode::Yes, &format!("{what}, second -y"))
                    .unwrap_or_else(|e| panic!("{what}: second run failed: {e}"));
                assert_eq!(
                    second.problems, 0,
                    "{what}: the second check still found {} problems",
                    second.problems
                );
            }
            Err(FsckError::Operational(m)) => eprintln!("{what}: gave up: {m}"),
            Err(e) => panic!("{what}: {e}"),
        }
    }
}
