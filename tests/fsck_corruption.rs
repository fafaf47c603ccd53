//! Corruption tests in the style of e2fsprogs' `tests/f_*`: a populated
//! image with one structure damaged. `fsck.biofs -y` must exit 1 (errors
//! corrected), a second, forced read-only run must exit 0, and every file
//! the damage did not touch must still be there with its contents.
//!
//! Damage is done two ways: *bit rot* writes bytes into the image file
//! under the engine, so the block fails its integrity tuple; *bad
//! metadata* rewrites a structure through the engine with a valid tuple,
//! so only the structure's own checksum or its consistency catches it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

mod common;

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use biofs::format::dir::{DirEntry, DirNode};
use biofs::format::extent::{ExtentNode, IndexEntry};
use biofs::format::group::GroupDesc;
use biofs::format::image::Image;
use biofs::format::inode::{FileType, InodeData};
use biofs::format::superblock::Superblock;
use biofs::format::{BLOCK_SIZE, ROOT_INO};
use common::fsimage::*;

/// The populated image every case starts from (made once).
fn template() -> &'static Populated {
    static T: OnceLock<Populated> = OnceLock::new();
    T.get_or_init(populated)
}

/// A fresh copy of the template.
fn copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("case.img");
    std::fs::copy(&template().image, &path).unwrap();
    (dir, path)
}

/// Open the image and run `f` on it (writes go through the engine).
fn edit<R>(path: &Path, f: impl FnOnce(&mut Image<'_>) -> R) -> R {
    let dev = open_rw(path);
    let r = {
        let mut img = Image::open(&dev, None).unwrap();
        f(&mut img)
    };
    dev.close().unwrap();
    r
}

/// Flip bytes of `block` at `off..off+len` in the file itself, under the
/// engine (the block then fails its integrity check).
fn rot(path: &Path, block: u64, off: usize, len: usize) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let at = block * BLOCK_SIZE as u64 + off as u64;
    let mut buf = vec![0u8; len];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut buf).unwrap();
    for b in &mut buf {
        *b ^= 0x5a;
    }
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&buf).unwrap();
}

fn ino(img: &Image<'_>, path: &str) -> u64 {
    lookup(img, path).unwrap_or_else(|| panic!("{path} not found"))
}

fn edit_inode(img: &Image<'_>, ino: u64, f: impl FnOnce(&mut biofs::format::inode::Inode)) {
    let mut i = img.inode(ino).unwrap().unwrap();
    f(&mut i);
    img.write_inode(ino, Some(&i)).unwrap();
}

/// Rewrite directory `dir` with `f` applied to its entries, in its own
/// blocks (the directories this is used on have one leaf).
fn edit_dir(img: &Image<'_>, dir: u64, f: impl FnOnce(&mut Vec<DirEntry>)) {
    let mut inode = img.inode(dir).unwrap().unwrap();
    let ext = img.extents(dir, &inode);
    let mut entries = img.dir_entries(dir, &inode, &ext.extents).entries;
    f(&mut entries);
    let phys = ext.extents[0].physical;
    assert_eq!(ext.extents.len(), 1, "edit_dir wants a one-leaf directory");
    let leaf = DirNode::Leaf { next: 0, entries };
    img.write("directory block", phys, &leaf.encode(img.seed, phys, dir))
        .unwrap();
    inode.size = BLOCK_SIZE as u64;
    img.write_inode(dir, Some(&inode)).unwrap();
}

