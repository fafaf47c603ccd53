//! One conformance suite for the `BlockBackend` contract, run against every
//! backend: FileBackend with O_DIRECT on the work disk, FileBackend on tmpfs
//! (buffered fallback), MemBackend, FaultBackend with nothing armed and in
//! volatile-cache mode, LogWritesBackend, and a loop block device (root only).
//!
//! Each case is written once as a function over a [`Dev`]; the
//! `conformance!` macro instantiates every case for one factory.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

mod common;

use std::any::Any;
use std::io::{IoSlice, IoSliceMut};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;

use biofs::block::backend::{
    BlockBackend, DirectMode, FaultBackend, FileBackend, FileOptions, LogWritesBackend, MemBackend,
};
use biofs::block::Page;
use common::{assert_same, errno, pattern, read, read_all, write, AlignedBuf};

/// Size of every device under test.
const DEV_SIZE: u64 = 8 << 20;
const MIB: usize = 1 << 20;

/// A backend under test plus what keeps it alive and what it promises.
pub struct Dev {
    b: Arc<dyn BlockBackend>,
    /// A successful discard leaves zeroes (files, memory; not devices).
    discard_zeroes: bool,
    /// Discard may fail with `EOPNOTSUPP` (filesystems without hole punching).
    discard_unsupported_ok: bool,
    /// The `direct_io` value `info()` must report, where known.
    expect_direct: Option<bool>,
    /// Temp dirs, mounts, loop devices, locks: dropped after the backend.
    _guard: Box<dyn Any>,
}

impl Default for Dev {
    fn default() -> Dev {
        Dev {
            b: Arc::new(MemBackend::new(0)),
            discard_zeroes: true,
            discard_unsupported_ok: false,
            expect_direct: None,
            _guard: Box::new(()),
        }
    }
}

fn simple(b: Arc<dyn BlockBackend>) -> Option<Dev> {
    Some(Dev {
        b,
        ..Dev::default()
    })
}

// ---------------------------------------------------------------------------
// factories
// ---------------------------------------------------------------------------

fn file_in(dir: &Path, size: u64, direct: DirectMode) -> (tempfile::TempDir, FileBackend) {
    let tmp = tempfile::tempdir_in(dir).expect("temp dir");
    let path = tmp.path().join("image");
    FileBackend::create(&path, size).expect("create image");
    let opts = FileOptions {
        direct,
        read_only: false,
    };
    let b = FileBackend::open(&path, opts).expect("open image");
    (tmp, b)
}

/// O_DIRECT on the work disk (the cargo target dir lives there). `Require`
/// makes the open itself assert that O_DIRECT is accepted.
fn file_direct(size: u64) -> Option<Dev> {
    let (tmp, b) = file_in(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        size,
        DirectMode::Require,
    );
    Some(Dev {
        b: Arc::new(b),
        expect_direct: Some(true),
        _guard: Box::new(tmp),
        ..Dev::default()
    })
}

/// tmpfs in `Auto` mode. tmpfs took O_DIRECT from Linux 6.6 on, so which
/// mode the backend picks depends on the kernel: `info()` must report what
/// an O_DIRECT open there actually does, and the data must be right either way.
fn file_shm(size: u64) -> Option<Dev> {
    if !Path::new("/dev/shm").is_dir() {
        println!("skipped: /dev/shm is missing");
        return None;
    }
    let (tmp, b) = file_in(Path::new("/dev/shm"), size, DirectMode::Auto);
    let probe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(tmp.path().join("image"));
    Some(Dev {
        b: Arc::new(b),
        expect_direct: Some(probe.is_ok()),
        _guard: Box::new(tmp),
        ..Dev::default()
    })
}

/// Buffered I/O chosen explicitly, on the work disk.
fn file_buffered(size: u64) -> Option<Dev> {
    let (tmp, b) = file_in(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        size,
        DirectMode::Off,
    );
    Some(Dev {
        b: Arc::new(b),
        expect_direct: Some(false),
        _guard: Box::new(tmp),
        ..Dev::default()
    })
}

