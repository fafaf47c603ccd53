//! Integrity profiles and protection tuples.
//!
//! Counterpart of `struct blk_integrity_profile` and the T10 PI tuple
//! (`struct t10_pi_tuple`, include/linux/t10-pi.h) with its generate/verify
//! functions (block/t10-pi.c). One 8-byte [`Tuple`] protects one integrity
//! interval (512 bytes or 4 KiB) of data.
//!
//! Tuple encoding, all little-endian:
//!
//! ```text
//! CRC32C profile      | 0..4 guard: CRC32C(interval as u64 LE ++ data) | 4..8 ref tag |
//! T10-DIF profile     | 0..2 guard: CRC16-T10DIF(same) | 2..4 app tag = 0 | 4..8 ref tag |
//! ref tag = low 32 bits of the interval number (data sector / sectors_per_interval)
//! ```
//!
//! Seeding the guard with the interval number (like the kernel's
//! `bip_set_seed()` + Type 1 reference tag) makes data written to the wrong
//! place fail verification even when the bytes themselves are intact.

use super::error::IntegrityError;
use crate::block::types::SECTOR_SHIFT;

/// The CRC16 used by T10 DIF (`crc_t10dif()`), slice-by-16 table.
static T10DIF: crc::Crc<u16, crc::Table<16>> =
    crc::Crc::<u16, crc::Table<16>>::new(&crc::CRC_16_T10_DIF);

/// The guard checksum of a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Checksum {
    /// CRC32C (Castagnoli), hardware-accelerated; a 32-bit guard.
    Crc32c,
    /// CRC-16/T10-DIF as in SCSI/NVMe protection information; a 16-bit guard
    /// plus a 16-bit application tag (always 0 here).
    T10DifCrc16,
}

impl Checksum {
    /// The id stored in the on-disk header.
    pub fn id(self) -> u32 {
        match self {
            Checksum::Crc32c => 1,
            Checksum::T10DifCrc16 => 2,
        }
    }

    /// The checksum for an on-disk id; `None` for an unknown id.
    pub fn from_id(id: u32) -> Option<Checksum> {
        match id {
            1 => Some(Checksum::Crc32c),
            2 => Some(Checksum::T10DifCrc16),
            _ => None,
        }
    }

    /// A short name: "crc32c" or "t10dif".
    pub fn name(self) -> &'static str {
        match self {
            Checksum::Crc32c => "crc32c",
            Checksum::T10DifCrc16 => "t10dif",
        }
    }
}

/// How data is protected: the interval size and the guard checksum.
///
/// Counterpart of `struct blk_integrity` (`interval_exp`, `tuple_size`,
/// `profile`). Built only through [`IntegrityProfile::new`], so an existing
/// profile is always valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IntegrityProfile {
    interval_shift: u32,
    checksum: Checksum,
}

impl IntegrityProfile {
    /// Bytes of protection information per interval.
    pub const TUPLE_SIZE: usize = 8;

    /// A profile with `interval_size`-byte intervals.
    ///
    /// Fails with [`IntegrityError::InvalidProfile`] unless `interval_size` is
    /// 512 or 4096.
    pub fn new(interval_size: u32, checksum: Checksum) -> Result<IntegrityProfile, IntegrityError> {
        match interval_size {
            512 | 4096 => Ok(IntegrityProfile {
                interval_shift: interval_size.trailing_zeros(),
                checksum,
            }),
            _ => Err(IntegrityError::InvalidProfile(format!(
                "interval size {interval_size} is not 512 or 4096"
            ))),
        }
    }

    /// The profile for an on-disk `interval_shift`; `None` unless it is 9 or 12.
    pub fn from_shift(interval_shift: u32, checksum: Checksum) -> Option<IntegrityProfile> {
        match interval_shift {
            9 | 12 => Some(IntegrityProfile {
                interval_shift,
                checksum,
            }),
            _ => None,
        }
    }

    /// log2 of the interval size (9 or 12).
    pub fn interval_shift(&self) -> u32 {
        self.interval_shift
    }

    /// Bytes of data per tuple (512 or 4096).
    pub fn interval_size(&self) -> usize {
        1 << self.interval_shift
    }

    /// 512-byte sectors per interval (1 or 8).
    pub fn sectors_per_interval(&self) -> u64 {
        1 << (self.interval_shift - SECTOR_SHIFT)
    }

    /// The guard checksum.
    pub fn checksum(&self) -> Checksum {
        self.checksum
    }

    /// A name for logs and `mkfs` output, like "crc32c-4k" or "t10dif-512".
    pub fn name(&self) -> String {
        let size = if self.interval_shift == 12 {
            "4k"
        } else {
            "512"
        };
        format!("{}-{size}", self.checksum.name())
    }

