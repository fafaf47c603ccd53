//! biofs: a userspace extent filesystem over FUSE, built on a block I/O engine
//! modelled on the Linux block layer.
//!
//! The crate is layered bottom-up:
//! - [`sys`]: the one module that makes raw syscalls (`preadv`, `pwritev2`,
//!   `fallocate`, block-device ioctls, `ioprio_get`).
//! - [`block`]: bios, bio sets, chaining, plugging and merging, splitting to
//!   queue limits, integrity metadata, io_context priorities, and the queue
//!   workers that do the I/O against a [`block::backend::BlockBackend`].

#![deny(unsafe_op_in_unsafe_fn)]

pub mod block;
pub mod cli;
pub mod format;
pub mod fs;
pub mod fuse;
pub mod sys;
