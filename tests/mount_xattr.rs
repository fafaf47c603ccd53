//! Extended attributes and POSIX ACLs of a mounted biofs, as a Linux user
//! expects them of ext4: user., trusted. and security. names, the
//! XATTR_CREATE/XATTR_REPLACE flags, ERANGE for short buffers, large
//! values, and ACLs set with setfacl that the kernel enforces.
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

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::check::{data, expect_errno, ok};
use common::mount::Mounted;
use common::posix::{self, as_user};

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

fn chmod(p: &Path, mode: u32) {
    ok(
        fs::set_permissions(p, fs::Permissions::from_mode(mode)),
        "chmod",
    );
}

#[test]
fn xattrs_set_get_list_remove() {
    let mut m = mount!();
    let f = m.path("f");
    ok(fs::write(&f, b"x"), "create");
    ok(fs::create_dir(m.path("d")), "mkdir");
    ok(symlink("f", m.path("s")), "symlink");
    let attrs: [(&str, &[u8]); 5] = [
        ("user.colour", b"blue"),
        ("user.empty", b""),
        ("trusted.t", b"\0binary\xff"),
        ("security.s", b"label"),
        ("user.a-much-longer-attribute-name-for-the-list", b"v"),
    ];
    for (n, v) in attrs {
        ok(posix::setxattr(&f, n, v, 0, false), n);
    }
    ok(
        posix::setxattr(&m.path("d"), "user.dir", b"on a dir", 0, false),
        "dir",
    );
    ok(
        posix::setxattr(&m.path("s"), "trusted.sym", b"on a link", 0, true),
        "symlink",
    );
    expect_errno(
        posix::setxattr(&m.path("s"), "user.x", b"", 0, true),
        libc::EPERM,
        "user. on a symlink",
    );
    let check = |m: &Mounted| {
        let f = m.path("f");
        for (n, v) in attrs {
            assert_eq!(ok(posix::getxattr(&f, n), n), v, "{n}");
        }
        let mut want: Vec<String> = attrs.iter().map(|(n, _)| n.to_string()).collect();
        want.sort();
        assert_eq!(ok(posix::listxattr(&f), "listxattr"), want);
        assert_eq!(
            ok(posix::getxattr(&m.path("d"), "user.dir"), "dir"),
            b"on a dir"
        );
        assert_eq!(ok(posix::listxattr(&m.path("d")), "list dir"), ["user.dir"]);
    };
    check(&m);
    m.remount();
    check(&m);
    ok(posix::removexattr(&f, "user.colour"), "removexattr");
    expect_errno(
        posix::getxattr(&f, "user.colour"),
        libc::ENODATA,
        "get removed",
    );
    expect_errno(
        posix::removexattr(&f, "user.colour"),
        libc::ENODATA,
        "remove removed",
    );
    expect_errno(
        posix::getxattr(&f, "user.never"),
        libc::ENODATA,
        "get missing",
    );
    assert!(!ok(posix::listxattr(&f), "list").contains(&"user.colour".to_string()));
    for (n, _) in &attrs[1..] {
        ok(posix::removexattr(&f, n), n);
    }
    assert!(ok(posix::listxattr(&f), "list").is_empty());
}

#[test]
fn xattr_create_and_replace_flags() {
    let m = mount!();
    let f = m.path("f");
    ok(fs::write(&f, b"x"), "create");
    ok(
        posix::setxattr(&f, "user.a", b"1", libc::XATTR_CREATE, false),
        "CREATE new",
    );
    expect_errno(
        posix::setxattr(&f, "user.a", b"2", libc::XATTR_CREATE, false),
        libc::EEXIST,
        "CREATE existing",
    );
    assert_eq!(ok(posix::getxattr(&f, "user.a"), "get"), b"1");
    expect_errno(
        posix::setxattr(&f, "user.b", b"2", libc::XATTR_REPLACE, false),
        libc::ENODATA,
        "REPLACE missing",
    );
    expect_errno(posix::getxattr(&f, "user.b"), libc::ENODATA, "not created");
    ok(
        posix::setxattr(&f, "user.a", b"three", libc::XATTR_REPLACE, false),
        "REPLACE",
    );
    assert_eq!(ok(posix::getxattr(&f, "user.a"), "get"), b"three");
    ok(
        posix::setxattr(&f, "user.a", b"4", 0, false),
        "set existing",
    );
    assert_eq!(ok(posix::getxattr(&f, "user.a"), "get"), b"4");
    assert_eq!(ok(posix::listxattr(&f), "list"), ["user.a"]);
}

#[test]
fn xattr_buffers_too_small_are_erange() {
    let m = mount!();
    let f = m.path("f");
    ok(fs::write(&f, b"x"), "create");
    let v = data(1, 100);
    ok(posix::setxattr(&f, "user.v", &v, 0, false), "set");
    ok(posix::setxattr(&f, "user.w", b"w", 0, false), "set");
    assert_eq!(
        ok(posix::getxattr_into(&f, "user.v", &mut []), "size query"),
        100
    );
    expect_errno(
        posix::getxattr_into(&f, "user.v", &mut [0u8; 99]),
        libc::ERANGE,
        "get",
    );
    let mut buf = [0u8; 100];
    assert_eq!(ok(posix::getxattr_into(&f, "user.v", &mut buf), "get"), 100);
    assert_eq!(buf[..], v[..]);
    let names_len = "user.v\0user.w\0".len();
    assert_eq!(
        ok(posix::listxattr_into(&f, &mut []), "list size"),
        names_len
    );
    expect_errno(
        posix::listxattr_into(&f, &mut [0u8; 5]),
        libc::ERANGE,
        "list",
    );
    let mut buf = vec![0u8; names_len];
    assert_eq!(ok(posix::listxattr_into(&f, &mut buf), "list"), names_len);
}

