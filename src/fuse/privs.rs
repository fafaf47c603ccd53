//! Clearing setuid and setgid when a file's data or mode changes, by the
//! kernel's rules, applied here because the FUSE protocol fuser negotiates
//! leaves part of them to the filesystem.
//!
//! Counterparts of `setattr_should_drop_suidgid()` and
//! `setattr_should_drop_sgid()` (fs/attr.c), which `file_remove_privs()`
//! (fs/inode.c) applies before a write, truncate, fallocate or
//! copy_file_range, and of the setgid rule of `posix_acl_update_mode()`
//! (fs/posix_acl.c):
//!
//! - a caller with CAP_FSETID keeps both bits;
//! - otherwise a regular file loses S_ISUID, and S_ISGID if it is
//!   group-executable or the caller is not in the file's group;
//! - setting an access ACL clears S_ISGID (of any inode) when the caller
//!   is neither in the inode's group nor has CAP_FSETID.
//!
//! And of `chown_common()` (fs/open.c): a change of owner or group of
//! anything but a directory clears S_ISUID whoever makes it, and S_ISGID
//! as `setattr_should_drop_sgid()` says (group-executable, or a caller
//! outside the file's old group without CAP_FSETID).
//!
//! biofs negotiates FUSE_HANDLE_KILLPRIV_V2, which leaves all of that to
//! the filesystem: the kernel's FUSE sends no mode change for it (it drops
//! the one `notify_change()` computes), and in return its superblock has
//! SB_NOSEC, so a file that has neither bit nor `security.capability`
//! stops costing a GETXATTR of that xattr on every `write()`. The kernel
//! still removes `security.capability` itself (`notify_change()`'s
//! ATTR_KILL_PRIV, a REMOVEXATTR). biofs applies the rules from the
//! request's credentials, on WRITE, on a SETATTR of the size, of the owner
//! or group, on OPEN with O_TRUNC, on FALLOCATE and when an ACL is set;
//! where a bit goes, the kernel's cached attributes are dropped.
//! chown(-1, -1) reaches biofs as a SETATTR that sets nothing (ctime
//! alone with the writeback cache): the same request as a write's
//! `file_remove_privs()` without the writeback cache, so it is given the
//! data-change rule, which is the chown rule for a caller without
//! CAP_FSETID. One difference from ext4 is left: a chown(-1, -1) by a
//! caller with CAP_FSETID (root) keeps setuid. With the writeback cache
//! the kernel sends a write that must clear a bit through (with the
//! writer's credentials) instead of caching it, and a SETATTR that sets
//! nothing is taken as a data change too. The caller is the request's
//! thread: its capabilities and supplementary groups come from
//! `/proc/PID/status`.

use super::adapter::FuseFs;
use crate::format::inode::FileType;
use crate::fs::{Attr, Ctx, FsResult, SetAttr};

pub const S_ISUID: u32 = 0o4000;
pub const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o010;

/// `CAP_FSETID`'s bit in the capability sets.
const CAP_FSETID: u32 = 4;

/// What the kernel's permission rules need of a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Its effective capabilities include CAP_FSETID.
    pub fsetid: bool,
    /// Its filesystem gid and supplementary groups.
    pub groups: Vec<u32>,
}

impl Caller {
    /// The caller of a request, from `/proc/PID/status`; if that can't be
    /// read (the thread has gone), root is taken as capable and anyone
    /// else as in its own group only.
    pub fn of(ctx: &Ctx) -> Caller {
        let status = if ctx.pid == 0 {
            None
        } else {
            std::fs::read_to_string(format!("/proc/{}/status", ctx.pid)).ok()
        };
        status
            .and_then(|s| Caller::parse(ctx, &s))
            .unwrap_or_else(|| Caller {
                fsetid: ctx.uid == 0,
                groups: vec![ctx.gid],
            })
    }

