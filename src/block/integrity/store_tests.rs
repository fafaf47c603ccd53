use std::collections::BTreeMap;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use super::*;
use crate::block::backend::{check_range, iov_len, BackendInfo, MemBackend};
use crate::block::integrity::bitmap::LOOKAHEAD_REGIONS as LOOKAHEAD;
use crate::block::integrity::profile::Checksum;

/// A MemBackend that counts writes and flushes.
struct Counting {
    mem: MemBackend,
    writes: AtomicU64,
    flushes: AtomicU64,
}

impl Counting {
    fn new(bytes: u64) -> Arc<Counting> {
        Arc::new(Counting {
            mem: MemBackend::new(bytes),
            writes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        })
    }
    fn io(&self) -> (u64, u64) {
        (
            self.writes.load(Ordering::SeqCst),
            self.flushes.load(Ordering::SeqCst),
        )
    }
}

impl BlockBackend for Counting {
    fn info(&self) -> BackendInfo {
        self.mem.info()
    }
    fn read_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        self.mem.read_at(bufs, offset)
    }
    fn write_at(&self, bufs: &[IoSlice<'_>], offset: u64, fua: bool) -> io::Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.mem.write_at(bufs, offset, fua)
    }
    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.mem.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.mem.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.mem.write_zeroes(offset, len)
    }
}

/// A sparse device of any size with 4 KiB blocks (absent blocks read as zero).
struct Sparse {
    size: u64,
    blocks: RwLock<BTreeMap<u64, Vec<u8>>>,
}

