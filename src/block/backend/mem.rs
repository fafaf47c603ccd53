//! An in-memory block device.

use std::io::{self, IoSlice, IoSliceMut};
use std::sync::RwLock;

use super::{check_range, iov_len, BackendInfo, BlockBackend};
use crate::block::types::PAGE_SIZE;

/// Bytes whose first byte sits on a page boundary, so copies between them
/// and page buffers run at full speed (an unaligned destination made 4 KiB
/// copies ~10x slower on this machine's CPUs). Built by over-allocating a
/// `Vec`, without `unsafe`.
struct AlignedBytes {
    buf: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBytes {
    fn zeroed(len: usize) -> AlignedBytes {
        let buf = vec![0u8; len + PAGE_SIZE];
        let off = buf.as_ptr().align_offset(PAGE_SIZE).min(PAGE_SIZE);
        AlignedBytes { buf, off, len }
    }
}

#[allow(
    clippy::indexing_slicing,
    reason = "zeroed() allocates len + PAGE_SIZE bytes and off <= PAGE_SIZE"
)]
impl std::ops::Deref for AlignedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }
}

#[allow(
    clippy::indexing_slicing,
    reason = "zeroed() allocates len + PAGE_SIZE bytes and off <= PAGE_SIZE"
)]
impl std::ops::DerefMut for AlignedBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

/// A device held in memory: fast, volatile, for tests and benchmarks.
/// Writes are durable as soon as they return, so `flush` does nothing.
pub struct MemBackend {
    data: RwLock<AlignedBytes>,
    logical_block_size: u32,
}

impl MemBackend {
    /// A zero-filled device of `size_bytes` with 512-byte logical blocks.
    pub fn new(size_bytes: u64) -> MemBackend {
        MemBackend::with_block_size(size_bytes, 512)
    }

    /// A zero-filled device with the given logical block size.
    pub fn with_block_size(size_bytes: u64, logical_block_size: u32) -> MemBackend {
        let len = usize::try_from(size_bytes).unwrap_or(usize::MAX);
        MemBackend {
            data: RwLock::new(AlignedBytes::zeroed(len)),
            logical_block_size,
        }
    }

    /// A copy of the device's contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).to_vec()
    }

    /// A device holding `bytes`.
    pub fn from_bytes(bytes: Vec<u8>, logical_block_size: u32) -> MemBackend {
        MemBackend {
            data: RwLock::new({
                let mut aligned = AlignedBytes::zeroed(bytes.len());
                aligned.copy_from_slice(&bytes);
                aligned
            }),
            logical_block_size,
        }
    }

    fn fill(&self, offset: u64, len: u64, byte: u8) -> io::Result<()> {
        check_range(&self.info(), offset, len)?;
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        let start = offset as usize;
        let range = data
            .get_mut(start..start + len as usize)
            .ok_or_else(einval)?;
        range.fill(byte);
        Ok(())
    }
}

impl BlockBackend for MemBackend {
    fn info(&self) -> BackendInfo {
        let size = self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64;
        BackendInfo {
            size_bytes: size,
            logical_block_size: self.logical_block_size,
            physical_block_size: self.logical_block_size.max(4096),
            direct_io: true,
            kind: "memory",
            discard_zeroes: true,
        }
    }

    fn read_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        check_range(&self.info(), offset, iov_len(bufs))?;
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let mut pos = offset as usize;
        for buf in bufs.iter_mut() {
            let n = buf.len();
            buf.copy_from_slice(data.get(pos..pos + n).ok_or_else(einval)?);
            pos += n;
        }
        Ok(())
    }

    fn write_at(&self, bufs: &[IoSlice<'_>], offset: u64, _fua: bool) -> io::Result<()> {
        check_range(&self.info(), offset, iov_len(bufs))?;
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        let mut pos = offset as usize;
        for buf in bufs {
            let dst = data.get_mut(pos..pos + buf.len()).ok_or_else(einval)?;
            dst.copy_from_slice(buf);
            pos += buf.len();
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fill(offset, len, 0)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fill(offset, len, 0)
    }
}

/// A range past the device (`check_range` already refuses these).
fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}
