//! biofs-fault: the filesystem core (`biofs::fs::Fs`) over a fault-injecting
//! device (docs/testing.md, "Injected faults").
//!
//! Each scenario builds a memory device with a crc32c integrity store, makes
//! a filesystem on it, and mounts it through a [`FaultBackend`] that makes
//! chosen reads or writes fail (or flips a bit on the medium). The
//! application must see EIO, the mount must stay up, and after unmount a
//! forced fsck must find a consistent filesystem with every fsynced byte
//! intact. Each check prints an `ok:` or `FAIL:` line, each scenario a
//! `PASS NAME` or `FAIL NAME` line.
//!
//! `--block IMAGE NAME [LOGICAL]` prints the physical block holding logical
//! block LOGICAL (default 0) of the file NAME in the root directory of the
//! biofs image IMAGE (for tests that damage an image file directly).
//!
//! Exit status: 0 all passed, 1 a scenario failed, 2 usage or setup error.

// Test tooling: a panic here is a reported failure of the run, not a
// crash of the filesystem; the lib code it drives is linted for real.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test tooling, where a panic is a reported failure"
)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use biofs::block::backend::fault::FaultOps;
use biofs::block::backend::{BlockBackend, FaultBackend, MemBackend, RangeFault};
use biofs::block::{Checksum, IntegrityProfile, IntegrityStore, Sector};
use biofs::format::dev::{Dev, DevOptions};
use biofs::format::fsck::{fsck, FsckOptions, FsckReport, Mode};
use biofs::format::image::Image;
use biofs::format::inode::Timespec;
use biofs::format::mkfs::{make_fs, MkfsParams};
use biofs::fs::{Ctx, Errno, Fs, MountOptions};
use clap::Parser;

const ROOT: u64 = 1;
const BLOCK: u64 = 4096;
const DEV_SIZE: u64 = 64 << 20;

/// Filesystem scenarios over a fault-injecting device.
#[derive(Parser)]
#[command(name = "biofs-fault")]
struct Args {
    /// Run only this scenario.
    #[arg(short = 's', value_name = "NAME")]
    scenario: Option<String>,
    /// List the scenarios and exit.
    #[arg(short = 'l')]
    list: bool,
    /// Print the physical block of logical block LOGICAL (default 0) of the
    /// file NAME in the root directory of IMAGE, and exit.
    #[arg(long, num_args = 2..=3, value_names = ["IMAGE", "NAME", "LOGICAL"])]
    block: Option<Vec<String>>,
}

type Scenario = fn(&mut Report) -> Result<(), String>;

const SCENARIOS: &[(&str, &str, Scenario)] = &[
    (
        "read-errors",
        "reads of one file's blocks fail: EIO for it, the rest of the fs works",
        read_errors,
    ),
    (
        "write-errors",
        "a data write fails during writeback: fsync reports EIO, fsynced data survives",
        write_errors,
    ),
    (
        "journal-error",
        "journal writes fail: changes are refused, reads go on, remount is clean",
        journal_error,
    ),
    (
        "bit-rot",
        "a flipped bit in a data block at rest reads as EIO, never as data",
        bit_rot,
    ),
];

/// The checks of one scenario.
#[derive(Default)]
struct Report {
    failed: u64,
}

impl Report {
    fn check(&mut self, ok: bool, what: impl AsRef<str>) {
        if ok {
            println!("  ok: {}", what.as_ref());
        } else {
            println!("  FAIL: {}", what.as_ref());
            self.failed += 1;
        }
    }

    fn note(&self, what: impl AsRef<str>) {
        println!("  note: {}", what.as_ref());
    }

    /// `got` must be `Err(want)`.
    fn expect_err<T>(&mut self, got: Result<T, Errno>, want: &[Errno], what: &str) {
        match got {
            Err(e) if want.contains(&e) => self.check(true, format!("{what}: {e}")),
            Err(e) => self.check(false, format!("{what}: {e}, expected {}", names(want))),
            Ok(_) => self.check(
                false,
                format!("{what}: succeeded, expected {}", names(want)),
            ),
        }
    }

