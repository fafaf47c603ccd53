//! The FUSE adapter: serves the core ([`crate::fs::Fs`]) to the kernel
//! through `fuser`.
//!
//! - [`errno`]: the one mapping from the core's errors to FUSE replies.
//! - [`convert`]: attributes, times, names and flag sets, both ways.

pub mod convert;
pub mod errno;
