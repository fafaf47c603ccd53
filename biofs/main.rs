//! biofs: mount a biofs image or device through FUSE, and read a running
//! mount's statistics.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{ArgAction, Parser};

use biofs::fs::{Fs, MountError};
use biofs::fuse::{options, session, STATS_XATTR};

const HELP: &str = "\
NAME
    biofs - mount a biofs filesystem through FUSE

SYNOPSIS
    biofs [-f] [-o OPTION[,OPTION...]] TARGET MOUNTPOINT
    biofs stats MOUNTPOINT

DESCRIPTION
    Mounts the biofs filesystem on TARGET, an image file or a block device
    made by mkfs.biofs, on the directory MOUNTPOINT through FUSE. The mount
    shows in /proc/mounts as type fuse.biofs with TARGET (made absolute)
    as its source. Permission checks are the kernel's: default_permissions
    is always on.

    Without -f, biofs goes into the background once the filesystem is
    mounted and ready, and exits 0; if the mount fails it says why in one
    line and exits 1. With -f it stays in the foreground.

    The filesystem ends cleanly (everything written back, the superblock
    marked clean) when it is unmounted (umount MOUNTPOINT) or when the
    biofs process gets SIGINT, SIGTERM or SIGHUP. The first signal
    unmounts; if files are open there, it detaches the mount (umount -l)
    and biofs ends when the last of them is closed. A second signal ends
    biofs at once, and files still open lose their connection.

    biofs stats MOUNTPOINT prints the block engine's statistics of the
    running mount (merges, request sizes, ...). They come from a virtual
    extended attribute of the mount's root directory, trusted.biofs.stats:
    computed on each read, never stored, not listed, not settable. Reading
    it needs CAP_SYS_ADMIN (root), as any trusted.* attribute does; it is
    the same as
        getfattr -n trusted.biofs.stats --only-values MOUNTPOINT
    (To mount an image file named stats, write ./stats.)

    mount(8) and /etc/fstab mount type fuse.biofs through
    mount.fuse.biofs (installed by scripts/install), which runs biofs with
    the same options.

OPTIONS
    -f  Stay in the foreground; log to stderr.
    -o OPTIONS
        Mount options, separated by commas; -o may be given more than
        once. Of two opposite options (ro and rw, dev and nodev, ...) the
        last wins.

        ro, rw
            Mount read-only, or read-write (the default).
        allow_other
            Let users other than the one who mounted use the filesystem.
        acl, noacl
            Enforce POSIX access control lists (setfacl, getfacl), kept
            in the extended attributes system.posix_acl_access and
            system.posix_acl_default; a new file or directory takes its
            directory's default ACL instead of the umask (default: off).
        fsname=NAME
            The mount's source in /proc/mounts (default: TARGET).
        cache_size=SIZE
            The page cache limit, in bytes with an optional K, M, G or T
            suffix (default 256M).
        workers=N
            Block engine queue workers (default 0: the engine's choice, 4).
        queue_depth=N
            Requests in flight at the device (default 32), shared by the
            workers through io_uring where the device takes O_DIRECT; 0:
            each worker does one blocking transfer at a time.
        verify=on|off
            Verify data reads against their integrity tuples (default on).
        threads=N
            Threads serving FUSE requests, 1 to 256 (default 32). Each
            request holds a thread until its I/O is done, so this bounds
            the I/O in flight; each thread keeps a 1 MiB buffer.
        writecache, nowritecache
            Turn on the kernel's writeback cache (writes are cached in the
            kernel and passed on later in large batches: faster for small
            writes), or leave it off (the default: each write reaches
            biofs as it is made, so a full filesystem fails the write()
            itself with ENOSPC; with the cache the error only shows at
            fsync or close).
        commit=SECS
            Seconds between background journal commits and writeback of
            dirty data (default 5; 0 means the default).
        log=FILE
            Once the mount is ready, append log messages to FILE instead
            of discarding them (in the background) or printing them to
            stderr (with -f).
        dev, nodev, suid, nosuid, exec, noexec, atime, noatime
            Mount flags for the kernel (FUSE's defaults: nodev, nosuid).
        default_permissions
            Always on; accepted.
        defaults, auto, noauto, user, nouser, users, owner, group,
        _netdev, nofail, relatime, strictatime, lazytime, diratime,
        nodiratime, x-*, comment=*
            mount(8) and fstab options that change nothing here; ignored.

        uid= and gid= are refused: biofs reports the owners stored in
        the filesystem. Any other option is an error.
    -h, --help
        Print this help and exit.
    -V, --version
        Print the version and exit.

ENVIRONMENT
    RUST_LOG
        What to log: error, warn (the default), info, debug or trace.

EXIT STATUS
    0 once the mount is ready (in the background) or, with -f, once the
    filesystem was unmounted and shut down cleanly; for biofs stats, once
    the statistics are printed. 1 on any error: bad options, a mount that
    failed, or a shutdown that failed.

EXAMPLES
    biofs disk.img /mnt/data
    biofs -f -o threads=8,cache_size=1G /dev/vdb /mnt/data
    mount -t fuse.biofs -o noatime /srv/disk.img /mnt/data
    /srv/disk.img  /mnt/data  fuse.biofs  defaults,nofail  0  0   (fstab)
    biofs stats /mnt/data
    umount /mnt/data

SEE ALSO
    mkfs.biofs(8), fsck.biofs(8), mount(8), fuse(8)
";

#[derive(Parser, Debug)]
#[command(
    name = "biofs",
    version,
    override_help = HELP,
    override_usage = "biofs [-f] [-o OPTIONS] TARGET MOUNTPOINT\n       biofs stats MOUNTPOINT",
    disable_help_subcommand = true
)]
struct Args {
    #[arg(short = 'o', action = ArgAction::Append)]
    options: Vec<String>,
    #[arg(short = 'f')]
    foreground: bool,
    target: PathBuf,
    mountpoint: PathBuf,
}

