//! Mounting a biofs and serving it until it is unmounted: by `umount`, or
//! by SIGINT, SIGTERM or SIGHUP to the serving process.
//!
//! Ending is always the same path: the kernel's superblock goes away, the
//! event loops read ENODEV and return, fuser calls `destroy`, and the
//! adapter calls [`Fs::shutdown`] (everything written back, the superblock
//! marked clean).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::adapter::FuseFs;
use super::flush::Flusher;
use super::options::Options;
use crate::fs::{AtimeMode, Fs, FsResult};
use crate::sys;

/// The signals that end a mount.
pub const END_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Block [`END_SIGNALS`] in the calling thread and every thread it starts
/// later, for [`watch_signals`] to take. Call it before any thread is
/// started (the core's included).
pub fn block_end_signals() -> io::Result<()> {
    sys::block_signals(&END_SIGNALS)
}

/// A biofs mounted through FUSE, not yet served.
pub struct Mounted {
    session: fuser::Session<FuseFs>,
    ended: Arc<OnceLock<FsResult<()>>>,
    fs: Arc<Fs>,
}

/// The two kinds of FUSE mount (docs/design.md, "Two kinds of mount").
#[derive(Debug)]
pub enum Kind {
    /// `fuse.biofs`: the kernel lets the mount go at `umount` at once and
    /// never sends FUSE_SYNCFS or FUSE_DESTROY; biofs finishes on its own.
    Plain,
    /// `fuseblk.biofs` on a block device (the target, or a loop device
    /// attached to the image): `umount` waits for FUSE_DESTROY's answer,
    /// which comes once everything is written back and committed, and
    /// `sync`/`syncfs` send FUSE_SYNCFS.
    Block {
        device: PathBuf,
        /// The loop device's descriptor until the kernel holds it (its
        /// autoclear then detaches it when the mount goes).
        loop_fd: Option<std::fs::File>,
    },
}

/// The block size a fuseblk mount gives the kernel: biofs's block.
const BLOCK_SIZE_OPT: &str = "blksize=4096";

/// Mount `fs` on `mountpoint` as `fuse.biofs` from `fsname`. On return the
/// kernel has the mount and the FUSE handshake is done: the filesystem is
/// usable (its requests wait for [`Mounted::serve`]).
///
/// With the privilege to, biofs mounts itself and fuser only serves: fuser
/// 0.18 unmounts its mount point again when a session it mounted ends,
/// after the kernel has let the mount go, and so takes down whatever is
/// mounted there then (a mount under ours, or the next one). Without it
/// (a user's mount), fuser mounts through fusermount3.
///
/// On failure the adapter has already shut `fs` down.
pub fn mount(
    fs: Arc<Fs>,
    mountpoint: &Path,
    opts: &Options,
    fsname: &str,
    kind: Kind,
) -> io::Result<Mounted> {
    let fuse = FuseFs::new(fs.clone(), opts.fuse);
    let ended = fuse.shutdown_result();
    let flusher = fuse.flusher_slot();
    let config = opts.fuser_config(fsname);
    let plain = || {
        sys::fuse_mount(
            fsname,
            mountpoint,
            "fuse.biofs",
            opts.ms_flags(),
            &opts.kernel_options(),
        )
    };
    let mounted = match &kind {
        Kind::Plain => plain(),
        Kind::Block { device, .. } => sys::fuse_mount(
            &device.to_string_lossy(),
            mountpoint,
            "fuseblk.biofs",
            opts.ms_flags(),
            &format!("{},{BLOCK_SIZE_OPT}", opts.kernel_options()),
        ),
    };
    let mounted = match (&kind, mounted) {
        // Where the kernel refuses fuseblk (a user namespace's root, a
        // FUSE without it), a plain mount, unless -o fuseblk asked for it.
        (Kind::Block { .. }, Err(e)) if opts.fuseblk != Some(true) => {
            log::warn!(
                "a fuseblk mount was refused ({e}): mounting plain fuse, whose umount doesn't wait"
            );
            plain()
        }
        (Kind::Block { .. }, Err(e)) => {
            return Err(io::Error::new(
                e.kind(),
                format!("mounting fuseblk: {e} (-o nofuseblk mounts plain fuse)"),
            ))
        }
        (_, m) => m,
    };
    // The kernel's mount holds the loop device now.
    drop(kind);
    let session = match mounted {
        Ok(fd) => {
            fuser::Session::from_fd(fuse, fd, opts.session_acl(), config).inspect_err(|_| {
                // The mount is there, its handshake failed: take it away.
                let _ = sys::umount(mountpoint, true);
            })?
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            fuser::Session::new(fuse, mountpoint, &config)?
        }
        Err(e) => return Err(e),
    };
    let _ = flusher.set(Flusher::new(
        session.notifier(),
        opts.threads,
        opts.fuse.writeback_cache,
    ));
    // The kernel trusts attributes for an hour (adapter::TTL): block
    // counts that change behind its back must reach it.
    if let Some(hook) = flusher.get().and_then(Flusher::attrs_changed) {
        fs.on_blocks_changed(hook);
    }
    if let Err(e) = raise_readahead(mountpoint, READAHEAD_KB) {
        log::debug!("readahead of {}: {e}", mountpoint.display());
    }
    if let Err(e) = watch_remounts(fs.clone(), mountpoint) {
        log::warn!("remounts will not reach biofs: {e}");
    }
    Ok(Mounted { session, ended, fs })
}

