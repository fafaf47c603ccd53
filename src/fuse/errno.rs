//! The one mapping from the core's errors ([`crate::fs::Errno`], nix's) to
//! the errors a FUSE reply carries ([`fuser::Errno`]).
//!
//! Every reply of the adapter goes through [`to_fuse`]; nothing else in
//! `src/fuse/` builds a `fuser::Errno` from a core error.

use crate::fs::Errno;

/// The largest errno the kernel accepts in a FUSE reply: `fuse_dev_do_write()`
/// (fs/fuse/dev.c) refuses a reply whose error is `<= -512` with EINVAL, and
/// the request it answers would then never end.
const MAX_REPLY_ERRNO: i32 = 511;

/// The FUSE reply error for the core's `e`.
///
/// - `ENOSYS` becomes `EOPNOTSUPP`. From a FUSE daemon the kernel reads
///   ENOSYS as "this opcode is not implemented: never send it again", and
///   for FSYNC, FSYNCDIR and FLUSH it then reports success to every later
///   caller (`fc->no_fsync` ...). A core that can't do something for one
///   request must not turn off the operation for the whole mount, least of
///   all turn a failed fsync into a silent success.
/// - A value the kernel would refuse (0, negative, or 512 and above: the
///   kernel-internal restart codes) becomes `EIO`.
/// - Everything else passes unchanged (EWOULDBLOCK is EAGAIN, ENOTSUP is
///   EOPNOTSUPP on Linux).
pub fn to_fuse(e: Errno) -> fuser::Errno {
    own(e as i32)
}

/// The reply error for a raw errno value: the adapter's own checks (made
/// before the core is called) use this, with the rules of [`to_fuse`].
pub fn own(code: i32) -> fuser::Errno {
    let code = if code == libc::ENOSYS {
        libc::EOPNOTSUPP
    } else {
        code
    };
    if code <= 0 || code > MAX_REPLY_ERRNO {
        return fuser::Errno::EIO;
    }
    fuser::Errno::from_i32(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_errors_pass_unchanged() {
        for e in [
            Errno::ENOENT,
            Errno::EEXIST,
            Errno::ENOTEMPTY,
            Errno::ENOSPC,
            Errno::EROFS,
            Errno::EIO,
            Errno::ENAMETOOLONG,
            Errno::ENODATA,
            Errno::ERANGE,
            Errno::EXDEV,
            Errno::EFBIG,
            Errno::EOPNOTSUPP,
            Errno::EAGAIN,
            Errno::EDQUOT,
            Errno::EUCLEAN,
            Errno::EHWPOISON,
        ] {
            assert_eq!(to_fuse(e).code(), e as i32, "{e}");
        }
    }

    /// The kernel turns off FSYNC for the whole mount (and fakes success
    /// from then on) after one ENOSYS: the core's ENOSYS must not reach it.
    #[test]
    fn enosys_becomes_eopnotsupp() {
        assert_eq!(to_fuse(Errno::ENOSYS).code(), libc::EOPNOTSUPP);
        assert_eq!(own(libc::ENOSYS).code(), libc::EOPNOTSUPP);
    }

    #[test]
    fn values_the_kernel_refuses_become_eio() {
        assert_eq!(to_fuse(Errno::UnknownErrno).code(), libc::EIO);
        assert_eq!(own(0).code(), libc::EIO);
        assert_eq!(own(512).code(), libc::EIO); // ERESTARTSYS
        assert_eq!(own(-2).code(), libc::EIO);
        assert_eq!(own(511).code(), 511);
    }
}