/// Run the check twice and compare what survived.
fn check(path: &Path, expect_in_output: &str, lost: &[&str]) -> String {
    let (code, out) = fsck(path, &["-fy"]);
    assert_eq!(code, 1, "first fsck -fy should correct errors:\n{out}");
    assert!(
        out.contains(expect_in_output),
        "fsck output lacks {expect_in_output:?}:\n{out}"
    );
    let (code2, out2) = fsck(path, &["-fn"]);
    assert_eq!(
        code2, 0,
        "second fsck -fn should find nothing:\n{out2}\nfirst run:\n{out}"
    );
    let lost: HashSet<&str> = lost.iter().copied().collect();
    let dev = open_rw(path);
    {
        let img = Image::open(&dev, None).unwrap();
        for (p, data) in &template().files {
            if lost.contains(p.as_str()) {
                continue;
            }
            let i = lookup(&img, p).unwrap_or_else(|| panic!("{p} is gone after repair:\n{out}"));
            assert_eq!(
                read_file(&img, i).as_ref(),
                Some(data),
                "{p} changed after repair"
            );
        }
    }
    dev.close().unwrap();
    out
}

/// The template's files under `prefix`.
fn files_under(prefix: &str) -> Vec<&'static str> {
    template()
        .files
        .iter()
        .filter(|(p, _)| p.starts_with(prefix))
        .map(|(p, _)| p.as_str())
        .collect()
}

/// Files (from the template's list) whose inode is in `inos`.
fn paths_of(path: &Path, inos: &HashSet<u64>) -> Vec<String> {
    edit(path, |img| {
        template()
            .files
            .iter()
            .filter(|(p, _)| lookup(img, p).is_some_and(|i| inos.contains(&i)))
            .map(|(p, _)| p.clone())
            .collect()
    })
}

#[test]
fn f_clean_template_checks_clean() {
    let (_d, p) = copy();
    let (code, out) = fsck(&p, &["-fn"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn f_superblock_bitrot() {
    let (_d, p) = copy();
    rot(&p, 0, 100, 16);
    let out = check(&p, "using the backup", &[]);
    assert!(out.contains("Superblock damaged"), "{out}");
}

#[test]
fn f_superblock_inconsistent_layout() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let mut sb = img.sb.clone();
        sb.groups += 1;
        img.write("superblock", 0, &sb.encode(0)).unwrap();
    });
    check(&p, "using the backup", &[]);
}

#[test]
fn f_superblock_preen_refuses() {
    let (_d, p) = copy();
    rot(&p, 0, 40, 8);
    let (code, out) = fsck(&p, &["-p"]);
    assert_eq!(code, 4, "{out}");
    // Nothing was written: -y still has the same work to do.
    check(&p, "using the backup", &[]);
}

#[test]
fn f_backup_superblock_bitrot() {
    let (_d, p) = copy();
    let backup = edit(&p, |img| img.geo.backup_block());
    rot(&p, backup, 200, 4);
    check(&p, "Backup superblock", &[]);
}

#[test]
fn f_gdt_bitrot() {
    let (_d, p) = copy();
    let gdt = edit(&p, |img| img.geo.gdt_start);
    rot(&p, gdt, 0, 32);
    check(&p, "Group 0", &[]);
}

#[test]
fn f_group_free_counts_wrong() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let mut d = img.desc(0).unwrap();
        d.free_blocks -= 5;
        d.used_dirs += 1;
        img.write_desc(0, &d).unwrap();
    });
    check(&p, "free counts wrong", &[]);
}

#[test]
fn f_block_bitmap_bits_cleared() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let big = ino(img, "/big.bin");
        let inode = img.inode(big).unwrap().unwrap();
        let e = img.extents(big, &inode).extents[0];
        let mut d = img.desc(0).unwrap();
        let mut bm = img.block_bitmap(0, &d).unwrap();
        let im = img.inode_bitmap(0, &d).unwrap();
        let start = img.geo.group_start(0);
        for b in e.physical..e.physical + 10 {
            biofs::format::bitmap::clear(&mut bm, (b - start) as usize);
        }
        img.write_group(0, &mut d, &bm, &im).unwrap();
    });
    check(&p, "block bitmap differs", &[]);
}

#[test]
fn f_block_bitmap_bitrot() {
    let (_d, p) = copy();
    let bb = edit(&p, |img| img.geo.block_bitmap(0));
    rot(&p, bb, 100, 50);
    check(&p, "block bitmap differs", &[]);
}

