//! Attributes of a mounted biofs, as a Linux user expects them of ext4:
//! chmod, chown, truncate, timestamps (nanoseconds, UTIME_NOW/OMIT, what
//! updates mtime and ctime), permission checks as other users (sticky and
//! setgid directories, setuid cleared on write), statfs counts and running
//! out of space. Extended attributes and ACLs are in mount_xattr.rs.
//!
//! Each test mounts its own image (tests/common/mount.rs); set
//! `BIOFS_TEST_DIR` to run them against a directory of another filesystem
//! (and `BIOFS_TEST_SMALL_DIR` for the tests that need a small one).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{chown, lchown, symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::check::{assert_file, data, expect_errno, now_ns, ns, ok};
use common::mount::Mounted;
use common::posix::{self, as_user, Time};

macro_rules! mount {
    ($e:expr) => {
        match $e {
            Some(m) => m,
            None => return,
        }
    };
    () => {
        mount!(Mounted::new())
    };
}

/// Another user and another, neither in any group of the tests' files.
const NOBODY: u32 = 65534;
const OTHER: u32 = 65533;
/// 2001-09-09, far from now.
const OLD: i64 = 1_000_000_000;

fn md(p: &Path) -> fs::Metadata {
    ok(fs::symlink_metadata(p), "lstat")
}

fn chmod(p: &Path, mode: u32) {
    ok(
        fs::set_permissions(p, fs::Permissions::from_mode(mode)),
        "chmod",
    );
}

fn mtime(p: &Path) -> i128 {
    let m = md(p);
    ns(m.mtime(), m.mtime_nsec())
}

fn ctime(p: &Path) -> i128 {
    let m = md(p);
    ns(m.ctime(), m.ctime_nsec())
}

fn atime(p: &Path) -> i128 {
    let m = md(p);
    ns(m.atime(), m.atime_nsec())
}

/// Asserts `t` is "now": within a second of the window [`from`, now].
#[track_caller]
fn assert_recent(t: i128, from: i128, what: &str) {
    let slack = 1_000_000_000;
    assert!(
        t >= from - slack && t <= now_ns() + slack,
        "{what}: {t} ns is not the time of the change ({from} ns)"
    );
}

/// Sets atime and mtime of `p` to [`OLD`] and waits long enough for a
/// later ctime to differ; the ctime it then has.
fn age(p: &Path) -> i128 {
    ok(
        posix::utimensat(p, Time::At(OLD, 0), Time::At(OLD, 0), true),
        "utimensat",
    );
    let c = ctime(p);
    std::thread::sleep(Duration::from_millis(20));
    c
}

#[test]
fn chmod_sets_every_mode_bit() {
    let m = mount!();
    let f = m.path("f");
    ok(fs::write(&f, b"x"), "create");
    let c0 = age(&f);
    for mode in [0o640, 0o7777, 0o4755, 0o2711, 0o1777, 0o000, 0o644] {
        chmod(&f, mode);
        assert_eq!(md(&f).mode() & 0o7777, mode, "mode after chmod {mode:o}");
        assert_eq!(md(&f).mode() & libc::S_IFMT, libc::S_IFREG, "type kept");
    }
    assert!(ctime(&f) > c0, "chmod updates ctime");
    assert_eq!(mtime(&f), ns(OLD, 0), "chmod leaves mtime");
    let file = ok(File::open(&f), "open");
    ok(
        file.set_permissions(fs::Permissions::from_mode(0o600)),
        "fchmod",
    );
    assert_eq!(md(&f).mode() & 0o7777, 0o600);
    ok(fs::create_dir(m.path("d")), "mkdir");
    chmod(&m.path("d"), 0o3750);
    assert_eq!(md(&m.path("d")).mode() & 0o7777, 0o3750);
    assert!(md(&m.path("d")).is_dir());
}

