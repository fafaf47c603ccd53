//! Translations between FUSE's request and reply values and the core's
//! types: attributes and times, names, and the flag sets of open, rename,
//! fallocate and lseek. Pure functions, so each is tested on its own.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, INodeNo, TimeOrNow};

use super::errno::own;
use crate::format::inode::{FileType, Timespec};
use crate::fs::{Attr, FallocMode, RenameFlags, SeekWhence, TimeSet};

/// The longest name a directory entry may have (`NAME_MAX`). FUSE passes
/// names of up to 1024 bytes; the adapter answers longer ones itself.
pub const NAME_MAX: usize = 255;

/// The bytes of a name from a request, `ENAMETOOLONG` above [`NAME_MAX`].
pub fn name(name: &OsStr) -> Result<&[u8], fuser::Errno> {
    let b = name.as_bytes();
    if b.len() > NAME_MAX {
        return Err(own(libc::ENAMETOOLONG));
    }
    Ok(b)
}

/// A core time as a `SystemTime` (times before 1970 included); one the
/// platform can't represent becomes the epoch.
pub fn system_time(t: Timespec) -> SystemTime {
    let nsec = Duration::from_nanos(u64::from(t.nsec.min(999_999_999)));
    let base = if t.sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(t.sec.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(t.sec.unsigned_abs()))
    };
    base.and_then(|b| b.checked_add(nsec)).unwrap_or(UNIX_EPOCH)
}

/// A `SystemTime` as a core time (seconds saturate at the ends of `i64`).
pub fn timespec(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec {
            sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            // `d` before the epoch: -d = -(s + n) = -(s + 1) + (1e9 - n) ns.
            let d = e.duration();
            let s = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() == 0 {
                Timespec { sec: -s, nsec: 0 }
            } else {
                Timespec {
                    sec: (-s).saturating_sub(1),
                    nsec: 1_000_000_000 - d.subsec_nanos(),
                }
            }
        }
    }
}

/// A time from a setattr request. fuser 0.18 builds a time before 1970,
/// (-s, n) on the wire, as the epoch minus (s + n ns), where it is the
/// epoch minus s plus n ns (`system_time_from_time()`, src/time.rs: "TODO:
/// 1_000_000_000 - nsec"): this reads it back as the kernel sent it. Its
/// replies convert correctly ([`system_time`] and fuser's reverse agree).
pub fn request_timespec(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(_) => timespec(t),
        Err(e) => {
            let d = e.duration();
            Timespec {
                sec: -i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nsec: d.subsec_nanos(),
            }
        }
    }
}

/// A `utimensat` time of a setattr.
pub fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(request_timespec(t)),
    }
}

pub fn file_type(kind: FileType) -> fuser::FileType {
    match kind {
        FileType::Regular => fuser::FileType::RegularFile,
        FileType::Directory => fuser::FileType::Directory,
        FileType::Symlink => fuser::FileType::Symlink,
        FileType::CharDev => fuser::FileType::CharDevice,
        FileType::BlockDev => fuser::FileType::BlockDevice,
        FileType::Fifo => fuser::FileType::NamedPipe,
        FileType::Socket => fuser::FileType::Socket,
    }
}

/// The core's attributes as FUSE's.
pub fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: system_time(a.crtime),
        kind: file_type(a.kind),
        perm: a.perm & 0o7777,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// Attributes for the "." and ".." entries of a readdirplus: the kernel
/// takes only their inode number and type (`fuse_direntplus_link()` skips
/// them), so no lookup is made or counted for them.
pub fn dot_attr(ino: u64, kind: FileType) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: file_type(kind),
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

/// The attributes of a negative entry: only its node id, 0, counts.
pub fn negative_attr() -> FileAttr {
    dot_attr(0, FileType::Regular)
}

/// Is `name` "." or ".."?
pub fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

