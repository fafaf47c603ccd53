//! Copy a directory tree into a mounted (unexported) biofs through the
//! filesystem's own operations, as `mke2fs -d` does: contents (holes kept),
//! modes, owners, times, hard links, symlinks, device nodes, fifos,
//! sockets and extended attributes. `mkfs.biofs -d DIR` calls this.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::ops::Fs;
use super::types::{Ctx, Errno, SetAttr, TimeSet};
use crate::format::inode::{Timespec, S_IFMT};
use crate::format::ROOT_INO;

/// Bytes copied per write.
const CHUNK: usize = 1 << 20;

/// A failure, naming the source path.
#[derive(Debug, thiserror::Error)]
pub enum PopulateError {
    #[error("{path}: {source}")]
    Source {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {errno} ({})", errno.desc())]
    Fs { path: PathBuf, errno: Errno },
}

/// What was copied.
#[derive(Debug, Default, Clone, Copy)]
pub struct PopulateStats {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub bytes: u64,
}

struct Copier<'a> {
    fs: &'a Fs,
    /// Hard links: (st_dev, st_ino) of the source -> our inode.
    seen: HashMap<(u64, u64), u64>,
    stats: PopulateStats,
}

fn src_err(path: &Path) -> impl FnOnce(std::io::Error) -> PopulateError + '_ {
    move |source| PopulateError::Source {
        path: path.to_path_buf(),
        source,
    }
}

fn fs_err(path: &Path) -> impl FnOnce(Errno) -> PopulateError + '_ {
    move |errno| PopulateError::Fs {
        path: path.to_path_buf(),
        errno,
    }
}

fn ts(sec: i64, nsec: i64) -> Timespec {
    Timespec {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    }
}

/// Copy the contents of directory `src` into the root of `fs`.
pub fn populate(fs: &Fs, src: &Path) -> Result<PopulateStats, PopulateError> {
    let meta = fs::symlink_metadata(src).map_err(src_err(src))?;
    if !meta.is_dir() {
        return Err(PopulateError::Source {
            path: src.to_path_buf(),
            source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    let mut c = Copier {
        fs,
        seen: HashMap::new(),
        stats: PopulateStats::default(),
    };
    c.copy_dir(src, ROOT_INO)?;
    c.copy_attrs(src, ROOT_INO, &meta)?;
    fs.syncfs().map_err(fs_err(src))?;
    Ok(c.stats)
}

impl Copier<'_> {
    fn copy_dir(&mut self, src: &Path, dir: u64) -> Result<(), PopulateError> {
        let mut entries: Vec<_> = fs::read_dir(src)
            .map_err(src_err(src))?
            .collect::<Result<_, _>>()
            .map_err(src_err(src))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let name = e.file_name();
            let name = name.as_bytes();
            let m = fs::symlink_metadata(&path).map_err(src_err(&path))?;
            let key = (m.dev(), m.ino());
            if !m.is_dir() && m.nlink() > 1 {
                if let Some(&ino) = self.seen.get(&key) {
                    self.fs.link(ino, dir, name).map_err(fs_err(&path))?;
                    self.stats.links += 1;
                    continue;
                }
            }
            let ctx = Ctx {
                uid: m.uid(),
                gid: m.gid(),
                pid: 0,
            };
            let perm = m.mode() & 0o7777;
            let ft = m.file_type();
            let ino = if ft.is_dir() {
                let a = self
                    .fs
                    .mkdir(&ctx, dir, name, perm)
                    .map_err(fs_err(&path))?;
                self.copy_dir(&path, a.ino)?;
                self.stats.dirs += 1;
                a.ino
            } else if ft.is_file() {
                let a = self
                    .fs
                    .create(&ctx, dir, name, perm)
                    .map_err(fs_err(&path))?;
                let copied = self.copy_data(&path, a.ino, m.len());
                self.fs.release(a.ino).map_err(fs_err(&path))?;
                copied?;
                self.stats.files += 1;
                a.ino
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).map_err(src_err(&path))?;
                let a = self
                    .fs
                    .symlink(&ctx, dir, name, target.as_os_str().as_bytes())
                    .map_err(fs_err(&path))?;
                a.ino
            } else if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket()
            {
                let mode = (m.mode() & S_IFMT) | perm;
                let a = self
                    .fs
                    .mknod(&ctx, dir, name, mode, m.rdev() as u32)
                    .map_err(fs_err(&path))?;
                a.ino
            } else {
                log::warn!("{}: unknown file type, skipped", path.display());
                continue;
            };
            if !m.is_dir() && m.nlink() > 1 {
                self.seen.insert(key, ino);
            }
            self.copy_attrs(&path, ino, &m)?;
            // The walk holds no lookups of what it made.
            self.fs.forget(ino, 1);
        }
        Ok(())
    }

    fn copy_data(&mut self, path: &Path, ino: u64, len: u64) -> Result<(), PopulateError> {
        let mut f = File::open(path).map_err(src_err(path))?;
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(src_err(path))?;
            if n == 0 {
                break;
            }
            // Runs of all-zero blocks stay holes.
            let block = crate::format::BLOCK_SIZE;
            let mut at = 0;
            while at < n {
                let data = |i: usize| {
                    (buf.get(i..(i + block).min(n))).is_some_and(|s| s.iter().any(|&b| b != 0))
                };
                if !data(at) {
                    at += block;
                    continue;
                }
                let mut end = at + block;
                while end < n && data(end) {
                    end += block;
                }
                let end = end.min(n);
                self.fs
                    .write(
                        &Ctx::root(),
                        ino,
                        off + at as u64,
                        buf.get(at..end).unwrap_or_default(),
                        false,
                    )
                    .map_err(fs_err(path))?;
                at = end;
            }
            off += n as u64;
            self.stats.bytes += n as u64;
        }
        if off < len {
            log::warn!("{}: shrank while it was copied", path.display());
        }
        let set = SetAttr {
            size: Some(off),
            ..SetAttr::default()
        };
        self.fs
            .setattr(&Ctx::root(), ino, &set)
            .map_err(fs_err(path))?;
        Ok(())
    }

    /// Owner, mode, times and xattrs of `path` onto `ino`.
    fn copy_attrs(&mut self, path: &Path, ino: u64, m: &fs::Metadata) -> Result<(), PopulateError> {
        match xattr::list(path) {
            Ok(names) => {
                for n in names {
                    let Some(v) = xattr::get(path, &n).map_err(src_err(path))? else {
                        continue;
                    };
                    let name = n.as_bytes();
                    match self.fs.setxattr(ino, name, &v, 0) {
                        Ok(()) => {}
                        Err(Errno::EOPNOTSUPP) => log::warn!(
                            "{}: xattr {} not kept (biofs keeps user., trusted., security. and system.)",
                            path.display(),
                            String::from_utf8_lossy(name)
                        ),
                        Err(e) => return Err(fs_err(path)(e)),
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(e) => return Err(src_err(path)(e)),
        }
        let set = SetAttr {
            mode: (!m.file_type().is_symlink()).then_some(m.mode() & 0o7777),
            uid: Some(m.uid()),
            gid: Some(m.gid()),
            atime: Some(TimeSet::At(ts(m.atime(), m.atime_nsec()))),
            mtime: Some(TimeSet::At(ts(m.mtime(), m.mtime_nsec()))),
            ctime: Some(ts(m.ctime(), m.ctime_nsec())),
            size: None,
        };
        self.fs
            .setattr(&Ctx::root(), ino, &set)
            .map_err(fs_err(path))?;
        Ok(())
    }
}