#[test]
fn chown_as_root() {
    let m = mount!();
    let f = m.path("f");
    ok(fs::write(&f, b"x"), "create");
    ok(chown(&f, Some(1000), Some(2000)), "chown");
    assert_eq!((md(&f).uid(), md(&f).gid()), (1000, 2000));
    ok(chown(&f, None, Some(3000)), "chgrp");
    assert_eq!((md(&f).uid(), md(&f).gid()), (1000, 3000));
    // chown of a symlink itself leaves its target alone.
    ok(symlink("f", m.path("s")), "symlink");
    ok(lchown(m.path("s"), Some(7), Some(8)), "lchown");
    assert_eq!((md(&m.path("s")).uid(), md(&m.path("s")).gid()), (7, 8));
    assert_eq!((md(&f).uid(), md(&f).gid()), (1000, 3000));
    // A change of owner clears setuid, and setgid with group execute.
    chmod(&f, 0o6755);
    ok(chown(&f, Some(1001), None), "chown");
    assert_eq!(md(&f).mode() & 0o7777, 0o755, "chown clears setuid/setgid");
    chmod(&f, 0o2644);
    ok(chown(&f, None, Some(1)), "chgrp");
    assert_eq!(
        md(&f).mode() & 0o7777,
        0o2644,
        "setgid without group x stays"
    );
}

#[test]
fn truncate_updates_size_and_times() {
    let m = mount!();
    let f = m.path("f");
    ok(fs::write(&f, data(1, 10_000)), "create");
    let c0 = age(&f);
    let t0 = now_ns();
    ok(posix::truncate(&f, 3000), "truncate");
    assert_eq!(md(&f).len(), 3000);
    assert_recent(mtime(&f), t0, "mtime after truncate");
    assert!(ctime(&f) > c0, "ctime after truncate");
    let c1 = age(&f);
    let file = ok(OpenOptions::new().write(true).open(&f), "open");
    ok(file.set_len(1 << 20), "ftruncate");
    assert_eq!(md(&f).len(), 1 << 20);
    assert_recent(mtime(&f), t0, "mtime after ftruncate");
    assert!(ctime(&f) > c1, "ctime after ftruncate");
    assert_file(
        &f,
        &[&data(1, 3000)[..], &vec![0u8; (1 << 20) - 3000]].concat(),
    );
}

