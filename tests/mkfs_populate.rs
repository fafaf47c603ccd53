//! `mkfs.biofs -d DIR`: a tree copied into a new image keeps contents
//! (holes too), modes, owners, nanosecond times, hard links, symlinks,
//! fifos, device nodes and xattrs; fsck finds the image clean.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

use std::fs::{self, File, FileTimes};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::time::{Duration, UNIX_EPOCH};

use biofs::format::inode::FileType;
use biofs::fs::{Ctx, Fs, MountOptions};

mod common;
use common::fsimage::{fsck, run, MKFS};

fn path_ino(fs: &Fs, path: &str) -> u64 {
    let mut ino = 1;
    for p in path.split('/') {
        ino = fs
            .lookup(ino, p.as_bytes())
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .ino;
    }
    ino
}

#[test]
fn a_copied_tree_keeps_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("etc/deep/er")).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(src.join("etc/data.bin"), &data).unwrap();
    fs::write(src.join("etc/deep/er/small"), b"hello\n").unwrap();
    fs::hard_link(src.join("etc/data.bin"), src.join("linked")).unwrap();
    symlink("etc/deep/er/small", src.join("sym")).unwrap();
    // A sparse file: 8 MiB with 4 KiB of data at 4 MiB.
    {
        let mut f = File::create(src.join("sparse")).unwrap();
        f.seek(SeekFrom::Start(4 << 20)).unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        f.set_len(8 << 20).unwrap();
    }
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    fs::set_permissions(src.join("etc/deep"), fs::Permissions::from_mode(0o700)).unwrap();
    let mtime = UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    File::options()
        .write(true)
        .open(src.join("etc/deep/er/small"))
        .unwrap()
        .set_times(FileTimes::new().set_modified(mtime))
        .unwrap();
    let have_xattr = xattr::set(src.join("etc/data.bin"), "user.origin", b"unit-test").is_ok();
    let chowned =
        std::os::unix::fs::lchown(src.join("etc/deep/er/small"), Some(1234), Some(567)).is_ok();

    let img = tmp.path().join("img");
    let (code, out) = run(
        MKFS,
        &[
            "-q",
            "-s",
            "64M",
            "-d",
            src.to_str().unwrap(),
            img.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = fsck(&img, &["-fn"]);
    assert_eq!(code, 0, "{out}");

    let fs = Fs::mount(&img, &MountOptions::default()).unwrap();
    let c = Ctx::root();
    let f = path_ino(&fs, "etc/data.bin");
    assert_eq!(fs.read(&c, f, 0, 400_000).unwrap(), data);
    let a = fs.getattr(f).unwrap();
    assert_eq!(a.nlink, 2);
    assert_eq!(path_ino(&fs, "linked"), f, "hard link kept");
    let s = path_ino(&fs, "sym");
    assert_eq!(fs.readlink(s).unwrap(), b"etc/deep/er/small");
    let small = fs.getattr(path_ino(&fs, "etc/deep/er/small")).unwrap();
    assert_eq!(
        (small.mtime.sec, small.mtime.nsec),
        (1_600_000_000, 123_456_789)
    );
    if chowned {
        assert_eq!((small.uid, small.gid), (1234, 567));
    }
    assert_eq!(fs.getattr(path_ino(&fs, "etc/deep")).unwrap().perm, 0o700);
    let fifo = fs.getattr(path_ino(&fs, "fifo")).unwrap();
    assert_eq!((fifo.kind, fifo.perm), (FileType::Fifo, 0o640));
    let sp = fs.getattr(path_ino(&fs, "sparse")).unwrap();
    assert_eq!(sp.size, 8 << 20);
    assert!(sp.blocks <= 8 * 2, "holes kept: {} sectors", sp.blocks);
    assert_eq!(fs.read(&c, sp.ino, 4 << 20, 4096).unwrap(), vec![7u8; 4096]);
    if have_xattr {
        assert_eq!(fs.getxattr(f, b"user.origin").unwrap(), b"unit-test");
    }
    drop(fs);
    let (code, out) = fsck(&img, &["-fn"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_missing_directory_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("img");
    let (code, out) = run(
        MKFS,
        &["-s", "64M", "-d", "/nonexistent/dir", img.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not a directory"), "{out}");
    assert!(!img.exists(), "nothing made");
}
