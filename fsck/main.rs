//! fsck.biofs: check and repair a biofs filesystem.

use std::path::PathBuf;
use std::process::ExitCode;

use biofs::format::dev::{Dev, DevOptions};
use biofs::format::fsck::{fsck, FsckError, FsckOptions, Mode, CANCEL};

const HELP: &str = "\
NAME
    fsck.biofs - check and repair a biofs filesystem

SYNOPSIS
    fsck.biofs [-n | -y | -p] [-f] [-v] [-b BLOCK] [--scrub] TARGET

DESCRIPTION
    Checks the biofs filesystem on TARGET (an image file or block device)
    and repairs what it finds, in the passes of e2fsck: the superblock (or
    its backup), journal replay, the orphan list, inodes and extent trees,
    blocks claimed twice, directory structure and index, connectivity
    (unreachable files go to /lost+found), link counts, and the block and
    inode bitmaps and summary counters. Metadata checksums are checked
    throughout. A filesystem marked clean is not checked without -f.

    The filesystem must not be mounted.

OPTIONS
    -n  Open read-only and answer no to every question: report, change
        nothing. Committed journal transactions are read as if replayed.
    -y  Answer yes to every question: repair everything.
    -p, -a
        Preen: repair what is safe without asking; exit 4 on what needs a
        person (a damaged primary superblock).
    -f  Check even if the filesystem is marked clean.
    -v  Verbose: say what each pass does.
    -b BLOCK
        Use the superblock at BLOCK (a backup) instead of block 0.
    --scrub
        Also read every data block of every file and verify it against
        its integrity tuple; list the files that own bad blocks. Needs
        write access to the integrity metadata (not with -n).
    -h, --help
        Print this help and exit.
    -V, --version
        Print the version and exit.

    Without -n, -y or -p, fsck.biofs asks before each repair (a terminal
    is needed).

EXIT STATUS
    The sum of:
    0   no errors
    1   errors were corrected
    4   errors were left uncorrected
    8   operational error (the device or the filesystem's essentials
        could not be used)
    16  usage error
    32  cancelled by the user (SIGINT or SIGTERM)

SEE ALSO
    mkfs.biofs(8), fsck(8), e2fsck(8)
";

fn usage(msg: &str) -> ExitCode {
    eprintln!("fsck.biofs: {msg}");
    eprintln!("Try 'fsck.biofs --help'.");
    ExitCode::from(16)
}

extern "C" fn on_signal(_: libc::c_int) {
    CANCEL.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let mut mode = None;
    let (mut force, mut verbose, mut scrub) = (false, false, false);
    let mut backup = None;
    let mut target: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                println!("fsck.biofs {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--scrub" => scrub = true,
            "-b" => match args.next().map(|v| v.parse::<u64>()) {
                Some(Ok(b)) => backup = Some(b),
                _ => return usage("-b needs a block number"),
            },
            s if s.starts_with('-') && s.len() > 1 && !s.starts_with("--") => {
                for c in s[1..].chars() {
                    let m = match c {
                        'n' => Some(Mode::No),
                        'y' => Some(Mode::Yes),
                        'p' | 'a' => Some(Mode::Preen),
                        'f' => {
                            force = true;
                            None
                        }
                        'v' => {
                            verbose = true;
                            None
                        }
                        // Options fsck(8) may pass that change nothing here.
                        'r' | 'C' | 'T' => None,
                        _ => return usage(&format!("unknown option -{c}")),
                    };
                    if let Some(m) = m {
                        if mode.is_some_and(|old| old != m) {
                            return usage("only one of -n, -y and -p may be given");
                        }
                        mode = Some(m);
                    }
                }
            }
            s if s.starts_with("--") => return usage(&format!("unknown option {s}")),
            _ => {
                if target.is_some() {
                    return usage("only one TARGET may be given");
                }
                target = Some(PathBuf::from(a));
            }
        }
    }
    let Some(target) = target else {
        return usage("no TARGET given");
    };
    let mode = mode.unwrap_or(Mode::Ask);
    if scrub && mode == Mode::No {
        return usage("--scrub can't be combined with -n: verifying reads needs write access to the integrity metadata");
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let dev = match Dev::open(
        &target,
        DevOptions {
            read_only: mode == Mode::No,
            verify: true,
            workers: 0,
            queue_depth: 0,
        },
    ) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("fsck.biofs: {}: {e}", target.display());
            return ExitCode::from(8);
        }
    };
    let opts = FsckOptions {
        mode,
        force,
        verbose,
        scrub,
        backup,
    };
    let result = fsck(&dev, &opts, &mut |m| println!("{m}"));
    let close = if mode == Mode::No {
        Ok(())
    } else {
        dev.close()
    };
    let code = match result {
        Ok(r) => {
            if !r.skipped_clean {
                println!(
                    "{}: {} files, {} directories; {}/{} inodes, {}/{} blocks in use{}",
                    target.display(),
                    r.files,
                    r.dirs,
                    r.used_inodes,
                    r.total_inodes,
                    r.used_blocks,
                    r.total_blocks,
                    if scrub {
                        format!(
                            "; scrubbed {} blocks, {} bad",
                            r.scrub_blocks,
                            r.scrub_bad.len()
                        )
                    } else {
                        String::new()
                    }
                );
                if r.fixed > 0 {
                    println!("\n***** FILE SYSTEM WAS MODIFIED *****");
                }
                if r.left > 0 {
                    println!(
                        "\n{}: ********** WARNING: Filesystem still has errors **********",
                        target.display()
                    );
                }
            }
            r.exit_code()
        }
        Err(FsckError::Cancelled) => {
            eprintln!("fsck.biofs: cancelled");
            32
        }
        Err(e @ FsckError::CancelledAfterRepairs) => {
            eprintln!("fsck.biofs: {e}");
            32 | 1
        }
        Err(e @ FsckError::NeedsManual(_)) => {
            eprintln!("fsck.biofs: {}: {e}", target.display());
            4
        }
        Err(e) => {
            eprintln!("fsck.biofs: {}: {e}", target.display());
            8
        }
    };
    if let Err(e) = close {
        eprintln!("fsck.biofs: closing {}: {e}", target.display());
        return ExitCode::from((code | 8) as u8);
    }
    ExitCode::from(code as u8)
}
