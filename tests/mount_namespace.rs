//! The namespace of a mounted biofs, as a Linux user expects it of ext4:
//! create, unlink, directories, the errno of each refusal, name length,
//! hard and symbolic links, rename and renameat2, readdir, unlinked open
//! files, special files, deep paths and persistence across remount.
//!
//! Each test mounts its own image (tests/common/mount.rs); set
//! `BIOFS_TEST_DIR` to run them against a directory of another filesystem.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::check::{assert_file, data, expect_errno, ok};
use common::mount::Mounted;
use common::posix;

macro_rules! mount {
    () => {
        match Mounted::new() {
            Some(m) => m,
            None => return,
        }
    };
}

fn nlink(p: &Path) -> u64 {
    ok(fs::symlink_metadata(p), "lstat").nlink()
}

fn ino(p: &Path) -> u64 {
    ok(fs::symlink_metadata(p), "lstat").ino()
}

/// Names in `dir` (without "." and "..", and without the `lost+found` of
/// a filesystem's root), sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = ok(fs::read_dir(dir), "readdir")
        .map(|e| {
            ok(e, "readdir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n != "lost+found")
        .collect();
    v.sort();
    v
}

#[test]
fn create_unlink_mkdir_rmdir() {
    let m = mount!();
    let root_links = nlink(m.root());
    ok(fs::write(m.path("f"), b"x"), "create");
    assert!(ok(fs::metadata(m.path("f")), "stat").is_file());
    assert_eq!(nlink(&m.path("f")), 1);
    ok(fs::remove_file(m.path("f")), "unlink");
    expect_errno(fs::metadata(m.path("f")), libc::ENOENT, "stat after unlink");
    ok(fs::create_dir(m.path("d")), "mkdir");
    let md = ok(fs::metadata(m.path("d")), "stat");
    assert!(md.is_dir());
    assert_eq!(md.nlink(), 2, "a new directory has 2 links");
    assert_eq!(nlink(m.root()), root_links + 1, "parent gains a link");
    ok(fs::create_dir(m.path("d/sub")), "mkdir");
    assert_eq!(nlink(&m.path("d")), 3);
    ok(fs::remove_dir(m.path("d/sub")), "rmdir");
    assert_eq!(nlink(&m.path("d")), 2);
    ok(fs::remove_dir(m.path("d")), "rmdir");
    assert_eq!(nlink(m.root()), root_links);
    expect_errno(fs::metadata(m.path("d")), libc::ENOENT, "stat after rmdir");
    assert!(names(m.root()).iter().all(|n| n != "d" && n != "f"));
}

#[test]
fn refusals_have_the_kernels_errno() {
    let m = mount!();
    ok(fs::create_dir(m.path("d")), "mkdir");
    ok(fs::write(m.path("d/f"), b"x"), "create");
    ok(fs::write(m.path("file"), b"x"), "create");
    expect_errno(
        fs::remove_dir(m.path("d")),
        libc::ENOTEMPTY,
        "rmdir non-empty",
    );
    expect_errno(
        fs::create_dir(m.path("d")),
        libc::EEXIST,
        "mkdir existing dir",
    );
    expect_errno(
        fs::create_dir(m.path("file")),
        libc::EEXIST,
        "mkdir over a file",
    );
    expect_errno(
        posix::mknod(&m.path("file"), libc::S_IFIFO | 0o644, 0),
        libc::EEXIST,
        "mknod over a file",
    );
    expect_errno(
        symlink("x", m.path("file")),
        libc::EEXIST,
        "symlink over a file",
    );
    expect_errno(File::open(m.path("nope")), libc::ENOENT, "open missing");
    expect_errno(
        fs::remove_file(m.path("nope")),
        libc::ENOENT,
        "unlink missing",
    );
    expect_errno(
        fs::remove_dir(m.path("nope")),
        libc::ENOENT,
        "rmdir missing",
    );
    expect_errno(
        fs::write(m.path("nope/f"), b""),
        libc::ENOENT,
        "create in missing dir",
    );
    expect_errno(
        fs::metadata(m.path("file/x")),
        libc::ENOTDIR,
        "stat under a file",
    );
    expect_errno(
        fs::create_dir(m.path("file/x")),
        libc::ENOTDIR,
        "mkdir under a file",
    );
    expect_errno(
        fs::remove_dir(m.path("file")),
        libc::ENOTDIR,
        "rmdir a file",
    );
    expect_errno(
        OpenOptions::new().write(true).open(m.path("d")),
        libc::EISDIR,
        "open a directory for writing",
    );
    expect_errno(
        fs::remove_file(m.path("d")),
        libc::EISDIR,
        "unlink a directory",
    );
    expect_errno(fs::remove_dir(m.path("d/.")), libc::EINVAL, "rmdir .");
    assert_file(&m.path("d/f"), b"x");
}

#[test]
fn names_up_to_255_bytes() {
    let m = mount!();
    let n255 = "n".repeat(250) + "12345";
    let n256 = "n".repeat(256);
    ok(fs::write(m.path(&n255), b"long"), "create 255-byte name");
    assert_file(&m.path(&n255), b"long");
    assert!(names(m.root()).contains(&n255), "readdir lists it");
    ok(
        fs::create_dir(m.path(&format!("d{}", &n255[1..]))),
        "mkdir 255",
    );
    let tl = libc::ENAMETOOLONG;
    expect_errno(fs::write(m.path(&n256), b""), tl, "create 256");
    expect_errno(fs::create_dir(m.path(&n256)), tl, "mkdir 256");
    expect_errno(fs::metadata(m.path(&n256)), tl, "lookup 256");
    expect_errno(symlink("t", m.path(&n256)), tl, "symlink 256");
    expect_errno(fs::hard_link(m.path(&n255), m.path(&n256)), tl, "link 256");
    expect_errno(
        fs::rename(m.path(&n255), m.path(&n256)),
        tl,
        "rename to 256",
    );
    expect_errno(
        posix::mknod(&m.path(&n256), libc::S_IFIFO | 0o644, 0),
        tl,
        "mknod 256",
    );
    assert_file(&m.path(&n255), b"long");
    let listed = names(m.root());
    assert!(listed.iter().all(|n| n.len() <= 255), "no long name got in");
}

#[test]
fn hard_links_share_the_inode() {
    let m = mount!();
    let a = m.path("a");
    ok(fs::write(&a, b"first"), "create");
    ok(fs::create_dir(m.path("d")), "mkdir");
    ok(fs::hard_link(&a, m.path("b")), "link");
    ok(fs::hard_link(&a, m.path("d/c")), "link into a subdirectory");
    for p in [m.path("a"), m.path("b"), m.path("d/c")] {
        assert_eq!(nlink(&p), 3, "{}", p.display());
        assert_eq!(ino(&p), ino(&a));
    }
    ok(fs::write(m.path("b"), b"second"), "write through b");
    assert_file(&m.path("d/c"), b"second");
    ok(fs::remove_file(&a), "unlink a");
    assert_eq!(nlink(&m.path("b")), 2);
    assert_file(&m.path("b"), b"second");
    expect_errno(
        fs::hard_link(m.path("b"), m.path("d/c")),
        libc::EEXIST,
        "link over a name",
    );
    expect_errno(
        fs::hard_link(m.path("gone"), m.path("x")),
        libc::ENOENT,
        "link missing",
    );
    ok(fs::remove_file(m.path("b")), "unlink b");
    assert_eq!(nlink(&m.path("d/c")), 1);
    assert_file(&m.path("d/c"), b"second");
}

#[test]
fn linking_a_directory_is_eperm() {
    let m = mount!();
    ok(fs::create_dir(m.path("d")), "mkdir");
    expect_errno(
        fs::hard_link(m.path("d"), m.path("e")),
        libc::EPERM,
        "link a directory",
    );
    assert_eq!(nlink(&m.path("d")), 2);
    expect_errno(fs::metadata(m.path("e")), libc::ENOENT, "no name made");
}

#[test]
fn symlinks_and_readlink() {
    let m = mount!();
    ok(fs::create_dir(m.path("d")), "mkdir");
    ok(fs::write(m.path("d/target"), b"through the link"), "create");
    // Targets short and long: biofs keeps up to 128 bytes in the inode.
    for len in [1usize, 127, 128, 129, 300, 4000] {
        let target = "t".repeat(len);
        let p = m.path(&format!("s{len}"));
        ok(symlink(&target, &p), "symlink");
        let md = ok(fs::symlink_metadata(&p), "lstat");
        assert!(md.file_type().is_symlink());
        assert_eq!(
            md.len(),
            len as u64,
            "a symlink's size is its target's length"
        );
        assert_eq!(ok(fs::read_link(&p), "readlink"), PathBuf::from(&target));
    }
    ok(symlink("d/target", m.path("rel")), "symlink");
    assert_file(&m.path("rel"), b"through the link");
    ok(
        symlink(m.path("d"), m.path("abs")),
        "symlink to a directory",
    );
    assert_file(&m.path("abs/target"), b"through the link");
    ok(symlink("nowhere", m.path("dangling")), "dangling symlink");
    expect_errno(
        fs::metadata(m.path("dangling")),
        libc::ENOENT,
        "stat dangling",
    );
    ok(fs::symlink_metadata(m.path("dangling")), "lstat dangling");
    expect_errno(
        fs::read_link(m.path("d/target")),
        libc::EINVAL,
        "readlink a file",
    );
    // Unlinking a symlink leaves its target.
    ok(fs::remove_file(m.path("rel")), "unlink symlink");
    assert_file(&m.path("d/target"), b"through the link");
}

#[test]
fn symlink_loops_are_eloop() {
    let m = mount!();
    ok(symlink("b", m.path("a")), "symlink");
    ok(symlink("a", m.path("b")), "symlink");
    ok(symlink("self", m.path("self")), "symlink");
    expect_errno(File::open(m.path("a")), libc::ELOOP, "open a loop");
    expect_errno(
        fs::metadata(m.path("self")),
        libc::ELOOP,
        "stat a self loop",
    );
    expect_errno(
        fs::write(m.path("a"), b""),
        libc::ELOOP,
        "create through a loop",
    );
    // Linux follows at most 40 links in a path.
    ok(fs::write(m.path("end"), b"end"), "create");
    let mut prev = "end".to_string();
    for i in 0..41 {
        let name = format!("chain{i}");
        ok(symlink(&prev, m.path(&name)), "symlink");
        prev = name;
    }
    assert_file(&m.path("chain39"), b"end");
    expect_errno(File::open(m.path("chain40")), libc::ELOOP, "41 links");
}

#[test]
fn rename_a_file_over_a_file() {
    let m = mount!();
    ok(fs::write(m.path("a"), b"A"), "create");
    ok(fs::write(m.path("b"), b"B"), "create");
    ok(fs::hard_link(m.path("b"), m.path("b2")), "link");
    let a_ino = ino(&m.path("a"));
    ok(fs::rename(m.path("a"), m.path("b")), "rename over");
    expect_errno(fs::metadata(m.path("a")), libc::ENOENT, "old name");
    assert_file(&m.path("b"), b"A");
    assert_eq!(ino(&m.path("b")), a_ino, "the moved inode");
    assert_eq!(nlink(&m.path("b2")), 1, "the replaced inode lost a link");
    assert_file(&m.path("b2"), b"B");
    // Renaming onto another name of the same inode does nothing.
    ok(fs::hard_link(m.path("b"), m.path("b3")), "link");
    ok(
        fs::rename(m.path("b"), m.path("b3")),
        "rename onto a hard link",
    );
    assert_file(&m.path("b"), b"A");
    assert_eq!(nlink(&m.path("b")), 2);
    ok(fs::rename(m.path("b"), m.path("b")), "rename onto itself");
    assert_eq!(names(m.root()), ["b", "b2", "b3"]);
}

#[test]
fn rename_into_another_directory() {
    let m = mount!();
    ok(fs::create_dir_all(m.path("d1/sub")), "mkdir");
    ok(fs::create_dir(m.path("d2")), "mkdir");
    ok(fs::write(m.path("d1/f"), b"moved"), "create");
    ok(fs::write(m.path("d1/sub/inner"), b"inner"), "create");
    ok(
        fs::rename(m.path("d1/f"), m.path("d2/g")),
        "rename file across",
    );
    assert_file(&m.path("d2/g"), b"moved");
    assert_eq!(names(&m.path("d1")), ["sub"]);
    assert_eq!((nlink(&m.path("d1")), nlink(&m.path("d2"))), (3, 2));
    ok(
        fs::rename(m.path("d1/sub"), m.path("d2/sub")),
        "rename dir across",
    );
    assert_eq!(
        (nlink(&m.path("d1")), nlink(&m.path("d2"))),
        (2, 3),
        "links move with .."
    );
    assert_eq!(
        ino(&m.path("d2/sub/..")),
        ino(&m.path("d2")),
        ".. follows the move"
    );
    assert_file(&m.path("d2/sub/inner"), b"inner");
    assert_eq!(names(&m.path("d2")), ["g", "sub"]);
    assert!(names(&m.path("d1")).is_empty());
}

#[test]
fn rename_a_directory_over_a_directory() {
    let m = mount!();
    ok(fs::create_dir_all(m.path("src/x")), "mkdir");
    ok(fs::create_dir(m.path("empty")), "mkdir");
    ok(fs::create_dir_all(m.path("full/y")), "mkdir");
    ok(fs::write(m.path("file"), b""), "create");
    let src = ino(&m.path("src"));
    let links = nlink(m.root());
    ok(
        fs::rename(m.path("src"), m.path("empty")),
        "over an empty directory",
    );
    assert_eq!(ino(&m.path("empty")), src);
    assert!(m.path("empty/x").is_dir());
    assert_eq!(
        nlink(m.root()),
        links - 1,
        "the replaced directory's .. is gone"
    );
    expect_errno(
        fs::rename(m.path("empty"), m.path("full")),
        libc::ENOTEMPTY,
        "over non-empty",
    );
    assert!(m.path("full/y").is_dir() && m.path("empty/x").is_dir());
    expect_errno(
        fs::rename(m.path("empty"), m.path("file")),
        libc::ENOTDIR,
        "dir over file",
    );
    expect_errno(
        fs::rename(m.path("file"), m.path("full")),
        libc::EISDIR,
        "file over dir",
    );
    expect_errno(
        fs::rename(m.path("full"), m.path("full/y/z")),
        libc::EINVAL,
        "into its subdir",
    );
    expect_errno(
        fs::rename(m.path("full"), m.path("full/z")),
        libc::EINVAL,
        "into itself",
    );
    assert_eq!(names(m.root()), ["empty", "file", "full"]);
}

#[test]
fn renameat2_noreplace_and_exchange() {
    let m = mount!();
    ok(fs::write(m.path("a"), b"A"), "create");
    ok(fs::write(m.path("b"), b"B"), "create");
    ok(fs::create_dir_all(m.path("d/inner")), "mkdir");
    ok(fs::create_dir(m.path("e")), "mkdir");
    expect_errno(
        posix::renameat2(&m.path("a"), &m.path("b"), libc::RENAME_NOREPLACE),
        libc::EEXIST,
        "NOREPLACE onto a file",
    );
    assert_file(&m.path("a"), b"A");
    assert_file(&m.path("b"), b"B");
    ok(
        posix::renameat2(&m.path("a"), &m.path("c"), libc::RENAME_NOREPLACE),
        "NOREPLACE",
    );
    assert_file(&m.path("c"), b"A");
    let (b_ino, c_ino) = (ino(&m.path("b")), ino(&m.path("c")));
    ok(
        posix::renameat2(&m.path("b"), &m.path("c"), libc::RENAME_EXCHANGE),
        "EXCHANGE files",
    );
    assert_file(&m.path("b"), b"A");
    assert_file(&m.path("c"), b"B");
    assert_eq!((ino(&m.path("b")), ino(&m.path("c"))), (c_ino, b_ino));
    // A file and a directory in different parents trade places; the
    // directory's .. and both parents' link counts follow.
    ok(
        posix::renameat2(&m.path("b"), &m.path("d/inner"), libc::RENAME_EXCHANGE),
        "EXCHANGE",
    );
    assert!(m.path("b").is_dir() && m.path("d/inner").is_file());
    assert_file(&m.path("d/inner"), b"A");
    assert_eq!(ino(&m.path("b/..")), ino(m.root()));
    assert_eq!(nlink(&m.path("d")), 2, "d lost its subdirectory");
    expect_errno(
        posix::renameat2(&m.path("c"), &m.path("missing"), libc::RENAME_EXCHANGE),
        libc::ENOENT,
        "EXCHANGE with a missing name",
    );
    expect_errno(
        posix::renameat2(
            &m.path("c"),
            &m.path("e"),
            libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE,
        ),
        libc::EINVAL,
        "both flags",
    );
}

#[test]
fn readdir_of_5000_entries_lists_each_once() {
    let m = mount!();
    let d = m.path("big");
    ok(fs::create_dir(&d), "mkdir");
    let name = |i: usize| format!("{i}-{}", "x".repeat(i % 40));
    for i in 0..5000 {
        ok(File::create(d.join(name(i))), "create");
    }
    let check = |want: &dyn Fn(usize) -> bool| {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for e in ok(posix::read_dir_all(&d, 4096), "getdents") {
            *seen.entry(e.name_str().to_string()).or_default() += 1;
            if e.name != b"." && e.name != b".." {
                assert_eq!(e.kind, libc::DT_REG, "d_type of {}", e.name_str());
            }
        }
        let dups: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
        assert!(dups.is_empty(), "listed more than once: {dups:?}");
        assert!(seen.contains_key(".") && seen.contains_key(".."));
        let expected = (0..5000).filter(|&i| want(i)).count();
        assert_eq!(seen.len(), expected + 2, "entry count");
        for i in (0..5000).filter(|&i| want(i)) {
            assert!(seen.contains_key(&name(i)), "{} missing", name(i));
        }
    };
    check(&|_| true);
    for i in (0..5000).filter(|i| i % 3 == 0) {
        ok(fs::remove_file(d.join(name(i))), "unlink");
    }
    check(&|i| i % 3 != 0);
}

#[test]
fn readdir_while_changing_lists_untouched_entries_once() {
    let m = mount!();
    let d = m.path("dir");
    ok(fs::create_dir(&d), "mkdir");
    for i in 0..1500 {
        ok(File::create(d.join(format!("keep-{i:04}"))), "create");
    }
    for i in 0..500 {
        ok(File::create(d.join(format!("gone-{i:04}"))), "create");
    }
    let dir = ok(
        posix::open_mode(&d, libc::O_RDONLY | libc::O_DIRECTORY, 0),
        "open dir",
    );
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let (mut added, mut removed) = (0, 0);
    loop {
        let batch = ok(posix::getdents(&dir, 1024), "getdents");
        if batch.is_empty() {
            break;
        }
        for e in batch {
            *seen.entry(e.name_str().to_string()).or_default() += 1;
        }
        // Between batches: add 25 names and remove 25 others.
        for _ in 0..25 {
            if added < 500 {
                ok(File::create(d.join(format!("new-{added:04}"))), "create");
                added += 1;
            }
            if removed < 500 {
                ok(
                    fs::remove_file(d.join(format!("gone-{removed:04}"))),
                    "unlink",
                );
                removed += 1;
            }
        }
    }
    let dups: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(dups.is_empty(), "listed more than once: {dups:?}");
    for i in 0..1500 {
        assert!(
            seen.contains_key(&format!("keep-{i:04}")),
            "keep-{i:04} missing"
        );
    }
    assert!(
        removed > 0 && added > 0,
        "the directory changed during the scan"
    );
}

#[test]
fn an_unlinked_open_file_lives_until_closed() {
    let m = mount!();
    let p = m.path("tmp");
    let mut f = ok(
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p),
        "create",
    );
    ok(f.write_all(&data(1, 100_000)), "write");
    ok(fs::remove_file(&p), "unlink while open");
    expect_errno(fs::metadata(&p), libc::ENOENT, "name gone");
    assert_eq!(ok(f.metadata(), "fstat").nlink(), 0);
    ok(f.write_all(&data(2, 50_000)), "write after unlink");
    ok(f.sync_all(), "fsync after unlink");
    ok(f.seek(SeekFrom::Start(0)), "seek");
    let mut got = Vec::new();
    ok(f.read_to_end(&mut got), "read after unlink");
    assert_eq!(got, [data(1, 100_000), data(2, 50_000)].concat());
    // A new file of the same name is another inode.
    ok(fs::write(&p, b"new"), "create the name again");
    assert_ne!(ino(&p), ok(f.metadata(), "fstat").ino());
    assert_eq!(ok(f.metadata(), "fstat").len(), 150_000);
    assert_file(&p, b"new");
    drop(f);
    assert_eq!(names(m.root()), ["tmp"]);
}

#[test]
fn mknod_fifo_socket_and_devices() {
    let mut m = mount!();
    ok(
        posix::mknod(&m.path("fifo"), libc::S_IFIFO | 0o640, 0),
        "mkfifo",
    );
    ok(
        posix::mknod(&m.path("sock"), libc::S_IFSOCK | 0o600, 0),
        "mknod socket",
    );
    let null = posix::makedev(1, 3);
    let loop0 = posix::makedev(7, 0);
    ok(
        posix::mknod(&m.path("chr"), libc::S_IFCHR | 0o666, null),
        "mknod chr",
    );
    ok(
        posix::mknod(&m.path("blk"), libc::S_IFBLK | 0o660, loop0),
        "mknod blk",
    );
    let check = |m: &Mounted| {
        let t = |p| ok(fs::symlink_metadata(m.path(p)), "lstat");
        assert!(t("fifo").file_type().is_fifo());
        assert!(t("sock").file_type().is_socket());
        assert!(t("chr").file_type().is_char_device());
        assert!(t("blk").file_type().is_block_device());
        assert_eq!(t("chr").rdev(), null);
        assert_eq!(t("blk").rdev(), loop0);
        assert_eq!(t("fifo").mode() & 0o7777, 0o640 & !umask());
    };
    check(&m);
    // The fifo works: a write end and a read end through the mount.
    let r = ok(
        posix::open_mode(&m.path("fifo"), libc::O_RDONLY | libc::O_NONBLOCK, 0),
        "open fifo for reading",
    );
    let mut w = ok(
        OpenOptions::new().write(true).open(m.path("fifo")),
        "open fifo",
    );
    ok(w.write_all(b"through"), "write fifo");
    let mut buf = [0u8; 7];
    ok((&r).read_exact(&mut buf), "read fifo");
    assert_eq!(&buf, b"through");
    drop((r, w));
    m.remount();
    check(&m);
}

fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .unwrap_or(0o022)
}

