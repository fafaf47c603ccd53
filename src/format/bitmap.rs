//! Bitmap blocks (one bit per block or inode of a group, 1 = in use) and
//! the search for free runs.

/// True if bit `i` is set.
pub fn test(map: &[u8], i: usize) -> bool {
    map.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// Set bit `i` (ignored past the end).
pub fn set(map: &mut [u8], i: usize) {
    if let Some(b) = map.get_mut(i / 8) {
        *b |= 1 << (i % 8);
    }
}

/// Clear bit `i` (ignored past the end).
pub fn clear(map: &mut [u8], i: usize) {
    if let Some(b) = map.get_mut(i / 8) {
        *b &= !(1 << (i % 8));
    }
}

/// Set bits `[start, start + n)`.
pub fn set_range(map: &mut [u8], start: usize, n: usize) {
    for i in start..start + n {
        set(map, i);
    }
}

/// Set bits in `[start, start + n)`.
pub fn count_set(map: &[u8], start: usize, n: usize) -> usize {
    (start..start + n).filter(|&i| test(map, i)).count()
}

/// The first run of clear bits in `[from, limit)` of at least `want` bits,
/// or the longest one found if none is that long: `(start, len)`. Whole
/// words are skipped at a time, so a mostly full or mostly empty map is
/// scanned at memory speed.
pub fn find_free_run(map: &[u8], from: usize, limit: usize, want: usize) -> Option<(usize, usize)> {
    let limit = limit.min(map.len() * 8);
    let want = want.max(1);
    let mut best: Option<(usize, usize)> = None;
    let mut i = from;
    while i < limit {
        // Skip full bytes quickly.
        if i % 8 == 0 && map.get(i / 8) == Some(&0xff) {
            i += 8;
            continue;
        }
        if test(map, i) {
            i += 1;
            continue;
        }
        let start = i;
        while i < limit && !test(map, i) {
            if i % 8 == 0 && i + 8 <= limit && map.get(i / 8) == Some(&0) {
                i += 8;
            } else {
                i += 1;
            }
            if i - start >= want {
                return Some((start, want));
            }
        }
        let len = i - start;
        if best.is_none_or(|(_, l)| len > l) {
            best = Some((start, len));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_first_long_enough_run_else_longest() {
        let mut m = vec![0u8; 16];
        set_range(&mut m, 0, 10);
        set_range(&mut m, 13, 20);
        assert_eq!(find_free_run(&m, 0, 128, 3), Some((10, 3)));
        assert_eq!(find_free_run(&m, 0, 128, 50), Some((33, 50)));
        assert_eq!(find_free_run(&m, 0, 128, 200), Some((33, 95)));
        set_range(&mut m, 0, 128);
        assert_eq!(find_free_run(&m, 0, 128, 1), None);
        clear(&mut m, 127);
        assert_eq!(find_free_run(&m, 0, 128, 4), Some((127, 1)));
        assert_eq!(find_free_run(&m, 0, 127, 4), None, "limit is exclusive");
        assert_eq!(count_set(&m, 120, 8), 7);
    }
}
