//! Directory operations on the hashed B+tree of `docs/format.md`: lookup,
//! insert (splitting leaves and interior nodes, growing the root), remove,
//! and readdir from a cookie.
//!
//! The tree lives in the directory's logical blocks; the root is always
//! logical block 0. These functions work on decoded nodes through
//! [`DirBlocks`], so the filesystem can back them with its buffer cache and
//! transactions, and tests with a map. Entries with one hash value are
//! never split across leaves (a readdir cookie is a hash, so it must not
//! resume in the middle of them). Removal never merges: an emptied leaf
//! stays until the directory is rebuilt or deleted.

use crate::format::dir::{DirEntry, DirNode, NodeEntry, ENTRY_SPACE, MAX_DEPTH, NODE_ENTRY};
use crate::format::error::{FormatError, Result};

/// The directory's blocks, as decoded nodes.
pub trait DirBlocks {
    /// True if the directory has no blocks yet (no root).
    fn is_empty(&self) -> bool;
    /// The node at `logical`.
    fn read(&mut self, logical: u64) -> Result<DirNode>;
    /// Store `node` at `logical` (which `alloc` or the root handed out).
    fn write(&mut self, logical: u64, node: DirNode) -> Result<()>;
    /// A logical block not used by the tree (the directory grows by one).
    fn alloc(&mut self) -> Result<u64>;
}

/// Why an insert could not be done.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("a name with this spelling exists")]
    Exists,
    /// So many names share one hash that they don't fit a leaf (never
    /// with a seeded 63-bit hash, short of an attack on the seed).
    #[error("too many names with one hash value")]
    HashBucketFull,
    #[error(transparent)]
    Format(#[from] FormatError),
}

fn bad(detail: String) -> FormatError {
    FormatError::invalid("directory", detail)
}

/// A walk from the root down: (logical, node) pairs.
type Path = Vec<(u64, DirNode)>;

/// The path from the root to the leaf for `hash`.
fn descend(b: &mut dyn DirBlocks, hash: u64) -> Result<Path> {
    Ok(descend_range(b, hash)?.0)
}

/// [`descend`], and the range of hashes `[lo, hi)` the index gives the
/// leaf (`hi` `None`: the last leaf). Guarded: each child must be one level
/// below its parent (so the walk is at most `MAX_DEPTH` deep), and never
/// the root or a node already on the path.
fn descend_range(b: &mut dyn DirBlocks, hash: u64) -> Result<(Path, u64, Option<u64>)> {
    let mut path: Vec<(u64, DirNode)> = Vec::new();
    let mut logical = 0u64;
    let (mut lo, mut hi) = (0u64, None::<u64>);
    let mut want_depth: Option<u16> = None;
    for _ in 0..=MAX_DEPTH {
        let node = b.read(logical)?;
        let depth = match &node {
            DirNode::Leaf { .. } => 0,
            DirNode::Node { depth, .. } => *depth,
        };
        if want_depth.is_some_and(|d| d != depth) {
            return Err(bad(format!(
                "block {logical} is at depth {depth} under a node of depth {}",
                want_depth.unwrap_or_default() + 1
            )));
        }
        let next = match &node {
            DirNode::Leaf { .. } => None,
            DirNode::Node { entries, depth } => {
                let i = entries
                    .partition_point(|e| e.hash <= hash)
                    .saturating_sub(1);
                let e = entries.get(i).ok_or_else(|| {
                    bad(format!("block {logical}: an index node with no entries"))
                })?;
                if i > 0 {
                    lo = lo.max(e.hash);
                }
                if let Some(n) = entries.get(i + 1) {
                    hi = Some(hi.map_or(n.hash, |h| h.min(n.hash)));
                }
                want_depth = Some(depth.saturating_sub(1));
                Some(e.child)
            }
        };
        path.push((logical, node));
        match next {
            None => return Ok((path, lo, hi)),
            Some(c) if c == 0 || path.iter().any(|(l, _)| *l == c) => {
                return Err(bad(format!(
                    "block {logical} points back to block {c} above it"
                )));
            }
            Some(c) => logical = c,
        }
    }
    Err(bad("index deeper than allowed".into()))
}

/// The entry named `name` (whose hash is `hash`), if any.
pub fn lookup(b: &mut dyn DirBlocks, hash: u64, name: &[u8]) -> Result<Option<DirEntry>> {
    if b.is_empty() {
        return Ok(None);
    }
    let path = descend(b, hash)?;
    match path.into_iter().last() {
        Some((_, DirNode::Leaf { entries, .. })) => Ok(entries
            .into_iter()
            .find(|e| e.hash == hash && e.name == name)),
        _ => Err(bad("the walk did not end at a leaf".into())),
    }
}