impl BlockBackend for Sparse {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            size_bytes: self.size,
            logical_block_size: 4096,
            physical_block_size: 4096,
            direct_io: false,
            kind: "sparse",
            discard_zeroes: true,
        }
    }
    fn read_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        check_range(&self.info(), offset, iov_len(bufs))?;
        let map = self.blocks.read().unwrap();
        let mut pos = offset;
        for buf in bufs.iter_mut() {
            for chunk in buf.chunks_mut(4096) {
                match map.get(&(pos / 4096)) {
                    Some(b) => chunk.copy_from_slice(&b[..chunk.len()]),
                    None => chunk.fill(0),
                }
                pos += chunk.len() as u64;
            }
        }
        Ok(())
    }
    fn write_at(&self, bufs: &[IoSlice<'_>], offset: u64, _fua: bool) -> io::Result<()> {
        check_range(&self.info(), offset, iov_len(bufs))?;
        let mut map = self.blocks.write().unwrap();
        let mut pos = offset;
        for buf in bufs {
            for chunk in buf.chunks(4096) {
                map.insert(pos / 4096, chunk.to_vec());
                pos += chunk.len() as u64;
            }
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(&self.info(), offset, len)?;
        let r = offset / 4096..(offset + len) / 4096;
        self.blocks.write().unwrap().retain(|b, _| !r.contains(b));
        Ok(())
    }
}

fn p512() -> IntegrityProfile {
    IntegrityProfile::new(512, Checksum::Crc32c).unwrap()
}

const MIB: u64 = 1 << 20;

fn fresh(bytes: u64, profile: IntegrityProfile, cache: usize) -> (Arc<Counting>, IntegrityStore) {
    let dev = Counting::new(bytes);
    IntegrityStore::format(&*dev, profile).unwrap();
    let store = IntegrityStore::open(dev.clone(), cache).unwrap();
    (dev, store)
}

/// Data for `n` intervals, distinct per interval and per `salt`.
fn pattern(p: &IntegrityProfile, first: u64, n: u64, salt: u8) -> Vec<u8> {
    let size = p.interval_size();
    (0..n as usize * size)
        .map(|i| (i / 7) as u8 ^ salt ^ ((first as usize + i / size) as u8).rotate_left(3))
        .collect()
}

fn tuples_for(p: &IntegrityProfile, first: u64, data: &[u8]) -> Vec<Tuple> {
    data.chunks(p.interval_size())
        .enumerate()
        .map(|(i, d)| p.generate(first + i as u64, d))
        .collect()
}

/// A whole protected write, the way the queue does it.
fn write(store: &IntegrityStore, dev: &dyn BlockBackend, first: u64, data: &[u8]) {
    let p = *store.profile();
    let n = (data.len() / p.interval_size()) as u64;
    store.begin_write(first, n).unwrap();
    dev.write_at(&[IoSlice::new(data)], first << p.interval_shift(), false)
        .unwrap();
    store.end_write(first, n, Some(&tuples_for(&p, first, data)));
}

/// Indices (relative to `first`) of intervals whose data fails verification.
fn bad_intervals(store: &IntegrityStore, dev: &dyn BlockBackend, first: u64, n: u64) -> Vec<u64> {
    let p = *store.profile();
    let mut data = vec![0u8; n as usize * p.interval_size()];
    dev.read_at(
        &mut [IoSliceMut::new(&mut data)],
        first << p.interval_shift(),
    )
    .unwrap();
    let mut tuples = vec![Tuple::default(); n as usize];
    store.load(first, &mut tuples).unwrap();
    (0..n)
        .filter(|&i| {
            let d = &data[i as usize * p.interval_size()..][..p.interval_size()];
            !p.verify(first + i, &[d], tuples[i as usize])
        })
        .collect()
}

fn bitmap_bit(snap: &[u8], l: &IntegrityLayout, region: u64) -> bool {
    snap[(l.bitmap_start + region / 8) as usize] & (1 << (region % 8)) != 0
}

fn header_state(snap: &[u8], l: &IntegrityLayout) -> u8 {
    snap[l.header_offset as usize + 12]
}

#[test]
fn format_probe_open_round_trip() {
    let dev = Counting::new(16 * MIB);
    assert_eq!(IntegrityStore::probe(&*dev).unwrap(), None);
    assert!(matches!(
        IntegrityStore::open(dev.clone(), 1 << 20),
        Err(IntegrityError::NoHeader { .. })
    ));
    let p = IntegrityProfile::new(4096, Checksum::T10DifCrc16).unwrap();
    let l = IntegrityStore::format(&*dev, p).unwrap();
    assert_eq!(l, layout(16 * MIB, &p).unwrap());
    assert_eq!(IntegrityStore::probe(&*dev).unwrap(), Some(p));
    let store = IntegrityStore::open(dev.clone(), 1 << 20).unwrap();
    assert_eq!(store.data_sectors(), l.data_sectors);
    assert_eq!(store.recovered_regions(), 0);
    assert_eq!(
        header_state(&dev.mem.snapshot(), &l),
        1,
        "open marks in-use"
    );
    store.shutdown().unwrap();
    store.shutdown().unwrap();
    assert_eq!(
        header_state(&dev.mem.snapshot(), &l),
        0,
        "shutdown marks clean"
    );
    assert!(matches!(
        IntegrityStore::format(&MemBackend::new(12 * 1024), p),
        Err(IntegrityError::DeviceTooSmall { .. })
    ));
}

#[test]
fn corrupted_header_on_device_is_a_clear_error() {
    let dev = Counting::new(4 * MIB);
    let l = IntegrityStore::format(&*dev, p512()).unwrap();
    let mut img = dev.mem.snapshot();
    img[l.header_offset as usize + 8] = 9; // version, CRC now wrong
    let bad = Arc::new(MemBackend::from_bytes(img, 512));
    for err in [
        IntegrityStore::probe(&*bad).unwrap_err(),
        IntegrityStore::open(bad.clone(), 0).err().unwrap(),
    ] {
        assert!(
            matches!(
                err,
                IntegrityError::BadHeader {
                    field: "checksum",
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[test]
fn random_header_blocks_never_panic() {
    let dev = Counting::new(4 * MIB);
    let l = IntegrityStore::format(&*dev, p512()).unwrap();
    let img = dev.mem.snapshot();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for round in 0..300 {
        let mut img = img.clone();
        let h = l.header_offset as usize;
        for i in 8..(if round % 2 == 0 { 80 } else { 4096 }) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if round % 3 == 0 || x % 4 == 0 {
                img[h + i] = x as u8;
            }
        }
        let bad = Arc::new(MemBackend::from_bytes(img, 512));
        let _ = IntegrityStore::probe(&*bad);
        let _ = IntegrityStore::open(bad, 1 << 16);
    }
}

#[test]
fn unwritten_then_load_after_end_write() {
    let (dev, store) = fresh(8 * MIB, p512(), 1 << 20);
    let p = *store.profile();
    let mut t = vec![Tuple(*b"garbage!"); 1000];
    store.load(300, &mut t).unwrap();
    assert!(t.iter().all(Tuple::is_unwritten));
    assert!(
        bad_intervals(&store, &*dev, 300, 1000).is_empty(),
        "zeroes verify"
    );
    let data = pattern(&p, 500, 700, 1);
    write(&store, &*dev, 500, &data);
    store.load(500, &mut t[..700]).unwrap();
    assert_eq!(&t[..700], &tuples_for(&p, 500, &data)[..]);
    assert!(bad_intervals(&store, &*dev, 0, 2048).is_empty());
    assert!(store
        .load(store.layout().intervals() - 1, &mut t[..2])
        .is_err());
    assert!(store.begin_write(u64::MAX, 2).is_err());
}

#[test]
fn tuples_survive_shutdown_and_reopen_with_a_tiny_cache() {
    let p = IntegrityProfile::new(4096, Checksum::T10DifCrc16).unwrap();
    let (dev, store) = fresh(64 * MIB, p, 4 * 4096);
    let mut written = Vec::new();
    for (k, first) in [0u64, 511, 3000, 7000, 1025, 9000, 5000, 12000]
        .into_iter()
        .enumerate()
    {
        let data = pattern(&p, first, 40, k as u8);
        write(&store, &*dev, first, &data);
        written.push((first, 40));
    }
    assert!(store.cache.len() <= 6, "cache stays near its bound");
    for &(first, n) in &written {
        assert!(bad_intervals(&store, &*dev, first, n).is_empty());
    }
    store.shutdown().unwrap();
    drop(store);
    let store = IntegrityStore::open(dev.clone(), 1 << 20).unwrap();
    assert_eq!(store.recovered_regions(), 0);
    for &(first, n) in &written {
        assert!(bad_intervals(&store, &*dev, first, n).is_empty());
        let mut t = vec![Tuple::default(); n as usize];
        store.load(first, &mut t).unwrap();
        assert!(t.iter().all(|t| !t.is_unwritten()), "tuples were persisted");
    }
}

#[test]
fn concurrent_end_write_into_one_tuple_block_loses_nothing() {
    let (dev, store) = fresh(8 * MIB, p512(), 1 << 20);
    let store = Arc::new(store);
    let p = *store.profile();
    // 16 threads x 60 intervals, interleaved over blocks 0..2 (slots 0..960).
    let handles: Vec<_> = (0..16u64)
        .map(|t| {
            let (store, dev) = (store.clone(), dev.clone());
            std::thread::spawn(move || {
                for k in 0..60u64 {
                    let i = k * 16 + t;
                    write(&store, &*dev, i, &pattern(&p, i, 1, t as u8));
                    if k % 20 == 0 {
                        store.flush().unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(bad_intervals(&store, &*dev, 0, 960).is_empty());
    store.shutdown().unwrap();
    let store = IntegrityStore::open(dev.clone(), 1 << 20).unwrap();
    assert!(bad_intervals(&store, &*dev, 0, 960).is_empty());
    let mut t = vec![Tuple::default(); 960];
    store.load(0, &mut t).unwrap();
    assert!(t.iter().all(|t| !t.is_unwritten()));
}

#[test]
fn crash_inside_a_write_is_recovered_from_the_data_on_disk() {
    let (dev, store) = fresh(8 * MIB, p512(), 1 << 20);
    let p = *store.profile();
    let l = *store.layout();
    // Region 0: written and durable, then cleanly idle.
    write(&store, &*dev, 0, &pattern(&p, 0, 512, 1));
    store.flush().unwrap();
    store.flush().unwrap();
    assert!(
        !bitmap_bit(&dev.mem.snapshot(), &l, 0),
        "idle region 0 was cleared"
    );
    // Region 2: old contents durable.
    write(&store, &*dev, 1024, &pattern(&p, 1024, 512, 2));
    store.flush().unwrap();
    // Region 2 again: a torn overwrite. The data reaches the disk, the
    // tuples never do (crash before end_write).
    store.begin_write(1100, 64).unwrap();
    let new = pattern(&p, 1100, 64, 9);
    dev.write_at(&[IoSlice::new(&new)], 1100 << 9, false)
        .unwrap();
    // Region 3: data written and end_write done, but never flushed.
    write(&store, &*dev, 1536, &pattern(&p, 1536, 100, 3));
    // Meanwhile a bit of region 0's data rots at rest.
    let mut rot = [0u8; 512];
    dev.read_at(&mut [IoSliceMut::new(&mut rot)], 7 << 9)
        .unwrap();
    rot[10] ^= 0x20;
    dev.write_at(&[IoSlice::new(&rot)], 7 << 9, false).unwrap();
    let snap = dev.mem.snapshot();
    assert!(bitmap_bit(&snap, &l, 2) && bitmap_bit(&snap, &l, 3));
    assert_eq!(header_state(&snap, &l), 1);
    drop(store); // crash: no end_write, no shutdown

    let store = IntegrityStore::open(dev.clone(), 1 << 20).unwrap();
    assert!(
        store.recovered_regions() >= 2,
        "{}",
        store.recovered_regions()
    );
    assert!(
        bad_intervals(&store, &*dev, 1024, 1024).is_empty(),
        "torn regions recomputed"
    );
    assert_eq!(
        bad_intervals(&store, &*dev, 0, 512),
        vec![7],
        "rot in a clean region is caught"
    );
    let snap = dev.mem.snapshot();
    assert!(
        (0..l.regions()).all(|r| !bitmap_bit(&snap, &l, r)),
        "recovery cleared the bitmap"
    );
    drop(store);
    // Crash again right away: nothing dirty, nothing to recompute.
    let store = IntegrityStore::open(dev.clone(), 1 << 20).unwrap();
    assert_eq!(store.recovered_regions(), 0);
}

#[test]
fn flush_clears_idle_bits_only() {
    let (dev, store) = fresh(8 * MIB, p512(), 1 << 20);
    let p = *store.profile();
    let l = *store.layout();
    write(&store, &*dev, 3 * 512 + 5, &pattern(&p, 3 * 512 + 5, 4, 0));
    store.begin_write(9 * 512, 1).unwrap(); // in flight across the flushes
    assert!(
        bitmap_bit(&dev.mem.snapshot(), &l, 3),
        "set durably by begin_write"
    );
    store.flush().unwrap();
    assert!(
        bitmap_bit(&dev.mem.snapshot(), &l, 3),
        "written this interval: kept"
    );
    store.flush().unwrap();
    let snap = dev.mem.snapshot();
    assert!(
        !bitmap_bit(&snap, &l, 3),
        "idle for a whole interval: cleared"
    );
    assert!(bitmap_bit(&snap, &l, 9), "in flight: kept");
    store.end_write(9 * 512, 1, None);
    store.flush().unwrap();
    store.flush().unwrap();
    assert!(
        bitmap_bit(&dev.mem.snapshot(), &l, 9),
        "failed write: kept until recomputed"
    );
    store.shutdown().unwrap();
    let snap = dev.mem.snapshot();
    assert!(!bitmap_bit(&snap, &l, 9));
    assert_eq!(header_state(&snap, &l), 0);
}

#[test]
fn failed_write_is_recomputed_at_shutdown() {
    let (dev, store) = fresh(8 * MIB, p512(), 1 << 20);
    let p = *store.profile();
    write(&store, &*dev, 0, &pattern(&p, 0, 16, 1));
    store.begin_write(4, 8).unwrap();
    // Half the write lands, then the device "fails" it.
    dev.write_at(&[IoSlice::new(&pattern(&p, 4, 4, 7))], 4 << 9, false)
        .unwrap();
    store.end_write(4, 8, None);
    assert_eq!(bad_intervals(&store, &*dev, 0, 16), vec![4, 5, 6, 7]);
    store.shutdown().unwrap();
    let store = IntegrityStore::open(dev.clone(), 1 << 20).unwrap();
    assert!(bad_intervals(&store, &*dev, 0, 16).is_empty());
}

#[test]
fn begin_write_fast_path_does_no_io_and_lookahead_is_bounded() {
    let (dev, store) = fresh(16 * MIB, p512(), 1 << 20);
    let l = *store.layout();
    store.begin_write(0, 8).unwrap();
    store.end_write(0, 8, None);
    let before = dev.io();
    for _ in 0..100 {
        store.begin_write(100, 8).unwrap();
        store.end_write(100, 8, None);
    }
    assert_eq!(dev.io(), before, "bit already durable: no I/O");
    // Sequential: region 1 follows dirty region 0, so 2..=5 come along.
    store.begin_write(512, 8).unwrap();
    let snap = dev.mem.snapshot();
    for r in 1..=1 + LOOKAHEAD {
        assert!(bitmap_bit(&snap, &l, r), "region {r}");
    }
    assert!(!bitmap_bit(&snap, &l, 2 + LOOKAHEAD));
    let before = dev.io();
    store.begin_write(2 * 512, 8).unwrap();
    assert_eq!(dev.io(), before, "lookahead saved a bitmap commit");
    // Not sequential (region 19 is clean): no lookahead.
    store.begin_write(20 * 512, 8).unwrap();
    assert!(!bitmap_bit(&dev.mem.snapshot(), &l, 21));
}

#[test]
fn persist_writes_the_tuple_block_now() {
    let (dev, store) = fresh(8 * MIB, p512(), 1 << 20);
    let p = *store.profile();
    let l = *store.layout();
    let data = pattern(&p, 600, 3, 5);
    write(&store, &*dev, 600, &data);
    let at = (l.tuple_start + 600 * 8) as usize;
    assert_eq!(
        &dev.mem.snapshot()[at..at + 8],
        &[0; 8],
        "only cached so far"
    );
    store.persist(600, 3).unwrap();
    let snap = dev.mem.snapshot();
    let want = tuples_for(&p, 600, &data);
    for (i, t) in want.iter().enumerate() {
        assert_eq!(&snap[at + i * 8..at + i * 8 + 8], &t.0);
    }
    let before = dev.io();
    store.persist(600, 3).unwrap();
    assert_eq!(dev.io(), before, "clean block: nothing to persist");
}

#[test]
fn clear_makes_intervals_unwritten() {
    let (dev, store) = fresh(8 * MIB, p512(), 1 << 20);
    let p = *store.profile();
    write(&store, &*dev, 0, &pattern(&p, 0, 3000, 4));
    store.flush().unwrap();
    // Discard 100..2900: two partial tuple blocks around four whole ones.
    store.begin_write(100, 2800).unwrap();
    dev.write_zeroes(100 << 9, 2800 << 9).unwrap();
    store.clear(100, 2800).unwrap();
    let mut t = vec![Tuple::default(); 3000];
    store.load(0, &mut t).unwrap();
    assert!(t[100..2900].iter().all(Tuple::is_unwritten));
    assert!(t[..100].iter().chain(&t[2900..]).all(|t| !t.is_unwritten()));
    assert!(bad_intervals(&store, &*dev, 0, 3000).is_empty());
    store.shutdown().unwrap();
    let store = IntegrityStore::open(dev.clone(), 1 << 20).unwrap();
    store.load(0, &mut t).unwrap();
    assert!(t[100..2900].iter().all(Tuple::is_unwritten));
    assert!(bad_intervals(&store, &*dev, 0, 3000).is_empty());
}

#[test]
fn one_tib_sparse_image_formats_fast() {
    let dev = Arc::new(Sparse {
        size: 1 << 40,
        blocks: RwLock::new(BTreeMap::new()),
    });
    let start = std::time::Instant::now();
    let l = IntegrityStore::format(&*dev, p512()).unwrap();
    let took = start.elapsed();
    assert!(took.as_millis() < 500, "format took {took:?}");
    assert_eq!(
        dev.blocks.read().unwrap().len(),
        1,
        "only the header is stored"
    );
    let store = IntegrityStore::open(dev.clone(), 1 << 20).unwrap();
    assert_eq!(store.data_sectors(), l.data_sectors);
    let first = store.layout().intervals() - 16;
    let data = pattern(store.profile(), first, 16, 3);
    write(&store, &*dev, first, &data);
    store.shutdown().unwrap();
    let store = IntegrityStore::open(dev.clone(), 1 << 20).unwrap();
    assert!(bad_intervals(&store, &*dev, first, 16).is_empty());
}

#[test]
fn concurrent_writers_loads_and_flushes_with_evictions() {
    // 8 threads over 8 tuple blocks with a 4-block cache: entries are evicted
    // (FUA writeback) while other threads write into and load from them.
    let (dev, store) = fresh(8 * MIB, p512(), 4 * 4096);
    let store = Arc::new(store);
    let p = *store.profile();
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let (store, dev) = (store.clone(), dev.clone());
            std::thread::spawn(move || {
                for k in 0..256u64 {
                    let i = (k * 8 + t) * 2; // every other interval, 8 blocks
                    write(&store, &*dev, i, &pattern(&p, i, 2, t as u8));
                    assert!(bad_intervals(&store, &*dev, i, 2).is_empty());
                    if k % 64 == 0 {
                        store.flush().unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(bad_intervals(&store, &*dev, 0, 4096).is_empty());
    store.shutdown().unwrap();
    let store = IntegrityStore::open(dev.clone(), 1 << 20).unwrap();
    assert!(bad_intervals(&store, &*dev, 0, 4096).is_empty());
}

#[test]
fn lookahead_grows_with_a_sequential_stream_and_stays_bounded() {
    use crate::block::integrity::bitmap::MAX_LOOKAHEAD_REGIONS as MAX;
    let (dev, store) = fresh(256 * MIB, p512(), 4 << 20);
    let l = *store.layout();
    let regions = 600u64.min(l.regions() - MAX - 1);
    let before = dev.io();
    let mut commits = 0;
    for r in 0..regions {
        let io = dev.io();
        store.begin_write(r * 512, 512).unwrap();
        store.end_write(r * 512, 512, None);
        if dev.io() != io {
            commits += 1;
        }
        // Read just the bitmap byte holding the bit past the bound.
        let beyond = r + MAX + 1;
        let block = (l.bitmap_start + beyond / 8) / 4096 * 4096;
        let page = Page::new();
        let mut buf = page.as_slice().to_vec();
        dev.mem
            .read_at(&mut [std::io::IoSliceMut::new(&mut buf)], block)
            .unwrap();
        let byte = buf[((l.bitmap_start + beyond / 8) - block) as usize];
        assert_eq!(
            byte & (1 << (beyond % 8)),
            0,
            "region {r}: lookahead beyond {MAX}"
        );
    }
    assert!(dev.io() > before);
    // 4, 8, 16, 32, 64, then every 64: about regions / 64 + 6 commits, not one per region.
    assert!(
        commits <= regions / MAX + 8,
        "{commits} bitmap commits for {regions} regions"
    );
    assert!(
        commits >= 5,
        "the lookahead is bounded, so a long stream keeps committing"
    );
}
