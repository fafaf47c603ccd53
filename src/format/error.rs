//! Why on-disk bytes were refused.

use std::io;

/// A decoding or validation failure, or an I/O error, naming what and where.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A structure's magic number is wrong: not what it claims to be.
    #[error("{what} at block {block}: bad magic")]
    BadMagic { what: &'static str, block: u64 },
    /// The stored checksum does not match the contents.
    #[error("{what} {nr}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum {
        what: &'static str,
        nr: u64,
        stored: u32,
        computed: u32,
    },
    /// A field holds a value that is out of range or inconsistent.
    #[error("{what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    /// Features (or a format version or block size) this build does not
    /// support: the bytes are valid, this code is too old or too limited.
    #[error("unsupported {kind} {bits:#x}; this build of biofs can't use the filesystem")]
    Unsupported { kind: &'static str, bits: u32 },
    /// A structure of one file is damaged: `what` is wrong at `block`
    /// (0 when the damage is in the inode itself) of inode `ino`. The
    /// mount refuses that file with EUCLEAN; the rest keeps working.
    #[error("inode {ino}, block {block}: {what}")]
    Corrupt { ino: u64, block: u64, what: String },
    /// No free block or inode is left: ENOSPC, never corruption.
    #[error("no space left for {what}")]
    NoSpace { what: &'static str },
    /// The device could not be read or written.
    #[error("{what} at block {block}: {source}")]
    Io {
        what: &'static str,
        block: u64,
        #[source]
        source: io::Error,
    },
}

impl FormatError {
    /// An [`FormatError::Invalid`] with a formatted detail.
    pub fn invalid(what: &'static str, detail: impl Into<String>) -> FormatError {
        FormatError::Invalid {
            what,
            detail: detail.into(),
        }
    }

    /// `Err(BadChecksum)` unless the stored and computed checksums agree.
    pub fn check_csum(what: &'static str, nr: u64, stored: u32, computed: u32) -> Result<()> {
        if stored == computed {
            Ok(())
        } else {
            Err(FormatError::BadChecksum {
                what,
                nr,
                stored,
                computed,
            })
        }
    }

    /// A [`FormatError::Corrupt`].
    pub fn corrupt(ino: u64, block: u64, what: impl Into<String>) -> FormatError {
        FormatError::Corrupt {
            ino,
            block,
            what: what.into(),
        }
    }

    /// An [`FormatError::Io`].
    pub fn io(what: &'static str, block: u64, source: io::Error) -> FormatError {
        FormatError::Io {
            what,
            block,
            source,
        }
    }

    /// True for damage to the bytes: bad contents, or a block the device
    /// reports as failing its integrity check or unreadable medium. False
    /// for other I/O failures (the device itself is in trouble).
    pub fn is_corruption(&self) -> bool {
        match self {
            // Valid bytes this build can't use: not damage to repair.
            FormatError::Unsupported { .. } => false,
            // Full, not damaged.
            FormatError::NoSpace { .. } => false,
            FormatError::Io { source, .. } => matches!(
                super::dev::BioError::errno_of(source),
                Some(libc::EILSEQ) | Some(libc::ENODATA)
            ),
            _ => true,
        }
    }
}

/// A shorthand for results of this module.
pub type Result<T> = std::result::Result<T, FormatError>;
