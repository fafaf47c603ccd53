use super::*;

fn p4k() -> IntegrityProfile {
    IntegrityProfile::new(4096, Checksum::Crc32c).unwrap()
}

fn p512() -> IntegrityProfile {
    IntegrityProfile::new(512, Checksum::T10DifCrc16).unwrap()
}

/// The invariants every layout must satisfy, and maximality of data_sectors.
fn check(l: &IntegrityLayout) {
    let total = l.device_bytes / META_BLOCK;
    assert_eq!(l.data_sectors % 8, 0);
    assert!(l.data_sectors > 0);
    assert!(l.data_sectors << SECTOR_SHIFT <= l.tuple_start, "{l:?}");
    assert_eq!(l.tuple_start + l.tuple_blocks * META_BLOCK, l.bitmap_start);
    assert_eq!(
        l.bitmap_start + l.bitmap_blocks * META_BLOCK,
        l.header_offset
    );
    assert_eq!(l.header_offset, (total - 1) * META_BLOCK);
    assert!(l.tuple_blocks * TUPLES_PER_BLOCK >= l.intervals());
    assert!((l.tuple_blocks - 1) * TUPLES_PER_BLOCK < l.intervals());
    assert!(l.bitmap_blocks * REGIONS_PER_BITMAP_BLOCK >= l.regions());
    // One more data block would not fit.
    let d = l.data_sectors / 8;
    assert!(
        blocks_needed(d + 1, &l.profile) > total,
        "{l:?} is not maximal"
    );
}

#[test]
fn exact_values_for_one_gib() {
    // Worked by hand (and checked with a brute-force script): 4 KiB intervals,
    // d + ceil(d/512) + 1 bitmap + 1 header <= 262144 -> d = 261631.
    let l = layout(1 << 30, &p4k()).unwrap();
    assert_eq!(l.data_sectors, 261_631 * 8);
    assert_eq!(l.tuple_blocks, 511);
    assert_eq!(l.bitmap_blocks, 1);
    check(&l);
    // 512-byte intervals: d + ceil(8d/512) + 2 <= 262144 -> d = 258109.
    let l = layout(1 << 30, &p512()).unwrap();
    assert_eq!(l.data_sectors, 258_109 * 8);
    assert_eq!(l.tuple_blocks, 4033);
    check(&l);
}

#[test]
fn tiny_devices_are_rejected_clearly() {
    for bytes in [0, 1, 4095, 4096, 3 * 4096, 4 * 4096 - 1] {
        for p in [p4k(), p512()] {
            match layout(bytes, &p) {
                Err(IntegrityError::DeviceTooSmall {
                    device_bytes,
                    min_bytes,
                }) => {
                    assert_eq!(device_bytes, bytes);
                    assert_eq!(min_bytes, 4 * 4096);
                }
                other => panic!("{bytes}: {other:?}"),
            }
        }
    }
    let l = layout(4 * 4096, &p4k()).unwrap();
    assert_eq!(l.data_sectors, 8);
    check(&l);
}

#[test]
fn brute_force_small_and_odd_sizes() {
    for blocks in 4..3000u64 {
        for extra in [0, 512, 4095] {
            for p in [p4k(), p512()] {
                check(&layout(blocks * 4096 + extra, &p).unwrap());
            }
        }
    }
}

#[test]
fn boundaries_where_metadata_grows() {
    // Around the sizes where a tuple block or a bitmap block is added.
    for p in [p4k(), p512()] {
        let ipb = META_BLOCK >> p.interval_shift();
        for data_blocks in [512 / ipb, 32768 * 512 / ipb] {
            for delta in 0..6u64 {
                let blocks = blocks_needed(data_blocks, &p) - 3 + delta;
                check(&layout(blocks * 4096, &p).unwrap());
            }
        }
    }
}

#[test]
fn huge_devices_do_not_overflow() {
    for bytes in [1u64 << 40, 1 << 50, u64::MAX] {
        for p in [p4k(), p512()] {
            check(&layout(bytes, &p).unwrap());
        }
    }
}

#[test]
fn header_round_trip() {
    let l = layout(64 << 20, &p512()).unwrap();
    for state in [HeaderState::Clean, HeaderState::InUse] {
        let b = encode_header(&l, state);
        assert_eq!(decode_header(&b, l.device_bytes).unwrap(), Some((l, state)));
    }
}

#[test]
fn no_magic_means_no_header() {
    let l = layout(64 << 20, &p4k()).unwrap();
    let mut b = encode_header(&l, HeaderState::Clean);
    b[0] ^= 1;
    assert!(decode_header(&b, l.device_bytes).unwrap().is_none());
    assert!(decode_header(&[0; 4096], l.device_bytes).unwrap().is_none());
    assert!(decode_header(&b[..100], l.device_bytes).unwrap().is_none());
    assert!(decode_header(&encode_header(&l, HeaderState::Clean), 100)
        .unwrap()
        .is_none());
}

