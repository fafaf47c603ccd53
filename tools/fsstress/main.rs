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
//! Exit status: 0 passed, 1 an unexpected error, 2 usage or setup error.

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
    if u > 0 || bad > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