    /// Parse a `/proc/PID/status` (`CapEff:` in hex, `Groups:` ids).
    fn parse(ctx: &Ctx, status: &str) -> Option<Caller> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let caps = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
        let mut groups = vec![ctx.gid];
        for g in field("Groups:")?.split_whitespace() {
            groups.push(g.parse().ok()?);
        }
        Some(Caller {
            fsetid: caps & (1 << CAP_FSETID) != 0,
            groups,
        })
    }

    /// `in_group_or_capable()`: may keep S_ISGID of a file of group `gid`.
    pub fn in_group_or_capable(&self, gid: u32) -> bool {
        self.fsetid || self.groups.contains(&gid)
    }
}

/// The bits (S_ISUID, S_ISGID) a change of the data of an inode with
/// attributes `a` by `caller` clears (`setattr_should_drop_suidgid()`).
pub fn data_change_kills(a: &Attr, caller: &Caller) -> u32 {
    let mode = u32::from(a.perm);
    if a.kind != FileType::Regular || caller.fsetid {
        return 0;
    }
    let mut kill = mode & S_ISUID;
    if mode & S_ISGID != 0 && (mode & S_IXGRP != 0 || !caller.in_group_or_capable(a.gid)) {
        kill |= S_ISGID;
    }
    kill
}

/// The bits a change of owner or group of an inode with attributes `a`
/// clears (`chown_common()`): S_ISUID of anything but a directory, and
/// S_ISGID if group-executable or `in_group` (asked only then: whether the
/// caller is in the file's group or has CAP_FSETID) says no.
pub fn owner_change_kills(a: &Attr, in_group: impl FnOnce(u32) -> bool) -> u32 {
    let mode = u32::from(a.perm);
    if a.kind == FileType::Directory {
        return 0;
    }
    let mut kill = mode & S_ISUID;
    if mode & S_ISGID != 0 && (mode & S_IXGRP != 0 || !in_group(a.gid)) {
        kill |= S_ISGID;
    }
    kill
}

/// Whether a change of the data of an inode with attributes `a` may clear
/// a bit: cheap, so that only then is the caller looked up.
pub fn may_kill(a: &Attr) -> bool {
    a.kind == FileType::Regular && u32::from(a.perm) & (S_ISUID | S_ISGID) != 0
}

impl FuseFs {
    /// `file_remove_privs()`: before `ctx` changes the data of `ino`,
    /// clear its setuid and setgid bits as the kernel's rules say.
    pub(super) fn remove_privs(&self, ctx: &Ctx, ino: u64) -> FsResult<()> {
        let a = self.fs.getattr(ino)?;
        if !may_kill(&a) {
            return Ok(());
        }
        let kill = data_change_kills(&a, &Caller::of(ctx));
        if kill != 0 {
            let set = SetAttr {
                mode: Some(u32::from(a.perm) & !kill),
                ..SetAttr::default()
            };
            self.fs.setattr(ctx, ino, &set)?;
            self.invalidate_attrs(ino);
        }
        Ok(())
    }

    /// The mode a change of owner or group of `ino` by `ctx` leaves, if
    /// it must change: `mode` (a chmod in the same request) or the
    /// inode's, less what [`owner_change_kills`] clears.
    pub(super) fn owner_killed_mode(
        &self,
        ctx: &Ctx,
        ino: u64,
        mode: Option<u32>,
    ) -> FsResult<Option<u32>> {
        self.mode_less(ino, mode, |a| {
            owner_change_kills(a, |gid| Caller::of(ctx).in_group_or_capable(gid))
        })
    }

    /// The mode a truncate (or another change of the data) by `ctx` to
    /// `ino` leaves, if it must change:
    /// `mode` (a chmod in the same request) or the inode's, less what
    /// [`data_change_kills`] clears.
    pub(super) fn killed_mode(
        &self,
        ctx: &Ctx,
        ino: u64,
        mode: Option<u32>,
    ) -> FsResult<Option<u32>> {
        self.mode_less(ino, mode, |a| {
            if may_kill(a) {
                data_change_kills(a, &Caller::of(ctx))
            } else {
                0
            }
        })
    }

