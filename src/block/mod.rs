//! The block I/O engine: the userspace counterpart of the Linux block layer.
//!
//! See `docs/block-layer.md` for the map from kernel names to these modules.

pub mod backend;
pub mod integrity;
pub mod page;
pub mod types;

pub use page::Page;
pub use types::{
    BlkStatus, ReqFlags, ReqOp, Sector, PAGE_SHIFT, PAGE_SIZE, SECTOR_SHIFT, SECTOR_SIZE,
};