    /// `got` must be `Ok`.
    fn expect_ok<T>(&mut self, got: Result<T, Errno>, what: &str) -> Option<T> {
        match got {
            Ok(v) => {
                self.check(true, what);
                Some(v)
            }
            Err(e) => {
                self.check(false, format!("{what}: {e}"));
                None
            }
        }
    }
}

fn names(errs: &[Errno]) -> String {
    errs.iter()
        .map(|e| format!("{e}"))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// A memory device with an integrity store and a filesystem, and the fault
/// injector over it.
struct Rig {
    mem: Arc<dyn BlockBackend>,
    fault: Arc<FaultBackend>,
}

fn dev_on(b: Arc<dyn BlockBackend>) -> Result<Dev, String> {
    Dev::from_backend(
        b,
        DevOptions {
            read_only: false,
            verify: true,
            workers: 0,
            queue_depth: 0,
        },
    )
    .map_err(|e| format!("open the device: {e}"))
}

impl Rig {
    fn new() -> Result<Rig, String> {
        let mem: Arc<dyn BlockBackend> = Arc::new(MemBackend::new(DEV_SIZE));
        let profile = IntegrityProfile::new(4096, Checksum::Crc32c).map_err(|e| e.to_string())?;
        IntegrityStore::format(&*mem, profile).map_err(|e| format!("integrity: {e}"))?;
        let dev = dev_on(mem.clone())?;
        make_fs(
            &dev,
            &MkfsParams::new([7; 16], 9, Timespec { sec: 1, nsec: 0 }),
        )
        .map_err(|e| format!("mkfs: {e}"))?;
        dev.close().map_err(|e| format!("close: {e}"))?;
        let fault = Arc::new(FaultBackend::new(mem.clone()));
        Ok(Rig { mem, fault })
    }

    /// Mounts through the fault injector.
    fn mount(&self) -> Result<Fs, String> {
        let dev = dev_on(self.fault.clone() as Arc<dyn BlockBackend>)?;
        Fs::mount_dev(dev, &MountOptions::default()).map_err(|e| format!("mount: {e}"))
    }

    /// The physical blocks of `ino`'s data, in logical order, and the
    /// journal area `(start, blocks)`.
    fn layout(&self, ino: u64) -> Result<(Vec<u64>, (u64, u64)), String> {
        let dev = dev_on(self.mem.clone())?;
        let out = {
            let img = Image::open(&dev, None).map_err(|e| format!("image: {e}"))?;
            let journal = (img.sb.journal_start, img.sb.journal_blocks);
            let mut blocks = Vec::new();
            if let Some(inode) = img.inode(ino).map_err(|e| format!("inode {ino}: {e}"))? {
                for e in img.extents(ino, &inode).extents {
                    blocks.extend((0..u64::from(e.len)).map(|i| e.physical + i));
                }
            }
            (blocks, journal)
        };
        dev.close().map_err(|e| format!("close: {e}"))?;
        Ok(out)
    }

    /// A forced fsck of the medium that changes nothing: its report and
    /// what it said.
    fn fsck(&self, scrub: bool) -> Result<(FsckReport, Vec<String>), String> {
        let dev = dev_on(self.mem.clone())?;
        let opts = FsckOptions {
            mode: Mode::No,
            force: true,
            verbose: false,
            scrub,
            backup: None,
        };
        let mut said = Vec::new();
        let r = fsck(&dev, &opts, &mut |m| said.push(m.to_string()))
            .map_err(|e| format!("fsck: {e}"))?;
        dev.close().map_err(|e| format!("close: {e}"))?;
        Ok((r, said))
    }

    fn fsck_clean(&self, r: &mut Report) -> Result<(), String> {
        let (report, said) = self.fsck(false)?;
        let problems = report.problems;
        if problems != 0 {
            for s in &said {
                println!("    fsck: {s}");
            }
        }
        r.check(problems == 0, format!("fsck: {problems} problems"));
        Ok(())
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 512) as u8) ^ (i as u8))
        .collect()
}

