//! biofs-fsstress: an fsstress-style exerciser of the namespace and file
//! data from several processes at once (docs/testing.md, "The
//! exercisers").
//!
//! `-p N` worker processes (this binary again, with `--worker K`) each do
//! `-n` random operations under DIR/wK (their own) and DIR/shared (all of
//! theirs). Worker K's ops follow from (seed, K) alone. Errors a racing or
//! random namespace gives (ENOENT, EEXIST, ENOTEMPTY, ...) are expected;
//! any other (EIO, EUCLEAN, ...) fails the run. At the end the parent
//! prints each op's count: attempted, succeeded, expected errors.
//!
//! On a failure the parent shrinks it: each failed worker is replayed
//! alone, in a fresh directory, with fewer and fewer ops (a binary search
//! on `-n`, same seed), and the shortest failing replay is printed as a
//! command line. A failure that needs the other workers' races says so.
//!
//! Exit status: 0 passed, 1 an unexpected error, 2 usage or setup error.

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

use clap::Parser;
use ops::{Counts, OPS};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

/// fsstress-style namespace and data exerciser.
#[derive(Parser)]
#[command(name = "biofs-fsstress")]
struct Args {
    /// Worker processes.
    #[arg(short = 'p', default_value_t = 1)]
    procs: u32,
    /// Operations per worker.
    #[arg(short = 'n', default_value_t = 1000)]
    ops: u64,
    /// Seed of the run (worker K uses seed and K).
    #[arg(short = 'S', default_value_t = 1)]
    seed: u64,
    /// Print every operation and its result.
    #[arg(short = 'v')]
    verbose: bool,
    /// Run as worker K (what the parent starts).
    #[arg(long, hide = true, value_name = "K")]
    worker: Option<u32>,
    /// Testing the tool: worker 0 counts its op N as an unexpected error
    /// (so the shrinking can be seen to work).
    #[arg(long, hide = true, value_name = "N")]
    inject_bug: Option<u64>,
    /// The directory to work in.
    dir: PathBuf,
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
        eprintln!("biofs-fsstress: {} is not a directory", args.dir.display());
        return ExitCode::from(2);
    }
    match args.worker {
        Some(k) => worker(&args, k),
        None => parent(&args),
    }
}

/// Worker K: run the ops, print the counts on stdout for the parent.
fn worker(args: &Args, k: u32) -> ExitCode {
    let mut w = match ops::Worker::new(&args.dir, args.seed, k, args.verbose) {
        Ok(w) => w,
        Err(why) => {
            eprintln!("biofs-fsstress[w{k}]: {why}");
            return ExitCode::from(2);
        }
    };
    for i in 0..args.ops {
        w.step(i);
        if k == 0 && args.inject_bug == Some(i) {
            eprintln!("biofs-fsstress[w0]: op {i}: injected failure");
            w.counts.ops[0][3] += 1;
        }
    }
    println!("{}", w.counts.encode());
    if w.counts.unexpected() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Start the workers, wait for them, sum and print their counts.
fn parent(args: &Args) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("biofs-fsstress: can't find my own binary: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::create_dir(args.dir.join("shared")) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            eprintln!(
                "biofs-fsstress: can't make {}/shared: {e}",
                args.dir.display()
            );
            return ExitCode::from(2);
        }
    }
    println!(
        "biofs-fsstress: {} processes x {} ops, seed {}, in {}",
        args.procs,
        args.ops,
        args.seed,
        args.dir.display()
    );
    let mut children = Vec::new();
    for k in 0..args.procs {
        let mut c = Command::new(&exe);
        c.arg("--worker").arg(k.to_string());
        c.arg("-n").arg(args.ops.to_string());
        c.arg("-S").arg(args.seed.to_string());
        if args.verbose {
            c.arg("-v");
        }
        if let Some(n) = args.inject_bug {
            c.arg("--inject-bug").arg(n.to_string());
        }
        c.arg(&args.dir).stdout(Stdio::piped());
        match c.spawn() {
            Ok(ch) => children.push((k, ch)),
            Err(e) => {
                eprintln!("biofs-fsstress: can't start worker {k}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let mut total = Counts::default();
    let mut bad = 0;
    let mut failed = Vec::new();
    for (k, ch) in children {
        match ch.wait_with_output() {
            Err(e) => {
                eprintln!("biofs-fsstress: worker {k}: {e}");
                bad += 1;
            }
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                if args.verbose {
                    print!("{text}");
                }
                match text.lines().last().and_then(Counts::decode) {
                    Some(c) => total.add(&c),
                    None => {
                        eprintln!("biofs-fsstress: worker {k} gave no counts ({})", out.status);
                        bad += 1;
                    }
                }
                if !out.status.success() {
                    bad += 1;
                    failed.push(k);
                }
            }
        }
    }
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>9}",
        "op", "attempted", "ok", "expected", "UNEXPECTED"
    );
    for (i, name) in OPS.iter().enumerate() {
        let c = total.ops[i];
        println!("{name:<10} {:>9} {:>9} {:>9} {:>9}", c[0], c[1], c[2], c[3]);
    }
    let u = total.unexpected();
    println!(
        "biofs-fsstress: {} unexpected errors, {bad} failed workers",
        u
    );
    for k in failed {
        shrink(args, &exe, k);
    }
    if u > 0 || bad > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Does worker `k` fail alone with `n` ops? (Run in a fresh directory.)
fn fails_alone(args: &Args, exe: &std::path::Path, k: u32, n: u64) -> Option<bool> {
    let dir = args.dir.join(format!("replay.w{k}.n{n}"));
    std::fs::create_dir_all(dir.join("shared")).ok()?;
    let mut c = Command::new(exe);
    c.arg("--worker").arg(k.to_string());
    c.arg("-n")
        .arg(n.to_string())
        .arg("-S")
        .arg(args.seed.to_string());
    if let Some(b) = args.inject_bug {
        c.arg("--inject-bug").arg(b.to_string());
    }
    let status = c
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(&dir);
    Some(!status.ok()?.success())
}

/// Shrink worker `k`'s failure to the fewest ops that still fail alone,
/// and print how to replay it.
fn shrink(args: &Args, exe: &std::path::Path, k: u32) {
    match fails_alone(args, exe, k, args.ops) {
        Some(true) => {}
        Some(false) => {
            println!("shrink: worker {k} does not fail alone: its failure needs the other workers");
            return;
        }
        None => {
            println!("shrink: worker {k} could not be replayed");
            return;
        }
    }
    // The shortest failing prefix: fails at `hi`, passes at `lo`.
    let (mut lo, mut hi) = (0u64, args.ops);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match fails_alone(args, exe, k, mid) {
            Some(true) => hi = mid,
            Some(false) => lo = mid,
            None => break,
        }
    }
    let inject = args
        .inject_bug
        .map_or(String::new(), |b| format!(" --inject-bug {b}"));
    println!(
        "shrink: worker {k} fails alone after {hi} ops (op {} is the first that fails); replay: mkdir -p DIR/shared && {} --worker {k} -n {hi} -S {}{inject} -v DIR",
        hi - 1,
        exe.display(),
        args.seed
    );
}
