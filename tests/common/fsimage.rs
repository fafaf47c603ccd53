//! Populated filesystem images for the fsck tests, and reading files back
//! through the format layer (the mounted filesystem doesn't exist yet).

use std::path::{Path, PathBuf};
use std::process::Command;

use biofs::format::builder::{Builder, ROOT};
use biofs::format::dev::{Dev, DevOptions};
use biofs::format::image::Image;
use biofs::format::inode::{FileType, InodeData, Timespec, S_IFCHR, S_IFIFO};
use biofs::format::xattr::{Namespace, Xattr};
use biofs::format::BLOCK_SIZE;

pub const MKFS: &str = env!("CARGO_BIN_EXE_mkfs-biofs");
pub const FSCK: &str = env!("CARGO_BIN_EXE_fsck-biofs");

/// Run a tool; its exit code and combined output.
pub fn run(tool: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {tool}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

pub fn fsck(img: &Path, args: &[&str]) -> (i32, String) {
    let mut a: Vec<&str> = args.to_vec();
    let p = img.to_str().expect("utf-8 path");
    a.push(p);
    run(FSCK, &a)
}

pub fn open_rw(img: &Path) -> Dev {
    Dev::open(
        img,
        DevOptions {
            read_only: false,
            verify: true,
            workers: 0,
            queue_depth: 0,
        },
    )
    .expect("open image")
}

pub fn t0() -> Timespec {
    Timespec {
        sec: 1_700_000_000,
        nsec: 5,
    }
}

/// Contents of file number `i`, `len` bytes.
pub fn content(i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| ((j as u64).wrapping_mul(31).wrapping_add(i * 7) % 251) as u8)
        .collect()
}

/// What the populated image holds (for checks after repair).
pub struct Populated {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    /// path -> expected contents, for regular files
    pub files: Vec<(String, Vec<u8>)>,
    pub big_dir_entries: usize,
}

/// A 64 MiB image with a bit of everything: small and large files, a
/// fragmented file with an extent tree below the inode, nested
/// directories, a directory of 3000 entries (a tree of depth 1), fast and
/// slow symlinks, hard links, a device node, a fifo and xattrs.
pub fn populated() -> Populated {
    populated_with(3000)
}

/// [`populated`] with `big` entries in `/bigdir`.
pub fn populated_with(big: usize) -> Populated {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("fs.img");
    let (code, out) = run(
        MKFS,
        &["-q", "--size", "64M", image.to_str().expect("path")],
    );
    assert_eq!(code, 0, "mkfs: {out}");
    let mut files = Vec::new();
    {
        let dev = open_rw(&image);
        let mut b = Builder::open(&dev, t0()).expect("builder");
        let a = content(1, 1000);
        b.create_file(ROOT, "a.txt", 0o644, &a).expect("a.txt");
        files.push(("/a.txt".to_string(), a));
        let bigf = content(2, 300 * BLOCK_SIZE + 17);
        b.create_file(ROOT, "big.bin", 0o644, &bigf)
            .expect("big.bin");
        files.push(("/big.bin".to_string(), bigf));
        let frag = b.create_fragmented(ROOT, "frag.bin", 400).expect("frag");
        let _ = frag;
        let fragc: Vec<u8> = (0..400 * BLOCK_SIZE as u64)
            .map(|i| (i % 251) as u8)
            .collect();
        files.push(("/frag.bin".to_string(), fragc));
        let d1 = b.mkdir(ROOT, "dir1", 0o755).expect("dir1");
        for i in 0..50u64 {
            let c = content(100 + i, (i as usize * 37) % 9000);
            b.create_file(d1, &format!("f{i}"), 0o600, &c).expect("f");
            files.push((format!("/dir1/f{i}"), c));
        }
        let sub = b.mkdir(d1, "sub", 0o700).expect("sub");
        let deep = content(999, 5000);
        let deep_ino = b.create_file(sub, "deep.txt", 0o644, &deep).expect("deep");
        files.push(("/dir1/sub/deep.txt".to_string(), deep.clone()));
        b.link(ROOT, "hardlink", deep_ino).expect("link");
        files.push(("/hardlink".to_string(), deep));
        let bd = b.mkdir(ROOT, "bigdir", 0o755).expect("bigdir");
        for i in 0..big as u64 {
            let c = content(5000 + i, (i % 3) as usize * 100);
            b.create_file(bd, &format!("entry-with-a-longish-name-{i:05}"), 0o644, &c)
                .expect("bigdir file");
            if i % 500 == 0 {
                files.push((format!("/bigdir/entry-with-a-longish-name-{i:05}"), c));
            }
        }
        b.symlink(ROOT, "fast", b"dir1/sub/deep.txt").expect("fast");
        b.symlink(ROOT, "slow", &[b'x'; 300]).expect("slow");
        b.mknod(ROOT, "null", S_IFCHR | 0o666, 0x0103).expect("chr");
        b.mknod(ROOT, "fifo", S_IFIFO | 0o644, 0).expect("fifo");
        let x = content(77, 10);
        let xi = b
            .create_file(ROOT, "xattrs", 0o644, &x)
            .expect("xattr file");
        files.push(("/xattrs".to_string(), x));
        b.set_xattrs(
            xi,
            vec![Xattr {
                ns: Namespace::User,
                name: b"colour".to_vec(),
                value: b"blue".to_vec(),
            }],
        )
        .expect("xattrs");
        b.finish().expect("finish");
        dev.close().expect("close");
    }
    Populated {
        dir,
        image,
        files,
        big_dir_entries: big,
    }
}