/// Unmounts a scratch mount when dropped.
struct MountGuard {
    dir: PathBuf,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let out = Command::new("umount").arg(&self.dir).output();
        if !matches!(out, Ok(ref o) if o.status.success()) {
            eprintln!("warning: could not unmount {}: {out:?}", self.dir.display());
        }
    }
}

fn is_root() -> bool {
    // /proc/self belongs to the process's effective uid.
    matches!(std::fs::metadata("/proc/self").map(|m| m.uid()), Ok(0))
}

/// ramfs refuses O_DIRECT (no direct_IO in its address space ops), so
/// `Auto` must fall back to buffered I/O there. It can't punch holes
/// either: discard is `EOPNOTSUPP`. Needs root to mount.
fn file_ramfs(size: u64) -> Option<Dev> {
    if !is_root() {
        println!("skipped: mounting ramfs needs root");
        return None;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let out = Command::new("mount")
        .args(["-t", "ramfs", "ramfs"])
        .arg(dir.path())
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        other => {
            println!("skipped: cannot mount ramfs: {other:?}");
            return None;
        }
    }
    let mount = MountGuard {
        dir: dir.path().to_path_buf(),
    };
    let path = dir.path().join("image");
    FileBackend::create(&path, size).expect("create image");
    let b = FileBackend::open(&path, FileOptions::default()).expect("open image");
    // Fields drop in order: the backend (in `b`) first, then the mount,
    // then the directory.
    Some(Dev {
        b: Arc::new(b),
        expect_direct: Some(false),
        discard_unsupported_ok: true,
        _guard: Box::new((mount, dir)),
        ..Dev::default()
    })
}

fn mem(size: u64) -> Option<Dev> {
    simple(Arc::new(MemBackend::new(size)))
}

fn fault_plain(size: u64) -> Option<Dev> {
    simple(Arc::new(FaultBackend::new(Arc::new(MemBackend::new(size)))))
}

fn fault_volatile(size: u64) -> Option<Dev> {
    let f = FaultBackend::new(Arc::new(MemBackend::new(size)));
    f.set_volatile_cache(true).expect("cache on");
    simple(Arc::new(f))
}

fn logwrites(size: u64) -> Option<Dev> {
    simple(Arc::new(LogWritesBackend::new(Arc::new(MemBackend::new(
        size,
    )))))
}

/// A loop device with `--direct-io=on` over a temp image, opened O_DIRECT.
/// Skips (prints why, returns `None`) when not root or losetup fails.
fn loopdev(size: u64) -> Option<Dev> {
    if !is_root() {
        println!("skipped: loop devices need root");
        return None;
    }
    let (dev, guard) = common::loop_device(size)?;
    let opts = FileOptions {
        direct: DirectMode::Require,
        read_only: false,
    };
    let b = FileBackend::open(&dev, opts).expect("open loop device");
    assert!(
        b.is_block_device(),
        "{} is not a block device",
        dev.display()
    );
    assert_eq!(b.info().kind, "blockdev");
    // Drop order: backend (in Dev.b) first, then the loop device, then the
    // image's directory, then the lock.
    Some(Dev {
        b: Arc::new(b),
        discard_zeroes: false,
        discard_unsupported_ok: true,
        expect_direct: Some(true),
        _guard: Box::new(guard),
    })
}

// ---------------------------------------------------------------------------
// the cases
// ---------------------------------------------------------------------------

mod cases {
    use super::*;

    pub fn info_sane(d: &Dev) {
        let i = d.b.info();
        assert_eq!(i.size_bytes, DEV_SIZE);
        let lbs = i.logical_block_size;
        assert!(
            lbs.is_power_of_two() && (512..=4096).contains(&lbs),
            "{i:?}"
        );
        assert!(i.physical_block_size.is_power_of_two(), "{i:?}");
        assert!(i.physical_block_size >= lbs, "{i:?}");
        assert_eq!(i.size_bytes % u64::from(lbs), 0);
        assert!(!i.kind.is_empty());
        if let Some(direct) = d.expect_direct {
            assert_eq!(i.direct_io, direct, "{i:?}");
        }
    }

