//! POSIX ACLs (FUSE_POSIX_ACL), on unless `-o noacl`. The kernel checks access
//! against the ACLs it reads through getxattr, but leaves to the
//! filesystem what ext4 does in `ext4_set_acl()` and `ext4_init_acl()`:
//!
//! - setting `system.posix_acl_access` sets the mode's permission bits to
//!   what the ACL amounts to (`posix_acl_update_mode()`), and an ACL that
//!   says no more than the mode is not kept;
//! - a new inode in a directory with `system.posix_acl_default` takes that
//!   ACL, fitted to the mode it was created with, instead of the umask
//!   (`posix_acl_create()`); a new directory inherits the default ACL too.
//!
//! With `-o noacl` the two ACL attributes are refused (EOPNOTSUPP) and
//! not listed, as ext4 does, instead of kept as attributes that mean
//! nothing.
//!
//! Until the core knows ACLs, each of these is two of its operations, not
//! one transaction: the ACL is written before the mode it widens.

use super::adapter::FuseFs;
use super::privs::{Caller, S_ISGID};
use crate::format::inode::FileType;
use crate::fs::{Ctx, Errno, FsResult, SetAttr};

pub const ACCESS: &[u8] = b"system.posix_acl_access";
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

/// Is `name` one of the two ACL attributes?
pub fn is_acl_name(name: &[u8]) -> bool {
    name == ACCESS || name == DEFAULT
}

/// A `listxattr` answer (names each ended by a NUL) without the ACL
/// attributes.
pub fn without_acl_names(list: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len());
    for name in list.split_inclusive(|&b| b == 0) {
        if !is_acl_name(name.strip_suffix(&[0]).unwrap_or(name)) {
            out.extend_from_slice(name);
        }
    }
    out
}

/// `POSIX_ACL_XATTR_VERSION`: the xattr's header.
const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// One entry: tag, permission bits (rwx), user or group id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// An ACL as its xattr holds it: a little-endian version word, then
/// 8-byte entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

impl Acl {
    /// EINVAL for anything that isn't a version-2 ACL with the three base
    /// entries (the kernel has validated what it sends; a stored one may
    /// be damaged).
    pub fn decode(v: &[u8]) -> FsResult<Acl> {
        let (head, body) = v.split_first_chunk::<4>().ok_or(Errno::EINVAL)?;
        if u32::from_le_bytes(*head) != VERSION || body.len() % 8 != 0 {
            return Err(Errno::EINVAL);
        }
        let entries: Vec<Entry> = body
            .chunks_exact(8)
            .filter_map(|c| <[u8; 8]>::try_from(c).ok())
            .map(|c| Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]) & 7,
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        let has = |t| entries.iter().any(|e| e.tag == t);
        let known = |e: &Entry| [USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].contains(&e.tag);
        if !(has(USER_OBJ) && has(GROUP_OBJ) && has(OTHER) && entries.iter().all(known)) {
            return Err(Errno::EINVAL);
        }
        Ok(Acl { entries })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for e in &self.entries {
            v.extend_from_slice(&e.tag.to_le_bytes());
            v.extend_from_slice(&e.perm.to_le_bytes());
            v.extend_from_slice(&e.id.to_le_bytes());
        }
        v
    }

    fn perm(&self, tag: u16) -> Option<u32> {
        self.entries
            .iter()
            .find(|e| e.tag == tag)
            .map(|e| u32::from(e.perm))
    }

    /// The permission bits (0o777) the ACL amounts to: the owner's, the
    /// mask's (or without one the owning group's), the others'.
    pub fn mode_bits(&self) -> u32 {
        let user = self.perm(USER_OBJ).unwrap_or(0);
        let group = self.perm(MASK).or(self.perm(GROUP_OBJ)).unwrap_or(0);
        let other = self.perm(OTHER).unwrap_or(0);
        user << 6 | group << 3 | other
    }

    /// Does the ACL say no more than the mode (only the three base
    /// entries)?
    pub fn is_minimal(&self) -> bool {
        self.entries
            .iter()
            .all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER))
    }

    /// Fit a directory's default ACL to a new inode created with `mode`
    /// (`posix_acl_create_masq()`): each base entry (the mask in place of
    /// the owning group, if there is one) keeps only what the mode allows,
    /// and the mode only what the ACL allows. Returns the new mode.
    pub fn create_masq(&mut self, mode: u32) -> u32 {
        let mut m = mode;
        let group_tag = if self.perm(MASK).is_some() {
            MASK
        } else {
            GROUP_OBJ
        };
        for e in &mut self.entries {
            let shift = match e.tag {
                USER_OBJ => 6,
                OTHER => 0,
                t if t == group_tag => 3,
                _ => continue,
            };
            e.perm &= ((mode >> shift) & 7) as u16;
            m &= !(7 << shift) | (u32::from(e.perm) << shift);
        }
        m
    }
}

