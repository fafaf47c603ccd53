//! Block integrity: protection tuples for every data interval, kept by the
//! engine in a region at the end of the device.
//!
//! Counterpart of `block/bio-integrity.c` + `block/t10-pi.c` (the profile and
//! tuples) and of dm-integrity in bitmap mode (the on-device tuple store and
//! its crash story). See docs/integrity.md.

mod bitmap;
mod cache;
pub mod error;
pub mod layout;
pub mod profile;
pub mod store;

pub use error::IntegrityError;
pub use layout::{layout, IntegrityLayout};
pub use profile::{Checksum, IntegrityProfile, Tuple, TupleHasher};
pub use store::IntegrityStore;
