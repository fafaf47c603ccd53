//! When a read updates atime: the counterpart of `atime_needs_update()`
//! and `relatime_need_update()` (fs/inode.c). The kernel's FUSE leaves
//! atime to the filesystem (its inodes are `S_NOATIME`), so biofs applies
//! the mount's options itself when a READ or READDIR reaches it; the new
//! atime joins the running transaction like any inode change and is
//! written by the next commit, never by the read.

use std::sync::atomic::{AtomicU8, Ordering};

use super::types::AtimeMode;
use crate::format::inode::{FileType, Inode, Timespec};

/// A day: relatime updates an atime at least this old.
const RELATIME_MAX_AGE_SECS: i64 = 24 * 60 * 60;

/// The mount's atime options, changeable while mounted (a remount).
#[derive(Debug)]
pub struct AtimePolicy(AtomicU8);

const NODIRATIME: u8 = 1 << 7;

impl AtimePolicy {
    pub fn new(mode: AtimeMode, nodiratime: bool) -> AtimePolicy {
        AtimePolicy(AtomicU8::new(encode(mode, nodiratime)))
    }

    pub fn set(&self, mode: AtimeMode, nodiratime: bool) {
        self.0.store(encode(mode, nodiratime), Ordering::Relaxed);
    }

    pub fn get(&self) -> (AtimeMode, bool) {
        let v = self.0.load(Ordering::Relaxed);
        let mode = match v & !NODIRATIME {
            0 => AtimeMode::NoAtime,
            2 => AtimeMode::Strict,
            _ => AtimeMode::Relatime,
        };
        (mode, v & NODIRATIME != 0)
    }

    /// Does a read of `inode` at `now` update its atime?
    pub fn needs_update(&self, inode: &Inode, now: Timespec) -> bool {
        let (mode, nodiratime) = self.get();
        needs_update(mode, nodiratime, inode, now)
    }
}

fn encode(mode: AtimeMode, nodiratime: bool) -> u8 {
    let m = match mode {
        AtimeMode::NoAtime => 0,
        AtimeMode::Relatime => 1,
        AtimeMode::Strict => 2,
    };
    if nodiratime {
        m | NODIRATIME
    } else {
        m
    }
}

/// `atime_needs_update()`: never under `noatime`, nor for a directory
/// under `nodiratime`; under `relatime` only if atime is not after mtime
/// or ctime, or is a day old; never to the atime it has.
pub fn needs_update(mode: AtimeMode, nodiratime: bool, inode: &Inode, now: Timespec) -> bool {
    let dir = inode.file_type() == FileType::Directory;
    if mode == AtimeMode::NoAtime || (nodiratime && dir) {
        return false;
    }
    if mode == AtimeMode::Relatime
        && inode.atime > inode.mtime
        && inode.atime > inode.ctime
        && now.sec - inode.atime.sec < RELATIME_MAX_AGE_SECS
    {
        return false;
    }
    inode.atime != now
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::inode::{S_IFDIR, S_IFREG};

    fn at(sec: i64) -> Timespec {
        Timespec { sec, nsec: 0 }
    }

    fn inode(mode: u32, atime: i64, mtime: i64, ctime: i64) -> Inode {
        let mut i = Inode::new(mode, 0, 0, at(0));
        i.atime = at(atime);
        i.mtime = at(mtime);
        i.ctime = at(ctime);
        i
    }

    #[test]
    fn relatime_as_the_kernel() {
        let now = at(1_000_000);
        let r = |i: &Inode| needs_update(AtimeMode::Relatime, false, i, now);
        // Not after mtime (equal counts) or ctime: update.
        assert!(r(&inode(S_IFREG | 0o644, 100, 200, 50)));
        assert!(r(&inode(S_IFREG | 0o644, 200, 200, 50)));
        assert!(r(&inode(S_IFREG | 0o644, 100, 50, 200)));
        // After both, younger than a day: leave it.
        let fresh = now.sec - RELATIME_MAX_AGE_SECS + 1;
        assert!(!r(&inode(S_IFREG | 0o644, fresh, 50, 50)));
        // A day old: update.
        let old = now.sec - RELATIME_MAX_AGE_SECS;
        assert!(r(&inode(S_IFREG | 0o644, old, 50, 50)));
    }

    #[test]
    fn strict_noatime_nodiratime() {
        let now = at(1_000_000);
        let fresh = inode(S_IFREG | 0o644, now.sec - 5, 50, 50);
        assert!(needs_update(AtimeMode::Strict, false, &fresh, now));
        let same = inode(S_IFREG | 0o644, now.sec, 50, 50);
        assert!(!needs_update(AtimeMode::Strict, false, &same, now));
        let stale = inode(S_IFREG | 0o644, 10, 50, 50);
        assert!(!needs_update(AtimeMode::NoAtime, false, &stale, now));
        let dir = inode(S_IFDIR | 0o755, 10, 50, 50);
        assert!(needs_update(AtimeMode::Relatime, false, &dir, now));
        assert!(!needs_update(AtimeMode::Relatime, true, &dir, now));
        assert!(!needs_update(AtimeMode::Strict, true, &dir, now));
        assert!(needs_update(AtimeMode::Relatime, true, &stale, now));
    }

    #[test]
    fn the_policy_round_trips() {
        let p = AtimePolicy::new(AtimeMode::Relatime, false);
        assert_eq!(p.get(), (AtimeMode::Relatime, false));
        for mode in [AtimeMode::NoAtime, AtimeMode::Relatime, AtimeMode::Strict] {
            for nd in [false, true] {
                p.set(mode, nd);
                assert_eq!(p.get(), (mode, nd));
            }
        }
    }
}
