//! Per-thread plugging: batch submissions, merge them, and hand them to the
//! scheduler together.
//!
//! Counterpart of `blk_start_plug()`, `blk_finish_plug()`,
//! `blk_flush_plug()` and `blk_attempt_plug_merge()` (block/blk-core.c,
//! block/blk-merge.c). A [`Plug`] is an RAII guard: bios submitted by this
//! thread while it lives collect in a per-thread list (merging with each
//! other), which is flushed to the queues when the outermost guard is
//! dropped, when the list grows past [`PLUG_MAX_REQUESTS`], or when the
//! thread is about to wait for I/O. A nested plug does nothing.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::Arc;

use super::bio::Bio;
use super::merge::{MergeOutcome, Request, RequestList};
use super::queue::QueueInner;
use super::types::ReqFlags;

/// A plug list holding this many requests is flushed before a new one is
/// added (`BLK_MAX_REQUEST_COUNT`).
pub const PLUG_MAX_REQUESTS: usize = 32;

#[derive(Default)]
struct PlugState {
    depth: usize,
    lists: Vec<(Arc<QueueInner>, RequestList)>,
}

thread_local! {
    static PLUG: RefCell<PlugState> = RefCell::new(PlugState::default());
}

/// An active plug on the calling thread. Not `Send`: it belongs to its thread.
pub struct Plug {
    _thread_bound: PhantomData<*const ()>,
}

impl Plug {
    /// Start plugging (`blk_start_plug()`). Inside an active plug this only
    /// nests: the outermost guard flushes.
    pub fn new() -> Plug {
        PLUG.with(|p| {
            if let Ok(mut st) = p.try_borrow_mut() {
                st.depth += 1;
            }
        });
        Plug {
            _thread_bound: PhantomData,
        }
    }

    /// Send what is plugged so far to the queues, keeping the plug
    /// (`blk_flush_plug()`).
    pub fn flush(&self) {
        flush_current();
    }
}

impl Default for Plug {
    fn default() -> Plug {
        Plug::new()
    }
}

impl Drop for Plug {
    /// `blk_finish_plug()`.
    fn drop(&mut self) {
        let outermost = PLUG.with(|p| match p.try_borrow_mut() {
            Ok(mut st) => {
                st.depth = st.depth.saturating_sub(1);
                st.depth == 0
            }
            Err(_) => false,
        });
        if outermost {
            flush_current();
        }
    }
}

/// True while the calling thread has an active plug.
pub fn is_plugged() -> bool {
    PLUG.with(|p| p.try_borrow().map(|st| st.depth > 0).unwrap_or(false))
}

/// Add `bio` to the calling thread's plug for queue `q`, merging it with a
/// plugged request where it can. Gives the bio back when no plug is active.
#[inline]
pub(crate) fn plug_bio(q: &Arc<QueueInner>, bio: Bio) -> Option<Bio> {
    let mut unplugged = None;
    let full = PLUG.with(|p| {
        let mut st = match p.try_borrow_mut() {
            Ok(st) if st.depth > 0 => st,
            _ => {
                unplugged = Some(bio);
                return Vec::new();
            }
        };
        let pos = match st.lists.iter().position(|(lq, _)| Arc::ptr_eq(lq, q)) {
            Some(pos) => pos,
            None => {
                st.lists.push((Arc::clone(q), RequestList::default()));
                st.lists.len() - 1
            }
        };
        let sync = bio.flags.contains(ReqFlags::SYNC);
        #[allow(
            clippy::indexing_slicing,
            reason = "pos is the position just found, or the index of the list just pushed"
        )]
        let list = &mut st.lists[pos].1;
        let (merged, mut full) = list.add(bio, &q.limits, PLUG_MAX_REQUESTS);
        if let Some(MergeOutcome::Merged { kind, hint_hit }) = merged {
            q.stats.record_merge(kind, hint_hit);
        }
        if sync {
            // Someone waits for it: send it (and what came before) now.
            full.extend(list.drain());
        }
        full
    });
    if !full.is_empty() {
        q.insert_requests(full);
    }
    unplugged
}

/// Take everything plugged on this thread, leaving the plug active but
/// empty. The lists are removed too, so a plug never keeps a queue alive.
fn take_all() -> Vec<(Arc<QueueInner>, Vec<Request>)> {
    PLUG.with(|p| match p.try_borrow_mut() {
        Ok(mut st) => std::mem::take(&mut st.lists)
            .into_iter()
            .filter(|(_, l)| !l.is_empty())
            .map(|(q, mut l)| (q, l.drain()))
            .collect(),
        Err(_) => Vec::new(),
    })
}

/// Send everything plugged on this thread to its queues.
pub fn flush_current() {
    for (q, rqs) in take_all() {
        q.insert_requests(rqs);
    }
}

/// Everything plugged on this thread as work another thread can submit
/// (for the bio set rescuer), or `None` if nothing is plugged.
pub(crate) fn take_plugged_work() -> Option<Box<dyn FnOnce() + Send>> {
    let lists = take_all();
    if lists.is_empty() {
        return None;
    }
    Some(Box::new(move || {
        for (q, rqs) in lists {
            q.insert_requests(rqs);
        }
    }))
}
