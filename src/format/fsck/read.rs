//! Readahead for fsck: many blocks read with several bios in flight, as
//! e2fsck reads ahead inode tables and directory blocks, instead of one
//! synchronous bio after another ([`Dev::read_pages`] waits for each bio of
//! 256 blocks before it submits the next; [`Dev::read_block`] for each block).
//!
//! The bios go to the device's queue like any other read, so a device with
//! integrity tuples verifies them as [`Dev::read_pages`] would. A range that
//! fails comes back as `None`: the caller reads it again block by block
//! through [`super::Image::read`], which names the bad block and its error.

use std::collections::HashMap;

use crossbeam_channel::{unbounded, Receiver};

use crate::block::{plug, Bio, Page, ReqOp, Sector, SECTOR_SHIFT};

use super::super::dev::Dev;
use super::super::{BLOCK_SIZE, BLOCK_SIZE_U64};

/// Sectors per filesystem block.
const BLOCK_SECTORS: u64 = BLOCK_SIZE_U64 >> SECTOR_SHIFT;
/// Blocks per bio (as [`Dev::read_pages`]).
const MAX_BIO_BLOCKS: u64 = 256;

/// Reads submitted and not yet waited for. Dropping it without
/// [`Readahead::wait`] is fine: the bios complete into a channel nobody
/// reads, and their pages are freed with it.
pub struct Readahead {
    /// (first block, blocks) of each bio, by the index its completion sends.
    pieces: Vec<(u64, u64)>,
    /// Pieces that could not be submitted (beyond the device): failed.
    refused: Vec<usize>,
    rx: Receiver<(usize, Bio)>,
}

/// One range as read: its pages, or `None` if any bio of it failed.
pub struct Range {
    pub start: u64,
    pub pages: Option<Vec<Page>>,
}

impl Readahead {
    /// Submit reads of `runs` (first block, blocks), in bios of at most 256
    /// blocks, all at once; the queue's workers take them in parallel.
    /// A run that is not wholly inside the device is not submitted and
    /// reads as failed.
    pub fn submit(dev: &Dev, runs: &[(u64, u64)]) -> Readahead {
        let (tx, rx) = unbounded();
        let mut ra = Readahead {
            pieces: Vec::new(),
            refused: Vec::new(),
            rx,
        };
        for &(start, n) in runs {
            let mut b = start;
            let end = start.saturating_add(n);
            while b < end {
                let k = (end - b).min(MAX_BIO_BLOCKS);
                let idx = ra.pieces.len();
                ra.pieces.push((b, k));
                if b.checked_add(k).is_none_or(|e| e > dev.blocks()) {
                    ra.refused.push(idx);
                    b += k;
                    continue;
                }
                let mut bio = Bio::new(ReqOp::Read, Sector(b * BLOCK_SECTORS), k as usize);
                for _ in 0..k {
                    // Filled whole by the read, or dropped if it fails.
                    bio.add_page(Page::new_for_overwrite(), BLOCK_SIZE as u32, 0);
                }
                let tx = tx.clone();
                bio.set_end_io(move |bio| {
                    let _ = tx.send((idx, bio));
                });
                dev.queue().submit_bio(bio);
                b += k;
            }
        }
        plug::flush_current();
        ra
    }

    /// Wait for every piece; the pieces in the order submitted, each with
    /// its pages or `None` if it failed.
    pub fn wait(self) -> Vec<Range> {
        let mut out: Vec<Range> = self
            .pieces
            .iter()
            .map(|&(start, _)| Range { start, pages: None })
            .collect();
        let expect = self.pieces.len() - self.refused.len();
        for _ in 0..expect {
            // Every submitted bio ends exactly once (its Drop backstop
            // ends it with an error if nothing else did).
            let Ok((idx, mut bio)) = self.rx.recv() else {
                break;
            };
            if bio.status().is_ok() {
                let pages: Vec<Page> = bio.take_segments().into_iter().map(|s| s.page).collect();
                if let Some(r) = out.get_mut(idx) {
                    r.pages = Some(pages);
                }
            }
        }
        out
    }

    /// [`Readahead::wait`], as a map from block to its page; blocks of
    /// failed pieces are missing.
    pub fn wait_map(self) -> HashMap<u64, Page> {
        let ranges = self.wait();
        let mut map = HashMap::with_capacity(ranges.iter().map(|r| r.len()).sum());
        for r in ranges {
            for (b, p) in (r.start..).zip(r.pages.into_iter().flatten()) {
                map.insert(b, p);
            }
        }
        map
    }
}

impl Range {
    fn len(&self) -> usize {
        self.pages.as_ref().map_or(0, Vec::len)
    }
}

/// Sorted, deduplicated `blocks` as runs of consecutive blocks.
pub fn runs_of(blocks: &mut Vec<u64>) -> Vec<(u64, u64)> {
    blocks.sort_unstable();
    blocks.dedup();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &b in blocks.iter() {
        match runs.last_mut() {
            Some((s, n)) if *s + *n == b => *n += 1,
            _ => runs.push((b, 1)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_merges_neighbours() {
        let mut v = vec![9, 3, 4, 5, 9, 11, 12];
        assert_eq!(runs_of(&mut v), vec![(3, 3), (9, 1), (11, 2)]);
    }
}
