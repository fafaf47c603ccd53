//! biofs-fuzz: a structure-aware image fuzzer (issue 13).
//!
//! Each case copies a populated base image, damages it from a seed
//! (structured changes with every checksum recomputed, so the parsers see
//! the bytes: inode fields, directory and extent nodes, the orphan list,
//! tree bombs, looping or cut leaf chains, zeroed inodes; and raw damage:
//! bit flips, random bytes and zeroed blocks, written through the engine so
//! the integrity tuples match), then, through the filesystem core (no
//! FUSE): mounts it, walks and reads everything, writes, commits and
//! unmounts; runs `fsck -fy`, then `fsck -fn`, which must find nothing;
//! and mounts again, where every file left must read. Each case runs in a
//! child process with a time limit and an address-space limit
//! (RLIMIT_AS): a hang or runaway memory is a failure like a panic.
//!
//!     biofs-fuzz --seconds 3600            # the long run (docs/testing.md)
//!     biofs-fuzz --cases 40 --seed 7       # what `tests/fuzz_images.rs` runs
//!     biofs-fuzz --replay SEED             # one case, in this process
//!     biofs-fuzz --replay SEED --damage-only --dir D   # just the damaged image
//!
//! Exit 0 when every case passed; 1 otherwise, each failure printed with
//! the command that replays it.

// Test tooling: a panic here is a reported failure of the run, not a
// crash of the filesystem; the lib code it drives is linted for real.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test tooling, where a panic is a reported failure"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use biofs::format::dev::{Dev, DevOptions};
use biofs::format::fsck::{fsck, FsckOptions, Mode};
use biofs::format::image::Image;
use clap::Parser;

#[allow(dead_code)]
mod cases;
mod mutate;
#[path = "../common/rng.rs"]
#[allow(dead_code)]
mod rng;
mod scenario;

#[derive(Parser)]
#[command(
    name = "biofs-fuzz",
    about = "Mutate biofs images and check mount and fsck survive them"
)]
struct Args {
    /// Run cases for this long (seconds); 0: use --cases.
    #[arg(long, default_value_t = 0)]
    seconds: u64,
    /// Number of cases (when --seconds is 0).
    #[arg(long, default_value_t = 20)]
    cases: u64,
    /// First seed; case k uses seed + k.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Time limit of one case, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Address-space limit of one case, in MiB.
    #[arg(long, default_value_t = 4096)]
    mem_mb: u64,
    /// Directory for the base and per-case images (default: a temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run the case of this seed in this process (no limits) and say what
    /// happened.
    #[arg(long)]
    replay: Option<u64>,
    /// With --replay: only damage the image (left in DIR/replay.img), to
    /// look at it with fsck.biofs or mount it by hand.
    #[arg(long, requires = "replay")]
    damage_only: bool,
    /// Internal: run one case as a child (base image, case image, seed).
    #[arg(long, num_args = 3, hide = true)]
    child: Vec<String>,
}

/// What became of one case.
#[derive(Debug, Default)]
struct Tally {
    cases: u64,
    passed: u64,
    mount_refused: u64,
    fsck_gave_up: u64,
    violations: u64,
    panics: u64,
    hangs: u64,
    other: u64,
    failures: Vec<String>,
    /// Why mounts were refused (digits masked), and how often.
    refusals: std::collections::BTreeMap<String, u64>,
}

/// Exit codes of a child.
const CHILD_OK: i32 = 0;
const CHILD_VIOLATION: i32 = 3;
const CHILD_REFUSED: i32 = 4;
const CHILD_FSCK_GAVE_UP: i32 = 5;

fn main() -> ExitCode {
    let args = Args::parse();
    if let [base, work, seed] = args.child.as_slice() {
        let seed = seed.parse().unwrap_or(0);
        return ExitCode::from(child(Path::new(base), Path::new(work), seed) as u8);
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("biofs-fuzz: {e}");
            ExitCode::from(2)
        }
    }
}

fn child(base: &Path, work: &Path, seed: u64) -> i32 {
    match scenario::case(base, work, seed) {
        Ok(scenario::Outcome::Passed) => CHILD_OK,
        Ok(scenario::Outcome::MountRefused) => CHILD_REFUSED,
        Ok(scenario::Outcome::FsckGaveUp) => CHILD_FSCK_GAVE_UP,
        Err(v) => {
            eprintln!("violation: {v}");
            CHILD_VIOLATION
        }
    }
}

