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
use biofs::fuse::session::Kind;
use biofs::fuse::{options, session, MODE_XATTR, PID_XATTR, STATS_XATTR};

const HELP: &str = "\
NAME
    biofs - mount a biofs filesystem through FUSE

SYNOPSIS
    biofs [-f] [-o OPTION[,OPTION...]] TARGET MOUNTPOINT
    biofs -o remount,OPTION[,OPTION...] TARGET MOUNTPOINT
    biofs umount MOUNTPOINT
    biofs stats MOUNTPOINT

DESCRIPTION
    Mounts the biofs filesystem on TARGET, an image file or a block device
    made by mkfs.biofs, on the directory MOUNTPOINT through FUSE.
    Permission checks are the kernel's: default_permissions is always on.

    There are two kinds of mount. Where it can, biofs mounts as a block
    filesystem, type fuseblk.biofs: on TARGET if it is a block device, or
    else on a loop device it attaches to the image (with direct I/O and
    autoclear, as losetup --direct-io=on; the loop device detaches itself
    when the mount goes). Then umount returns only once everything is
    written back and committed, the filesystem marked clean and the image
    released, and sync(1)/syncfs(2) commit everything. The source in
    /proc/mounts is the device (losetup -l names the image). Where no loop
    device can be had (or with -o nofuseblk) it is a plain FUSE mount, type
    fuse.biofs, with TARGET (or fsname=) as its source: umount returns at
    once while biofs finishes writing in the background (biofs umount
    waits for it), and sync does not reach biofs (fsync does; everything
    else is committed within commit= seconds). A mount of an image that a
    biofs process is still releasing waits for it, up to 30 s.

    Without -f, biofs goes into the background once the filesystem is
    mounted and ready, and exits 0; if the mount fails it says why in one
    line and exits 1. With -f it stays in the foreground.

    The filesystem ends cleanly (everything written back, the superblock
    marked clean) when it is unmounted (umount MOUNTPOINT) or when the
    biofs process gets SIGINT, SIGTERM or SIGHUP. The first signal
    unmounts; if files are open there, it detaches the mount (umount -l)
    and biofs ends when the last of them is closed. A second signal ends
    biofs at once, and files still open lose their connection.

    biofs umount MOUNTPOINT unmounts, then waits until the biofs process
    that served the mount has ended: the image is then complete and free,
    whichever kind of mount it was.

    biofs -o remount,... (what mount -o remount runs, through
    mount.fuse.biofs) changes the flags of the mount on MOUNTPOINT: ro
    writes everything back and commits, then refuses changes (EROFS); it
    fails with busy while files are open for writing there. rw accepts
    changes again (not on a filesystem mounted -o ro: mount it again).
    It returns once the serving biofs has followed.

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
        fuseblk, nofuseblk
            fuseblk: mount as a block filesystem or fail (for an image,
            a loop device must be attached). nofuseblk: a plain FUSE
            mount. Default: fuseblk where it can be had, else plain.
        remount
            Change the flags of an existing mount (see above).
        allow_other
            Let users other than the one who mounted use the filesystem.
        acl, noacl
            Enforce POSIX access control lists (setfacl, getfacl), kept
            in the extended attributes system.posix_acl_access and
            system.posix_acl_default; a new file or directory takes its
            directory's default ACL instead of the umask (default: on, as
            on ext4). With noacl those two attributes are refused
            (EOPNOTSUPP) and only the mode bits count.
        fsname=NAME
            The mount's source in /proc/mounts (default: TARGET).
        cache_size=SIZE
            Memory for biofs's caches, in bytes with an optional K, M, G
            or T suffix (default 256M): the metadata buffer cache and the
            integrity tuple cache (16M) take their share, the page cache
            the rest (at least half). The daemon's resident size stays
            within it plus about 64M (threads, request buffers).
        meta_cache_size=SIZE
            The metadata buffer cache limit, in bytes with an optional
            suffix (default: an eighth of cache_size, at least 16M); the
            least recently used blocks go first.
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
        relatime, strictatime, noatime, atime
            When reading a file or listing a directory updates its access
            time (atime): relatime (the default; atime means the same)
            when atime is not after the last change (mtime or ctime) or
            is a day old; strictatime on every read; noatime never. Never
            on a read-only mount. The new atime is written by the next
            commit. Reads the kernel serves from its page cache don't
            reach biofs: an open for reading drops that cache when a read
            would update atime, so the first read after it counts; more
            reads through the same open file count only if they reach
            biofs (under strictatime).
        nodiratime, diratime
            Listing a directory leaves its atime alone, or not (default).
        dev, nodev, suid, nosuid, exec, noexec
            Mount flags for the kernel (FUSE's defaults: nodev, nosuid).
        default_permissions
            Always on; accepted.
        defaults, auto, noauto, user, nouser, users, owner, group,
        _netdev, nofail, lazytime, x-*, comment=*
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
    filesystem was unmounted and shut down cleanly; for a remount, once
    biofs has followed it; for biofs umount, once the serving process has
    ended; for biofs stats, once the statistics are printed. 1 on any error: bad options, a mount that
    failed, or a shutdown that failed.

EXAMPLES
    biofs disk.img /mnt/data
    biofs -f -o threads=8,cache_size=1G /dev/vdb /mnt/data
    mount -t fuse.biofs -o noatime /srv/disk.img /mnt/data
    /srv/disk.img  /mnt/data  fuse.biofs  defaults,nofail  0  0   (fstab)
    mount -o remount,ro /mnt/data
    biofs stats /mnt/data
    umount /mnt/data                  (fuseblk: returns when all is written)
    biofs umount /mnt/data            (either kind: waits for biofs to end)

SEE ALSO
    mkfs.biofs(8), fsck.biofs(8), mount(8), fuse(8)
";

#[derive(Parser, Debug)]
#[command(
    name = "biofs",
    version,
    override_help = HELP,
    override_usage = "biofs [-f] [-o OPTIONS] TARGET MOUNTPOINT\n       biofs umount MOUNTPOINT\n       biofs stats MOUNTPOINT",
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

/// A subcommand that takes one MOUNTPOINT.
type Subcommand = fn(&Path) -> ExitCode;

fn main() -> ExitCode {
    biofs::sys::keep_large_allocations_in_heap();
    // fuser warns that its own unmount failed after every umount (the
    // kernel had already let the mount go): not worth a line by default.
    let default_log = "warn,fuser::session=error";
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_log)).init();
    let argv: Vec<OsString> = std::env::args_os().collect();
    // The subcommands that take one MOUNTPOINT.
    let subcommands: [(&str, Subcommand); 2] = [("umount", umount), ("stats", stats)];
    for (name, run) in subcommands {
        if argv.get(1).is_some_and(|a| a == name) {
            return match argv.get(2) {
                Some(a) if argv.len() == 3 && a != "-h" && a != "--help" => run(Path::new(a)),
                _ => {
                    eprintln!("usage: biofs {name} MOUNTPOINT (see biofs --help)");
                    ExitCode::from(1)
                }
            };
        }
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
/// `biofs umount MOUNTPOINT`: unmount, then wait until the biofs process
/// that served the mount has ended, so that its image is complete and free
/// when this returns (a plain fuse mount's `umount` returns at once).
fn umount(mountpoint: &Path) -> ExitCode {
    let fail = |why: String| {
        eprintln!("biofs: {}: {why}", mountpoint.display());
        ExitCode::from(1)
    };
    let pid = match biofs::sys::getxattr(mountpoint, PID_XATTR) {
        Ok(v) => String::from_utf8_lossy(&v).trim().parse::<i32>().ok(),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {
            return fail("not the root of a biofs mount".into())
        }
        Err(e) => return fail(os_message(&e)),
    };
    let Some(pid) = pid else {
        return fail("not the root of a biofs mount".into());
    };
    // The process, held before the unmount so its number can't be reused.
    let pidfd = match biofs::sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => return fail(format!("the biofs process {pid}: {}", os_message(&e))),
    };
    if let Err(e) = biofs::sys::umount(mountpoint, false) {
        return fail(format!("umount: {}", os_message(&e)));
    }
    let mut said = false;
    loop {
        match biofs::sys::wait_readable(&pidfd, 10_000) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) if !said => {
                eprintln!("biofs: waiting for process {pid} to finish writing the filesystem back");
                said = true;
            }
            Ok(false) => {}
            Err(e) => return fail(format!("waiting for process {pid}: {e}")),
        }
    }
}

