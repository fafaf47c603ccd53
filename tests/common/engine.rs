//! Helpers for the engine (queue) tests.

use std::io::{self, IoSlice, IoSliceMut};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use biofs::block::backend::{BackendInfo, BlockBackend, MemBackend};
use biofs::block::{Bio, Page, Queue, QueueLimits, ReqOp, Sector, PAGE_SIZE};

/// One call that reached the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Read {
        offset: u64,
        len: u64,
        segs: usize,
    },
    Write {
        offset: u64,
        len: u64,
        segs: usize,
        fua: bool,
    },
    Flush,
    Discard {
        offset: u64,
        len: u64,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
    },
}

/// A memory device that records every call and checks each request
/// against a set of queue limits.
pub struct CheckedBackend {
    pub mem: MemBackend,
    pub limits: Mutex<Option<QueueLimits>>,
    pub ops: Mutex<Vec<Op>>,
    pub violations: Mutex<Vec<String>>,
    pub delay: Mutex<Duration>,
    pub fail_at: Mutex<Option<(u64, i32)>>,
}

impl CheckedBackend {
    pub fn new(size: u64) -> Arc<CheckedBackend> {
        Arc::new(CheckedBackend {
            mem: MemBackend::new(size),
            limits: Mutex::new(None),
            ops: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            delay: Mutex::new(Duration::ZERO),
            fail_at: Mutex::new(None),
        })
    }

    pub fn set_limits(&self, lim: QueueLimits) {
        *self.limits.lock().unwrap() = Some(lim);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap().clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    fn check(&self, what: &str, offset: u64, segs: &[(usize, usize)]) {
        let Some(lim) = self.limits.lock().unwrap().clone() else {
            return;
        };
        let mut v = self.violations.lock().unwrap();
        let total: usize = segs.iter().map(|s| s.1).sum();
        if total as u64 > lim.max_bytes() {
            v.push(format!(
                "{what} at {offset}: {total} bytes > max {}",
                lim.max_bytes()
            ));
        }
        if segs.len() > lim.max_segments as usize {
            v.push(format!(
                "{what} at {offset}: {} segments > max {}",
                segs.len(),
                lim.max_segments
            ));
        }
        if offset % u64::from(lim.logical_block_size) != 0
            || total as u64 % u64::from(lim.logical_block_size) != 0
        {
            v.push(format!(
                "{what} at {offset}: {total} bytes unaligned to the logical block"
            ));
        }
        for (i, &(addr, len)) in segs.iter().enumerate() {
            if len > lim.max_segment_size as usize {
                v.push(format!("{what}: segment of {len} > max segment size"));
            }
            if lim.seg_boundary_mask != u64::MAX {
                let first = addr as u64 & !lim.seg_boundary_mask;
                let last = (addr + len - 1) as u64 & !lim.seg_boundary_mask;
                if first != last {
                    v.push(format!(
                        "{what}: segment {addr:#x}+{len} crosses a boundary"
                    ));
                }
            }
            if lim.virt_boundary_mask != 0 && i + 1 < segs.len() {
                let next = segs[i + 1].0;
                if ((addr + len) as u64 | next as u64) & lim.virt_boundary_mask != 0 {
                    v.push(format!(
                        "{what}: virt gap between {addr:#x}+{len} and {next:#x}"
                    ));
                }
            }
        }
    }

    fn maybe_fail(&self, offset: u64, len: u64) -> io::Result<()> {
        if let Some((sector, errno)) = *self.fail_at.lock().unwrap() {
            let b = sector * 512;
            if b >= offset && b < offset + len {
                return Err(io::Error::from_raw_os_error(errno));
            }
        }
        Ok(())
    }
}

impl BlockBackend for CheckedBackend {
    fn info(&self) -> BackendInfo {
        let mut i = self.mem.info();
        i.kind = "checked";
        i
    }

    fn read_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        let segs: Vec<(usize, usize)> = bufs
            .iter()
            .map(|b| (b.as_ptr() as usize, b.len()))
            .collect();
        self.check("read", offset, &segs);
        let len = segs.iter().map(|s| s.1 as u64).sum();
        std::thread::sleep(*self.delay.lock().unwrap());
        self.ops.lock().unwrap().push(Op::Read {
            offset,
            len,
            segs: segs.len(),
        });
        self.maybe_fail(offset, len)?;
        self.mem.read_at(bufs, offset)
    }

    fn write_at(&self, bufs: &[IoSlice<'_>], offset: u64, fua: bool) -> io::Result<()> {
        let segs: Vec<(usize, usize)> = bufs
            .iter()
            .map(|b| (b.as_ptr() as usize, b.len()))
            .collect();
        self.check("write", offset, &segs);
        let len = segs.iter().map(|s| s.1 as u64).sum();
        std::thread::sleep(*self.delay.lock().unwrap());
        self.ops.lock().unwrap().push(Op::Write {
            offset,
            len,
            segs: segs.len(),
            fua,
        });
        self.maybe_fail(offset, len)?;
        self.mem.write_at(bufs, offset, fua)
    }

    fn flush(&self) -> io::Result<()> {
        self.ops.lock().unwrap().push(Op::Flush);
        self.mem.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.ops.lock().unwrap().push(Op::Discard { offset, len });
        self.mem.discard(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.ops
            .lock()
            .unwrap()
            .push(Op::WriteZeroes { offset, len });
        self.mem.write_zeroes(offset, len)
    }
}

/// A page whose bytes are a function of (seed, position).
pub fn pattern_page(seed: u64) -> Page {
    Page::from_slice(&super::pattern(seed, PAGE_SIZE))
}

/// Write `pages` at `sector` and wait.
pub fn write_pages(q: &Queue, sector: u64, pages: &[Page]) -> Bio {
    let mut bio = Bio::new(ReqOp::Write, Sector(sector), pages.len());
    for p in pages {
        assert_eq!(
            bio.add_page(p.clone(), PAGE_SIZE as u32, 0),
            PAGE_SIZE as u32
        );
    }
    q.submit_bio_wait(bio)
}

/// Read `n` pages at `sector` and wait; returns the data.
pub fn read_pages(q: &Queue, sector: u64, n: usize) -> (Bio, Vec<u8>) {
    let mut bio = Bio::new(ReqOp::Read, Sector(sector), n);
    for _ in 0..n {
        assert_eq!(
            bio.add_page(Page::new(), PAGE_SIZE as u32, 0),
            PAGE_SIZE as u32
        );
    }
    let bio = q.submit_bio_wait(bio);
    let data = bio.copy_data();
    (bio, data)
}

/// A queue over `dev`, which checks every request against `limits` (the
/// backend's defaults when `None`).
pub fn checked_queue(dev: &Arc<CheckedBackend>, limits: Option<QueueLimits>) -> Queue {
    if let Some(l) = &limits {
        dev.set_limits(l.clone());
    }
    let config = biofs::block::QueueConfig {
        limits,
        ..biofs::block::QueueConfig::default()
    };
    Queue::new(Arc::clone(dev) as Arc<dyn BlockBackend>, config).unwrap()
}
