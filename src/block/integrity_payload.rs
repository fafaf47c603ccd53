//! The integrity payload a bio carries: one tuple per integrity interval.
//!
//! Counterpart of `struct bio_integrity_payload` and of
//! `bio_integrity_prep()` / `bio_integrity_verify_fn()` /
//! `bio_integrity_trim()` / `bio_integrity_advance()` (block/bio-integrity.c).
//! A write's tuples are generated at submission, from the data as it is then
//! (pages under writeback are stable, see `page.rs`); they travel with the
//! bio, are trimmed and advanced with it when it is split, and are stored by
//! the queue worker once the data is written. A read's tuples are loaded by
//! the queue worker after the data arrives (as a device fills the PI buffer)
//! and checked by a verify worker before the bio completes.

use super::bio::Bio;
use super::integrity::{IntegrityProfile, Tuple};
use super::types::{Sector, SECTOR_SHIFT};

/// Tuples for the intervals a bio covers, first to last.
pub struct BioIntegrity {
    pub(crate) interval_size: u32,
    pub(crate) tuples: Vec<Tuple>,
}

impl BioIntegrity {
    /// Generate the tuples of a write bio's data (`bio_integrity_prep()`
    /// with `generate_fn`). The bio is aligned to the interval size (the
    /// queue checks it before calling).
    pub(crate) fn generate(profile: &IntegrityProfile, bio: &Bio) -> BioIntegrity {
        let isize = profile.interval_size() as u32;
        let first = profile.interval_of(bio.sector().0);
        let mut tuples = Vec::with_capacity((bio.size() / isize.max(1)) as usize);
        walk_intervals(bio, isize as usize, |i, pieces| {
            let mut h = profile.hasher(first + i as u64);
            for p in pieces {
                h.update(p);
            }
            tuples.push(h.finish());
            true
        });
        BioIntegrity {
            interval_size: isize,
            tuples,
        }
    }

    /// An empty payload to be filled with stored tuples for a read.
    pub(crate) fn for_read(profile: &IntegrityProfile, bio: &Bio) -> BioIntegrity {
        let isize = profile.interval_size() as u32;
        BioIntegrity {
            interval_size: isize,
            tuples: vec![Tuple::UNWRITTEN; (bio.size() / isize) as usize],
        }
    }

    /// Split off the tuples of the first `bytes` (`bio_integrity_trim()` on
    /// the front, `bio_integrity_advance()` on the rest).
    pub(crate) fn split_front(&mut self, bytes: u32) -> BioIntegrity {
        let n = (bytes / self.interval_size.max(1)) as usize;
        let rest = self.tuples.split_off(n.min(self.tuples.len()));
        let front = std::mem::replace(&mut self.tuples, rest);
        BioIntegrity {
            interval_size: self.interval_size,
            tuples: front,
        }
    }

    pub(crate) fn tuples(&self) -> &[Tuple] {
        &self.tuples
    }
}

/// Check a read bio's data against the tuples loaded into its payload
/// (`bio_integrity_verify_fn()`). Returns the number of intervals checked
/// and the first sector whose interval did not match, if any.
pub(crate) fn verify(profile: &IntegrityProfile, bio: &Bio) -> (u64, Option<Sector>) {
    let Some(payload) = bio.integrity.as_ref() else {
        return (0, None);
    };
    let first = profile.interval_of(bio.sector().0);
    let spi = profile.sectors_per_interval();
    let mut checked = 0;
    let mut bad = None;
    walk_intervals(bio, profile.interval_size(), |i, pieces| {
        checked += 1;
        let stored = payload.tuples.get(i).copied().unwrap_or(Tuple::UNWRITTEN);
        if profile.verify(first + i as u64, pieces, stored) {
            return true;
        }
        bad = Some(Sector(bio.sector().0 + i as u64 * spi));
        false
    });
    (checked, bad)
}

/// Call `f(index, pieces)` for each interval of the bio's current data, in
/// order, with the interval's bytes as the slices of the segments they sit
/// in. Stops early when `f` returns false.
fn walk_intervals(bio: &Bio, interval_size: usize, mut f: impl FnMut(usize, &[&[u8]]) -> bool) {
    let mut pieces: Vec<&[u8]> = Vec::with_capacity(4);
    let mut have = 0usize;
    let mut index = 0usize;
    for seg in bio.cur_segments() {
        let mut data = seg.as_slice();
        while !data.is_empty() {
            let take = (interval_size - have).min(data.len());
            let (piece, rest) = data.split_at_checked(take).unwrap_or((data, &[]));
            pieces.push(piece);
            have += take;
            data = rest;
            if have == interval_size {
                if !f(index, &pieces) {
                    return;
                }
                pieces.clear();
                have = 0;
                index += 1;
            }
        }
    }
}

/// The intervals a range of sectors covers: (first interval, count).
pub(crate) fn interval_range(profile: &IntegrityProfile, sector: Sector, bytes: u64) -> (u64, u64) {
    let first = profile.interval_of(sector.0);
    let count = (bytes >> SECTOR_SHIFT) / profile.sectors_per_interval();
    (first, count)
}