#[test]
fn f_inode_bitmap_bit_cleared() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let a = ino(img, "/a.txt");
        let mut d = img.desc(0).unwrap();
        let bm = img.block_bitmap(0, &d).unwrap();
        let mut im = img.inode_bitmap(0, &d).unwrap();
        biofs::format::bitmap::clear(&mut im, (a - 1) as usize);
        img.write_group(0, &mut d, &bm, &im).unwrap();
    });
    check(&p, "inode bitmap differs", &[]);
}

#[test]
fn f_itable_unused_mark_too_low() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let mut d = img.desc(0).unwrap();
        d.itable_unused_from = 3;
        img.write_desc(0, &d).unwrap();
    });
    check(&p, "unused-inode mark too low", &[]);
}

#[test]
fn f_inode_checksum() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let a = ino(img, "/a.txt");
        let (b, mut raw, off) = img.inode_block(a).unwrap();
        raw[off + 8] ^= 0xff; // the uid, under the inode's CRC
        img.write("inode table", b, &raw).unwrap();
    });
    let out = check(&p, "Inode", &["/a.txt"]);
    assert!(out.contains("which is not in use"), "{out}");
}

#[test]
fn f_inode_table_block_bitrot() {
    let (_d, p) = copy();
    // The second inode-table block: inodes 17..=32.
    let (blk, inos) = edit(&p, |img| {
        (
            img.geo.itable_start(0) + 1,
            (17..=32).collect::<HashSet<u64>>(),
        )
    });
    let lost = paths_of(&p, &inos);
    assert!(!lost.is_empty());
    rot(&p, blk, 0, BLOCK_SIZE);
    let lost: Vec<&str> = lost.iter().map(String::as_str).collect();
    check(&p, "unreadable", &lost);
}

#[test]
fn f_extent_leaf_block_bitrot() {
    let (_d, p) = copy();
    let leaf = edit(&p, |img| {
        let f = ino(img, "/frag.bin");
        let inode = img.inode(f).unwrap().unwrap();
        let scan = img.extents(f, &inode);
        assert!(scan.tree_blocks.len() >= 2, "frag.bin should have a tree");
        scan.tree_blocks[0]
    });
    rot(&p, leaf, 30, 20);
    check(&p, "extent tree damaged", &["/frag.bin"]);
}

#[test]
fn f_extent_index_points_outside_data() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let f = ino(img, "/frag.bin");
        let gdt = img.geo.gdt_start;
        edit_inode(img, f, |i| {
            if let InodeData::Extents(ExtentNode::Index { entries, .. }) = &mut i.data {
                entries[0] = IndexEntry {
                    logical: entries[0].logical,
                    child: gdt,
                };
            } else {
                panic!("frag.bin's root is not an index");
            }
        });
    });
    check(&p, "extent tree damaged", &["/frag.bin"]);
}

#[test]
fn f_extent_into_inode_table() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let a = ino(img, "/a.txt");
        let it = img.geo.itable_start(0) + 3;
        edit_inode(img, a, |i| {
            if let InodeData::Extents(ExtentNode::Leaf(es)) = &mut i.data {
                es[0].physical = it;
            }
        });
    });
    check(&p, "outside the data area", &["/a.txt"]);
}

#[test]
fn f_blocks_claimed_twice() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let big = ino(img, "/big.bin");
        let a = ino(img, "/a.txt");
        let inode = img.inode(big).unwrap().unwrap();
        let first = img.extents(big, &inode).extents[0].physical;
        edit_inode(img, a, |i| {
            if let InodeData::Extents(ExtentNode::Leaf(es)) = &mut i.data {
                es[0].physical = first;
            }
        });
    });
    // a.txt now holds big.bin's first block (that is what its metadata
    // says); big.bin must keep its own.
    check(&p, "shares blocks", &["/a.txt"]);
}