fn main() -> ExitCode {
    biofs::sys::keep_large_allocations_in_heap();
    // fuser warns that its own unmount failed after every umount (the
    // kernel had already let the mount go): not worth a line by default.
    let default_log = "warn,fuser::session=error";
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_log)).init();
    let argv: Vec<OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "stats") {
        return match argv.get(2) {
            Some(a) if argv.len() == 3 && a != "-h" && a != "--help" => stats(Path::new(a)),
            _ => {
                eprintln!("usage: biofs stats MOUNTPOINT (see biofs --help)");
                ExitCode::from(1)
            }
        };
    }
    let args: Args = match biofs::cli::parse_args("biofs", &argv) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let mut ready = Ready::Foreground;
    match run(&args, &mut ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            ready.fail(&msg);
            ExitCode::from(1)
        }
    }
}

/// `biofs stats MOUNTPOINT`.
fn stats(mountpoint: &Path) -> ExitCode {
    match biofs::sys::getxattr(mountpoint, STATS_XATTR) {
        Ok(v) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&v);
            if !v.ends_with(b"\n") {
                let _ = out.write_all(b"\n");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let why = match e.raw_os_error() {
                Some(libc::ENODATA) => "no biofs statistics here: not the root of a biofs mount, \
                     or not root (trusted.* attributes need CAP_SYS_ADMIN)"
                    .to_string(),
                Some(libc::EOPNOTSUPP) => "not a biofs mount (no extended attributes)".into(),
                _ => os_message(&e),
            };
            eprintln!("biofs: {}: {why}", mountpoint.display());
            ExitCode::from(1)
        }
    }
}

/// How the mount tells whoever waits that it is ready, or why it failed.
enum Ready {
    /// With -f: errors go to stderr.
    Foreground,
    /// The daemon, before it is ready: the parent reads this pipe.
    Daemon(File),
    /// Ready and said so: errors can only be logged.
    Done,
}

impl Ready {
    /// The mount is ready: let the parent exit 0, and (log=FILE) send the
    /// log there. A daemon leaves its terminal and working directory.
    fn ok(&mut self, log: Option<&File>) -> Result<(), String> {
        let daemon = matches!(self, Ready::Daemon(_));
        if daemon {
            let null = File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| format!("/dev/null: {e}"))?;
            redirect(&null, 0)?;
            redirect(&null, 1)?;
            redirect(log.unwrap_or(&null), 2)?;
            let _ = std::env::set_current_dir("/");
        } else if let Some(log) = log {
            redirect(log, 2)?;
        }
        if let Ready::Daemon(pipe) = std::mem::replace(self, Ready::Done) {
            let mut pipe = pipe;
            pipe.write_all(b"ok")
                .map_err(|e| format!("telling the parent: {e}"))?;
        }
        Ok(())
    }

    /// The mount failed (or, once ready, serving it did).
    fn fail(self, msg: &str) {
        match self {
            Ready::Foreground => eprintln!("biofs: {msg}"),
            Ready::Daemon(mut pipe) => {
                // The parent prints it; if it is gone, there's no one to tell.
                let _ = pipe.write_all(msg.as_bytes());
            }
            Ready::Done => log::error!("{msg}"),
        }
    }
}

fn redirect(to: &File, fd: i32) -> Result<(), String> {
    nix::unistd::dup2(to.as_raw_fd(), fd)
        .map(|_| ())
        .map_err(|e| format!("redirecting fd {fd}: {e}"))
}