    /// The interval holding data sector `sector`.
    pub fn interval_of(&self, sector: u64) -> u64 {
        sector >> (self.interval_shift - SECTOR_SHIFT)
    }

    /// A hasher for the data of `interval`, fed piece by piece (an interval
    /// may be spread over several bio segments).
    pub fn hasher(&self, interval: u64) -> TupleHasher {
        let seed = interval.to_le_bytes();
        let state = match self.checksum {
            Checksum::Crc32c => HashState::Crc32c(crc32c::crc32c(&seed)),
            Checksum::T10DifCrc16 => {
                let mut digest = T10DIF.digest();
                digest.update(&seed);
                HashState::T10(digest)
            }
        };
        TupleHasher { interval, state }
    }

    /// The tuple for one interval whose data is `data` (one piece).
    pub fn generate(&self, interval: u64, data: &[u8]) -> Tuple {
        let mut h = self.hasher(interval);
        h.update(data);
        h.finish()
    }

    /// True iff the data in `pieces` (concatenated) matches `stored`, or
    /// `stored` is all zero ("never written") and the data is all zero.
    ///
    /// The caller passes exactly one interval's worth of data; a short or
    /// long `pieces` simply fails to match.
    pub fn verify(&self, interval: u64, pieces: &[&[u8]], stored: Tuple) -> bool {
        let mut h = self.hasher(interval);
        for piece in pieces {
            h.update(piece);
        }
        if h.finish() == stored {
            return true;
        }
        stored.is_unwritten() && pieces.iter().all(|p| is_zero(p))
    }
}

/// True when every byte of `data` is zero (word at a time).
pub fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(8);
    words.by_ref().all(|w| w == [0u8; 8]) && words.remainder().iter().all(|&b| b == 0)
}

#[derive(Clone)]
enum HashState {
    Crc32c(u32),
    T10(crc::Digest<'static, u16, crc::Table<16>>),
}

/// An incremental tuple computation for one interval.
/// Counterpart of one step of `t10_pi_generate()`/`ext_pi_crc64_generate()`.
#[derive(Clone)]
pub struct TupleHasher {
    interval: u64,
    state: HashState,
}

impl TupleHasher {
    /// Feed the next piece of the interval's data.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            HashState::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, data),
            HashState::T10(digest) => digest.update(data),
        }
    }

    /// The tuple for the data fed so far.
    pub fn finish(self) -> Tuple {
        let mut t = [0u8; 8];
        match self.state {
            HashState::Crc32c(crc) => t[0..4].copy_from_slice(&crc.to_le_bytes()),
            HashState::T10(digest) => {
                t[0..2].copy_from_slice(&digest.finalize().to_le_bytes());
                // t[2..4]: application tag, always 0.
            }
        }
        t[4..8].copy_from_slice(&(self.interval as u32).to_le_bytes());
        Tuple(t)
    }
}

/// One interval's protection information, exactly as stored on disk.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct Tuple(pub [u8; 8]);

impl Tuple {
    /// The "never written" tuple: all zero.
    pub const UNWRITTEN: Tuple = Tuple([0; 8]);

    /// True when the tuple is all zero: the interval was never written (or
    /// was discarded) and must read as zeroes.
    pub fn is_unwritten(&self) -> bool {
        self.0 == [0; 8]
    }

    /// Bytes 0..4 as a little-endian u32: the CRC32C guard, or for T10-DIF the
    /// 16-bit guard in the low half and the (zero) application tag in the high half.
    pub fn guard(&self) -> u32 {
        u32::from_le_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }

