//! A file's extent map in memory: the sorted, non-overlapping leaf extents
//! of its tree, and the edits the filesystem makes to it (map a range,
//! insert a new run, remove a range, convert unwritten blocks). The on-disk
//! tree is rebuilt from this list when the inode is written
//! ([`crate::format::extent::build_tree`]).

use crate::format::extent::{Extent, MAX_EXTENT_LEN};

/// What logical block `l` maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Not allocated, for `len` blocks (up to the next extent, or `u64::MAX`).
    Hole { len: u64 },
    /// Allocated at `physical`, `len` blocks on from `l`.
    Mapped {
        physical: u64,
        len: u64,
        unwritten: bool,
    },
}

/// Index of the first extent ending after `l`.
fn first_after(map: &[Extent], l: u64) -> usize {
    map.partition_point(|e| e.logical_end() <= l)
}

/// The mapping of logical block `l`.
pub fn lookup(map: &[Extent], l: u64) -> Mapping {
    let i = first_after(map, l);
    match map.get(i) {
        Some(e) if e.logical <= l => Mapping::Mapped {
            physical: e.physical + (l - e.logical),
            len: e.logical_end() - l,
            unwritten: e.unwritten,
        },
        Some(e) => Mapping::Hole { len: e.logical - l },
        None => Mapping::Hole { len: u64::MAX - l },
    }
}

/// Remove logical blocks `[from, to)`; returns the physical runs freed.
pub fn remove(map: &mut Vec<Extent>, from: u64, to: u64) -> Vec<(u64, u32)> {
    let mut freed = Vec::new();
    let mut out = Vec::with_capacity(map.len() + 1);
    for e in map.drain(..) {
        if e.logical_end() <= from || e.logical >= to {
            out.push(e);
            continue;
        }
        if e.logical < from {
            out.push(Extent {
                len: (from - e.logical) as u32,
                ..e
            });
        }
        let cut_lo = e.logical.max(from);
        let cut_hi = e.logical_end().min(to);
        freed.push((e.physical + (cut_lo - e.logical), (cut_hi - cut_lo) as u32));
        if e.logical_end() > to {
            out.push(Extent {
                logical: to,
                physical: e.physical + (to - e.logical),
                len: (e.logical_end() - to) as u32,
                unwritten: e.unwritten,
            });
        }
    }
    *map = out;
    freed
}

/// Map `[logical, logical+len)` to `physical..` (the range must be a hole),
/// merging with neighbours that continue it.
pub fn insert(map: &mut Vec<Extent>, new: Extent) {
    let i = first_after(map, new.logical);
    map.insert(i, new);
    merge_around(map, i);
}

/// Merge extent `i` with its neighbours where they are contiguous in both
/// logical and physical blocks, of the same kind, and fit one extent.
fn merge_around(map: &mut Vec<Extent>, i: usize) {
    let mut i = i;
    if let Some([prev, cur]) = i.checked_sub(1).and_then(|p| map.get_mut(p..=i)) {
        if can_merge(prev, cur) {
            prev.len += cur.len;
            map.remove(i);
            i -= 1;
        }
    }
    if let Some([cur, next]) = map.get_mut(i..i + 2) {
        if can_merge(cur, next) {
            cur.len += next.len;
            map.remove(i + 1);
        }
    }
}

fn can_merge(a: &Extent, b: &Extent) -> bool {
    a.logical_end() == b.logical
        && a.physical_end() == b.physical
        && a.unwritten == b.unwritten
        && u64::from(a.len) + u64::from(b.len) <= u64::from(MAX_EXTENT_LEN)
}

/// Mark `[from, to)` written (it must be mapped), splitting unwritten
/// extents at the edges.
pub fn mark_written(map: &mut Vec<Extent>, from: u64, to: u64) {
    let mut out = Vec::with_capacity(map.len() + 2);
    for e in map.drain(..) {
        if !e.unwritten || e.logical_end() <= from || e.logical >= to {
            out.push(e);
            continue;
        }
        let lo = e.logical.max(from);
        let hi = e.logical_end().min(to);
        if e.logical < lo {
            out.push(Extent {
                len: (lo - e.logical) as u32,
                ..e
            });
        }
        out.push(Extent {
            logical: lo,
            physical: e.physical + (lo - e.logical),
            len: (hi - lo) as u32,
            unwritten: false,
        });
        if e.logical_end() > hi {
            out.push(Extent {
                logical: hi,
                physical: e.physical + (hi - e.logical),
                len: (e.logical_end() - hi) as u32,
                unwritten: true,
            });
        }
    }
    *map = out;
    // Merge each extent into the one kept before it where they are contiguous.
    map.dedup_by(|next, prev| {
        let merge = can_merge(prev, next);
        if merge {
            prev.len += next.len;
        }
        merge
    });
}

