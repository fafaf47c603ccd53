//! The FUSE adapter: serves the core ([`crate::fs::Fs`]) to the kernel
//! through `fuser`.
//!
//! - [`errno`]: the one mapping from the core's errors to FUSE replies.
//! - [`convert`]: attributes, times, names and flag sets, both ways.
//! - [`adapter`]: the `fuser::Filesystem` ([`FuseFs`]), request by request;
//!   `readdir` fills its directory replies.
//! - `acl`: POSIX ACLs (on unless `-o noacl`), the part FUSE leaves to the
//!   filesystem (the mode kept in step, default ACLs inherited).
//! - [`counts`]: FUSE requests by opcode, for `biofs stats`.
//! - [`options`]: the `-o` mount options of `biofs` and mount(8).
//! - `privs`: setuid and setgid cleared on writes, truncates, fallocate
//!   and ACL changes, by the kernel's rules and the caller's credentials.
//! - [`session`]: mounting, the event loops, and ending on a signal or an
//!   unmount.

mod acl;
pub mod adapter;
pub mod convert;
pub mod counts;
pub mod errno;
mod flush;
pub mod options;
mod privs;
mod readdir;
pub mod session;

pub use adapter::{FuseConfig, FuseFs, MODE_XATTR, PID_XATTR, STATS_XATTR};
