use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;
use crate::format::dir::name_hash;
use crate::format::inode::FileType;

const SEED: u64 = 0x5EED;

/// A directory's blocks in a map; every write is encoded and decoded, so
/// that a node that would not fit its block or not decode is caught.
#[derive(Default)]
struct MapBlocks {
    nodes: HashMap<u64, DirNode>,
    next: u64,
    /// Skip the decode check (entries with forged hashes don't decode).
    forged: bool,
}

impl DirBlocks for MapBlocks {
    fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
    fn read(&mut self, logical: u64) -> Result<DirNode> {
        self.nodes
            .get(&logical)
            .cloned()
            .ok_or_else(|| bad(format!("block {logical} missing")))
    }
    fn write(&mut self, logical: u64, node: DirNode) -> Result<()> {
        assert!(node.fits(), "node at {logical} does not fit a block");
        if !self.forged {
            let raw = node.encode(7, 1000 + logical, 42);
            let back = DirNode::decode(7, SEED, 1000 + logical, 42, &raw).expect("decodes");
            assert_eq!(back, node);
        }
        self.nodes.insert(logical, node);
        self.next = self.next.max(logical + 1);
        Ok(())
    }
    fn alloc(&mut self) -> Result<u64> {
        self.next = self.next.max(1);
        let l = self.next;
        self.next += 1;
        Ok(l)
    }
}

fn entry(name: &str, ino: u64) -> DirEntry {
    DirEntry::new(SEED, name.as_bytes(), ino, FileType::Regular)
}

/// Everything the tree holds, by walking readdir from cookie 0 in small
/// batches (which also checks cookies resume correctly).
fn all(b: &mut MapBlocks) -> Vec<DirEntry> {
    let mut out: Vec<DirEntry> = Vec::new();
    let mut cookie = 0;
    loop {
        let batch = readdir(b, cookie, 7).unwrap();
        let Some(last) = batch.last() else { break };
        cookie = last.hash;
        out.extend(batch);
    }
    out
}

/// The tree's shape, as fsck checks it: depths, every entry inside its
/// index range, and the leaves linked in index order ending with 0.
fn check_shape(b: &mut MapBlocks) {
    if b.is_empty() {
        return;
    }
    fn walk(
        b: &mut MapBlocks,
        l: u64,
        lo: u64,
        hi: u64,
        depth: Option<u16>,
        leaves: &mut Vec<(u64, u64)>,
    ) {
        match b.read(l).unwrap() {
            DirNode::Leaf { next, entries } => {
                assert!(
                    depth.is_none_or(|d| d == 1),
                    "leaf {l} under depth {depth:?}"
                );
                assert!(
                    entries.iter().all(|e| e.hash >= lo && e.hash < hi),
                    "leaf {l} out of range"
                );
                leaves.push((l, next));
            }
            DirNode::Node { depth: d, entries } => {
                assert!(
                    depth.is_none_or(|p| p == d + 1),
                    "node {l} at the wrong depth"
                );
                assert!(!entries.is_empty());
                for (i, e) in entries.iter().enumerate() {
                    let end = entries.get(i + 1).map_or(hi, |n| n.hash);
                    let start = if i == 0 { lo } else { e.hash };
                    walk(b, e.child, start, end, Some(d), leaves);
                }
            }
        }
    }
    let mut leaves = Vec::new();
    walk(b, 0, 0, u64::MAX, None, &mut leaves);
    for w in leaves.windows(2) {
        assert_eq!(w[0].1, w[1].0, "leaf links out of order");
    }
    assert_eq!(leaves.last().map(|l| l.1), Some(0));
}

fn check_against(b: &mut MapBlocks, model: &BTreeMap<String, u64>) {
    check_shape(b);
    let listed = all(b);
    let mut names: Vec<(String, u64)> = listed
        .iter()
        .map(|e| (String::from_utf8(e.name.clone()).unwrap(), e.ino))
        .collect();
    // Hash order, no duplicates.
    assert!(listed.windows(2).all(|w| w[0].key() < w[1].key()));
    names.sort();
    let want: Vec<(String, u64)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
    assert_eq!(names, want);
    for (name, ino) in model {
        let h = name_hash(SEED, name.as_bytes());
        assert_eq!(
            lookup(b, h, name.as_bytes()).unwrap().map(|e| e.ino),
            Some(*ino),
            "{name}"
        );
    }
}