    /// 1 MiB written as 256 page iovecs reads back through one iovec, and
    /// 1 MiB written as one iovec reads back through 256 unequal iovecs;
    /// the neighbouring blocks stay untouched.
    pub fn vectored_round_trip(d: &Dev) {
        let lbs = d.b.info().logical_block_size as usize;
        let data = pattern(1, MIB);
        let mut pages: Vec<Page> = (0..256).map(|_| Page::new()).collect();
        for (i, p) in pages.iter_mut().enumerate() {
            p.make_mut()
                .copy_from_slice(&data[i * 4096..(i + 1) * 4096]);
        }
        let iov: Vec<IoSlice<'_>> = pages.iter().map(|p| IoSlice::new(p.as_slice())).collect();
        assert_eq!(iov.len(), 256);
        let off_a = MIB as u64 + 4096;
        d.b.write_at(&iov, off_a, false).expect("256-iovec write");
        assert_same(
            &read(&*d.b, off_a, MIB).expect("read"),
            &data,
            "256-iovec write",
        );

        // One iovec out, 256 unequal iovecs in (sizes cycle 1..=4 blocks,
        // the last takes the rest).
        let data_b = pattern(2, MIB);
        let off_b = 4 * MIB as u64;
        write(&*d.b, off_b, &data_b, false).expect("1 MiB write");
        let mut buf = AlignedBuf::zeroed(MIB);
        let mut rest = buf.as_mut_slice();
        let mut iov: Vec<IoSliceMut<'_>> = Vec::new();
        for i in 0..255 {
            let (head, tail) = rest.split_at_mut(lbs * (i % 4 + 1));
            iov.push(IoSliceMut::new(head));
            rest = tail;
        }
        iov.push(IoSliceMut::new(rest));
        assert_eq!(iov.len(), 256);
        d.b.read_at(&mut iov, off_b).expect("256-iovec read");
        drop(iov);
        assert_same(buf.as_slice(), &data_b, "256-iovec read");

        // Neighbours of both transfers are still zero.
        for off in [
            off_a - lbs as u64,
            off_a + MIB as u64,
            off_b - lbs as u64,
            off_b + MIB as u64,
        ] {
            let got = read(&*d.b, off, lbs).expect("neighbour read");
            assert!(got.iter().all(|&x| x == 0), "block at {off} was touched");
        }
    }

    /// Buffers at odd memory addresses work too (the contract aligns offsets
    /// and lengths, not memory): O_DIRECT backends must bounce them.
    pub fn unaligned_memory_round_trip(d: &Dev) {
        let lbs = d.b.info().logical_block_size as usize;
        let len = 8 * lbs;
        let data = pattern(3, len);
        let mut src = vec![0u8; len + 1];
        src[1..].copy_from_slice(&data);
        let (a, b) = src[1..].split_at(3 * lbs);
        d.b.write_at(&[IoSlice::new(a), IoSlice::new(b)], 0, false)
            .expect("write from odd address");
        let mut dst = vec![0u8; len + 3];
        let (x, y) = dst[3..].split_at_mut(lbs);
        d.b.read_at(&mut [IoSliceMut::new(x), IoSliceMut::new(y)], 0)
            .expect("read into odd address");
        assert_same(&dst[3..], &data, "odd-address round trip");
    }

