//! fsck and the journal: committed transactions are replayed (or, read
//! only, read through), revoked blocks are not, torn transactions are
//! ignored; the orphan list is freed. None of these are errors.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

mod common;

use std::path::Path;

use biofs::format::image::Image;
use biofs::format::journal::Journal;
use biofs::format::BLOCK_SIZE;
use common::fsimage::*;

fn small() -> Populated {
    populated()
}

/// Commit one transaction holding a new image of a.txt's inode block
/// (mode changed to 0600). Returns the inode number and the home block.
fn commit_mode_change(path: &Path) -> (u64, u64) {
    let dev = open_rw(path);
    let r = {
        let img = Image::open(&dev, None).unwrap();
        let a = lookup(&img, "/a.txt").unwrap();
        let mut inode = img.inode(a).unwrap().unwrap();
        assert_eq!(inode.mode & 0o777, 0o644);
        inode.mode = (inode.mode & !0o777) | 0o600;
        let (b, mut raw, off) = img.inode_block(a).unwrap();
        inode.encode(img.seed, a, &mut raw[off..off + 256]);
        let mut j = Journal::open(&dev, &img.sb).unwrap();
        j.commit(&dev, &[(b, raw)], &[]).unwrap();
        (a, b)
    };
    dev.close().unwrap();
    r
}

fn mode_of(path: &Path, ino: u64) -> u32 {
    let dev = open_rw(path);
    let m = Image::open(&dev, None)
        .unwrap()
        .inode(ino)
        .unwrap()
        .unwrap()
        .mode
        & 0o777;
    dev.close().unwrap();
    m
}

