//! Directories stay fast at a million entries: the hashed B-tree is two
//! levels deep, and a lookup reads one block per level.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

use std::sync::Arc;

use biofs::block::backend::MemBackend;
use biofs::format::builder::ROOT;
use biofs::format::dev::{Dev, DevOptions};
use biofs::format::dir::DirEntry;
use biofs::format::image::Image;
use biofs::format::inode::{FileType, Timespec};
use biofs::format::mkfs::{make_fs, InodeCount, MkfsParams};

#[test]
fn a_million_entries_are_found_in_three_block_reads() {
    let dev =
        Dev::from_backend(Arc::new(MemBackend::new(512 << 20)), DevOptions::default()).unwrap();
    let mut params = MkfsParams::new([9; 16], 42, Timespec { sec: 1, nsec: 0 });
    params.inodes = InodeCount::Total(4096);
    make_fs(&dev, &params).unwrap();
    let img = Image::open(&dev, None).unwrap();
    let n = 1_000_000u64;
    let entries: Vec<DirEntry> = (0..n)
        .map(|i| {
            DirEntry::new(
                img.sb.hash_seed,
                format!("file-{i:07}").as_bytes(),
                3 + i % 1000,
                FileType::Regular,
            )
        })
        .collect();
    let mut inode = img.inode(ROOT).unwrap().unwrap();
    let mut next = img.geo.group_start(1) + u64::from(img.geo.group_meta_blocks());
    let mut alloc = || {
        let b = next;
        next += 1;
        // Skip the next group's metadata when a group fills.
        if let Some((g, i)) = img.geo.block_group(next) {
            if i == 0 {
                next = img.geo.group_start(g) + u64::from(img.geo.group_meta_blocks());
            }
        }
        Ok(b)
    };
    img.write_dir(ROOT, &mut inode, entries, 0, &mut alloc)
        .unwrap();
    let ext = img.extents(ROOT, &inode);
    assert!(ext.problems.is_empty(), "{:?}", ext.problems);
    let blocks = inode.size / 4096;
    println!("{n} entries in {blocks} directory blocks");
    for i in [0u64, 1, 499_999, 999_999, 123_457] {
        let name = format!("file-{i:07}");
        let (e, reads) = img.dir_lookup(ROOT, &ext.extents, name.as_bytes()).unwrap();
        assert_eq!(e.map(|e| e.ino), Some(3 + i % 1000), "{name}");
        assert!(reads <= 3, "{name}: {reads} block reads");
    }
    let (e, reads) = img.dir_lookup(ROOT, &ext.extents, b"no-such-file").unwrap();
    assert!(e.is_none() && reads <= 3);
    // And the whole tree walks clean, every entry accounted for.
    let scan = img.dir_entries(ROOT, &inode, &ext.extents);
    assert!(scan.problems.is_empty(), "{:?}", scan.problems);
    assert_eq!(scan.entries.len() as u64, n);
}
