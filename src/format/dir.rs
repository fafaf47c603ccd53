//! Directories: a B+tree keyed by a seeded 63-bit hash of the name, stored
//! in the directory's own blocks (logical block 0 is the root).
//!
//! Lookups cost one root-to-leaf walk; a million entries are a tree of
//! depth 2. Leaves are linked in hash order for readdir, whose cookie is the
//! hash of the last entry returned, so a listing is stable however the tree
//! splits or merges meanwhile (ext4's htree cookies do the same). `.` and
//! `..` are not stored (the parent is in the inode); readdir makes them,
//! with cookies 1 and 2, below every hash.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::codec::{Reader, Writer};
use super::error::{FormatError, Result};
use super::inode::FileType;
use super::{block_csum, BLOCK_SIZE, NAME_MAX};

/// Magic of a leaf.
pub const LEAF_MAGIC: u16 = 0xD1E0;
/// Magic of an interior node.
pub const NODE_MAGIC: u16 = 0xD1E1;
/// Deepest tree.
pub const MAX_DEPTH: u16 = 6;
/// Header bytes.
pub const HDR: usize = 32;
const CSUM_OFF: usize = 16;
/// Bytes of a leaf entry before its name.
pub const ENTRY_FIXED: usize = 18;
/// Bytes of an interior entry.
pub const NODE_ENTRY: usize = 16;
/// Bytes for entries in one block.
pub const ENTRY_SPACE: usize = BLOCK_SIZE - HDR;
/// Lowest hash a name can have (cookies below are `.` and `..`).
pub const HASH_MIN: u64 = 3;

/// The hash of `name` under the filesystem's seed: 63 bits, at least
/// [`HASH_MIN`], so that it is a valid positive `off_t` cookie.
pub fn name_hash(seed: u64, name: &[u8]) -> u64 {
    let h = xxh3_64_with_seed(name, seed) >> 1;
    if h < HASH_MIN {
        h + HASH_MIN
    } else {
        h
    }
}

/// True if `name` may be a directory entry: 1..=255 bytes, no `/` or NUL,
/// not `.` or `..`.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name != b"."
        && name != b".."
        && !name.iter().any(|&b| b == b'/' || b == 0)
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub hash: u64,
    pub ino: u64,
    pub ftype: FileType,
    pub name: Vec<u8>,
}

impl DirEntry {
    /// An entry for `name`, its hash computed with `seed`.
    pub fn new(seed: u64, name: &[u8], ino: u64, ftype: FileType) -> DirEntry {
        DirEntry {
            hash: name_hash(seed, name),
            ino,
            ftype,
            name: name.to_vec(),
        }
    }

    /// Bytes this entry takes in a leaf.
    pub fn disk_len(&self) -> usize {
        ENTRY_FIXED + self.name.len()
    }

    /// The order of entries in a leaf.
    pub fn key(&self) -> (u64, &[u8]) {
        (self.hash, &self.name)
    }
}

/// An interior entry: the subtree at `child` (a logical block of the
/// directory) holds the hashes from `hash` up to the next entry's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub hash: u64,
    pub child: u64,
}

/// A decoded directory block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirNode {
    Leaf {
        /// Logical block of the next leaf in hash order (0: last).
        next: u64,
        entries: Vec<DirEntry>,
    },
    Node {
        depth: u16,
        entries: Vec<NodeEntry>,
    },
}

impl DirNode {
    /// Bytes of the entries of a leaf.
    pub fn used(&self) -> usize {
        match self {
            DirNode::Leaf { entries, .. } => entries.iter().map(DirEntry::disk_len).sum(),
            DirNode::Node { entries, .. } => entries.len() * NODE_ENTRY,
        }
    }

    /// True if the entries fit one block.
    pub fn fits(&self) -> bool {
        self.used() <= ENTRY_SPACE
    }

    /// Encode as the block at physical `block` of directory `owner`. The
    /// node must fit ([`DirNode::fits`]); entries beyond are dropped.
    pub fn encode(&self, seed: u32, block: u64, owner: u64) -> Vec<u8> {
        let mut buf = vec![0u8; BLOCK_SIZE];
        let mut w = Writer(&mut buf);
        w.u64(8, owner);
        let mut off = HDR;
        match self {
            DirNode::Leaf { next, entries } => {
                w.u16(0, LEAF_MAGIC);
                w.u64(24, *next);
                let mut n = 0u16;
                for e in entries {
                    if off + e.disk_len() > BLOCK_SIZE {
                        break;
                    }
                    w.u64(off, e.hash);
                    w.u64(off + 8, e.ino);
                    w.u8(off + 16, e.ftype.dirent_type());
                    w.u8(off + 17, e.name.len() as u8);
                    w.bytes(off + ENTRY_FIXED, &e.name);
                    off += e.disk_len();
                    n += 1;
                }
                w.u16(2, n);
            }
            DirNode::Node { depth, entries } => {
                w.u16(0, NODE_MAGIC);
                w.u16(4, *depth);
                let mut n = 0u16;
                for e in entries {
                    if off + NODE_ENTRY > BLOCK_SIZE {
                        break;
                    }
                    w.u64(off, e.hash);
                    w.u64(off + 8, e.child);
                    off += NODE_ENTRY;
                    n += 1;
                }
                w.u16(2, n);
            }
        }
        w.u16(6, (off - HDR) as u16);
        let csum = block_csum(seed, block, &buf, CSUM_OFF);
        Writer(&mut buf).u32(CSUM_OFF, csum);
        buf
    }

