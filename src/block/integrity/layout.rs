//! Where the integrity metadata lives on the device, and its header.
//!
//! See docs/integrity.md for the byte diagram. In short, from the end of the
//! device backwards: the header (last 4 KiB block), the bitmap blocks, the
//! tuple blocks; the data area is everything before, rounded down to 4 KiB.
//!
//! Counterpart of dm-integrity's superblock (`struct superblock`,
//! drivers/md/dm-integrity.c), in the redb style: every field encoded
//! explicitly little-endian, and validated before any arithmetic uses it.

use super::error::IntegrityError;
use super::profile::{Checksum, IntegrityProfile};
use crate::block::types::{PAGE_SIZE, SECTOR_SHIFT};

/// Size of every metadata block (tuple, bitmap, header).
pub const META_BLOCK: u64 = PAGE_SIZE as u64;
/// Tuples in one tuple block; the data they cover is one *region*.
pub const TUPLES_PER_BLOCK: u64 = META_BLOCK / IntegrityProfile::TUPLE_SIZE as u64;
/// Regions (bits) covered by one bitmap block.
pub const REGIONS_PER_BITMAP_BLOCK: u64 = META_BLOCK * 8;
/// Data sectors per 4 KiB block: `data_sectors` is a multiple of this.
const SECTORS_PER_BLOCK: u64 = META_BLOCK >> SECTOR_SHIFT;

/// The header's magic number.
pub const MAGIC: [u8; 8] = *b"BIOFSPI1";
/// The only on-disk format version this code reads and writes.
pub const VERSION: u32 = 1;
/// Bytes of the header covered by its CRC32C (the CRC sits right after).
const HEADER_CRC_OFFSET: usize = 72;

/// Where everything is, derived from the device size and the profile (by
/// [`layout`]) or read from a validated header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntegrityLayout {
    pub profile: IntegrityProfile,
    /// Size of the whole device in bytes.
    pub device_bytes: u64,
    /// Sectors of data the filesystem may use: `[0, data_sectors)`.
    pub data_sectors: u64,
    /// Byte offset of tuple block 0.
    pub tuple_start: u64,
    pub tuple_blocks: u64,
    /// Byte offset of bitmap block 0.
    pub bitmap_start: u64,
    pub bitmap_blocks: u64,
    /// Byte offset of the header block (the last whole 4 KiB block).
    pub header_offset: u64,
}

impl IntegrityLayout {
    /// Number of integrity intervals in the data area.
    pub fn intervals(&self) -> u64 {
        self.data_sectors / self.profile.sectors_per_interval()
    }

    /// Number of regions (= tuple blocks = bitmap bits in use).
    pub fn regions(&self) -> u64 {
        self.tuple_blocks
    }

    /// Data bytes covered by one full region.
    pub fn region_bytes(&self) -> u64 {
        TUPLES_PER_BLOCK << self.profile.interval_shift()
    }

    /// Byte offset of tuple block `block`.
    pub fn tuple_block_offset(&self, block: u64) -> u64 {
        self.tuple_start + block * META_BLOCK
    }

    /// Byte offset of bitmap block `block`.
    pub fn bitmap_block_offset(&self, block: u64) -> u64 {
        self.bitmap_start + block * META_BLOCK
    }
}

/// Tuple blocks needed for `data_blocks` 4 KiB data blocks.
fn tuple_blocks_for(data_blocks: u64, profile: &IntegrityProfile) -> u64 {
    let intervals_per_block = META_BLOCK >> profile.interval_shift();
    (data_blocks * intervals_per_block).div_ceil(TUPLES_PER_BLOCK)
}

/// Total 4 KiB blocks needed for `data_blocks` of data plus all metadata.
fn blocks_needed(data_blocks: u64, profile: &IntegrityProfile) -> u64 {
    let tuples = tuple_blocks_for(data_blocks, profile);
    data_blocks + tuples + tuples.div_ceil(REGIONS_PER_BITMAP_BLOCK) + 1
}