/// The readahead to give the mount: one largest FUSE request.
const READAHEAD_KB: u32 = 1024;

/// Raise the readahead of the mount on `mountpoint` to `kb`. The kernel
/// starts a FUSE mount's at its default (128 KiB) and lets FUSE_INIT only
/// lower it, so buffered reads would reach biofs 128 KiB at a time; the
/// mount's backing device info (`/sys/class/bdi/MAJOR:MINOR`) takes more
/// (root only). Found through /proc/self/mountinfo: a stat of the mount
/// point would wait for a session not yet served.
fn raise_readahead(mountpoint: &Path, kb: u32) -> io::Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dev = mountinfo_dev(&info, mountpoint)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in /proc/self/mountinfo"))?;
    // A fuseblk mount has a backing device info of its own, named so; its
    // mountinfo device is the block device's, whose own readahead (that of
    // the loop device or the disk under the mount) is not ours to change.
    let fuseblk = format!("/sys/class/bdi/{dev}-fuseblk/read_ahead_kb");
    let path = if Path::new(&fuseblk).exists() {
        fuseblk
    } else {
        format!("/sys/class/bdi/{dev}/read_ahead_kb")
    };
    std::fs::write(path, kb.to_string())
}

/// The mount point of a mount whose source is `target` (an image or a
/// device), or of a loop device backed by `target`, in this process's
/// mount table; `None` if there is none.
pub fn mounted_from(target: &Path) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = target.to_string_lossy();
    info.lines().find_map(|l| {
        let mut head = l.split(' ');
        let mountpoint = head.nth(4)?;
        let (_, tail) = l.split_once(" - ")?;
        let source = unescape(tail.split(' ').nth(1)?);
        let backing = source
            .strip_prefix("/dev/")
            .filter(|d| d.starts_with("loop"))
            .and_then(|d| {
                std::fs::read_to_string(format!("/sys/block/{d}/loop/backing_file")).ok()
            });
        let hit = source == want || backing.is_some_and(|b| b.trim_end() == want);
        hit.then(|| PathBuf::from(unescape(mountpoint)))
    })
}

/// A mountinfo field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b.get(i), oct) {
            (Some(b'\\'), Some(o)) => {
                out.push(
                    o.iter()
                        .fold(0u8, |n, c| n.wrapping_mul(8).wrapping_add(c - b'0')),
                );
                i += 4;
            }
            (Some(&c), _) => {
                out.push(c);
                i += 1;
            }
            (None, _) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Follow `mount -o remount,ro` and `remount,rw` of the mount on
