//! Pass 2's directory walk over blocks read ahead.
//!
//! The same walk and the same checks as [`Image::dir_entries`] (every
//! message the same), but each block comes from a map of blocks read ahead
//! in large batches ([`super::read::Readahead`]) where it holds it, and
//! through [`Image::read`] (the overlay, then the device, one block) where
//! it does not: a block whose batch failed is read alone, so its error is
//! the one `Image::read` gives. `Image::dir_entries` reads one block per
//! bio, synchronously, which for a million entries in thousands of
//! directories is most of pass 2.

use std::collections::{HashMap, HashSet};

use crate::block::Page;

use super::super::dir::DirNode;
use super::super::error::Result;
use super::super::extent::Extent;
use super::super::image::{DirScan, Image};
use super::super::inode::Inode;

/// Blocks of directories read ahead; the overlay of a read-only check
/// still comes first, as in [`Image::read`].
pub struct Blocks<'m> {
    pub pages: &'m HashMap<u64, Page>,
}

impl Blocks<'_> {
    fn read(&self, img: &Image<'_>, b: u64) -> Result<Vec<u8>> {
        if !img.overlay.contains_key(&b) {
            if let Some(p) = self.pages.get(&b) {
                return Ok(p.as_slice().to_vec());
            }
        }
        img.read("directory block", b)
    }
}

/// Every entry of directory `ino` (whose extents are `extents`), as
/// [`Image::dir_entries`].
pub fn dir_entries(
    img: &Image<'_>,
    blocks: &Blocks<'_>,
    ino: u64,
    inode: &Inode,
    extents: &[Extent],
) -> DirScan {
    let mut scan = DirScan::default();
    if inode.size == 0 {
        return scan;
    }
    let mut seen = HashSet::new();
    let mut w = Walk {
        img,
        blocks,
        ino,
        extents,
        seen: &mut seen,
        scan: &mut scan,
    };
    w.walk(0, None, (0, u64::MAX));
    // readdir follows the leaves' links: they must chain the leaves in
    // index order and end with 0.
    let chain_ok = scan
        .leaves
        .iter()
        .zip(scan.leaves.iter().skip(1))
        .all(|(a, b)| a.1 == b.0)
        && scan.leaves.last().is_none_or(|l| l.1 == 0);
    if !chain_ok {
        scan.problems
            .push("directory leaves are not linked in order".into());
    }
    scan
}

/// The walk's state, threaded through the recursion.
struct Walk<'a, 'i, 'd> {
    img: &'a Image<'d>,
    blocks: &'a Blocks<'i>,
    ino: u64,
    extents: &'a [Extent],
    seen: &'a mut HashSet<u64>,
    scan: &'a mut DirScan,
}

impl Walk<'_, '_, '_> {
    fn walk(&mut self, logical: u64, parent_depth: Option<u16>, (lo, hi): (u64, u64)) {
        if !self.seen.insert(logical) {
            self.scan
                .problems
                .push(format!("directory block {logical} is referenced twice"));
            return;
        }
        let Some(phys) = Image::map(self.extents, logical) else {
            self.scan
                .problems
                .push(format!("directory block {logical} is not mapped"));
            return;
        };
        let node = self.blocks.read(self.img, phys).and_then(|raw| {
            DirNode::decode(self.img.seed, self.img.sb.hash_seed, phys, self.ino, &raw)
        });
        match node {
            Err(e) if !e.is_corruption() => {
                self.scan
                    .fatal
                    .get_or_insert(format!("directory block {logical}: {e}"));
            }
            Err(e) => self
                .scan
                .problems
                .push(format!("directory block {logical}: {e}")),
            Ok(DirNode::Leaf { entries, next }) => {
                self.scan.leaves.push((logical, next));
                if parent_depth.is_some_and(|d| d != 1) {
                    self.scan
                        .problems
                        .push(format!("directory leaf {logical} at the wrong depth"));
                }
                // Lookups descend by hash and readdir checks it: an entry
                // outside its leaf's range is found by neither.
                if let Some(e) = entries.iter().find(|e| e.hash < lo || e.hash >= hi) {
                    self.scan.problems.push(format!(
                        "directory leaf {logical}: entry hash {:#x} outside the leaf's range",
                        e.hash
                    ));
                }
                self.scan.entries.extend(entries);
            }
            Ok(DirNode::Node { depth, entries }) => {
                if parent_depth.is_some_and(|d| d != depth + 1) {
                    self.scan
                        .problems
                        .push(format!("directory node {logical} at the wrong depth"));
                    return;
                }
                for (i, e) in entries.iter().enumerate() {
                    let end = entries.get(i + 1).map_or(hi, |n| n.hash);
                    let start = if i == 0 { lo } else { e.hash };
                    self.walk(e.child, Some(depth), (start, end));
                }
            }
        }
    }
}