/// Where to cut `entries` (sorted) into two leaves: near the middle by
/// bytes, never between two entries of one hash. `None` if every entry has
/// the same hash.
fn leaf_split_point(entries: &[DirEntry]) -> Option<usize> {
    let total: usize = entries.iter().map(DirEntry::disk_len).sum();
    let mut acc = 0;
    let mut best: Option<(usize, usize)> = None; // (distance from middle, index)
    for (i, pair) in (1..).zip(entries.windows(2)) {
        let [prev, cur] = pair else { continue };
        acc += prev.disk_len();
        if cur.hash == prev.hash {
            continue;
        }
        let d = acc.abs_diff(total / 2);
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, i));
        }
    }
    best.map(|(_, i)| i)
}

fn leaf_fits(entries: &[DirEntry]) -> bool {
    entries.iter().map(DirEntry::disk_len).sum::<usize>() <= ENTRY_SPACE
}

const NODE_CAPACITY: usize = ENTRY_SPACE / NODE_ENTRY;

/// The root (logical 0) split into `left` and `right` (whose lowest hash is
/// `right_hash`): both move to the new blocks `l` and `r`, and the root
/// becomes an index of `depth` over them.
fn grow_root(
    b: &mut dyn DirBlocks,
    (l, r): (u64, u64),
    left: DirNode,
    right: DirNode,
    right_hash: u64,
    depth: u16,
) -> Result<()> {
    b.write(l, left)?;
    b.write(r, right)?;
    b.write(
        0,
        DirNode::Node {
            depth,
            entries: vec![
                NodeEntry { hash: 0, child: l },
                NodeEntry {
                    hash: right_hash,
                    child: r,
                },
            ],
        },
    )
}

/// Insert `entry` (its hash already computed). Fails with
/// [`DirError::Exists`] if the name is there.
pub fn insert(b: &mut dyn DirBlocks, entry: DirEntry) -> std::result::Result<(), DirError> {
    if b.is_empty() {
        b.write(
            0,
            DirNode::Leaf {
                next: 0,
                entries: vec![entry],
            },
        )?;
        return Ok(());
    }
    let mut path = descend(b, entry.hash)?;
    let Some((leaf_logical, DirNode::Leaf { next, mut entries })) = path.pop() else {
        return Err(bad("the walk did not end at a leaf".into()).into());
    };
    if entries
        .iter()
        .any(|e| e.hash == entry.hash && e.name == entry.name)
    {
        return Err(DirError::Exists);
    }
    let at = entries.partition_point(|e| e.key() < entry.key());
    entries.insert(at, entry);
    if leaf_fits(&entries) {
        b.write(leaf_logical, DirNode::Leaf { next, entries })?;
        return Ok(());
    }
    // Split the leaf.
    let cut = leaf_split_point(&entries).ok_or(DirError::HashBucketFull)?;
    let right_entries = entries.split_off(cut);
    if !leaf_fits(&entries) || !leaf_fits(&right_entries) {
        return Err(DirError::HashBucketFull);
    }
    let right_hash = right_entries
        .first()
        .ok_or_else(|| bad("split leaf has no right half".into()))?
        .hash;
    if leaf_logical == 0 {
        // The root leaf: both halves move out, the root becomes an index.
        // The left half links to the right, which takes the root's link.
        let (l, r) = (b.alloc()?, b.alloc()?);
        grow_root(
            b,
            (l, r),
            DirNode::Leaf { next: r, entries },
            DirNode::Leaf {
                next,
                entries: right_entries,
            },
            right_hash,
            1,
        )?;
        return Ok(());
    }
    let r = b.alloc()?;
    b.write(
        r,
        DirNode::Leaf {
            next,
            entries: right_entries,
        },
    )?;
    b.write(leaf_logical, DirNode::Leaf { next: r, entries })?;
    // Add the new leaf to its parents, splitting up the path as needed.
    let mut new_child = NodeEntry {
        hash: right_hash,
        child: r,
    };
    while let Some((logical, node)) = path.pop() {
        let DirNode::Node { depth, mut entries } = node else {
            return Err(bad("a leaf above a leaf".into()).into());
        };
        let at = entries.partition_point(|e| e.hash < new_child.hash);
        entries.insert(at, new_child);
        if entries.len() <= NODE_CAPACITY {
            b.write(logical, DirNode::Node { depth, entries })?;
            return Ok(());
        }
        let right = entries.split_off(entries.len() / 2);
        let right_hash = right
            .first()
            .ok_or_else(|| bad("split node has no right half".into()))?
            .hash;
        if logical == 0 {
            if depth >= MAX_DEPTH {
                return Err(bad("directory index full".into()).into());
            }
            let lr = (b.alloc()?, b.alloc()?);
            grow_root(
                b,
                lr,
                DirNode::Node { depth, entries },
                DirNode::Node {
                    depth,
                    entries: right,
                },
                right_hash,
                depth + 1,
            )?;
            return Ok(());
        }
        let r = b.alloc()?;
        b.write(
            r,
            DirNode::Node {
                depth,
                entries: right,
            },
        )?;
        b.write(logical, DirNode::Node { depth, entries })?;
        new_child = NodeEntry {
            hash: right_hash,
            child: r,
        };
    }
    Err(bad("split ran past the root".into()).into())
}