#[test]
fn f_directory_leaf_bitrot() {
    let (_d, p) = copy();
    let leaf = edit(&p, |img| {
        let d = ino(img, "/bigdir");
        let inode = img.inode(d).unwrap().unwrap();
        let ext = img.extents(d, &inode);
        // Logical block 1 is the first leaf (0 is the index root).
        Image::map(&ext.extents, 1).unwrap()
    });
    rot(&p, leaf, 64, 32);
    let lost = files_under("/bigdir/");
    check(&p, "Unattached inode", &lost);
    // Every entry is somewhere: in bigdir or in lost+found.
    edit(&p, |img| {
        let n = list(img, "/bigdir").len() + list(img, "/lost+found").len();
        assert_eq!(n, template().big_dir_entries);
    });
}

#[test]
fn f_directory_index_root_bitrot() {
    let (_d, p) = copy();
    let root = edit(&p, |img| {
        let d = ino(img, "/bigdir");
        let inode = img.inode(d).unwrap().unwrap();
        Image::map(&img.extents(d, &inode).extents, 0).unwrap()
    });
    rot(&p, root, 40, 8);
    let lost = files_under("/bigdir/");
    check(&p, "Directory inode", &lost);
    edit(&p, |img| {
        assert_eq!(list(img, "/lost+found").len(), template().big_dir_entries);
        // And their contents came along.
        let lf = list(img, "/lost+found");
        let name = lf.iter().find(|n| n.starts_with('#')).unwrap();
        let i = lookup(img, &format!("/lost+found/{name}")).unwrap();
        assert!(read_file(img, i).is_some());
    });
}

#[test]
fn f_directory_entry_to_free_inode() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let d1 = ino(img, "/dir1");
        let seed = img.sb.hash_seed;
        let free = img.geo.inodes_count() - 1;
        edit_dir(img, d1, |es| {
            es.push(DirEntry::new(seed, b"ghost", free, FileType::Regular));
            es.sort_by(|a, b| a.key().cmp(&b.key()));
        });
    });
    check(&p, "'ghost'", &[]);
}

#[test]
fn f_directory_entry_wrong_type() {
    let (_d, p) = copy();
    edit(&p, |img| {
        edit_dir(img, ROOT_INO, |es| {
            for e in es.iter_mut().filter(|e| e.name == b"a.txt") {
                e.ftype = FileType::Fifo;
            }
        });
    });
    check(&p, "wrong type", &[]);
}

#[test]
fn f_directory_hash_mismatch() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let d1 = ino(img, "/dir1");
        edit_dir(img, d1, |es| {
            es[0].hash ^= 1 << 20;
            es.sort_by(|a, b| a.key().cmp(&b.key()));
        });
    });
    let lost = files_under("/dir1/");
    check(&p, "does not match the name", &lost);
    // dir1's files (and sub/, with deep.txt) are in lost+found.
    edit(&p, |img| {
        let lf = list(img, "/lost+found");
        assert!(lf.len() >= 51, "{lf:?}");
    });
}

#[test]
fn f_file_link_count() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let a = ino(img, "/a.txt");
        edit_inode(img, a, |i| i.nlink = 7);
    });
    check(&p, "link count is 7, should be 1", &[]);
}

#[test]
fn f_directory_link_count() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let d1 = ino(img, "/dir1");
        edit_inode(img, d1, |i| i.nlink = 2);
    });
    check(&p, "link count is 2, should be 3", &[]);
}

#[test]
fn f_hard_link_count_low() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let h = ino(img, "/hardlink");
        edit_inode(img, h, |i| i.nlink = 1);
    });
    check(&p, "link count is 1, should be 2", &[]);
}

#[test]
fn f_disconnected_directory() {
    let (_d, p) = copy();
    let d1 = edit(&p, |img| {
        let d1 = ino(img, "/dir1");
        edit_dir(img, ROOT_INO, |es| es.retain(|e| e.name != b"dir1"));
        d1
    });
    let lost = files_under("/dir1/");
    check(&p, "Unconnected directory", &lost);
    // The whole subtree is under lost+found, contents intact.
    edit(&p, |img| {
        for path in &lost {
            let moved = path.replacen("/dir1/", &format!("/lost+found/#{d1}/"), 1);
            let i = lookup(img, &moved).unwrap_or_else(|| panic!("{moved} missing"));
            let want = &template().files.iter().find(|(q, _)| q == *path).unwrap().1;
            assert_eq!(read_file(img, i).as_ref(), Some(want), "{moved}");
        }
    });
}

