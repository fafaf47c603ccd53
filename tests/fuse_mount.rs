//! `biofs` mounting for real: the FUSE adapter over the core, through the
//! kernel. Files, directories, links and xattrs made through the mount;
//! the adapter's own answers (ENAMETOOLONG, rename flags, the stats
//! xattr); the end by umount, by SIGTERM and from the daemon, each leaving
//! a filesystem that fsck finds clean and that mounts again with the data.
//!
//! Needs root and /dev/fuse; skips with a printed reason without them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIOFS: &str = env!("CARGO_BIN_EXE_biofs");
const MKFS: &str = env!("CARGO_BIN_EXE_mkfs-biofs");
const FSCK: &str = env!("CARGO_BIN_EXE_fsck-biofs");

fn can_mount() -> bool {
    if !matches!(fs::metadata("/proc/self").map(|m| m.uid()), Ok(0)) {
        println!("skipped: mounting needs root");
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        println!("skipped: no /dev/fuse");
        return false;
    }
    true
}

/// A fresh 256 MiB biofs image and a mount point, in a directory removed
/// at the end.
struct Scratch {
    _dir: tempfile::TempDir,
    img: PathBuf,
    mnt: PathBuf,
}

fn scratch() -> Scratch {
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("tempdir");
    let img = dir.path().join("fs.img");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mount point");
    let st = Command::new(MKFS)
        .args(["-q", "--size", "256M"])
        .arg(&img)
        .status()
        .expect("mkfs.biofs");
    assert!(st.success(), "mkfs.biofs failed");
    Scratch {
        _dir: dir,
        img,
        mnt,
    }
}

fn mountinfo_has(mnt: &Path) -> Option<String> {
    let m = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let d = mnt.to_string_lossy().into_owned();
    m.lines()
        .find(|l| l.split(' ').nth(1) == Some(d.as_str()))
        .map(str::to_string)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `biofs -f` in the background, once its mount is there.
fn mount_fg(s: &Scratch, opts: &str) -> Child {
    let mut c = Command::new(BIOFS);
    c.arg("-f");
    if !opts.is_empty() {
        c.args(["-o", opts]);
    }
    let child = c
        .arg(&s.img)
        .arg(&s.mnt)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("biofs -f");
    let mut child = child;
    wait_until("the mount", || {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("biofs -f ended with {st} before mounting");
        }
        mountinfo_has(&s.mnt).is_some()
    });
    child
}

fn umount(mnt: &Path) {
    let st = Command::new("umount").arg(mnt).status().expect("umount");
    assert!(st.success(), "umount {} failed", mnt.display());
}

fn fsck_clean(img: &Path) {
    let out = Command::new(FSCK)
        .args(["-f", "-n"])
        .arg(img)
        .output()
        .expect("fsck.biofs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn content(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn setxattr(p: &Path, name: &str, value: &[u8]) -> i32 {
    let (p, n) = (
        CString::new(p.as_os_str().as_bytes()).expect("path"),
        CString::new(name).expect("name"),
    );
    // SAFETY: NUL-terminated strings and a buffer of the given length.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> i32 {
    let (a, b) = (
        CString::new(from.as_os_str().as_bytes()).expect("path"),
        CString::new(to.as_os_str().as_bytes()).expect("path"),
    );
    // SAFETY: two NUL-terminated paths, relative to the working directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

#[test]
fn files_made_through_the_mount_survive_umount_and_fsck() {
    if !can_mount() {
        return;
    }
    let s = scratch();
    // A plain fuse mount shows the image as its source (fuseblk: below).
    let mut child = mount_fg(&s, "nofuseblk");
    let line = mountinfo_has(&s.mnt).unwrap_or_default();
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.first().copied(), Some(s.img.to_str().unwrap_or("")));
    assert_eq!(fields.get(2).copied(), Some("fuse.biofs"), "{line}");
    assert!(line.contains("default_permissions"), "{line}");

    let m = &s.mnt;
    let big = content(3 << 20, 7);
    fs::write(m.join("big"), &big).expect("write big");
    fs::create_dir_all(m.join("d/e")).expect("mkdir");
    fs::write(m.join("d/e/small"), b"hello").expect("write small");
    std::os::unix::fs::symlink("d/e/small", m.join("sym")).expect("symlink");
    fs::hard_link(m.join("big"), m.join("big2")).expect("link");
    fs::rename(m.join("d/e/small"), m.join("d/moved")).expect("rename");
    assert_eq!(setxattr(&m.join("d"), "user.k", b"v"), 0);
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.join("d/moved"))
        .expect("open append");
    f.write_all(b" world").expect("append");
    drop(f);
    fs::set_permissions(m.join("d/moved"), fs::Permissions::from_mode(0o4751)).expect("chmod");
    assert_eq!(fs::read(m.join("d/moved")).expect("read"), b"hello world");
    let names: Vec<String> = fs::read_dir(m)
        .expect("readdir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    for n in ["big", "big2", "d", "sym"] {
        assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
    }

    umount(m);
    let st = child.wait().expect("wait biofs");
    assert!(st.success(), "biofs ended with {st}");
    fsck_clean(&s.img);

    let mut child = mount_fg(&s, "ro");
    assert_eq!(fs::read(m.join("big")).expect("read big"), big);
    assert_eq!(fs::metadata(m.join("big2")).expect("stat").nlink(), 2);
    assert_eq!(
        fs::read_link(m.join("sym")).expect("readlink"),
        Path::new("d/e/small")
    );
    assert_eq!(fs::read(m.join("sym")).ok(), None); // its target moved
    let meta = fs::metadata(m.join("d/moved")).expect("stat moved");
    assert_eq!(meta.mode() & 0o7777, 0o4751);
    assert_eq!(
        biofs::sys::getxattr(&m.join("d"), "user.k").ok(),
        Some(b"v".to_vec())
    );
    let ro = fs::write(m.join("new"), b"x").map_err(|e| e.raw_os_error());
    assert_eq!(ro, Err(Some(libc::EROFS)));
    umount(m);
    assert!(child.wait().expect("wait").success());
}

