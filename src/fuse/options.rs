//! The `-o` mount options of `biofs` (and of mount(8) and /etc/fstab, which
//! pass them through `mount.fuse.biofs`): parsed into what the core, the
//! adapter and fuser each take.

use std::path::PathBuf;

use fuser::{MountOption, SessionACL};

use super::adapter::FuseConfig;
use crate::format::units::parse_size;
use crate::fs::{AtimeMode, MountOptions};

/// FUSE event-loop threads unless `threads=` says otherwise. A request
/// holds its thread until its I/O is done, so the threads bound the I/O
/// in flight: 4 KiB random reads at iodepth 32 measured 13.8k IOPS with
/// 4 threads, 16.0k with 16, 20.2k with 32 (docs/benchmarks.md). Each
/// thread keeps a buffer of one largest request (about 1 MiB).
pub const DEFAULT_THREADS: usize = 32;

/// The most event-loop threads `threads=` takes.
pub const MAX_THREADS: usize = 256;

/// Options mount(8) passes that change nothing here.
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "default_permissions", // always on
    "lazytime",
];

/// A parsed set of mount options.
#[derive(Clone, Debug)]
pub struct Options {
    /// What the core's [`crate::fs::Fs::mount`] takes.
    pub fs: MountOptions,
    /// What the adapter negotiates with the kernel.
    pub fuse: FuseConfig,
    /// FUSE event-loop threads (each with its own cloned `/dev/fuse` fd).
    pub threads: usize,
    pub allow_other: bool,
    /// The mount's source in /proc/mounts (`None`: the target's path).
    pub fsname: Option<String>,
    /// Where a daemon's log goes once it has detached.
    pub log: Option<PathBuf>,
    /// Mount flags, `Some` when given (the last of a pair wins).
    pub dev: Option<bool>,
    pub suid: Option<bool>,
    pub exec: Option<bool>,
    pub atime: Option<bool>,
    /// `fuseblk` (`Some(true)`: a fuseblk mount or an error), `nofuseblk`
    /// (a plain fuse mount), or neither (fuseblk where it can be had).
    pub fuseblk: Option<bool>,
    /// `remount`: change the flags of the existing mount on MOUNTPOINT.
    pub remount: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fs: MountOptions::default(),
            fuse: FuseConfig::default(),
            threads: DEFAULT_THREADS,
            allow_other: false,
            fsname: None,
            log: None,
            dev: None,
            suid: None,
            exec: None,
            atime: None,
            fuseblk: None,
            remount: false,
        }
    }
}

/// Parse the option lists of every `-o` (each comma-separated).
///
/// Fails with a message naming the option for an unknown option, a value
/// that doesn't parse, or an option biofs refuses (`uid=`, `gid=`).
pub fn parse<S: AsRef<str>>(lists: &[S]) -> Result<Options, String> {
    let mut o = Options::default();
    for list in lists {
        for item in list.as_ref().split(',').map(str::trim) {
            if !item.is_empty() {
                apply(&mut o, item)?;
            }
        }
    }
    Ok(o)
}