    /// Decode the block at physical `block` of directory `owner`, checking
    /// its checksum, owner, that every name is valid and hashes (with
    /// `hash_seed`) to its stored hash, and the order of the entries.
    pub fn decode(
        seed: u32,
        hash_seed: u64,
        block: u64,
        owner: u64,
        raw: &[u8],
    ) -> Result<DirNode> {
        if raw.len() < BLOCK_SIZE {
            return Err(FormatError::invalid("directory block", "short"));
        }
        let r = Reader(raw);
        let magic = r.u16(0);
        if magic != LEAF_MAGIC && magic != NODE_MAGIC {
            return Err(FormatError::BadMagic {
                what: "directory block",
                block,
            });
        }
        let stored = r.u32(CSUM_OFF);
        let computed = block_csum(seed, block, raw, CSUM_OFF);
        FormatError::check_csum("directory block", block, stored, computed)?;
        let bad =
            |d: String| FormatError::invalid("directory block", format!("block {block}: {d}"));
        if r.u64(8) != owner {
            return Err(bad(format!("belongs to inode {}, not {owner}", r.u64(8))));
        }
        let (count, used) = (r.u16(2) as usize, r.u16(6) as usize);
        if used > ENTRY_SPACE {
            return Err(bad(format!("{used} bytes of entries")));
        }
        let end = HDR + used;
        if magic == LEAF_MAGIC {
            if r.u16(4) != 0 {
                return Err(bad("a leaf with a depth".into()));
            }
            let mut entries: Vec<DirEntry> = Vec::with_capacity(count);
            let mut off = HDR;
            for i in 0..count {
                if off + ENTRY_FIXED > end {
                    return Err(bad(format!("entry {i} runs past the used bytes")));
                }
                let (hash, ino) = (r.u64(off), r.u64(off + 8));
                let t = r.u8(off + 16);
                let len = r.u8(off + 17) as usize;
                let name = raw
                    .get(off + ENTRY_FIXED..off + ENTRY_FIXED + len)
                    .filter(|_| off + ENTRY_FIXED + len <= end)
                    .ok_or_else(|| bad(format!("entry {i}: name runs past the used bytes")))?;
                let ftype = FileType::from_dirent_type(t)
                    .ok_or_else(|| bad(format!("entry {i}: type {t}")))?;
                if !valid_name(name) {
                    return Err(bad(format!(
                        "entry {i}: invalid name {:?}",
                        String::from_utf8_lossy(name)
                    )));
                }
                if ino == 0 {
                    return Err(bad(format!("entry {i}: inode 0")));
                }
                if name_hash(hash_seed, name) != hash {
                    return Err(bad(format!(
                        "entry {i} ({:?}): stored hash does not match the name",
                        String::from_utf8_lossy(name)
                    )));
                }
                let e = DirEntry {
                    hash,
                    ino,
                    ftype,
                    name: name.to_vec(),
                };
                if entries.last().is_some_and(|p| p.key() >= e.key()) {
                    return Err(bad(format!("entry {i} out of order")));
                }
                off += e.disk_len();
                entries.push(e);
            }
            if off != end {
                return Err(bad(format!(
                    "{} bytes used, entries take {}",
                    used,
                    off - HDR
                )));
            }
            Ok(DirNode::Leaf {
                next: r.u64(24),
                entries,
            })
        } else {
            let depth = r.u16(4);
            if depth == 0 || depth > MAX_DEPTH || count == 0 || count * NODE_ENTRY != used {
                return Err(bad(format!(
                    "interior node: depth {depth}, {count} entries, {used} bytes"
                )));
            }
            let mut entries: Vec<NodeEntry> = Vec::with_capacity(count);
            for i in 0..count {
                let off = HDR + i * NODE_ENTRY;
                let e = NodeEntry {
                    hash: r.u64(off),
                    child: r.u64(off + 8),
                };
                if e.child == 0 || entries.last().is_some_and(|p| p.hash >= e.hash) {
                    return Err(bad(format!("interior entry {i}: {e:?}")));
                }
                entries.push(e);
            }
            Ok(DirNode::Node { depth, entries })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_seeded_positive_and_above_the_dot_cookies() {
        let a = name_hash(1, b"hello");
        assert_ne!(a, name_hash(2, b"hello"));
        assert_eq!(a, name_hash(1, b"hello"));
        for i in 0..10_000u32 {
            let h = name_hash(7, format!("f{i}").as_bytes());
            assert!(h >= HASH_MIN && h <= i64::MAX as u64);
        }
    }

    #[test]
    fn leaf_and_node_round_trip() {
        let mut entries: Vec<DirEntry> = (0..50)
            .map(|i| DirEntry::new(9, format!("name-{i}").as_bytes(), 10 + i, FileType::Regular))
            .collect();
        entries.sort_by(|a, b| a.key().cmp(&b.key()));
        let leaf = DirNode::Leaf { next: 4, entries };
        assert!(leaf.fits());
        let raw = leaf.encode(5, 100, 12);
        assert_eq!(DirNode::decode(5, 9, 100, 12, &raw).unwrap(), leaf);
        assert!(
            DirNode::decode(5, 8, 100, 12, &raw).is_err(),
            "other hash seed"
        );
        let node = DirNode::Node {
            depth: 1,
            entries: vec![
                NodeEntry { hash: 0, child: 1 },
                NodeEntry { hash: 99, child: 2 },
            ],
        };
        let raw = node.encode(5, 101, 12);
        assert_eq!(DirNode::decode(5, 9, 101, 12, &raw).unwrap(), node);
    }

    #[test]
    fn names() {
        assert!(valid_name(b"a") && valid_name(&[b'x'; 255]));
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0", &[b'x'; 256]] {
            assert!(!valid_name(bad));
        }
    }
}
