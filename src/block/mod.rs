//! The block I/O engine: the userspace counterpart of the Linux block layer.
//!
//! See `docs/block-layer.md` for the map from kernel names to these modules.

pub mod backend;
pub mod bio;
pub mod bioset;
pub mod builder;
pub mod integrity;
pub mod integrity_payload;
pub mod ioc;
pub mod limits;
pub mod merge;
pub mod page;
pub mod plug;
pub mod queue;
mod range_lock;
pub mod sched;
pub mod split;
pub mod stats;
pub mod types;
mod worker;
mod worker_uring;

pub use bio::{
    bio_chain, bio_endio, bio_io_error, Bio, BioVec, ChainError, SharedEndIo, BIO_MAX_VECS,
};
pub use bioset::{BioSet, Gfp};
pub use builder::BioBuilder;
pub use integrity::{Checksum, IntegrityProfile, IntegrityStore};
pub use ioc::{IoContext, IoPrio, IoPrioClass};
pub use limits::QueueLimits;
pub use page::{pool_stats, Page, PoolReservation, PoolStats};
pub use plug::Plug;
pub use queue::{IntegrityMode, IoMode, Queue, QueueConfig};
pub use stats::StatsSnapshot;
pub use types::{
    BlkStatus, ReqFlags, ReqOp, Sector, PAGE_SHIFT, PAGE_SIZE, SECTOR_SHIFT, SECTOR_SIZE,
};