/// `biofs -o remount,... TARGET MOUNTPOINT` (what mount(8) runs for
/// `mount -o remount`): the kernel's remount of the mount's flags, then a
/// wait until the serving biofs has followed (committed everything and
/// refused changes, or accepted them again).
///
/// Without `ro` or `rw` among `lists` (the `-o` lists), the mount stays
/// read-only or read-write as it is: `remount,noexec` changes only that.
fn remount(mountpoint: &Path, opts: &options::Options, lists: &[String]) -> Result<(), String> {
    let mode = |what: &str| -> Result<String, String> {
        biofs::sys::getxattr(mountpoint, MODE_XATTR)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENODATA) | Some(libc::EOPNOTSUPP) => format!(
                    "{}: not the root of a biofs mount (or not root): can't {what}",
                    mountpoint.display()
                ),
                _ => format!("{}: {}", mountpoint.display(), os_message(&e)),
            })
    };
    let now = mode("remount")?;
    let asked = lists
        .iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .rfind(|o| *o == "ro" || *o == "rw");
    let want_ro = match asked {
        Some(o) => o == "ro",
        None => now != "rw",
    };
    if !want_ro && now == "ro-only" {
        return Err(format!(
            "{}: mounted read-only (-o ro), the image is open read-only: unmount it and mount it rw",
            mountpoint.display()
        ));
    }
    let flags = if want_ro {
        opts.ms_flags() | libc::MS_RDONLY
    } else {
        opts.ms_flags() & !libc::MS_RDONLY
    };
    biofs::sys::remount(mountpoint, flags).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => format!(
            "{}: busy: files are open for writing there",
            mountpoint.display()
        ),
        _ => format!("{}: remount: {}", mountpoint.display(), os_message(&e)),
    })?;
    let want = if want_ro { "ro" } else { "rw" };
    let start = std::time::Instant::now();
    loop {
        let m = mode("follow the remount")?;
        if m == want || (want == "ro" && m == "ro-only") {
            return Ok(());
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            return Err(format!(
                "{}: the kernel remounted it {want}, but biofs is still {m} after 60 s (see its log)",
                mountpoint.display()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

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
    if opts.remount {
        return remount(&mountpoint, &opts, &args.options);
    }
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

    let kind = mount_kind(&target, &opts)?;
    if let Kind::Block { device, .. } = &kind {
        opts.fs.lock.kernel_claims = *device == target;
    }
    // An image still being written back by a biofs whose mount is gone is
    // waited for; one mounted now is refused at once.
    opts.fs.lock.wait = match session::mounted_from(&target) {
        Some(_) => std::time::Duration::ZERO,
        None => LOCK_WAIT,
    };
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
    let mounted = session::mount(fs.clone(), &mountpoint, &opts, &fsname, kind).map_err(|e| {
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

/// How long a mount waits for an image that another biofs is still
/// releasing (a plain fuse mount just unmounted).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The kind of mount to make of `target`: fuseblk on a block device, or on
/// a loop device attached to an image file where loop devices can be had;
/// plain fuse with `-o nofuseblk`, or when no loop device can be had
/// (unless `-o fuseblk` asked for it: then that is the error).
fn mount_kind(target: &Path, opts: &options::Options) -> Result<Kind, String> {
    if opts.fuseblk == Some(false) {
        return Ok(Kind::Plain);
    }
    let meta = std::fs::metadata(target)
        .map_err(|e| format!("{}: {}", target.display(), os_message(&e)))?;
    use std::os::unix::fs::FileTypeExt;
    if meta.file_type().is_block_device() {
        return Ok(Kind::Block {
            device: target.to_path_buf(),
            loop_fd: None,
        });
    }
    match biofs::sys::loop_attach(target, opts.fs.read_only) {
        Ok((device, fd)) => {
            log::info!("{} attached to {}", target.display(), device.display());
            Ok(Kind::Block {
                device,
                loop_fd: Some(fd),
            })
        }
        Err(e) if opts.fuseblk == Some(true) => Err(format!(
            "-o fuseblk: can't attach {} to a loop device: {}",
            target.display(),
            os_message(&e)
        )),
        Err(e) => {
            log::info!(
                "no loop device for {} ({}): a plain fuse mount, whose umount doesn't wait",
                target.display(),
                os_message(&e)
            );
            Ok(Kind::Plain)
        }
    }
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
