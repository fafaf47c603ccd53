//! biofs-crash: CrashMonkey-style crash-consistency workloads through the
//! filesystem core (docs/testing.md, "The crash checker").
//!
//! Each workload is a short sequence of operations on `Fs`, ending in an
//! fsync or fdatasync, run on a memory device with an integrity store
//! under the engine's write logger (`LogWritesBackend`). The log is then
//! replayed to every crash state (every prefix, and every non-FUA write
//! lost after each flush point; `logwrites::crash_states`) and in each:
//! - fsck -n finds no problems, before and after a mount;
//! - the filesystem mounts (replaying its journal) and unmounts;
//! - the paths the workload tracks are in one of the states its model
//!   allows: every state between the last fsync that returned before the
//!   crash point and the next one (so everything that fsync covered is
//!   there in full, and a rename is atomic);
//! - no regular file has a byte that is neither zero nor its own data.
//!
//! Exit status: 0 every state consistent, 1 a state failed (printed with
//! what differed), 2 usage or setup error.

// Test tooling: a panic here is a reported failure of the run, not a
// crash of the filesystem; the lib code it drives is linted for real.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test tooling, where a panic is a reported failure"
)]

use std::collections::BTreeMap;
use std::fmt::Display;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use biofs::block::backend::logwrites::{crash_device, crash_states, writes_after, CrashState};
use biofs::block::backend::{BlockBackend, LogWritesBackend, MemBackend};
use biofs::block::{Checksum, IntegrityProfile, IntegrityStore};
use biofs::format::dev::{Dev, DevOptions};
use biofs::format::fsck::{fsck, FsckOptions, Mode};
use biofs::format::inode::{FileType, Timespec};
use biofs::format::mkfs::{make_fs, MkfsParams};
use biofs::format::BLOCK_SIZE;
use biofs::fs::{Ctx, Fs, MountOptions, RenameFlags, SetAttr};
use clap::Parser;

mod random;
#[path = "../common/rng.rs"]
#[allow(dead_code)]
mod rng;

const SIZE: u64 = 24 << 20;
const ROOT: u64 = 1;
/// Versions of a file's data a workload writes (see [`byte`]).
const VERSIONS: u8 = 3;

/// CrashMonkey-style crash-consistency workloads through the filesystem core.
#[derive(Parser)]
#[command(name = "biofs-crash")]
struct Args {
    /// Run only this workload (see -l).
    #[arg(short = 'w', value_name = "NAME")]
    workload: Option<String>,
    /// List the workloads and exit.
    #[arg(short = 'l')]
    list: bool,
    /// Print every crash state checked.
    #[arg(short = 'v')]
    verbose: bool,
    /// Test the checker itself: corrupt one byte of what each workload's
    /// last fsync promised, as a filesystem that lost it would show; every
    /// state after that fsync must then fail.
    #[arg(long, hide = true)]
    inject_bug: bool,
    /// Also run N generated workloads (random sequences of the same
    /// operations; the long run: docs/testing.md).
    #[arg(long, value_name = "N", default_value_t = 0)]
    random: u64,
    /// First seed of the generated workloads (workload i uses SEED + i).
    #[arg(long, value_name = "SEED", default_value_t = 1)]
    seed: u64,
    /// Operations per generated workload.
    #[arg(long, value_name = "OPS", default_value_t = 12)]
    ops: usize,
}

/// Byte `o` of version `v` of file `id`'s data: never zero, different per
/// file and version.
fn byte(id: u8, v: u8, o: usize) -> u8 {
    ((o / 7) as u8)
        .wrapping_add(id.wrapping_mul(31))
        .wrapping_add(v.wrapping_mul(101))
        | 1
}

fn data(id: u8, v: u8, len: usize) -> Vec<u8> {
    (0..len).map(|o| byte(id, v, o)).collect()
}

/// The file id of a name: its trailing digits (renames and links keep
/// them).
fn id_of(name: &str) -> Option<u8> {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    name[name.len() - digits..].parse().ok()
}

/// What a tracked path may hold.
#[derive(Clone, Debug, PartialEq)]
enum Expect {
    Absent,
    Dir,
    File(Vec<u8>),
    /// A file of this size whose every block is that block of either
    /// (an in-place overwrite that reached the medium in part).
    Mix(Vec<u8>, Vec<u8>),
}

/// What a path holds in a crash state.
#[derive(Debug, PartialEq)]
enum Found {
    Absent,
    Dir,
    File(Vec<u8>),
    Other,
}