/// Creates `name` in the root holding `data`; returns its inode.
fn put(fs: &Fs, name: &str, data: &[u8]) -> Result<u64, Errno> {
    let c = Ctx::root();
    let a = fs.create(&c, ROOT, name.as_bytes(), 0o644)?;
    fs.write(&c, a.ino, 0, data, false)?;
    Ok(a.ino)
}

/// The whole of `ino`.
fn get(fs: &Fs, ino: u64) -> Result<Vec<u8>, Errno> {
    let size = fs.getattr(ino)?.size;
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let chunk = fs.read(&Ctx::root(), ino, out.len() as u64, 1 << 20)?;
        if chunk.is_empty() {
            break;
        }
        out.extend(chunk);
    }
    Ok(out)
}

fn same(r: &mut Report, fs: &Fs, ino: u64, want: &[u8], what: &str) {
    match get(fs, ino) {
        Ok(d) => r.check(d == want, format!("{what}: {} bytes, as written", d.len())),
        Err(e) => r.check(false, format!("{what}: {e}")),
    }
}

fn or_setup<T>(x: Result<T, Errno>, what: &str) -> Result<T, String> {
    x.map_err(|e| format!("{what}: {e}"))
}

/// The sectors of physical blocks `[first, first + n)`.
fn sectors(first: u64, n: u64) -> (Sector, u64) {
    (Sector(first * (BLOCK / 512)), n * (BLOCK / 512))
}

/// (1) Reads of one file's blocks fail.
fn read_errors(r: &mut Report) -> Result<(), String> {
    let rig = Rig::new()?;
    let (da, db, dc) = (
        pattern(1, 3 * 4096),
        pattern(2, 2 * 4096 + 100),
        pattern(3, 5000),
    );
    let (a, b) = {
        let fs = rig.mount()?;
        let a = or_setup(put(&fs, "a", &da), "write a")?;
        let b = or_setup(put(&fs, "b", &db), "write b")?;
        or_setup(fs.syncfs(), "syncfs")?;
        or_setup(fs.shutdown(), "unmount")?;
        (a, b)
    };
    let (blocks, _) = rig.layout(a)?;
    r.check(
        blocks.len() == 3,
        format!("a has {} data blocks", blocks.len()),
    );
    let fs = rig.mount()?;
    for &p in &blocks {
        let (start, n) = sectors(p, 1);
        rig.fault
            .fail_range(RangeFault::new(start, n).ops(FaultOps::Reads));
    }
    r.expect_err(get(&fs, a), &[Errno::EIO], "read of a");
    r.expect_err(
        fs.read(&Ctx::root(), a, 4096, 100),
        &[Errno::EIO],
        "read of a's 2nd block",
    );
    same(r, &fs, b, &db, "read of b");
    let c = r.expect_ok(put(&fs, "c", &dc), "create and write c");
    if let Some(c) = c {
        r.expect_ok(fs.fsync(c, false), "fsync c");
        same(r, &fs, c, &dc, "read of c");
    }
    r.expect_err(get(&fs, a), &[Errno::EIO], "read of a again");
    r.check(!fs.is_read_only(), "still mounted read-write");
    r.expect_ok(fs.shutdown(), "unmount");
    drop(fs);
    rig.fault.clear_faults();
    rig.fsck_clean(r)?;
    let fs = rig.mount()?;
    same(r, &fs, a, &da, "a after clearing the faults");
    if let Some(c) = c {
        same(r, &fs, c, &dc, "c after remount");
    }
    r.expect_ok(fs.shutdown(), "unmount");
    Ok(())
}

