//! Namespace operations on [`Meta`]: directory entries through the hashed
//! B+tree ([`super::dir`]) backed by the buffer cache, and the POSIX rules
//! of create, link, unlink, rmdir and rename (errno values as ext4's).

use super::dir::{self as dirops, DirBlocks, DirError};
use super::extmap::{self, Mapping};
use super::meta::{fail, touch, Meta, LINK_MAX};
use super::txn::MetaIo;
use super::types::{Attr, Ctx, Errno, FsResult, RenameFlags};
use crate::format::dir::{name_hash, valid_name, DirEntry, DirNode};
use crate::format::error::{FormatError, Result};
use crate::format::extent::Extent;
use crate::format::inode::{FileType, Inode, InodeData, Timespec, INLINE_DATA, S_IFLNK};
use crate::format::{BLOCK_SIZE, BLOCK_SIZE_U64, ROOT_INO};

/// `S_ISGID`.
const S_ISGID: u32 = 0o2000;

/// A directory's blocks seen through the buffer cache.
struct DirIo<'a> {
    m: &'a mut Meta,
    ino: u64,
    /// The errno of a failed allocation (kept, as `DirBlocks` speaks
    /// `FormatError`).
    err: Option<Errno>,
}

impl DirIo<'_> {
    fn physical(&mut self, logical: u64) -> Result<u64> {
        let map = self.m.inodes.get(&self.ino).map(|s| s.map.as_slice());
        match map.map(|m| extmap::lookup(m, logical)) {
            Some(Mapping::Mapped { physical, .. }) => Ok(physical),
            _ => Err(FormatError::invalid(
                "directory",
                format!("inode {}: logical block {logical} is not mapped", self.ino),
            )),
        }
    }
}

impl DirBlocks for DirIo<'_> {
    fn is_empty(&self) -> bool {
        self.m
            .inodes
            .get(&self.ino)
            .is_none_or(|s| s.map.is_empty())
    }

    fn read(&mut self, logical: u64) -> Result<DirNode> {
        let b = self.physical(logical)?;
        let raw = self.m.bufs.read_meta(b)?;
        DirNode::decode(self.m.seed, self.m.hash_seed, b, self.ino, &raw)
    }

    fn write(&mut self, logical: u64, node: DirNode) -> Result<()> {
        if logical == 0 && self.is_empty() {
            // The root of an empty directory.
            self.alloc()?;
        }
        let b = self.physical(logical)?;
        let raw = node.encode(self.m.seed, b, self.ino);
        self.m.bufs.write_meta(b, raw);
        Ok(())
    }

    fn alloc(&mut self) -> Result<u64> {
        let ino = self.ino;
        let (logical, goal) = match self.m.inodes.get(&ino) {
            Some(s) => (
                s.inode.size / BLOCK_SIZE_U64,
                s.map
                    .last()
                    .map_or(self.m.geo.group_start(self.m.geo.ino_group(ino).0), |e| {
                        e.physical_end()
                    }),
            ),
            None => return Err(FormatError::invalid("directory", "not loaded")),
        };
        let (b, _) = self.m.alloc_blocks(goal, 1).map_err(|e| {
            self.err = Some(e);
            FormatError::NoSpace {
                what: "a directory block",
            }
        })?;
        if let Some(st) = self.m.inodes.get_mut(&ino) {
            extmap::insert(
                &mut st.map,
                Extent {
                    logical,
                    physical: b,
                    len: 1,
                    unwritten: false,
                },
            );
            st.inode.size += BLOCK_SIZE_U64;
            st.inode.blocks += 1;
        }
        self.m.map_changed(ino);
        Ok(logical)
    }
}