impl Expect {
    fn allows(&self, f: &Found) -> bool {
        match (self, f) {
            (Expect::Absent, Found::Absent) | (Expect::Dir, Found::Dir) => true,
            (Expect::File(w), Found::File(g)) => w == g,
            (Expect::Mix(a, b), Found::File(g)) => {
                g.len() == a.len()
                    && g.len() == b.len()
                    && g.chunks(BLOCK_SIZE).enumerate().all(|(i, c)| {
                        let r = i * BLOCK_SIZE..i * BLOCK_SIZE + c.len();
                        c == &a[r.clone()] || c == &b[r]
                    })
            }
            _ => false,
        }
    }
}

/// Which version of its data each block of a file holds (`z`: zeros,
/// `?`: neither), to say what a failed state shows.
fn versions(path: &str, f: &Found) -> String {
    let (Found::File(d), Some(id)) = (f, id_of(path)) else {
        return String::new();
    };
    let tags: Vec<String> = d
        .chunks(BLOCK_SIZE)
        .enumerate()
        .map(|(i, c)| {
            let at = i * BLOCK_SIZE;
            if c.iter().all(|&b| b == 0) {
                return "z".to_string();
            }
            let v: String = (0..VERSIONS)
                .filter(|&v| c.iter().enumerate().all(|(o, &b)| b == byte(id, v, at + o)))
                .map(|v| v.to_string())
                .collect();
            if v.is_empty() {
                // Per byte: the first version it matches (z: zero).
                let mut runs: Vec<(char, usize)> = Vec::new();
                for (o, &b) in c.iter().enumerate() {
                    let t = (0..VERSIONS)
                        .find(|&v| b == byte(id, v, at + o))
                        .map_or(if b == 0 { 'z' } else { '?' }, |v| char::from(b'0' + v));
                    match runs.last_mut() {
                        Some((lt, n)) if *lt == t => *n += 1,
                        _ => runs.push((t, 1)),
                    }
                }
                let r: Vec<String> = runs.iter().map(|(t, n)| format!("{t}x{n}")).collect();
                format!("[{}]", r.join(","))
            } else {
                v
            }
        })
        .collect();
    format!(" (blocks: {})", tags.join(" "))
}

fn describe(f: &Found) -> String {
    match f {
        Found::Absent => "absent".into(),
        Found::Dir => "a directory".into(),
        Found::File(d) => format!("a file of {} bytes", d.len()),
        Found::Other => "not a file or directory".into(),
    }
}

type State = BTreeMap<&'static str, Expect>;

/// A workload's model: the state after each operation, and where each
/// fsync returned.
struct Model {
    lw: Arc<LogWritesBackend>,
    states: Vec<State>,
    /// (log length when the fsync returned, index of the state it covered)
    syncs: Vec<(usize, usize)>,
}

impl Model {
    /// The operation just done left `path` holding `e`.
    fn set(&mut self, path: &'static str, e: Expect) {
        let mut s = self.states.last().cloned().unwrap_or_default();
        s.insert(path, e);
        self.states.push(s);
    }
    /// Several paths changed in one operation (a rename).
    fn set2(&mut self, a: (&'static str, Expect), b: (&'static str, Expect)) {
        let mut s = self.states.last().cloned().unwrap_or_default();
        s.insert(a.0, a.1);
        s.insert(b.0, b.1);
        self.states.push(s);
    }
    /// An fsync (or fdatasync) just returned.
    fn synced(&mut self) {
        self.syncs
            .push((self.lw.entries().len(), self.states.len() - 1));
    }
    /// The states allowed in crash state `n`: from the last fsync that
    /// returned at or before `n` to the next one.
    fn allowed(&self, n: usize) -> &[State] {
        let k = self.syncs.iter().rposition(|&(len, _)| len <= n);
        let from = k.map_or(0, |k| self.syncs[k].1);
        let to = match k.map_or(Some(0), |k| self.syncs.get(k + 1).map(|_| k + 1)) {
            Some(j) => self.syncs.get(j).map_or(self.states.len(), |s| s.1 + 1),
            None => self.states.len(),
        };
        &self.states[from..to]
    }
}

