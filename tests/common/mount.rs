//! A biofs image mounted through FUSE for one test, or, with
//! `BIOFS_TEST_DIR` set, a fresh directory of any filesystem (tmpfs, ext4)
//! to check that the tests themselves expect what Linux does.
//!
//! Mounted mode needs root and `/dev/fuse`; without them [`Mounted::new`]
//! prints why and returns `None`, and the test returns early. On drop the
//! filesystem is unmounted, `biofs` must exit 0 and `fsck.biofs -fn` must
//! find the image clean: a test that leaves an inconsistent filesystem
//! fails.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const BIOFS: &str = env!("CARGO_BIN_EXE_biofs");
const MKFS: &str = env!("CARGO_BIN_EXE_mkfs-biofs");
const FSCK: &str = env!("CARGO_BIN_EXE_fsck-biofs");

/// Image size of [`Mounted::new`].
pub const DEFAULT_SIZE: &str = "512M";
/// How long the mount may take to appear, and `biofs` to exit after umount.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a test may keep its mount before biofs is killed, so that a
/// hung request fails the test (ENOTCONN) instead of hanging the run.
/// `BIOFS_TEST_TIMEOUT` (seconds) overrides it.
const TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// Directory of the filesystem under test when not mounting biofs.
pub const ENV_DIR: &str = "BIOFS_TEST_DIR";
/// A directory on a small (at most 256 MiB) filesystem, for the ENOSPC
/// test when not mounting biofs.
pub const ENV_SMALL_DIR: &str = "BIOFS_TEST_SMALL_DIR";

/// Tests on `BIOFS_TEST_SMALL_DIR` fill it or count its free blocks: one
/// at a time.
static SMALL_DIR: Mutex<()> = Mutex::new(());

pub struct Mounted {
    root: PathBuf,
    kind: Kind,
}

enum Kind {
    /// A fresh subdirectory of `BIOFS_TEST_DIR` (or of
    /// `BIOFS_TEST_SMALL_DIR`, held exclusively), removed on drop.
    Dir(
        #[allow(dead_code)] tempfile::TempDir,
        #[allow(dead_code)] Option<MutexGuard<'static, ()>>,
    ),
    Fuse(Fuse),
}

struct Fuse {
    /// Holds the image, the mountpoint and biofs's log.
    dir: tempfile::TempDir,
    image: PathBuf,
    options: Vec<String>,
    child: Option<Child>,
    /// biofs's pid while the watchdog may kill it; cleared before the
    /// child is reaped, so the pid can't have been reused.
    watchdog: Option<Arc<Mutex<Option<u32>>>>,
}

/// Kills `pid` unless disarmed (set to `None`) within the test timeout.
fn arm_watchdog(pid: u32) -> Arc<Mutex<Option<u32>>> {
    let armed = Arc::new(Mutex::new(Some(pid)));
    let a = Arc::clone(&armed);
    let limit = std::env::var("BIOFS_TEST_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(TEST_TIMEOUT, Duration::from_secs);
    std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(100));
            if a.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
                return;
            }
        }
        let armed = a.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pid) = *armed {
            eprintln!("biofs (pid {pid}) still mounted after {limit:?}: killed so the test fails instead of hanging");
            let _ = super::posix::kill9(pid);
        }
    });
    armed
}

impl Mounted {
    /// A fresh 512 MiB biofs, mounted with `-o allow_other`.
    pub fn new() -> Option<Mounted> {
        Mounted::with_options(&[])
    }

    /// As [`Mounted::new`] with more `-o` options (`acl`, ...).
    pub fn with_options(options: &[&str]) -> Option<Mounted> {
        if let Some(dir) = std::env::var_os(ENV_DIR) {
            return Some(Mounted::in_dir(Path::new(&dir)));
        }
        Mounted::fuse(DEFAULT_SIZE, options)
    }

