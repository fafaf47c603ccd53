//! Extended attributes on [`Meta`]: all of an inode's attributes live in
//! one block (`format::xattr`), rewritten whole on each change inside the
//! running transaction.

use super::meta::{fail, touch, Meta};
use super::txn::MetaIo;
use super::types::{Errno, FsResult};
use crate::format::xattr::{self, Namespace, Xattr};

impl Meta {
    fn xattrs(&mut self, ino: u64) -> FsResult<Vec<Xattr>> {
        let b = self.get(ino)?.xattr_block;
        if b == 0 {
            return Ok(Vec::new());
        }
        let raw = self.bufs.read_meta(b).map_err(|e| fail("xattr block", e))?;
        xattr::decode(self.seed, b, ino, &raw)
            .map_err(|e| fail(&format!("xattrs of inode {ino}"), e))
    }

    fn put_xattrs(&mut self, ino: u64, attrs: Vec<Xattr>) -> FsResult<()> {
        self.check_writable()?;
        let old = self.get(ino)?.xattr_block;
        if attrs.is_empty() {
            if old != 0 {
                let st = self.get_mut(ino)?;
                st.inode.xattr_block = 0;
                st.inode.blocks = st.inode.blocks.saturating_sub(1);
                // Removing the last attribute is a change of the inode too.
                touch(&mut st.inode, false);
                self.free_blocks(old, 1, true)?;
            }
            return Ok(());
        }
        if !xattr::fits(&attrs) {
            return Err(Errno::ENOSPC);
        }
        let b = if old != 0 {
            old
        } else {
            self.check_meta_room()?;
            let goal = self.geo.group_start(self.geo.ino_group(ino).0);
            let (b, _) = self.alloc_blocks(goal, 1)?;
            let st = self.get_mut(ino)?;
            st.inode.xattr_block = b;
            st.inode.blocks += 1;
            b
        };
        let raw = xattr::encode(self.seed, b, ino, &attrs).map_err(|e| fail("xattr block", e))?;
        self.bufs.write_meta(b, raw);
        touch(&mut self.get_mut(ino)?.inode, false);
        Ok(())
    }

    pub fn getxattr(&mut self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        let (ns, short) = split(name)?;
        self.xattrs(ino)?
            .into_iter()
            .find(|a| a.ns == ns && a.name == short)
            .map(|a| a.value)
            .ok_or(Errno::ENODATA)
    }

    pub fn listxattr(&mut self, ino: u64) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        for a in self.xattrs(ino)? {
            out.extend_from_slice(&a.full_name());
            out.push(0);
        }
        Ok(out)
    }

    /// `flags`: `XATTR_CREATE` (EEXIST if present), `XATTR_REPLACE`
    /// (ENODATA if absent), or 0.
    pub fn setxattr(&mut self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        let (ns, short) = split(name)?;
        let mut attrs = self.xattrs(ino)?;
        let at = attrs.iter().position(|a| a.ns == ns && a.name == short);
        match (at, flags) {
            (Some(_), f) if f & libc::XATTR_CREATE != 0 => return Err(Errno::EEXIST),
            (None, f) if f & libc::XATTR_REPLACE != 0 => return Err(Errno::ENODATA),
            _ => {}
        }
        let new = Xattr {
            ns,
            name: short.to_vec(),
            value: value.to_vec(),
        };
        match at.and_then(|i| attrs.get_mut(i)) {
            Some(a) => *a = new,
            None => attrs.push(new),
        }
        attrs.sort_by(|a, b| (a.ns, &a.name).cmp(&(b.ns, &b.name)));
        self.put_xattrs(ino, attrs)
    }

    pub fn removexattr(&mut self, ino: u64, name: &[u8]) -> FsResult<()> {
        let (ns, short) = split(name)?;
        let mut attrs = self.xattrs(ino)?;
        let at = attrs
            .iter()
            .position(|a| a.ns == ns && a.name == short)
            .ok_or(Errno::ENODATA)?;
        attrs.remove(at);
        self.put_xattrs(ino, attrs)
    }
}

/// The namespace and short name of a full attribute name: EOPNOTSUPP for
/// namespaces biofs doesn't keep, ERANGE for names too long.
fn split(name: &[u8]) -> FsResult<(Namespace, &[u8])> {
    let (ns, short) = Namespace::split(name).ok_or(Errno::EOPNOTSUPP)?;
    if short.is_empty() {
        return Err(Errno::EINVAL);
    }
    if short.len() > 255 {
        return Err(Errno::ERANGE);
    }
    Ok((ns, short))
}