#[test]
fn utimensat_keeps_nanoseconds() {
    let mut m = mount!();
    /// Name, atime and mtime as (seconds, nanoseconds).
    type Case = (&'static str, (i64, i64), (i64, i64));
    let cases: [Case; 4] = [
        (
            "f",
            (1_000_000_000, 123_456_789),
            (1_500_000_000, 987_654_321),
        ),
        ("before-1970", (-1_000_000, 5), (-1, 999_999_999)),
        ("year-2242", (1 << 33, 1), ((1 << 33) + 1, 2)),
        ("zero", (0, 0), (0, 1)),
    ];
    for (name, _, _) in &cases {
        ok(fs::write(m.path(name), b"t"), "create");
    }
    ok(fs::create_dir(m.path("d")), "mkdir");
    ok(symlink("f", m.path("s")), "symlink");
    let t0 = now_ns();
    for (name, a, b) in &cases {
        let t = |(s, n): (i64, i64)| Time::At(s, n);
        ok(
            posix::utimensat(&m.path(name), t(*a), t(*b), false),
            "utimensat",
        );
    }
    let (sa, sm) = (Time::At(1_111, 1), Time::At(2_222, 2));
    ok(
        posix::utimensat(&m.path("d"), sa, sm, false),
        "utimensat dir",
    );
    ok(
        posix::utimensat(&m.path("s"), sa, sm, true),
        "utimensat symlink",
    );
    let check = |m: &Mounted| {
        for (name, a, b) in &cases {
            let p = m.path(name);
            assert_eq!(atime(&p), ns(a.0, a.1), "atime of {name}");
            assert_eq!(mtime(&p), ns(b.0, b.1), "mtime of {name}");
            assert_recent(ctime(&p), t0, "ctime after utimensat");
        }
        for p in [m.path("d"), m.path("s")] {
            assert_eq!(
                (atime(&p), mtime(&p)),
                (ns(1_111, 1), ns(2_222, 2)),
                "{p:?}"
            );
        }
        assert_eq!(
            mtime(&m.path("f")),
            ns(1_500_000_000, 987_654_321),
            "target kept"
        );
    };
    check(&m);
    m.remount();
    check(&m);
}

#[test]
fn utime_now_and_omit() {
    let m = mount!();
    let f = m.path("f");
    ok(fs::write(&f, b"t"), "create");
    let (a0, m0) = ((OLD, 1), (OLD + 100, 2));
    ok(
        posix::utimensat(&f, Time::At(a0.0, a0.1), Time::At(m0.0, m0.1), false),
        "set",
    );
    let t0 = now_ns();
    ok(
        posix::utimensat(&f, Time::Omit, Time::Now, false),
        "OMIT, NOW",
    );
    assert_eq!(atime(&f), ns(a0.0, a0.1), "atime omitted");
    assert_recent(mtime(&f), t0, "mtime now");
    let m1 = mtime(&f);
    ok(
        posix::utimensat(&f, Time::Now, Time::Omit, false),
        "NOW, OMIT",
    );
    assert_recent(atime(&f), t0, "atime now");
    assert_eq!(mtime(&f), m1, "mtime omitted");
    let a1 = atime(&f);
    ok(
        posix::utimensat(&f, Time::Omit, Time::Omit, false),
        "OMIT, OMIT",
    );
    assert_eq!((atime(&f), mtime(&f)), (a1, m1), "nothing changes");
    ok(
        posix::utimensat(&f, Time::At(5, 6), Time::Omit, false),
        "set atime only",
    );
    assert_eq!((atime(&f), mtime(&f)), (ns(5, 6), m1));
    chmod(m.root(), 0o755);
    // Anyone who may write the file may set its times to now, and only
    // its owner to anything else.
    chmod(&f, 0o666);
    let p = f.clone();
    let (now, set) = as_user(NOBODY, NOBODY, &[], move || {
        (
            posix::utimensat(&p, Time::Now, Time::Now, false),
            posix::utimensat(&p, Time::At(1, 0), Time::At(1, 0), false),
        )
    });
    ok(now, "UTIME_NOW by a writer");
    expect_errno(set, libc::EPERM, "explicit times by a non-owner");
    assert_recent(mtime(&f), t0, "mtime set to now by another user");
}

#[test]
fn writes_update_mtime_and_ctime_and_reads_do_not() {
    let mut m = mount!();
    let f = m.path("f");
    ok(fs::write(&f, data(1, 8192)), "create");
    let c0 = age(&f);
    let t0 = now_ns();
    let mut file = ok(OpenOptions::new().read(true).write(true).open(&f), "open");
    ok(file.write_all(b"changed"), "write");
    assert_recent(mtime(&f), t0, "mtime after write");
    assert!(ctime(&f) > c0, "ctime after write");
    drop(file);
    let (m1, c1) = (mtime(&f), ctime(&f));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(ok(fs::read(&f), "read")[..7], *b"changed");
    assert_eq!((mtime(&f), ctime(&f)), (m1, c1), "a read changes neither");
    m.remount();
    assert_eq!(mtime(&f), m1, "mtime of the write after remount");
}

#[test]
fn namespace_changes_update_times() {
    let m = mount!();
    let (d, e) = (m.path("d"), m.path("e"));
    ok(fs::create_dir(&d), "mkdir");
    ok(fs::create_dir(&e), "mkdir");
    let t0 = now_ns();
    let changed = |p: &Path, c: i128, what: &str| {
        assert_recent(mtime(p), t0, &format!("{what}: mtime of {p:?}"));
        assert!(ctime(p) > c, "{what}: ctime of {p:?}");
    };
    let c = age(&d);
    ok(fs::write(d.join("f"), b"f"), "create");
    changed(&d, c, "create");
    let c = age(&d);
    let cf = age(&d.join("f"));
    ok(fs::hard_link(d.join("f"), d.join("g")), "link");
    changed(&d, c, "link");
    assert!(ctime(&d.join("f")) > cf, "link updates the inode's ctime");
    assert_eq!(
        mtime(&d.join("f")),
        ns(OLD, 0),
        "link leaves the inode's mtime"
    );
    let c = age(&d);
    let cg = age(&d.join("g"));
    ok(fs::rename(d.join("g"), d.join("h")), "rename");
    changed(&d, c, "rename");
    assert!(
        ctime(&d.join("h")) > cg,
        "rename updates the moved inode's ctime"
    );
    let c = age(&d);
    let cf = age(&d.join("f"));
    ok(fs::remove_file(d.join("h")), "unlink");
    changed(&d, c, "unlink");
    assert!(
        ctime(&d.join("f")) > cf,
        "unlink updates the remaining link's ctime"
    );
    let c = age(&d);
    ok(fs::create_dir(d.join("s")), "mkdir");
    changed(&d, c, "mkdir");
    let c = age(&d);
    ok(fs::remove_dir(d.join("s")), "rmdir");
    changed(&d, c, "rmdir");
    let c = age(&d);
    ok(symlink("f", d.join("l")), "symlink");
    changed(&d, c, "symlink");
    let (cd, ce) = (age(&d), age(&e));
    ok(
        fs::rename(d.join("f"), e.join("f")),
        "rename across directories",
    );
    changed(&d, cd, "rename out");
    changed(&e, ce, "rename in");
    let c = age(&d);
    chmod(&e.join("f"), 0o600);
    assert_eq!(
        (mtime(&d), ctime(&d)),
        (ns(OLD, 0), c),
        "chmod of a child leaves the directory"
    );
}

#[test]
fn other_users_get_eacces_and_eperm() {
    let m = mount!();
    let d = m.path("p");
    ok(fs::create_dir(&d), "mkdir");
    chmod(m.root(), 0o755);
    chmod(&d, 0o755);
    ok(fs::write(d.join("secret"), b"s"), "create");
    chmod(&d.join("secret"), 0o600);
    ok(fs::write(d.join("public"), b"p"), "create");
    chmod(&d.join("public"), 0o644);
    ok(fs::create_dir(d.join("private")), "mkdir");
    ok(fs::write(d.join("private/x"), b"x"), "create");
    chmod(&d.join("private"), 0o700);
    ok(fs::create_dir(d.join("open")), "mkdir");
    chmod(&d.join("open"), 0o777);
    let dd = d.clone();
    let results = as_user(NOBODY, NOBODY, &[], move || {
        let d = dd;
        let e = |r: std::io::Result<()>| r.err().and_then(|e| e.raw_os_error()).unwrap_or(0);
        let w = |p: &Path| OpenOptions::new().write(true).open(p).map(drop);
        vec![
            (
                "read 0600",
                e(File::open(d.join("secret")).map(drop)),
                libc::EACCES,
            ),
            ("write 0600", e(w(&d.join("secret"))), libc::EACCES),
            ("read 0644", e(fs::read(d.join("public")).map(drop)), 0),
            ("write 0644", e(w(&d.join("public"))), libc::EACCES),
            (
                "truncate 0644",
                e(posix::truncate(&d.join("public"), 0)),
                libc::EACCES,
            ),
            (
                "create in 0755",
                e(File::create(d.join("new")).map(drop)),
                libc::EACCES,
            ),
            (
                "mkdir in 0755",
                e(fs::create_dir(d.join("newdir"))),
                libc::EACCES,
            ),
            (
                "unlink in 0755",
                e(fs::remove_file(d.join("public"))),
                libc::EACCES,
            ),
            (
                "stat in 0700",
                e(fs::metadata(d.join("private/x")).map(drop)),
                libc::EACCES,
            ),
            (
                "readdir 0700",
                e(fs::read_dir(d.join("private")).map(drop)),
                libc::EACCES,
            ),
            (
                "chmod other's",
                e(fs::set_permissions(
                    d.join("public"),
                    fs::Permissions::from_mode(0o777),
                )),
                libc::EPERM,
            ),
            (
                "chown other's",
                e(chown(d.join("public"), Some(NOBODY), None)),
                libc::EPERM,
            ),
            (
                "utime other's",
                e(posix::utimensat(
                    &d.join("public"),
                    Time::Now,
                    Time::Now,
                    false,
                )),
                libc::EACCES,
            ),
            (
                "setxattr other's",
                e(posix::setxattr(&d.join("public"), "user.x", b"", 0, false)),
                libc::EACCES,
            ),
            ("create in 0777", e(fs::write(d.join("open/mine"), b"m")), 0),
            (
                "chmod own",
                e(fs::set_permissions(
                    d.join("open/mine"),
                    fs::Permissions::from_mode(0o600),
                )),
                0,
            ),
        ]
    });
    for (what, got, want) in results {
        assert_eq!(
            got,
            want,
            "{what}: got {}, want {}",
            std::io::Error::from_raw_os_error(got),
            std::io::Error::from_raw_os_error(want)
        );
    }
    let mine = md(&d.join("open/mine"));
    assert_eq!(
        (mine.uid(), mine.gid(), mine.mode() & 0o777),
        (NOBODY, NOBODY, 0o600)
    );
    assert_file(&d.join("public"), b"p");
}

#[test]
fn sticky_directories_protect_others_files() {
    let m = mount!();
    chmod(m.root(), 0o755);
    let t = m.path("tmp");
    ok(fs::create_dir(&t), "mkdir");
    chmod(&t, 0o1777);
    let tt = t.clone();
    as_user(NOBODY, NOBODY, &[], move || {
        ok(fs::write(tt.join("a"), b"a"), "create as nobody");
        ok(fs::write(tt.join("a2"), b"a2"), "create as nobody");
        ok(fs::write(tt.join("a3"), b"a3"), "create as nobody");
    });
    let tt = t.clone();
    as_user(OTHER, OTHER, &[], move || {
        let t = tt;
        expect_errno(
            fs::remove_file(t.join("a")),
            libc::EPERM,
            "unlink another's file",
        );
        expect_errno(
            fs::rename(t.join("a"), t.join("b0")),
            libc::EPERM,
            "rename another's file",
        );
        ok(fs::write(t.join("b"), b"b"), "create own file");
        expect_errno(
            fs::rename(t.join("b"), t.join("a")),
            libc::EPERM,
            "rename over another's",
        );
        ok(fs::rename(t.join("b"), t.join("b1")), "rename own file");
    });
    let tt = t.clone();
    as_user(NOBODY, NOBODY, &[], move || {
        ok(fs::remove_file(tt.join("a")), "unlink own file")
    });
    ok(fs::remove_file(t.join("b1")), "root unlinks anything");
    // Without the sticky bit, write permission on the directory suffices.
    chmod(&t, 0o777);
    let tt = t.clone();
    as_user(OTHER, OTHER, &[], move || {
        ok(fs::remove_file(tt.join("a2")), "unlink in 0777")
    });
    let mut left: Vec<_> = ok(fs::read_dir(&t), "readdir")
        .map(|e| ok(e, "entry").file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["a3"]);
}

#[test]
fn setgid_directories_pass_on_their_group() {
    let m = mount!();
    chmod(m.root(), 0o755);
    let g = m.path("sg");
    ok(fs::create_dir(&g), "mkdir");
    ok(chown(&g, None, Some(4242)), "chgrp");
    chmod(&g, 0o2777);
    ok(fs::write(g.join("f"), b"f"), "create");
    ok(fs::create_dir(g.join("sub")), "mkdir");
    ok(fs::write(g.join("sub/f2"), b"f"), "create");
    assert_eq!(md(&g.join("f")).gid(), 4242, "file group");
    assert_eq!(
        md(&g.join("f")).mode() & libc::S_ISGID,
        0,
        "files don't get S_ISGID"
    );
    assert_eq!(md(&g.join("sub")).gid(), 4242, "subdirectory group");
    assert_ne!(
        md(&g.join("sub")).mode() & libc::S_ISGID,
        0,
        "subdirectories get S_ISGID"
    );
    assert_eq!(md(&g.join("sub/f2")).gid(), 4242, "passed on");
    let gg = g.clone();
    as_user(NOBODY, NOBODY, &[], move || {
        let p = gg.join("u");
        ok(
            posix::open_mode(&p, libc::O_CREAT | libc::O_WRONLY, 0o2755),
            "create 02755",
        );
        ok(fs::create_dir(gg.join("ud")), "mkdir");
    });
    let u = md(&g.join("u"));
    assert_eq!(
        (u.uid(), u.gid()),
        (NOBODY, 4242),
        "owner and inherited group"
    );
    assert_eq!(
        u.mode() & libc::S_ISGID,
        0,
        "S_ISGID stripped: creator not in the group"
    );
    let ud = md(&g.join("ud"));
    assert_eq!((ud.uid(), ud.gid()), (NOBODY, 4242));
    assert_ne!(ud.mode() & libc::S_ISGID, 0);
}

#[test]
fn writes_by_another_user_clear_setuid_and_setgid() {
    let m = mount!();
    chmod(m.root(), 0o755);
    let (s, k) = (m.path("s"), m.path("keep"));
    for p in [&s, &k] {
        ok(fs::write(p, b"x"), "create");
        ok(chown(p, None, Some(4242)), "chgrp");
    }
    chmod(&s, 0o6777);
    chmod(&k, 0o2666);
    let (ss, kk) = (s.clone(), k.clone());
    as_user(NOBODY, NOBODY, &[4242], move || {
        append(&ss);
        append(&kk);
    });
    assert_eq!(
        md(&s).mode() & 0o7777,
        0o777,
        "setuid and setgid cleared by a write"
    );
    assert_eq!(
        md(&k).mode() & 0o7777,
        0o2666,
        "setgid without group x is kept for a member of the group"
    );
    chmod(&s, 0o4777);
    let ss = s.clone();
    as_user(NOBODY, NOBODY, &[], move || {
        let f = ok(OpenOptions::new().write(true).open(&ss), "open");
        ok(f.set_len(0), "ftruncate");
    });
    assert_eq!(
        md(&s).mode() & 0o7777,
        0o777,
        "setuid cleared by a truncate"
    );
}

/// Linux 6.x also clears setgid-without-group-exec when the writer is not
/// in the file's group. Over FUSE that decision is the filesystem's only
/// with FUSE_HANDLE_KILLPRIV_V2 (without it the kernel applies the older
/// rule and keeps the bit).
#[test]
fn writes_by_a_non_member_clear_setgid_without_group_exec() {
    let m = mount!();
    chmod(m.root(), 0o755);
    let c = m.path("clear");
    ok(fs::write(&c, b"x"), "create");
    ok(chown(&c, None, Some(4242)), "chgrp");
    chmod(&c, 0o2666);
    let cc = c.clone();
    as_user(NOBODY, NOBODY, &[], move || append(&cc));
    assert_eq!(
        md(&c).mode() & 0o7777,
        0o666,
        "setgid without group x is cleared by a writer outside the group"
    );
}

/// chown(-1, -1) by the owner clears setuid, and setgid with group
/// execute, as a change of owner does (Linux's chown_common()).
#[test]
fn chown_to_the_same_owner_clears_setuid_and_setgid() {
    let m = mount!();
    chmod(m.root(), 0o777);
    let f = m.path("f");
    ok(fs::write(&f, b"x"), "create");
    ok(chown(&f, Some(NOBODY), Some(NOBODY)), "chown");
    chmod(&f, 0o6755);
    let ff = f.clone();
    as_user(NOBODY, NOBODY, &[], move || {
        ok(chown(&ff, None, None), "chown -1 -1")
    });
    assert_eq!(md(&f).mode() & 0o7777, 0o755);
}

/// The kernel asks for `security.capability` before a write only until
/// it knows a file has neither it nor setuid/setgid (SB_NOSEC, which a
/// FUSE superblock gets with FUSE_HANDLE_KILLPRIV_V2): small appends cost
/// one round trip each, not two.
#[test]
fn appends_do_not_ask_for_security_capability_each_time() {
    let m = mount!();
    if !m.is_biofs() {
        return;
    }
    let p = m.path("log");
    let mut f = ok(
        OpenOptions::new().create(true).append(true).open(&p),
        "open",
    );
    ok(f.write_all(b"first\n"), "write");
    let before = requests(&m, "getxattr");
    for _ in 0..200 {
        ok(f.write_all(b"0123456789\n"), "append");
    }
    let asked = requests(&m, "getxattr") - before;
    assert!(asked <= 2, "{asked} GETXATTRs for 200 appends");
    assert_eq!(md(&p).len(), 6 + 200 * 11);
}

fn append(p: &Path) {
    let mut f = ok(OpenOptions::new().append(true).open(p), "open");
    ok(f.write_all(b"y"), "write");
}

fn statfs(m: &Mounted) -> posix::StatFs {
    ok(posix::statfs(m.root()), "statfs")
}

/// Polls `cond` on statfs for up to 10 s (space freed by a delete may be
/// counted after the next commit).
fn wait_statfs(m: &Mounted, what: &str, cond: impl Fn(&posix::StatFs) -> bool) {
    let start = Instant::now();
    loop {
        let st = statfs(m);
        if cond(&st) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: blocks free {} avail {}, inodes free {}",
            st.bfree,
            st.bavail,
            st.ffree
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn statfs_counts_follow_usage() {
    let m = mount!(Mounted::small("64M", &[]));
    let st0 = statfs(&m);
    assert!(
        st0.bsize > 0 && st0.blocks > 0,
        "sizes: {} x {}",
        st0.bsize,
        st0.blocks
    );
    assert!(st0.bfree <= st0.blocks && st0.bavail <= st0.bfree);
    assert!(st0.ffree <= st0.files && st0.files > 0);
    assert_eq!(st0.namelen, 255);
    let bs = st0.bsize;
    let size = 8u64 << 20;
    let p = m.path("f");
    let mut f = ok(File::create(&p), "create");
    ok(f.write_all(&data(1, size as usize)), "write 8 MiB");
    ok(f.sync_all(), "fsync");
    drop(f);
    let (b0, a0, i0) = (st0.bfree, st0.bavail, st0.ffree);
    let need = size / bs;
    wait_statfs(&m, "after writing 8 MiB", |st| {
        let used = b0.saturating_sub(st.bfree);
        used >= need && a0 - st.bavail >= need && (st.ffree) < i0
    });
    let used = b0 - statfs(&m).bfree;
    assert!(used <= need + 256, "8 MiB took {used} blocks of {bs}");
    ok(fs::remove_file(&p), "unlink");
    ok(
        posix::syncfs(&ok(File::open(m.root()), "open root")),
        "syncfs",
    );
    wait_statfs(&m, "after deleting the file", |st| {
        st.bfree + 16 >= b0 && st.bavail + 16 >= a0 && st.ffree == i0
    });
}

#[test]
fn enospc_then_delete_and_write_again() {
    let mut m = mount!(Mounted::small("64M", &[]));
    const MIB: usize = 1 << 20;
    let dir = m.path("fill");
    ok(fs::create_dir(&dir), "mkdir");
    let write = |p: &Path, seed: u64, len: usize| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).open(p)?;
        f.write_all(&data(seed, len))?;
        f.sync_all()
    };
    let mut kept = Vec::new();
    for i in 0..1024u64 {
        let p = dir.join(format!("f{i}"));
        match write(&p, i, MIB) {
            Ok(()) => kept.push(i),
            Err(e) => {
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::ENOSPC),
                    "filling, file {i}: {e}"
                );
                let _ = fs::remove_file(&p);
                break;
            }
        }
    }
    assert!(
        kept.len() >= 40 && kept.len() < 1024,
        "{} MiB fit in 64 MiB",
        kept.len()
    );
    let check = |dir: &Path, kept: &[u64]| {
        for &i in kept {
            assert_file(&dir.join(format!("f{i}")), &data(i, MIB));
        }
    };
    check(&dir, &kept);
    for i in kept.drain(..5) {
        ok(fs::remove_file(dir.join(format!("f{i}"))), "unlink");
    }
    ok(posix::syncfs(&ok(File::open(&dir), "open dir")), "syncfs");
    ok(
        write(&dir.join("after"), 999, 3 * MIB),
        "writing 3 MiB after deleting 5 MiB",
    );
    check(&dir, &kept);
    m.remount();
    let dir = m.path("fill");
    check(&dir, &kept);
    assert_file(&dir.join("after"), &data(999, 3 * MIB));
}