fn ck<T, E: Display>(r: Result<T, E>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

type Workload = fn(&Fs, &mut Model) -> Result<(), String>;

const WORKLOADS: &[(&str, &str, Workload)] = &[
    (
        "create_fsync",
        "create a file, write 12000 bytes, fsync it",
        w_create,
    ),
    (
        "write_rename_fsync",
        "extend a synced file, rename it, fsync the file",
        w_rename,
    ),
    (
        "link_unlink_fsync",
        "link a synced file, unlink the original, fsync",
        w_link,
    ),
    (
        "mkdir_create_fsync",
        "mkdir, create a file in it, write, fsync the file",
        w_mkdir,
    ),
    (
        "overwrite_fdatasync",
        "overwrite the middle of a synced file, fdatasync",
        w_overwrite,
    ),
    (
        "truncate_extend_fsync",
        "truncate a synced file down, extend it, fsync",
        w_truncate,
    ),
    (
        "rename_dir_fsync",
        "rename a directory across parents, fsync a file inside",
        w_rename_dir,
    ),
];

fn w_create(fs: &Fs, m: &mut Model) -> Result<(), String> {
    let c = Ctx::root();
    m.set("f1", Expect::Absent);
    m.synced();
    let f = ck(fs.create(&c, ROOT, b"f1", 0o644), "create f1")?.ino;
    m.set("f1", Expect::File(Vec::new()));
    ck(fs.write(&c, f, 0, &data(1, 0, 12_000), false), "write f1")?;
    m.set("f1", Expect::File(data(1, 0, 12_000)));
    ck(fs.fsync(f, false), "fsync f1")?;
    m.synced();
    Ok(())
}

/// A synced file `name` of `len` bytes (version 0) in `dir`.
fn synced_file(
    fs: &Fs,
    m: &mut Model,
    dir: u64,
    name: &'static str,
    path: &'static str,
    len: usize,
) -> Result<u64, String> {
    let c = Ctx::root();
    let id = id_of(name).expect("a numbered name");
    let f = ck(fs.create(&c, dir, name.as_bytes(), 0o644), "create")?.ino;
    m.set(path, Expect::File(Vec::new()));
    ck(fs.write(&c, f, 0, &data(id, 0, len), false), "write")?;
    m.set(path, Expect::File(data(id, 0, len)));
    ck(fs.fsync(f, false), "fsync")?;
    m.synced();
    Ok(f)
}

fn w_rename(fs: &Fs, m: &mut Model) -> Result<(), String> {
    let c = Ctx::root();
    m.set2(("f1", Expect::Absent), ("moved1", Expect::Absent));
    let f = synced_file(fs, m, ROOT, "f1", "f1", 20_000)?;
    ck(
        fs.write(&c, f, 20_000, &data(1, 0, 28_000)[20_000..], false),
        "write f1",
    )?;
    m.set("f1", Expect::File(data(1, 0, 28_000)));
    ck(
        fs.rename(ROOT, b"f1", ROOT, b"moved1", RenameFlags::default()),
        "rename",
    )?;
    m.set2(
        ("f1", Expect::Absent),
        ("moved1", Expect::File(data(1, 0, 28_000))),
    );
    ck(fs.fsync(f, false), "fsync moved1")?;
    m.synced();
    Ok(())
}

fn w_link(fs: &Fs, m: &mut Model) -> Result<(), String> {
    m.set2(("f1", Expect::Absent), ("h1", Expect::Absent));
    let f = synced_file(fs, m, ROOT, "f1", "f1", 9_000)?;
    ck(fs.link(f, ROOT, b"h1"), "link")?;
    m.set("h1", Expect::File(data(1, 0, 9_000)));
    ck(fs.unlink(ROOT, b"f1"), "unlink f1")?;
    m.set("f1", Expect::Absent);
    ck(fs.fsync(f, false), "fsync h1")?;
    m.synced();
    Ok(())
}

fn w_mkdir(fs: &Fs, m: &mut Model) -> Result<(), String> {
    let c = Ctx::root();
    m.set2(("d", Expect::Absent), ("d/f1", Expect::Absent));
    m.synced();
    let d = ck(fs.mkdir(&c, ROOT, b"d", 0o755), "mkdir d")?.ino;
    m.set("d", Expect::Dir);
    let f = ck(fs.create(&c, d, b"f1", 0o644), "create d/f1")?.ino;
    m.set("d/f1", Expect::File(Vec::new()));
    ck(fs.write(&c, f, 0, &data(1, 0, 70_000), false), "write d/f1")?;
    m.set("d/f1", Expect::File(data(1, 0, 70_000)));
    ck(fs.fsync(f, false), "fsync d/f1")?;
    m.synced();
    Ok(())
}

fn w_overwrite(fs: &Fs, m: &mut Model) -> Result<(), String> {
    let c = Ctx::root();
    m.set("f1", Expect::Absent);
    let f = synced_file(fs, m, ROOT, "f1", "f1", 40_000)?;
    let old = data(1, 0, 40_000);
    let mut new = old.clone();
    new[12_000..28_000].copy_from_slice(&data(1, 1, 40_000)[12_000..28_000]);
    ck(
        fs.write(&c, f, 12_000, &new[12_000..28_000], false),
        "overwrite f1",
    )?;
    // In place or not, a crash before the fdatasync may show any blocks
    // of the overwrite.
    m.set("f1", Expect::Mix(old, new.clone()));
    m.set("f1", Expect::File(new));
    ck(fs.fsync(f, true), "fdatasync f1")?;
    m.synced();
    Ok(())
}

fn w_truncate(fs: &Fs, m: &mut Model) -> Result<(), String> {
    let c = Ctx::root();
    m.set("f1", Expect::Absent);
    let f = synced_file(fs, m, ROOT, "f1", "f1", 30_000)?;
    let old = data(1, 0, 30_000);
    // The truncate zeroes the rest of its last block in place before its
    // transaction commits (as ext4 does): a crash between shows the old
    // size with those bytes zero.
    let mut zeroed_tail = old.clone();
    zeroed_tail[5_000..2 * BLOCK_SIZE].fill(0);
    let size = |n| SetAttr {
        size: Some(n),
        ..SetAttr::default()
    };
    ck(fs.setattr(&c, f, &size(5_000)), "truncate f1 to 5000")?;
    m.set("f1", Expect::Mix(old.clone(), zeroed_tail));
    m.set("f1", Expect::File(old[..5_000].to_vec()));
    ck(fs.setattr(&c, f, &size(20_000)), "extend f1 to 20000")?;
    let mut ext = old[..5_000].to_vec();
    ext.resize(20_000, 0);
    m.set("f1", Expect::File(ext));
    ck(fs.fsync(f, false), "fsync f1")?;
    m.synced();
    Ok(())
}

fn w_rename_dir(fs: &Fs, m: &mut Model) -> Result<(), String> {
    let c = Ctx::root();
    for p in ["a", "b", "a/d", "a/d/f1", "b/d", "b/d/f1"] {
        m.set(p, Expect::Absent);
    }
    let a = ck(fs.mkdir(&c, ROOT, b"a", 0o755), "mkdir a")?.ino;
    m.set("a", Expect::Dir);
    let b = ck(fs.mkdir(&c, ROOT, b"b", 0o755), "mkdir b")?.ino;
    m.set("b", Expect::Dir);
    let d = ck(fs.mkdir(&c, a, b"d", 0o755), "mkdir a/d")?.ino;
    m.set("a/d", Expect::Dir);
    let f = synced_file(fs, m, d, "f1", "a/d/f1", 15_000)?;
    ck(
        fs.rename(a, b"d", b, b"d", RenameFlags::default()),
        "rename a/d b/d",
    )?;
    let mut s = m.states.last().cloned().unwrap_or_default();
    s.insert("a/d", Expect::Absent);
    s.insert("a/d/f1", Expect::Absent);
    s.insert("b/d", Expect::Dir);
    s.insert("b/d/f1", Expect::File(data(1, 0, 15_000)));
    m.states.push(s);
    ck(fs.fsync(f, false), "fsync b/d/f1")?;
    m.synced();
    Ok(())
}

fn dev_on(b: Arc<dyn BlockBackend>) -> Result<Dev, String> {
    ck(
        Dev::from_backend(
            b,
            DevOptions {
                read_only: false,
                verify: true,
                workers: 0,
                queue_depth: 0,
            },
        ),
        "open the device",
    )
}

fn opts() -> MountOptions {
    MountOptions {
        // No background commits: the workload decides every commit.
        commit_interval_secs: 3600,
        ..MountOptions::default()
    }
}

/// A forced read-only fsck in-process: problems found, what it said.
fn check_quietly(dev: &Dev) -> Result<(u64, Vec<String>), String> {
    let o = FsckOptions {
        mode: Mode::No,
        force: true,
        verbose: false,
        scrub: false,
        backup: None,
    };
    let mut said = Vec::new();
    let r = ck(fsck(dev, &o, &mut |m| said.push(m.to_string())), "fsck")?;
    Ok((r.problems, said))
}

fn lookup_path(fs: &Fs, path: &str) -> Option<u64> {
    let mut ino = ROOT;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = fs.lookup(ino, part.as_bytes()).ok()?.ino;
    }
    Some(ino)
}

