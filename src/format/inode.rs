//! Inodes: 256 bytes each, sixteen to an inode-table block.
//!
//! An inode whose bytes are all zero is free. An inode in use carries a
//! CRC32C (seeded with the UUID and its inode number) in its last 4 bytes.
//! Its 128-byte `data` area holds the root of its extent tree, or the
//! target of a fast symlink.

use super::codec::{Reader, Writer};
use super::error::{FormatError, Result};
use super::extent::{Extent, ExtentNode, INLINE_EXTENT_BYTES};
use super::{meta_csum, BLOCK_SIZE, INODE_SIZE, MAX_FILE_SIZE};

/// Bytes of the inline data area.
pub const INLINE_DATA: usize = 128;
/// Offset of the inline data area.
const DATA_OFF: usize = 112;
/// Offset of the checksum.
const CSUM_OFF: usize = INODE_SIZE - 4;

/// File-type bits of `mode`, as `S_IFMT`.
pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;

/// On disk, `flags` bit: `data` holds a symlink target, not an extent root
/// (in memory, [`InodeData::Symlink`] says so; the field never has it).
pub const FLAG_INLINE_SYMLINK: u16 = 1 << 0;
const KNOWN_FLAGS: u16 = FLAG_INLINE_SYMLINK;

/// A timestamp: seconds since the epoch and nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

impl Timespec {
    /// The current wall-clock time.
    pub fn now() -> Timespec {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timespec {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }
}

/// The file type encoded in a mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
    CharDev,
    BlockDev,
    Fifo,
    Socket,
}

impl FileType {
    /// The type of `mode`, `None` if its type bits are not a file type.
    pub fn from_mode(mode: u32) -> Option<FileType> {
        Some(match mode & S_IFMT {
            S_IFREG => FileType::Regular,
            S_IFDIR => FileType::Directory,
            S_IFLNK => FileType::Symlink,
            S_IFCHR => FileType::CharDev,
            S_IFBLK => FileType::BlockDev,
            S_IFIFO => FileType::Fifo,
            S_IFSOCK => FileType::Socket,
            _ => return None,
        })
    }

    /// The `S_IF*` bits.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::Regular => S_IFREG,
            FileType::Directory => S_IFDIR,
            FileType::Symlink => S_IFLNK,
            FileType::CharDev => S_IFCHR,
            FileType::BlockDev => S_IFBLK,
            FileType::Fifo => S_IFIFO,
            FileType::Socket => S_IFSOCK,
        }
    }

    /// The directory-entry type byte (`DT_*` of readdir).
    pub fn dirent_type(self) -> u8 {
        (self.mode_bits() >> 12) as u8
    }

    /// The type of a directory-entry type byte.
    pub fn from_dirent_type(t: u8) -> Option<FileType> {
        FileType::from_mode(u32::from(t) << 12)
    }

    /// True for types whose contents live in blocks mapped by extents.
    pub fn has_extents(self) -> bool {
        matches!(
            self,
            FileType::Regular | FileType::Directory | FileType::Symlink
        )
    }
}

/// What the inline data area holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InodeData {
    /// The root of the extent tree (regular files, directories, long symlinks).
    Extents(ExtentNode),
    /// A fast symlink's target (at most [`INLINE_DATA`] bytes).
    Symlink(Vec<u8>),
    /// Nothing (device nodes, fifos, sockets).
    None,
}

/// An inode's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub mode: u32,
    pub flags: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    /// Blocks owned (data, extent-tree and xattr blocks), in 4 KiB units.
    pub blocks: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
    pub generation: u32,
    /// Device number of a device node; parent inode of a directory.
    pub rdev_or_parent: u64,
    /// The block holding this inode's extended attributes (0: none).
    pub xattr_block: u64,
    /// Next inode on the orphan list (0: end).
    pub orphan_next: u64,
    pub data: InodeData,
}

impl Inode {
    /// A new inode of `mode` (type and permissions).
    pub fn new(mode: u32, uid: u32, gid: u32, now: Timespec) -> Inode {
        let ft = FileType::from_mode(mode);
        // A symlink starts with an empty extent map; whoever sets its
        // target makes it a fast symlink (`InodeData::Symlink` and
        // `FLAG_INLINE_SYMLINK`) if it fits.
        let data = match ft {
            Some(t) if t.has_extents() => InodeData::Extents(ExtentNode::empty_inline()),
            _ => InodeData::None,
        };
        Inode {
            mode,
            flags: 0,
            uid,
            gid,
            nlink: 1,
            size: 0,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            generation: 0,
            rdev_or_parent: 0,
            xattr_block: 0,
            orphan_next: 0,
            data,
        }
    }

    /// The file type (validated at decode).
    pub fn file_type(&self) -> FileType {
        FileType::from_mode(self.mode).unwrap_or(FileType::Regular)
    }

