//! The mutator: structured damage with checksums recomputed (the parsers
//! see the bytes), and raw damage (bit flips, random bytes, zeroed blocks)
//! written through the engine, so the integrity tuples match and the
//! damage reaches the format layer rather than stopping at the engine.

use biofs::format::dev::Dev;
use biofs::format::dir::{name_hash, DirNode};
use biofs::format::extent::ExtentNode;
use biofs::format::image::Image;
use biofs::format::inode::{FileType, Inode, InodeData};
use biofs::format::BLOCK_SIZE;

use super::cases;
use super::rng::Rng;

/// An inode in use and what its blocks are.
struct Known {
    ino: u64,
    inode: Inode,
    /// Directory blocks (physical), extent-tree blocks, xattr block, a slow
    /// symlink's block.
    blocks: Vec<u64>,
    tree: Vec<u64>,
}

/// Inodes in use among the first few hundred, with their blocks.
fn census(img: &Image<'_>) -> Vec<Known> {
    let mut out = Vec::new();
    let last = img.geo.inodes_count().min(2000);
    for ino in 1..=last {
        let Ok(Some(inode)) = img.inode(ino) else {
            continue;
        };
        let scan = img.extents(ino, &inode);
        let mut blocks = Vec::new();
        if inode.file_type() != FileType::Regular {
            for e in &scan.extents {
                blocks.extend(e.physical..e.physical_end().min(e.physical + 64));
            }
        }
        if inode.xattr_block != 0 {
            blocks.push(inode.xattr_block);
        }
        out.push(Known {
            ino,
            inode,
            blocks,
            tree: scan.tree_blocks,
        });
    }
    out
}

/// Metadata blocks worth damaging.
fn interesting(img: &Image<'_>, known: &[Known]) -> Vec<u64> {
    let g = img.geo;
    let mut v = vec![0];
    v.extend(g.gdt_start..g.gdt_start + g.gdt_blocks);
    v.extend(g.journal_start..g.journal_start + g.journal_blocks.min(4));
    for grp in 0..g.groups.min(4) {
        v.push(g.block_bitmap(grp));
        v.push(g.inode_bitmap(grp));
        v.extend(g.itable_start(grp)..g.itable_start(grp) + 8);
    }
    for k in known {
        v.extend(&k.blocks);
        v.extend(&k.tree);
    }
    v
}

fn pick<'a, T>(rng: &mut Rng, v: &'a [T]) -> Option<&'a T> {
    if v.is_empty() {
        None
    } else {
        v.get(rng.below(v.len() as u64) as usize)
    }
}

/// A value for a 64-bit field: edge cases more often than chance would.
fn wild(rng: &mut Rng, near: u64) -> u64 {
    match rng.below(8) {
        0 => 0,
        1 => u64::MAX,
        2 => i64::MAX as u64,
        3 => 1 << 44,
        4 => (1 << 44) + 1,
        5 => near.wrapping_add(rng.below(5)).wrapping_sub(2),
        6 => rng.below(1 << 16),
        _ => rng.next_u64(),
    }
}

/// Damage the image on `dev` from `rng`; what was done, for the log.
pub fn damage(dev: &Dev, rng: &mut Rng) -> Vec<String> {
    let mut said = Vec::new();
    let img = match Image::open(dev, None) {
        Ok(i) => i,
        Err(e) => return vec![format!("image does not open: {e}")],
    };
    let known = census(&img);
    let blocks = interesting(&img, &known);
    let n = 1 + rng.below(3);
    for _ in 0..n {
        let what = if rng.one_in(3) {
            raw(dev, &blocks, rng)
        } else {
            structured(&img, &known, rng)
        };
        said.push(what);
    }
    said
}

fn raw(dev: &Dev, blocks: &[u64], rng: &mut Rng) -> String {
    let Some(&b) = pick(rng, blocks) else {
        return "nothing to damage".into();
    };
    let Ok(mut buf) = dev.read_block(b) else {
        return format!("block {b} unreadable");
    };
    let what = match rng.below(4) {
        0 => {
            buf.fill(0);
            format!("zeroed block {b}")
        }
        1 => {
            let at = rng.below(BLOCK_SIZE as u64) as usize;
            let len = (1 + rng.below(64) as usize).min(BLOCK_SIZE - at);
            rng.fill(&mut buf[at..at + len]);
            format!("random bytes at {b}+{at}..+{len}")
        }
        _ => {
            let flips = 1 + rng.below(8);
            for _ in 0..flips {
                let bit = rng.below(BLOCK_SIZE as u64 * 8);
                buf[(bit / 8) as usize] ^= 1 << (bit % 8);
            }
            format!("{flips} bit flips in block {b}")
        }
    };
    match dev.write_block(b, &buf) {
        Ok(()) => what,
        Err(e) => format!("{what}: write failed: {e}"),
    }
}

