//! The `biofs` mount binary and its mount(8) helper, short of a mount:
//! help, option errors and mount errors, each one line and exit 1, in the
//! foreground and from the daemon (whose parent prints what the child
//! reports). Mounting itself is tested where the filesystem core is.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

use std::path::Path;
use std::process::Command;

const BIOFS: &str = env!("CARGO_BIN_EXE_biofs");
const HELPER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/mount.fuse.biofs");

/// Run `cmd`: exit code, stdout, stderr.
fn run(mut cmd: Command) -> (i32, String, String) {
    let out = cmd
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn biofs(args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(BIOFS);
    c.args(args);
    run(c)
}

/// An error: exit 1 and exactly one line on stderr, starting "biofs: ".
fn assert_one_line_error(args: &[&str], r: &(i32, String, String), needle: &str) {
    let (code, out, err) = r;
    assert_eq!(*code, 1, "{args:?}: {out}{err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("biofs: "), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: wanted '{needle}' in {err}");
}

fn mounted_on(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let d = dir.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(d.as_ref()))
}

/// A 4 MiB image of zeros (no filesystem) and an empty directory.
fn scratch() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("tempdir");
    let img = dir.path().join("zero.img");
    std::fs::write(&img, vec![0u8; 4 << 20]).expect("image");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    (dir, s(&img), s(&mnt))
}

#[test]
fn help_is_a_man_page() {
    let (code, out, _) = biofs(&["--help"]);
    assert_eq!(code, 0);
    for s in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "EXIT STATUS",
        "EXAMPLES",
        "biofs stats MOUNTPOINT",
        "trusted.biofs.stats",
        "fuse.biofs",
        "fuseblk.biofs",
        "biofs umount MOUNTPOINT",
        "remount",
        "threads=N",
        "nowritecache",
        "cache_size=SIZE",
        "SIGTERM",
    ] {
        assert!(out.contains(s), "biofs --help lacks {s}");
    }
    let (code, out, _) = biofs(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("biofs "), "{out}");
}

#[test]
fn usage_and_option_errors_exit_1() {
    let (_dir, img, mnt) = scratch();
    let (code, _, err) = biofs(&[]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = biofs(&["-x", &img, &mnt]);
    assert_eq!(code, 1, "{err}");
    for (opts, needle) in [
        ("bogus", "unknown mount option 'bogus'"),
        ("rw,uid=0", "-o uid: not supported"),
        ("gid=0", "-o gid: not supported"),
        ("threads=0", "-o threads"),
        ("verify=maybe", "-o verify"),
        ("cache_size=lots", "-o cache_size"),
    ] {
        for fg in [true, false] {
            let mut args = vec!["-o", opts, &img, &mnt];
            if fg {
                args.insert(0, "-f");
            }
            assert_one_line_error(&args, &biofs(&args), needle);
        }
    }
    assert!(!mounted_on(Path::new(&mnt)));
    let (code, _, err) = biofs(&["stats"]);
    assert_eq!(code, 1, "{err}");
}

fn with<'a>(pre: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
    [pre, args].concat()
}

#[test]
fn mount_errors_are_one_line() {
    let (dir, img, mnt) = scratch();
    let missing = dir.path().join("missing.img");
    let missing = missing.to_str().expect("utf-8");
    let nodir = dir.path().join("nodir");
    let nodir = nodir.to_str().expect("utf-8");
    for fg in [true, false] {
        let pre: &[&str] = if fg { &["-f"] } else { &[] };
        let a = with(pre, &[missing, &mnt]);
        assert_one_line_error(&a, &biofs(&a), "missing.img: no such file");
        let a = with(pre, &[&img, nodir]);
        assert_one_line_error(&a, &biofs(&a), "nodir: mount point: no such file");
        let a = with(pre, &[&img, &img]);
        assert_one_line_error(&a, &biofs(&a), "is not a directory");
        // Not a biofs: refused by the core (from the daemon, the parent
        // prints what the child reports).
        let a = with(pre, &[&img, &mnt]);
        assert_one_line_error(&a, &biofs(&a), "cannot mount");
    }
    assert!(!mounted_on(Path::new(&mnt)));
}

#[test]
fn stats_of_a_directory_that_is_no_biofs_mount_fails() {
    let (_dir, _img, mnt) = scratch();
    let a = ["stats", mnt.as_str()];
    assert_one_line_error(&a, &biofs(&a), "no biofs statistics here");
}

/// mount(8) runs `mount.fuse.biofs TARGET MOUNTPOINT [-sfnv] [-o OPTIONS]`:
/// the helper passes the options on to biofs and its errors back.
#[test]
fn the_mount_helper_passes_options_and_errors_through() {
    let (dir, img, mnt) = scratch();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    std::os::unix::fs::symlink(BIOFS, bin.join("biofs")).expect("symlink");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let helper = |args: &[&str]| {
        let mut c = Command::new("sh");
        c.arg(HELPER).args(args).env("PATH", &path);
        run(c)
    };
    let a = [img.as_str(), mnt.as_str(), "-n", "-o", "rw,bogus"];
    assert_one_line_error(&a, &helper(&a), "unknown mount option 'bogus'");
    let a = [
        img.as_str(),
        mnt.as_str(),
        "-o",
        "defaults,nofail,x-systemd.x",
    ];
    assert_one_line_error(&a, &helper(&a), "cannot mount");
    // -f (fake): nothing is run.
    let (code, _, err) = helper(&[&img, &mnt, "-f", "-o", "bogus"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = helper(&[&img]);
    assert_eq!(code, 1, "{err}");
    assert!(!mounted_on(Path::new(&mnt)));
}