fn apply(o: &mut Options, item: &str) -> Result<(), String> {
    let (key, value) = match item.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (item, None),
    };
    let need = |what: &str| value.ok_or_else(|| format!("-o {key}: needs a value ({what})"));
    match key {
        "ro" | "rw" => o.fs.read_only = key == "ro",
        "allow_other" => o.allow_other = true,
        "acl" | "noacl" => o.fuse.posix_acl = key == "acl",
        "writecache" | "nowritecache" => o.fuse.writeback_cache = key == "writecache",
        "dev" | "nodev" => o.dev = Some(key == "dev"),
        "suid" | "nosuid" => o.suid = Some(key == "suid"),
        "exec" | "noexec" => o.exec = Some(key == "exec"),
        "atime" | "noatime" => {
            o.atime = Some(key == "atime");
            o.fs.atime = if key == "atime" {
                AtimeMode::Relatime
            } else {
                AtimeMode::NoAtime
            };
        }
        "relatime" | "strictatime" => {
            o.atime = None;
            o.fs.atime = if key == "relatime" {
                AtimeMode::Relatime
            } else {
                AtimeMode::Strict
            };
        }
        "diratime" | "nodiratime" => o.fs.nodiratime = key == "nodiratime",
        "fuseblk" | "nofuseblk" => o.fuseblk = Some(key == "fuseblk"),
        "remount" => o.remount = true,
        // What mount(8) repeats from /proc/mounts for a remount: the
        // kernel's FUSE options, set at mount and not changed by it.
        "user_id" | "group_id" | "rootmode" | "blksize" | "max_read" if o.remount => {}
        "fsname" => {
            let v = need("a name")?;
            if v.is_empty() {
                return Err("-o fsname: the name is empty".into());
            }
            o.fsname = Some(v.to_string());
        }
        "log" => {
            let v = need("a file")?;
            if v.is_empty() {
                return Err("-o log: the file name is empty".into());
            }
            o.log = Some(PathBuf::from(v));
        }
        "cache_size" => {
            let v = need("a size like 512M")?;
            o.fs.cache_bytes = parse_size(v).map_err(|e| format!("-o cache_size: {e}"))?;
        }
        "meta_cache_size" => {
            let v = need("a size like 32M")?;
            let n = parse_size(v).map_err(|e| format!("-o meta_cache_size: {e}"))?;
            o.fs.meta_cache_bytes = Some(n);
        }
        "workers" => o.fs.workers = number(key, need("a count")?, 0, 1024)?,
        "queue_depth" => o.fs.queue_depth = number(key, need("a count")?, 0, 4096)?,
        "threads" => o.threads = number(key, need("a count")?, 1, MAX_THREADS)?,
        "commit" => {
            // 0 is the default, as ext4's commit=0.
            let secs = number(key, need("seconds")?, 0, 86_400)?;
            o.fs.commit_interval_secs = if secs == 0 {
                MountOptions::default().commit_interval_secs
            } else {
                secs as u64
            };
        }
        "verify" => {
            o.fs.verify_reads = match need("on or off")? {
                "on" => true,
                "off" => false,
                v => return Err(format!("-o verify: '{v}' is not on or off")),
            }
        }
        "uid" | "gid" => {
            return Err(format!(
                "-o {key}: not supported: biofs reports the owners stored in the \
                 filesystem (change them with chown)"
            ))
        }
        k if value.is_none() && IGNORED.contains(&k) => {}
        k if k.starts_with("x-") || k == "comment" => {}
        _ => return Err(format!("unknown mount option '{item}'")),
    }
    Ok(())
}

fn number(key: &str, v: &str, min: usize, max: usize) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "-o {key}: '{v}' is not a number from {min} to {max}"
        )),
    }
}

impl Options {
    /// The `MS_*` flags of the mount: FUSE's `nodev,nosuid` unless `dev` or
    /// `suid` is given.
    pub fn ms_flags(&self) -> libc::c_ulong {
        let mut f = 0;
        let mut set = |on: bool, flag: libc::c_ulong| {
            if on {
                f |= flag;
            }
        };
        set(self.fs.read_only, libc::MS_RDONLY);
        set(self.dev != Some(true), libc::MS_NODEV);
        set(self.suid != Some(true), libc::MS_NOSUID);
        set(self.exec == Some(false), libc::MS_NOEXEC);
        set(self.atime == Some(false), libc::MS_NOATIME);
        set(self.fs.atime == AtimeMode::Strict, libc::MS_STRICTATIME);
        set(self.fs.nodiratime, libc::MS_NODIRATIME);
        f
    }

    /// The kernel FUSE options of the mount: always `default_permissions`
    /// (the kernel checks permissions; the core doesn't).
    pub fn kernel_options(&self) -> String {
        let mut o = String::from("default_permissions");
        if self.allow_other {
            o.push_str(",allow_other");
        }
        o
    }

