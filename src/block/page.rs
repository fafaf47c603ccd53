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

use std::alloc::{self, Layout};
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use super::types::PAGE_SIZE;

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

fn page_layout() -> Layout {
    // PAGE_SIZE is a non-zero power of two, so this layout is always valid.
    match Layout::from_size_align(PAGE_SIZE, PAGE_SIZE) {
        Ok(layout) => layout,
        Err(_) => unreachable!("PAGE_SIZE is a power of two"),
    }
}

impl PageBuf {
    fn zeroed() -> PageBuf {
        let layout = page_layout();
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        match NonNull::new(raw) {
            Some(ptr) => PageBuf { ptr },
            None => alloc::handle_alloc_error(layout),
        }
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
        let mut copy = PageBuf::zeroed();
        copy.as_mut_slice().copy_from_slice(self.as_slice());
        copy
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with the same layout, freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), page_layout()) }
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

    /// A new page holding `data` (at most [`PAGE_SIZE`] bytes) at its start.
    pub fn from_slice(data: &[u8]) -> Page {
        let mut buf = PageBuf::zeroed();
        let n = data.len().min(PAGE_SIZE);
        buf.as_mut_slice()[..n].copy_from_slice(&data[..n]);
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