/// Blocks mapped (written or not).
pub fn mapped_blocks(map: &[Extent]) -> u64 {
    map.iter().map(|e| u64::from(e.len)).sum()
}

/// The first logical block at or after `l` holding data (a written
/// extent), if any.
pub fn next_data(map: &[Extent], l: u64) -> Option<u64> {
    map.get(first_after(map, l)..)
        .unwrap_or_default()
        .iter()
        .find(|e| !e.unwritten)
        .map(|e| e.logical.max(l))
}

/// The first logical block at or after `l` that is not written data.
pub fn next_hole(map: &[Extent], l: u64) -> u64 {
    let mut at = l;
    for e in map.get(first_after(map, l)..).unwrap_or_default() {
        if e.logical > at || e.unwritten {
            return at;
        }
        at = e.logical_end();
    }
    at
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

    /// A model: logical block -> (physical, unwritten).
    fn model(map: &[Extent]) -> std::collections::BTreeMap<u64, (u64, bool)> {
        let mut m = std::collections::BTreeMap::new();
        for e in map {
            for k in 0..u64::from(e.len) {
                m.insert(e.logical + k, (e.physical + k, e.unwritten));
            }
        }
        m
    }

    #[test]
    fn insert_merges_contiguous_runs_and_lookup_sees_holes() {
        let mut m = Vec::new();
        insert(&mut m, ext(0, 100, 4));
        insert(&mut m, ext(4, 104, 4));
        insert(&mut m, ext(10, 200, 2));
        assert_eq!(m, vec![ext(0, 100, 8), ext(10, 200, 2)]);
        assert_eq!(lookup(&m, 8), Mapping::Hole { len: 2 });
        assert_eq!(
            lookup(&m, 3),
            Mapping::Mapped {
                physical: 103,
                len: 5,
                unwritten: false
            }
        );
        assert_eq!(lookup(&m, 12), Mapping::Hole { len: u64::MAX - 12 });
    }

    #[test]
    fn remove_splits_and_returns_the_freed_runs() {
        let mut m = vec![ext(0, 100, 10), ext(20, 300, 5)];
        let freed = remove(&mut m, 3, 22);
        assert_eq!(freed, vec![(103, 7), (300, 2)]);
        assert_eq!(m, vec![ext(0, 100, 3), ext(22, 302, 3)]);
        let freed = remove(&mut m, 0, u64::MAX);
        assert_eq!(freed, vec![(100, 3), (302, 3)]);
        assert!(m.is_empty());
    }

    #[test]
    fn mark_written_splits_an_unwritten_extent_and_merges_back() {
        let mut m = vec![Extent {
            unwritten: true,
            ..ext(0, 50, 10)
        }];
        mark_written(&mut m, 2, 4);
        let md = model(&m);
        assert_eq!(md[&1], (51, true));
        assert_eq!(md[&2], (52, false));
        assert_eq!(md[&4], (54, true));
        assert_eq!(m.len(), 3);
        mark_written(&mut m, 0, 10);
        assert_eq!(m, vec![ext(0, 50, 10)]);
        assert_eq!(next_hole(&m, 0), 10);
    }

    #[test]
    fn seek_data_and_hole() {
        let m = vec![
            ext(2, 10, 2),
            Extent {
                unwritten: true,
                ..ext(4, 12, 2)
            },
            ext(8, 20, 1),
        ];
        assert_eq!(next_data(&m, 0), Some(2));
        assert_eq!(next_data(&m, 3), Some(3));
        assert_eq!(next_data(&m, 4), Some(8));
        assert_eq!(next_data(&m, 9), None);
        assert_eq!(next_hole(&m, 2), 4);
        assert_eq!(next_hole(&m, 0), 0);
        assert_eq!(next_hole(&m, 8), 9);
    }
}
