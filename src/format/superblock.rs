//! The superblock: block 0, with a backup in the filesystem's last block.

use super::codec::{Reader, Writer};
use super::error::{FormatError, Result};
use super::geometry::{Geometry, MAX_BLOCKS};
use super::{meta_csum, uuid_seed, BLOCKS_PER_GROUP, BLOCK_SIZE, INODE_SIZE};

/// "BIOFS-FS" in the first 8 bytes.
pub const MAGIC: [u8; 8] = *b"BIOFS-FS";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Offset of the CRC32C in the block (it covers everything before it).
const CSUM_OFF: usize = BLOCK_SIZE - 4;
/// Longest label, in bytes.
pub const LABEL_MAX: usize = 64;

/// Incompatible feature: the journal holds transactions to replay. A build
/// that can't replay must not touch the filesystem.
pub const INCOMPAT_RECOVER: u32 = 1 << 0;
/// Incompatible features this build understands.
pub const INCOMPAT_SUPPORTED: u32 = INCOMPAT_RECOVER;
/// Read-only-compatible features this build understands (none yet).
pub const RO_COMPAT_SUPPORTED: u32 = 0;

/// `state`: unmounted cleanly.
pub const STATE_CLEAN: u16 = 1 << 0;
/// `state`: errors were found (by the filesystem or fsck) and not repaired.
pub const STATE_ERRORS: u16 = 1 << 1;

/// Integrity checksum ids, as the engine's [`crate::block::Checksum::id`].
pub const INTEGRITY_NONE: u16 = 0;

/// The superblock's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub version: u32,
    pub compat: u32,
    pub incompat: u32,
    pub ro_compat: u32,
    pub state: u16,
    pub uuid: [u8; 16],
    pub label: String,
    pub blocks_count: u64,
    pub inodes_count: u64,
    /// Free data blocks and inodes at the last clean unmount or fsck (the
    /// group descriptors are authoritative; these are summaries).
    pub free_blocks: u64,
    pub free_inodes: u64,
    pub inodes_per_group: u32,
    pub groups: u32,
    pub gdt_start: u64,
    pub gdt_blocks: u64,
    pub journal_start: u64,
    pub journal_blocks: u64,
    pub head: u64,
    pub root_ino: u64,
    pub lost_found_ino: u64,
    /// First inode of the list of unlinked inodes still open (0: none).
    pub orphan_head: u64,
    /// Seed of the directory name hash.
    pub hash_seed: u64,
    pub mkfs_time: i64,
    pub mount_time: i64,
    pub write_time: i64,
    pub check_time: i64,
    pub mount_count: u32,
    /// Integrity profile mkfs chose: interval bytes (0: integrity off) and
    /// checksum id; the engine's own header on the device is authoritative.
    pub integrity_interval: u32,
    pub integrity_checksum: u16,
}

impl Superblock {
    /// The layout these fields describe (validated by [`Superblock::decode`]).
    pub fn geometry(&self) -> Result<Geometry> {
        let g = Geometry::new(
            self.blocks_count,
            self.inodes_per_group,
            self.journal_blocks,
        )?;
        let ours = (
            g.blocks_count,
            g.gdt_start,
            g.gdt_blocks,
            g.journal_start,
            g.head,
            g.groups,
            g.inodes_per_group,
            g.inodes_count(),
        );
        let stored = (
            self.blocks_count,
            self.gdt_start,
            self.gdt_blocks,
            self.journal_start,
            self.head,
            self.groups,
            self.inodes_per_group,
            self.inodes_count,
        );
        if ours != stored {
            return Err(FormatError::invalid(
                "superblock",
                format!("layout fields {stored:?} disagree with the layout they imply {ours:?}"),
            ));
        }
        Ok(g)
    }

    /// Fields for a new filesystem laid out as `g`.
    pub fn new(g: &Geometry, uuid: [u8; 16], label: &str, hash_seed: u64, now: i64) -> Superblock {
        Superblock {
            version: VERSION,
            compat: 0,
            incompat: 0,
            ro_compat: 0,
            state: STATE_CLEAN,
            uuid,
            label: label.to_string(),
            blocks_count: g.blocks_count,
            inodes_count: g.inodes_count(),
            free_blocks: g.data_blocks(),
            free_inodes: g.inodes_count(),
            inodes_per_group: g.inodes_per_group,
            groups: g.groups,
            gdt_start: g.gdt_start,
            gdt_blocks: g.gdt_blocks,
            journal_start: g.journal_start,
            journal_blocks: g.journal_blocks,
            head: g.head,
            root_ino: super::ROOT_INO,
            lost_found_ino: super::LOST_FOUND_INO,
            orphan_head: 0,
            hash_seed,
            mkfs_time: now,
            mount_time: 0,
            write_time: now,
            check_time: now,
            mount_count: 0,
            integrity_interval: 0,
            integrity_checksum: INTEGRITY_NONE,
        }
    }