    /// A small filesystem of `size` (mkfs syntax, e.g. "64M") of its own,
    /// for filling it or counting its blocks. In directory mode this needs
    /// `BIOFS_TEST_SMALL_DIR` (else skips), used by one test at a time.
    pub fn small(size: &str, options: &[&str]) -> Option<Mounted> {
        if std::env::var_os(ENV_DIR).is_some() {
            let Some(dir) = std::env::var_os(ENV_SMALL_DIR) else {
                println!("skipped: needs a small filesystem: set {ENV_SMALL_DIR}");
                return None;
            };
            let guard = SMALL_DIR.lock().unwrap_or_else(|e| e.into_inner());
            let mut m = Mounted::in_dir(Path::new(&dir));
            if let Kind::Dir(_, g) = &mut m.kind {
                *g = Some(guard);
            }
            let st = super::posix::statfs(m.root()).expect("statfs");
            let bytes = st.blocks * st.bsize;
            if bytes > 256 << 20 {
                println!("skipped: {ENV_SMALL_DIR} is {} MiB, not small", bytes >> 20);
                return None;
            }
            return Some(m);
        }
        Mounted::fuse(size, options)
    }

    fn in_dir(base: &Path) -> Mounted {
        let dir = tempfile::Builder::new()
            .prefix("biofs-test-")
            .tempdir_in(base)
            .unwrap_or_else(|e| panic!("{ENV_DIR}={}: {e}", base.display()));
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        Mounted {
            root: dir.path().to_path_buf(),
            kind: Kind::Dir(dir, None),
        }
    }

