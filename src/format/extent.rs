//! Extent trees: a file's logical blocks mapped to runs of physical blocks.
//!
//! The root lives in the inode (5 extents or 7 index entries); below it,
//! nodes are whole blocks (169 extents or 254 index entries), to any depth
//! up to [`MAX_DEPTH`]. Leaves hold extents sorted by logical block, never
//! overlapping; index entries point to a child node with the lowest logical
//! block it maps.

use super::codec::{Reader, Writer};
use super::error::{FormatError, Result};
use std::collections::HashSet;

use super::geometry::{Geometry, MAX_BLOCKS};
use super::{block_csum, BLOCKS_PER_GROUP, BLOCK_SIZE, MAX_FILE_BLOCKS};

/// Magic of an extent node.
pub const MAGIC: u16 = 0xEB10;
/// Deepest tree (root at this depth, leaves at 0); 169 * 254^4 extents.
pub const MAX_DEPTH: u16 = 5;
/// Bytes of the inline root in the inode.
pub const INLINE_EXTENT_BYTES: usize = 128;
/// Header of the inline root.
const INLINE_HDR: usize = 8;
/// Header of a node block.
const BLOCK_HDR: usize = 24;
const BLOCK_CSUM_OFF: usize = 16;
const EXTENT_BYTES: usize = 24;
const INDEX_BYTES: usize = 16;
/// Longest extent: one group's blocks.
pub const MAX_EXTENT_LEN: u32 = BLOCKS_PER_GROUP;
/// Flag of an extent whose blocks are allocated but read as zeros.
const EXTENT_UNWRITTEN: u32 = 1;

/// A run of `len` blocks of the file from `logical`, stored from `physical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub len: u32,
    /// Allocated by fallocate and never written: reads return zeros.
    pub unwritten: bool,
}

impl Extent {
    pub fn logical_end(&self) -> u64 {
        self.logical + u64::from(self.len)
    }
    pub fn physical_end(&self) -> u64 {
        self.physical + u64::from(self.len)
    }
}

/// An entry of an interior node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Lowest logical block mapped below.
    pub logical: u64,
    /// The child node's block.
    pub child: u64,
}

/// One node of the tree: a leaf of extents or an interior node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtentNode {
    Leaf(Vec<Extent>),
    Index {
        depth: u16,
        entries: Vec<IndexEntry>,
    },
}

impl ExtentNode {
    /// The empty root of a new file.
    pub fn empty_inline() -> ExtentNode {
        ExtentNode::Leaf(Vec::new())
    }