#[test]
fn ten_thousand_names_grow_the_tree_and_stay_found() {
    let mut b = MapBlocks::default();
    let mut model = BTreeMap::new();
    for i in 0..10_000u64 {
        let name = format!("file-with-a-longer-name-{i}");
        insert(&mut b, entry(&name, i + 10)).unwrap();
        model.insert(name, i + 10);
    }
    assert!(matches!(b.read(0).unwrap(), DirNode::Node { depth, .. } if depth >= 1));
    check_against(&mut b, &model);
    assert!(matches!(
        insert(&mut b, entry("file-with-a-longer-name-5", 1)),
        Err(DirError::Exists)
    ));
    for i in (0..10_000u64).step_by(3) {
        let name = format!("file-with-a-longer-name-{i}");
        let h = name_hash(SEED, name.as_bytes());
        assert_eq!(
            remove(&mut b, h, name.as_bytes()).unwrap().map(|e| e.ino),
            Some(i + 10)
        );
        model.remove(&name);
    }
    check_against(&mut b, &model);
    assert_eq!(remove(&mut b, 5, b"nope").unwrap(), None);
}

#[test]
fn forty_thousand_long_names_split_interior_nodes() {
    let mut b = MapBlocks::default();
    let mut model = BTreeMap::new();
    let pad = "p".repeat(90);
    for i in 0..40_000u64 {
        let name = format!("{i}-{pad}");
        insert(&mut b, entry(&name, i + 10)).unwrap();
        model.insert(name, i + 10);
    }
    assert!(
        matches!(b.read(0).unwrap(), DirNode::Node { depth: 2, .. }),
        "root: {:?}",
        b.read(0).map(|n| n.used())
    );
    check_against(&mut b, &model);
}

#[test]
fn entries_of_one_hash_stay_in_one_leaf() {
    // Forge entries sharing a hash (as a collision would): the split must
    // keep them together.
    let mut b = MapBlocks {
        forged: true,
        ..MapBlocks::default()
    };
    for i in 0..200u64 {
        insert(
            &mut b,
            entry(&format!("n{i:04}-padding-padding-padding"), i + 1),
        )
        .unwrap();
    }
    let h = 1 << 40;
    for i in 0..20u64 {
        let mut e = entry(&format!("collide-{i}"), 1000 + i);
        e.hash = h;
        insert(&mut b, e).unwrap();
    }
    for i in 200..400u64 {
        insert(
            &mut b,
            entry(&format!("n{i:04}-padding-padding-padding"), i + 1),
        )
        .unwrap();
    }
    let mut holders = 0;
    for node in b.nodes.values() {
        if let DirNode::Leaf { entries, .. } = node {
            if entries.iter().any(|e| e.hash == h) {
                assert_eq!(entries.iter().filter(|e| e.hash == h).count(), 20);
                holders += 1;
            }
        }
    }
    assert_eq!(holders, 1);
    // readdir returns them in one batch even with a small batch size.
    let batch = readdir(&mut b, h - 1, 1).unwrap();
    assert_eq!(batch.iter().filter(|e| e.hash == h).count(), 20);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_inserts_and_removes_match_a_model(
        ops in proptest::collection::vec((any::<bool>(), 0u32..3000, 1usize..60), 1..1500)
    ) {
        let mut b = MapBlocks::default();
        let mut model: BTreeMap<String, u64> = BTreeMap::new();
        for (add, n, pad) in ops {
            let name = format!("{n}-{}", "x".repeat(pad));
            let h = name_hash(SEED, name.as_bytes());
            if add {
                let r = insert(&mut b, entry(&name, u64::from(n) + 3));
                match model.entry(name) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        prop_assert!(matches!(r, Err(DirError::Exists)));
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        prop_assert!(r.is_ok());
                        v.insert(u64::from(n) + 3);
                    }
                }
            } else {
                let r = remove(&mut b, h, name.as_bytes()).unwrap();
                prop_assert_eq!(r.map(|e| e.ino), model.remove(&name));
            }
        }
        check_against(&mut b, &model);
    }
}
