//! The filesystem core (issue 4, being built; see `docs/design.md`): the
//! operations of a mounted biofs, independent of FUSE.
//!
//! Built so far: directory operations on the hashed B+tree ([`dir`]) and
//! metadata transactions over the journal ([`txn`]).

pub mod dir;
pub mod txn;
