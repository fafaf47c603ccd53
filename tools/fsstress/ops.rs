//! fsstress's operations, and which errors each may expect.

use crate::rng::{errno_text, Rng};
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The operations, in the order of the summary table.
pub const OPS: [&str; 14] = [
    "create", "mkdir", "rmdir", "unlink", "rename", "link", "symlink", "write", "truncate", "read",
    "fsync", "setxattr", "chmod", "readdir",
];

/// Per op: attempted, succeeded, expected errors, unexpected errors.
#[derive(Default, Clone)]
pub struct Counts {
    pub ops: [[u64; 4]; OPS.len()],
}

impl Counts {
    pub fn unexpected(&self) -> u64 {
        self.ops.iter().map(|c| c[3]).sum()
    }

    pub fn add(&mut self, o: &Counts) {
        for (a, b) in self.ops.iter_mut().zip(o.ops.iter()) {
            for j in 0..4 {
                a[j] += b[j];
            }
        }
    }

    /// One line the parent reads back.
    pub fn encode(&self) -> String {
        let nums: Vec<String> = self.ops.iter().flatten().map(u64::to_string).collect();
        format!("counts {}", nums.join(" "))
    }

    pub fn decode(line: &str) -> Option<Counts> {
        let rest = line.strip_prefix("counts ")?;
        let nums: Vec<u64> = rest
            .split(' ')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        if nums.len() != OPS.len() * 4 {
            return None;
        }
        let mut c = Counts::default();
        for (i, n) in nums.into_iter().enumerate() {
            c.ops[i / 4][i % 4] = n;
        }
        Some(c)
    }
}

const NAMES: [&str; 12] = [
    "f0", "f1", "f2", "f3", "f4", "f5", "d0", "d1", "d2", "d3", "s0", "s1",
];

/// One worker's state.
pub struct Worker {
    own: PathBuf,
    shared: PathBuf,
    top: PathBuf,
    k: u32,
    rng: Rng,
    verbose: bool,
    xattr: bool,
    pub counts: Counts,
}

/// Errors any namespace op can meet in a random, shared tree.
fn expected(op: &str, e: i32) -> bool {
    match e {
        libc::ENOENT
        | libc::EEXIST
        | libc::ENOTEMPTY
        | libc::ENOTDIR
        | libc::EISDIR
        | libc::ELOOP
        | libc::EMLINK => true,
        // link(2) of a directory
        libc::EPERM => op == "link",
        // rename of a directory into itself
        libc::EINVAL => op == "rename",
        _ => false,
    }
}