/// (2) A data write fails during writeback.
fn write_errors(r: &mut Report) -> Result<(), String> {
    let rig = Rig::new()?;
    let (dk, dv, dw) = (pattern(4, 4 * 4096), pattern(5, 4 * 4096), pattern(6, 3000));
    let fs = rig.mount()?;
    let keep = or_setup(put(&fs, "keep", &dk), "write keep")?;
    or_setup(fs.fsync(keep, false), "fsync keep")?;
    let (_, (jstart, jblocks)) = rig.layout(keep)?;
    let victim = or_setup(put(&fs, "victim", &dv), "write victim")?;
    // The first write outside the superblock and the journal fails: the
    // victim's data, written back before the commit that maps it.
    let first = jstart + jblocks;
    let (start, n) = sectors(first, DEV_SIZE / BLOCK - first);
    rig.fault
        .fail_range(RangeFault::new(start, n).ops(FaultOps::Writes).once());
    r.expect_err(fs.fsync(victim, false), &[Errno::EIO], "fsync victim");
    let hits = rig.fault.counters().range_errors;
    r.check(hits == 1, format!("{hits} injected write error"));
    same(r, &fs, keep, &dk, "read of keep");
    // Does the filesystem go on taking changes after a failed writeback?
    match put(&fs, "after", &dw).and_then(|w| fs.fsync(w, false).map(|_| w)) {
        Ok(w) => {
            r.note("changes are still accepted after the failed writeback");
            same(r, &fs, w, &dw, "read of after");
        }
        Err(e) => r.note(format!(
            "changes are refused after the failed writeback ({e})"
        )),
    }
    match fs.shutdown() {
        Ok(()) => r.note("unmount: ok"),
        Err(e) => r.note(format!("unmount: {e}")),
    }
    drop(fs);
    rig.fault.clear_faults();
    let fs = rig.mount()?;
    same(r, &fs, keep, &dk, "keep after remount");
    r.expect_ok(fs.shutdown(), "unmount");
    drop(fs);
    rig.fsck_clean(r)?;
    Ok(())
}

/// (3) Journal writes fail.
fn journal_error(r: &mut Report) -> Result<(), String> {
    let rig = Rig::new()?;
    let (dk, dn) = (pattern(7, 3 * 4096 + 7), pattern(8, 2 * 4096));
    let fs = rig.mount()?;
    let keep = or_setup(put(&fs, "keep", &dk), "write keep")?;
    or_setup(fs.fsync(keep, false), "fsync keep")?;
    let (_, (jstart, jblocks)) = rig.layout(keep)?;
    let (start, n) = sectors(jstart, jblocks);
    rig.fault
        .fail_range(RangeFault::new(start, n).ops(FaultOps::Writes));
    let new = r.expect_ok(
        put(&fs, "new", &dn),
        "create and write new (not yet committed)",
    );
    match new {
        Some(new) => r.expect_err(fs.fsync(new, false), &[Errno::EIO], "fsync new"),
        None => r.expect_err(fs.syncfs(), &[Errno::EIO], "syncfs"),
    }
    r.check(
        rig.fault.counters().range_errors > 0,
        "the journal write was refused",
    );
    r.expect_err(
        fs.create(&Ctx::root(), ROOT, b"later", 0o644),
        &[Errno::EROFS, Errno::EIO],
        "create after the failed commit",
    );
    r.expect_err(
        fs.write(&Ctx::root(), keep, 0, b"x", false),
        &[Errno::EROFS, Errno::EIO],
        "write after the failed commit",
    );
    same(r, &fs, keep, &dk, "read of keep while refusing changes");
    match fs.shutdown() {
        Ok(()) => r.note("unmount: ok"),
        Err(e) => r.note(format!("unmount: {e}")),
    }
    drop(fs);
    rig.fault.clear_faults();
    let fs = rig.mount()?;
    same(r, &fs, keep, &dk, "keep after remount");
    r.expect_ok(fs.shutdown(), "unmount");
    drop(fs);
    rig.fsck_clean(r)?;
    Ok(())
}