    /// The extent root, if the inode has one.
    pub fn extent_root(&self) -> Option<&ExtentNode> {
        match &self.data {
            InodeData::Extents(n) => Some(n),
            _ => None,
        }
    }

    /// The fields the mount relies on beyond what [`Inode::decode`] checks,
    /// against the file's extent map (`map`, sorted): a size within the
    /// format's limit, a directory's size a whole number of blocks covering
    /// its blocks, a symlink's length (1..`BLOCK_SIZE`) with its block
    /// mapped. One check for the mount (which refuses the file, EUCLEAN)
    /// and fsck (which repairs), so that what fsck accepts the mount
    /// reads. `Err` says what is wrong.
    pub fn check_fields(&self, map: &[Extent]) -> std::result::Result<(), String> {
        let size = self.size;
        let mapped_end = map.last().map_or(0, |e| e.logical_end());
        match self.file_type() {
            FileType::Regular if size > MAX_FILE_SIZE => Err(format!(
                "size {size} is past the {MAX_FILE_SIZE}-byte file limit"
            )),
            FileType::Directory if size % BLOCK_SIZE as u64 != 0 => Err(format!(
                "directory size {size} is not a whole number of blocks"
            )),
            FileType::Directory if size / (BLOCK_SIZE as u64) < mapped_end => Err(format!(
                "directory size {size} is short of its {mapped_end} mapped blocks"
            )),
            FileType::Directory if size > MAX_FILE_SIZE => {
                Err(format!("directory size {size} is past the file limit"))
            }
            FileType::Symlink => match &self.data {
                InodeData::Symlink(t) if t.is_empty() || t.len() as u64 != size => {
                    Err(format!("inline symlink of {} bytes, size {size}", t.len()))
                }
                InodeData::Symlink(_) => Ok(()),
                _ if size == 0 || size >= BLOCK_SIZE as u64 => Err(format!(
                    "symlink length {size} (1..{} allowed)",
                    BLOCK_SIZE - 1
                )),
                _ if !map.first().is_some_and(|e| e.logical == 0 && !e.unwritten) => {
                    Err("symlink target block is not mapped".to_string())
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Encode inode `ino` into `out` (`INODE_SIZE` bytes).
    #[allow(
        clippy::indexing_slicing,
        reason = "callers pass an inode slot of a table block they sized, INODE_SIZE bytes or more; the rest are constant offsets of the layout"
    )]
    pub fn encode(&self, seed: u32, ino: u64, out: &mut [u8]) {
        let out = &mut out[..INODE_SIZE];
        out.fill(0);
        let mut w = Writer(out);
        w.u32(0, self.mode);
        // The inline-symlink flag follows the data variant.
        let inline = matches!(self.data, InodeData::Symlink(_));
        let flags = self.flags & !FLAG_INLINE_SYMLINK;
        w.u16(
            4,
            if inline {
                flags | FLAG_INLINE_SYMLINK
            } else {
                flags
            },
        );
        w.u32(8, self.uid);
        w.u32(12, self.gid);
        w.u32(16, self.nlink);
        w.u64(20, self.size);
        w.u64(28, self.blocks);
        for (i, t) in [self.atime, self.mtime, self.ctime, self.crtime]
            .iter()
            .enumerate()
        {
            w.i64(36 + i * 8, t.sec);
            w.u32(68 + i * 4, t.nsec);
        }
        w.u32(84, self.generation);
        w.u64(88, self.rdev_or_parent);
        w.u64(96, self.xattr_block);
        w.u64(104, self.orphan_next);
        match &self.data {
            InodeData::Extents(n) => n.encode_inline(&mut out[DATA_OFF..DATA_OFF + INLINE_DATA]),
            InodeData::Symlink(t) => {
                let n = t.len().min(INLINE_DATA);
                out[DATA_OFF..DATA_OFF + n].copy_from_slice(&t[..n]);
            }
            InodeData::None => {}
        }
        let csum = meta_csum(seed, ino, &out[..CSUM_OFF]);
        Writer(out).u32(CSUM_OFF, csum);
    }

    /// True if the raw inode is free (all zero).
    pub fn is_free(raw: &[u8]) -> bool {
        raw.iter().take(INODE_SIZE).all(|&b| b == 0)
    }

    /// Decode inode `ino` from its `INODE_SIZE` bytes; `Ok(None)` if free.
    /// Checks the checksum, the type, the flags, the times' nanoseconds and
    /// the inline data; block numbers are checked by whoever follows them.
    pub fn decode(seed: u32, ino: u64, raw: &[u8]) -> Result<Option<Inode>> {
        let raw = raw
            .first_chunk::<INODE_SIZE>()
            .ok_or_else(|| FormatError::invalid("inode", "short"))?;
        if Inode::is_free(raw) {
            return Ok(None);
        }
        let r = Reader(raw);
        let stored = r.u32(CSUM_OFF);
        let computed = meta_csum(seed, ino, &raw[..CSUM_OFF]);
        FormatError::check_csum("inode", ino, stored, computed)?;
        let bad = |d: String| FormatError::invalid("inode", format!("inode {ino}: {d}"));
        let mode = r.u32(0);
        let ft = FileType::from_mode(mode).ok_or_else(|| bad(format!("mode {mode:o}")))?;
        if mode & !(S_IFMT | 0o7777) != 0 {
            return Err(bad(format!("mode {mode:o}")));
        }
        let flags = r.u16(4);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(bad(format!("unknown flags {flags:#x}")));
        }
        let mut times = [Timespec::default(); 4];
        for (i, t) in times.iter_mut().enumerate() {
            *t = Timespec {
                sec: r.i64(36 + i * 8),
                nsec: r.u32(68 + i * 4),
            };
            if t.nsec >= 1_000_000_000 {
                return Err(bad(format!("nanoseconds {}", t.nsec)));
            }
        }
        let size = r.u64(20);
        let area = &raw[DATA_OFF..DATA_OFF + INLINE_DATA];
        let data = if flags & FLAG_INLINE_SYMLINK != 0 {
            if ft != FileType::Symlink || size > INLINE_DATA as u64 || size == 0 {
                return Err(bad(format!("inline symlink of {size} bytes")));
            }
            let target = area.get(..size as usize);
            InodeData::Symlink(
                target
                    .ok_or_else(|| bad(format!("inline symlink of {size} bytes")))?
                    .to_vec(),
            )
        } else if ft.has_extents() {
            InodeData::Extents(
                ExtentNode::decode_inline(area).map_err(|e| bad(format!("extent root: {e}")))?,
            )
        } else {
            if area.iter().any(|&b| b != 0) {
                return Err(bad("data area of a special file is not empty".into()));
            }
            InodeData::None
        };
        Ok(Some(Inode {
            mode,
            flags: flags & !FLAG_INLINE_SYMLINK,
            uid: r.u32(8),
            gid: r.u32(12),
            nlink: r.u32(16),
            size,
            blocks: r.u64(28),
            atime: times[0],
            mtime: times[1],
            ctime: times[2],
            crtime: times[3],
            generation: r.u32(84),
            rdev_or_parent: r.u64(88),
            xattr_block: r.u64(96),
            orphan_next: r.u64(104),
            data,
        }))
    }
}

// The inline extent root fills the data area exactly.
const _: () = assert!(INLINE_EXTENT_BYTES == INLINE_DATA);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::extent::Extent;