/// What a new inode inherits from its directory's default ACL.
pub struct Inherit {
    /// Its access ACL, unless the mode says it all.
    access: Option<Vec<u8>>,
    /// The directory's default ACL, for a new directory.
    default: Vec<u8>,
}

impl FuseFs {
    /// The mode to create an inode with in `parent` (`mode` as the caller
    /// asked, `umask` the caller's), and what it inherits: with a default
    /// ACL on `parent` the ACL decides instead of the umask.
    pub(super) fn acl_create_mode(
        &self,
        parent: u64,
        mode: u32,
        umask: u32,
    ) -> FsResult<(u32, Option<Inherit>)> {
        let default = match self.fs.getxattr(parent, DEFAULT) {
            Ok(v) => v,
            Err(Errno::ENODATA) => return Ok((mode & !(umask & 0o777), None)),
            Err(e) => return Err(e),
        };
        let mut acl = Acl::decode(&default)?;
        let mode = acl.create_masq(mode);
        let access = (!acl.is_minimal()).then(|| acl.encode());
        Ok((mode, Some(Inherit { access, default })))
    }

    /// Give the new inode `ino` what it inherits. The inode exists and the
    /// kernel is told so whatever happens here: a failure is logged.
    pub(super) fn acl_inherit(&self, ino: u64, kind: FileType, inherit: Option<Inherit>) {
        let Some(i) = inherit else { return };
        let mut r = Ok(());
        if let Some(access) = &i.access {
            r = self.fs.setxattr(ino, ACCESS, access, 0);
        }
        if kind == FileType::Directory {
            r = r.and(self.fs.setxattr(ino, DEFAULT, &i.default, 0));
        }
        if let Err(e) = r {
            log::error!("inode {ino}: inheriting its directory's default ACL: {e}");
        }
    }