/// `mountpoint`: a thread waits for changes of the mount table and, when
/// the superblock's flag of this mount turned, makes the core read-only
/// (committing everything first) or writable again ([`Fs::remount`]).
/// The kernel has already refused writers (EBUSY) or started refusing
/// changes (EROFS) by then; `biofs -o remount` waits for this thread to
/// follow (it reads [`crate::fuse::MODE_XATTR`]).
fn watch_remounts(fs: Arc<Fs>, mountpoint: &Path) -> io::Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dev = mountinfo_dev(&info, mountpoint)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in /proc/self/mountinfo"))?
        .to_string();
    std::thread::Builder::new()
        .name("biofs-remount".into())
        .spawn(move || {
            let mut file = match std::fs::File::open("/proc/self/mountinfo") {
                Ok(f) => f,
                Err(e) => return log::warn!("/proc/self/mountinfo: {e}"),
            };
            loop {
                use std::io::{Read, Seek};
                let mut text = String::new();
                if file
                    .rewind()
                    .and_then(|_| file.read_to_string(&mut text))
                    .is_err()
                {
                    return;
                }
                // Gone from the table: unmounted, the session is ending.
                let Some(ro) = mountinfo_read_only(&text, &dev) else {
                    return;
                };
                if let Some((mode, nodiratime)) = mountinfo_atime(&text, &dev) {
                    fs.set_atime(mode, nodiratime);
                }
                if ro != fs.is_read_only() {
                    if let Err(e) = fs.remount(ro) {
                        log::error!(
                            "remount {}: {e}",
                            if ro { "read-only" } else { "read-write" }
                        );
                    }
                }
                if sys::wait_mount_change(&file, -1).is_err() {
                    return;
                }
            }
        })
        .map(|_| ())
}

/// The atime options of the mount with device `dev` (`MAJOR:MINOR`), from
/// the per-mount options of its line in a mountinfo text: `noatime`,
/// `relatime`, or neither (strictatime); and `nodiratime`.
fn mountinfo_atime(info: &str, dev: &str) -> Option<(AtimeMode, bool)> {
    let line = info.lines().rfind(|l| l.split(' ').nth(2) == Some(dev))?;
    let opts: Vec<&str> = line.split(' ').nth(5)?.split(',').collect();
    let mode = if opts.contains(&"noatime") {
        AtimeMode::NoAtime
    } else if opts.contains(&"relatime") {
        AtimeMode::Relatime
    } else {
        AtimeMode::Strict
    };
    Some((mode, opts.contains(&"nodiratime")))
}

/// Whether the superblock of the mount with device `dev` (`MAJOR:MINOR`)
/// is read-only, from the super options (after " - TYPE SOURCE ") of its
/// line in a mountinfo text; `None` when no line has that device.
fn mountinfo_read_only(info: &str, dev: &str) -> Option<bool> {
    info.lines()
        .filter(|l| l.split(' ').nth(2) == Some(dev))
        .filter_map(|l| {
            let (_, tail) = l.split_once(" - ")?;
            let opts = tail.split(' ').nth(2)?;
            Some(opts.split(',').any(|o| o == "ro"))
        })
        .next_back()
}

/// The `MAJOR:MINOR` of the last mount on `mountpoint` in a mountinfo
/// text (whose paths escape space, tab, newline and backslash as octal).
fn mountinfo_dev<'a>(info: &'a str, mountpoint: &Path) -> Option<&'a str> {
    let mut want = String::new();
    for c in mountpoint.to_string_lossy().chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => want.push_str(&format!("\\{:03o}", c as u32)),
            c => want.push(c),
        }
    }
    info.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let dev = f.nth(2)?;
            (f.nth(1)? == want).then_some(dev)
        })
        .next_back()
}

impl Mounted {
    /// Serve requests until the filesystem is unmounted. Returns the
    /// result of the shutdown that followed, as a message on failure.
    pub fn serve(self) -> Result<(), String> {
        let Mounted { session, ended, fs } = self;
        let served = session.run();
        // `destroy` ran when the session ended; if it somehow didn't, the
        // filesystem is shut down here.
        let shutdown = match ended.get() {
            Some(r) => *r,
            None => fs.shutdown(),
        };
        match (served, shutdown) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), Ok(())) => Err(format!("serving FUSE requests: {e}")),
            (_, Err(e)) => Err(format!(
                "shutdown: {e}; check the filesystem with fsck.biofs"
            )),
        }
    }
}

