//! One fuzz case: damage a copy of the base image, use it through the
//! filesystem core, repair it with fsck, and check the repair.

use std::path::Path;

use biofs::block::backend::{BlockBackend, FileBackend, FileOptions};
use biofs::block::{Checksum, IntegrityProfile, IntegrityStore};
use biofs::format::dev::{Dev, DevOptions};
use biofs::format::fsck::{fsck, FsckError, FsckOptions, Mode};
use biofs::format::inode::{FileType, Timespec};
use biofs::format::mkfs::{make_fs, MkfsParams};
use biofs::fs::{Ctx, Fs, MountOptions, RenameFlags};

use super::mutate;
use super::rng::Rng;

const ROOT: u64 = 1;
/// Size of the base image.
const IMAGE_BYTES: u64 = 48 << 20;

/// How a case ended, short of a violation.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// The damaged image could not be mounted (a clear refusal, not a
    /// failure); fsck then ran as usual.
    MountRefused,
    /// fsck could not repair alone (exit 4 or 8): a person must look.
    FsckGaveUp,
}

fn opts() -> MountOptions {
    MountOptions {
        cache_bytes: 32 << 20,
        commit_interval_secs: 3600,
        ..MountOptions::default()
    }
}

/// A populated image at `path`: files (small, large, fragmented by
/// interleaved writes so they have extent trees below the inode), a
/// directory of 1500 names (several leaves), nested directories, fast and
/// slow symlinks, hard links, xattrs, a fifo.
pub fn make_base(path: &Path) -> Result<(), String> {
    let f = std::fs::File::create(path).map_err(|e| e.to_string())?;
    f.set_len(IMAGE_BYTES).map_err(|e| e.to_string())?;
    drop(f);
    let be = FileBackend::open(path, FileOptions::default()).map_err(|e| e.to_string())?;
    let be: std::sync::Arc<dyn BlockBackend> = std::sync::Arc::new(be);
    IntegrityStore::format(
        &*be,
        IntegrityProfile::new(4096, Checksum::Crc32c).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let dev = Dev::from_backend(be, dev_opts()).map_err(|e| e.to_string())?;
    make_fs(
        &dev,
        &MkfsParams::new([9; 16], 3, Timespec { sec: 1, nsec: 0 }),
    )
    .map_err(|e| e.to_string())?;
    dev.close().map_err(|e| e.to_string())?;
    let fs = Fs::mount(path, &opts()).map_err(|e| e.to_string())?;
    populate(&fs).map_err(|e| format!("populating: {e}"))?;
    fs.shutdown().map_err(|e| e.to_string())
}

fn dev_opts() -> DevOptions {
    DevOptions {
        read_only: false,
        verify: true,
        workers: 0,
        queue_depth: 0,
    }
}

fn populate(fs: &Fs) -> biofs::fs::FsResult<()> {
    let c = Ctx::root();
    let small = fs.create(&c, ROOT, b"small", 0o644)?.ino;
    fs.write(&c, small, 0, b"hello, fuzzer", false)?;
    let big = fs.create(&c, ROOT, b"big", 0o644)?.ino;
    fs.write(&c, big, 0, &vec![0x5a; 1 << 20], false)?;
    // Two files written in turns, a block at a time with syncs, get many
    // short extents: trees below the inode.
    let f1 = fs.create(&c, ROOT, b"frag1", 0o644)?.ino;
    let f2 = fs.create(&c, ROOT, b"frag2", 0o644)?.ino;
    for i in 0..400u64 {
        for f in [f1, f2] {
            fs.write(&c, f, i * 8192, &[i as u8; 4096], false)?;
        }
        if i % 50 == 49 {
            fs.syncfs()?;
        }
    }
    let d = fs.mkdir(&c, ROOT, b"many", 0o755)?.ino;
    for i in 0..1500 {
        let a = fs.create(&c, d, format!("name-{i:04}-padding").as_bytes(), 0o644)?;
        if i % 100 == 0 {
            fs.write(&c, a.ino, 0, format!("file {i}").as_bytes(), false)?;
        }
        fs.forget(a.ino, 1);
    }
    let sub = fs.mkdir(&c, ROOT, b"sub", 0o755)?.ino;
    let sub2 = fs.mkdir(&c, sub, b"deeper", 0o700)?.ino;
    let x = fs.create(&c, sub2, b"x", 0o600)?.ino;
    fs.write(&c, x, 0, b"deep", false)?;
    fs.link(x, sub, b"x-link")?;
    fs.symlink(&c, sub, b"fast", b"deeper/x")?;
    fs.symlink(&c, sub, b"slow", &[b'a'; 2000])?;
    fs.setxattr(x, b"user.k", b"v", 0)?;
    fs.setxattr(x, b"user.big", &[7u8; 1500], 0)?;
    fs.mknod(&c, sub, b"fifo", 0o010644, 0)?;
    fs.syncfs()
}

/// Run the case of `seed`: Ok unless a rule was broken.
/// Copy `base` to `work` and damage it as case `seed` does; the rest of
/// the case draws from the returned generator.
pub fn damage_only(base: &Path, work: &Path, seed: u64) -> Result<Rng, String> {
    std::fs::copy(base, work).map_err(|e| format!("copying the base image: {e}"))?;
    let mut rng = Rng::new(seed);
    let dev = Dev::open(work, dev_opts()).map_err(|e| e.to_string())?;
    let what = mutate::damage(&dev, &mut rng);
    eprintln!("damage: {}", what.join("; "));
    dev.close().map_err(|e| e.to_string())?;
    Ok(rng)
}

pub fn case(base: &Path, work: &Path, seed: u64) -> Result<Outcome, String> {
    let mut rng = damage_only(base, work, seed)?;
    let mut refused = false;
    match Fs::mount(work, &opts()) {
        Ok(fs) => {
            use_it(&fs, &mut rng);
            let _ = fs.shutdown();
        }
        Err(e) => {
            eprintln!("mount refused: {e}");
            refused = true;
        }
    }
    // Repair.
    let r = match run_fsck(work, Mode::Yes) {
        Ok(r) => r,
        Err((FsckError::Operational(e), _)) | Err((FsckError::NeedsManual(e), _)) => {
            eprintln!("fsck -fy gave up: {e}");
            return Ok(Outcome::FsckGaveUp);
        }
        Err((e, said)) => return Err(format!("fsck -fy: {e}: {}", said.join(" / "))),
    };
    if r.left > 0 {
        return Ok(Outcome::FsckGaveUp);
    }
    match run_fsck(work, Mode::No) {
        Ok(r2) if r2.problems == 0 => {}
        Ok(r2) => {
            return Err(format!(
                "fsck -fn after fsck -fy found {} problems (the repair is not whole)",
                r2.problems
            ))
        }
        Err((e, said)) => return Err(format!("fsck -fn after repair: {e}: {}", said.join(" / "))),
    }
    // fsck exit 0 must mean every file reads.
    let fs = Fs::mount(work, &opts()).map_err(|e| format!("mount after repair: {e}"))?;
    let checked = strict_walk(&fs);
    let _ = fs.shutdown();
    checked?;
    Ok(if refused {
        Outcome::MountRefused
    } else {
        Outcome::Passed
    })
}

type FsckRun = Result<biofs::format::fsck::FsckReport, (FsckError, Vec<String>)>;

fn run_fsck(work: &Path, mode: Mode) -> FsckRun {
    let dev = Dev::open(
        work,
        DevOptions {
            read_only: mode == Mode::No,
            ..dev_opts()
        },
    )
    .map_err(|e| (FsckError::Operational(e.to_string()), Vec::new()))?;
    let o = FsckOptions {
        mode,
        force: true,
        verbose: false,
        scrub: false,
        backup: None,
    };
    let mut said = Vec::new();
    let r = fsck(&dev, &o, &mut |m| said.push(m.to_string()));
    let _ = dev.close();
    r.map_err(|e| (e, said))
}

/// Walk, read, and change the damaged filesystem; errors are expected,
/// panics and hangs are not.
fn use_it(fs: &Fs, rng: &mut Rng) {
    let c = Ctx::root();
    let mut found = Vec::new();
    let mut dirs = vec![ROOT];
    let mut budget = 20_000;
    while let Some(d) = dirs.pop() {
        let mut cookie = 0;
        while budget > 0 {
            budget -= 1;
            let Ok(batch) = fs.readdir(d, cookie, 64) else {
                break;
            };
            let Some(last) = batch.last() else { break };
            if last.cookie <= cookie && cookie != 0 {
                break;
            }
            cookie = last.cookie;
            for e in batch.iter().filter(|e| e.name != b"." && e.name != b"..") {
                let Ok(a) = fs.lookup(d, &e.name) else {
                    continue;
                };
                match a.kind {
                    FileType::Directory if dirs.len() < 1000 => dirs.push(a.ino),
                    FileType::Symlink => {
                        let _ = fs.readlink(a.ino);
                    }
                    FileType::Regular => {
                        let _ = fs.read(&c, a.ino, 0, a.size.min(1 << 20) as u32);
                        let _ = fs.listxattr(a.ino);
                        let _ = fs.getxattr(a.ino, b"user.k");
                    }
                    _ => {}
                }
                found.push((d, e.name.clone(), a.ino));
            }
        }
    }
    // Changes.
    if let Ok(a) = fs.create(&c, ROOT, b"fuzz-new", 0o644) {
        let _ = fs.write(&c, a.ino, 0, &vec![1u8; 200_000], false);
    }
    let _ = fs.mkdir(&c, ROOT, b"fuzz-dir", 0o755);
    for _ in 0..6 {
        if found.is_empty() {
            break;
        }
        let (d, name, ino) = found[rng.below(found.len() as u64) as usize].clone();
        let _ = match rng.below(6) {
            0 => fs.unlink(d, &name),
            1 => fs.rename(d, &name, ROOT, b"fuzz-renamed", RenameFlags::default()),
            2 => fs
                .write(&c, ino, rng.below(1 << 20), b"more data", false)
                .map(|_| ()),
            3 => fs.setxattr(ino, b"user.fuzz", b"1", 0),
            4 => fs.create(&c, d, b"fuzz-child", 0o644).map(|_| ()),
            _ => fs.rmdir(d, &name),
        };
    }
    let _ = fs.syncfs();
    for (_, _, ino) in &found {
        fs.forget(*ino, 1);
    }
}

/// After a repair fsck calls clean: every name resolves, every file,
/// symlink and directory reads.
fn strict_walk(fs: &Fs) -> Result<(), String> {
    let c = Ctx::root();
    let mut dirs = vec![ROOT];
    let mut seen = std::collections::HashSet::new();
    while let Some(d) = dirs.pop() {
        if !seen.insert(d) {
            return Err(format!("directory {d} reached twice after repair"));
        }
        let mut cookie = 0;
        loop {
            let batch = fs
                .readdir(d, cookie, 128)
                .map_err(|e| format!("after a clean fsck, readdir of {d}: {e}"))?;
            let Some(last) = batch.last() else { break };
            cookie = last.cookie;
            for e in batch.iter().filter(|e| e.name != b"." && e.name != b"..") {
                let name = String::from_utf8_lossy(&e.name);
                let a = fs
                    .lookup(d, &e.name)
                    .map_err(|err| format!("after a clean fsck, lookup {name:?} in {d}: {err}"))?;
                let r = match a.kind {
                    FileType::Directory => {
                        dirs.push(a.ino);
                        Ok(())
                    }
                    FileType::Symlink => fs.readlink(a.ino).map(|_| ()),
                    FileType::Regular => {
                        let mut off = 0;
                        let mut r = Ok(());
                        while off < a.size.min(4 << 20) {
                            match fs.read(&c, a.ino, off, 1 << 20) {
                                Ok(v) if v.is_empty() => break,
                                Ok(v) => off += v.len() as u64,
                                Err(e) => {
                                    r = Err(e);
                                    break;
                                }
                            }
                        }
                        r.and_then(|()| fs.listxattr(a.ino).map(|_| ()))
                    }
                    _ => Ok(()),
                };
                fs.forget(a.ino, 1);
                r.map_err(|err| format!("after a clean fsck, {name:?} (inode {}): {err}", a.ino))?;
            }
        }
    }
    Ok(())
}
