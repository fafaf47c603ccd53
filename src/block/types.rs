//! Units, operations, flags and status codes shared by the whole block layer.
//!
//! Counterparts of `sector_t`, `enum req_op`, `REQ_*` flags and
//! `blk_status_t` (include/linux/blk_types.h).

use std::fmt;

/// log2 of the sector size: the block layer counts in 512-byte sectors.
pub const SECTOR_SHIFT: u32 = 9;
/// Size of one sector in bytes.
pub const SECTOR_SIZE: usize = 1 << SECTOR_SHIFT;
/// log2 of the page size used for bio segments and buffers.
pub const PAGE_SHIFT: u32 = 12;
/// Size of one page in bytes.
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;

/// A position on a device, in 512-byte sectors. A *count* of sectors is a
/// plain integer; only positions carry this type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sector(pub u64);

impl Sector {
    /// The byte offset of this sector.
    pub fn to_bytes(self) -> u64 {
        self.0 << SECTOR_SHIFT
    }

    /// The sector containing byte offset `bytes` (rounded down).
    pub fn from_bytes(bytes: u64) -> Sector {
        Sector(bytes >> SECTOR_SHIFT)
    }

    /// This position advanced by `sectors`; `None` on overflow.
    pub fn checked_add(self, sectors: u64) -> Option<Sector> {
        self.0.checked_add(sectors).map(Sector)
    }
}

impl fmt::Display for Sector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sector {}", self.0)
    }
}

/// The operation a bio performs. Counterpart of `enum req_op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReqOp {
    Read,
    Write,
    /// Make every write that completed before this one durable.
    Flush,
    /// The range's contents become undefined (reads as zeroes on an image file).
    Discard,
    /// The range reads back as zeroes.
    WriteZeroes,
}

impl ReqOp {
    /// True for operations that move data through the bio's pages.
    pub fn has_data(self) -> bool {
        matches!(self, ReqOp::Read | ReqOp::Write)
    }

    /// True for operations that change the device (`op_is_write()`).
    pub fn is_write(self) -> bool {
        !matches!(self, ReqOp::Read)
    }
}

/// Request flags, a bit set. Counterpart of the `REQ_*` modifier bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReqFlags(u8);

impl ReqFlags {
    pub const NONE: ReqFlags = ReqFlags(0);
    /// Forced unit access: the data is durable when the bio completes.
    pub const FUA: ReqFlags = ReqFlags(1 << 0);
    /// Flush the device's volatile cache before this bio's data is written.
    pub const PREFLUSH: ReqFlags = ReqFlags(1 << 1);
    /// Someone waits for this bio: it is not held back in a plug (the
    /// thread's plugged requests are sent with it). Doesn't prevent merging.
    pub const SYNC: ReqFlags = ReqFlags(1 << 2);
    /// Never merge this bio with another.
    pub const NOMERGE: ReqFlags = ReqFlags(1 << 3);

    /// Flags that forbid merging (`REQ_NOMERGE_FLAGS`).
    pub const NOMERGE_FLAGS: ReqFlags = ReqFlags(Self::NOMERGE.0 | Self::PREFLUSH.0 | Self::FUA.0);

