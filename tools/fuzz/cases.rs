//! Hostile images built by construction: the structured damage of issue 13
//! (an extent tree whose index entries all share one child, directory leaf
//! chains that loop or end early, a zeroed inode slot, sizes past the
//! format's limits), every checksum valid, so the parsers see the bytes.
//! Shared by `tests/hostile_images.rs` (the named regression tests) and the
//! fuzzer (`tools/fuzz/main.rs`), which applies them at random.

use biofs::format::dir::DirNode;
use biofs::format::error::{FormatError, Result};
use biofs::format::extent::{ExtentNode, IndexEntry};
use biofs::format::image::Image;
use biofs::format::inode::InodeData;

/// `n` free data blocks from the end of the filesystem (never handed out
/// on the small, mostly empty images the tests and the fuzzer use).
pub fn spare_blocks(img: &Image<'_>, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut b = img.geo.blocks_count;
    while out.len() < n && b > 1 {
        b -= 1;
        if img.geo.is_data_block(b) {
            out.push(b);
        }
    }
    out
}

/// Replace inode `ino`'s extent tree by a "tree bomb" of `depth` levels
/// (1..=5): the root's 7 entries all point at one node, whose 254 entries
/// all point at one node, and so on down to one empty leaf: 7 x 254^(depth-1)
/// paths over `depth` blocks. A walker without a visited set reads them all.
pub fn extent_bomb(img: &Image<'_>, ino: u64, depth: u16) -> Result<()> {
    let mut inode = img
        .inode(ino)?
        .ok_or_else(|| FormatError::invalid("extent bomb", "inode is free"))?;
    let blocks = spare_blocks(img, usize::from(depth));
    // blocks[k] holds the node of depth k (0: the leaf).
    let leaf = ExtentNode::Leaf(Vec::new());
    let b0 = *blocks
        .first()
        .ok_or_else(|| FormatError::invalid("bomb", "no block"))?;
    img.write("extent block", b0, &leaf.encode_block(img.seed, b0, ino))?;
    // Logical spans: a node of depth k covers 254^k blocks, entries 254^(k-1) apart.
    let span = |k: u32| 254u64.saturating_pow(k);
    for k in 1..depth {
        let b = blocks[usize::from(k)];
        let child = blocks[usize::from(k) - 1];
        let entries = (0..254u64)
            .map(|i| IndexEntry {
                logical: i * span(u32::from(k) - 1),
                child,
            })
            .collect();
        let node = ExtentNode::Index { depth: k, entries };
        img.write("extent block", b, &node.encode_block(img.seed, b, ino))?;
    }
    let top = blocks[usize::from(depth) - 1];
    let step = span(u32::from(depth) - 1).min(biofs::format::MAX_FILE_BLOCKS / 8);
    let root = ExtentNode::Index {
        depth,
        entries: (0..7u64)
            .map(|i| IndexEntry {
                logical: i * step,
                child: top,
            })
            .collect(),
    };
    inode.data = InodeData::Extents(root);
    img.write_inode(ino, Some(&inode))
}

/// The leaves of directory `dir` in index order: (logical, physical).
pub fn dir_leaves(img: &Image<'_>, dir: u64) -> Result<Vec<(u64, u64)>> {
    let inode = img
        .inode(dir)?
        .ok_or_else(|| FormatError::invalid("dir", "inode is free"))?;
    let ext = img.extents(dir, &inode).extents;
    let scan = img.dir_entries(dir, &inode, &ext);
    Ok(scan
        .leaves
        .iter()
        .filter_map(|&(l, _)| Image::map(&ext, l).map(|p| (l, p)))
        .collect())
}

/// Set the `next` link of the leaf at physical block `phys` of `dir`.
pub fn set_leaf_next(img: &Image<'_>, dir: u64, phys: u64, to: u64) -> Result<()> {
    let raw = img.read("directory block", phys)?;
    let node = DirNode::decode(img.seed, img.sb.hash_seed, phys, dir, &raw)?;
    let DirNode::Leaf { entries, .. } = node else {
        return Err(FormatError::invalid("dir", "not a leaf"));
    };
    let leaf = DirNode::Leaf { next: to, entries };
    img.write("directory block", phys, &leaf.encode(img.seed, phys, dir))
}

