//! The journal: a circular physical redo log of metadata blocks (JBD2's
//! design, simplified).
//!
//! Block 0 of the journal area is the journal superblock; the rest is the
//! log. A transaction is written as descriptor blocks (each listing up to
//! [`TAGS_PER_BLOCK`] target block numbers, followed by those blocks'
//! new contents), optional revoke blocks, and a commit block carrying a
//! CRC32C over every block image of the transaction. The commit is written
//! only after everything before it is on stable storage, so a transaction
//! whose commit is present and whose CRC matches is whole. Replay walks the
//! log from the superblock's `start`, stops at the first block that is not
//! the next expected one, and writes the images of complete transactions to
//! their homes, skipping blocks revoked (freed) by the same or a later
//! transaction.

use super::codec::{Reader, Writer};
use super::dev::{BioError, Dev};
use super::error::{FormatError, Result};
use super::superblock::Superblock;
use super::{block_csum, BLOCK_SIZE};

/// Magic of the journal superblock.
pub const SB_MAGIC: [u8; 8] = *b"BIOFSJNL";
/// Magic of every log block header.
pub const LOG_MAGIC: u32 = 0x4A42_494F;
const HDR: usize = 24;
const CSUM_OFF: usize = 20;
/// Sequence numbers stay at most this, so that the sequence arithmetic of
/// scan, replay and commit can't overflow (2^63 transactions take 290,000
/// years at a million a second): a journal superblock may hold it, no
/// transaction has it.
pub const MAX_SEQ: u64 = 1 << 63;
/// Block numbers per descriptor or revoke block.
pub const TAGS_PER_BLOCK: usize = (BLOCK_SIZE - HDR) / 8;

const T_DESCRIPTOR: u32 = 1;
const T_COMMIT: u32 = 2;
const T_REVOKE: u32 = 3;

/// The journal superblock: where the live part of the log starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalSuper {
    /// Blocks of the journal area (superblock included).
    pub len: u64,
    /// Log index (1..len) of the oldest transaction to replay; 0: the log
    /// is empty (everything is checkpointed).
    pub start: u64,
    /// Sequence number of the transaction at `start` (or of the next one).
    pub seq: u64,
}

impl JournalSuper {
    pub fn encode(&self, seed: u32, block: u64) -> Vec<u8> {
        let mut buf = vec![0u8; BLOCK_SIZE];
        let mut w = Writer(&mut buf);
        w.bytes(0, &SB_MAGIC);
        w.u32(8, BLOCK_SIZE as u32);
        w.u64(24, self.len);
        w.u64(32, self.start);
        w.u64(40, self.seq);
        let csum = block_csum(seed, block, &buf, CSUM_OFF);
        Writer(&mut buf).u32(CSUM_OFF, csum);
        buf
    }

    pub fn decode(seed: u32, block: u64, expect_len: u64, raw: &[u8]) -> Result<JournalSuper> {
        let r = Reader(raw);
        if raw.len() < BLOCK_SIZE || r.bytes::<8>(0) != SB_MAGIC {
            return Err(FormatError::BadMagic {
                what: "journal superblock",
                block,
            });
        }
        let (stored, computed) = (r.u32(CSUM_OFF), block_csum(seed, block, raw, CSUM_OFF));
        FormatError::check_csum("journal superblock at block", block, stored, computed)?;
        let j = JournalSuper {
            len: r.u64(24),
            start: r.u64(32),
            seq: r.u64(40),
        };
        if j.len != expect_len || j.start >= j.len || r.u32(8) as usize != BLOCK_SIZE {
            return Err(FormatError::invalid(
                "journal superblock",
                format!(
                    "length {} (superblock says {expect_len}), start {}",
                    j.len, j.start
                ),
            ));
        }
        if j.seq > MAX_SEQ {
            return Err(FormatError::invalid(
                "journal superblock",
                format!("sequence number {} is beyond {MAX_SEQ}", j.seq),
            ));
        }
        Ok(j)
    }
}

/// A decoded log block header.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LogBlock {
    Descriptor(Vec<u64>),
    Revoke(Vec<u64>),
    Commit { count: u32, data_crc: u32 },
}