#[test]
fn f_lost_found_missing_with_orphan() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let lf = ino(img, "/lost+found");
        edit_dir(img, ROOT_INO, |es| {
            es.retain(|e| e.name != b"lost+found" && e.name != b"xattrs")
        });
        img.write_inode(lf, None).unwrap();
    });
    check(&p, "/lost+found is missing", &["/xattrs"]);
    edit(&p, |img| {
        let names = list(img, "/lost+found");
        assert_eq!(names.len(), 1, "{names:?}");
    });
}

#[test]
fn f_xattr_block_bitrot() {
    let (_d, p) = copy();
    let xb = edit(&p, |img| {
        let x = ino(img, "/xattrs");
        img.inode(x).unwrap().unwrap().xattr_block
    });
    rot(&p, xb, 0, 64);
    check(&p, "xattr block", &[]);
}

#[test]
fn f_inode_block_count() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let big = ino(img, "/big.bin");
        edit_inode(img, big, |i| i.blocks = 1);
    });
    check(&p, "block count is 1", &[]);
}

#[test]
fn f_journal_superblock_bitrot() {
    let (_d, p) = copy();
    let j = edit(&p, |img| img.sb.journal_start);
    rot(&p, j, 0, 16);
    check(&p, "Journal superblock", &[]);
}

#[test]
fn f_directory_parent_pointer() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let sub = ino(img, "/dir1/sub");
        edit_inode(img, sub, |i| i.rdev_or_parent = ROOT_INO);
    });
    check(&p, "parent is 1", &[]);
}

#[test]
fn f_second_link_to_directory() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let sub = ino(img, "/dir1/sub");
        let seed = img.sb.hash_seed;
        edit_dir(img, ROOT_INO, |es| {
            es.push(DirEntry::new(seed, b"sub-again", sub, FileType::Directory));
            es.sort_by(|a, b| a.key().cmp(&b.key()));
        });
    });
    check(&p, "already has a parent", &[]);
}

#[test]
fn f_superblock_counters_are_summaries() {
    // Stale free counts in the superblock are not an error (the
    // filesystem updates them lazily); fsck refreshes them quietly.
    let (_d, p) = copy();
    edit(&p, |img| {
        let mut sb: Superblock = img.sb.clone();
        sb.free_blocks = 12;
        img.write("superblock", 0, &sb.encode(0)).unwrap();
    });
    let (code, out) = fsck(&p, &["-fy"]);
    assert_eq!(code, 0, "{out}");
    let free = edit(&p, |img| img.sb.free_blocks);
    assert_ne!(free, 12);
}

#[test]
fn f_group_descriptor_bad_checksum() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let (b, off) = img.geo.desc_location(0);
        let mut raw = img.read("gdt", b).unwrap();
        raw[off + 4] ^= 1; // free_blocks, under the descriptor's CRC
        img.write("gdt", b, &raw).unwrap();
        assert!(GroupDesc::decode(&img.geo, img.seed, 0, &raw[off..]).is_err());
    });
    check(&p, "descriptor damaged", &[]);
}

/// `-n` reports and writes nothing (the image's bytes are unchanged),
/// exiting 4; then `-p` repairs what is safe.
#[test]
fn f_read_only_check_never_writes() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let a = ino(img, "/a.txt");
        edit_inode(img, a, |i| i.nlink = 3);
        let d1 = ino(img, "/dir1");
        edit_dir(img, ROOT_INO, |es| es.retain(|e| e.name != b"dir1"));
        let _ = d1;
    });
    let before = std::fs::read(&p).unwrap();
    let (code, out) = fsck(&p, &["-fn"]);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("? no"), "{out}");
    assert!(
        std::fs::read(&p).unwrap() == before,
        "fsck -n changed the image"
    );
    let (code, out) = fsck(&p, &["-fp"]);
    assert_eq!(code, 1, "{out}");
    let (code, out) = fsck(&p, &["-fn"]);
    assert_eq!(code, 0, "{out}");
}

