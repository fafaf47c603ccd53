//! biofs-fsx: an fsx-style exerciser of one file against an in-memory
//! model (docs/testing.md, "The exercisers").
//!
//! Random reads, writes, truncates, fallocate modes, mapped reads and
//! writes, fsyncs and reopens of `DIR/fsx.SEED`, each checked against a
//! `Vec<u8>` shadow of the file. A run is fixed by its seed and options. On
//! a mismatch it prints the tail of the op log and the first differing
//! offset, then replays shorter prefixes of the same run (a binary search
//! on the op count) and prints the command that reproduces the shortest.
//!
//! Exit status: 0 passed, 1 mismatch or failed system call, 2 usage or
//! setup error.

// Test tooling: a panic here is a reported failure of the run, not a
// crash of the filesystem; the lib code it drives is linted for real.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test tooling, where a panic is a reported failure"
)]

mod ops;
#[path = "../common/rng.rs"]
mod rng;
mod sys;

use clap::Parser;
use ops::{Falloc, Limits, Op, Outcome};
use rng::{errno_text, Rng};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitCode;

/// fsx-style single-file exerciser, checked against an in-memory model.
#[derive(Parser, Clone)]
#[command(name = "biofs-fsx")]
struct Args {
    /// Number of operations.
    #[arg(short = 'N', default_value_t = 10000)]
    ops: u64,
    /// Seed of the run.
    #[arg(short = 'S', default_value_t = 1)]
    seed: u64,
    /// Largest file size (suffixes k, m, g).
    #[arg(short = 'l', default_value = "4m", value_parser = parse_size)]
    maxlen: u64,
    /// Largest ordinary transfer (one op in 16 goes up to maxlen/2).
    #[arg(short = 'o', default_value = "256k", value_parser = parse_size)]
    maxop: u64,
    /// No mmap reads or writes (they become pread/pwrite).
    #[arg(long)]
    no_mmap: bool,
    /// No fallocate, punch hole or zero range (they become truncates).
    #[arg(long)]
    no_fallocate: bool,
    /// Don't replay shorter prefixes after a failure.
    #[arg(long)]
    no_shrink: bool,
    /// Print every operation.
    #[arg(short = 'v')]
    verbose: bool,
    /// At the end, write the model (what the file must hold) to this file.
    #[arg(long)]
    save_model: Option<PathBuf>,
    /// Every K ops: close the file, run the --remount-cmd shell command
    /// (an unmount and mount of DIR's filesystem), reopen the file and
    /// check it whole against the model.
    #[arg(long, value_name = "K", requires = "remount_cmd")]
    remount_every: Option<u64>,
    /// The shell command that unmounts and mounts DIR's filesystem again.
    #[arg(long, value_name = "CMD")]
    remount_cmd: Option<String>,
    /// Test fsx itself: corrupt one byte of the model after op K (the
    /// first op from K on with a non-empty file), as a filesystem bug
    /// would; the run must then fail and shrink to about K+1 ops.
    #[arg(long, hide = true, value_name = "K")]
    inject_bug: Option<u64>,
    /// The directory to work in (the file is DIR/fsx.SEED).
    dir: PathBuf,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last().map(|c| c.to_ascii_lowercase()) {
        Some('k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    match n.checked_mul(mult) {
        Some(v) if v > 0 => Ok(v),
        _ => Err(format!("size {s:?} out of range")),
    }
}

/// How a run ended.
enum RunEnd {
    Passed,
    Failed {
        /// Ops applied when the failure showed (the op that failed counts).
        at: u64,
        report: String,
    },
    /// The file couldn't be made: not the filesystem's data going wrong.
    Setup(String),
}

const LOG_TAIL: usize = 16;

/// Run the first `n` ops of the run `args` describes.
fn run(args: &Args, n: u64, loud: bool) -> RunEnd {
    let path = args.dir.join(format!("fsx.{}", args.seed));
    let mut fd = match sys::Fd::open(&path, true) {
        Ok(fd) => fd,
        Err(e) => {
            return RunEnd::Setup(format!(
                "can't create {}: {}",
                path.display(),
                errno_text(e)
            ))
        }
    };
    let mut lim = Limits {
        maxlen: args.maxlen,
        maxop: args.maxop.min(args.maxlen),
        mmap: !args.no_mmap,
        falloc: !args.no_fallocate,
    };
    let mut unsupported = [false; Falloc::ALL.len()];
    let mut model: Vec<u8> = Vec::new();
    let mut rng = Rng::new(args.seed);
    let mut log: VecDeque<String> = VecDeque::with_capacity(LOG_TAIL);
    let mut injected = false;
    for i in 0..n {
        if let (Some(every), Some(cmd)) = (args.remount_every, &args.remount_cmd) {
            if i > 0 && every > 0 && i % every == 0 {
                log.push_back(format!("{:>8} unmount/mount", i + 1));
                fd.close_now();
                match std::process::Command::new("sh").arg("-c").arg(cmd).status() {
                    Ok(st) if st.success() => {}
                    other => {
                        return RunEnd::Setup(format!("--remount-cmd failed ({other:?}): {cmd}"))
                    }
                }
                fd = match sys::Fd::open(&path, false) {
                    Ok(fd) => fd,
                    Err(e) => {
                        return RunEnd::Setup(format!(
                            "can't reopen {} after the remount: {}",
                            path.display(),
                            errno_text(e)
                        ))
                    }
                };
                if let Some(report) = failure(ops::check_all(&fd, &model), i, &log) {
                    return RunEnd::Failed { at: i, report };
                }
            }
        }
        let op = ops::draw(&mut rng, model.len() as u64, &lim);
        let line = format!("{:>8} {op}", i + 1);
        if loud && args.verbose {
            println!("{line}");
        }
        if log.len() == LOG_TAIL {
            log.pop_front();
        }
        if let Op::Falloc { how, .. } = op {
            if unsupported[how.index()] {
                log.push_back(format!("{line} (skipped: unsupported)"));
                continue;
            }
        }
        log.push_back(line);
        let mut outcome = ops::apply(op, &mut fd, &mut model, &path);
        if let Outcome::Unsupported(how) = outcome {
            unsupported[how.index()] = true;
            if loud {
                println!(
                    "note: {} is not supported here (EOPNOTSUPP): skipped from now on",
                    how.name()
                );
            }
            if unsupported.iter().all(|&u| u) {
                lim.falloc = false;
            }
            outcome = Outcome::Ok;
        }
        if let Outcome::Ok = outcome {
            outcome = match op {
                // a reopened file is read whole: what the cache dropped
                Op::Reopen => ops::check_all(&fd, &model),
                _ => size_check(&fd, &model),
            };
        }
        if let Some(k) = args.inject_bug {
            if !injected && i >= k && !model.is_empty() {
                let at = model.len() / 2;
                model[at] ^= 0x5a;
                injected = true;
                if loud {
                    println!(
                        "note: --inject-bug: model byte {at:#x} corrupted after op {}",
                        i + 1
                    );
                }
            }
        }
        if let Some(report) = failure(outcome, i + 1, &log) {
            return RunEnd::Failed { at: i + 1, report };
        }
    }
    if let Some(report) = failure(ops::check_all(&fd, &model), n, &log) {
        return RunEnd::Failed {
            at: n,
            report: format!("(at the full check after the last op)\n{report}"),
        };
    }
    if let Some(p) = &args.save_model {
        if let Err(e) = std::fs::write(p, &model) {
            return RunEnd::Setup(format!("can't write the model to {}: {e}", p.display()));
        }
    }
    RunEnd::Passed
}

/// After each op: the file's size is the model's.
fn size_check(fd: &sys::Fd, model: &[u8]) -> Outcome {
    match fd.size() {
        Err(e) => Outcome::Failed("fstat".into(), e),
        Ok(s) if s != model.len() as u64 => Outcome::Mismatch(ops::Mismatch {
            what: format!("file size {s:#x}, the model's {:#x}", model.len()),
            offset: None,
            dump_from: 0,
            expected: Vec::new(),
            got: Vec::new(),
        }),
        Ok(_) => Outcome::Ok,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The report of a failed op, or None if it passed.
fn failure(outcome: Outcome, at: u64, log: &VecDeque<String>) -> Option<String> {
    let head = match outcome {
        Outcome::Ok | Outcome::Unsupported(_) => return None,
        Outcome::Failed(call, e) => format!("op {at}: {call} failed: {}", errno_text(e)),
        Outcome::Mismatch(m) => {
            let mut s = format!("MISMATCH at op {at}: {}", m.what);
            if let Some(off) = m.offset {
                s += &format!("\nfirst differing offset: {off:#x} ({off})");
                s += &format!(
                    "\n  expected (from {:#x}): {}",
                    m.dump_from,
                    hex(&m.expected)
                );
                s += &format!("\n  got:                  {}", hex(&m.got));
            }
            s
        }
    };
    let tail: Vec<&str> = log.iter().map(String::as_str).collect();
    Some(format!(
        "{head}\nlast {} ops:\n{}",
        tail.len(),
        tail.join("\n")
    ))
}

/// The command line that runs the first `n` ops of this run.
fn command(args: &Args, n: u64) -> String {
    let mut c = format!(
        "biofs-fsx -N {n} -S {} -l {} -o {}",
        args.seed, args.maxlen, args.maxop
    );
    if args.no_mmap {
        c += " --no-mmap";
    }
    if args.no_fallocate {
        c += " --no-fallocate";
    }
    if let Some(k) = args.inject_bug {
        c += &format!(" --inject-bug {k}");
    }
    format!("{c} {}", args.dir.display())
}

/// Binary search for the shortest failing prefix, given that `at` ops
/// fail. Assumes a prefix that fails stays failing when longer.
fn shrink(args: &Args, at: u64) -> (u64, Option<String>) {
    let (mut lo, mut hi) = (0u64, at);
    let mut last = None;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match run(args, mid, false) {
            RunEnd::Failed { report, .. } => {
                hi = mid;
                last = Some(report);
            }
            _ => lo = mid,
        }
    }
    (hi, last)
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    if !args.dir.is_dir() {
        eprintln!("biofs-fsx: {} is not a directory", args.dir.display());
        return ExitCode::from(2);
    }
    println!(
        "biofs-fsx: seed {}, {} ops, file {}",
        args.seed,
        args.ops,
        args.dir.join(format!("fsx.{}", args.seed)).display()
    );
    match run(&args, args.ops, true) {
        RunEnd::Passed => {
            println!("biofs-fsx: {} ops passed", args.ops);
            ExitCode::SUCCESS
        }
        RunEnd::Setup(why) => {
            eprintln!("biofs-fsx: {why}");
            ExitCode::from(2)
        }
        RunEnd::Failed { at, report } => {
            println!("{report}");
            println!("reproduce: {}", command(&args, at));
            if !args.no_shrink {
                println!("shrinking: replaying shorter prefixes of the run");
                let (n, last) = shrink(&args, at);
                if let Some(r) = last {
                    println!("{r}");
                }
                println!("shortest failing prefix: {n} ops");
                println!("reproduce: {}", command(&args, n));
            }
            ExitCode::from(1)
        }
    }
}
