//! Metadata transactions over the journal (docs/format.md, crash
//! consistency rules 2-5): a running transaction collects new images of
//! metadata blocks and revokes; `commit` logs them (nothing is written home
//! before that); committed images stay in memory, and win over the device
//! on reads, until `checkpoint` writes them home, flushes, and empties the
//! log.
//!
//! Rule 1 (ordered data) is the caller's: complete the data writes a
//! transaction's extents point to before committing it (the commit's flush
//! then covers them). Rule 4 (don't reuse a block freed in a transaction
//! before it commits) is the allocator's.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::buffer::MetaBuf;
use crate::format::dev::{BioError, Dev};
use crate::format::error::{FormatError, Result};
use crate::format::journal::Journal;
use crate::format::superblock::{Superblock, INCOMPAT_RECOVER, STATE_CLEAN};
use crate::format::BLOCK_SIZE;

/// A running transaction: new images and revokes, not yet logged.
#[derive(Debug, Default)]
pub struct Txn {
    images: BTreeMap<u64, MetaBuf>,
    revokes: Vec<u64>,
}

impl Txn {
    /// Give block `b` the contents `data` (4096 bytes) in this transaction
    /// (a revoke of `b` in it is then cancelled by `Journal::commit`).
    pub fn write(&mut self, b: u64, data: Vec<u8>) {
        self.images.insert(b, MetaBuf::from(data));
    }

    /// Block `b` is freed: images of it older than this transaction must
    /// not be replayed (a block logged and freed here keeps no image).
    pub fn revoke(&mut self, b: u64) {
        self.images.remove(&b);
        if !self.revokes.contains(&b) {
            self.revokes.push(b);
        }
    }

    /// The image this transaction gives `b`, if any.
    pub fn image(&self, b: u64) -> Option<&MetaBuf> {
        self.images.get(&b)
    }

    /// The images this transaction gives, by block.
    pub fn images(&self) -> impl Iterator<Item = (u64, &MetaBuf)> + '_ {
        self.images.iter().map(|(b, i)| (*b, i))
    }

    /// The blocks this transaction revokes.
    pub fn revokes(&self) -> &[u64] {
        &self.revokes
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty() && self.revokes.is_empty()
    }

    /// Log blocks this transaction takes.
    pub fn log_blocks(&self) -> u64 {
        Journal::blocks_needed(self.images.len(), self.revokes.len())
    }
}

/// Metadata blocks as a transaction sees them: what allocation and the
/// filesystem's structures read and write through.
pub trait MetaIo {
    /// The latest contents of block `b`, shared: a caller that changes
    /// the block copies it (`to_vec()`) and writes the copy.
    fn read_meta(&mut self, b: u64) -> Result<MetaBuf>;
    /// Give block `b` the contents `data` in the running transaction.
    fn write_meta(&mut self, b: u64, data: Vec<u8>);
    /// Block `b` (metadata) is freed in the running transaction.
    fn revoke_meta(&mut self, b: u64);
}

/// A transaction over the journal, without caching: reads see the
/// transaction's images, then the journal's.
pub struct InTxn<'a> {
    pub j: &'a Journaled,
    pub txn: &'a mut Txn,
}

impl<'a> InTxn<'a> {
    pub fn new(j: &'a Journaled, txn: &'a mut Txn) -> InTxn<'a> {
        InTxn { j, txn }
    }
}

impl MetaIo for InTxn<'_> {
    fn read_meta(&mut self, b: u64) -> Result<MetaBuf> {
        match self.txn.image(b) {
            Some(img) => Ok(img.clone()),
            None => self.j.read(b),
        }
    }
    fn write_meta(&mut self, b: u64, data: Vec<u8>) {
        self.txn.write(b, data);
    }
    fn revoke_meta(&mut self, b: u64) {
        self.txn.revoke(b);
    }
}

/// The journaled metadata of a mounted filesystem.
pub struct Journaled {
    dev: Arc<Dev>,
    journal: Journal,
    /// Superblock as on disk (for its seed and layout).
    sb: Superblock,
    /// Committed images not yet written home.
    committed: BTreeMap<u64, MetaBuf>,
    /// Log blocks in use since the last checkpoint.
    log_used: u64,
    /// Opened read-only: nothing is ever written.
    read_only: bool,
    closed: bool,
}

impl Journaled {
    /// Open for writing: replay whatever the log holds (a crash), then set
    /// `INCOMPAT_RECOVER` and clear `STATE_CLEAN` on disk, durably, so that
    /// until a clean close every reader knows to recover first.
    pub fn open(dev: Arc<Dev>, mut sb: Superblock) -> Result<Journaled> {
        let mut journal = Journal::open(&dev, &sb)?;
        if journal.needs_recovery() {
            journal.replay(&dev)?;
            // The superblock may have been replayed.
            let raw = dev
                .read_block(0)
                .map_err(|e| FormatError::io("superblock", 0, e))?;
            sb = Superblock::decode(&raw, 0)?;
        }
        sb.incompat |= INCOMPAT_RECOVER;
        sb.state &= !STATE_CLEAN;
        write_superblock(&dev, &sb)?;
        Ok(Journaled {
            dev,
            journal,
            sb,
            committed: BTreeMap::new(),
            log_used: 0,
            read_only: false,
            closed: false,
        })
    }