/// Start the thread that ends the mount on `mountpoint` when one of
/// [`END_SIGNALS`] (blocked with [`block_end_signals`]) arrives.
///
/// The first signal unmounts, as `umount` does; if files are open there
/// (EBUSY) it detaches the mount instead (`umount -l`), and the process
/// ends when the last of them is closed. A second signal ends it at once:
/// `end_now` runs (for a mount, [`Fs::shutdown`]) and the process exits,
/// 0 if it succeeded; files still open on the detached mount lose their
/// connection (ENOTCONN).
pub fn watch_signals<F>(mountpoint: PathBuf, end_now: F) -> io::Result<()>
where
    F: FnOnce() -> FsResult<()> + Send + 'static,
{
    std::thread::Builder::new()
        .name("biofs-signals".into())
        .spawn(move || {
            let sig = match sys::wait_signal(&END_SIGNALS) {
                Ok(s) => s,
                Err(e) => return log::error!("waiting for signals: {e}"),
            };
            log::info!("{}: unmounting {}", signal_name(sig), mountpoint.display());
            unmount(&mountpoint);
            let sig = match sys::wait_signal(&END_SIGNALS) {
                Ok(s) => s,
                Err(e) => return log::error!("waiting for signals: {e}"),
            };
            log::warn!("{}: ending now", signal_name(sig));
            let code = match end_now() {
                Ok(()) => 0,
                Err(e) => {
                    log::error!("shutdown: {e}; check the filesystem with fsck.biofs");
                    1
                }
            };
            std::process::exit(code);
        })
        .map(|_| ())
}

/// Unmount `mountpoint`, or detach it if busy; without the privilege to
/// unmount (a user's mount, made by fusermount3), through `fusermount3 -u`.
fn unmount(mountpoint: &Path) {
    let err = match sys::umount(mountpoint, false) {
        Ok(()) => return,
        Err(e) => e,
    };
    match err.raw_os_error() {
        Some(libc::EBUSY) => {
            log::warn!(
                "{} is busy: detached it; biofs ends when its last open file is \
                 closed (signal again to end now)",
                mountpoint.display()
            );
            if let Err(e) = sys::umount(mountpoint, true) {
                log::error!("detaching {}: {e}", mountpoint.display());
            }
        }
        // Unmounted already: the session is ending.
        Some(libc::EINVAL) => {}
        Some(libc::EPERM) => {
            let r = std::process::Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(mountpoint)
                .status();
            if !r.is_ok_and(|s| s.success()) {
                log::error!("fusermount3 -u {} failed", mountpoint.display());
            }
        }
        _ => log::error!("unmounting {}: {err}", mountpoint.display()),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_finds_the_last_mount_on_a_path() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:39 / /mnt/a\\040b rw,nosuid,nodev - fuse.biofs /img rw
41 22 0:40 / /mnt/a rw - tmpfs tmpfs rw
42 40 0:41 / /mnt/a\\040b rw - fuse.biofs /img2 rw
";
        assert_eq!(mountinfo_dev(info, Path::new("/mnt/a b")), Some("0:41"));
        assert_eq!(mountinfo_dev(info, Path::new("/mnt/a")), Some("0:40"));
        assert_eq!(mountinfo_dev(info, Path::new("/")), Some("8:1"));
        assert_eq!(mountinfo_dev(info, Path::new("/mnt")), None);
        assert_eq!(mountinfo_dev("", Path::new("/")), None);
    }

    #[test]
    fn unescape_undoes_mountinfo_escapes() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/x\\134y"), "/x\\y");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\04"), "/end\\04");
    }

    #[test]
    fn mountinfo_read_only_reads_the_super_options() {
        let info = "\
40 22 0:39 / /mnt/a rw,nosuid - fuse.biofs /img ro,user_id=0
41 22 7:3 / /mnt/b ro,nosuid - fuseblk.biofs /dev/loop3 rw,user_id=0
";
        assert_eq!(mountinfo_read_only(info, "0:39"), Some(true));
        assert_eq!(mountinfo_read_only(info, "7:3"), Some(false));
        assert_eq!(mountinfo_read_only(info, "0:40"), None);
        assert_eq!(
            mountinfo_atime(info, "0:39"),
            Some((AtimeMode::Strict, false))
        );
        let info = "41 22 7:3 / /mnt/b rw,noatime,nodiratime - fuseblk.biofs /dev/loop3 rw\n\
                    42 22 7:4 / /mnt/c rw,relatime - fuseblk.biofs /dev/loop4 rw\n";
        assert_eq!(
            mountinfo_atime(info, "7:3"),
            Some((AtimeMode::NoAtime, true))
        );
        assert_eq!(
            mountinfo_atime(info, "7:4"),
            Some((AtimeMode::Relatime, false))
        );
        assert_eq!(mountinfo_atime(info, "7:5"), None);
    }
}