/// The kernel keeps attributes for an hour (the adapter's TTL): blocks a
/// file is given at writeback, with no request about it, must still
/// reach `stat` (an attributes-only FUSE_NOTIFY_INVAL_INODE).
#[test]
fn blocks_given_at_writeback_reach_a_cached_stat() {
    let m = mount!();
    let p = m.path("f");
    let mut f = ok(File::create(&p), "create");
    ok(f.write_all(&vec![7u8; 1 << 20]), "write");
    let before = md(&p).blocks();
    // syncfs: writeback gives the dirty pages their blocks.
    assert_eq!(
        unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) },
        0
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut blocks = md(&p).blocks();
    while blocks < 2048 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        blocks = md(&p).blocks();
    }
    assert!(
        blocks >= 2048,
        "1 MiB written back, st_blocks {blocks} (before the sync {before})"
    );
}

/// How many LOOKUPs the mount has answered, from `biofs stats`.
fn lookups(m: &Mounted) -> u64 {
    requests(m, "lookup")
}

/// FUSE requests of opcode `op` biofs has answered (`biofs stats`),
/// once the count has settled: biofs counts a request after its reply, so
/// a count read right after a syscall returned may miss the last ones.
fn requests(m: &Mounted, op: &str) -> u64 {
    let mut last = requests_now(m, op);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = requests_now(m, op);
        if now == last {
            return now;
        }
        last = now;
    }
}