/// What an open file handle remembers of its open flags: the adapter keeps
/// no table of handles, the handle's value is these bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFh {
    pub append: bool,
    /// `O_SYNC`: every write is followed by an fsync.
    pub sync: bool,
    /// `O_DSYNC` (without `O_SYNC`): every write is followed by an fdatasync.
    pub dsync: bool,
}

const FH_APPEND: u64 = 1;
const FH_SYNC: u64 = 2;
const FH_DSYNC: u64 = 4;

impl OpenFh {
    /// From `open(2)` flags (`O_SYNC` contains the `O_DSYNC` bit).
    pub fn from_flags(flags: i32) -> OpenFh {
        let sync = flags & libc::O_SYNC == libc::O_SYNC;
        OpenFh {
            append: flags & libc::O_APPEND != 0,
            sync,
            dsync: !sync && flags & libc::O_DSYNC != 0,
        }
    }

    /// The handle's value.
    pub fn to_fh(self) -> u64 {
        (if self.append { FH_APPEND } else { 0 })
            | (if self.sync { FH_SYNC } else { 0 })
            | (if self.dsync { FH_DSYNC } else { 0 })
    }

    /// Back from a handle's value (unknown bits are ignored).
    pub fn from_fh(fh: u64) -> OpenFh {
        OpenFh {
            append: fh & FH_APPEND != 0,
            sync: fh & FH_SYNC != 0,
            dsync: fh & FH_SYNC == 0 && fh & FH_DSYNC != 0,
        }
    }

    /// Both: the handle's flags and a write's own (`RWF_SYNC` / `RWF_DSYNC`
    /// arrive as `O_SYNC` / `O_DSYNC` in the write's flags).
    pub fn union(self, other: OpenFh) -> OpenFh {
        let sync = self.sync || other.sync;
        OpenFh {
            append: self.append || other.append,
            sync,
            dsync: !sync && (self.dsync || other.dsync),
        }
    }
}

/// `renameat2` flags: `RENAME_NOREPLACE` and `RENAME_EXCHANGE`, not both;
/// anything else (`RENAME_WHITEOUT`, unknown bits) is EINVAL.
pub fn rename_flags(bits: u32) -> Result<RenameFlags, fuser::Errno> {
    let noreplace = libc::RENAME_NOREPLACE;
    let exchange = libc::RENAME_EXCHANGE;
    if bits & !(noreplace | exchange) != 0 || bits == noreplace | exchange {
        return Err(own(libc::EINVAL));
    }
    Ok(RenameFlags {
        noreplace: bits & noreplace != 0,
        exchange: bits & exchange != 0,
    })
}

/// A `fallocate(2)` mode; the modes the core lacks are EOPNOTSUPP, as a
/// filesystem without them answers.
pub fn falloc_mode(mode: i32) -> Result<FallocMode, fuser::Errno> {
    const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
    const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
    const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
    match mode {
        0 => Ok(FallocMode::Allocate),
        KEEP => Ok(FallocMode::KeepSize),
        m if m == PUNCH | KEEP => Ok(FallocMode::PunchHole),
        ZERO => Ok(FallocMode::ZeroRange { keep_size: false }),
        m if m == ZERO | KEEP => Ok(FallocMode::ZeroRange { keep_size: true }),
        _ => Err(own(libc::EOPNOTSUPP)),
    }
}

/// What an lseek asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seek {
    /// SEEK_DATA / SEEK_HOLE from this offset: the core's.
    Core(u64, SeekWhence),
    /// The answer, without asking the core (SEEK_SET).
    At(i64),
    /// SEEK_END: the file's size plus this.
    FromEnd(i64),
}