    fn fuse(size: &str, options: &[&str]) -> Option<Mounted> {
        if !Path::new("/dev/fuse").exists() {
            println!("skipped: /dev/fuse is missing (set {ENV_DIR} to run against a directory)");
            return None;
        }
        if super::posix::geteuid() != 0 {
            println!("skipped: mounting needs root (set {ENV_DIR} to run against a directory)");
            return None;
        }
        // Under /tmp, made traversable: the permission tests act as other
        // users, who must reach the mountpoint.
        let dir = tempfile::Builder::new()
            .prefix("biofs-mount-")
            .tempdir()
            .expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let image = dir.path().join("fs.img");
        let out = Command::new(MKFS)
            .args(["-q", "--size", size])
            .arg(&image)
            .output()
            .expect("run mkfs-biofs");
        assert!(
            out.status.success(),
            "mkfs-biofs failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        fs::create_dir(dir.path().join("mnt")).expect("mkdir mnt");
        let mut m = Mounted {
            root: dir.path().join("mnt"),
            kind: Kind::Fuse(Fuse {
                dir,
                image,
                options: options.iter().map(|s| s.to_string()).collect(),
                child: None,
                watchdog: None,
            }),
        };
        m.mount();
        Some(m)
    }

    /// Where the tests work: the mount's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `rel` under the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Whether this is biofs through FUSE (not `BIOFS_TEST_DIR`).
    pub fn is_biofs(&self) -> bool {
        matches!(self.kind, Kind::Fuse(_))
    }

    /// `statfs(2)`'s `f_type` of the filesystem under test.
    pub fn fs_type(&self) -> i64 {
        super::posix::statfs(&self.root).expect("statfs").fs_type
    }

    /// Unmount (biofs must exit 0), check the image with fsck, mount again:
    /// what a test sees afterwards was read back from the image. In
    /// directory mode, `sync(2)` only.
    pub fn remount(&mut self) {
        if !self.is_biofs() {
            super::posix::sync();
            return;
        }
        self.unmount(true);
        self.fsck(true);
        self.mount();
    }

    fn fuse_mut(&mut self) -> &mut Fuse {
        match &mut self.kind {
            Kind::Fuse(f) => f,
            Kind::Dir(..) => unreachable!("directory mode has no mount"),
        }
    }

    fn log_path(&self) -> PathBuf {
        match &self.kind {
            Kind::Fuse(f) => f.dir.path().join("biofs.log"),
            Kind::Dir(..) => unreachable!("directory mode has no mount"),
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Spawn `biofs -f -o allow_other[,OPTIONS] IMAGE MNT` and wait until
    /// the mountpoint is a different device from its parent.
    fn mount(&mut self) {
        let log = fs::File::create(self.log_path()).expect("biofs log");
        let log2 = log.try_clone().expect("dup log");
        let root = self.root.clone();
        let f = self.fuse_mut();
        let mut opts = vec!["allow_other".to_string()];
        opts.extend(f.options.iter().cloned());
        let child = Command::new(BIOFS)
            .arg("-f")
            .arg("-o")
            .arg(opts.join(","))
            .arg(&f.image)
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("spawn biofs");
        f.child = Some(child);
        let parent_dev = fs::metadata(f.dir.path()).expect("stat parent").dev();
        let start = Instant::now();
        loop {
            if let Ok(md) = fs::metadata(&root) {
                if md.dev() != parent_dev {
                    let f = self.fuse_mut();
                    let pid = f.child.as_ref().map(Child::id);
                    f.watchdog = pid.map(arm_watchdog);
                    return;
                }
            }
            let f = self.fuse_mut();
            let status = f.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = status {
                f.child = None;
                panic!("biofs exited ({status}) before mounting:\n{}", self.log());
            }
            if start.elapsed() > MOUNT_TIMEOUT {
                let log = self.log();
                self.kill_child();
                panic!("biofs did not mount within {MOUNT_TIMEOUT:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop the watchdog: after this the child may be reaped.
    fn disarm(&mut self) {
        if let Some(w) = self.fuse_mut().watchdog.take() {
            *w.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    fn kill_child(&mut self) {
        self.disarm();
        if let Some(mut c) = self.fuse_mut().child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `umount` (`umount -l` if that fails) and wait for biofs to exit.
    /// With `strict`, a failed umount or a non-zero exit panics; else
    /// they are printed (the test is already failing).
    fn unmount(&mut self, strict: bool) {
        let root = self.root.clone();
        let mut problems = Vec::new();
        let mut out = Command::new("umount").arg(&root).output();
        // Under heavy load the kernel was seen (3 times in about 900
        // cycles, never on a quiet machine) to refuse an umount right after
        // files there were closed, with EBUSY and no process holding
        // anything in the mount; a moment later it goes. These tests are
        // about data, so they try again; generic/140 and 141 don't.
        for _ in 0..20 {
            match &out {
                Ok(o)
                    if !o.status.success()
                        && String::from_utf8_lossy(&o.stderr).contains("busy") =>
                {
                    eprintln!("umount {}: busy, trying again", root.display());
                    std::thread::sleep(Duration::from_millis(100));
                    out = Command::new("umount").arg(&root).output();
                }
                _ => break,
            }
        }
        match out {
            Ok(o) if o.status.success() => {}
            other => {
                problems.push(format!("umount: {other:?}"));
                let lazy = Command::new("umount").arg("-l").arg(&root).output();
                if !matches!(lazy, Ok(ref o) if o.status.success()) {
                    problems.push(format!("umount -l: {lazy:?}"));
                }
            }
        }
        self.disarm();
        let start = Instant::now();
        let status = loop {
            let Some(c) = self.fuse_mut().child.as_mut() else {
                break None;
            };
            match c.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if start.elapsed() < EXIT_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    problems.push(format!(
                        "biofs still running {EXIT_TIMEOUT:?} after umount: killed"
                    ));
                    self.kill_child();
                    break None;
                }
            }
        };
        self.fuse_mut().child = None;
        if let Some(s) = status {
            if !s.success() {
                problems.push(format!("biofs exited with {s}"));
            }
        }
        if !problems.is_empty() {
            let msg = format!(
                "unmounting {}: {}\nbiofs log:\n{}",
                root.display(),
                problems.join("; "),
                self.log()
            );
            if strict {
                panic!("{msg}");
            }
            eprintln!("{msg}");
        }
    }

    /// `fsck.biofs -fn IMAGE` must exit 0.
    fn fsck(&mut self, strict: bool) {
        let image = self.fuse_mut().image.clone();
        let out = Command::new(FSCK)
            .arg("-fn")
            .arg(&image)
            .output()
            .expect("run fsck-biofs");
        if !out.status.success() {
            let msg = format!(
                "fsck.biofs -fn found the image inconsistent ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if strict {
                panic!("{msg}");
            }
            eprintln!("{msg}");
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !self.is_biofs() {
            return;
        }
        // A test that already failed gets its report, not a double panic.
        let strict = !std::thread::panicking();
        if self.fuse_mut().child.is_some() {
            self.unmount(strict);
        }
        self.fsck(strict);
    }
}