fn structured(img: &Image<'_>, known: &[Known], rng: &mut Rng) -> String {
    let Some(k) = pick(rng, known) else {
        return "no inode".into();
    };
    let ino = k.ino;
    let files: Vec<&Known> = known
        .iter()
        .filter(|k| k.inode.file_type() == FileType::Regular)
        .collect();
    let dirs: Vec<&Known> = known
        .iter()
        .filter(|k| k.inode.file_type() == FileType::Directory && k.inode.size > 4 * 4096)
        .collect();
    let r = match rng.below(12) {
        0 | 1 => inode_field(img, k, rng),
        2 => extent_root(img, k, rng),
        3 => node_block(img, k, rng),
        4 => dir_block(img, k, rng),
        5 => match pick(rng, &files) {
            Some(f) => {
                let depth = 1 + rng.below(5) as u16;
                cases::extent_bomb(img, f.ino, depth)
                    .map(|()| format!("extent bomb of depth {depth} in inode {}", f.ino))
            }
            None => Ok("no file".into()),
        },
        6 => match pick(rng, &dirs) {
            Some(d) => {
                let n = (d.inode.size / 4096) as usize;
                let (a, b) = (rng.below(n as u64) as usize, rng.below(n as u64) as usize);
                let (a, b) = (a.max(b), a.min(b));
                cases::dir_leaf_loop(img, d.ino, a, b)
                    .map(|()| format!("leaf chain of {} loops {a} -> {b}", d.ino))
            }
            None => Ok("no big directory".into()),
        },
        7 => match pick(rng, &dirs) {
            Some(d) => {
                let at = rng.below(4) as usize;
                cases::dir_leaf_cut(img, d.ino, at)
                    .map(|()| format!("leaf chain of {} cut at {at}", d.ino))
            }
            None => Ok("no big directory".into()),
        },
        8 => cases::zero_inode(img, ino).map(|()| format!("zeroed inode {ino}")),
        9 => orphans(img, known, rng),
        _ => {
            let size = wild(rng, k.inode.size);
            cases::set_size(img, ino, size).map(|()| format!("inode {ino} size {size}"))
        }
    };
    r.unwrap_or_else(|e| format!("(mutation failed: {e})"))
}

type R = biofs::format::error::Result<String>;

fn inode_field(img: &Image<'_>, k: &Known, rng: &mut Rng) -> R {
    let mut i = k.inode.clone();
    let what = match rng.below(9) {
        0 => {
            i.nlink = wild(rng, u64::from(i.nlink)) as u32;
            format!("nlink {}", i.nlink)
        }
        1 => {
            let types = [0o100000, 0o040000, 0o120000, 0o020000, 0o010000];
            i.mode = (i.mode & 0o7777) | types[rng.below(5) as usize];
            format!("mode {:o}", i.mode)
        }
        2 => {
            i.xattr_block = wild(rng, i.xattr_block);
            format!("xattr block {}", i.xattr_block)
        }
        3 => {
            i.rdev_or_parent = wild(rng, i.rdev_or_parent);
            format!("parent/rdev {}", i.rdev_or_parent)
        }
        4 => {
            i.orphan_next = wild(rng, i.orphan_next);
            format!("orphan_next {}", i.orphan_next)
        }
        5 => {
            i.blocks = wild(rng, i.blocks);
            format!("blocks {}", i.blocks)
        }
        6 => {
            i.flags = rng.below(4) as u16;
            format!("flags {}", i.flags)
        }
        7 => {
            i.data = InodeData::Symlink(vec![b'z'; 1 + rng.below(128) as usize]);
            "inline symlink data".into()
        }
        _ => {
            i.size = wild(rng, i.size);
            format!("size {}", i.size)
        }
    };
    img.write_inode(k.ino, Some(&i))?;
    Ok(format!("inode {}: {what}", k.ino))
}

fn tweak_node(node: &mut ExtentNode, rng: &mut Rng) -> String {
    match node {
        ExtentNode::Leaf(es) => {
            let at = rng.below(es.len().max(1) as u64) as usize;
            let Some(e) = es.get_mut(at) else {
                return "empty leaf".into();
            };
            match rng.below(4) {
                0 => e.physical = wild(rng, e.physical),
                1 => e.logical = wild(rng, e.logical),
                2 => e.len = wild(rng, u64::from(e.len)) as u32,
                _ => e.unwritten = !e.unwritten,
            }
            format!("extent {e:?}")
        }
        ExtentNode::Index { entries, depth } => {
            if rng.one_in(5) {
                *depth = rng.below(7) as u16;
                return format!("depth {depth}");
            }
            let n = entries.len() as u64;
            let Some(e) = entries.get_mut(rng.below(n.max(1)) as usize) else {
                return "empty index".into();
            };
            if rng.one_in(2) {
                e.child = wild(rng, e.child);
            } else {
                e.logical = wild(rng, e.logical);
            }
            format!("index entry {e:?}")
        }
    }
}