/// (4) A bit flipped on the medium in a data block.
fn bit_rot(r: &mut Report) -> Result<(), String> {
    let rig = Rig::new()?;
    let (dv, db) = (pattern(9, 3 * 4096), pattern(10, 100));
    let (victim, by) = {
        let fs = rig.mount()?;
        let v = or_setup(put(&fs, "victim", &dv), "write victim")?;
        let b = or_setup(put(&fs, "bystander", &db), "write bystander")?;
        or_setup(fs.syncfs(), "syncfs")?;
        or_setup(fs.shutdown(), "unmount")?;
        (v, b)
    };
    let (blocks, _) = rig.layout(victim)?;
    let Some(&p) = blocks.get(1) else {
        return Err("the victim has no second block".into());
    };
    rig.fault
        .corrupt_in_place(p * BLOCK + 1234, 3)
        .map_err(|e| format!("corrupt: {e}"))?;
    let fs = rig.mount()?;
    match fs.read(&Ctx::root(), victim, 0, 4096) {
        Ok(d) => r.check(
            d == dv[..4096],
            "read of the victim's 1st block: as written",
        ),
        Err(e) => r.check(false, format!("read of the victim's 1st block: {e}")),
    }
    r.expect_err(
        fs.read(&Ctx::root(), victim, 4096, 4096),
        &[Errno::EIO],
        "read of the flipped block",
    );
    r.expect_err(get(&fs, victim), &[Errno::EIO], "read spanning it");
    same(r, &fs, by, &db, "read of bystander");
    r.expect_ok(fs.shutdown(), "unmount");
    drop(fs);
    let (report, said) = rig.fsck(true)?;
    let named = report
        .scrub_bad
        .iter()
        .any(|(ino, path, logical, _)| *ino == victim && path == "/victim" && *logical == 1);
    r.check(
        report.scrub_bad.len() == 1,
        format!("fsck --scrub: {} bad blocks", report.scrub_bad.len()),
    );
    r.check(named, "fsck --scrub names block 1 of /victim");
    r.check(
        report.exit_code() == 4,
        format!("fsck --scrub: exit status {}", report.exit_code()),
    );
    if !named {
        for s in &said {
            println!("    fsck: {s}");
        }
    }
    Ok(())
}

/// `--block IMAGE NAME [LOGICAL]`.
fn print_block(args: &[String]) -> Result<(), String> {
    let image = PathBuf::from(&args[0]);
    let name = args[1].as_bytes();
    let logical: u64 = match args.get(2) {
        Some(s) => s.parse().map_err(|_| format!("bad block number '{s}'"))?,
        None => 0,
    };
    let dev = Dev::open(
        &image,
        DevOptions {
            read_only: true,
            verify: true,
            workers: 0,
            queue_depth: 0,
        },
    )
    .map_err(|e| format!("{}: {e}", image.display()))?;
    let phys = {
        let img = Image::open(&dev, None).map_err(|e| format!("image: {e}"))?;
        let root = img
            .inode(ROOT)
            .map_err(|e| format!("root: {e}"))?
            .ok_or("no root directory")?;
        let ext = img.extents(ROOT, &root).extents;
        let (entry, _) = img
            .dir_lookup(ROOT, &ext, name)
            .map_err(|e| format!("lookup: {e}"))?;
        let entry = entry.ok_or_else(|| format!("{}: no such file", args[1]))?;
        let inode = img
            .inode(entry.ino)
            .map_err(|e| format!("inode {}: {e}", entry.ino))?
            .ok_or("the entry's inode is free")?;
        let ext = img.extents(entry.ino, &inode).extents;
        Image::map(&ext, logical).ok_or_else(|| format!("block {logical} is a hole"))?
    };
    let _ = dev.close();
    println!("{phys}");
    Ok(())
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let _ = env_logger::builder().is_test(true).try_init();
    if let Some(b) = &args.block {
        return match print_block(b) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("biofs-fault: {e}");
                ExitCode::from(2)
            }
        };
    }
    if args.list {
        for (name, what, _) in SCENARIOS {
            println!("{name:14} {what}");
        }
        return ExitCode::SUCCESS;
    }
    let chosen: Vec<_> = match &args.scenario {
        Some(s) => match SCENARIOS.iter().find(|(n, _, _)| n == s) {
            Some(x) => vec![x],
            None => {
                eprintln!("biofs-fault: no scenario '{s}' (-l lists them)");
                return ExitCode::from(2);
            }
        },
        None => SCENARIOS.iter().collect(),
    };
    let mut failed = 0;
    for (name, what, run) in chosen {
        println!("{name}: {what}");
        let mut r = Report::default();
        if let Err(e) = run(&mut r) {
            println!("  FAIL: setup: {e}");
            r.failed += 1;
        }
        if r.failed == 0 {
            println!("PASS {name}");
        } else {
            println!("FAIL {name}");
            failed += 1;
        }
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