fn read_all(fs: &Fs, ino: u64) -> Result<Vec<u8>, String> {
    let size = ck(fs.getattr(ino), "getattr")?.size;
    ck(fs.read(&Ctx::root(), ino, 0, size as u32), "read")
}

fn found(fs: &Fs, path: &str) -> Result<Found, String> {
    let Some(ino) = lookup_path(fs, path) else {
        return Ok(Found::Absent);
    };
    Ok(match ck(fs.getattr(ino), path)?.kind {
        FileType::Directory => Found::Dir,
        FileType::Regular => Found::File(read_all(fs, ino).map_err(|e| format!("{path}: {e}"))?),
        _ => Found::Other,
    })
}

/// Every regular file's bytes are zeros or its own (any version).
fn check_tree(fs: &Fs, dir: u64, path: &str, errs: &mut Vec<String>) {
    let mut cookie = 0;
    loop {
        let batch = match fs.readdir(dir, cookie, 64) {
            Ok(b) => b,
            Err(e) => return errs.push(format!("readdir {path}/: {e}")),
        };
        let Some(last) = batch.last() else { break };
        cookie = last.cookie;
        for e in batch {
            let name = String::from_utf8_lossy(&e.name).to_string();
            if name == "." || name == ".." {
                continue;
            }
            let p = format!("{path}/{name}");
            match e.kind {
                FileType::Directory => check_tree(fs, e.ino, &p, errs),
                FileType::Regular => match (read_all(fs, e.ino), id_of(&name)) {
                    (Err(err), _) => errs.push(format!("{p}: {err}")),
                    (Ok(d), Some(id)) => {
                        let own = |o: usize, b: u8| (0..VERSIONS).any(|v| b == byte(id, v, o));
                        if let Some(o) = d
                            .iter()
                            .enumerate()
                            .position(|(o, &b)| b != 0 && !own(o, b))
                        {
                            errs.push(format!("{p}: foreign byte at {o}"));
                        }
                    }
                    (Ok(_), None) => errs.push(format!("{p}: a file the workload never made")),
                },
                _ => {}
            }
        }
    }
}