/// Check a name from a request: ENAMETOOLONG over 255 bytes, EINVAL for
/// names no directory can hold.
pub fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > crate::format::NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if !valid_name(name) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// `stat(2)` view of inode `ino`.
pub fn attr_of(ino: u64, i: &Inode) -> Attr {
    let kind = i.file_type();
    let rdev = match kind {
        FileType::CharDev | FileType::BlockDev => i.rdev_or_parent as u32,
        _ => 0,
    };
    Attr {
        ino,
        size: i.size,
        blocks: i.blocks.saturating_mul(BLOCK_SIZE_U64 / 512),
        atime: i.atime,
        mtime: i.mtime,
        ctime: i.ctime,
        crtime: i.crtime,
        kind,
        perm: (i.mode & 0o7777) as u16,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev,
        blksize: BLOCK_SIZE as u32,
        generation: i.generation,
    }
}

impl Meta {
    fn dir_io(&mut self, dir: u64) -> FsResult<DirIo<'_>> {
        if self.get(dir)?.file_type() != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        Ok(DirIo {
            m: self,
            ino: dir,
            err: None,
        })
    }

    /// The entry `name` in directory `dir`.
    pub fn dir_lookup(&mut self, dir: u64, name: &[u8]) -> FsResult<Option<DirEntry>> {
        let hash = name_hash(self.hash_seed, name);
        let mut io = self.dir_io(dir)?;
        let r = dirops::lookup(&mut io, hash, name);
        r.map_err(|e| self.dir_damaged(dir, e))
    }

    /// Log a failed walk of directory `dir`; if it found damage, the
    /// directory refuses changes from now on (EUCLEAN).
    fn dir_damaged(&mut self, dir: u64, e: FormatError) -> Errno {
        let n = fail(&format!("directory {dir}"), e);
        if n == Errno::EUCLEAN && self.damaged.insert(dir) {
            log::error!(
                "directory {dir} is damaged: it refuses changes until fsck.biofs repairs it"
            );
        }
        n
    }

    /// Unit tests: the injected failure of a directory change, when due.
    #[cfg(test)]
    fn injected_fault(&mut self) -> FsResult<()> {
        match self.fail_dir_ops_after {
            Some(0) => {
                self.fail_dir_ops_after = None;
                Err(Errno::EIO)
            }
            Some(n) => {
                self.fail_dir_ops_after = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn dir_add(&mut self, dir: u64, name: &[u8], ino: u64, ftype: FileType) -> FsResult<()> {
        self.check_writable()?;
        if self.damaged.contains(&dir) {
            return Err(Errno::EUCLEAN);
        }
        #[cfg(test)]
        self.injected_fault()?;
        let entry = DirEntry::new(self.hash_seed, name, ino, ftype);
        let mut io = self.dir_io(dir)?;
        let r = dirops::insert(&mut io, entry);
        let err = io.err;
        match r {
            Ok(()) => Ok(()),
            Err(DirError::Exists) => Err(Errno::EEXIST),
            Err(DirError::HashBucketFull) => Err(Errno::ENOSPC),
            Err(DirError::Format(e)) => Err(match err {
                Some(e) => e,
                None => self.dir_damaged(dir, e),
            }),
        }
    }

    fn dir_remove(&mut self, dir: u64, name: &[u8]) -> FsResult<DirEntry> {
        self.check_writable()?;
        if self.damaged.contains(&dir) {
            return Err(Errno::EUCLEAN);
        }
        #[cfg(test)]
        self.injected_fault()?;
        let hash = name_hash(self.hash_seed, name);
        let mut io = self.dir_io(dir)?;
        dirops::remove(&mut io, hash, name)
            .map_err(|e| self.dir_damaged(dir, e))?
            .ok_or(Errno::ENOENT)
    }

    /// Up to `max` entries of `dir` with a hash above `cookie`.
    pub fn dir_list(&mut self, dir: u64, cookie: u64, max: usize) -> FsResult<Vec<DirEntry>> {
        let mut io = self.dir_io(dir)?;
        let r = dirops::readdir(&mut io, cookie, max);
        r.map_err(|e| self.dir_damaged(dir, e))
    }

    fn dir_is_empty(&mut self, dir: u64) -> FsResult<bool> {
        Ok(self.dir_list(dir, 0, 1)?.is_empty())
    }

    /// Look `name` up in `parent`, counting a lookup of what it finds.
    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let ino = match name {
            // Only the kernel decoding a file handle asks for "." (the
            // VFS resolves it otherwise): the handle may name any number,
            // and one whose inode is free (or was never used: its table
            // block may hold anything) is ENOENT, stale, not corrupt.
            b"." => {
                if !self.inodes.contains_key(&parent)
                    && !self
                        .alloc
                        .inode_in_use(&mut self.bufs, parent)
                        .map_err(|e| fail("inode bitmap", e))?
                {
                    return Err(Errno::ENOENT);
                }
                parent
            }
            b".." => {
                let p = self.get(parent)?;
                if p.file_type() != FileType::Directory {
                    return Err(Errno::ENOTDIR);
                }
                if parent == ROOT_INO {
                    ROOT_INO
                } else {
                    p.rdev_or_parent
                }
            }
            _ => {
                if name.len() > crate::format::NAME_MAX {
                    return Err(Errno::ENAMETOOLONG);
                }
                let ino = self.dir_lookup(parent, name)?.ok_or(Errno::ENOENT)?.ino;
                self.load_named(parent, name, ino)?;
                ino
            }
        };
        let st = self.load(ino)?;
        st.lookups += 1;
        Ok(attr_of(ino, &st.inode))
    }

    /// Load inode `ino`, which directory `dir` names `name`. A name whose
    /// inode is free (a zeroed slot, say) is damage the user must see:
    /// EUCLEAN and a log line, never ENOENT, which would make the name
    /// vanish from a listing without a word.
    fn load_named(&mut self, dir: u64, name: &[u8], ino: u64) -> FsResult<()> {
        match self.load(ino) {
            Err(Errno::ENOENT) => {
                log::error!(
                    "directory {dir}: entry {:?} names inode {ino}, which is free or invalid; \
                     run fsck.biofs",
                    String::from_utf8_lossy(name)
                );
                Err(Errno::EUCLEAN)
            }
            r => r.map(|_| ()),
        }
    }

    /// Make a new inode of `mode` named `name` in `parent` (any type);
    /// `fill` completes it before it is linked.
    pub fn make(
        &mut self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        fill: &mut dyn FnMut(&mut Meta, u64) -> FsResult<()>,
    ) -> FsResult<Attr> {
        check_name(name)?;
        self.check_meta_room()?;
        let ftype = FileType::from_mode(mode).ok_or(Errno::EINVAL)?;
        let is_dir = ftype == FileType::Directory;
        let p = self.get(parent)?.clone();
        if p.file_type() != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if p.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        if is_dir && p.nlink >= LINK_MAX {
            return Err(Errno::EMLINK);
        }
        if self.dir_lookup(parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let mut inode = Inode::new(mode, ctx.uid, ctx.gid, Timespec::now());
        if p.mode & S_ISGID != 0 {
            inode.gid = p.gid;
            if is_dir {
                inode.mode |= S_ISGID;
            }
        }
        if is_dir {
            inode.nlink = 2;
            inode.rdev_or_parent = parent;
        }
        let ino = self.new_inode(parent, inode)?;
        let made = fill(self, ino).and_then(|()| self.dir_add(parent, name, ino, ftype));
        if let Err(e) = made {
            // Undo: the inode was never reachable.
            if let Ok(st) = self.get_mut(ino) {
                st.inode.nlink = 0;
                st.lookups = 0;
            }
            if let Err(e2) = self.evict(ino) {
                log::error!("undoing a failed create of inode {ino}: {e2}");
            }
            return Err(e);
        }
        let ps = self.get_mut(parent)?;
        if is_dir {
            ps.inode.nlink += 1;
        }
        touch(&mut ps.inode, true);
        let st = self.load(ino)?;
        Ok(attr_of(ino, &st.inode))
    }

    /// Store a symlink's target in new inode `ino` (inline if it fits).
    pub fn set_symlink(&mut self, ino: u64, target: &[u8]) -> FsResult<()> {
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        if target.len() >= BLOCK_SIZE {
            return Err(Errno::ENAMETOOLONG);
        }
        if target.len() <= INLINE_DATA {
            let st = self.get_mut(ino)?;
            st.inode.data = InodeData::Symlink(target.to_vec());
            st.inode.size = target.len() as u64;
            return Ok(());
        }
        let goal = self.geo.group_start(self.geo.ino_group(ino).0);
        let (b, _) = self.alloc_blocks(goal, 1)?;
        let mut raw = target.to_vec();
        raw.resize(BLOCK_SIZE, 0);
        self.bufs.write_meta(b, raw);
        let st = self.get_mut(ino)?;
        st.map.push(Extent {
            logical: 0,
            physical: b,
            len: 1,
            unwritten: false,
        });
        st.inode.size = target.len() as u64;
        st.inode.blocks += 1;
        self.map_changed(ino);
        Ok(())
    }

    pub fn readlink(&mut self, ino: u64) -> FsResult<Vec<u8>> {
        let st = self.load(ino)?;
        if st.inode.file_type() != FileType::Symlink {
            return Err(Errno::EINVAL);
        }
        if let InodeData::Symlink(t) = &st.inode.data {
            return Ok(t.clone());
        }
        let size = (st.inode.size as usize).min(BLOCK_SIZE);
        let Mapping::Mapped { physical, .. } = extmap::lookup(&st.map, 0) else {
            return Err(Errno::EUCLEAN);
        };
        let raw = self
            .bufs
            .read_meta(physical)
            .map_err(|e| fail("symlink", e))?;
        Ok(raw.get(..size).unwrap_or(&raw).to_vec())
    }

    pub fn link(&mut self, ino: u64, parent: u64, name: &[u8]) -> FsResult<Attr> {
        check_name(name)?;
        self.check_meta_room()?;
        let i = self.get(ino)?;
        if i.file_type() == FileType::Directory {
            return Err(Errno::EPERM);
        }
        if i.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        if i.nlink >= LINK_MAX {
            return Err(Errno::EMLINK);
        }
        let ftype = i.file_type();
        if self.get(parent)?.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        self.dir_add(parent, name, ino, ftype)?;
        let st = self.get_mut(ino)?;
        st.inode.nlink += 1;
        st.lookups += 1;
        touch(&mut st.inode, false);
        let a = attr_of(ino, &st.inode);
        touch(&mut self.get_mut(parent)?.inode, true);
        Ok(a)
    }

    /// Drop one link of `ino` (a directory loses both of its own).
    fn drop_link(&mut self, ino: u64) -> FsResult<()> {
        let st = self.get_mut(ino)?;
        if st.inode.file_type() == FileType::Directory {
            st.inode.nlink = 0;
        } else {
            st.inode.nlink = st.inode.nlink.saturating_sub(1);
        }
        touch(&mut st.inode, false);
        self.maybe_evict(ino)
    }

    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        let e = self.dir_lookup(parent, name)?.ok_or(Errno::ENOENT)?;
        if e.ftype == FileType::Directory {
            return Err(Errno::EISDIR);
        }
        self.dir_remove(parent, name)?;
        touch(&mut self.get_mut(parent)?.inode, true);
        self.drop_link(e.ino)
    }

    pub fn rmdir(&mut self, parent: u64, name: &[u8]) -> FsResult<()> {
        match name {
            b"." => return Err(Errno::EINVAL),
            b".." => return Err(Errno::ENOTEMPTY),
            _ => check_name(name)?,
        }
        let e = self.dir_lookup(parent, name)?.ok_or(Errno::ENOENT)?;
        if e.ftype != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if !self.dir_is_empty(e.ino)? {
            return Err(Errno::ENOTEMPTY);
        }
        self.dir_remove(parent, name)?;
        let ps = self.get_mut(parent)?;
        ps.inode.nlink = ps.inode.nlink.saturating_sub(1);
        touch(&mut ps.inode, true);
        self.drop_link(e.ino)
    }

    /// True if `dir` is `ancestor` or below it.
    fn is_below(&mut self, mut dir: u64, ancestor: u64) -> FsResult<bool> {
        for _ in 0..self.geo.inodes_count() {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == ROOT_INO {
                return Ok(false);
            }
            dir = self.get(dir)?.rdev_or_parent;
        }
        Err(Errno::EUCLEAN)
    }

    pub fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: RenameFlags,
    ) -> FsResult<()> {
        check_name(name)?;
        check_name(newname)?;
        self.check_meta_room()?;
        if flags.exchange && flags.noreplace {
            return Err(Errno::EINVAL);
        }
        let src = self.dir_lookup(parent, name)?.ok_or(Errno::ENOENT)?;
        let dst = self.dir_lookup(newparent, newname)?;
        if self.get(newparent)?.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        let src_dir = src.ftype == FileType::Directory;
        if flags.exchange {
            let dst = dst.ok_or(Errno::ENOENT)?;
            return self.exchange(parent, &src, newparent, &dst);
        }
        if src_dir && self.is_below(newparent, src.ino)? {
            return Err(Errno::EINVAL);
        }
        if let Some(d) = &dst {
            if flags.noreplace {
                return Err(Errno::EEXIST);
            }
            if d.ino == src.ino {
                return Ok(());
            }
            let dst_dir = d.ftype == FileType::Directory;
            match (src_dir, dst_dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.dir_is_empty(d.ino)? => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        } else if src_dir && parent != newparent && self.get(newparent)?.nlink >= LINK_MAX {
            return Err(Errno::EMLINK);
        }
        // Replace or add the new name, then drop the old one; a failure
        // part way undoes what was done (as `make` does).
        let mut undo = Vec::new();
        let moved = self.rename_steps(&mut undo, (parent, &src), (newparent, newname), &dst);
        if let Err(e) = moved {
            return Err(self.undo(undo, e));
        }
        touch(&mut self.get_mut(src.ino)?.inode, false);
        touch(&mut self.get_mut(parent)?.inode, true);
        touch(&mut self.get_mut(newparent)?.inode, true);
        if let Some(d) = dst {
            self.drop_link(d.ino)?;
        }
        Ok(())
    }

    /// RENAME_EXCHANGE: swap what two names point to.
    fn exchange(&mut self, p1: u64, e1: &DirEntry, p2: u64, e2: &DirEntry) -> FsResult<()> {
        if e1.ino == e2.ino {
            return Ok(());
        }
        let d1 = e1.ftype == FileType::Directory;
        let d2 = e2.ftype == FileType::Directory;
        if (d1 && self.is_below(p2, e1.ino)?) || (d2 && self.is_below(p1, e2.ino)?) {
            return Err(Errno::EINVAL);
        }
        let mut undo = Vec::new();
        if let Err(e) = self.exchange_steps(&mut undo, (p1, e1), (p2, e2)) {
            return Err(self.undo(undo, e));
        }
        for ino in [e1.ino, e2.ino] {
            touch(&mut self.get_mut(ino)?.inode, false);
        }
        for p in [p1, p2] {
            touch(&mut self.get_mut(p)?.inode, true);
        }
        Ok(())
    }
}

/// One change of a rename, as what undoes it.
enum Undo {
    /// An entry was removed: add it back.
    Readd(u64, DirEntry),
    /// An entry was added: remove it.
    Unadd(u64, Vec<u8>),
    /// A link count was changed: restore it.
    Nlink(u64, u32),
    /// A directory's parent was changed: restore it.
    Parent(u64, u64),
}

impl Meta {
    fn undo_remove(&mut self, undo: &mut Vec<Undo>, dir: u64, e: &DirEntry) -> FsResult<()> {
        self.dir_remove(dir, &e.name)?;
        undo.push(Undo::Readd(dir, e.clone()));
        Ok(())
    }

    fn undo_add(
        &mut self,
        undo: &mut Vec<Undo>,
        dir: u64,
        name: &[u8],
        ino: u64,
        ftype: FileType,
    ) -> FsResult<()> {
        self.dir_add(dir, name, ino, ftype)?;
        undo.push(Undo::Unadd(dir, name.to_vec()));
        Ok(())
    }

    fn undo_nlink(&mut self, undo: &mut Vec<Undo>, ino: u64, delta: i32) -> FsResult<()> {
        let st = self.get_mut(ino)?;
        let old = st.inode.nlink;
        st.inode.nlink = old.saturating_add_signed(delta);
        undo.push(Undo::Nlink(ino, old));
        Ok(())
    }

    /// [`Meta::reparent`], recorded.
    fn undo_reparent(
        &mut self,
        undo: &mut Vec<Undo>,
        ino: u64,
        oldparent: u64,
        newparent: u64,
    ) -> FsResult<()> {
        if oldparent == newparent {
            return Ok(());
        }
        let st = self.get_mut(ino)?;
        let old = st.inode.rdev_or_parent;
        st.inode.rdev_or_parent = newparent;
        undo.push(Undo::Parent(ino, old));
        self.undo_nlink(undo, oldparent, -1)?;
        self.undo_nlink(undo, newparent, 1)
    }

    /// The changes of a rename of `src` (in `parent`) to `newname` in
    /// `newparent`, replacing `dst` if there is one.
    fn rename_steps(
        &mut self,
        undo: &mut Vec<Undo>,
        (parent, src): (u64, &DirEntry),
        (newparent, newname): (u64, &[u8]),
        dst: &Option<DirEntry>,
    ) -> FsResult<()> {
        if let Some(d) = dst {
            self.undo_remove(undo, newparent, d)?;
            if d.ftype == FileType::Directory {
                self.undo_nlink(undo, newparent, -1)?;
            }
        }
        self.undo_add(undo, newparent, newname, src.ino, src.ftype)?;
        self.undo_remove(undo, parent, src)?;
        if src.ftype == FileType::Directory {
            self.undo_reparent(undo, src.ino, parent, newparent)?;
        }
        Ok(())
    }

    /// The changes of RENAME_EXCHANGE of `e1` (in `p1`) and `e2` (in `p2`).
    fn exchange_steps(
        &mut self,
        undo: &mut Vec<Undo>,
        (p1, e1): (u64, &DirEntry),
        (p2, e2): (u64, &DirEntry),
    ) -> FsResult<()> {
        self.undo_remove(undo, p1, e1)?;
        self.undo_remove(undo, p2, e2)?;
        self.undo_add(undo, p1, &e1.name, e2.ino, e2.ftype)?;
        self.undo_add(undo, p2, &e2.name, e1.ino, e1.ftype)?;
        if e1.ftype == FileType::Directory {
            self.undo_reparent(undo, e1.ino, p1, p2)?;
        }
        if e2.ftype == FileType::Directory {
            self.undo_reparent(undo, e2.ino, p2, p1)?;
        }
        Ok(())
    }

    /// Undo `undo` (newest first) after a rename failed with `e`; returns
    /// `e`. If the undo itself fails, the running transaction holds a
    /// half-done rename: the filesystem is marked failed so that it is
    /// never committed (changes get EROFS, reads go on).
    fn undo(&mut self, undo: Vec<Undo>, e: Errno) -> Errno {
        for u in undo.into_iter().rev() {
            let r = match u {
                Undo::Readd(dir, d) => self.dir_add(dir, &d.name, d.ino, d.ftype),
                Undo::Unadd(dir, name) => self.dir_remove(dir, &name).map(|_| ()),
                Undo::Nlink(ino, n) => self.get_mut(ino).map(|st| st.inode.nlink = n),
                Undo::Parent(ino, p) => self.get_mut(ino).map(|st| st.inode.rdev_or_parent = p),
            };
            if let Err(e2) = r {
                log::error!(
                    "undoing a failed rename ({e}) failed too ({e2}); \
                     no more changes will be accepted"
                );
                self.failed = true;
                break;
            }
        }
        e
    }
}

/// A symlink's mode.
pub const SYMLINK_MODE: u32 = S_IFLNK | 0o777;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::format::mkfs::fresh_dev;
    use crate::format::superblock::Superblock;

    fn meta() -> Meta {
        let dev = fresh_dev(32 << 20);
        let sb = Superblock::decode(&dev.read_block(0).unwrap(), 0).unwrap();
        Meta::new(Arc::new(dev), sb, false, 64).unwrap()
    }

    fn names(m: &mut Meta, dir: u64) -> Vec<(Vec<u8>, u64)> {
        let mut v: Vec<_> = m
            .dir_list(dir, 0, 1000)
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.ino))
            .collect();
        v.sort();
        v
    }

    /// Issue 13 point 6: a rename or exchange failing after its first
    /// directory change is undone, as `make` is: the namespace and the link
    /// counts are as before, and the filesystem goes on.
    /// The tree a/{f, d/}, b/{g, e/}; its inode numbers in that order.
    fn tree(m: &mut Meta) -> [u64; 6] {
        let c = Ctx::root();
        let mk = |m: &mut Meta, p: u64, n: &[u8], mode: u32| {
            m.make(&c, p, n, mode, &mut |_: &mut Meta, _: u64| Ok(()))
                .unwrap()
                .ino
        };
        let a = mk(m, ROOT_INO, b"a", 0o040755);
        let b = mk(m, ROOT_INO, b"b", 0o040755);
        let f = mk(m, a, b"f", 0o100644);
        let d = mk(m, a, b"d", 0o040755);
        let g = mk(m, b, b"g", 0o100644);
        let e = mk(m, b, b"e", 0o040755);
        [a, b, f, d, g, e]
    }

    type State = (Vec<(Vec<u8>, u64)>, Vec<(Vec<u8>, u64)>, Vec<u32>, Vec<u64>);

    fn state(m: &mut Meta, [a, b, f, d, g, e]: [u64; 6]) -> State {
        let links: Vec<u32> = [ROOT_INO, a, b, f, d, g, e]
            .iter()
            .map(|&i| m.get(i).unwrap().nlink)
            .collect();
        let parents: Vec<u64> = [d, e]
            .iter()
            .map(|&i| m.get(i).unwrap().rdev_or_parent)
            .collect();
        (names(m, a), names(m, b), links, parents)
    }

    /// Issue 13 point 6: a rename or exchange failing after its first
    /// directory change is undone, as `make` is: the namespace, the link
    /// counts and the parents are as before, and the filesystem goes on.
    #[test]
    fn a_rename_failing_part_way_is_undone() {
        let plain = RenameFlags::default();
        let exchange = RenameFlags {
            exchange: true,
            ..RenameFlags::default()
        };
        let cases: [(&[u8], &[u8], RenameFlags); 5] = [
            (b"f", b"new", plain),
            (b"f", b"g", plain),
            (b"d", b"e", plain),
            (b"d", b"e", exchange),
            (b"f", b"e", exchange),
        ];
        let mut undone = 0;
        for (from, to, flags) in cases {
            // Fail each directory change in turn after the first.
            for after in 1.. {
                let mut m = meta();
                let t = tree(&mut m);
                let before = state(&mut m, t);
                m.fail_dir_ops_after = Some(after);
                let r = m.rename(t[0], from, t[1], to, flags);
                if m.fail_dir_ops_after.take().is_some() {
                    r.unwrap();
                    assert!(after > 1, "{from:?} -> {to:?}: only one change");
                    break;
                }
                assert_eq!(
                    r,
                    Err(Errno::EIO),
                    "{from:?} -> {to:?} failing after {after}"
                );
                assert!(!m.failed);
                assert_eq!(
                    state(&mut m, t),
                    before,
                    "{from:?} -> {to:?} failing after {after}"
                );
                undone += 1;
            }
        }
        assert!(undone >= 10, "{undone} failures undone");
    }
}
