//! The integrity payload a bio carries (`struct bio_integrity_payload`).
//! Filled in with the integrity profiles.

/// Tuples for each integrity interval a bio covers.
pub struct BioIntegrity {
    pub(crate) interval_size: u32,
    pub(crate) tuples: Vec<[u8; 8]>,
}

impl BioIntegrity {
    /// Split off the tuples of the first `bytes` (`bio_integrity_trim()` +
    /// `bio_integrity_advance()`).
    pub(crate) fn split_front(&mut self, bytes: u32) -> BioIntegrity {
        let n = (bytes / self.interval_size.max(1)) as usize;
        let rest = self.tuples.split_off(n.min(self.tuples.len()));
        let front = std::mem::replace(&mut self.tuples, rest);
        BioIntegrity {
            interval_size: self.interval_size,
            tuples: front,
        }
    }
}