fn encode_log(seed: u32, block: u64, seq: u64, b: &LogBlock) -> Vec<u8> {
    let mut buf = vec![0u8; BLOCK_SIZE];
    let mut w = Writer(&mut buf);
    w.u32(0, LOG_MAGIC);
    w.u64(8, seq);
    match b {
        LogBlock::Descriptor(tags) | LogBlock::Revoke(tags) => {
            w.u32(
                4,
                if matches!(b, LogBlock::Descriptor(_)) {
                    T_DESCRIPTOR
                } else {
                    T_REVOKE
                },
            );
            w.u32(16, tags.len() as u32);
            for (i, t) in tags.iter().enumerate().take(TAGS_PER_BLOCK) {
                w.u64(HDR + i * 8, *t);
            }
        }
        LogBlock::Commit { count, data_crc } => {
            w.u32(4, T_COMMIT);
            w.u32(16, *count);
            w.u32(24, *data_crc);
        }
    }
    let csum = block_csum(seed, block, &buf, CSUM_OFF);
    Writer(&mut buf).u32(CSUM_OFF, csum);
    buf
}

/// The log block at `block` if it is a valid block of transaction `seq`.
fn decode_log(seed: u32, block: u64, seq: u64, raw: &[u8]) -> Option<LogBlock> {
    let r = Reader(raw);
    if raw.len() < BLOCK_SIZE
        || r.u32(0) != LOG_MAGIC
        || r.u64(8) != seq
        || r.u32(CSUM_OFF) != block_csum(seed, block, raw, CSUM_OFF)
    {
        return None;
    }
    let count = r.u32(16);
    match r.u32(4) {
        T_DESCRIPTOR | T_REVOKE if count as usize <= TAGS_PER_BLOCK => {
            let tags = (0..count as usize).map(|i| r.u64(HDR + i * 8)).collect();
            Some(if r.u32(4) == T_DESCRIPTOR {
                LogBlock::Descriptor(tags)
            } else {
                LogBlock::Revoke(tags)
            })
        }
        T_COMMIT => Some(LogBlock::Commit {
            count,
            data_crc: r.u32(24),
        }),
        _ => None,
    }
}

/// The journal of a filesystem: its place and the log positions.
pub struct Journal {
    seed: u32,
    /// First block of the journal area (its superblock).
    area: u64,
    pub sb: JournalSuper,
    /// Log index where the next transaction goes.
    head: u64,
    /// Sequence number of the next transaction.
    next_seq: u64,
    /// Blocks a filesystem transaction may target: `[0, blocks_count)`
    /// outside the journal.
    blocks_count: u64,
}

/// What replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub transactions: u64,
    pub blocks: u64,
    pub revoked: u64,
}

impl Journal {
    /// Read the journal superblock of the filesystem `sb` describes.
    pub fn open(dev: &Dev, sb: &Superblock) -> Result<Journal> {
        let raw = dev
            .read_block(sb.journal_start)
            .map_err(|e| FormatError::io("journal superblock", sb.journal_start, e))?;
        let jsb = JournalSuper::decode(sb.seed(), sb.journal_start, sb.journal_blocks, &raw)?;
        let mut j = Journal {
            seed: sb.seed(),
            area: sb.journal_start,
            head: 1,
            next_seq: jsb.seq,
            sb: jsb,
            blocks_count: sb.blocks_count,
        };
        if j.sb.start != 0 {
            let (txns, end) = j.scan(dev)?;
            j.head = end;
            j.next_seq = j.sb.seq + txns.len() as u64;
        }
        Ok(j)
    }

    /// Write an empty journal (mkfs, or fsck rebuilding a damaged one).
    pub fn format(dev: &Dev, sb: &Superblock, seq: u64) -> Result<()> {
        let jsb = JournalSuper {
            len: sb.journal_blocks,
            start: 0,
            seq,
        };
        dev.write_block(sb.journal_start, &jsb.encode(sb.seed(), sb.journal_start))
            .map_err(|e| FormatError::io("journal superblock", sb.journal_start, e))
    }

    /// True if there are transactions to replay.
    pub fn needs_recovery(&self) -> bool {
        self.sb.start != 0
    }