fn extent_root(img: &Image<'_>, k: &Known, rng: &mut Rng) -> R {
    let mut i = k.inode.clone();
    let InodeData::Extents(root) = &mut i.data else {
        return Ok("no extent root".into());
    };
    let what = tweak_node(root, rng);
    img.write_inode(k.ino, Some(&i))?;
    Ok(format!("inode {} root: {what}", k.ino))
}

fn node_block(img: &Image<'_>, k: &Known, rng: &mut Rng) -> R {
    let Some(&b) = pick(rng, &k.tree) else {
        return Ok("no tree block".into());
    };
    let raw = img.read("extent block", b)?;
    let mut node = ExtentNode::decode_block(img.seed, b, k.ino, &raw)?;
    let what = tweak_node(&mut node, rng);
    img.write("extent block", b, &node.encode_block(img.seed, b, k.ino))?;
    Ok(format!("extent block {b} of {}: {what}", k.ino))
}

fn dir_block(img: &Image<'_>, k: &Known, rng: &mut Rng) -> R {
    if k.inode.file_type() != FileType::Directory {
        return Ok("not a directory".into());
    }
    let Some(&b) = pick(rng, &k.blocks) else {
        return Ok("no directory block".into());
    };
    let raw = img.read("directory block", b)?;
    let Ok(mut node) = DirNode::decode(img.seed, img.sb.hash_seed, b, k.ino, &raw) else {
        return Ok("not a directory block".into());
    };
    let what = match &mut node {
        DirNode::Leaf { next, entries } => {
            let n = entries.len() as u64;
            match (rng.below(5), entries.get_mut(rng.below(n.max(1)) as usize)) {
                (0, _) | (_, None) => {
                    *next = wild(rng, *next);
                    format!("next {next}")
                }
                (1, Some(e)) => {
                    e.ino = wild(rng, e.ino).max(1);
                    format!("entry ino {}", e.ino)
                }
                (2, Some(e)) => {
                    e.ftype = FileType::Symlink;
                    "entry type".into()
                }
                (3, Some(e)) => {
                    e.name = format!("renamed-{}", rng.below(1000)).into_bytes();
                    e.hash = name_hash(img.sb.hash_seed, &e.name);
                    // Out of order now, perhaps: the decoder must say so.
                    "entry name".into()
                }
                (_, Some(e)) => {
                    e.hash = wild(rng, e.hash);
                    "entry hash".into()
                }
            }
        }
        DirNode::Node { depth, entries } => {
            let n = entries.len() as u64;
            match (rng.below(4), entries.get_mut(rng.below(n.max(1)) as usize)) {
                (0, _) | (_, None) => {
                    *depth = rng.below(8) as u16;
                    format!("depth {depth}")
                }
                (1, Some(e)) => {
                    e.child = wild(rng, e.child);
                    format!("child {}", e.child)
                }
                (_, Some(e)) => {
                    e.hash = wild(rng, e.hash);
                    format!("hash {}", e.hash)
                }
            }
        }
    };
    img.write("directory block", b, &node.encode(img.seed, b, k.ino))?;
    Ok(format!("directory block {b} of {}: {what}", k.ino))
}

/// An orphan list through inodes in use (perhaps a loop, perhaps linked).
fn orphans(img: &Image<'_>, known: &[Known], rng: &mut Rng) -> R {
    let chain: Vec<&Known> = (0..1 + rng.below(4))
        .filter_map(|_| pick(rng, known))
        .collect();
    let Some(first) = chain.first() else {
        return Ok("no inode".into());
    };
    for (i, k) in chain.iter().enumerate() {
        let mut inode = k.inode.clone();
        inode.orphan_next = match chain.get(i + 1) {
            Some(n) => n.ino,
            None if rng.one_in(2) => first.ino,
            None => 0,
        };
        if rng.one_in(2) {
            inode.nlink = 0;
        }
        img.write_inode(k.ino, Some(&inode))?;
    }
    let mut sb = img.sb.clone();
    sb.orphan_head = first.ino;
    img.write("superblock", 0, &sb.encode(0))?;
    let inos: Vec<u64> = chain.iter().map(|k| k.ino).collect();
    Ok(format!("orphan list {inos:?}"))
}
