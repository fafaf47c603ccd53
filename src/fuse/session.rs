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
use crate::fs::{Fs, FsResult};
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
pub fn mount(fs: Arc<Fs>, mountpoint: &Path, opts: &Options, fsname: &str) -> io::Result<Mounted> {
    let fuse = FuseFs::new(fs.clone(), opts.fuse);
    let ended = fuse.shutdown_result();
    let flusher = fuse.flusher_slot();
    let config = opts.fuser_config(fsname);
    let mounted = sys::fuse_mount(
        fsname,
        mountpoint,
        "fuse.biofs",
        opts.ms_flags(),
        &opts.kernel_options(),
    );
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
    if opts.fuse.writeback_cache {
        if let Some(f) = Flusher::new(session.notifier(), opts.threads) {
            let _ = flusher.set(f);
        }
    }
    if let Err(e) = raise_readahead(mountpoint, READAHEAD_KB) {
        log::debug!("readahead of {}: {e}", mountpoint.display());
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
    std::fs::write(
        format!("/sys/class/bdi/{dev}/read_ahead_kb"),
        kb.to_string(),
    )
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
}