#[test]
fn deep_paths_of_100_levels() {
    let mut m = mount!();
    let mut p = m.root().to_path_buf();
    for i in 0..100 {
        p.push(format!("level-{i:03}-abcdef"));
        ok(fs::create_dir(&p), "mkdir");
    }
    let file = p.join("bottom");
    ok(fs::write(&file, data(1, 5000)), "create at the bottom");
    assert!(file.as_os_str().len() > 1000);
    m.remount();
    assert_file(&file, &data(1, 5000));
    let mut depth = 0;
    let mut q = m.path("level-000-abcdef");
    while let Some(next) = names(&q).into_iter().find(|n| n.starts_with("level")) {
        q.push(next);
        depth += 1;
    }
    assert_eq!(depth, 99);
    ok(fs::remove_dir_all(m.path("level-000-abcdef")), "rm -r");
    assert!(names(m.root()).iter().all(|n| !n.starts_with("level")));
}

/// What `lstat` and the contents say of every path under `root`.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in ok(fs::read_dir(&dir), "readdir") {
            let p = ok(e, "entry").path();
            let md = ok(fs::symlink_metadata(&p), "lstat");
            let ft = md.file_type();
            let extra = if ft.is_dir() {
                stack.push(p.clone());
                String::new()
            } else if ft.is_symlink() {
                format!("-> {:?}", ok(fs::read_link(&p), "readlink"))
            } else if ft.is_file() {
                let c = ok(fs::read(&p), "read");
                format!("xxh3 {:x}", xxhash_rust::xxh3::xxh3_64(&c))
            } else {
                String::new()
            };
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let line = format!(
                "ino {} mode {:o} nlink {} uid {} gid {} size {} rdev {} mtime {}.{:09} ctime {}.{:09} {extra}",
                md.ino(), md.mode(), md.nlink(), md.uid(), md.gid(), if ft.is_dir() { 0 } else { md.size() },
                md.rdev(), md.mtime(), md.mtime_nsec(), md.ctime(), md.ctime_nsec()
            );
            out.insert(rel, line);
        }
    }
    out
}