#[test]
fn xattr_large_values() {
    let mut m = mount!();
    let (f, g) = (m.path("f"), m.path("g"));
    ok(fs::write(&f, b"x"), "create");
    ok(fs::write(&g, b"x"), "create");
    let big = data(1, 4000);
    ok(
        posix::setxattr(&f, "user.big", &big, 0, false),
        "4000-byte value",
    );
    for i in 0..50u64 {
        ok(
            posix::setxattr(&g, &format!("user.k{i}"), &data(i, 30), 0, false),
            "set",
        );
    }
    // Too big for one block: ext4 (without ea_inode) and biofs refuse it,
    // tmpfs takes it; either way the other value stays.
    match posix::setxattr(&f, "user.huge", &data(2, 8000), 0, false) {
        Ok(()) => assert_eq!(ok(posix::getxattr(&f, "user.huge"), "get"), data(2, 8000)),
        Err(e) => assert!(
            matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::E2BIG)),
            "8000-byte value: {e}"
        ),
    }
    expect_errno(
        posix::setxattr(&f, "user.max", &vec![0u8; 65537], 0, false),
        libc::E2BIG,
        "a value over 64 KiB",
    );
    m.remount();
    assert_eq!(ok(posix::getxattr(&f, "user.big"), "get big"), big);
    assert_eq!(ok(posix::listxattr(&g), "list").len(), 50);
    for i in 0..50u64 {
        assert_eq!(
            ok(posix::getxattr(&g, &format!("user.k{i}")), "get"),
            data(i, 30)
        );
    }
}

/// `tool args...`; its stdout, or a panic with its stderr.
fn run(tool: &str, args: &[&str]) -> String {
    let out = ok(Command::new(tool).args(args).output(), tool);
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn getfacl(p: &Path) -> Vec<String> {
    run("getfacl", &["-n", "-p", p.to_str().expect("utf-8 path")])
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(String::from)
        .collect()
}

fn can_read(p: &Path, uid: u32) -> Result<Vec<u8>, i32> {
    let p = p.to_path_buf();
    as_user(uid, uid, &[], move || {
        fs::read(&p).map_err(|e| e.raw_os_error().unwrap_or(0))
    })
}

#[test]
fn posix_acls() {
    for tool in ["setfacl", "getfacl"] {
        if Command::new(tool).arg("--version").output().is_err() {
            println!("skipped: {tool} is not installed (Debian package acl)");
            return;
        }
    }
    let mut m = mount!(Mounted::with_options(&["acl"]));
    chmod(m.root(), 0o755);
    let dir = m.path("acl");
    let f = dir.join("f");
    ok(fs::create_dir(&dir), "mkdir");
    chmod(&dir, 0o755);
    ok(fs::write(&f, b"secret"), "create");
    chmod(&f, 0o600);
    let fs_ = f.to_str().expect("utf-8 path");
    assert_eq!(can_read(&f, 1000), Err(libc::EACCES), "before the ACL");
    run("setfacl", &["-m", "u:1000:r", fs_]);
    let acl = getfacl(&f);
    assert!(acl.contains(&"user:1000:r--".to_string()), "{acl:?}");
    assert!(acl.contains(&"mask::r--".to_string()), "{acl:?}");
    assert_eq!(
        ok(fs::metadata(&f), "stat").mode() & 0o777,
        0o640,
        "group bits show the mask"
    );
    assert_eq!(
        can_read(&f, 1000).as_deref(),
        Ok(&b"secret"[..]),
        "the ACL grants"
    );
    assert_eq!(
        can_read(&f, 1001),
        Err(libc::EACCES),
        "others still refused"
    );
    ok(
        posix::getxattr(&f, "system.posix_acl_access"),
        "the ACL's xattr",
    );
    // A default ACL is inherited by new files and directories.
    let ds = dir.to_str().expect("utf-8 path");
    run("setfacl", &["-d", "-m", "u:1000:rwx", ds]);
    ok(fs::write(dir.join("new"), b"inherited"), "create");
    ok(fs::create_dir(dir.join("sub")), "mkdir");
    let new = getfacl(&dir.join("new"));
    assert!(
        new.iter().any(|l| l.starts_with("user:1000:rwx")),
        "{new:?}"
    );
    let sub = getfacl(&dir.join("sub"));
    assert!(sub.iter().any(|l| l == "default:user:1000:rwx"), "{sub:?}");
    assert_eq!(
        can_read(&dir.join("new"), 1000).as_deref(),
        Ok(&b"inherited"[..])
    );
    m.remount();
    assert!(
        getfacl(&f).contains(&"user:1000:r--".to_string()),
        "after remount"
    );
    assert_eq!(
        can_read(&f, 1000).as_deref(),
        Ok(&b"secret"[..]),
        "after remount"
    );
    run("setfacl", &["-b", fs_]);
    expect_errno(
        posix::getxattr(&f, "system.posix_acl_access"),
        libc::ENODATA,
        "ACL removed",
    );
    assert_eq!(can_read(&f, 1000), Err(libc::EACCES), "after setfacl -b");
}