    fn log_block(&self, idx: u64) -> u64 {
        self.area + idx
    }

    fn next(&self, idx: u64) -> u64 {
        if idx + 1 >= self.sb.len {
            1
        } else {
            idx + 1
        }
    }

    fn target_ok(&self, b: u64) -> bool {
        b < self.blocks_count && !(self.area..self.area + self.sb.len).contains(&b)
    }

    /// Log blocks a transaction of `blocks` images and `revokes` takes.
    pub fn blocks_needed(blocks: usize, revokes: usize) -> u64 {
        (blocks.div_ceil(TAGS_PER_BLOCK) + blocks + revokes.div_ceil(TAGS_PER_BLOCK) + 1) as u64
    }

    /// Append and commit one transaction: the new contents of `blocks`
    /// (block number, 4 KiB image) and the `revokes` (blocks freed, whose
    /// older images must not be replayed). When this returns Ok, the
    /// transaction survives a crash. The homes are not written: replay (or
    /// the filesystem's checkpoint) does that.
    pub fn commit<B: AsRef<[u8]>>(
        &mut self,
        dev: &Dev,
        blocks: &[(u64, B)],
        revokes: &[u64],
    ) -> Result<u64> {
        // A block freed and logged again in one transaction keeps its new
        // image: its revoke is cancelled (JBD2's cancel_revoke), or replay
        // would skip the image (a revoke covers its own transaction).
        let logged: std::collections::HashSet<u64> = blocks.iter().map(|(b, _)| *b).collect();
        let revokes: Vec<u64> = revokes
            .iter()
            .copied()
            .filter(|b| !logged.contains(b))
            .collect();
        let revokes = revokes.as_slice();
        if self.next_seq >= MAX_SEQ {
            return Err(FormatError::invalid(
                "journal",
                "sequence numbers exhausted",
            ));
        }
        let need = Journal::blocks_needed(blocks.len(), revokes.len());
        let used = if self.sb.start == 0 {
            0
        } else if self.head >= self.sb.start {
            self.head - self.sb.start
        } else {
            self.sb.len - 1 - (self.sb.start - self.head)
        };
        if used + need >= self.sb.len - 1 {
            return Err(FormatError::invalid(
                "journal",
                format!(
                    "a transaction of {need} blocks does not fit ({used} of {} in use)",
                    self.sb.len - 1
                ),
            ));
        }
        for &(b, ref data) in blocks {
            if !self.target_ok(b) || data.as_ref().len() != BLOCK_SIZE {
                return Err(FormatError::invalid(
                    "journal",
                    format!("can't log block {b}"),
                ));
            }
        }
        let seq = self.next_seq;
        let first = self.head;
        let mut pos = self.head;
        let mut crc = 0u32;
        let io = |e, b| FormatError::io("journal write", b, e);
        // Every log block of the transaction goes out as one batch (as
        // jbd2's commit submits its buffers under a plug), then one flush,
        // then the commit block with FUA.
        let mut headers: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut images: Vec<(u64, &[u8])> = Vec::with_capacity(blocks.len());
        for chunk in blocks.chunks(TAGS_PER_BLOCK) {
            let tags = chunk.iter().map(|(b, _)| *b).collect();
            let at = self.log_block(pos);
            headers.push((
                at,
                encode_log(self.seed, at, seq, &LogBlock::Descriptor(tags)),
            ));
            pos = self.next(pos);
            for (_, data) in chunk {
                let at = self.log_block(pos);
                crc = crc32c::crc32c_append(crc, data.as_ref());
                images.push((at, data.as_ref()));
                pos = self.next(pos);
            }
        }
        for chunk in revokes.chunks(TAGS_PER_BLOCK) {
            let at = self.log_block(pos);
            headers.push((
                at,
                encode_log(self.seed, at, seq, &LogBlock::Revoke(chunk.to_vec())),
            ));
            pos = self.next(pos);
        }
        images.extend(headers.iter().map(|(at, d)| (*at, d.as_slice())));
        dev.write_batch(&images).map_err(|e| {
            let b = BioError::block_of(&e).unwrap_or(first);
            io(e, b)
        })?;
        dev.flush().map_err(|e| io(e, self.area))?;
        if self.sb.start == 0 {
            // The log becomes live: point the superblock at it first.
            self.sb.start = first;
            self.sb.seq = seq;
            self.write_super(dev)?;
        }
        let at = self.log_block(pos);
        let commit = encode_log(
            self.seed,
            at,
            seq,
            &LogBlock::Commit {
                count: blocks.len() as u32,
                data_crc: crc,
            },
        );
        dev.write_blocks(at, &[&commit], true)
            .map_err(|e| io(e, at))?;
        self.head = self.next(pos);
        self.next_seq = seq + 1;
        Ok(seq)
    }