    /// Unaligned or out-of-range requests fail with EINVAL and change nothing.
    pub fn invalid_ranges_rejected(d: &Dev) {
        let i = d.b.info();
        let lbs = u64::from(i.logical_block_size);
        let size = i.size_bytes;
        write(&*d.b, 0, &pattern(4, size as usize), false).expect("fill");
        d.b.flush().expect("flush");
        let before = read_all(&*d.b).expect("snapshot");
        let bad: [(u64, u64); 6] = [
            (1, lbs),
            (lbs / 2, lbs),
            (0, lbs / 2),
            (size, lbs),
            (size - lbs, 2 * lbs),
            (u64::MAX - u64::MAX % lbs, 2 * lbs),
        ];
        for (off, len) in bad {
            let mut rbuf = AlignedBuf::zeroed(len as usize);
            let wbuf = AlignedBuf::from_slice(&vec![0xee; len as usize]);
            let r =
                d.b.read_at(&mut [IoSliceMut::new(rbuf.as_mut_slice())], off);
            assert_eq!(errno(r), Some(libc::EINVAL), "read {off}+{len}");
            let w = d.b.write_at(&[IoSlice::new(wbuf.as_slice())], off, false);
            assert_eq!(errno(w), Some(libc::EINVAL), "write {off}+{len}");
            let w = d.b.write_at(&[IoSlice::new(wbuf.as_slice())], off, true);
            assert_eq!(errno(w), Some(libc::EINVAL), "FUA write {off}+{len}");
            assert_eq!(
                errno(d.b.discard(off, len)),
                Some(libc::EINVAL),
                "discard {off}+{len}"
            );
            let z = d.b.write_zeroes(off, len);
            assert_eq!(errno(z), Some(libc::EINVAL), "write-zeroes {off}+{len}");
        }
        d.b.flush().expect("flush");
        assert_same(
            &read_all(&*d.b).expect("re-read"),
            &before,
            "after rejected requests",
        );
    }

    pub fn fua_write_readable(d: &Dev) {
        let lbs = d.b.info().logical_block_size as usize;
        let old = pattern(5, 16 * lbs);
        write(&*d.b, 0, &old, false).expect("write");
        let new = pattern(6, 4 * lbs);
        write(&*d.b, 2 * lbs as u64, &new, true).expect("FUA write");
        let mut want = old;
        want[2 * lbs..6 * lbs].copy_from_slice(&new);
        assert_same(
            &read(&*d.b, 0, 16 * lbs).expect("read"),
            &want,
            "after FUA write",
        );
    }

