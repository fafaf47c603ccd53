//! Building a large I/O one page at a time, never failing.
//!
//! Counterpart of the `bio_chain()` proposal (Adam J. Richter, 2002,
//! `shared/seeds/bio_chain-proposal.txt`): code that builds a big I/O adds
//! pages one by one and never sees an allocation failure nor thinks about
//! segment limits. When the current bio is full or the next page is not
//! contiguous, the builder submits it (chained to one parent that completes
//! when every piece has) and continues in a new bio. A new bio comes from the
//! bio set without waiting if it can; otherwise the builder unplugs, so its
//! own submitted bios can complete, and waits for one to be freed — the
//! proposal's "wait for the old bio to complete and reuse it". Limits are the
//! queue's business: it splits at submission.
//!
//! Consecutive bios merge in O(1): the builder plugs, and the plug's merge
//! index tries the request the previous bio went into first (the
//! last-merge hint, `q->last_merge`) before any lookup.

use super::bio::{bio_chain, bio_endio, Bio};
use super::bioset::{BioSet, Gfp};
use super::ioc::IoPrio;
use super::page::Page;
use super::plug::{self, Plug};
use super::queue::Queue;
use super::types::{BlkStatus, ReqFlags, ReqOp, Sector};

/// Builds one logical I/O out of as many bios as it takes.
pub struct BioBuilder<'a> {
    queue: &'a Queue,
    set: &'a BioSet,
    cur: Option<Bio>,
    parent: Bio,
    nr_vecs: usize,
    submitted: usize,
    _plug: Plug,
}

impl<'a> BioBuilder<'a> {
    /// Start an I/O of `op` with `flags` and `ioprio`; `end_io` runs once
    /// when every page added has been done, with the first error any piece
    /// saw (check [`Bio::status`] and [`Bio::error_sector`]).
    pub fn new(
        queue: &'a Queue,
        set: &'a BioSet,
        op: ReqOp,
        flags: ReqFlags,
        ioprio: IoPrio,
        end_io: impl FnOnce(Bio) + Send + 'static,
    ) -> BioBuilder<'a> {
        let mut parent = Bio::new(op, Sector(0), 1);
        parent.set_flags(flags);
        parent.set_ioprio(ioprio);
        parent.set_end_io(end_io);
        BioBuilder {
            queue,
            set,
            cur: None,
            parent,
            nr_vecs: 64,
            submitted: 0,
            _plug: Plug::new(),
        }
    }

    /// Add `len` bytes at `offset` of `page`, to go to `sector`. Never
    /// fails: a range that is not inside the page is recorded as an
    /// `Invalid` error on the whole I/O instead.
    pub fn add_page(&mut self, sector: Sector, page: Page, len: u32, offset: u32) {
        if let Some(cur) = self.cur.as_mut() {
            if cur.end_sector() == sector && cur.add_page(page.clone(), len, offset) == len {
                return;
            }
            self.submit_current();
        }
        let mut bio = self.alloc(sector);
        if bio.add_page(page, len, offset) != len {
            self.parent.set_status(BlkStatus::Invalid, Some(sector));
            return;
        }
        self.cur = Some(bio);
    }

    /// Bios submitted so far.
    pub fn bios_submitted(&self) -> usize {
        self.submitted
    }

    /// Submit what is left; the completion runs once everything is done.
    pub fn finish(mut self) {
        self.submit_current();
        let parent = std::mem::replace(&mut self.parent, Bio::new(ReqOp::Read, Sector(0), 1));
        bio_endio(parent);
        // Dropping `self` ends the plug and sends the last batch.
    }

    fn alloc(&mut self, sector: Sector) -> Bio {
        let op = self.parent.op();
        let mut bio = match self.set.alloc(op, sector, self.nr_vecs, Gfp::NoWait) {
            Some(bio) => bio,
            None => {
                // Let our own bios reach the device so that one can be freed.
                plug::flush_current();
                self.set
                    .alloc(op, sector, self.nr_vecs, Gfp::Wait)
                    .unwrap_or_else(|| Bio::new(op, sector, self.nr_vecs))
            }
        };
        // A preflush is needed once, before the first piece; FUA and the
        // rest apply to every piece.
        let mut flags = self.parent.flags();
        if self.submitted > 0 || self.cur.is_some() {
            flags = flags.without(ReqFlags::PREFLUSH);
        }
        bio.set_flags(flags);
        bio.set_ioprio(self.parent.ioprio());
        bio
    }

    fn submit_current(&mut self) {
        if let Some(mut bio) = self.cur.take() {
            // A bio of our own, never chained before: chaining can't fail.
            if bio_chain(&mut bio, &mut self.parent).is_err() {
                self.parent
                    .set_status(BlkStatus::Invalid, Some(bio.sector()));
                return;
            }
            self.submitted += 1;
            self.queue.submit_bio(bio);
        }
    }
}