    /// Who fuser lets through (the kernel has checked already).
    pub fn session_acl(&self) -> SessionACL {
        if self.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        }
    }

    /// fuser's session configuration. Its mount options are used only when
    /// fuser mounts (a user's mount, through fusermount3): mounted as
    /// `fuse.biofs` from `fsname`, always with `default_permissions`.
    pub fn fuser_config(&self, fsname: &str) -> fuser::Config {
        let mut m = vec![
            MountOption::FSName(fsname.to_string()),
            // fuser's own Subtype goes only to fusermount; the kernel takes
            // "subtype=" itself and then shows the type as fuse.biofs.
            MountOption::CUSTOM("subtype=biofs".into()),
            MountOption::DefaultPermissions,
            if self.fs.read_only {
                MountOption::RO
            } else {
                MountOption::RW
            },
        ];
        let pairs = [
            (self.dev, MountOption::Dev, MountOption::NoDev),
            (self.suid, MountOption::Suid, MountOption::NoSuid),
            (self.exec, MountOption::Exec, MountOption::NoExec),
            (self.atime, MountOption::Atime, MountOption::NoAtime),
        ];
        for (v, on, off) in pairs {
            match v {
                Some(true) => m.push(on),
                Some(false) => m.push(off),
                None => {}
            }
        }
        let mut c = fuser::Config::default();
        c.mount_options = m;
        c.acl = self.session_acl();
        c.n_threads = Some(self.threads);
        c.clone_fd = true;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(list: &str) -> String {
        parse(&[list]).err().unwrap_or_default()
    }

    #[test]
    fn defaults() -> Result<(), String> {
        let o = parse::<&str>(&[])?;
        assert!(!o.fs.read_only);
        assert!(o.fs.verify_reads);
        assert_eq!(o.fs.cache_bytes, MountOptions::default().cache_bytes);
        assert_eq!(o.fs.commit_interval_secs, 5);
        assert_eq!(o.threads, DEFAULT_THREADS);
        assert!(!o.fuse.writeback_cache);
        assert!(o.fuse.posix_acl, "ACLs are on by default, as on ext4");
        assert!(!o.allow_other);
        assert_eq!(o.fsname, None);
        Ok(())
    }

    #[test]
    fn every_option_lands() -> Result<(), String> {
        let o = parse(&[
            "ro,allow_other,acl,cache_size=64M,meta_cache_size=1M,workers=3,queue_depth=12",
            "verify=off,threads=8,writecache,commit=30,fsname=data,log=/tmp/b.log",
        ])?;
        assert!(o.fs.read_only);
        assert!(o.allow_other);
        assert!(o.fuse.posix_acl);
        assert_eq!(o.fs.cache_bytes, 64 << 20);
        assert_eq!(o.fs.meta_cache_blocks(), 256);
        // cache_size is the budget: the page cache gets what the buffer
        // cache and the tuple cache (16M) leave, at least half.
        assert_eq!(o.fs.page_cache_bytes(), (64 - 1 - 16) << 20);
        let mut small = o.fs.clone();
        small.cache_bytes = 16 << 20;
        assert_eq!(small.page_cache_bytes(), 8 << 20);
        assert_eq!(o.fs.workers, 3);
        assert_eq!(o.fs.queue_depth, 12);
        assert!(!o.fs.verify_reads);
        assert_eq!(o.threads, 8);
        assert!(o.fuse.writeback_cache);
        assert_eq!(o.fs.commit_interval_secs, 30);
        assert_eq!(o.fsname.as_deref(), Some("data"));
        assert_eq!(o.log, Some(PathBuf::from("/tmp/b.log")));
        Ok(())
    }

    #[test]
    fn the_last_of_a_pair_wins() -> Result<(), String> {
        let o = parse(&["ro,rw", "nodev,dev,noexec"])?;
        assert!(!o.fs.read_only);
        assert_eq!(o.dev, Some(true));
        assert_eq!(o.exec, Some(false));
        assert_eq!(o.suid, None);
        let o = parse(&["rw", "ro"])?;
        assert!(o.fs.read_only);
        let o = parse(&["nowritecache,writecache,acl,noacl"])?;
        assert!(o.fuse.writeback_cache);
        assert!(!o.fuse.posix_acl);
        Ok(())
    }

    #[test]
    fn fuseblk_and_remount() -> Result<(), String> {
        assert_eq!(parse::<&str>(&[])?.fuseblk, None);
        assert_eq!(parse(&["nofuseblk"])?.fuseblk, Some(false));
        assert_eq!(parse(&["nofuseblk,fuseblk"])?.fuseblk, Some(true));
        let o = parse(&["remount,ro,user_id=0,group_id=0,blksize=4096"])?;
        assert!(o.remount && o.fs.read_only);
        assert_eq!(err("user_id=0"), "unknown mount option 'user_id=0'");
        Ok(())
    }

    #[test]
    fn commit_zero_is_the_default() -> Result<(), String> {
        assert_eq!(parse(&["commit=0"])?.fs.commit_interval_secs, 5);
        Ok(())
    }

    #[test]
    fn what_mount_passes_is_accepted() -> Result<(), String> {
        let o = parse(&[
            "defaults,auto,noauto,user,nouser,_netdev,nofail,x-systemd.automount,\
             default_permissions,relatime,suid,nosuid,exec,noatime,,",
        ])?;
        assert_eq!(o.suid, Some(false));
        assert_eq!(o.atime, Some(false));
        assert_eq!(o.fs.atime, AtimeMode::NoAtime);
        assert!(!o.fs.read_only);
        Ok(())
    }

    #[test]
    fn atime_options_the_last_wins() -> Result<(), String> {
        assert_eq!(parse::<&str>(&[])?.fs.atime, AtimeMode::Relatime);
        let o = parse(&["noatime,strictatime,nodiratime"])?;
        assert_eq!(o.fs.atime, AtimeMode::Strict);
        assert!(o.fs.nodiratime);
        assert_eq!(
            o.ms_flags(),
            libc::MS_NODEV | libc::MS_NOSUID | libc::MS_STRICTATIME | libc::MS_NODIRATIME
        );
        let o = parse(&["strictatime,nodiratime", "relatime,diratime,noatime"])?;
        assert_eq!(o.fs.atime, AtimeMode::NoAtime);
        assert!(!o.fs.nodiratime);
        assert_eq!(parse(&["noatime,atime"])?.fs.atime, AtimeMode::Relatime);
        Ok(())
    }

    #[test]
    fn bad_options_are_named() {
        assert_eq!(err("rw,bogus"), "unknown mount option 'bogus'");
        assert_eq!(err("defaults=1"), "unknown mount option 'defaults=1'");
        assert!(err("uid=1000").starts_with("-o uid: not supported"));
        assert!(err("gid=100").starts_with("-o gid: not supported"));
        assert!(err("threads=0").contains("from 1 to 256"));
        assert!(err("threads=many").contains("'many'"));
        assert!(err("threads").contains("needs a value"));
        assert!(err("workers=-1").contains("'-1'"));
        assert!(err("verify=maybe").contains("not on or off"));
        assert!(err("cache_size=lots").starts_with("-o cache_size:"));
        assert!(err("meta_cache_size=lots").starts_with("-o meta_cache_size:"));
        assert!(err("commit=1e3").contains("'1e3'"));
        assert!(err("fsname=").contains("empty"));
        assert!(err("log").contains("needs a value"));
    }

    #[test]
    fn fuser_config_mounts_fuse_biofs_with_default_permissions() -> Result<(), String> {
        let o = parse(&["ro,allow_other,threads=2,nodev,noexec"])?;
        assert_eq!(
            o.ms_flags(),
            libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID | libc::MS_NOEXEC
        );
        assert_eq!(o.kernel_options(), "default_permissions,allow_other");
        let o2 = parse(&["dev,suid,noatime"])?;
        assert_eq!(o2.ms_flags(), libc::MS_NOATIME);
        let c = o.fuser_config("/img");
        let m = &c.mount_options;
        assert!(m.contains(&MountOption::FSName("/img".into())));
        assert!(m.contains(&MountOption::CUSTOM("subtype=biofs".into())));
        assert!(m.contains(&MountOption::DefaultPermissions));
        assert!(m.contains(&MountOption::RO));
        assert!(!m.contains(&MountOption::RW));
        assert!(m.contains(&MountOption::NoDev));
        assert!(m.contains(&MountOption::NoExec));
        assert_eq!(c.acl, SessionACL::All);
        assert_eq!(c.n_threads, Some(2));
        assert!(c.clone_fd);

        let o = parse::<&str>(&[])?;
        assert_eq!(o.ms_flags(), libc::MS_NODEV | libc::MS_NOSUID);
        assert_eq!(o.kernel_options(), "default_permissions");
        let c = o.fuser_config("x");
        assert!(c.mount_options.contains(&MountOption::RW));
        assert!(c.mount_options.contains(&MountOption::DefaultPermissions));
        assert_eq!(c.acl, SessionACL::Owner);
        assert_eq!(c.n_threads, Some(DEFAULT_THREADS));
        Ok(())
    }
}
