//! Queue limits: what a single request may look like on this device.
//!
//! Counterpart of `struct queue_limits` and `blk_validate_limits()`
//! (block/blk-settings.c).

use std::fmt;

use super::backend::BackendInfo;
use super::types::{PAGE_SIZE, SECTOR_SHIFT, SECTOR_SIZE};

/// Most iovecs one `preadv`/`pwritev` accepts (`IOV_MAX`).
pub const IOV_MAX: u32 = 1024;

/// The limits every request reaching the device obeys. Bios that break them
/// are split at submission; merges never build a request that breaks them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Smallest addressable unit in bytes: positions and sizes are multiples.
    pub logical_block_size: u32,
    /// The device's atomic write unit in bytes.
    pub physical_block_size: u32,
    /// Largest request, in sectors.
    pub max_sectors: u32,
    /// Most memory segments (iovecs) in one request.
    pub max_segments: u32,
    /// Largest memory segment in bytes.
    pub max_segment_size: u32,
    /// A segment never crosses an address boundary of `mask + 1` bytes.
    pub seg_boundary_mask: u64,
    /// When non-zero: inside a request, every segment but the first starts,
    /// and every segment but the last ends, on a `mask + 1` boundary.
    pub virt_boundary_mask: u64,
    /// Largest discard request, in sectors.
    pub max_discard_sectors: u32,
    /// Largest write-zeroes request, in sectors.
    pub max_write_zeroes_sectors: u32,
}

/// Why a set of limits was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid queue limits: {0}")]
pub struct LimitsError(pub String);

impl QueueLimits {
    /// Defaults for a backend: 1 MiB requests of up to 256 segments.
    pub fn for_backend(info: &BackendInfo) -> QueueLimits {
        QueueLimits {
            logical_block_size: info.logical_block_size.max(SECTOR_SIZE as u32),
            physical_block_size: info.physical_block_size.max(info.logical_block_size),
            max_sectors: 2048,
            max_segments: 256,
            max_segment_size: 1 << 20,
            seg_boundary_mask: u64::MAX,
            virt_boundary_mask: 0,
            max_discard_sectors: 1 << 22,
            max_write_zeroes_sectors: 1 << 22,
        }
    }

    /// Check the limits hang together (`blk_validate_limits()`).
    pub fn validate(&self) -> Result<(), LimitsError> {
        let err = |m: &str| Err(LimitsError(m.to_string()));
        let lbs = self.logical_block_size;
        if !lbs.is_power_of_two() || !(SECTOR_SIZE as u32..=PAGE_SIZE as u32).contains(&lbs) {
            return err("logical_block_size must be a power of two from 512 to 4096");
        }
        if self.physical_block_size < lbs || !self.physical_block_size.is_power_of_two() {
            return err("physical_block_size must be a power of two >= logical_block_size");
        }
        let max_bytes = u64::from(self.max_sectors) << SECTOR_SHIFT;
        if max_bytes < PAGE_SIZE as u64 || max_bytes % u64::from(lbs) != 0 {
            return err(
                "max_sectors must cover at least a page and be a multiple of the logical block",
            );
        }
        if self.max_sectors > (u32::MAX >> SECTOR_SHIFT) {
            return err("max_sectors must be below 4 GiB");
        }
        if self.max_segments == 0 || self.max_segments > IOV_MAX {
            return err("max_segments must be from 1 to 1024 (IOV_MAX)");
        }
        if (self.max_segment_size as usize) < PAGE_SIZE {
            return err("max_segment_size must be at least a page");
        }
        if self.seg_boundary_mask < (PAGE_SIZE as u64 - 1)
            || !(self.seg_boundary_mask.wrapping_add(1)).is_power_of_two()
                && self.seg_boundary_mask != u64::MAX
        {
            return err("seg_boundary_mask must be 2^n - 1 and at least PAGE_SIZE - 1");
        }
        if self.virt_boundary_mask != 0
            && (self.virt_boundary_mask >= PAGE_SIZE as u64
                || !(self.virt_boundary_mask + 1).is_power_of_two()
                || self.virt_boundary_mask + 1 < SECTOR_SIZE as u64)
        {
            return err("virt_boundary_mask must be 0 or 2^n - 1 between 511 and PAGE_SIZE - 1");
        }
        if self.max_discard_sectors == 0 || self.max_write_zeroes_sectors == 0 {
            return err("max_discard_sectors and max_write_zeroes_sectors must be non-zero");
        }
        Ok(())
    }

    /// Largest request in bytes.
    pub fn max_bytes(&self) -> u64 {
        u64::from(self.max_sectors) << SECTOR_SHIFT
    }

    /// True if a segment ending at `prev_end` followed by one starting at
    /// `next_start` would leave a gap the device can't take
    /// (`bvec_gap_to_prev()`).
    pub fn virt_gap(&self, prev_end: usize, next_start: usize) -> bool {
        self.virt_boundary_mask != 0
            && ((prev_end as u64 | next_start as u64) & self.virt_boundary_mask) != 0
    }

    /// Length of the first segment of `len` bytes at `addr` that obeys the
    /// segment size and boundary limits.
    pub fn segment_len(&self, addr: usize, len: usize) -> usize {
        let mut n = len.min(self.max_segment_size as usize);
        if self.seg_boundary_mask != u64::MAX {
            let to_boundary = self.seg_boundary_mask - (addr as u64 & self.seg_boundary_mask) + 1;
            n = n.min(usize::try_from(to_boundary).unwrap_or(usize::MAX));
        }
        n
    }
}

impl fmt::Display for QueueLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lbs={} pbs={} max_sectors={} max_segments={} max_segment_size={} seg_boundary={:#x} virt_boundary={:#x}",
            self.logical_block_size,
            self.physical_block_size,
            self.max_sectors,
            self.max_segments,
            self.max_segment_size,
            self.seg_boundary_mask,
            self.virt_boundary_mask
        )
    }
}