    pub fn depth(&self) -> u16 {
        match self {
            ExtentNode::Leaf(_) => 0,
            ExtentNode::Index { depth, .. } => *depth,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            ExtentNode::Leaf(e) => e.len(),
            ExtentNode::Index { entries, .. } => entries.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The extents of a leaf; `None` for an interior node.
    pub fn extents_mut(&mut self) -> Option<&mut Vec<Extent>> {
        match self {
            ExtentNode::Leaf(e) => Some(e),
            ExtentNode::Index { .. } => None,
        }
    }

    /// Most entries of this kind of node inline (`inline`) or in a block.
    pub fn capacity(leaf: bool, inline: bool) -> usize {
        let room = if inline {
            INLINE_EXTENT_BYTES - INLINE_HDR
        } else {
            BLOCK_SIZE - BLOCK_HDR
        };
        room / if leaf { EXTENT_BYTES } else { INDEX_BYTES }
    }

    fn encode_entries(&self, out: &mut [u8], hdr: usize, max: usize) {
        let mut w = Writer(out);
        w.u16(0, MAGIC);
        w.u16(2, self.len() as u16);
        w.u16(4, max as u16);
        w.u16(6, self.depth());
        match self {
            ExtentNode::Leaf(es) => {
                for (i, e) in es.iter().enumerate().take(max) {
                    let o = hdr + i * EXTENT_BYTES;
                    w.u64(o, e.logical);
                    w.u64(o + 8, e.physical);
                    w.u32(o + 16, e.len);
                    w.u32(o + 20, if e.unwritten { EXTENT_UNWRITTEN } else { 0 });
                }
            }
            ExtentNode::Index { entries, .. } => {
                for (i, e) in entries.iter().enumerate().take(max) {
                    let o = hdr + i * INDEX_BYTES;
                    w.u64(o, e.logical);
                    w.u64(o + 8, e.child);
                }
            }
        }
    }

    fn decode_entries(raw: &[u8], hdr: usize, inline: bool) -> Result<ExtentNode> {
        let r = Reader(raw);
        if r.u16(0) != MAGIC {
            return Err(FormatError::invalid("extent node", "bad magic"));
        }
        let (count, max, depth) = (r.u16(2) as usize, r.u16(4) as usize, r.u16(6));
        if depth > MAX_DEPTH {
            return Err(FormatError::invalid(
                "extent node",
                format!("depth {depth}"),
            ));
        }
        let leaf = depth == 0;
        if max != ExtentNode::capacity(leaf, inline) || count > max {
            return Err(FormatError::invalid(
                "extent node",
                format!("{count} entries of at most {max}"),
            ));
        }
        if leaf {
            let mut es = Vec::with_capacity(count);
            for i in 0..count {
                let o = hdr + i * EXTENT_BYTES;
                let flags = r.u32(o + 20);
                let e = Extent {
                    logical: r.u64(o),
                    physical: r.u64(o + 8),
                    len: r.u32(o + 16),
                    unwritten: flags & EXTENT_UNWRITTEN != 0,
                };
                if flags & !EXTENT_UNWRITTEN != 0
                    || e.len == 0
                    || e.len > MAX_EXTENT_LEN
                    || e.physical == 0
                    || e.physical > MAX_BLOCKS - u64::from(e.len)
                    || e.logical >= MAX_FILE_BLOCKS
                    || e.logical_end() > MAX_FILE_BLOCKS
                {
                    return Err(FormatError::invalid("extent", format!("entry {i}: {e:?}")));
                }
                if let Some(prev) = es.last() {
                    let prev: &Extent = prev;
                    if prev.logical_end() > e.logical {
                        return Err(FormatError::invalid(
                            "extent",
                            format!("entry {i} at {} overlaps or precedes {:?}", e.logical, prev),
                        ));
                    }
                }
                es.push(e);
            }
            Ok(ExtentNode::Leaf(es))
        } else {
            let mut entries = Vec::with_capacity(count);
            for i in 0..count {
                let o = hdr + i * INDEX_BYTES;
                let e = IndexEntry {
                    logical: r.u64(o),
                    child: r.u64(o + 8),
                };
                if e.child == 0 || e.logical >= MAX_FILE_BLOCKS {
                    return Err(FormatError::invalid(
                        "extent index",
                        format!("entry {i}: {e:?}"),
                    ));
                }
                if entries
                    .last()
                    .is_some_and(|p: &IndexEntry| p.logical >= e.logical)
                {
                    return Err(FormatError::invalid(
                        "extent index",
                        format!("entry {i} out of order"),
                    ));
                }
                entries.push(e);
            }
            if entries.is_empty() {
                return Err(FormatError::invalid(
                    "extent index",
                    "an interior node with no entries",
                ));
            }
            Ok(ExtentNode::Index { depth, entries })
        }
    }

    /// Encode as an inode's inline root (`INLINE_EXTENT_BYTES`).
    #[allow(
        clippy::indexing_slicing,
        reason = "the caller passes the inode's inline area, INLINE_DATA >= INLINE_EXTENT_BYTES by layout"
    )]
    pub fn encode_inline(&self, out: &mut [u8]) {
        let max = ExtentNode::capacity(self.depth() == 0, true);
        self.encode_entries(&mut out[..INLINE_EXTENT_BYTES], INLINE_HDR, max);
    }

    pub fn decode_inline(raw: &[u8]) -> Result<ExtentNode> {
        let Some(raw) = raw.get(..INLINE_EXTENT_BYTES) else {
            return Err(FormatError::invalid("extent root", "short"));
        };
        ExtentNode::decode_entries(raw, INLINE_HDR, true)
    }

