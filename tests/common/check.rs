//! Assertions and data for the mount tests.

use std::fmt::Debug;
use std::io;
use std::path::Path;

/// `r` must have failed with `want` (a `libc::E*`).
#[track_caller]
pub fn expect_errno<T: Debug>(r: io::Result<T>, want: i32, what: &str) {
    match r {
        Err(e) if e.raw_os_error() == Some(want) => {}
        Err(e) => panic!(
            "{what}: got error {e}, want {}",
            io::Error::from_raw_os_error(want)
        ),
        Ok(v) => panic!(
            "{what}: succeeded ({v:?}), want {}",
            io::Error::from_raw_os_error(want)
        ),
    }
}

/// `r` must have succeeded.
#[track_caller]
pub fn ok<T>(r: io::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `len` deterministic bytes for `seed`, eight at a time (fast enough in a
/// debug build for tens of MiB).
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = super::rng::Rng(seed ^ 0xB10F_5EED);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The file at `path` must hold exactly `want`.
#[track_caller]
pub fn assert_file(path: &Path, want: &[u8]) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    super::assert_same(&got, want, &path.display().to_string());
}

/// Nanoseconds since the epoch of a `stat` time pair.
pub fn ns(sec: i64, nsec: i64) -> i128 {
    sec as i128 * 1_000_000_000 + nsec as i128
}

/// Now, in nanoseconds since the epoch.
pub fn now_ns() -> i128 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    d.as_nanos() as i128
}