/// The layout for a device of `device_bytes`: the largest data area (a
/// multiple of 8 sectors) such that its tuples, bitmap and header fit.
///
/// Fails with [`IntegrityError::DeviceTooSmall`] when not even one 4 KiB data
/// block fits (the minimum is 4 blocks: data, tuples, bitmap, header).
pub fn layout(
    device_bytes: u64,
    profile: &IntegrityProfile,
) -> Result<IntegrityLayout, IntegrityError> {
    let total = device_bytes / META_BLOCK;
    let min_blocks = blocks_needed(1, profile);
    if total < min_blocks {
        return Err(IntegrityError::DeviceTooSmall {
            device_bytes,
            min_bytes: min_blocks * META_BLOCK,
        });
    }
    // blocks_needed is monotone in data_blocks; binary search the largest
    // data_blocks with blocks_needed <= total. Invariant: lo fits, hi doesn't.
    let (mut lo, mut hi) = (1u64, total);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if blocks_needed(mid, profile) <= total {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let tuple_blocks = tuple_blocks_for(lo, profile);
    let bitmap_blocks = tuple_blocks.div_ceil(REGIONS_PER_BITMAP_BLOCK);
    let header_offset = (total - 1) * META_BLOCK;
    let bitmap_start = header_offset - bitmap_blocks * META_BLOCK;
    Ok(IntegrityLayout {
        profile: *profile,
        device_bytes,
        data_sectors: lo * SECTORS_PER_BLOCK,
        tuple_start: bitmap_start - tuple_blocks * META_BLOCK,
        tuple_blocks,
        bitmap_start,
        bitmap_blocks,
        header_offset,
    })
}

/// Byte offset of the header on a device of `device_bytes`, if it has a block.
pub fn header_offset(device_bytes: u64) -> Option<u64> {
    (device_bytes / META_BLOCK)
        .checked_sub(1)
        .map(|b| b * META_BLOCK)
}

/// Whether the store was closed cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderState {
    /// Every tuple is durable and every bitmap bit is clear.
    Clean,
    /// The store is (or was, at a crash) open: regions with a bit set must be
    /// recomputed before use.
    InUse,
}

impl HeaderState {
    fn id(self) -> u32 {
        match self {
            HeaderState::Clean => 0,
            HeaderState::InUse => 1,
        }
    }
}

/// Encode the header block for `layout` in `state`.
pub fn encode_header(layout: &IntegrityLayout, state: HeaderState) -> [u8; META_BLOCK as usize] {
    let mut b = [0u8; META_BLOCK as usize];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&state.id().to_le_bytes());
    b[16..20].copy_from_slice(&layout.profile.interval_shift().to_le_bytes());
    b[20..24].copy_from_slice(&layout.profile.checksum().id().to_le_bytes());
    b[24..28].copy_from_slice(&(IntegrityProfile::TUPLE_SIZE as u32).to_le_bytes());
    // 28..32: flags, none defined, written as zero.
    b[32..40].copy_from_slice(&layout.data_sectors.to_le_bytes());
    b[40..48].copy_from_slice(&layout.tuple_start.to_le_bytes());
    b[48..56].copy_from_slice(&layout.tuple_blocks.to_le_bytes());
    b[56..64].copy_from_slice(&layout.bitmap_start.to_le_bytes());
    b[64..72].copy_from_slice(&layout.bitmap_blocks.to_le_bytes());
    let crc = crc32c::crc32c(&b[..HEADER_CRC_OFFSET]);
    b[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    b
}

