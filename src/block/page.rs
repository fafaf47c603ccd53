//! Page-sized, `O_DIRECT`-aligned buffers: the memory a bio's segments point into.
//!
//! Counterpart of `struct page` as the block layer uses it. A [`Page`] is a
//! reference-counted 4 KiB buffer aligned to 4 KiB, so that any sector-aligned
//! slice of it is a valid `O_DIRECT` buffer.
//!
//! Sharing rules (the "stable pages" contract):
//! - A page may be shared (cloned) freely while it is only read; a write bio
//!   may hold a page that the page cache also holds.
//! - Writing through a page needs exclusive access: [`Page::get_mut`] gives it
//!   only to the sole owner, and [`Page::make_mut`] copies first when shared,
//!   so data under writeback never changes beneath the device.
//! - A read bio must own its pages exclusively when it is submitted (the queue
//!   checks this and fails the bio with `BlkStatus::Invalid` otherwise). While
//!   it is in flight only the engine writes into them, and only within the
//!   byte ranges of the bio's segments.
//!
//! Memory (the page allocator's free lists): a freed page goes back to a
//! process-wide pool and the next page comes from there, so a running
//! mount allocates its pages once and recycles them instead of returning
//! them to the OS and faulting fresh ones in (zeroing a recycled page
//! costs a `memset`, a fresh one a page fault and the kernel's zeroing).
//! The pool keeps at most its limit of idle pages ([`PoolReservation`]
//! raises it by what a user, such as a mount's page cache, will need);
//! the memory of pages freed above it goes back to the OS (`MADV_DONTNEED`)
//! while their addresses stay in the pool. Slabs are never unmapped.

use std::alloc::{self, Layout};
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::SegQueue;

use super::types::PAGE_SIZE;

/// Idle pages the pool keeps resident with no reservation (16 MiB).
const POOL_BASE_PAGES: usize = 4096;
/// Pages per slab: the pool maps memory from the OS 256 KiB at a time
/// (one page-aligned mapping, so a page costs no allocator header and no
/// alignment padding; a `posix_memalign` per page doubled the footprint).
const SLAB_PAGES: usize = 64;

/// An idle page in the pool: a page-aligned `PAGE_SIZE` piece of a slab,
/// its bytes initialised (old data, or zeros), owned by the pool.
struct IdlePage(NonNull<u8>);

// SAFETY: an idle page is owned by the pool alone; whoever pops it owns it.
unsafe impl Send for IdlePage {}

/// The process-wide page pool.
struct Pool {
    idle: SegQueue<IdlePage>,
    /// Pages not resident: given back with `MADV_DONTNEED` when freed above
    /// the limit, or not yet touched in a new slab. They read as zeros.
    cold: SegQueue<IdlePage>,
    /// Pages in `idle`.
    nr_idle: AtomicUsize,
    /// Pages handed out and not yet freed.
    live: AtomicUsize,
    /// Most pages `idle` keeps.
    limit: AtomicUsize,
    /// Pages mapped from the OS, and pages handed out again from the pool.
    fresh: AtomicUsize,
    recycled: AtomicUsize,
    /// Most pages live and idle at once (the pool's share of the peak RSS).
    peak: AtomicUsize,
}

static POOL: Pool = Pool {
    idle: SegQueue::new(),
    cold: SegQueue::new(),
    nr_idle: AtomicUsize::new(0),
    live: AtomicUsize::new(0),
    limit: AtomicUsize::new(POOL_BASE_PAGES),
    fresh: AtomicUsize::new(0),
    recycled: AtomicUsize::new(0),
    peak: AtomicUsize::new(0),
};

/// The page pool's figures, for statistics (`biofs stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Pages in use now.
    pub live: usize,
    /// Pages idle in the pool, ready to be used again.
    pub idle: usize,
    /// Most idle pages the pool keeps.
    pub limit: usize,
    /// Most pages live and idle at once since the process started.
    pub peak: usize,
    /// Pages mapped from the OS (each a page fault on first use).
    pub fresh: usize,
    /// Pages handed out again from the pool.
    pub recycled: usize,
}

impl fmt::Display for PoolStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |pages: usize| (pages * PAGE_SIZE) >> 20;
        write!(
            f,
            "page pool: {} MiB live, {} MiB idle (keeps up to {} MiB), peak {} MiB; {} pages mapped, {} recycled",
            mib(self.live),
            mib(self.idle),
            mib(self.limit),
            mib(self.peak),
            self.fresh,
            self.recycled
        )
    }
}

/// The page pool's figures now.
pub fn pool_stats() -> PoolStats {
    PoolStats {
        live: POOL.live.load(Ordering::Relaxed),
        idle: POOL.nr_idle.load(Ordering::Relaxed),
        limit: POOL.limit.load(Ordering::Relaxed),
        peak: POOL.peak.load(Ordering::Relaxed),
        fresh: POOL.fresh.load(Ordering::Relaxed),
        recycled: POOL.recycled.load(Ordering::Relaxed),
    }
}