/// Sort an lseek. The kernel itself answers SEEK_SET, SEEK_CUR and
/// SEEK_END (`fuse_file_llseek()`) and sends only SEEK_DATA and SEEK_HOLE;
/// the others are answered as the kernel would, except SEEK_CUR, whose
/// file position only the kernel knows (EINVAL).
pub fn seek(offset: i64, whence: i32) -> Result<Seek, fuser::Errno> {
    match whence {
        libc::SEEK_DATA | libc::SEEK_HOLE => {
            // ENXIO before the start, as past the end (ext4 does the same).
            let off = u64::try_from(offset).map_err(|_| own(libc::ENXIO))?;
            let w = if whence == libc::SEEK_DATA {
                SeekWhence::Data
            } else {
                SeekWhence::Hole
            };
            Ok(Seek::Core(off, w))
        }
        libc::SEEK_SET if offset >= 0 => Ok(Seek::At(offset)),
        libc::SEEK_END => Ok(Seek::FromEnd(offset)),
        _ => Err(own(libc::EINVAL)),
    }
}

/// The offset SEEK_END gives: `size + offset`, EINVAL if negative,
/// EOVERFLOW past `i64`.
pub fn seek_end(size: u64, offset: i64) -> Result<i64, fuser::Errno> {
    let size = i64::try_from(size).map_err(|_| own(libc::EOVERFLOW))?;
    match size.checked_add(offset) {
        Some(r) if r >= 0 => Ok(r),
        Some(_) => Err(own(libc::EINVAL)),
        None => Err(own(libc::EOVERFLOW)),
    }
}

/// The answer to a getxattr or listxattr.
#[derive(Debug, PartialEq, Eq)]
pub enum Xattr<'a> {
    /// The value's length (the caller's buffer size was 0).
    Size(u32),
    /// The value: it fits the caller's buffer.
    Data(&'a [u8]),
}

