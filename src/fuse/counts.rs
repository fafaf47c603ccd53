//! FUSE requests by opcode: how many the kernel sent and how long biofs
//! took to answer them, for `biofs stats` (the round trips an operation
//! costs are the first thing to count when a metadata workload is slow).
//!
//! One table per process (a daemon serves one mount); each request adds
//! to two relaxed atomics of its opcode's row.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The opcodes counted, by the names the adapter's handlers give
/// themselves ([`super::adapter`]'s `guarded`).
const OPS: [&str; 37] = [
    "lookup",
    "forget",
    "getattr",
    "setattr",
    "readlink",
    "symlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "statfs",
    "release",
    "fsync",
    "setxattr",
    "getxattr",
    // Reads of biofs's own xattrs (trusted.biofs.*: `biofs stats` among
    // them), kept apart so that reading the counts does not change them.
    "getxattr_biofs",
    "listxattr",
    "removexattr",
    "flush",
    "opendir",
    "readdir",
    "releasedir",
    "fsyncdir",
    "access",
    "create",
    "readdirplus",
    "fallocate",
    "lseek",
    "syncfs",
    "destroy",
    "init",
    "other",
];

struct Row {
    count: AtomicU64,
    nanos: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: Row = Row {
    count: AtomicU64::new(0),
    nanos: AtomicU64::new(0),
};

static TABLE: [Row; OPS.len()] = [ZERO; OPS.len()];

/// The row of `op`; an opcode not in [`OPS`] counts as "other".
fn row(op: &str) -> Option<&'static Row> {
    let i = OPS.iter().position(|o| *o == op).unwrap_or(OPS.len() - 1);
    TABLE.get(i)
}

/// Count one request of `op` that began at `start`.
pub fn record(op: &str, start: Instant) {
    if let Some(r) = row(op) {
        r.count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        r.nanos.fetch_add(ns, Ordering::Relaxed);
    }
}

/// How many requests of `op` so far.
pub fn count(op: &str) -> u64 {
    row(op).map_or(0, |r| r.count.load(Ordering::Relaxed))
}

/// The table as text: one line of the total, then each opcode seen, with
/// its count and the mean time biofs took to answer it.
pub fn report() -> String {
    let rows: Vec<(&str, u64, u64)> = OPS
        .iter()
        .zip(TABLE.iter())
        .map(|(op, r)| {
            (
                *op,
                r.count.load(Ordering::Relaxed),
                r.nanos.load(Ordering::Relaxed),
            )
        })
        .filter(|(_, n, _)| *n > 0)
        .collect();
    let total: u64 = rows.iter().map(|(_, n, _)| n).sum();
    let mut s = format!("fuse requests: {total} (count, mean time biofs took to answer)\n");
    for (op, n, ns) in rows {
        s.push_str(&format!("  {op:<12} {n:>10} {:>9} us\n", ns / n / 1000));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_opcode() {
        let before = count("readlink");
        let other = count("other");
        record("readlink", Instant::now());
        record("readlink", Instant::now());
        record("no-such-op", Instant::now());
        assert_eq!(count("readlink"), before + 2);
        assert_eq!(count("other"), other + 1);
        let r = report();
        assert!(r.starts_with("fuse requests: "), "{r}");
        assert!(
            r.lines().any(|l| l.trim_start().starts_with("readlink")),
            "{r}"
        );
    }
}