fn requests_now(m: &Mounted, op: &str) -> u64 {
    // The text grows between a size query and the read: one large buffer.
    let mut buf = vec![0u8; 1 << 16];
    let n = ok(
        posix::getxattr_into(m.root(), "trusted.biofs.stats", &mut buf),
        "stats",
    );
    let s = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
    s.lines()
        .find_map(|l| l.trim_start().strip_prefix(op)?.strip_prefix(' '))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A name found missing is kept as a negative entry: looking it up again
/// costs no round trip, and a create, link, rename or mkdir of the name
/// through the kernel replaces it at once.
#[test]
fn a_missing_name_is_asked_once_and_then_found_once_made() {
    let m = mount!();
    if !m.is_biofs() {
        return;
    }
    let miss = |name: &str| expect_errno(fs::symlink_metadata(m.path(name)), libc::ENOENT, name);
    for name in ["a", "b", "c", "d"] {
        miss(name);
    }
    let before = lookups(&m);
    for _ in 0..10 {
        for name in ["a", "b", "c", "d"] {
            miss(name);
        }
    }
    assert_eq!(lookups(&m), before, "negative entries were asked again");
    ok(File::create(m.path("a")), "create a");
    ok(fs::write(m.path("x"), b"x"), "x");
    ok(fs::hard_link(m.path("x"), m.path("b")), "link b");
    ok(fs::write(m.path("y"), b"y"), "y");
    ok(fs::rename(m.path("y"), m.path("c")), "rename onto c");
    ok(fs::create_dir(m.path("d")), "mkdir d");
    assert!(md(&m.path("a")).is_file());
    assert_eq!(md(&m.path("b")).ino(), md(&m.path("x")).ino());
    assert_eq!(ok(fs::read(m.path("c")), "c"), b"y");
    assert!(md(&m.path("d")).is_dir());
    miss("y");
    ok(fs::remove_file(m.path("a")), "unlink a");
    miss("a");
}