    /// Encode as node block `block` of inode `owner`.
    pub fn encode_block(&self, seed: u32, block: u64, owner: u64) -> Vec<u8> {
        let mut buf = vec![0u8; BLOCK_SIZE];
        let max = ExtentNode::capacity(self.depth() == 0, false);
        self.encode_entries(&mut buf, BLOCK_HDR, max);
        Writer(&mut buf).u64(8, owner);
        let csum = block_csum(seed, block, &buf, BLOCK_CSUM_OFF);
        Writer(&mut buf).u32(BLOCK_CSUM_OFF, csum);
        buf
    }

    /// Decode node block `block`, which must belong to inode `owner`.
    pub fn decode_block(seed: u32, block: u64, owner: u64, raw: &[u8]) -> Result<ExtentNode> {
        let Some(raw) = raw.get(..BLOCK_SIZE) else {
            return Err(FormatError::invalid("extent block", "short"));
        };
        let r = Reader(raw);
        if r.u16(0) != MAGIC {
            return Err(FormatError::BadMagic {
                what: "extent block",
                block,
            });
        }
        let stored = r.u32(BLOCK_CSUM_OFF);
        let computed = block_csum(seed, block, raw, BLOCK_CSUM_OFF);
        FormatError::check_csum("extent block", block, stored, computed)?;
        if r.u64(8) != owner {
            return Err(FormatError::invalid(
                "extent block",
                format!("block {block} belongs to inode {}, not {owner}", r.u64(8)),
            ));
        }
        ExtentNode::decode_entries(raw, BLOCK_HDR, false)
    }
}

/// Encoded tree nodes: (block, image).
pub type NodeImages = Vec<(u64, Vec<u8>)>;

/// The tree holding `extents` (sorted, non-overlapping) for inode `ino`:
/// the root for the inode, and the node blocks below it as (block, image),
/// numbered by `alloc`.
pub fn build_tree(
    seed: u32,
    ino: u64,
    extents: &[Extent],
    alloc: &mut dyn FnMut() -> Result<u64>,
) -> Result<(ExtentNode, NodeImages)> {
    let mut blocks = Vec::new();
    if extents.len() <= ExtentNode::capacity(true, true) {
        return Ok((ExtentNode::Leaf(extents.to_vec()), blocks));
    }
    // Leaves, then index levels until the rest fits the inode.
    let mut level: Vec<IndexEntry> = Vec::new();
    for chunk in extents.chunks(ExtentNode::capacity(true, false)) {
        let Some(first) = chunk.first() else { continue };
        let b = alloc()?;
        blocks.push((
            b,
            ExtentNode::Leaf(chunk.to_vec()).encode_block(seed, b, ino),
        ));
        level.push(IndexEntry {
            logical: first.logical,
            child: b,
        });
    }
    let mut depth = 1u16;
    while level.len() > ExtentNode::capacity(false, true) {
        if depth >= MAX_DEPTH {
            return Err(FormatError::invalid("extent tree", "too many extents"));
        }
        let mut up = Vec::new();
        for chunk in level.chunks(ExtentNode::capacity(false, false)) {
            let Some(first) = chunk.first() else { continue };
            let b = alloc()?;
            let node = ExtentNode::Index {
                depth,
                entries: chunk.to_vec(),
            };
            blocks.push((b, node.encode_block(seed, b, ino)));
            up.push(IndexEntry {
                logical: first.logical,
                child: b,
            });
        }
        level = up;
        depth += 1;
    }
    let root = ExtentNode::Index {
        depth,
        entries: level,
    };
    Ok((root, blocks))
}

/// What a walk of an extent tree found ([`walk_tree`]).
#[derive(Debug, Default)]
pub struct TreeWalk {
    /// The valid extents, sorted and non-overlapping.
    pub extents: Vec<Extent>,
    /// The node blocks read below the root, in walk (pre)order.
    pub nodes: Vec<u64>,
    /// Damage found, as [`FormatError::Corrupt`]; a lenient walk skips the
    /// damaged node or extent and goes on.
    pub problems: Vec<FormatError>,
}

/// A child to visit: its block, the logical range its parent gives it, and
/// the depth it must have.
struct Pending {
    block: u64,
    lo: u64,
    hi: u64,
    depth: u16,
}

