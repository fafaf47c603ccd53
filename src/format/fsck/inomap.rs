//! A map from inode number to what fsck learned about it: the values in
//! one vector in inode order, found through a bit per inode number and a
//! running count per 64 of them (rank by popcount). Every lookup of passes
//! 2-4, one per directory entry, is then a few instructions instead of a
//! walk down a `BTreeMap` of a million keys, and the map costs 16 bytes per
//! 64 inode numbers beyond its values, so a sparse 1 TiB filesystem (134
//! million inode numbers, few in use) stays small.
//!
//! Pass 1 inserts in inode order, which appends. An insert out of order
//! (a repair making `/lost+found`) shifts the values after it.

/// Values for inode numbers `0..=max_ino`; a number outside (from a
/// damaged directory entry) is simply not there.
pub struct InoMap<T> {
    /// Bit `i` of word `c`: inode `64 * c + i` has a value.
    masks: Vec<u64>,
    /// Index in `vals` of the first value of word `c`, for `c < filled`.
    bases: Vec<usize>,
    /// Words `filled..` hold no value and their bases are not kept.
    filled: usize,
    vals: Vec<T>,
    max_ino: u64,
}

impl<T> InoMap<T> {
    /// An empty map for inode numbers up to `max_ino`.
    pub fn new(max_ino: u64) -> InoMap<T> {
        let words = usize::try_from(max_ino / 64).map_or(0, |w| w.saturating_add(1));
        InoMap {
            masks: vec![0; words],
            bases: vec![0; words],
            filled: 0,
            vals: Vec::new(),
            max_ino,
        }
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.vals.len()
    }

    /// The position of `ino`'s value in inode order (an index for arrays
    /// kept beside the map), if it has one.
    pub fn index(&self, ino: u64) -> Option<usize> {
        let c = usize::try_from(ino / 64).ok()?;
        let bit = ino % 64;
        let m = *self.masks.get(c)?;
        if m >> bit & 1 == 0 {
            return None;
        }
        let below = m & ((1u64 << bit) - 1);
        Some(self.bases.get(c)? + below.count_ones() as usize)
    }

    pub fn get(&self, ino: u64) -> Option<&T> {
        self.vals.get(self.index(ino)?)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut T> {
        let i = self.index(ino)?;
        self.vals.get_mut(i)
    }

    pub fn contains_key(&self, ino: u64) -> bool {
        self.index(ino).is_some()
    }

    /// Set `ino`'s value; a number beyond the map is ignored (the caller
    /// only inserts inodes it read from the tables, which are inside).
    pub fn insert(&mut self, ino: u64, v: T) {
        if let Some(old) = self.get_mut(ino) {
            *old = v;
            return;
        }
        let Ok(c) = usize::try_from(ino / 64) else {
            return;
        };
        if ino > self.max_ino {
            return;
        }
        if c >= self.masks.len() {
            return;
        }
        while self.filled <= c {
            if let Some(b) = self.bases.get_mut(self.filled) {
                *b = self.vals.len();
            }
            self.filled += 1;
        }
        let bit = ino % 64;
        let (Some(m), Some(&base)) = (self.masks.get_mut(c), self.bases.get(c)) else {
            return;
        };
        let at = base + (*m & ((1u64 << bit) - 1)).count_ones() as usize;
        *m |= 1 << bit;
        self.vals.insert(at, v);
        for b in self.bases.iter_mut().take(self.filled).skip(c + 1) {
            *b += 1;
        }
    }

    /// Inode numbers with a value, in order.
    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.masks
            .iter()
            .take(self.filled)
            .enumerate()
            .flat_map(|(c, &m)| {
                let mut m = m;
                std::iter::from_fn(move || {
                    if m == 0 {
                        return None;
                    }
                    let bit = u64::from(m.trailing_zeros());
                    m &= m - 1;
                    Some(c as u64 * 64 + bit)
                })
            })
    }

    /// (inode, value) in inode order; the n-th has index n.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> + '_ {
        self.keys().zip(self.vals.iter())
    }

    pub fn values(&self) -> impl Iterator<Item = &T> + '_ {
        self.vals.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_bounded() {
        let mut m = InoMap::new(200);
        m.insert(7, "b");
        m.insert(3, "a");
        m.insert(130, "d");
        m.insert(70, "c");
        m.insert(201, "beyond");
        m.insert(u64::MAX, "beyond");
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            vec![(3, &"a"), (7, &"b"), (70, &"c"), (130, &"d")]
        );
        assert!(m.contains_key(3) && !m.contains_key(4) && !m.contains_key(201));
        assert!(!m.contains_key(u64::MAX));
        *m.get_mut(7).unwrap() = "B";
        m.insert(130, "D");
        assert_eq!(
            m.values().copied().collect::<Vec<_>>(),
            vec!["a", "B", "c", "D"]
        );
        assert_eq!((m.index(70), m.len()), (Some(2), 4));
    }

    #[test]
    fn matches_a_btreemap() {
        let mut m = InoMap::new(5000);
        let mut model = std::collections::BTreeMap::new();
        let mut x = 12345u64;
        for _ in 0..3000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let ino = (x >> 33) % 5001;
            m.insert(ino, x);
            model.insert(ino, x);
        }
        assert_eq!(
            m.iter().map(|(i, v)| (i, *v)).collect::<Vec<_>>(),
            model.iter().map(|(i, v)| (*i, *v)).collect::<Vec<_>>()
        );
        for ino in 0..5100 {
            assert_eq!(m.get(ino), model.get(&ino));
        }
    }
}