#[test]
fn the_adapter_answers_names_renames_and_stats() {
    if !can_mount() {
        return;
    }
    let s = scratch();
    let mut child = mount_fg(&s, "threads=2");
    let m = &s.mnt;
    let long = m.join("n".repeat(256));
    let e = fs::write(&long, b"").map_err(|e| e.raw_os_error());
    assert_eq!(e, Err(Some(libc::ENAMETOOLONG)));
    let e = fs::metadata(&long).map_err(|e| e.raw_os_error());
    assert_eq!(e.err(), Some(Some(libc::ENAMETOOLONG)));
    fs::write(m.join("n".repeat(255)), b"").expect("255 bytes is a name");

    fs::write(m.join("a"), b"A").expect("a");
    fs::write(m.join("b"), b"B").expect("b");
    assert_eq!(
        renameat2(&m.join("a"), &m.join("b"), libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(
        renameat2(&m.join("a"), &m.join("b"), libc::RENAME_EXCHANGE),
        0
    );
    assert_eq!(fs::read(m.join("a")).ok(), Some(b"B".to_vec()));
    assert_eq!(fs::read(m.join("b")).ok(), Some(b"A".to_vec()));
    assert_eq!(
        renameat2(&m.join("a"), &m.join("c"), libc::RENAME_WHITEOUT),
        libc::EINVAL
    );

    let out = Command::new(BIOFS)
        .arg("stats")
        .arg(m)
        .output()
        .expect("biofs stats");
    assert!(out.status.success());
    assert!(!out.stdout.is_empty());
    assert_eq!(setxattr(m, "trusted.biofs.stats", b"x"), libc::EPERM);
    let listed = {
        let mut buf = vec![0u8; 4096];
        let p = CString::new(m.as_os_str().as_bytes()).expect("path");
        // SAFETY: a NUL-terminated path and a buffer of the given length.
        let n = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        buf.truncate(n.max(0) as usize);
        buf
    };
    assert!(
        !listed.windows(5).any(|w| w == b"biofs"),
        "the stats xattr is listed"
    );

    // O_SYNC writes and reads back after the kernel's cache is dropped.
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .custom_flags(libc::O_SYNC)
        .open(m.join("sync"))
        .expect("open O_SYNC");
    f.write_all(&content(100_000, 3)).expect("write O_SYNC");
    drop(f);
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
    let mut back = Vec::new();
    fs::File::open(m.join("sync"))
        .and_then(|mut f| f.read_to_end(&mut back))
        .expect("read back");
    assert_eq!(back, content(100_000, 3));
    umount(m);
    assert!(child.wait().expect("wait").success());
    fsck_clean(&s.img);
}

#[test]
fn sigterm_and_the_daemon_end_cleanly() {
    if !can_mount() {
        return;
    }
    let s = scratch();
    let child = mount_fg(&s, "nowritecache");
    fs::write(s.mnt.join("kept"), content(50_000, 9)).expect("write");
    // SAFETY: a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "biofs ended with {}", out.status);
    assert!(
        mountinfo_has(&s.mnt).is_none(),
        "still mounted after SIGTERM"
    );
    fsck_clean(&s.img);

    // The daemon returns once the mount is ready.
    let st = Command::new(BIOFS)
        .arg(&s.img)
        .arg(&s.mnt)
        .status()
        .expect("biofs");
    assert!(st.success());
    assert!(
        mountinfo_has(&s.mnt).is_some(),
        "not mounted when biofs returned"
    );
    assert_eq!(fs::read(s.mnt.join("kept")).ok(), Some(content(50_000, 9)));
    // A second mount of the image is refused in one line.
    let other = s.mnt.with_file_name("mnt2");
    fs::create_dir(&other).expect("mnt2");
    let out = Command::new(BIOFS)
        .arg(&s.img)
        .arg(&other)
        .output()
        .expect("biofs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("in use"), "{err}");
    umount(&s.mnt);
    // The daemon has ended when the image's lock is free.
    let img = fs::File::open(&s.img).expect("image");
    wait_until("the daemon's end", || {
        biofs::sys::flock_exclusive_nonblock(&img).is_ok()
    });
    fsck_clean(&s.img);
}

/// A fuseblk mount of an image: on a loop device attached to it (direct
/// I/O, autoclear); `umount` returns with the image complete and free, and
/// the loop device goes with the mount.
#[test]
fn fuseblk_umount_returns_with_the_image_complete_and_free() {
    if !can_mount() || !Path::new("/dev/loop-control").exists() {
        eprintln!("skipped: needs root, /dev/fuse and loop devices");
        return;
    }
    let s = scratch();
    let child = mount_fg(&s, "");
    let line = mountinfo_has(&s.mnt).unwrap_or_default();
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.get(2).copied(), Some("fuseblk.biofs"), "{line}");
    let dev = fields.first().copied().unwrap_or("");
    let name = dev.strip_prefix("/dev/").unwrap_or("");
    assert!(name.starts_with("loop"), "{line}");
    let backing = format!("/sys/block/{name}/loop/backing_file");
    let back = fs::read_to_string(&backing).unwrap_or_default();
    assert_eq!(back.trim_end(), s.img.to_string_lossy(), "{backing}");
    let flags = fs::read_to_string(format!("/sys/block/{name}/loop/dio")).unwrap_or_default();
    assert_eq!(flags.trim(), "1", "the loop device does direct I/O");

    let big = content(24 << 20, 5);
    fs::write(s.mnt.join("big"), &big).expect("write big");
    for i in 0..50 {
        fs::write(s.mnt.join(format!("f{i}")), content(1000 + i * 97, i as u8)).expect("write");
    }
    umount(&s.mnt);
    // No wait: the image is free and whole when umount returns.
    let img = fs::File::open(&s.img).expect("image");
    assert!(
        biofs::sys::flock_exclusive_nonblock(&img).is_ok(),
        "the image is still locked right after umount"
    );
    let copy = s.img.with_extension("copy");
    fs::copy(&s.img, &copy).expect("copy the image");
    drop(img);
    fsck_clean(&copy);
    let mut child = child;
    let st = child.wait().expect("biofs -f");
    assert!(st.success(), "biofs -f ended with {st}");
    wait_until("the loop device's autoclear", || {
        !Path::new(&backing).exists()
    });
    // The copy taken at once holds everything.
    let st = Command::new(BIOFS)
        .args(["-o", "nofuseblk"])
        .arg(&copy)
        .arg(&s.mnt)
        .status()
        .expect("biofs");
    assert!(st.success());
    assert_eq!(fs::read(s.mnt.join("big")).ok(), Some(big));
    for i in 0..50 {
        let want = content(1000 + i * 97, i as u8);
        assert_eq!(fs::read(s.mnt.join(format!("f{i}"))).ok(), Some(want));
    }
    // biofs umount returns once the (plain) mount's process has ended.
    let st = Command::new(BIOFS)
        .arg("umount")
        .arg(&s.mnt)
        .status()
        .expect("biofs umount");
    assert!(st.success());
    let copy_file = fs::File::open(&copy).expect("copy");
    assert!(
        biofs::sys::flock_exclusive_nonblock(&copy_file).is_ok(),
        "the copy is still locked after biofs umount"
    );
    fsck_clean(&copy);
}
