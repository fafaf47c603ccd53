//! Helpers shared by the backend test suites.
#![allow(dead_code)] // each test crate uses a different part

use std::io::{self, IoSlice, IoSliceMut};

use biofs::block::backend::BlockBackend;

/// A heap buffer whose usable part starts on a 4 KiB boundary, so any
/// sector-aligned slice of it is a valid `O_DIRECT` buffer. Built by
/// over-allocating a `Vec`, no `unsafe` needed.
pub struct AlignedBuf {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn zeroed(len: usize) -> AlignedBuf {
        let v = vec![0u8; len + 4096];
        let off = v.as_ptr().align_offset(4096);
        AlignedBuf { v, off, len }
    }

    pub fn from_slice(data: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(data.len());
        b.as_mut_slice().copy_from_slice(data);
        b
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.v[self.off..self.off + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.len]
    }
}

/// Deterministic pseudo-random bytes: `len` bytes for `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes `data` at `offset` from an aligned buffer, as one iovec.
pub fn write(b: &dyn BlockBackend, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
    let buf = AlignedBuf::from_slice(data);
    b.write_at(&[IoSlice::new(buf.as_slice())], offset, fua)
}

/// Reads `len` bytes at `offset` into an aligned buffer.
pub fn read(b: &dyn BlockBackend, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = AlignedBuf::zeroed(len);
    b.read_at(&mut [IoSliceMut::new(buf.as_mut_slice())], offset)?;
    Ok(buf.as_slice().to_vec())
}

/// The whole device, read in 1 MiB pieces.
pub fn read_all(b: &dyn BlockBackend) -> io::Result<Vec<u8>> {
    let size = b.info().size_bytes;
    let mut out = Vec::with_capacity(size as usize);
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(1 << 20);
        out.extend(read(b, pos, n as usize)?);
        pos += n;
    }
    Ok(out)
}

/// The errno of a result, for assertions.
pub fn errno<T>(r: io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// Index and bytes of the first difference, for readable assertion failures.
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Asserts two device images are equal, reporting the first differing byte.
#[track_caller]
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if let Some(i) = first_diff(got, want) {
        panic!(
            "{what}: images differ at byte {i} (sector {}): got {:?}, want {:?} (lengths {} / {})",
            i / 512,
            got.get(i),
            want.get(i),
            got.len(),
            want.len()
        );
    }
}

/// A loop device over a fresh sparse image, with the image and the device
/// removed when the guard drops (whatever the test did).
pub struct LoopDevice {
    dev: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let out = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.dev)
            .output();
        if !matches!(out, Ok(ref o) if o.status.success()) {
            eprintln!("warning: could not detach {}: {out:?}", self.dev.display());
        }
    }
}

/// Loop devices are set up one at a time.
static LOOP_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Attach a loop device (`--direct-io=on`) over a new image of `size`
/// bytes. Skips (prints why, returns `None`) when not root or losetup fails.
pub fn loop_device(size: u64) -> Option<(std::path::PathBuf, LoopDevice)> {
    if !matches!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("procfs")),
        0
    ) {
        println!("skipped: loop devices need root");
        return None;
    }
    let lock = LOOP_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let image = dir.path().join("loop.img");
    biofs::block::backend::FileBackend::create(&image, size).expect("create image");
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show", "--direct-io=on"])
        .arg(&image)
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            println!(
                "skipped: losetup failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            println!("skipped: losetup unavailable: {e}");
            return None;
        }
    };
    let dev = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Some((
        dev.clone(),
        LoopDevice {
            dev,
            _dir: dir,
            _lock: lock,
        },
    ))
}

mod engine;
#[allow(unused_imports)] // only the engine tests use these
pub use engine::*;

#[allow(dead_code)] // only the fsck tests use it
pub mod fsimage;

#[allow(dead_code)] // each fuzzer uses part of it
pub mod rng;

#[allow(dead_code)] // only the mount tests use it
pub mod mount;

#[allow(dead_code)] // only the mount tests use it
pub mod posix;

#[allow(dead_code)] // only the mount tests use it
pub mod check;
