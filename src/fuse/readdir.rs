//! Directory reading for the adapter: readdir and readdirplus replies
//! filled from the core's [`Fs::readdir`](crate::fs::Fs::readdir), batch by
//! batch, until the kernel's buffer is full.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use fuser::{Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus};

use super::adapter::{FuseFs, TTL};
use super::convert;
use super::errno::to_fuse;
use crate::fs::{DirEntryOut, Errno, FsResult};

/// Entries asked of the core per readdir call: about what fits a page of
/// plain entries (24 bytes and the name each) or of readdirplus entries
/// (152 bytes and the name). A reply takes as many batches as fit the
/// kernel's buffer.
const READDIR_BATCH: usize = 128;
const READDIRPLUS_BATCH: usize = 32;

impl FuseFs {
    /// Directory entries after `cookie` into `reply`, as many as fit;
    /// readdirplus gives each one's attributes too.
    pub(super) fn fill_dir(&self, ino: u64, cookie: u64, mut reply: DirReply) {
        let max = match reply {
            DirReply::Plain(_) => READDIR_BATCH,
            DirReply::Plus(_) => READDIRPLUS_BATCH,
        };
        let mut cookie = cookie;
        let mut added = 0usize;
        loop {
            let batch = match self.fs.readdir(ino, cookie, max) {
                Ok(b) => b,
                // What was added stands; the error comes back next call.
                Err(_) if added > 0 => return reply.ok(),
                Err(e) => return reply.error(to_fuse(e)),
            };
            if batch.is_empty() {
                return reply.ok();
            }
            for e in &batch {
                match self.add_entry(ino, &mut reply, e) {
                    Ok(Step::Added) => added += 1,
                    Ok(Step::Skipped) => {}
                    Ok(Step::Full) => return reply.ok(),
                    Err(_) if added > 0 => return reply.ok(),
                    Err(err) => return reply.error(to_fuse(err)),
                }
                cookie = e.cookie;
            }
        }
    }

    /// Add `e` of directory `dir` to `reply`. A readdirplus entry counts a
    /// lookup of its inode (released by the kernel's FORGET), except "."
    /// and "..", which the kernel doesn't keep; one that doesn't fit is
    /// uncounted again.
    fn add_entry(&self, dir: u64, reply: &mut DirReply, e: &DirEntryOut) -> FsResult<Step> {
        let name = OsStr::from_bytes(&e.name);
        let full = match reply {
            DirReply::Plain(r) => r.add(INodeNo(e.ino), e.cookie, convert::file_type(e.kind), name),
            DirReply::Plus(r) if convert::is_dot(&e.name) => {
                let a = convert::dot_attr(e.ino, e.kind);
                r.add(INodeNo(e.ino), e.cookie, name, &TTL, &a, Generation(0))
            }
            DirReply::Plus(r) => {
                let a = match self.fs.lookup(dir, &e.name) {
                    Ok(a) => a,
                    // Removed since the core listed it.
                    Err(Errno::ENOENT) => return Ok(Step::Skipped),
                    Err(err) => return Err(err),
                };
                let gen = Generation(u64::from(a.generation));
                let full = r.add(
                    INodeNo(a.ino),
                    e.cookie,
                    name,
                    &TTL,
                    &convert::file_attr(&a),
                    gen,
                );
                if full {
                    // Not sent: the kernel won't forget it.
                    self.fs.forget(a.ino, 1);
                }
                full
            }
        };
        Ok(if full { Step::Full } else { Step::Added })
    }
}

/// What became of one directory entry.
enum Step {
    Added,
    Skipped,
    /// It did not fit: the reply is full.
    Full,
}

/// A readdir or readdirplus reply being filled.
pub(super) enum DirReply {
    Plain(ReplyDirectory),
    Plus(ReplyDirectoryPlus),
}

impl DirReply {
    fn ok(self) {
        match self {
            DirReply::Plain(r) => r.ok(),
            DirReply::Plus(r) => r.ok(),
        }
    }

    fn error(self, e: fuser::Errno) {
        match self {
            DirReply::Plain(r) => r.error(e),
            DirReply::Plus(r) => r.error(e),
        }
    }
}