    fn write_super(&self, dev: &Dev) -> Result<()> {
        dev.write_blocks(self.area, &[&self.sb.encode(self.seed, self.area)], true)
            .map_err(|e| FormatError::io("journal superblock", self.area, e))
    }

    /// Replay every complete transaction to its home, then mark the log
    /// empty. Idempotent: a crash during replay replays again.
    pub fn replay(&mut self, dev: &Dev) -> Result<ReplayReport> {
        let mut report = ReplayReport::default();
        if self.sb.start == 0 {
            return Ok(report);
        }
        let (txns, _) = self.scan(dev)?;
        let (images, revoked) = images_to_replay(&txns);
        report.revoked = revoked;
        for (target, log) in images {
            let data = dev
                .read_block(log)
                .map_err(|e| FormatError::io("journal read", log, e))?;
            dev.write_block(target, &data)
                .map_err(|e| FormatError::io("journal replay", target, e))?;
            report.blocks += 1;
        }
        report.transactions = txns.len() as u64;
        dev.flush()
            .map_err(|e| FormatError::io("journal replay flush", self.area, e))?;
        self.sb.seq += txns.len() as u64;
        self.sb.start = 0;
        self.head = 1;
        self.next_seq = self.sb.seq;
        self.write_super(dev)?;
        Ok(report)
    }

    /// The complete transactions of the live log, in order, and the log
    /// index just after the last one. Never fails on damaged log contents:
    /// the log ends at the first block that is not what it must be.
    pub fn scan(&self, dev: &Dev) -> Result<(Vec<Txn>, u64)> {
        let mut out = Vec::new();
        if self.sb.start == 0 {
            return Ok((out, 1));
        }
        let mut end = self.sb.start;
        let mut pos = self.sb.start;
        let mut seq = self.sb.seq;
        let max_steps = self.sb.len;
        let mut steps = 0u64;
        'txn: loop {
            let mut txn = Txn {
                seq,
                blocks: Vec::new(),
                revokes: Vec::new(),
            };
            let mut crc = 0u32;
            loop {
                if steps >= max_steps || seq >= MAX_SEQ {
                    break 'txn;
                }
                let at = self.log_block(pos);
                let raw = match dev.read_block(at) {
                    Ok(r) => r,
                    // An unreadable block ends the log like a torn one.
                    Err(_) => break 'txn,
                };
                let Some(lb) = decode_log(self.seed, at, seq, &raw) else {
                    break 'txn;
                };
                pos = self.next(pos);
                steps += 1;
                match lb {
                    LogBlock::Descriptor(tags) => {
                        for t in tags {
                            if !self.target_ok(t) || steps >= max_steps {
                                break 'txn;
                            }
                            let at = self.log_block(pos);
                            let Ok(data) = dev.read_block(at) else {
                                break 'txn;
                            };
                            crc = crc32c::crc32c_append(crc, &data);
                            txn.blocks.push((t, at));
                            pos = self.next(pos);
                            steps += 1;
                        }
                    }
                    LogBlock::Revoke(tags) => txn.revokes.extend(tags),
                    LogBlock::Commit { count, data_crc } => {
                        if count as usize != txn.blocks.len() || data_crc != crc {
                            break 'txn;
                        }
                        out.push(txn);
                        seq += 1;
                        end = pos;
                        continue 'txn;
                    }
                }
            }
        }
        Ok((out, end))
    }

    /// Mark the log empty without replaying (everything in it is already
    /// at home: the filesystem's checkpoint). Flushes the device first.
    pub fn reset(&mut self, dev: &Dev) -> Result<()> {
        // The homes the caller checkpointed must be durable before the log
        // that could replay them is emptied.
        dev.flush()
            .map_err(|e| FormatError::io("journal checkpoint flush", self.area, e))?;
        self.sb.start = 0;
        self.sb.seq = self.next_seq;
        self.head = 1;
        self.write_super(dev)
    }
}