/// Go into the background: fork; the parent waits until the child says
/// the mount is ready (exit 0) or why it failed (exit 1, printing it).
/// Returns, in the child, the pipe to say it with.
fn daemonize() -> Result<Ready, String> {
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    match biofs::sys::fork_single_threaded().map_err(|e| format!("fork: {e}"))? {
        Some(child) => {
            drop(w);
            let mut msg = Vec::new();
            let _ = File::from(r).read_to_end(&mut msg);
            if msg == b"ok" {
                std::process::exit(0);
            }
            if msg.is_empty() {
                let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
                eprintln!("biofs: the mount process ended before the mount was ready ({status:?})");
            } else {
                eprintln!("biofs: {}", String::from_utf8_lossy(&msg));
            }
            std::process::exit(1);
        }
        None => {
            drop(r);
            // A session of its own: no terminal's signals reach it.
            let _ = nix::unistd::setsid();
            Ok(Ready::Daemon(File::from(w)))
        }
    }
}

fn run(args: &Args, ready: &mut Ready) -> Result<(), String> {
    let mut opts = options::parse(&args.options)?;
    let target = std::path::absolute(&args.target)
        .map_err(|e| format!("{}: {}", args.target.display(), os_message(&e)))?;
    let mountpoint = std::path::absolute(&args.mountpoint)
        .map_err(|e| format!("{}: {}", args.mountpoint.display(), os_message(&e)))?;
    if let Err(e) = std::fs::metadata(&target) {
        return Err(format!("{}: {}", target.display(), os_message(&e)));
    }
    match std::fs::metadata(&mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "{}: mount point is not a directory",
                mountpoint.display()
            ))
        }
        Err(e) => {
            return Err(format!(
                "{}: mount point: {}",
                mountpoint.display(),
                os_message(&e)
            ))
        }
    }
    let fsname = opts
        .fsname
        .clone()
        .unwrap_or_else(|| target.to_string_lossy().into_owned());
    let log = match &opts.log {
        Some(p) => Some(
            File::options()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("-o log: {}: {}", p.display(), os_message(&e)))?,
        ),
        None => None,
    };
    if !args.foreground {
        *ready = daemonize()?;
    }
    // Before any thread starts: every thread, the core's too, leaves these
    // signals to the watcher.
    session::block_end_signals().map_err(|e| format!("blocking signals: {e}"))?;

    let fs = Fs::mount(&target, &opts.fs).map_err(|e| {
        format!(
            "cannot mount {}: {}",
            target.display(),
            mount_error(e, &target)
        )
    })?;
    let fs = Arc::new(fs);
    if fs.is_read_only() && !opts.fs.read_only {
        log::warn!("{}: mounted read-only", target.display());
        opts.fs.read_only = true;
    }
    let mounted = session::mount(fs.clone(), &mountpoint, &opts, &fsname).map_err(|e| {
        format!(
            "cannot mount on {}: {}",
            mountpoint.display(),
            os_message(&e)
        )
    })?;
    log::info!("{} mounted on {}", target.display(), mountpoint.display());
    ready.ok(log.as_ref())?;
    session::watch_signals(mountpoint.clone(), move || fs.shutdown())
        .map_err(|e| format!("starting the signal thread: {e}"))?;
    mounted.serve()?;
    log::info!("{} unmounted cleanly", target.display());
    Ok(())
}

/// One line for a mount error of the core (which may name `target`
/// itself).
fn mount_error(e: MountError, target: &Path) -> String {
    let s = match e {
        MountError::Io(e) => return os_message(&e),
        other => other.to_string(),
    };
    let named = format!("{}: ", target.display());
    s.strip_prefix(&named).map(str::to_string).unwrap_or(s)
}

/// An I/O error as a person reads it: the errors a mount meets said
/// plainly, others as the system says them (without "(os error N)").
fn os_message(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "no such file or directory".into(),
        Some(libc::EACCES) | Some(libc::EPERM) => "permission denied".into(),
        Some(libc::EWOULDBLOCK) => {
            "in use (mounted by another biofs, or open in mkfs.biofs or fsck.biofs)".into()
        }
        Some(libc::EBUSY) => "busy (in use by the kernel, or already a mount point)".into(),
        Some(libc::ENODEV) => "no FUSE in this kernel (modprobe fuse)".into(),
        Some(code) => {
            let s = e.to_string();
            let tail = format!(" (os error {code})");
            s.strip_suffix(&tail).map(str::to_string).unwrap_or(s)
        }
        None => e.to_string(),
    }
}