fn le32(b: &[u8], at: usize) -> u32 {
    // Zero past the end, like format::codec::Reader.
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Decode and validate the header block read from the last block of a
/// device of `device_bytes`.
///
/// Returns `Ok(None)` when the magic does not match (no header: not an
/// error), `Err(BadHeader)` naming the first bad field when the magic matches
/// but anything else is wrong. Never panics, whatever the bytes.
pub fn decode_header(
    block: &[u8],
    device_bytes: u64,
) -> Result<Option<(IntegrityLayout, HeaderState)>, IntegrityError> {
    let Some(offset) = header_offset(device_bytes) else {
        return Ok(None);
    };
    let Some(block) = block.first_chunk::<{ META_BLOCK as usize }>() else {
        return Ok(None);
    };
    if block[0..8] != MAGIC {
        return Ok(None);
    }
    let bad = |field: &'static str, reason: String| IntegrityError::BadHeader {
        offset,
        field,
        reason,
    };
    let stored_crc = le32(block, HEADER_CRC_OFFSET);
    let crc = crc32c::crc32c(&block[..HEADER_CRC_OFFSET]);
    if stored_crc != crc {
        return Err(bad(
            "checksum",
            format!("stored {stored_crc:#010x}, computed {crc:#010x}"),
        ));
    }
    let version = le32(block, 8);
    if version != VERSION {
        return Err(bad(
            "version",
            format!("{version}, this build reads {VERSION}"),
        ));
    }
    let state = match le32(block, 12) {
        0 => HeaderState::Clean,
        1 => HeaderState::InUse,
        s => {
            return Err(bad(
                "state",
                format!("{s} is neither 0 (clean) nor 1 (in use)"),
            ))
        }
    };
    let shift = le32(block, 16);
    let checksum_id = le32(block, 20);
    let checksum = Checksum::from_id(checksum_id)
        .ok_or_else(|| bad("checksum_id", format!("unknown checksum {checksum_id}")))?;
    let profile = IntegrityProfile::from_shift(shift, checksum)
        .ok_or_else(|| bad("interval_shift", format!("{shift} is not 9 or 12")))?;
    let tuple_size = le32(block, 24);
    if tuple_size as usize != IntegrityProfile::TUPLE_SIZE {
        return Err(bad("tuple_size", format!("{tuple_size}, expected 8")));
    }
    let flags = le32(block, 28);
    if flags != 0 {
        return Err(bad("flags", format!("unknown flags {flags:#x}")));
    }
    let layout = validate_geometry(block, device_bytes, offset, profile, &bad)?;
    Ok(Some((layout, state)))
}

/// The part of [`decode_header`] that checks bounds and non-overlap.
fn validate_geometry(
    block: &[u8],
    device_bytes: u64,
    header_offset: u64,
    profile: IntegrityProfile,
    bad: &dyn Fn(&'static str, String) -> IntegrityError,
) -> Result<IntegrityLayout, IntegrityError> {
    let data_sectors = le64(block, 32);
    let tuple_start = le64(block, 40);
    let tuple_blocks = le64(block, 48);
    let bitmap_start = le64(block, 56);
    let bitmap_blocks = le64(block, 64);
    // Bound data_sectors by the device before multiplying with it.
    if data_sectors == 0
        || data_sectors % SECTORS_PER_BLOCK != 0
        || data_sectors > header_offset >> SECTOR_SHIFT
    {
        return Err(bad(
            "data_sectors",
            format!("{data_sectors} is zero, not a multiple of 8 or past the header at byte {header_offset}"),
        ));
    }
    let data_end = data_sectors << SECTOR_SHIFT;
    if tuple_start % META_BLOCK != 0 || tuple_start < data_end {
        return Err(bad(
            "tuple_start",
            format!("{tuple_start} is unaligned or overlaps the data (which ends at {data_end})"),
        ));
    }
    let want_tuples = tuple_blocks_for(data_sectors / SECTORS_PER_BLOCK, &profile);
    if tuple_blocks != want_tuples {
        return Err(bad(
            "tuple_blocks",
            format!("{tuple_blocks}, but {data_sectors} data sectors need {want_tuples}"),
        ));
    }
    // tuple_blocks is now bounded by the (bounded) data size: no overflow.
    let tuple_end = tuple_start.checked_add(tuple_blocks * META_BLOCK);
    if bitmap_start % META_BLOCK != 0 || tuple_end.is_none_or(|end| bitmap_start < end) {
        return Err(bad(
            "bitmap_start",
            format!("{bitmap_start} is unaligned or overlaps the tuple blocks"),
        ));
    }
    let want_bitmap = tuple_blocks.div_ceil(REGIONS_PER_BITMAP_BLOCK);
    if bitmap_blocks != want_bitmap {
        return Err(bad(
            "bitmap_blocks",
            format!("{bitmap_blocks}, but {tuple_blocks} regions need {want_bitmap}"),
        ));
    }
    let bitmap_end = bitmap_start.checked_add(bitmap_blocks * META_BLOCK);
    if bitmap_end.is_none_or(|end| end > header_offset) {
        return Err(bad(
            "bitmap_start",
            format!("bitmap at {bitmap_start} runs into the header at {header_offset}"),
        ));
    }
    Ok(IntegrityLayout {
        profile,
        device_bytes,
        data_sectors,
        tuple_start,
        tuple_blocks,
        bitmap_start,
        bitmap_blocks,
        header_offset,
    })
}

#[cfg(test)]
#[path = "layout_tests.rs"]
mod tests;