/// Room in the page pool for `pages` more idle pages while this lives
/// (a mount reserves its page cache's size): its user's pages, once
/// allocated, are recycled rather than freed. Counterpart of
/// `mempool_create`'s reserve, without preallocation: pages are taken
/// from the allocator on first need only.
pub struct PoolReservation(usize);

impl PoolReservation {
    pub fn new(pages: usize) -> PoolReservation {
        POOL.limit.fetch_add(pages, Ordering::Relaxed);
        PoolReservation(pages)
    }
}

impl Drop for PoolReservation {
    fn drop(&mut self) {
        POOL.limit.fetch_sub(self.0, Ordering::Relaxed);
        // Give back the memory of what the pool now holds above its limit.
        while POOL.nr_idle.load(Ordering::Relaxed) > POOL.limit.load(Ordering::Relaxed) {
            let Some(p) = POOL.idle.pop() else { break };
            POOL.nr_idle.fetch_sub(1, Ordering::Relaxed);
            make_cold(p);
        }
    }
}

/// Give an idle page's memory back to the OS and keep its address.
fn make_cold(p: IdlePage) {
    // SAFETY: the page is a PAGE_SIZE, page-aligned piece of a slab (a
    // private anonymous mapping) owned by the pool alone.
    unsafe { crate::sys::discard_memory(p.0.as_ptr(), PAGE_SIZE) };
    POOL.cold.push(p);
}

/// Map a new slab: one of its pages for the caller, the others cold.
fn new_slab() -> NonNull<u8> {
    let len = SLAB_PAGES * PAGE_SIZE;
    let base = match crate::sys::map_anonymous(len) {
        Ok(p) => p,
        Err(_) => match Layout::from_size_align(len, PAGE_SIZE) {
            Ok(layout) => alloc::handle_alloc_error(layout),
            Err(_) => unreachable!("the slab layout is valid"),
        },
    };
    POOL.fresh.fetch_add(SLAB_PAGES, Ordering::Relaxed);
    for k in 1..SLAB_PAGES {
        // SAFETY: k * PAGE_SIZE < len: inside the mapping.
        let p = unsafe { base.add(k * PAGE_SIZE) };
        POOL.cold.push(IdlePage(p));
    }
    base
}

/// The aligned allocation behind a [`Page`].
struct PageBuf {
    ptr: NonNull<u8>,
}

// SAFETY: PageBuf owns its allocation exclusively; the bytes are plain data.
// Concurrent access is governed by the sharing rules in the module docs:
// shared references only read, writes need `&mut` (via Arc uniqueness) or
// happen inside the engine on byte ranges that no one else can observe.
unsafe impl Send for PageBuf {}
// SAFETY: see the `Send` impl above.
unsafe impl Sync for PageBuf {}

impl PageBuf {
    /// A page from the pool (its old bytes, or zeros).
    fn recycled() -> PageBuf {
        let live = POOL.live.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(p) = POOL.idle.pop() {
            POOL.nr_idle.fetch_sub(1, Ordering::Relaxed);
            POOL.recycled.fetch_add(1, Ordering::Relaxed);
            return PageBuf { ptr: p.0 };
        }
        POOL.peak.fetch_max(
            live + POOL.nr_idle.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let ptr = match POOL.cold.pop() {
            Some(p) => p.0,
            None => new_slab(),
        };
        PageBuf { ptr }
    }

    fn zeroed() -> PageBuf {
        let mut buf = PageBuf::recycled();
        buf.as_mut_slice().fill(0);
        buf
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points to PAGE_SIZE initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), PAGE_SIZE) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), PAGE_SIZE) }
    }
}

impl Clone for PageBuf {
    fn clone(&self) -> PageBuf {
        let mut copy = PageBuf::recycled();
        copy.as_mut_slice().copy_from_slice(self.as_slice());
        copy
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        POOL.live.fetch_sub(1, Ordering::Relaxed);
        // A slightly stale count only lets the pool keep a few pages more
        // or fewer than its limit.
        if POOL.nr_idle.load(Ordering::Relaxed) < POOL.limit.load(Ordering::Relaxed) {
            POOL.nr_idle.fetch_add(1, Ordering::Relaxed);
            POOL.idle.push(IdlePage(self.ptr));
        } else {
            make_cold(IdlePage(self.ptr));
        }
    }
}

/// A reference-counted, 4 KiB-aligned page of memory.
#[derive(Clone)]
pub struct Page(Arc<PageBuf>);

impl Page {
    /// A new zero-filled page.
    pub fn new() -> Page {
        Page(Arc::new(PageBuf::zeroed()))
    }

    /// A page whose bytes are unspecified (a recycled page's old contents,
    /// never uninitialised memory): for a read that fills it whole.
    pub fn new_for_overwrite() -> Page {
        Page(Arc::new(PageBuf::recycled()))
    }