#[test]
fn the_tree_persists_across_remount() {
    let mut m = mount!();
    ok(fs::create_dir_all(m.path("a/b/c")), "mkdir");
    ok(fs::create_dir(m.path("empty")), "mkdir");
    for i in 0..20u64 {
        ok(
            fs::write(m.path(&format!("a/f{i}")), data(i, (i * 1000) as usize)),
            "create",
        );
    }
    ok(fs::write(m.path("a/b/c/deep"), data(99, 12_345)), "create");
    ok(
        fs::hard_link(m.path("a/f3"), m.path("a/b/link-to-f3")),
        "link",
    );
    ok(symlink("b/c/deep", m.path("a/sym")), "symlink");
    ok(symlink("x".repeat(500), m.path("a/longsym")), "symlink");
    ok(
        posix::mknod(&m.path("fifo"), libc::S_IFIFO | 0o600, 0),
        "mkfifo",
    );
    ok(
        posix::mknod(&m.path("null"), libc::S_IFCHR | 0o666, posix::makedev(1, 3)),
        "mknod",
    );
    ok(
        std::os::unix::fs::chown(m.path("a/f1"), Some(1234), Some(5678)),
        "chown",
    );
    ok(
        fs::set_permissions(
            m.path("a/f2"),
            std::os::unix::fs::PermissionsExt::from_mode(0o4751),
        ),
        "chmod",
    );
    ok(fs::rename(m.path("a/f4"), m.path("a/b/renamed")), "rename");
    ok(fs::remove_file(m.path("a/f5")), "unlink");
    ok(fs::remove_dir(m.path("empty")), "rmdir");
    let before = snapshot(m.root());
    assert!(before.len() > 25, "the tree: {before:?}");
    m.remount();
    let after = snapshot(m.root());
    assert_eq!(before, after, "tree after remount");
}