/// Make leaf number `k` (in index order) of `dir` link back to leaf
/// `back_to` (itself when equal): the chain loops.
pub fn dir_leaf_loop(img: &Image<'_>, dir: u64, k: usize, back_to: usize) -> Result<()> {
    let leaves = dir_leaves(img, dir)?;
    let (Some(&(_, phys)), Some(&(target, _))) = (leaves.get(k), leaves.get(back_to)) else {
        return Err(FormatError::invalid("dir", "not that many leaves"));
    };
    set_leaf_next(img, dir, phys, target)
}

/// End `dir`'s leaf chain at leaf number `k`: its `next` becomes 0.
pub fn dir_leaf_cut(img: &Image<'_>, dir: u64, k: usize) -> Result<()> {
    let leaves = dir_leaves(img, dir)?;
    let &(_, phys) = leaves
        .get(k)
        .ok_or_else(|| FormatError::invalid("dir", "not that many leaves"))?;
    set_leaf_next(img, dir, phys, 0)
}

/// Zero inode `ino`'s slot (a free inode: zero has no checksum).
pub fn zero_inode(img: &Image<'_>, ino: u64) -> Result<()> {
    img.write_inode(ino, None)
}

/// Set inode `ino`'s size, with a valid checksum.
pub fn set_size(img: &Image<'_>, ino: u64, size: u64) -> Result<()> {
    let mut inode = img
        .inode(ino)?
        .ok_or_else(|| FormatError::invalid("set size", "inode is free"))?;
    inode.size = size;
    img.write_inode(ino, Some(&inode))
}

/// An orphan list that loops: the superblock names `a`, `a` names `b`,
/// `b` names `a`. `a` gets link count 0 (the mount frees it), `b` keeps its
/// links.
pub fn orphan_loop(img: &Image<'_>, a: u64, b: u64) -> Result<()> {
    for (ino, next, nlink0) in [(a, b, true), (b, a, false)] {
        let mut inode = img
            .inode(ino)?
            .ok_or_else(|| FormatError::invalid("orphan loop", "inode is free"))?;
        inode.orphan_next = next;
        if nlink0 {
            inode.nlink = 0;
        }
        img.write_inode(ino, Some(&inode))?;
    }
    let mut sb = img.sb.clone();
    sb.orphan_head = a;
    img.write("superblock", 0, &sb.encode(0))
}

/// Set inode `ino`'s block count, with a valid checksum.
pub fn set_blocks(img: &Image<'_>, ino: u64, blocks: u64) -> Result<()> {
    let mut inode = img
        .inode(ino)?
        .ok_or_else(|| FormatError::invalid("set blocks", "inode is free"))?;
    inode.blocks = blocks;
    img.write_inode(ino, Some(&inode))
}

/// Move the first entry of leaf 1 (in index order) of `dir` into leaf 0:
/// every block valid on its own, but the entry lies outside the hash
/// range the index gives its leaf, where lookups never look.
pub fn dir_entry_out_of_range(img: &Image<'_>, dir: u64) -> Result<()> {
    let leaves = dir_leaves(img, dir)?;
    let (Some(&(_, p0)), Some(&(_, p1))) = (leaves.first(), leaves.get(1)) else {
        return Err(FormatError::invalid("dir", "fewer than two leaves"));
    };
    let read = |p: u64| -> Result<(u64, Vec<biofs::format::dir::DirEntry>)> {
        let raw = img.read("directory block", p)?;
        match DirNode::decode(img.seed, img.sb.hash_seed, p, dir, &raw)? {
            DirNode::Leaf { next, entries } => Ok((next, entries)),
            DirNode::Node { .. } => Err(FormatError::invalid("dir", "not a leaf")),
        }
    };
    let (n0, mut e0) = read(p0)?;
    let (n1, mut e1) = read(p1)?;
    if e1.is_empty() {
        return Err(FormatError::invalid("dir", "leaf 1 is empty"));
    }
    e0.push(e1.remove(0));
    let l0 = DirNode::Leaf {
        next: n0,
        entries: e0,
    };
    let l1 = DirNode::Leaf {
        next: n1,
        entries: e1,
    };
    img.write("directory block", p0, &l0.encode(img.seed, p0, dir))?;
    img.write("directory block", p1, &l1.encode(img.seed, p1, dir))
}