    /// The checksum seed of this filesystem's metadata.
    pub fn seed(&self) -> u32 {
        uuid_seed(&self.uuid)
    }

    /// Encode into a block to be written at `block` (0 or the backup's).
    #[allow(
        clippy::indexing_slicing,
        reason = "buf is BLOCK_SIZE bytes and CSUM_OFF a constant inside it"
    )]
    pub fn encode(&self, block: u64) -> Vec<u8> {
        let mut buf = vec![0u8; BLOCK_SIZE];
        let mut w = Writer(&mut buf);
        w.bytes(0, &MAGIC);
        w.u32(8, self.version);
        w.u32(12, BLOCK_SIZE as u32);
        w.u32(16, self.compat);
        w.u32(20, self.incompat);
        w.u32(24, self.ro_compat);
        w.u16(28, self.state);
        w.u16(30, INODE_SIZE as u16);
        w.bytes(32, &self.uuid);
        let label = self.label.as_bytes();
        w.bytes(48, label.get(..LABEL_MAX).unwrap_or(label));
        w.u64(112, self.blocks_count);
        w.u64(120, self.inodes_count);
        w.u64(128, self.free_blocks);
        w.u64(136, self.free_inodes);
        w.u32(144, BLOCKS_PER_GROUP);
        w.u32(148, self.inodes_per_group);
        w.u32(152, self.groups);
        w.u64(160, self.gdt_start);
        w.u64(168, self.gdt_blocks);
        w.u64(176, self.journal_start);
        w.u64(184, self.journal_blocks);
        w.u64(192, self.head);
        w.u64(200, self.root_ino);
        w.u64(208, self.lost_found_ino);
        w.u64(216, self.orphan_head);
        w.u64(224, self.hash_seed);
        w.i64(232, self.mkfs_time);
        w.i64(240, self.mount_time);
        w.i64(248, self.write_time);
        w.i64(256, self.check_time);
        w.u32(264, self.mount_count);
        w.u32(272, self.integrity_interval);
        w.u16(276, self.integrity_checksum);
        let csum = meta_csum(uuid_seed(&self.uuid), block, &buf[..CSUM_OFF]);
        Writer(&mut buf).u32(CSUM_OFF, csum);
        buf
    }

    /// Decode and validate a superblock read from `block`: magic, checksum,
    /// version, features, and every layout field against the layout they
    /// imply. Nothing is trusted before these checks.
    pub fn decode(buf: &[u8], block: u64) -> Result<Superblock> {
        let Some(buf) = buf.first_chunk::<BLOCK_SIZE>() else {
            return Err(FormatError::invalid("superblock", "short block"));
        };
        let r = Reader(buf);
        if r.bytes::<8>(0) != MAGIC {
            return Err(FormatError::BadMagic {
                what: "superblock",
                block,
            });
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&buf[32..48]);
        let stored = r.u32(CSUM_OFF);
        let computed = meta_csum(uuid_seed(&uuid), block, &buf[..CSUM_OFF]);
        FormatError::check_csum("superblock at block", block, stored, computed)?;
        let version = r.u32(8);
        if version != VERSION {
            return Err(FormatError::invalid(
                "superblock",
                format!("format version {version}; this build reads version {VERSION}"),
            ));
        }
        if r.u32(12) as usize != BLOCK_SIZE {
            return Err(FormatError::invalid(
                "superblock",
                format!(
                    "block size {} (this build supports {BLOCK_SIZE})",
                    r.u32(12)
                ),
            ));
        }
        if r.u16(30) as usize != INODE_SIZE || r.u32(144) != BLOCKS_PER_GROUP {
            return Err(FormatError::invalid(
                "superblock",
                format!(
                    "inode size {} / blocks per group {} (this build: {INODE_SIZE} / {BLOCKS_PER_GROUP})",
                    r.u16(30),
                    r.u32(144)
                ),
            ));
        }
        let incompat = r.u32(20);
        if incompat & !INCOMPAT_SUPPORTED != 0 {
            return Err(FormatError::Unsupported {
                kind: "incompatible",
                bits: incompat & !INCOMPAT_SUPPORTED,
            });
        }
        let label_bytes = &buf[48..48 + LABEL_MAX];
        let label_bytes = label_bytes.split(|&b| b == 0).next().unwrap_or_default();
        let mut label = String::from_utf8_lossy(label_bytes).into_owned();
        // Each invalid byte became a 3-byte U+FFFD: cut the label back to
        // its field at a character boundary, so it encodes as it decodes.
        while label.len() > LABEL_MAX {
            label.pop();
        }
        let sb = Superblock {
            version,
            compat: r.u32(16),
            incompat,
            ro_compat: r.u32(24),
            state: r.u16(28),
            uuid,
            label,
            blocks_count: r.u64(112),
            inodes_count: r.u64(120),
            free_blocks: r.u64(128),
            free_inodes: r.u64(136),
            inodes_per_group: r.u32(148),
            groups: r.u32(152),
            gdt_start: r.u64(160),
            gdt_blocks: r.u64(168),
            journal_start: r.u64(176),
            journal_blocks: r.u64(184),
            head: r.u64(192),
            root_ino: r.u64(200),
            lost_found_ino: r.u64(208),
            orphan_head: r.u64(216),
            hash_seed: r.u64(224),
            mkfs_time: r.i64(232),
            mount_time: r.i64(240),
            write_time: r.i64(248),
            check_time: r.i64(256),
            mount_count: r.u32(264),
            integrity_interval: r.u32(272),
            integrity_checksum: r.u16(276),
        };
        if sb.blocks_count > MAX_BLOCKS {
            return Err(FormatError::invalid(
                "superblock",
                "block count out of range",
            ));
        }
        let g = sb.geometry()?;
        if sb.root_ino != super::ROOT_INO || !g.ino_valid(sb.lost_found_ino) {
            return Err(FormatError::invalid(
                "superblock",
                format!(
                    "root inode {} / lost+found {}",
                    sb.root_ino, sb.lost_found_ino
                ),
            ));
        }
        if sb.orphan_head != 0 && !g.ino_valid(sb.orphan_head) {
            return Err(FormatError::invalid(
                "superblock",
                format!("orphan list head {} is not an inode", sb.orphan_head),
            ));
        }
        Ok(sb)
    }

    /// True if the read-only-compatible features allow writing.
    pub fn writable_features(&self) -> bool {
        self.ro_compat & !RO_COMPAT_SUPPORTED == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        let g = Geometry::new(262_144, 8192, 2048).unwrap();
        Superblock::new(&g, [7; 16], "data", 0x1234, 1_700_000_000)
    }

    #[test]
    fn round_trip_at_primary_and_backup() {
        let sb = sample();
        let g = sb.geometry().unwrap();
        assert_eq!(Superblock::decode(&sb.encode(0), 0).unwrap(), sb);
        let b = g.backup_block();
        assert_eq!(Superblock::decode(&sb.encode(b), b).unwrap(), sb);
        // A copy at the wrong place fails its checksum.
        assert!(matches!(
            Superblock::decode(&sb.encode(0), b),
            Err(FormatError::BadChecksum { .. })
        ));
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let sb = sample();
        let buf = sb.encode(0);
        for byte in [0, 9, 20, 40, 113, 150, 200, 230, 4000, 4093] {
            let mut bad = buf.clone();
            bad[byte] ^= 0x10;
            assert!(Superblock::decode(&bad, 0).is_err(), "flip at {byte}");
        }
    }

    /// Found by tests/fuzz_decoders.rs: a label that is not UTF-8 (here a
    /// flipped bit in the 17th of 32 'é') decoded lossily to 66 bytes, more
    /// than the field holds, so encoding it cut a character in two and the
    /// superblock did not decode to the same value again.
    #[test]
    fn regression_invalid_utf8_label_round_trips() {
        let mut sb = sample();
        sb.label = "é".repeat(LABEL_MAX / 2);
        let mut buf = sb.encode(0);
        buf[48 + 33] ^= 0x80;
        let csum = meta_csum(sb.seed(), 0, &buf[..CSUM_OFF]);
        Writer(&mut buf).u32(CSUM_OFF, csum);
        let got = Superblock::decode(&buf, 0).unwrap();
        assert!(got.label.len() <= LABEL_MAX, "{:?}", got.label);
        assert_eq!(Superblock::decode(&got.encode(0), 0).unwrap(), got);
    }

    #[test]
    fn unknown_incompat_features_are_refused() {
        let mut sb = sample();
        sb.incompat = 1 << 7;
        assert!(matches!(
            Superblock::decode(&sb.encode(0), 0),
            Err(FormatError::Unsupported { .. })
        ));
    }

    #[test]
    fn inconsistent_layout_is_refused() {
        let mut sb = sample();
        sb.groups += 1;
        assert!(Superblock::decode(&sb.encode(0), 0).is_err());
        let mut sb = sample();
        sb.head -= 1;
        assert!(Superblock::decode(&sb.encode(0), 0).is_err());
    }
}