    /// Open without writing anything: fails if the log holds transactions
    /// to replay (a read-only mount can't recover).
    pub fn open_read_only(dev: Arc<Dev>, sb: Superblock) -> Result<Journaled> {
        let journal = Journal::open(&dev, &sb)?;
        if journal.needs_recovery() || sb.incompat & INCOMPAT_RECOVER != 0 {
            return Err(FormatError::invalid(
                "journal",
                "the filesystem needs recovery: mount it read-write once, or run fsck.biofs",
            ));
        }
        Ok(Journaled {
            dev,
            journal,
            sb,
            committed: BTreeMap::new(),
            log_used: 0,
            read_only: true,
            closed: false,
        })
    }

    /// The latest contents of block `b`: committed but not yet at home,
    /// else the device's.
    pub fn read(&self, b: u64) -> Result<MetaBuf> {
        if let Some(img) = self.committed.get(&b) {
            return Ok(img.clone());
        }
        self.dev
            .read_block(b)
            .map(MetaBuf::from)
            .map_err(|e| FormatError::io("metadata", b, e))
    }

    /// The committed image of `b` not yet written home, if any.
    pub fn committed_image(&self, b: u64) -> Option<&MetaBuf> {
        self.committed.get(&b)
    }

    /// The device under the journal.
    pub fn dev(&self) -> &Arc<Dev> {
        &self.dev
    }

    /// The superblock as this open found it (after any replay).
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// Log blocks used since the last checkpoint, and the journal's size.
    pub fn log_usage(&self) -> (u64, u64) {
        (self.log_used, self.sb.journal_blocks)
    }

    /// Log `txn` durably. When this returns, a crash keeps the whole
    /// transaction; before, none of it. Checkpoints first if the log would
    /// be more than half full.
    pub fn commit(&mut self, txn: Txn) -> Result<()> {
        if txn.is_empty() {
            return Ok(());
        }
        if self.read_only || self.closed {
            return Err(FormatError::invalid(
                "transaction",
                "the journal is not writable",
            ));
        }
        let need = txn.log_blocks();
        let room = self.sb.journal_blocks.saturating_sub(1);
        if need >= room {
            return Err(FormatError::invalid(
                "transaction",
                format!("{need} log blocks is more than the journal's {room}"),
            ));
        }
        if self.log_used + need > room / 2 {
            self.checkpoint()?;
        }
        let images: Vec<(u64, MetaBuf)> = txn.images.into_iter().collect();
        if images.iter().any(|(_, d)| d.len() != BLOCK_SIZE) {
            return Err(FormatError::invalid(
                "transaction",
                "an image is not one block",
            ));
        }
        self.journal.commit(&self.dev, &images, &txn.revokes)?;
        self.log_used += need;
        for b in &txn.revokes {
            self.committed.remove(b);
        }
        self.committed.extend(images);
        Ok(())
    }

    /// Write every committed image home, flush, and empty the log.
    pub fn checkpoint(&mut self) -> Result<()> {
        if self.read_only
            || self.closed
            || (self.committed.is_empty() && !self.journal.needs_recovery())
        {
            return Ok(());
        }
        // One batch, sorted by block (as jbd2's checkpoint submits its
        // buffers together), instead of a synchronous write each.
        let homes: Vec<(u64, &[u8])> = self
            .committed
            .iter()
            .map(|(b, d)| (*b, d.as_ref()))
            .collect();
        self.dev.write_batch(&homes).map_err(|e| {
            let b = BioError::block_of(&e).unwrap_or(0);
            FormatError::io("checkpoint", b, e)
        })?;
        // `reset` flushes the homes before it empties the log.
        self.journal.reset(&self.dev)?;
        self.committed.clear();
        self.log_used = 0;
        Ok(())
    }

    /// Checkpoint, then mark the filesystem clean with no recovery needed.
    /// Nothing is written after (or by a read-only open).
    pub fn close(&mut self) -> Result<()> {
        if self.read_only || self.closed {
            return Ok(());
        }
        self.checkpoint()?;
        self.closed = true;
        let raw = self.read(0)?;
        let mut sb = Superblock::decode(&raw, 0)?;
        sb.incompat &= !INCOMPAT_RECOVER;
        sb.state |= STATE_CLEAN;
        write_superblock(&self.dev, &sb)
    }
}

/// Write the superblock (primary, then backup) and flush.
fn write_superblock(dev: &Dev, sb: &Superblock) -> Result<()> {
    let geo = sb.geometry()?;
    let backup = geo.backup_block();
    dev.write_block(backup, &sb.encode(backup))
        .map_err(|e| FormatError::io("backup superblock", backup, e))?;
    dev.write_blocks(0, &[&sb.encode(0)], true)
        .map_err(|e| FormatError::io("superblock", 0, e))?;
    dev.flush().map_err(|e| FormatError::io("flush", 0, e))
}