    /// `mode` (or, if `None`, the inode's) less the bits `kills` gives
    /// for it; `mode` itself when no bit goes.
    fn mode_less(
        &self,
        ino: u64,
        mode: Option<u32>,
        kills: impl FnOnce(&Attr) -> u32,
    ) -> FsResult<Option<u32>> {
        let mut a = self.fs.getattr(ino)?;
        if let Some(m) = mode {
            a.perm = (m & 0o7777) as u16;
        }
        let kill = kills(&a);
        Ok(if kill != 0 {
            Some(u32::from(a.perm) & !kill)
        } else {
            mode
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::inode::Timespec;

    fn attr(kind: FileType, perm: u32, gid: u32) -> Attr {
        Attr {
            ino: 2,
            size: 0,
            blocks: 0,
            atime: Timespec::default(),
            mtime: Timespec::default(),
            ctime: Timespec::default(),
            crtime: Timespec::default(),
            kind,
            perm: perm as u16,
            nlink: 1,
            uid: 0,
            gid,
            rdev: 0,
            blksize: 4096,
            generation: 0,
        }
    }

    fn user(groups: &[u32]) -> Caller {
        Caller {
            fsetid: false,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn status_gives_capabilities_and_groups() {
        let ctx = Ctx {
            uid: 1000,
            gid: 1000,
            pid: 7,
        };
        let s = "Name:\tsh\nGroups:\t4 24 27 \nCapInh:\t0\nCapEff:\t000001ffffffffff\n";
        assert_eq!(
            Caller::parse(&ctx, s),
            Some(Caller {
                fsetid: true,
                groups: vec![1000, 4, 24, 27]
            })
        );
        let s = "Groups:\t\nCapEff:\t0000000000000000\n";
        assert_eq!(Caller::parse(&ctx, s), Some(user(&[1000])));
        assert_eq!(Caller::parse(&ctx, "Groups:\t1\n"), None);
    }

    /// As ext4 on Linux 6.x: 2666 loses setgid for a writer outside the
    /// group, keeps it for one inside; 2676 loses it for anyone; setuid
    /// always goes; CAP_FSETID keeps everything; directories keep theirs.
    #[test]
    fn the_kernels_rules() {
        let f = |perm| attr(FileType::Regular, perm, 0);
        assert_eq!(data_change_kills(&f(0o2666), &user(&[65534])), S_ISGID);
        assert_eq!(data_change_kills(&f(0o2666), &user(&[65534, 0])), 0);
        assert_eq!(data_change_kills(&f(0o2676), &user(&[0])), S_ISGID);
        assert_eq!(data_change_kills(&f(0o4666), &user(&[0])), S_ISUID);
        assert_eq!(
            data_change_kills(&f(0o6777), &user(&[0])),
            S_ISUID | S_ISGID
        );
        let root = Caller {
            fsetid: true,
            groups: vec![0],
        };
        assert_eq!(data_change_kills(&f(0o6777), &root), 0);
        let d = attr(FileType::Directory, 0o2777, 0);
        assert_eq!(data_change_kills(&d, &user(&[65534])), 0);
        // chown: setuid goes whoever changes the owner (root too), setgid
        // with group execute, or for a caller outside the group.
        let yes = |_| true;
        let no = |_| false;
        assert_eq!(owner_change_kills(&f(0o6755), yes), S_ISUID | S_ISGID);
        assert_eq!(owner_change_kills(&f(0o6745), yes), S_ISUID);
        assert_eq!(owner_change_kills(&f(0o2745), no), S_ISGID);
        assert_eq!(owner_change_kills(&f(0o0755), no), 0);
        assert_eq!(owner_change_kills(&d, no), 0);
        assert!(!may_kill(&d));
        assert!(may_kill(&f(0o2644)));
        assert!(!may_kill(&f(0o1777)));
    }
}