/// Found by the fsck fuzzer: with the group descriptor lost, pass 1 can't
/// tell a damaged inode from a never-used slot and skips it; pass 5 must
/// then clear every free slot it vouches for, or the next check finds the
/// damaged inode.
#[test]
fn f_gdt_lost_and_inode_damaged() {
    let (_d, p) = copy();
    let gdt = edit(&p, |img| {
        let a = ino(img, "/dir1/f24");
        let (b, mut raw, off) = img.inode_block(a).unwrap();
        raw[off + 68..off + 72].copy_from_slice(&3_786_825_786u32.to_le_bytes());
        let c = biofs::format::meta_csum(img.seed, a, &raw[off..off + 252]);
        raw[off + 252..off + 256].copy_from_slice(&c.to_le_bytes());
        img.write("inode table", b, &raw).unwrap();
        img.geo.gdt_start
    });
    rot(&p, gdt, 0, 16);
    check(&p, "descriptor damaged", &["/dir1/f24"]);
}

#[test]
fn f_directory_leaf_links() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let d = ino(img, "/bigdir");
        let inode = img.inode(d).unwrap().unwrap();
        let ext = img.extents(d, &inode);
        // Point the first leaf's link back at itself (readdir would loop).
        let phys = Image::map(&ext.extents, 1).unwrap();
        let raw = img.read("dir", phys).unwrap();
        let node = DirNode::decode(img.seed, img.sb.hash_seed, phys, d, &raw).unwrap();
        let DirNode::Leaf { entries, .. } = node else {
            panic!("logical block 1 is not a leaf")
        };
        let looped = DirNode::Leaf { next: 1, entries };
        img.write("dir", phys, &looped.encode(img.seed, phys, d))
            .unwrap();
    });
    check(&p, "not linked in order", &[]);
    edit(&p, |img| {
        assert_eq!(list(img, "/bigdir").len(), template().big_dir_entries)
    });
}

/// Found in review: a regular file named lost+found was unlinked silently.
#[test]
fn f_lost_found_is_a_file() {
    let (_d, p) = copy();
    edit(&p, |img| {
        let lf = ino(img, "/lost+found");
        let a = ino(img, "/a.txt");
        let seed = img.sb.hash_seed;
        edit_dir(img, ROOT_INO, |es| {
            es.retain(|e| e.name != b"lost+found" && e.name != b"xattrs");
            es.push(DirEntry::new(seed, b"lost+found", a, FileType::Regular));
            es.sort_by(|x, y| x.key().cmp(&y.key()));
        });
        img.write_inode(lf, None).unwrap();
        edit_inode(img, a, |i| i.nlink = 2);
    });
    check(&p, "/lost+found is not a directory", &["/xattrs"]);
    edit(&p, |img| {
        let a = ino(img, "/a.txt");
        assert!(
            list(img, "/").contains(&format!("#{a}")),
            "{:?}",
            list(img, "/")
        );
        assert_eq!(list(img, "/lost+found").len(), 1);
    });
}

/// Found in review: rebuilding an extent tree wrote back a stale copy of
/// the inode, undoing the removal of its bad xattr block.
#[test]
fn f_extent_tree_and_xattr_block_damaged_together() {
    let (_d, p) = copy();
    let leaf = edit(&p, |img| {
        let f = ino(img, "/frag.bin");
        let free = img.geo.group_start(0) + u64::from(img.geo.group_blocks(0)) - 1;
        edit_inode(img, f, |i| {
            i.xattr_block = free;
            i.blocks += 1;
        });
        let inode = img.inode(f).unwrap().unwrap();
        img.extents(f, &inode).tree_blocks[1]
    });
    rot(&p, leaf, 30, 20);
    check(&p, "xattr block", &["/frag.bin"]);
}
