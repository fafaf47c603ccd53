//! The error type of the integrity store.

use std::io;

/// Why formatting, probing or opening an integrity store failed.
///
/// The per-I/O methods of [`super::IntegrityStore`] return `io::Error`
/// (the queue turns those into a `BlkStatus`); they wrap an
/// [`IntegrityError::Io`] as the inner error so the context (which operation,
/// which byte offset) survives, and keep the original `ErrorKind`.
#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    /// The requested profile cannot be built (interval size not 512 or 4096).
    #[error("invalid integrity profile: {0}")]
    InvalidProfile(String),

    /// The on-disk header is present (its magic matched) but a field is
    /// wrong. `field` names the header field, `reason` says what is wrong.
    #[error("bad integrity header at byte {offset}: field `{field}`: {reason}")]
    BadHeader {
        offset: u64,
        field: &'static str,
        reason: String,
    },

    /// There is no integrity header on the device (`open` on an unformatted device).
    #[error("no integrity header found at byte {offset} (device not formatted?)")]
    NoHeader { offset: u64 },

    /// The device cannot hold even one data block plus its metadata.
    #[error(
        "device too small for integrity metadata: {device_bytes} bytes, need at least {min_bytes}"
    )]
    DeviceTooSmall { device_bytes: u64, min_bytes: u64 },

    /// The device's logical block size does not divide the 4 KiB metadata block.
    #[error("unsupported device: {0}")]
    Unsupported(String),

    /// A device operation failed. `op` says what the store was doing.
    #[error("integrity {op} at byte {offset}: {source}")]
    Io {
        op: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
}

impl IntegrityError {
    /// An [`IntegrityError::Io`] for `source`, raised while doing `op` at `offset`.
    pub fn io(op: &'static str, offset: u64, source: io::Error) -> IntegrityError {
        IntegrityError::Io { op, offset, source }
    }
}

/// Wraps a device error with its context, keeping the `ErrorKind` so that
/// `BlkStatus::from_io_error` still maps e.g. `Unsupported` correctly.
pub(crate) fn io_ctx(op: &'static str, offset: u64, source: io::Error) -> io::Error {
    let kind = source.kind();
    io::Error::new(kind, IntegrityError::io(op, offset, source))
}

impl From<IntegrityError> for io::Error {
    fn from(err: IntegrityError) -> io::Error {
        let kind = match &err {
            IntegrityError::Io { source, .. } => source.kind(),
            IntegrityError::Unsupported(_) => io::ErrorKind::Unsupported,
            IntegrityError::DeviceTooSmall { .. } | IntegrityError::InvalidProfile(_) => {
                io::ErrorKind::InvalidInput
            }
            IntegrityError::BadHeader { .. } | IntegrityError::NoHeader { .. } => {
                io::ErrorKind::InvalidData
            }
        };
        io::Error::new(kind, err)
    }
}