#[test]
fn committed_transaction_is_read_through_then_replayed() {
    let p = small();
    let (a, _) = commit_mode_change(&p.image);
    // Read-only: consistent as if replayed, nothing written.
    let (code, out) = fsck(&p.image, &["-n"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("checking as if replayed"), "{out}");
    assert_eq!(mode_of(&p.image, a), 0o644, "-n wrote to the device");
    // Replay: not an error.
    let (code, out) = fsck(&p.image, &["-y"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("recovering journal: 1 transactions"), "{out}");
    assert_eq!(mode_of(&p.image, a), 0o600);
    let (code, out) = fsck(&p.image, &["-fn"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains("journal"),
        "journal still live after replay: {out}"
    );
}

#[test]
fn revoked_blocks_are_not_replayed() {
    let p = small();
    let dev = open_rw(&p.image);
    let free_block = {
        let img = Image::open(&dev, None).unwrap();
        // The last block of group 0: free in the populated image.
        let b = img.geo.group_start(0) + u64::from(img.geo.group_blocks(0)) - 1;
        let mut j = Journal::open(&dev, &img.sb).unwrap();
        j.commit(&dev, &[(b, vec![0xAB; BLOCK_SIZE])], &[]).unwrap();
        j.commit::<Vec<u8>>(&dev, &[], &[b]).unwrap();
        b
    };
    dev.close().unwrap();
    let (code, out) = fsck(&p.image, &["-y"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 transactions, 0 blocks replayed"), "{out}");
    let dev = open_rw(&p.image);
    assert!(dev
        .read_block(free_block)
        .unwrap()
        .iter()
        .all(|&x| x != 0xAB));
    dev.close().unwrap();
}

#[test]
fn torn_transaction_is_ignored() {
    let p = small();
    let (a, _) = commit_mode_change(&p.image);
    // Tear the commit block: the transaction's last log block.
    let (jstart, commit) = {
        let dev = open_rw(&p.image);
        let img = Image::open(&dev, None).unwrap();
        let j = Journal::open(&dev, &img.sb).unwrap();
        let (txns, end) = j.scan(&dev).unwrap();
        assert_eq!(txns.len(), 1);
        let js = img.sb.journal_start;
        drop(img);
        dev.close().unwrap();
        (js, js + end - 1)
    };
    assert!(commit > jstart);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p.image)
            .unwrap();
        f.seek(SeekFrom::Start(commit * BLOCK_SIZE as u64 + 24))
            .unwrap();
        f.write_all(&[0xFF; 8]).unwrap();
    }
    let (code, out) = fsck(&p.image, &["-y"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 transactions"), "{out}");
    assert_eq!(
        mode_of(&p.image, a),
        0o644,
        "a torn transaction was replayed"
    );
}

#[test]
fn orphan_list_is_freed() {
    let p = small();
    let dev = open_rw(&p.image);
    let (orphan, free_before) = {
        let mut img = Image::open(&dev, None).unwrap();
        let x = lookup(&img, "/dir1/f7").unwrap();
        let d1 = lookup(&img, "/dir1").unwrap();
        // Unlinked while open: no entry, no links, on the orphan list.
        let mut inode = img.inode(d1).unwrap().unwrap();
        let ext = img.extents(d1, &inode);
        let mut es = img.dir_entries(d1, &inode, &ext.extents).entries;
        es.retain(|e| e.ino != x);
        let phys = ext.extents[0].physical;
        let leaf = biofs::format::dir::DirNode::Leaf {
            next: 0,
            entries: es,
        };
        img.write("dir", phys, &leaf.encode(img.seed, phys, d1))
            .unwrap();
        inode.mtime.sec += 1;
        img.write_inode(d1, Some(&inode)).unwrap();
        let mut f = img.inode(x).unwrap().unwrap();
        f.nlink = 0;
        img.write_inode(x, Some(&f)).unwrap();
        img.sb.orphan_head = x;
        img.sb.state &= !biofs::format::superblock::STATE_CLEAN;
        img.write_superblock().unwrap();
        (x, img.sb.free_inodes)
    };
    dev.close().unwrap();
    let (code, out) = fsck(&p.image, &["-y"]);
    assert_eq!(code, 0, "{out}");
    let dev = open_rw(&p.image);
    {
        let img = Image::open(&dev, None).unwrap();
        assert!(img.inode(orphan).unwrap().is_none(), "orphan not freed");
        assert_eq!(img.sb.orphan_head, 0);
        assert_eq!(img.sb.free_inodes, free_before + 1);
    }
    dev.close().unwrap();
    let (code, out) = fsck(&p.image, &["-fn"]);
    assert_eq!(code, 0, "{out}");
}

/// Found in review: a block freed and logged again in one transaction lost
/// its new image on replay (the revoke covered its own transaction).
#[test]
fn a_block_revoked_and_logged_in_one_transaction_is_replayed() {
    let p = small();
    let dev = open_rw(&p.image);
    let b = {
        let img = Image::open(&dev, None).unwrap();
        let b = img.geo.group_start(0) + u64::from(img.geo.group_blocks(0)) - 2;
        let mut j = Journal::open(&dev, &img.sb).unwrap();
        j.commit(&dev, &[(b, vec![0x5C; BLOCK_SIZE])], &[b])
            .unwrap();
        b
    };
    dev.close().unwrap();
    let (code, out) = fsck(&p.image, &["-y"]);
    assert_eq!(code, 0, "{out}");
    let dev = open_rw(&p.image);
    assert!(dev.read_block(b).unwrap().iter().all(|&x| x == 0x5C));
    dev.close().unwrap();
}

/// An orphan list naming a live inode is cut there, never freeing it; a
/// read-only check reports it and changes nothing.
#[test]
fn a_corrupt_orphan_list_is_cut_not_followed() {
    let p = small();
    let dev = open_rw(&p.image);
    let a = {
        let mut img = Image::open(&dev, None).unwrap();
        let a = lookup(&img, "/a.txt").unwrap();
        img.sb.orphan_head = a;
        img.write_superblock().unwrap();
        a
    };
    dev.close().unwrap();
    let (code, out) = fsck(&p.image, &["-n"]);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("not an unlinked inode"), "{out}");
    let (code, out) = fsck(&p.image, &["-y"]);
    assert_eq!(code, 1, "{out}");
    let (code, out) = fsck(&p.image, &["-fn"]);
    assert_eq!(code, 0, "{out}");
    let dev = open_rw(&p.image);
    {
        let img = Image::open(&dev, None).unwrap();
        assert_eq!(lookup(&img, "/a.txt"), Some(a));
        assert_eq!(read_file(&img, a).unwrap(), content(1, 1000));
    }
    dev.close().unwrap();
}