/// Remove the entry named `name` (hash `hash`); returns it, or `None` if
/// there is none.
pub fn remove(b: &mut dyn DirBlocks, hash: u64, name: &[u8]) -> Result<Option<DirEntry>> {
    if b.is_empty() {
        return Ok(None);
    }
    let mut path = descend(b, hash)?;
    let Some((logical, DirNode::Leaf { next, mut entries })) = path.pop() else {
        return Err(bad("the walk did not end at a leaf".into()));
    };
    let Some(i) = entries
        .iter()
        .position(|e| e.hash == hash && e.name == name)
    else {
        return Ok(None);
    };
    let e = entries.remove(i);
    b.write(logical, DirNode::Leaf { next, entries })?;
    Ok(Some(e))
}

/// Up to `max` entries with a hash above `cookie` (0 to start), in hash
/// order; the cookie to continue from is the hash of the last one. Entries
/// of one hash always come in one batch (they share a leaf).
///
/// The leaves are found by descending the index (to the cookie, then to
/// each leaf's upper bound), never by trusting the leaves' `next` links
/// alone: the walk moves strictly up the hash space, visits each leaf at
/// most once, and checks that every entry lies in the range the index gives
/// its leaf and that each `next` link names the leaf the index has next. A
/// link that loops, skips or ends early is an error naming the block, not
/// a spin or a listing silently cut short.
pub fn readdir(b: &mut dyn DirBlocks, cookie: u64, max: usize) -> Result<Vec<DirEntry>> {
    let mut out = Vec::new();
    if b.is_empty() {
        return Ok(out);
    }
    let mut seen = std::collections::HashSet::new();
    let mut at = cookie.saturating_add(1);
    // The leaf before, and the link it holds.
    let mut prev: Option<(u64, u64)> = None;
    loop {
        let (mut path, lo, hi) = descend_range(b, at)?;
        let Some((logical, DirNode::Leaf { next, entries })) = path.pop() else {
            return Err(bad("the walk did not end at a leaf".into()));
        };
        if let Some((p, link)) = prev {
            if link != logical {
                return Err(bad(format!(
                    "leaf {p} links to block {link}, but the index puts leaf {logical} next"
                )));
            }
        }
        if !seen.insert(logical) {
            return Err(bad(format!("leaf {logical} is reached twice")));
        }
        if let Some(e) = entries
            .iter()
            .find(|e| e.hash < lo || hi.is_some_and(|h| e.hash >= h))
        {
            return Err(bad(format!(
                "leaf {logical}: entry hash {:#x} outside the leaf's range",
                e.hash
            )));
        }
        let mut last_hash = None;
        for e in entries.into_iter().filter(|e| e.hash > cookie) {
            if out.len() >= max && last_hash != Some(e.hash) {
                return Ok(out);
            }
            last_hash = Some(e.hash);
            out.push(e);
        }
        match hi {
            None if next != 0 => {
                return Err(bad(format!(
                    "the last leaf {logical} links on to block {next}"
                )));
            }
            None => return Ok(out),
            Some(_) if next == 0 => {
                return Err(bad(format!(
                    "leaf {logical} ends the leaf chain, but the index has leaves after it"
                )));
            }
            Some(h) => {
                if out.len() >= max {
                    return Ok(out);
                }
                prev = Some((logical, next));
                at = h;
            }
        }
    }
}

#[cfg(test)]
mod tests;