fn with_field(l: &IntegrityLayout, at: usize, bytes: &[u8]) -> [u8; 4096] {
    let mut b = encode_header(l, HeaderState::Clean);
    b[at..at + bytes.len()].copy_from_slice(bytes);
    let crc = crc32c::crc32c(&b[..HEADER_CRC_OFFSET]);
    b[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    b
}

fn field_error(b: &[u8], dev: u64) -> &'static str {
    match decode_header(b, dev) {
        Err(IntegrityError::BadHeader { field, .. }) => field,
        other => panic!("expected BadHeader, got {other:?}"),
    }
}

#[test]
fn each_corrupted_field_is_named() {
    let l = layout(64 << 20, &p4k()).unwrap();
    let dev = l.device_bytes;
    let u32f = |v: u32| v.to_le_bytes().to_vec();
    let u64f = |v: u64| v.to_le_bytes().to_vec();
    let cases: Vec<(usize, Vec<u8>, &str)> = vec![
        (8, u32f(2), "version"),
        (12, u32f(7), "state"),
        (16, u32f(10), "interval_shift"),
        (16, u32f(u32::MAX), "interval_shift"),
        (20, u32f(9), "checksum_id"),
        (24, u32f(16), "tuple_size"),
        (28, u32f(1), "flags"),
        (32, u64f(0), "data_sectors"),
        (32, u64f(13), "data_sectors"),
        (32, u64f(u64::MAX - 7), "data_sectors"),
        (32, u64f(l.data_sectors + 8), "tuple_start"),
        (32, u64f(l.data_sectors - 8 * 512), "tuple_blocks"),
        (40, u64f(l.tuple_start + 1), "tuple_start"),
        (40, u64f(0), "tuple_start"),
        (40, u64f(!4095), "bitmap_start"),
        (48, u64f(l.tuple_blocks + 1), "tuple_blocks"),
        (48, u64f(u64::MAX), "tuple_blocks"),
        (56, u64f(l.tuple_start), "bitmap_start"),
        (56, u64f(l.header_offset), "bitmap_start"),
        (56, u64f(!4095), "bitmap_start"),
        (64, u64f(0), "bitmap_blocks"),
        (64, u64f(u64::MAX), "bitmap_blocks"),
    ];
    for (at, bytes, field) in cases {
        let b = with_field(&l, at, &bytes);
        assert_eq!(field_error(&b, dev), field, "byte {at} = {bytes:?}");
    }
    // Any change without fixing the CRC is a checksum error.
    for at in 8..HEADER_CRC_OFFSET + 4 {
        let mut b = encode_header(&l, HeaderState::Clean);
        b[at] ^= 0x10;
        assert_eq!(field_error(&b, dev), "checksum", "byte {at}");
    }
    // A header from a bigger device does not fit a smaller one.
    let big = layout(128 << 20, &p4k()).unwrap();
    let b = encode_header(&big, HeaderState::Clean);
    assert_eq!(field_error(&b, dev), "data_sectors");
}

#[test]
fn random_header_bytes_never_panic() {
    // xorshift: deterministic, no dependency.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let l = layout(64 << 20, &p512()).unwrap();
    let good = encode_header(&l, HeaderState::InUse);
    for round in 0..20_000 {
        let mut b = if round % 2 == 0 { good } else { [0u8; 4096] };
        if round % 2 == 1 {
            b[..8].copy_from_slice(&MAGIC);
        }
        for _ in 0..(next() % 8 + 1) {
            let at = (next() % 80) as usize;
            b[at] = next() as u8;
        }
        if round % 3 == 0 {
            // Re-seal so the field checks, not the CRC, are exercised.
            let crc = crc32c::crc32c(&b[..HEADER_CRC_OFFSET]);
            b[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        }
        let dev = if round % 5 == 0 {
            next()
        } else {
            l.device_bytes
        };
        if let Ok(Some((got, _))) = decode_header(&b, dev) {
            // Whatever is accepted must be a sane, non-overlapping layout.
            assert!(got.data_sectors << SECTOR_SHIFT <= got.tuple_start);
            assert!(got.tuple_start + got.tuple_blocks * META_BLOCK <= got.bitmap_start);
            assert!(got.bitmap_start + got.bitmap_blocks * META_BLOCK <= got.header_offset);
            assert!(got.header_offset + META_BLOCK <= dev);
        }
    }
}