    pub fn discard_then_read(d: &Dev) {
        let len = 256 << 10;
        let data = pattern(7, len);
        let base = 2 * MIB as u64;
        write(&*d.b, base, &data, false).expect("write");
        let (hole, hole_len) = (base + 64 * 1024, 64 * 1024);
        let mut supported = true;
        match d.b.discard(hole, hole_len) {
            Ok(()) => {}
            Err(e) if d.discard_unsupported_ok && e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                supported = false;
            }
            Err(e) => panic!("discard failed: {e}"),
        }
        let got = read(&*d.b, base, len).expect("read");
        let h = (hole - base) as usize;
        let hl = hole_len as usize;
        assert_same(&got[..h], &data[..h], "before the discarded range");
        assert_same(&got[h + hl..], &data[h + hl..], "after the discarded range");
        if !supported {
            assert_same(&got, &data, "after an unsupported discard");
        } else if d.discard_zeroes {
            assert!(
                got[h..h + hl].iter().all(|&x| x == 0),
                "discarded range not zero"
            );
        }
    }

    pub fn write_zeroes_gives_zeroes(d: &Dev) {
        let lbs = d.b.info().logical_block_size as usize;
        let len = 64 * lbs;
        let data = pattern(8, len);
        write(&*d.b, 0, &data, false).expect("write");
        // A range that starts and ends off 4 KiB boundaries where lbs allows.
        let (zs, zl) = (3 * lbs, 37 * lbs);
        d.b.write_zeroes(zs as u64, zl as u64)
            .expect("write-zeroes");
        let mut want = data;
        want[zs..zs + zl].fill(0);
        assert_same(
            &read(&*d.b, 0, len).expect("read"),
            &want,
            "after write-zeroes",
        );
        // A large one too (the fallback writes it in chunks).
        write(&*d.b, MIB as u64, &pattern(9, 3 * MIB), false).expect("write");
        d.b.write_zeroes(MIB as u64, 3 * MIB as u64)
            .expect("large write-zeroes");
        let got = read(&*d.b, MIB as u64, 3 * MIB).expect("read");
        assert!(got.iter().all(|&x| x == 0), "large write-zeroes left data");
    }

    pub fn flush_succeeds(d: &Dev) {
        d.b.flush().expect("flush of a clean device");
        let data = pattern(10, 64 << 10);
        write(&*d.b, 4096, &data, false).expect("write");
        d.b.flush().expect("flush");
        assert_same(
            &read(&*d.b, 4096, data.len()).expect("read"),
            &data,
            "after flush",
        );
    }

    /// Four threads each own 1 MiB and overwrite pieces of it 32 times,
    /// one of them flushing as it goes; each region ends as its model says.
    pub fn concurrent_disjoint_writers(d: &Dev) {
        let lbs = d.b.info().logical_block_size as usize;
        let region = MIB;
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let b = Arc::clone(&d.b);
                thread::spawn(move || {
                    let mut model = vec![0u8; region];
                    let base = t * region as u64 + region as u64;
                    for it in 0..32u64 {
                        let seed = t * 1000 + it;
                        let blocks = region / lbs;
                        let start = (seed as usize * 7919) % blocks;
                        let n = 1 + (seed as usize * 31) % (blocks - start).min(64);
                        let data = pattern(seed, n * lbs);
                        write(&*b, base + (start * lbs) as u64, &data, it % 5 == 0)
                            .expect("concurrent write");
                        model[start * lbs..(start + n) * lbs].copy_from_slice(&data);
                        if t == 0 && it % 4 == 0 {
                            b.flush().expect("concurrent flush");
                        }
                    }
                    (base, model)
                })
            })
            .collect();
        for h in handles {
            let (base, model) = h.join().expect("writer thread panicked");
            let got = read(&*d.b, base, region).expect("read");
            assert_same(&got, &model, "concurrent writer region");
        }
    }

    pub fn last_block_reachable(d: &Dev) {
        let i = d.b.info();
        let lbs = u64::from(i.logical_block_size);
        let last = i.size_bytes - lbs;
        let data = pattern(11, lbs as usize);
        write(&*d.b, last, &data, true).expect("write last block");
        assert_same(
            &read(&*d.b, last, lbs as usize).expect("read"),
            &data,
            "last block",
        );
        let tail = read(&*d.b, last - 4 * lbs, 5 * lbs as usize).expect("read tail");
        assert_same(
            &tail[4 * lbs as usize..],
            &data,
            "last block via a longer read",
        );
        assert_eq!(
            errno(read(&*d.b, i.size_bytes, lbs as usize)),
            Some(libc::EINVAL)
        );
    }
}

/// Instantiates every case for one factory, in a module named `$name`.
macro_rules! conformance {
    ($name:ident, $factory:expr) => {
        mod $name {
            use super::*;
            conformance!(@cases $factory;
                info_sane, vectored_round_trip, unaligned_memory_round_trip,
                invalid_ranges_rejected, fua_write_readable, discard_then_read,
                write_zeroes_gives_zeroes, flush_succeeds, concurrent_disjoint_writers,
                last_block_reachable);
        }
    };
    (@cases $factory:expr; $($case:ident),*) => {
        $(
            #[test]
            fn $case() {
                let factory: fn(u64) -> Option<Dev> = $factory;
                if let Some(dev) = factory(DEV_SIZE) {
                    cases::$case(&dev);
                }
            }
        )*
    };
}

conformance!(file_odirect, file_direct);
conformance!(file_tmpfs_auto, file_shm);
conformance!(file_buffered_off, file_buffered);
conformance!(file_ramfs_fallback, file_ramfs);
conformance!(memory, mem);
conformance!(fault_nothing_armed, fault_plain);
conformance!(fault_volatile_cache, fault_volatile);
conformance!(log_writes, logwrites);
conformance!(loop_device, loopdev);