/// The inode at `path`, if it resolves.
pub fn lookup(img: &Image<'_>, path: &str) -> Option<u64> {
    let mut ino = ROOT;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let inode = img.inode(ino).ok()??;
        let ext = img.extents(ino, &inode);
        let scan = img.dir_entries(ino, &inode, &ext.extents);
        ino = scan.entries.iter().find(|e| e.name == part.as_bytes())?.ino;
    }
    Some(ino)
}

/// The contents of regular file `ino`.
pub fn read_file(img: &Image<'_>, ino: u64) -> Option<Vec<u8>> {
    let inode = img.inode(ino).ok()??;
    if inode.file_type() != FileType::Regular {
        return None;
    }
    let ext = img.extents(ino, &inode);
    let mut out = vec![0u8; inode.size as usize];
    for e in &ext.extents {
        for i in 0..u64::from(e.len) {
            let off = ((e.logical + i) as usize) * BLOCK_SIZE;
            if off >= out.len() {
                break;
            }
            let data = img.dev.read_block(e.physical + i).ok()?;
            let n = (out.len() - off).min(BLOCK_SIZE);
            out[off..off + n].copy_from_slice(&data[..n]);
        }
    }
    Some(out)
}

/// Names in directory `path`.
pub fn list(img: &Image<'_>, path: &str) -> Vec<String> {
    let Some(ino) = lookup(img, path) else {
        return Vec::new();
    };
    let Ok(Some(inode)) = img.inode(ino) else {
        return Vec::new();
    };
    let ext = img.extents(ino, &inode);
    img.dir_entries(ino, &inode, &ext.extents)
        .entries
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect()
}

/// The symlink target at `path`.
pub fn readlink(img: &Image<'_>, path: &str) -> Option<Vec<u8>> {
    let ino = lookup(img, path)?;
    let inode = img.inode(ino).ok()??;
    match &inode.data {
        InodeData::Symlink(t) => Some(t.clone()),
        _ => {
            let ext = img.extents(ino, &inode);
            let mut out = Vec::new();
            for e in &ext.extents {
                out.extend(img.dev.read_block(e.physical).ok()?);
            }
            out.truncate(inode.size as usize);
            Some(out)
        }
    }
}

/// A read-write, verifying `Dev` over any backend.
pub fn dev_on(b: std::sync::Arc<dyn biofs::block::backend::BlockBackend>) -> Dev {
    Dev::from_backend(
        b,
        DevOptions {
            read_only: false,
            verify: true,
            workers: 0,
            queue_depth: 0,
        },
    )
    .expect("open the device")
}

/// A forced read-only check in-process: (problems found, what fsck said).
pub fn check_quietly(dev: &Dev) -> (u64, Vec<String>) {
    use biofs::format::fsck::{fsck, FsckOptions, Mode};
    let opts = FsckOptions {
        mode: Mode::No,
        force: true,
        verbose: false,
        scrub: false,
        backup: None,
    };
    let mut said = Vec::new();
    let r = fsck(dev, &opts, &mut |m| said.push(m.to_string())).expect("fsck runs");
    (r.problems, said)
}

/// A memory device of `size` bytes with a crc32c integrity store, under a
/// write logger.
pub fn logged_device(size: u64) -> std::sync::Arc<biofs::block::backend::LogWritesBackend> {
    use biofs::block::backend::{BlockBackend, LogWritesBackend, MemBackend};
    use biofs::block::{Checksum, IntegrityProfile, IntegrityStore};
    let mem: std::sync::Arc<dyn BlockBackend> = std::sync::Arc::new(MemBackend::new(size));
    IntegrityStore::format(
        &*mem,
        IntegrityProfile::new(4096, Checksum::Crc32c).expect("profile"),
    )
    .expect("integrity format");
    std::sync::Arc::new(LogWritesBackend::new(mem))
}

/// Crash states of a write log from entry `base` on (see
/// [`biofs::block::backend::logwrites::crash_states`]).
pub fn crash_states(
    lw: &biofs::block::backend::LogWritesBackend,
    base: usize,
) -> Vec<(usize, Option<usize>)> {
    biofs::block::backend::logwrites::crash_states(lw, base)
}

/// A fresh memory device holding crash state `(n, drop)` of `lw`.
pub fn crash_device(
    lw: &biofs::block::backend::LogWritesBackend,
    state: (usize, Option<usize>),
    size: u64,
) -> std::sync::Arc<dyn biofs::block::backend::BlockBackend> {
    biofs::block::backend::logwrites::crash_device(lw, state, size).expect("replay")
}