fn run(args: &Args) -> Result<bool, String> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempdir()?;
            tmp.clone()
        }
    };
    let base = dir.join("base.img");
    let t = Instant::now();
    scenario::make_base(&base)?;
    check_base(&base)?;
    eprintln!("base image {} made in {:?}", base.display(), t.elapsed());
    if let Some(seed) = args.replay {
        let work = dir.join("replay.img");
        if args.damage_only {
            scenario::damage_only(&base, &work, seed)?;
            println!("seed {seed}: damaged image in {}", work.display());
            return Ok(true);
        }
        let r = scenario::case(&base, &work, seed);
        println!("seed {seed}: {r:?} (image left in {})", work.display());
        return Ok(r.is_ok());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut tally = Tally::default();
    let mut k = 0u64;
    loop {
        let done = if args.seconds > 0 {
            start.elapsed() >= Duration::from_secs(args.seconds)
        } else {
            k >= args.cases
        };
        if done {
            break;
        }
        let seed = args.seed + k;
        k += 1;
        let work = dir.join(format!("case-{}.img", seed % 4));
        one_case(&exe, args, &base, &work, seed, &mut tally)?;
        let _ = std::fs::remove_file(&work);
        if tally.cases % 50 == 0 {
            eprintln!("{}", summary(&tally, start.elapsed()));
        }
    }
    println!("{}", summary(&tally, start.elapsed()));
    for (why, n) in &tally.refusals {
        println!("mount refused {n} times: {why}");
    }
    for f in &tally.failures {
        println!("FAILED {f}");
    }
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(tally.failures.is_empty())
}

fn summary(t: &Tally, took: Duration) -> String {
    format!(
        "biofs-fuzz: {} cases in {:.0} s ({:.0} s of CPU in the cases): {} passed, {} mounts refused, {} left for a manual fsck, \
         {} violations, {} panics, {} hangs, {} other failures",
        t.cases,
        took.as_secs_f64(),
        children_cpu().as_secs_f64(),
        t.passed,
        t.mount_refused,
        t.fsck_gave_up,
        t.violations,
        t.panics,
        t.hangs,
        t.other
    )
}

/// User plus system time of the finished cases (getrusage of the
/// children that were waited for): the measure of a long run's size.
fn children_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::from_secs(tv.tv_sec().max(0) as u64)
                    + Duration::from_micros(tv.tv_usec().max(0) as u64)
            };
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// The base image must check clean, or every case is meaningless.
fn check_base(base: &Path) -> Result<(), String> {
    let dev = Dev::open(
        base,
        DevOptions {
            read_only: true,
            verify: true,
            workers: 0,
            queue_depth: 0,
        },
    )
    .map_err(|e| e.to_string())?;
    let opts = FsckOptions {
        mode: Mode::No,
        force: true,
        verbose: false,
        scrub: false,
        backup: None,
    };
    let r = fsck(&dev, &opts, &mut |_| {}).map_err(|e| e.to_string())?;
    if r.problems != 0 {
        return Err(format!("the base image has {} problems", r.problems));
    }
    let img = Image::open(&dev, None).map_err(|e| e.to_string())?;
    drop(img);
    Ok(())
}

fn one_case(
    exe: &Path,
    args: &Args,
    base: &Path,
    work: &Path,
    seed: u64,
    tally: &mut Tally,
) -> Result<(), String> {
    let mut cmd = Command::new(exe);
    cmd.arg("--child")
        .arg(base)
        .arg(work)
        .arg(seed.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let limit = args.mem_mb << 20;
    // SAFETY: between fork and exec only setrlimit runs, a plain syscall
    // that allocates nothing and takes no lock.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, limit, limit)
                .map_err(std::io::Error::from)
        });
    }
    let mut ch = cmd.spawn().map_err(|e| format!("spawning a case: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let status = loop {
        if let Some(s) = ch.try_wait().map_err(|e| e.to_string())? {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = ch.kill();
            let _ = ch.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = ch.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    // The damage done, and the panic's or violation's own lines.
    let lines: Vec<&str> = err.lines().collect();
    let mut keep: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("damage:") || l.starts_with("violation:"))
        .copied()
        .collect();
    if let Some(i) = lines.iter().position(|l| l.contains("panicked at")) {
        keep.extend(lines.iter().skip(i).take(2));
    }
    let last = keep.join(" | ");
    tally.cases += 1;
    let replay = format!("biofs-fuzz --replay {seed}");
    match status.map(|s| (s.code(), std::os::unix::process::ExitStatusExt::signal(&s))) {
        None => {
            tally.hangs += 1;
            tally.failures.push(format!(
                "seed {seed}: no end in {} s ({replay})",
                args.timeout
            ));
        }
        Some((Some(CHILD_OK), _)) => tally.passed += 1,
        Some((Some(CHILD_REFUSED), _)) => {
            tally.mount_refused += 1;
            let why = lines
                .iter()
                .find_map(|l| l.strip_prefix("mount refused: "))
                .unwrap_or("?");
            let key: String = why
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .take(90)
                .collect();
            *tally.refusals.entry(key).or_default() += 1;
        }
        Some((Some(CHILD_FSCK_GAVE_UP), _)) => tally.fsck_gave_up += 1,
        Some((Some(CHILD_VIOLATION), _)) => {
            tally.violations += 1;
            tally
                .failures
                .push(format!("seed {seed}: {last} ({replay})"));
        }
        Some((Some(101), _)) => {
            tally.panics += 1;
            tally
                .failures
                .push(format!("seed {seed}: panic: {last} ({replay})"));
        }
        Some((code, sig)) => {
            tally.other += 1;
            tally.failures.push(format!(
                "seed {seed}: exit {code:?} signal {sig:?} (memory limit?): {last} ({replay})"
            ));
        }
    }
    Ok(())
}

fn tempdir() -> Result<PathBuf, String> {
    let base = std::env::temp_dir().join(format!("biofs-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
    Ok(base)
}
