//! mkfs.biofs and fsck.biofs on populated images: a clean image checks
//! clean, read-only and forced.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

mod common;

use common::fsimage::*;

#[test]
fn populated_image_checks_clean() {
    let p = populated();
    let (code, out) = fsck(&p.image, &["-fn"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = fsck(&p.image, &["-fy"]);
    assert_eq!(code, 0, "{out}");
    let dev = open_rw(&p.image);
    let img = biofs::format::image::Image::open(&dev, None).unwrap();
    for (path, data) in &p.files {
        let ino = lookup(&img, path).unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!(read_file(&img, ino).as_ref(), Some(data), "{path}");
    }
    assert_eq!(list(&img, "/bigdir").len(), p.big_dir_entries);
    assert_eq!(readlink(&img, "/slow").unwrap(), vec![b'x'; 300]);
}

use std::os::unix::fs::MetadataExt;

#[test]
fn mkfs_help_and_usage_errors() {
    let (code, out) = run(MKFS, &["--help"]);
    assert_eq!(code, 0);
    for s in ["NAME", "SYNOPSIS", "OPTIONS", "EXIT STATUS", "--integrity"] {
        assert!(out.contains(s), "mkfs --help lacks {s}");
    }
    let (code, out) = run(MKFS, &["--no-such-option", "x"]);
    assert_eq!(code, 1, "{out}");
    let (code, out) = run(MKFS, &[]);
    assert_eq!(code, 1, "{out}");
    let (code, out) = run(
        MKFS,
        &["-b", "1024", "--size", "64M", "/nonexistent/dir/x.img"],
    );
    assert_eq!(code, 1);
    assert!(out.contains("block size 1024"), "{out}");
    let (code, out) = run(FSCK, &["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("EXIT STATUS") && out.contains("32"), "{out}");
    for bad in [
        &["-z", "x"][..],
        &[],
        &["-n", "-y", "x"],
        &["-n", "--scrub", "x"],
    ] {
        let (code, out) = run(FSCK, bad);
        assert_eq!(code, 16, "{bad:?}: {out}");
    }
    let (code, out) = run(FSCK, &["-n", "/nonexistent.img"]);
    assert_eq!(code, 8, "{out}");
}

#[test]
fn mkfs_dry_run_writes_nothing_and_big_images_stay_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.img");
    let p = img.to_str().unwrap();
    let (code, out) = run(MKFS, &["-n", "--size", "10G", p]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("dry run") && !img.exists(), "{out}");
    // A 1 TiB image: constant work, nothing proportional allocated.
    let (code, out) = run(MKFS, &["-q", "--size", "1T", p]);
    assert_eq!(code, 0, "{out}");
    let m = std::fs::metadata(&img).unwrap();
    assert_eq!(m.len(), 1 << 40);
    assert!(
        m.blocks() * 512 < 4 << 20,
        "{} bytes allocated",
        m.blocks() * 512
    );
    let (code, out) = fsck(&img, &["-fn"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(" 2/") && out.contains("2 directories"),
        "{out}"
    );
}

#[test]
fn mkfs_refuses_existing_filesystems_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.img");
    let p = img.to_str().unwrap();
    assert_eq!(run(MKFS, &["-q", "--size", "64M", "-L", "first", p]).0, 0);
    let (code, out) = run(MKFS, &["-q", p]);
    assert_eq!(code, 1);
    assert!(out.contains("biofs filesystem labelled 'first'"), "{out}");
    assert_eq!(
        run(
            MKFS,
            &["-q", "-f", "-U", "0b5f1c2e-8a41-4f0e-9d3c-2a6b7e1f4c90", p]
        )
        .0,
        0
    );
    let (_, out) = run(MKFS, &["-q", p]);
    assert!(
        out.contains("0b5f1c2e-8a41-4f0e-9d3c-2a6b7e1f4c90"),
        "{out}"
    );
    // Other filesystems' signatures, where their mkfs is installed.
    for (mkfs, args, what) in [
        ("mkfs.ext4", &["-q", "-F"][..], "ext2/ext3/ext4"),
        ("mkfs.xfs", &["-q", "-f"][..], "XFS"),
        ("mkfs.btrfs", &["-q", "-f"][..], "Btrfs"),
    ] {
        let other = dir.path().join(format!("{mkfs}.img"));
        std::fs::File::create(&other)
            .unwrap()
            .set_len(300 << 20)
            .unwrap();
        let ok = std::process::Command::new(mkfs)
            .args(args)
            .arg(&other)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            println!("skipped the {what} signature: {mkfs} is not installed");
            continue;
        }
        let (code, out) = run(MKFS, &["-q", other.to_str().unwrap()]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains(what), "{out}");
    }
}

#[test]
fn mkfs_and_fsck_on_a_loop_block_device() {
    let Some((dev, _guard)) = common::loop_device(96 << 20) else {
        return;
    };
    let d = dev.to_str().unwrap();
    let (code, out) = run(MKFS, &["-q", "-f", "-L", "loopfs", d]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(MKFS, &["-q", d]);
    assert_eq!(code, 1, "mkfs must refuse the existing filesystem: {out}");
    {
        let dv = open_rw(&dev);
        let mut b = biofs::format::builder::Builder::open(&dv, t0()).unwrap();
        let dir = b.mkdir(biofs::format::ROOT_INO, "d", 0o755).unwrap();
        for i in 0..20 {
            b.create_file(dir, &format!("f{i}"), 0o644, &content(i, 10_000))
                .unwrap();
        }
        b.finish().unwrap();
        dv.close().unwrap();
    }
    let (code, out) = fsck(&dev, &["-fn"]);
    assert_eq!(code, 0, "{out}");
    // Damage a link count; repair; check again.
    {
        let dv = open_rw(&dev);
        {
            let img = biofs::format::image::Image::open(&dv, None).unwrap();
            let f = lookup(&img, "/d/f3").unwrap();
            let mut i = img.inode(f).unwrap().unwrap();
            i.nlink = 9;
            img.write_inode(f, Some(&i)).unwrap();
        }
        dv.close().unwrap();
    }
    let (code, out) = fsck(&dev, &["-fy", "--scrub"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("scrubbed") && out.contains(", 0 bad"), "{out}");
    let (code, out) = fsck(&dev, &["-fn"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn scrub_names_the_file_owning_a_rotten_block() {
    let p = populated_with(10);
    // Rot one data block of /dir1/f5 under the engine.
    let (phys, logical) = {
        let dv = open_rw(&p.image);
        let r = {
            let img = biofs::format::image::Image::open(&dv, None).unwrap();
            let f = lookup(&img, "/dir1/f5").unwrap();
            let inode = img.inode(f).unwrap().unwrap();
            let e = img.extents(f, &inode).extents[0];
            (e.physical, e.logical)
        };
        dv.close().unwrap();
        r
    };
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p.image)
            .unwrap();
        f.seek(SeekFrom::Start(phys * 4096 + 10)).unwrap();
        f.write_all(b"rot").unwrap();
    }
    let (code, out) = fsck(&p.image, &["-y", "--scrub"]);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("/dir1/f5 (inode") && out.contains(&format!("block {logical}")),
        "{out}"
    );
    assert!(out.contains("integrity"), "{out}");
}

/// mkfs over a device full of old bytes: the new filesystem checks clean
/// with verified reads (nothing it never wrote is read as metadata).
#[test]
fn mkfs_over_random_bytes_checks_clean() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.img");
    {
        let mut f = std::fs::File::create(&img).unwrap();
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..128 {
            for b in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf).unwrap();
        }
    }
    let p = img.to_str().unwrap();
    let (code, out) = run(MKFS, &["-q", "-f", p]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = fsck(&img, &["-fy"]);
    assert_eq!(code, 0, "{out}");
}

/// A superblock of a newer format is refused as unsupported, not repaired
/// from the backup.
#[test]
fn fsck_refuses_unsupported_features() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.img");
    assert_eq!(
        run(MKFS, &["-q", "--size", "64M", img.to_str().unwrap()]).0,
        0
    );
    {
        let dv = open_rw(&img);
        {
            let i = biofs::format::image::Image::open(&dv, None).unwrap();
            for at in [0, i.geo.backup_block()] {
                let mut sb = i.sb.clone();
                sb.incompat |= 1 << 9;
                i.write("sb", at, &sb.encode(at)).unwrap();
            }
        }
        dv.close().unwrap();
    }
    let (code, out) = fsck(&img, &["-fy"]);
    assert_eq!(code, 8, "{out}");
    assert!(out.contains("unsupported"), "{out}");
}

/// Found in review: mkfs over a slightly larger old biofs left the old
/// backup superblock past the new one, and fsck restored the old
/// filesystem's superblock over a damaged primary, losing every file.
/// mkfs now erases old backups, and fsck checks a backup against the
/// journal superblock it names.
#[test]
fn fsck_never_restores_an_earlier_filesystems_backup() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("s.img");
    let p = img.to_str().unwrap();
    assert_eq!(
        run(
            MKFS,
            &["-q", "-I", "crc32c", "-s", "130M", "-i", "65536", "-L", "OLD", p]
        )
        .0,
        0
    );
    assert_eq!(
        run(
            MKFS,
            &["-q", "-f", "-I", "none", "-i", "16384", "-L", "NEW", p]
        )
        .0,
        0
    );
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.seek(SeekFrom::Start(100)).unwrap();
        f.write_all(&[0xA5; 64]).unwrap();
    }
    let (code, out) = fsck(&img, &["-fy"]);
    assert_eq!(code, 1, "{out}");
    assert!(!out.contains("Root directory is missing"), "{out}");
    let (code, out) = fsck(&img, &["-fn"]);
    assert_eq!(code, 0, "{out}");
    let (_, out) = run(MKFS, &["-q", p]);
    assert!(out.contains("labelled 'NEW'"), "{out}");
}