/// Walk inode `ino`'s extent tree from `root`, reading node blocks with
/// `read`: the one walker of the mount ([`read_tree`]) and fsck
/// (`Image::extents`). Its guards, against a damaged or hostile image:
///
/// - every node block is visited at most once (a visited set): an index
///   entry naming a block already seen (the shared-child "tree bomb", or a
///   cycle) is damage, so the walk reads at most one node per block of the
///   filesystem and keeps no more than `MAX_DEPTH` levels of pending
///   children;
/// - a child must be at its parent's depth less one (so the walk is at most
///   `MAX_DEPTH` deep) and lie in the data area (`geo`);
/// - every extent lies in the data area within one group, inside the
///   logical range its parent index gives it, after the extent before it.
///
/// `strict` (the mount): the first damage is `Err(Corrupt)`. Otherwise
/// (fsck) damage is listed in [`TreeWalk::problems`] and the damaged part
/// skipped. A read that fails for another reason than damage (the device
/// is in trouble) is `Err` either way.
pub fn walk_tree<B: AsRef<[u8]>>(
    seed: u32,
    ino: u64,
    root: &ExtentNode,
    geo: &Geometry,
    read: &mut dyn FnMut(u64) -> Result<B>,
    strict: bool,
) -> Result<TreeWalk> {
    let mut w = TreeWalk::default();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut stack: Vec<Pending> = Vec::new();
    let damage = |w: &mut TreeWalk, block: u64, what: String| -> Result<()> {
        let e = FormatError::corrupt(ino, block, format!("extent tree: {what}"));
        if strict {
            return Err(e);
        }
        w.problems.push(e);
        Ok(())
    };
    let visit = |w: &mut TreeWalk,
                 stack: &mut Vec<Pending>,
                 node: &ExtentNode,
                 block: u64,
                 (lo, hi): (u64, u64)|
     -> Result<()> {
        match node {
            ExtentNode::Leaf(es) => {
                for e in es {
                    let in_data = geo.is_data_block(e.physical)
                        && geo.is_data_block(e.physical_end() - 1)
                        && geo.block_group(e.physical).map(|x| x.0)
                            == geo.block_group(e.physical_end() - 1).map(|x| x.0);
                    let after_prev = w
                        .extents
                        .last()
                        .is_none_or(|p| p.logical_end() <= e.logical);
                    if !in_data {
                        damage(
                            w,
                            block,
                            format!(
                                "extent of logical {} at blocks {}..{} is outside the data area",
                                e.logical,
                                e.physical,
                                e.physical_end()
                            ),
                        )?;
                    } else if e.logical < lo || e.logical_end() > hi || !after_prev {
                        damage(
                            w,
                            block,
                            format!("extent at logical {} is out of order", e.logical),
                        )?;
                    } else {
                        w.extents.push(*e);
                    }
                }
            }
            ExtentNode::Index { depth, entries } => {
                // Children in reverse so the stack pops them in order.
                for (i, ie) in entries.iter().enumerate().rev() {
                    let next = entries.get(i + 1).map_or(hi, |n| n.logical).min(hi);
                    if ie.logical < lo || ie.logical >= next {
                        damage(
                            w,
                            block,
                            format!("index entry to block {} is out of order", ie.child),
                        )?;
                        continue;
                    }
                    stack.push(Pending {
                        block: ie.child,
                        lo: ie.logical,
                        hi: next,
                        depth: depth - 1,
                    });
                }
            }
        }
        Ok(())
    };
    visit(&mut w, &mut stack, root, 0, (0, MAX_FILE_BLOCKS))?;
    while let Some(p) = stack.pop() {
        if !geo.is_data_block(p.block) {
            damage(
                &mut w,
                p.block,
                format!("index entry to block {} outside the data area", p.block),
            )?;
            continue;
        }
        if !seen.insert(p.block) {
            damage(
                &mut w,
                p.block,
                format!("block {} is referenced twice", p.block),
            )?;
            continue;
        }
        let node = match read(p.block)
            .and_then(|raw| ExtentNode::decode_block(seed, p.block, ino, raw.as_ref()))
        {
            Ok(n) => n,
            Err(e) if e.is_corruption() => {
                damage(&mut w, p.block, format!("block {}: {e}", p.block))?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if node.depth() != p.depth {
            damage(
                &mut w,
                p.block,
                format!("node at depth {} where {} belongs", node.depth(), p.depth),
            )?;
            continue;
        }
        w.nodes.push(p.block);
        visit(&mut w, &mut stack, &node, p.block, (p.lo, p.hi))?;
    }
    Ok(w)
}

/// Every extent below `root` (inode `ino`'s) and the node blocks, for the
/// mount: [`walk_tree`], strict. Any damage is `Err(Corrupt)`, for the
/// mount to refuse the file rather than guess.
pub fn read_tree<B: AsRef<[u8]>>(
    seed: u32,
    ino: u64,
    root: &ExtentNode,
    geo: &Geometry,
    read: &mut dyn FnMut(u64) -> Result<B>,
) -> Result<(Vec<Extent>, Vec<u64>)> {
    let w = walk_tree(seed, ino, root, geo, read, true)?;
    Ok((w.extents, w.nodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(logical: u64, physical: u64, len: u32) -> Extent {
        Extent {
            logical,
            physical,
            len,
            unwritten: false,
        }
    }

    #[test]
    fn capacities() {
        assert_eq!(ExtentNode::capacity(true, true), 5);
        assert_eq!(ExtentNode::capacity(false, true), 7);
        assert_eq!(ExtentNode::capacity(true, false), 169);
        assert_eq!(ExtentNode::capacity(false, false), 254);
    }

    #[test]
    fn round_trips() {
        let leaf = ExtentNode::Leaf(vec![
            ext(0, 100, 8),
            Extent {
                unwritten: true,
                ..ext(8, 500, 1)
            },
        ]);
        let mut raw = [0u8; INLINE_EXTENT_BYTES];
        leaf.encode_inline(&mut raw);
        assert_eq!(ExtentNode::decode_inline(&raw).unwrap(), leaf);
        let idx = ExtentNode::Index {
            depth: 2,
            entries: vec![
                IndexEntry {
                    logical: 0,
                    child: 7,
                },
                IndexEntry {
                    logical: 900,
                    child: 8,
                },
            ],
        };
        let b = idx.encode_block(3, 77, 12);
        assert_eq!(ExtentNode::decode_block(3, 77, 12, &b).unwrap(), idx);
        assert!(
            ExtentNode::decode_block(3, 77, 13, &b).is_err(),
            "wrong owner"
        );
        assert!(
            ExtentNode::decode_block(3, 78, 12, &b).is_err(),
            "misplaced"
        );
    }

    /// Found by tests/fuzz_decoders.rs: an extent at physical block
    /// u64::MAX decoded, and its `physical_end()` then overflowed. Extents
    /// must lie below the largest filesystem.
    #[test]
    fn regression_physical_end_of_a_decoded_extent_cannot_overflow() {
        let mut raw = [0u8; INLINE_EXTENT_BYTES];
        for (physical, ok) in [
            (u64::MAX, false),
            (u64::MAX - 1, false),
            (MAX_BLOCKS - 11486, false),
            (MAX_BLOCKS - 11487, true),
        ] {
            let leaf = ExtentNode::Leaf(vec![ext(4294934528, physical, 11487)]);
            leaf.encode_inline(&mut raw);
            match ExtentNode::decode_inline(&raw) {
                Ok(ExtentNode::Leaf(es)) if ok => assert_eq!(es[0].physical_end(), MAX_BLOCKS),
                Err(_) if !ok => {}
                other => panic!("physical {physical}: {other:?}"),
            }
        }
    }

    #[test]
    fn overlapping_or_zero_length_extents_are_refused() {
        for bad in [
            vec![ext(0, 100, 8), ext(7, 200, 1)],
            vec![ext(5, 100, 1), ext(0, 200, 1)],
            vec![ext(0, 100, 0)],
            vec![ext(0, 0, 1)],
            vec![ext(MAX_FILE_BLOCKS - 1, 10, 2)],
        ] {
            let mut raw = [0u8; INLINE_EXTENT_BYTES];
            ExtentNode::Leaf(bad.clone()).encode_inline(&mut raw);
            assert!(ExtentNode::decode_inline(&raw).is_err(), "{bad:?}");
        }
    }
}