/// Checks one crash state; what was wrong.
fn check_state(
    lw: &LogWritesBackend,
    model: &Model,
    st: CrashState,
) -> Result<Vec<String>, String> {
    let target = ck(crash_device(lw, st, SIZE), "replay")?;
    let mut errs = Vec::new();
    {
        let dev = dev_on(target.clone())?;
        let (problems, said) = check_quietly(&dev)?;
        if problems != 0 {
            errs.push(format!("fsck -n: {problems} problems: {}", said.join("; ")));
        }
        ck(dev.close(), "close")?;
    }
    match Fs::mount_dev(dev_on(target.clone())?, &opts()) {
        Err(e) => errs.push(format!("mount: {e}")),
        Ok(fs) => {
            // A lost-write state holds the writes after its flush point up
            // to the next flush (less one, never a FUA write): it is a
            // crash at the end of that run, where fsyncs that returned
            // inside it (their FUA commits kept) still hold.
            let at = match st {
                (n, None) => n,
                (fp, Some(_)) => fp + writes_after(lw, fp),
            };
            let allowed = model.allowed(at);
            let paths: Vec<&'static str> = allowed
                .iter()
                .flat_map(|s| s.keys().copied())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut got = BTreeMap::new();
            for p in &paths {
                match found(&fs, p) {
                    Ok(f) => {
                        got.insert(*p, f);
                    }
                    Err(e) => errs.push(e),
                }
            }
            if got.len() == paths.len()
                && !allowed
                    .iter()
                    .any(|s| s.iter().all(|(p, e)| e.allows(&got[p])))
            {
                // Name what no allowed state has, path by path.
                let mut what = Vec::new();
                for p in &paths {
                    if !allowed
                        .iter()
                        .any(|s| s.get(p).is_none_or(|e| e.allows(&got[p])))
                    {
                        what.push(format!(
                            "{p} is {}{}",
                            describe(&got[p]),
                            versions(p, &got[p])
                        ));
                    }
                }
                if what.is_empty() {
                    what.push(
                        got.iter()
                            .map(|(p, f)| format!("{p} is {}", describe(f)))
                            .collect::<Vec<_>>()
                            .join(", "),
                    );
                }
                errs.push(format!(
                    "not what the last fsync promised ({} states allowed): {}",
                    allowed.len(),
                    what.join("; ")
                ));
            }
            check_tree(&fs, ROOT, "", &mut errs);
            if let Err(e) = fs.shutdown() {
                errs.push(format!("unmount: {e}"));
            }
        }
    }
    let dev = dev_on(target)?;
    let (problems, said) = check_quietly(&dev)?;
    if problems != 0 {
        errs.push(format!(
            "fsck after the mount: {problems} problems: {}",
            said.join("; ")
        ));
    }
    ck(dev.close(), "close")?;
    Ok(errs)
}