    /// Set the access ACL of `ino` to `value` and its mode to match.
    pub(super) fn acl_set_access(&self, ctx: &Ctx, ino: u64, value: &[u8]) -> FsResult<()> {
        let acl = Acl::decode(value)?;
        if acl.is_minimal() {
            match self.fs.removexattr(ino, ACCESS) {
                Ok(()) | Err(Errno::ENODATA) => {}
                Err(e) => return Err(e),
            }
        } else {
            self.fs.setxattr(ino, ACCESS, value, 0)?;
        }
        let a = self.fs.getattr(ino)?;
        let perm = u32::from(a.perm);
        let mut mode = (perm & !0o777) | acl.mode_bits();
        // posix_acl_update_mode(): setgid goes unless the caller is in the
        // inode's group or has CAP_FSETID (files and directories alike).
        if mode & S_ISGID != 0 && !Caller::of(ctx).in_group_or_capable(a.gid) {
            mode &= !S_ISGID;
        }
        if mode != perm {
            let set = SetAttr {
                mode: Some(mode),
                ..SetAttr::default()
            };
            self.fs.setattr(ctx, ino, &set)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl {
            entries: entries
                .iter()
                .map(|&(tag, perm, id)| Entry { tag, perm, id })
                .collect(),
        }
    }

    /// `setfacl -m u:1000:rwx,g:100:r` on a 0640 file.
    fn named() -> Acl {
        acl(&[
            (USER_OBJ, 6, u32::MAX),
            (USER, 7, 1000),
            (GROUP_OBJ, 4, u32::MAX),
            (GROUP, 4, 100),
            (MASK, 7, u32::MAX),
            (OTHER, 0, u32::MAX),
        ])
    }

    #[test]
    fn listing_without_acls() {
        let list = b"user.a\0system.posix_acl_access\0trusted.b\0system.posix_acl_default\0";
        assert_eq!(without_acl_names(list), b"user.a\0trusted.b\0");
        assert_eq!(without_acl_names(b""), b"");
        assert!(is_acl_name(ACCESS) && is_acl_name(DEFAULT));
        assert!(!is_acl_name(b"system.posix_acl"));
    }

    #[test]
    fn round_trips_through_the_xattr_format() -> FsResult<()> {
        let a = named();
        let v = a.encode();
        assert_eq!(v.len(), 4 + 6 * 8);
        assert_eq!(&v[..4], &[2, 0, 0, 0]);
        assert_eq!(Acl::decode(&v)?, a);
        Ok(())
    }

    #[test]
    fn damaged_values_are_einval() {
        let v = named().encode();
        assert_eq!(Acl::decode(&v[..7]), Err(Errno::EINVAL));
        assert_eq!(Acl::decode(&v[..v.len() - 1]), Err(Errno::EINVAL));
        assert_eq!(Acl::decode(&[]), Err(Errno::EINVAL));
        let mut bad = v.clone();
        bad[0] = 1;
        assert_eq!(Acl::decode(&bad), Err(Errno::EINVAL));
        let no_other = acl(&[(USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0)]).encode();
        assert_eq!(Acl::decode(&no_other), Err(Errno::EINVAL));
        let unknown = acl(&[
            (USER_OBJ, 6, 0),
            (GROUP_OBJ, 4, 0),
            (OTHER, 0, 0),
            (0x40, 7, 0),
        ]);
        assert_eq!(Acl::decode(&unknown.encode()), Err(Errno::EINVAL));
    }

    /// The mask stands for the group bits (`ls -l` shows rwx for named()).
    #[test]
    fn mode_bits_take_the_mask_for_the_group() {
        assert_eq!(named().mode_bits(), 0o670);
        assert!(!named().is_minimal());
        let base = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0), (OTHER, 1, 0)]);
        assert_eq!(base.mode_bits(), 0o751);
        assert!(base.is_minimal());
    }

    /// As posix_acl_create_masq: mkdir with 0777 under a default ACL
    /// u::rwx,u:1000:rwx,g::r-x,m::rwx,o::--- gives 0770 and keeps the
    /// named entry; open(O_CREAT, 0644) under it masks the ACL down.
    #[test]
    fn create_masq_fits_acl_and_mode_to_each_other() {
        let d = acl(&[
            (USER_OBJ, 7, u32::MAX),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, u32::MAX),
            (MASK, 7, u32::MAX),
            (OTHER, 0, u32::MAX),
        ]);
        let mut a = d.clone();
        assert_eq!(a.create_masq(0o40777), 0o40770);
        assert_eq!(a, d);
        let mut f = d.clone();
        assert_eq!(f.create_masq(0o100644), 0o100640);
        assert_eq!(f.perm(USER_OBJ), Some(6));
        assert_eq!(f.perm(MASK), Some(4));
        assert_eq!(f.perm(GROUP_OBJ), Some(5)); // under the mask, untouched
        assert_eq!(f.perm(OTHER), Some(0));
        // Without a mask the owning group's entry is fitted.
        let mut b = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 7, 0), (OTHER, 5, 0)]);
        assert_eq!(b.create_masq(0o100640), 0o100640);
        assert_eq!(b.mode_bits(), 0o640);
        // Setuid and the type bits pass through.
        let mut s = acl(&[(USER_OBJ, 5, 0), (GROUP_OBJ, 5, 0), (OTHER, 5, 0)]);
        assert_eq!(s.create_masq(0o104777), 0o104555);
    }
}