impl Worker {
    pub fn new(dir: &Path, seed: u64, k: u32, verbose: bool) -> Result<Worker, String> {
        let own = dir.join(format!("w{k}"));
        if let Err(e) = fs::create_dir(&own) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(format!("can't make {}: {e}", own.display()));
            }
        }
        Ok(Worker {
            own,
            shared: dir.join("shared"),
            top: dir.to_path_buf(),
            k,
            rng: Rng::new(seed ^ (u64::from(k) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            verbose,
            xattr: true,
            counts: Counts::default(),
        })
    }

    /// A random path: own or shared directory, maybe one level down, its
    /// last name one of `names` (a range of NAMES) most of the time.
    fn path(&mut self, names: std::ops::Range<usize>) -> PathBuf {
        let mut p = if self.rng.one_in(2) {
            self.own.clone()
        } else {
            self.shared.clone()
        };
        if self.rng.one_in(3) {
            p.push(NAMES[6 + self.rng.below(4) as usize]);
        }
        let names = if self.rng.one_in(4) {
            0..NAMES.len()
        } else {
            names
        };
        p.push(NAMES[names.start + self.rng.below(names.len() as u64) as usize]);
        p
    }

    fn show(&self, p: &Path) -> String {
        p.strip_prefix(&self.top).unwrap_or(p).display().to_string()
    }

    /// Do op number `i`: draw it, run it, count and report the result.
    pub fn step(&mut self, i: u64) {
        let which = self.rng.below(OPS.len() as u64) as usize;
        let names = match OPS[which] {
            "mkdir" | "rmdir" | "readdir" => 6..10,
            "symlink" => 10..12,
            "rename" | "chmod" | "setxattr" | "fsync" => 0..NAMES.len(),
            _ => 0..6,
        };
        let a = self.path(names.clone());
        let b = self.path(names);
        let off = self.rng.below(1 << 20);
        let len = 1 + self.rng.below(64 << 10);
        let mode = 0o600 | (self.rng.below(0o100) as u32);
        let seed = self.rng.next_u64();
        let op = OPS[which];
        let what = match op {
            "rename" | "link" => format!("{} -> {}", self.show(&a), self.show(&b)),
            "symlink" => format!("{} (to {})", self.show(&a), self.show(&b)),
            _ => self.show(&a),
        };
        if op == "setxattr" && !self.xattr {
            return;
        }
        let r = self.run(op, &a, &b, off, len, mode, seed);
        let c = &mut self.counts.ops[which];
        c[0] += 1;
        let result = match r {
            Ok(()) => {
                c[1] += 1;
                "ok".to_string()
            }
            Err(e) if op == "setxattr" && (e == libc::ENOTSUP || e == libc::EOPNOTSUPP) => {
                c[2] += 1;
                self.xattr = false;
                eprintln!(
                    "biofs-fsstress[w{}]: note: user xattrs not supported here: setxattr skipped from now on",
                    self.k
                );
                errno_text(e)
            }
            Err(e) if expected(op, e) => {
                c[2] += 1;
                errno_text(e)
            }
            Err(e) => {
                c[3] += 1;
                eprintln!(
                    "biofs-fsstress[w{}]: op {} {op} {what}: unexpected {}",
                    self.k,
                    i + 1,
                    errno_text(e)
                );
                errno_text(e)
            }
        };
        if self.verbose {
            println!("w{} {} {op} {what}: {result}", self.k, i + 1);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        op: &str,
        a: &Path,
        b: &Path,
        off: u64,
        len: u64,
        mode: u32,
        seed: u64,
    ) -> Result<(), i32> {
        let err = |e: io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        match op {
            "create" => OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(a)
                .map(drop)
                .map_err(err),
            "mkdir" => fs::create_dir(a).map_err(err),
            "rmdir" => fs::remove_dir(a).map_err(err),
            "unlink" => fs::remove_file(a).map_err(err),
            "rename" => fs::rename(a, b).map_err(err),
            "link" => fs::hard_link(a, b).map_err(err),
            "symlink" => {
                // a relative target, dangling or not
                let target = b.file_name().map(PathBuf::from).unwrap_or_default();
                std::os::unix::fs::symlink(target, a).map_err(err)
            }
            "write" => {
                let f = OpenOptions::new().write(true).open(a).map_err(err)?;
                let mut buf = vec![0u8; len as usize];
                Rng::new(seed).fill(&mut buf);
                f.write_all_at(&buf, off).map_err(err)
            }
            "truncate" => {
                let f = OpenOptions::new().write(true).open(a).map_err(err)?;
                f.set_len(off).map_err(err)
            }
            "read" => {
                let f = fs::File::open(a).map_err(err)?;
                let mut buf = vec![0u8; len as usize];
                f.read_at(&mut buf, off).map(drop).map_err(err)
            }
            "fsync" => fs::File::open(a).map_err(err)?.sync_all().map_err(err),
            "setxattr" => setxattr(a, seed, len),
            "chmod" => fs::set_permissions(a, fs::Permissions::from_mode(mode)).map_err(err),
            "readdir" => {
                for ent in fs::read_dir(a).map_err(err)? {
                    ent.map_err(err)?;
                }
                // a directory read as a file is EISDIR
                let mut f = fs::File::open(a).map_err(err)?;
                let mut one = [0u8; 1];
                match f.read(&mut one) {
                    Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Ok(()),
                    Err(e) => Err(err(e)),
                    Ok(_) => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

/// setxattr(2) of `user.fss<seed%4>` with a value of up to 255 bytes.
fn setxattr(p: &Path, seed: u64, len: u64) -> Result<(), i32> {
    let path = CString::new(p.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
    let name = CString::new(format!("user.fss{}", seed % 4)).map_err(|_| libc::EINVAL)?;
    let mut value = vec![0u8; (len % 256) as usize];
    Rng::new(seed).fill(&mut value);
    // SAFETY: path and name are NUL-terminated, value is a live buffer of
    // value.len() bytes; none is kept past the call.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    } else {
        Ok(())
    }
}
