//! The filesystem core (issue 4, being built; see `docs/design.md`): the
//! operations of a mounted biofs, independent of FUSE.
//!
//! Built so far: directory operations on the hashed B+tree ([`dir`]),
//! metadata transactions over the journal ([`txn`]) behind the buffer cache
//! ([`buffer`]), and block and inode allocation inside them ([`alloc`]).

pub mod alloc;
mod atime;
pub mod buffer;
mod data;
pub mod dir;
pub mod extmap;
mod meta;
mod namei;
mod ops;
mod pagecache;
pub mod populate;
pub mod txn;
pub mod types;
mod xattrs;

pub use data::Filled;
pub use ops::{Fs, MountError};
pub use types::*;