/// A workload to run (a fixed one, or a generated one with its seed).
type RunFn = dyn Fn(&Fs, &mut Model) -> Result<(), String>;

/// Runs one workload and checks its crash states: (states, failed).
fn run(name: &str, w: &RunFn, args: &Args) -> Result<(usize, usize), String> {
    let mem: Arc<dyn BlockBackend> = Arc::new(MemBackend::new(SIZE));
    ck(
        IntegrityStore::format(
            &*mem,
            ck(IntegrityProfile::new(4096, Checksum::Crc32c), "profile")?,
        ),
        "integrity format",
    )?;
    let lw = Arc::new(LogWritesBackend::new(mem));
    {
        let dev = dev_on(lw.clone())?;
        ck(
            make_fs(
                &dev,
                &MkfsParams::new([3; 16], 11, Timespec { sec: 1, nsec: 0 }),
            ),
            "mkfs",
        )?;
        ck(dev.close(), "close")?;
    }
    let base = lw.mark("made");
    let mut model = Model {
        lw: lw.clone(),
        states: vec![State::new()],
        syncs: Vec::new(),
    };
    {
        let fs = ck(Fs::mount_dev(dev_on(lw.clone())?, &opts()), "mount")?;
        w(&fs, &mut model)?;
        ck(fs.shutdown(), "unmount")?;
    }
    if args.inject_bug {
        // Every state from the last fsync on: the first file's first byte
        // flipped, as if the filesystem lost it.
        let from = model.syncs.last().map_or(0, |s| s.1);
        for s in &mut model.states[from..] {
            if let Some(Expect::File(d) | Expect::Mix(d, _)) = s
                .values_mut()
                .find(|e| matches!(e, Expect::File(d) | Expect::Mix(d, _) if !d.is_empty()))
            {
                d[0] ^= 0xff;
            }
        }
    }
    let states = crash_states(&lw, base);
    let mut failed = 0;
    for &st in &states {
        let errs = check_state(&lw, &model, st)?;
        if args.verbose {
            println!(
                "{name}: state {st:?}: {}",
                if errs.is_empty() { "ok" } else { "FAILED" }
            );
        }
        if !errs.is_empty() {
            failed += 1;
            println!("{name}: state {st:?} failed: {}", errs.join(" | "));
        }
    }
    Ok((states.len(), failed))
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    if args.list {
        for (name, what, _) in WORKLOADS {
            println!("{name:24} {what}");
        }
        return ExitCode::SUCCESS;
    }
    let mut chosen: Vec<(String, Box<RunFn>)> = WORKLOADS
        .iter()
        .filter(|(n, _, _)| args.workload.as_deref().is_none_or(|w| w == *n))
        .map(|&(n, _, w)| (n.to_string(), Box::new(w) as Box<_>))
        .collect();
    for i in 0..args.random {
        let (seed, ops) = (args.seed + i, args.ops);
        chosen.push((
            format!("random_{seed}"),
            Box::new(move |fs: &Fs, m: &mut Model| random::workload(fs, m, seed, ops)),
        ));
    }
    if chosen.is_empty() {
        eprintln!(
            "biofs-crash: no workload {:?} (-l lists them)",
            args.workload.unwrap_or_default()
        );
        return ExitCode::from(2);
    }
    let start = Instant::now();
    let (mut total, mut total_failed) = (0, 0);
    for (name, w) in &chosen {
        match run(name, w.as_ref(), &args) {
            Ok((n, f)) => {
                println!("{name}: {n} crash states checked, {f} failed");
                total += n;
                total_failed += f;
            }
            Err(e) => {
                eprintln!("biofs-crash: {name}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    println!(
        "total: {} workloads, {total} crash states checked, {total_failed} failed ({:.1} s)",
        chosen.len(),
        start.elapsed().as_secs_f64()
    );
    if total_failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