    /// A new page holding `data` (at most [`PAGE_SIZE`] bytes) at its start.
    #[allow(
        clippy::indexing_slicing,
        reason = "n <= data.len() and n <= PAGE_SIZE, the length of b"
    )]
    pub fn from_slice(data: &[u8]) -> Page {
        let mut buf = PageBuf::recycled();
        let n = data.len().min(PAGE_SIZE);
        let b = buf.as_mut_slice();
        b[..n].copy_from_slice(&data[..n]);
        b[n..].fill(0);
        Page(Arc::new(buf))
    }

    /// The page's bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.0.as_slice()
    }

    /// `len` bytes at `offset`, made from the page's address so that no
    /// reference to the rest of the page is created (another piece of a
    /// split read may be filling it). An out-of-range request yields an
    /// empty slice.
    pub fn slice(&self, offset: usize, len: usize) -> &[u8] {
        if offset.checked_add(len).is_none_or(|end| end > PAGE_SIZE) {
            return &[];
        }
        // SAFETY: the range lies inside the allocation (checked above) and
        // the bytes are initialised. Only these bytes are borrowed; under
        // the in-flight rule of the module docs nobody writes them while a
        // shared reference to them can exist.
        unsafe { std::slice::from_raw_parts(self.0.ptr.as_ptr().add(offset), len) }
    }

    /// The page's bytes for writing, if this is the only reference to it.
    pub fn get_mut(&mut self) -> Option<&mut [u8]> {
        Arc::get_mut(&mut self.0).map(PageBuf::as_mut_slice)
    }

    /// The page's bytes for writing, copying the page first if it is shared
    /// (so that a bio holding the old copy keeps stable data).
    pub fn make_mut(&mut self) -> &mut [u8] {
        Arc::make_mut(&mut self.0).as_mut_slice()
    }

    /// True when no other reference to this page exists.
    pub fn is_unique(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    /// How many references to this page exist.
    pub fn ref_count(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    /// True when `self` and `other` are the same page (not merely equal bytes).
    pub fn same_page(&self, other: &Page) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The address of the page's first byte, for boundary checks.
    pub fn addr(&self) -> usize {
        self.0.ptr.as_ptr() as usize
    }

    /// `len` bytes at `offset` for the device to read into.
    ///
    /// # Safety
    /// Only for the engine's read path, under the in-flight read rule in the
    /// module docs: while the returned slice lives, no other reference to
    /// these bytes may be used (the read bio owned the page exclusively at
    /// submission and its pieces cover disjoint ranges). `offset + len` must
    /// not exceed [`PAGE_SIZE`]; it is checked, and an out-of-range request
    /// yields an empty slice.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut_in_flight(&self, offset: usize, len: usize) -> &mut [u8] {
        if offset.checked_add(len).is_none_or(|end| end > PAGE_SIZE) {
            return &mut [];
        }
        // SAFETY: the range is inside the allocation (checked above); the
        // caller guarantees exclusive use of these bytes while the slice lives.
        unsafe { std::slice::from_raw_parts_mut(self.0.ptr.as_ptr().add(offset), len) }
    }
}

impl Default for Page {
    fn default() -> Page {
        Page::new()
    }
}

impl fmt::Debug for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Page({:#x}, refs={})", self.addr(), self.ref_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_aligned_and_zeroed() {
        let p = Page::new();
        assert_eq!(p.addr() % PAGE_SIZE, 0);
        assert!(p.as_slice().iter().all(|&b| b == 0));
        assert_eq!(p.as_slice().len(), PAGE_SIZE);
    }

    #[test]
    fn get_mut_needs_exclusive_access() {
        let mut p = Page::new();
        assert!(p.get_mut().is_some());
        let q = p.clone();
        assert!(p.get_mut().is_none());
        assert!(p.same_page(&q));
        drop(q);
        assert!(p.get_mut().is_some());
    }

    #[test]
    fn recycled_pages_come_back_zeroed() {
        let _r = PoolReservation::new(8);
        let mut p = Page::new();
        p.make_mut().fill(0xab);
        drop(p);
        for _ in 0..16 {
            let q = Page::new();
            assert!(q.as_slice().iter().all(|&b| b == 0));
            let r = Page::from_slice(b"xy");
            assert!(r.as_slice()[2..].iter().all(|&b| b == 0));
        }
        let s = pool_stats();
        assert!(s.recycled > 0 && s.limit >= 8, "{s}");
    }

    #[test]
    fn make_mut_copies_a_shared_page() {
        let mut p = Page::from_slice(b"abc");
        let held = p.clone();
        p.make_mut()[0] = b'x';
        assert_eq!(
            &held.as_slice()[..3],
            b"abc",
            "the shared copy must stay stable"
        );
        assert_eq!(&p.as_slice()[..3], b"xbc");
        assert!(!p.same_page(&held));
    }
}