    pub fn contains(self, other: ReqFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn intersects(self, other: ReqFlags) -> bool {
        self.0 & other.0 != 0
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    /// These flags with `other`'s cleared.
    pub fn without(self, other: ReqFlags) -> ReqFlags {
        ReqFlags(self.0 & !other.0)
    }
}

impl std::ops::BitOr for ReqFlags {
    type Output = ReqFlags;
    fn bitor(self, rhs: ReqFlags) -> ReqFlags {
        ReqFlags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for ReqFlags {
    fn bitor_assign(&mut self, rhs: ReqFlags) {
        self.0 |= rhs.0;
    }
}

/// The outcome of a bio. Counterpart of `blk_status_t`: kept apart from errno,
/// converted only at the edge with [`BlkStatus::to_errno`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BlkStatus {
    Ok = 0,
    /// The device does not support the operation (`BLK_STS_NOTSUPP`).
    NotSupp,
    /// No space left (`BLK_STS_NOSPC`).
    NoSpc,
    /// An integrity tuple did not match the data (`BLK_STS_PROTECTION`).
    Protection,
    /// A resource (bio set, memory) was exhausted (`BLK_STS_RESOURCE`).
    Resource,
    /// The bio was malformed: unaligned, beyond the end of the device, or
    /// its pages were not exclusively the bio's (`BLK_STS_INVAL`).
    Invalid,
    /// The device reported an I/O error (`BLK_STS_IOERR`).
    IoErr,
    /// The medium could not be read (`BLK_STS_MEDIUM`).
    Medium,
}

impl BlkStatus {
    pub fn is_ok(self) -> bool {
        self == BlkStatus::Ok
    }

    /// The errno the kernel returns for this status (`blk_status_to_errno()`).
    pub fn to_errno(self) -> i32 {
        match self {
            BlkStatus::Ok => 0,
            BlkStatus::NotSupp => libc::EOPNOTSUPP,
            BlkStatus::NoSpc => libc::ENOSPC,
            BlkStatus::Protection => libc::EILSEQ,
            BlkStatus::Resource => libc::ENOMEM,
            BlkStatus::Invalid => libc::EINVAL,
            BlkStatus::IoErr => libc::EIO,
            BlkStatus::Medium => libc::ENODATA,
        }
    }

    /// The status for an errno reported by a backend (`errno_to_blk_status()`).
    pub fn from_errno(errno: i32) -> BlkStatus {
        match errno {
            0 => BlkStatus::Ok,
            libc::EOPNOTSUPP => BlkStatus::NotSupp,
            libc::ENOSPC => BlkStatus::NoSpc,
            libc::EILSEQ => BlkStatus::Protection,
            libc::ENOMEM => BlkStatus::Resource,
            libc::EINVAL => BlkStatus::Invalid,
            libc::ENODATA => BlkStatus::Medium,
            _ => BlkStatus::IoErr,
        }
    }

    /// The status for an `io::Error` from a backend: its errno, found on
    /// the error itself or on an error it wraps (context added on the way
    /// up keeps the original as its source), else its `ErrorKind`.
    pub fn from_io_error(err: &std::io::Error) -> BlkStatus {
        if let Some(errno) = raw_errno(err) {
            return BlkStatus::from_errno(errno);
        }
        use std::io::ErrorKind as K;
        match err.kind() {
            K::Unsupported => BlkStatus::NotSupp,
            K::StorageFull => BlkStatus::NoSpc,
            K::InvalidInput => BlkStatus::Invalid,
            K::OutOfMemory => BlkStatus::Resource,
            _ => BlkStatus::IoErr,
        }
    }
}

/// The first raw errno in `err` or the chain of errors it wraps.
fn raw_errno(err: &std::io::Error) -> Option<i32> {
    if let Some(errno) = err.raw_os_error() {
        return Some(errno);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = err.get_ref().map(|e| e as _);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(errno) = io.raw_os_error() {
                return Some(errno);
            }
        }
        source = e.source();
    }
    None
}

impl fmt::Display for BlkStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            BlkStatus::Ok => "success",
            BlkStatus::NotSupp => "operation not supported",
            BlkStatus::NoSpc => "no space left on device",
            BlkStatus::Protection => "protection error",
            BlkStatus::Resource => "resource exhausted",
            BlkStatus::Invalid => "invalid request",
            BlkStatus::IoErr => "I/O error",
            BlkStatus::Medium => "medium error",
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sector_bytes_round_trip() {
        assert_eq!(Sector(3).to_bytes(), 1536);
        assert_eq!(Sector::from_bytes(1536 + 511), Sector(3));
        assert_eq!(Sector(u64::MAX).checked_add(1), None);
    }

    #[test]
    fn nomerge_flags_cover_fua_and_preflush() {
        assert!(ReqFlags::NOMERGE_FLAGS.contains(ReqFlags::FUA));
        assert!(ReqFlags::NOMERGE_FLAGS.contains(ReqFlags::PREFLUSH));
        assert!(!ReqFlags::NOMERGE_FLAGS.intersects(ReqFlags::SYNC));
    }

    #[test]
    fn status_errno_round_trip() {
        for st in [
            BlkStatus::Ok,
            BlkStatus::NotSupp,
            BlkStatus::NoSpc,
            BlkStatus::Protection,
            BlkStatus::Resource,
            BlkStatus::Invalid,
            BlkStatus::IoErr,
            BlkStatus::Medium,
        ] {
            assert_eq!(BlkStatus::from_errno(st.to_errno()), st);
        }
        assert_eq!(BlkStatus::from_errno(libc::EBADF), BlkStatus::IoErr);
    }

    #[test]
    fn wrapped_errors_keep_their_errno() {
        #[derive(Debug)]
        struct Ctx(std::io::Error);
        impl std::fmt::Display for Ctx {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "bitmap write at 4096: {}", self.0)
            }
        }
        impl std::error::Error for Ctx {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let inner = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let wrapped = std::io::Error::new(inner.kind(), Ctx(inner));
        assert_eq!(wrapped.raw_os_error(), None);
        assert_eq!(BlkStatus::from_io_error(&wrapped), BlkStatus::NoSpc);
        let by_kind = std::io::Error::new(std::io::ErrorKind::Unsupported, "no");
        assert_eq!(BlkStatus::from_io_error(&by_kind), BlkStatus::NotSupp);
    }
}