/// What replaying `txns` (in order) writes: (home block, log block of its
/// image), skipping images a revoke in the same or a later transaction
/// cancels, and how many were skipped.
pub fn images_to_replay(txns: &[Txn]) -> (Vec<(u64, u64)>, u64) {
    // Block -> the highest sequence number revoking it.
    let mut revoked = std::collections::HashMap::new();
    for t in txns {
        for &b in &t.revokes {
            let e = revoked.entry(b).or_insert(t.seq);
            *e = (*e).max(t.seq);
        }
    }
    let mut out = Vec::new();
    let mut skipped = 0;
    for t in txns {
        for &(home, log) in &t.blocks {
            if revoked.get(&home).is_some_and(|&r| r >= t.seq) {
                skipped += 1;
            } else {
                out.push((home, log));
            }
        }
    }
    (out, skipped)
}

/// A complete transaction found in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Txn {
    pub seq: u64,
    /// (home block, log block holding its image)
    pub blocks: Vec<(u64, u64)>,
    pub revokes: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::block::backend::MemBackend;
    use crate::format::dev::DevOptions;
    use crate::format::Geometry;

    /// Found by tests/fuzz_decoders.rs: a journal superblock holding
    /// sequence number u64::MAX (checksum intact) decoded, and the next
    /// commit overflowed `seq + 1`.
    #[test]
    fn regression_sequence_number_near_u64_max_is_refused() {
        let geo = Geometry::new(982, 16, 581).unwrap();
        let sb = Superblock::new(&geo, [3; 16], "", 0, 0);
        let mem = MemBackend::new(geo.blocks_count * BLOCK_SIZE as u64);
        let dev = Dev::from_backend(Arc::new(mem), DevOptions::default()).unwrap();
        for seq in [u64::MAX, MAX_SEQ + 1] {
            Journal::format(&dev, &sb, seq).unwrap();
            assert!(Journal::open(&dev, &sb).is_err(), "seq {seq}");
        }
        dev.close().unwrap();
    }

    /// Found by tests/fuzz_decoders.rs (after the fix above): a journal at
    /// sequence number 2^63 - 1 committed transactions 2^63 - 1 and 2^63,
    /// and replaying them wrote a journal superblock at 2^63 + 1, which its
    /// own decoder then refused. No transaction gets MAX_SEQ, so whatever
    /// the journal writes decodes.
    #[test]
    fn regression_replay_near_max_seq_leaves_a_journal_that_opens() {
        let geo = Geometry::new(996, 16, 256).unwrap();
        let sb = Superblock::new(&geo, [3; 16], "", 0, 0);
        let mem = MemBackend::new(geo.blocks_count * BLOCK_SIZE as u64);
        let dev = Dev::from_backend(Arc::new(mem), DevOptions::default()).unwrap();
        let target = geo.head + 100;
        let image = vec![7u8; BLOCK_SIZE];
        Journal::format(&dev, &sb, MAX_SEQ - 1).unwrap();
        let mut j = Journal::open(&dev, &sb).unwrap();
        assert_eq!(
            j.commit(&dev, &[(target, image.clone())], &[]).unwrap(),
            MAX_SEQ - 1
        );
        assert!(j.commit(&dev, &[(target, image.clone())], &[]).is_err());
        let mut j = Journal::open(&dev, &sb).unwrap();
        assert_eq!(j.replay(&dev).unwrap().transactions, 1);
        let j = Journal::open(&dev, &sb).unwrap();
        assert_eq!(j.sb.seq, MAX_SEQ);
        assert_eq!(dev.read_block(target).unwrap(), image);
        dev.close().unwrap();
    }
}