/// The answer to a getxattr or listxattr of `value` with a buffer of
/// `size` bytes: ERANGE when it doesn't fit, E2BIG when it is longer than
/// an xattr can be (`XATTR_SIZE_MAX`).
pub fn xattr_reply(value: &[u8], size: u32) -> Result<Xattr<'_>, fuser::Errno> {
    const XATTR_SIZE_MAX: usize = 65536;
    if value.len() > XATTR_SIZE_MAX {
        return Err(own(libc::E2BIG));
    }
    let len = u32::try_from(value.len()).map_err(|_| own(libc::E2BIG))?;
    if size == 0 {
        Ok(Xattr::Size(len))
    } else if len > size {
        Err(own(libc::ERANGE))
    } else {
        Ok(Xattr::Data(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_longer_than_name_max_are_enametoolong() {
        let ok = "a".repeat(255);
        assert_eq!(name(OsStr::new(&ok)).map(<[u8]>::len), Ok(255));
        let long = "a".repeat(256);
        assert_eq!(
            name(OsStr::new(&long)).map_err(fuser::Errno::code),
            Err(libc::ENAMETOOLONG)
        );
        // FUSE hands names of up to 1024 bytes.
        let longest = "é".repeat(512);
        assert_eq!(
            name(OsStr::new(&longest)).map_err(fuser::Errno::code),
            Err(libc::ENAMETOOLONG)
        );
    }

    #[test]
    fn times_round_trip_both_sides_of_the_epoch() {
        for t in [
            Timespec { sec: 0, nsec: 0 },
            Timespec {
                sec: 1_700_000_000,
                nsec: 123_456_789,
            },
            Timespec { sec: -1, nsec: 0 },
            Timespec {
                sec: -1,
                nsec: 999_999_999,
            },
            Timespec {
                sec: -86_400 * 365,
                nsec: 1,
            },
            Timespec {
                sec: 1 << 40,
                nsec: 999_999_999,
            },
        ] {
            assert_eq!(timespec(system_time(t)), t, "{t:?}");
        }
        // 0.5 s before the epoch is -1 s + 0.5 s.
        let half = UNIX_EPOCH - Duration::from_millis(500);
        assert_eq!(
            timespec(half),
            Timespec {
                sec: -1,
                nsec: 500_000_000
            }
        );
        // An out-of-range nanosecond count does not panic.
        let _ = system_time(Timespec {
            sec: i64::MIN,
            nsec: u32::MAX,
        });
    }

    /// What fuser 0.18 makes of (sec, nsec) from the kernel.
    fn fuser_request_time(sec: i64, nsec: u32) -> SystemTime {
        if sec >= 0 {
            UNIX_EPOCH + Duration::new(sec as u64, nsec)
        } else {
            UNIX_EPOCH - Duration::new(sec.unsigned_abs(), nsec)
        }
    }

    /// Found by tests/mount_attr: utimensat to -1000000 s + 5 ns came back
    /// as -1000001 s + 999999995 ns.
    #[test]
    fn request_times_before_1970_read_as_the_kernel_sent_them() {
        for (sec, nsec) in [(-1_000_000, 5), (-1, 999_999_999), (-7, 0), (0, 3), (42, 1)] {
            let t = fuser_request_time(sec, nsec);
            assert_eq!(request_timespec(t), Timespec { sec, nsec }, "{sec} {nsec}");
            assert_eq!(
                time_set(TimeOrNow::SpecificTime(t)),
                TimeSet::At(Timespec { sec, nsec })
            );
        }
    }

    #[test]
    fn utime_now_is_timeset_now() {
        assert_eq!(time_set(TimeOrNow::Now), TimeSet::Now);
        let t = UNIX_EPOCH + Duration::new(5, 6);
        assert_eq!(
            time_set(TimeOrNow::SpecificTime(t)),
            TimeSet::At(Timespec { sec: 5, nsec: 6 })
        );
    }

    #[test]
    fn attr_carries_every_field() {
        let a = Attr {
            ino: 42,
            size: 10_000,
            blocks: 24,
            atime: Timespec { sec: 1, nsec: 2 },
            mtime: Timespec { sec: 3, nsec: 4 },
            ctime: Timespec { sec: 5, nsec: 6 },
            crtime: Timespec { sec: 7, nsec: 8 },
            kind: FileType::Symlink,
            perm: 0o4755,
            nlink: 3,
            uid: 1000,
            gid: 100,
            rdev: 0x0801,
            blksize: 4096,
            generation: 9,
        };
        let f = file_attr(&a);
        assert_eq!(f.ino, INodeNo(42));
        assert_eq!((f.size, f.blocks, f.nlink), (10_000, 24, 3));
        assert_eq!(f.kind, fuser::FileType::Symlink);
        assert_eq!(f.perm, 0o4755);
        assert_eq!((f.uid, f.gid, f.rdev, f.blksize), (1000, 100, 0x0801, 4096));
        assert_eq!(f.mtime, UNIX_EPOCH + Duration::new(3, 4));
        assert_eq!(f.ctime, UNIX_EPOCH + Duration::new(5, 6));
        assert_eq!(f.atime, UNIX_EPOCH + Duration::new(1, 2));
    }

    #[test]
    fn open_flags_survive_the_handle() {
        let f = OpenFh::from_flags(libc::O_WRONLY | libc::O_APPEND | libc::O_SYNC);
        assert_eq!(
            f,
            OpenFh {
                append: true,
                sync: true,
                dsync: false
            }
        );
        assert_eq!(OpenFh::from_fh(f.to_fh()), f);
        let d = OpenFh::from_flags(libc::O_RDWR | libc::O_DSYNC);
        assert_eq!(
            d,
            OpenFh {
                append: false,
                sync: false,
                dsync: true
            }
        );
        assert_eq!(OpenFh::from_fh(d.to_fh()), d);
        assert_eq!(OpenFh::from_flags(libc::O_RDWR | libc::O_TRUNC).to_fh(), 0);
        // A write's RWF_SYNC upgrades a handle opened with O_DSYNC.
        assert!(d.union(OpenFh::from_flags(libc::O_SYNC)).sync);
        assert!(!d.union(OpenFh::from_flags(libc::O_SYNC)).dsync);
    }

    #[test]
    fn rename_flags_map_and_reject() {
        assert_eq!(rename_flags(0), Ok(RenameFlags::default()));
        assert_eq!(
            rename_flags(libc::RENAME_NOREPLACE),
            Ok(RenameFlags {
                noreplace: true,
                exchange: false
            })
        );
        assert_eq!(
            rename_flags(libc::RENAME_EXCHANGE),
            Ok(RenameFlags {
                noreplace: false,
                exchange: true
            })
        );
        for bad in [
            libc::RENAME_WHITEOUT,
            libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE,
            1 << 7,
        ] {
            assert_eq!(
                rename_flags(bad).map_err(fuser::Errno::code),
                Err(libc::EINVAL)
            );
        }
    }

    #[test]
    fn fallocate_modes_map_and_reject() {
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        let punch = libc::FALLOC_FL_PUNCH_HOLE;
        let zero = libc::FALLOC_FL_ZERO_RANGE;
        assert_eq!(falloc_mode(0), Ok(FallocMode::Allocate));
        assert_eq!(falloc_mode(keep), Ok(FallocMode::KeepSize));
        assert_eq!(falloc_mode(punch | keep), Ok(FallocMode::PunchHole));
        assert_eq!(
            falloc_mode(zero),
            Ok(FallocMode::ZeroRange { keep_size: false })
        );
        assert_eq!(
            falloc_mode(zero | keep),
            Ok(FallocMode::ZeroRange { keep_size: true })
        );
        for bad in [
            punch,
            libc::FALLOC_FL_COLLAPSE_RANGE,
            libc::FALLOC_FL_INSERT_RANGE,
            libc::FALLOC_FL_UNSHARE_RANGE,
            zero | punch,
            -1,
        ] {
            assert_eq!(
                falloc_mode(bad).map_err(fuser::Errno::code),
                Err(libc::EOPNOTSUPP),
                "{bad:#x}"
            );
        }
    }

    #[test]
    fn lseek_whences() {
        assert_eq!(
            seek(4096, libc::SEEK_DATA),
            Ok(Seek::Core(4096, SeekWhence::Data))
        );
        assert_eq!(
            seek(0, libc::SEEK_HOLE),
            Ok(Seek::Core(0, SeekWhence::Hole))
        );
        assert_eq!(
            seek(-1, libc::SEEK_DATA).map_err(fuser::Errno::code),
            Err(libc::ENXIO)
        );
        assert_eq!(seek(7, libc::SEEK_SET), Ok(Seek::At(7)));
        assert_eq!(
            seek(-7, libc::SEEK_SET).map_err(fuser::Errno::code),
            Err(libc::EINVAL)
        );
        assert_eq!(seek(-3, libc::SEEK_END), Ok(Seek::FromEnd(-3)));
        assert_eq!(
            seek(0, libc::SEEK_CUR).map_err(fuser::Errno::code),
            Err(libc::EINVAL)
        );
        assert_eq!(seek(0, 99).map_err(fuser::Errno::code), Err(libc::EINVAL));
        assert_eq!(seek_end(100, -3), Ok(97));
        assert_eq!(
            seek_end(100, -101).map_err(fuser::Errno::code),
            Err(libc::EINVAL)
        );
        assert_eq!(
            seek_end(u64::MAX, 0).map_err(fuser::Errno::code),
            Err(libc::EOVERFLOW)
        );
        assert_eq!(
            seek_end(1, i64::MAX).map_err(fuser::Errno::code),
            Err(libc::EOVERFLOW)
        );
    }

    #[test]
    fn xattr_sizes() {
        let v = b"value";
        assert_eq!(xattr_reply(v, 0), Ok(Xattr::Size(5)));
        assert_eq!(xattr_reply(v, 5), Ok(Xattr::Data(&v[..])));
        assert_eq!(xattr_reply(v, 64), Ok(Xattr::Data(&v[..])));
        assert_eq!(
            xattr_reply(v, 4).map_err(fuser::Errno::code),
            Err(libc::ERANGE)
        );
        assert_eq!(xattr_reply(b"", 0), Ok(Xattr::Size(0)));
        let huge = vec![0u8; 65537];
        assert_eq!(
            xattr_reply(&huge, 0).map_err(fuser::Errno::code),
            Err(libc::E2BIG)
        );
    }
}