    fn t(sec: i64, nsec: u32) -> Timespec {
        Timespec { sec, nsec }
    }

    #[test]
    fn round_trip_regular_file_with_extents() {
        let mut ino = Inode::new(S_IFREG | 0o644, 1000, 100, t(1_700_000_000, 123_456_789));
        ino.size = 1 << 20;
        ino.blocks = 256;
        ino.crtime = t(-5, 999_999_999);
        ino.xattr_block = 4242;
        if let InodeData::Extents(n) = &mut ino.data {
            n.extents_mut().unwrap().push(Extent {
                logical: 0,
                physical: 5000,
                len: 256,
                unwritten: false,
            });
        }
        let mut raw = [0u8; INODE_SIZE];
        ino.encode(9, 17, &mut raw);
        assert_eq!(Inode::decode(9, 17, &raw).unwrap(), Some(ino));
        assert!(Inode::decode(9, 18, &raw).is_err(), "misplaced inode");
    }

    #[test]
    fn round_trip_fast_symlink_and_device() {
        let mut l = Inode::new(S_IFLNK | 0o777, 0, 0, t(1, 2));
        l.data = InodeData::Symlink(b"../target".to_vec());
        l.size = 9;
        let mut raw = [0u8; INODE_SIZE];
        l.encode(1, 5, &mut raw);
        assert_eq!(Inode::decode(1, 5, &raw).unwrap(), Some(l));
        let mut d = Inode::new(S_IFCHR | 0o600, 0, 0, t(1, 2));
        d.rdev_or_parent = 0x0103;
        d.encode(1, 6, &mut raw);
        assert_eq!(Inode::decode(1, 6, &raw).unwrap(), Some(d));
    }

    #[test]
    fn free_and_damaged_inodes() {
        assert_eq!(Inode::decode(1, 5, &[0u8; INODE_SIZE]).unwrap(), None);
        let ino = Inode::new(S_IFDIR | 0o755, 0, 0, t(1, 2));
        let mut raw = [0u8; INODE_SIZE];
        ino.encode(1, 5, &mut raw);
        for byte in [0, 5, 20, 70, 120, 250] {
            let mut bad = raw;
            bad[byte] ^= 1;
            assert!(Inode::decode(1, 5, &bad).is_err(), "flip at {byte}");
        }
    }
}