    /// Bytes 4..8 as a little-endian u32: the low 32 bits of the interval number.
    pub fn ref_tag(&self) -> u32 {
        u32::from_le_bytes([self.0[4], self.0[5], self.0[6], self.0[7]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crc() -> IntegrityProfile {
        IntegrityProfile::new(4096, Checksum::Crc32c).unwrap()
    }

    fn t10() -> IntegrityProfile {
        IntegrityProfile::new(512, Checksum::T10DifCrc16).unwrap()
    }

    #[test]
    fn known_answers_prove_the_algorithms() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(T10DIF.checksum(b"123456789"), 0xD0DB);
        // Our hasher is the same algorithm plus the 8-byte seed.
        let mut seeded = 7u64.to_le_bytes().to_vec();
        seeded.extend_from_slice(b"123456789");
        let t = crc().generate(7, b"123456789");
        assert_eq!(t.guard(), crc32c::crc32c(&seeded));
        assert_eq!(t.ref_tag(), 7);
        let t = t10().generate(7, b"123456789");
        assert_eq!(t.guard(), u32::from(T10DIF.checksum(&seeded)));
        assert_eq!(&t.0[2..4], &[0, 0], "app tag is zero");
        assert_eq!(t.ref_tag(), 7);
    }

    #[test]
    fn tuple_bytes_are_fixed() {
        // Pin the exact encoding so a change to it is a visible format break.
        let t = crc().generate(0x1_0000_0002, &[0xab; 4096]);
        assert_eq!(&t.0[4..8], &[2, 0, 0, 0], "ref tag = low 32 bits, LE");
        let mut seeded = 0x1_0000_0002u64.to_le_bytes().to_vec();
        seeded.extend_from_slice(&[0xab; 4096]);
        assert_eq!(&t.0[0..4], &crc32c::crc32c(&seeded).to_le_bytes());
    }

    #[test]
    fn profile_validation_and_names() {
        assert!(IntegrityProfile::new(1024, Checksum::Crc32c).is_err());
        assert!(IntegrityProfile::new(0, Checksum::Crc32c).is_err());
        assert_eq!(crc().name(), "crc32c-4k");
        assert_eq!(t10().name(), "t10dif-512");
        assert_eq!(crc().sectors_per_interval(), 8);
        assert_eq!(t10().sectors_per_interval(), 1);
        assert_eq!(crc().interval_of(17), 2);
        assert_eq!(
            Checksum::from_id(Checksum::T10DifCrc16.id()),
            Some(Checksum::T10DifCrc16)
        );
        assert_eq!(Checksum::from_id(0), None);
    }

    #[test]
    fn seeding_catches_misdirected_data() {
        for p in [crc(), t10()] {
            let data = vec![0x5a; p.interval_size()];
            let at3 = p.generate(3, &data);
            let at4 = p.generate(4, &data);
            assert_ne!(at3, at4, "{}", p.name());
            assert!(p.verify(3, &[&data], at3));
            assert!(!p.verify(4, &[&data], at3), "misdirected write must fail");
        }
    }

    #[test]
    fn flipped_bit_fails() {
        for p in [crc(), t10()] {
            let mut data = vec![0x11; p.interval_size()];
            let t = p.generate(9, &data);
            data[100] ^= 0x04;
            assert!(!p.verify(9, &[&data], t), "{}", p.name());
        }
    }

    #[test]
    fn unwritten_rule() {
        for p in [crc(), t10()] {
            let zero = vec![0u8; p.interval_size()];
            let mut one = zero.clone();
            one[p.interval_size() - 1] = 1;
            assert!(p.verify(5, &[&zero], Tuple::UNWRITTEN));
            assert!(!p.verify(5, &[&one], Tuple::UNWRITTEN), "{}", p.name());
            // Zero data with a real tuple for other data fails too.
            assert!(!p.verify(5, &[&zero], p.generate(5, &one)));
            // A computed tuple for zeroes is accepted like any other.
            assert!(p.verify(5, &[&zero], p.generate(5, &zero)));
        }
    }

    #[test]
    fn hasher_over_split_pieces_equals_one_shot() {
        for p in [crc(), t10()] {
            let data: Vec<u8> = (0..p.interval_size()).map(|i| (i * 7 + 3) as u8).collect();
            let one = p.generate(11, &data);
            for split in [1, 3, 100, 511, p.interval_size() - 1] {
                let mut h = p.hasher(11);
                h.update(&data[..split]);
                h.update(&[]);
                h.update(&data[split..]);
                assert_eq!(h.finish(), one);
                assert!(p.verify(11, &[&data[..split], &data[split..]], one));
            }
        }
    }

    #[test]
    fn is_zero_checks_every_byte() {
        let mut v = vec![0u8; 4099];
        assert!(is_zero(&v));
        for i in [0, 7, 8, 4095, 4098] {
            v[i] = 1;
            assert!(!is_zero(&v), "byte {i}");
            v[i] = 0;
        }
    }

    /// Throughput of the tuple generators; run with
    /// `cargo test --release -- --ignored --nocapture hash_throughput`.
    /// Measured on the dev VM (2 vCPU, SSE4.2): see docs/integrity.md.
    #[test]
    #[ignore]
    fn hash_throughput() {
        let data = vec![0x3cu8; 4096];
        for p in [
            IntegrityProfile::new(4096, Checksum::Crc32c).unwrap(),
            IntegrityProfile::new(4096, Checksum::T10DifCrc16).unwrap(),
        ] {
            let n = 256 * 1024; // 1 GiB
            let start = std::time::Instant::now();
            let mut acc = 0u32;
            for i in 0..n {
                acc ^= p.generate(i, &data).guard();
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{}: {:.2} GiB/s (acc {acc:x})",
                p.name(),
                (n as f64 * 4096.0) / secs / (1u64 << 30) as f64
            );
        }
    }
}