/// Found in review: a refused mkfs grew the image first.
#[test]
fn a_refused_mkfs_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.img");
    let p = img.to_str().unwrap();
    assert_eq!(run(MKFS, &["-q", "-s", "64M", p]).0, 0);
    let before = std::fs::read(&img).unwrap();
    assert_eq!(run(MKFS, &["-q", "-s", "128M", p]).0, 1);
    assert!(
        std::fs::read(&img).unwrap() == before,
        "the refused mkfs changed the image"
    );
}

/// Found in review: nothing stopped fsck -y or mkfs -f on an image another
/// biofs process was writing. A read-write open now takes an exclusive lock.
#[test]
fn tools_refuse_an_image_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.img");
    let p = img.to_str().unwrap();
    assert_eq!(run(MKFS, &["-q", "-s", "64M", p]).0, 0);
    let holder = open_rw(&img);
    let (code, out) = fsck(&img, &["-fy"]);
    assert_eq!(code, 8, "{out}");
    assert!(out.contains("in use"), "{out}");
    let (code, out) = run(MKFS, &["-q", "-f", p]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("in use"), "{out}");
    // A read-only check still runs (as e2fsck -n does).
    let (code, out) = fsck(&img, &["-fn"]);
    assert_eq!(code, 0, "{out}");
    holder.close().unwrap();
    let (code, out) = fsck(&img, &["-fy"]);
    assert_eq!(code, 0, "{out}");
}

/// A block device with a kernel filesystem mounted on it is refused (the
/// kernel refuses our O_EXCL open while it is mounted).
#[test]
fn tools_refuse_a_mounted_block_device() {
    let Some((dev, _guard)) = common::loop_device(64 << 20) else {
        return;
    };
    let d = dev.to_str().unwrap();
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", d])
        .output()
        .is_ok_and(|o| o.status.success());
    if !made {
        println!("skipped: mkfs.ext4 is not installed");
        return;
    }
    let mnt = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .arg(d)
        .arg(mnt.path())
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        println!("skipped: can't mount ext4 here");
        return;
    }
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(mnt.path());
    let (code, out) = run(MKFS, &["-q", "-f", d]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("in use"), "{out}");
}
