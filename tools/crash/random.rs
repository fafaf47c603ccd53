//! Generated workloads (`--random N`): random sequences of the operations
//! the fixed workloads use (create and write, extend, overwrite in place,
//! rename, link, unlink, fsync, fdatasync, syncfs) over three files, each
//! kept in the same model, so a long run covers thousands of crash states
//! (docs/testing.md, "The crash checker").
//!
//! File `k` is only ever named `a{k}`, `b{k}` or `h{k}` (a hard link), so
//! its trailing digits still name its data for the foreign-byte check.

use super::rng::Rng;
use super::{ck, data, Expect, Model};
use biofs::fs::{Ctx, Fs, RenameFlags};

const ROOT: u64 = 1;
const NAMES: [[&str; 3]; 3] = [["a1", "b1", "h1"], ["a2", "b2", "h2"], ["a3", "b3", "h3"]];

/// What the workload knows of file `k`.
#[derive(Clone, Default)]
struct File {
    ino: u64,
    /// Which of its names exist: [a or b (0/1) if any, has the link].
    main: Option<usize>,
    link: bool,
    data: Vec<u8>,
    version: u8,
    /// No change since the last sync.
    clean: bool,
}

impl File {
    fn present(&self) -> bool {
        self.main.is_some() || self.link
    }
}

/// The model's paths of file `k` now, holding `e`.
fn names_of(k: usize, f: &File) -> Vec<&'static str> {
    let mut v = Vec::new();
    if let Some(m) = f.main {
        v.push(NAMES[k][m]);
    }
    if f.link {
        v.push(NAMES[k][2]);
    }
    v
}

fn set_all(m: &mut Model, paths: &[&'static str], e: Expect) {
    let mut s = m.states.last().cloned().unwrap_or_default();
    for p in paths {
        s.insert(p, e.clone());
    }
    m.states.push(s);
}

/// A workload of `ops` random operations from `seed`.
pub fn workload(fs: &Fs, m: &mut Model, seed: u64, ops: usize) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let c = Ctx::root();
    let mut files: Vec<File> = vec![File::default(); 3];
    let all: Vec<&'static str> = NAMES.iter().flatten().copied().collect();
    set_all(m, &all, Expect::Absent);
    m.synced();
    let trace = std::env::var_os("BIOFS_CRASH_TRACE").is_some();
    for _ in 0..ops {
        if trace {
            let sizes: Vec<(Option<usize>, bool, usize, bool)> = files
                .iter()
                .map(|f| (f.main, f.link, f.data.len(), f.clean))
                .collect();
            eprintln!("state {}: files {sizes:?}", m.states.len());
        }
        let k = rng.below(3) as usize;
        let id = (k + 1) as u8;
        let f = files[k].clone();
        match rng.below(9) {
            // Create (or write a fresh file).
            0 | 1 if !f.present() => {
                let ino = ck(fs.create(&c, ROOT, NAMES[k][0].as_bytes(), 0o644), "create")?.ino;
                set_all(m, &[NAMES[k][0]], Expect::File(Vec::new()));
                let len = 1000 + rng.below(40_000) as usize;
                let d = data(id, 0, len);
                ck(fs.write(&c, ino, 0, &d, false), "write")?;
                files[k] = File {
                    ino,
                    main: Some(0),
                    link: false,
                    data: d.clone(),
                    version: 0,
                    clean: false,
                };
                set_all(m, &[NAMES[k][0]], Expect::File(d));
            }
            // Extend.
            2 if f.present() => {
                let len = f.data.len() + 1 + rng.below(30_000) as usize;
                let new = data(id, f.version, len);
                let mut d = f.data.clone();
                d.extend_from_slice(&new[f.data.len()..]);
                ck(
                    fs.write(&c, f.ino, f.data.len() as u64, &d[f.data.len()..], false),
                    "extend",
                )?;
                set_all(m, &names_of(k, &f), Expect::File(d.clone()));
                files[k].data = d;
                files[k].clean = false;
            }
            // Overwrite in place (only a synced file: a crash shows any
            // blocks of one overwrite, never of two).
            3 if f.present() && f.clean && f.version < 2 && !f.data.is_empty() => {
                let v = f.version + 1;
                let from = rng.below(f.data.len() as u64) as usize;
                let to = (from + 1 + rng.below(20_000) as usize).min(f.data.len());
                let mut d = f.data.clone();
                d[from..to].copy_from_slice(&data(id, v, f.data.len())[from..to]);
                ck(
                    fs.write(&c, f.ino, from as u64, &d[from..to], false),
                    "overwrite",
                )?;
                let names = names_of(k, &f);
                // Written in place, the new blocks are not ordered with the
                // metadata changes since the last sync (as in ext4's
                // ordered mode): a crash may show them under any name the
                // file had since then.
                let from = m.syncs.last().map_or(0, |s| s.1);
                for s in &mut m.states[from..] {
                    for p in NAMES[k] {
                        if s.get(p) == Some(&Expect::File(f.data.clone())) {
                            s.insert(p, Expect::Mix(f.data.clone(), d.clone()));
                        }
                    }
                }
                set_all(m, &names, Expect::Mix(f.data.clone(), d.clone()));
                set_all(m, &names, Expect::File(d.clone()));
                files[k].data = d;
                files[k].version = v;
                files[k].clean = false;
            }
            // Rename a <-> b.
            4 if f.main.is_some() => {
                let from = f.main.unwrap_or(0);
                let to = 1 - from;
                ck(
                    fs.rename(
                        ROOT,
                        NAMES[k][from].as_bytes(),
                        ROOT,
                        NAMES[k][to].as_bytes(),
                        RenameFlags::default(),
                    ),
                    "rename",
                )?;
                m.set2(
                    (NAMES[k][from], Expect::Absent),
                    (NAMES[k][to], Expect::File(f.data.clone())),
                );
                files[k].main = Some(to);
            }
            // Link.
            5 if f.main.is_some() && !f.link => {
                ck(fs.link(f.ino, ROOT, NAMES[k][2].as_bytes()), "link")?;
                set_all(m, &[NAMES[k][2]], Expect::File(f.data.clone()));
                files[k].link = true;
            }
            // Unlink one name (the last name frees the file).
            6 if f.present() => {
                let name = if f.link && (f.main.is_none() || rng.one_in(2)) {
                    files[k].link = false;
                    NAMES[k][2]
                } else {
                    let n = NAMES[k][f.main.unwrap_or(0)];
                    files[k].main = None;
                    n
                };
                ck(fs.unlink(ROOT, name.as_bytes()), "unlink")?;
                set_all(m, &[name], Expect::Absent);
                if !files[k].present() {
                    files[k] = File::default();
                }
            }
            // fsync / fdatasync a file, or syncfs.
            7 | 8 => {
                let present: Vec<&File> = files.iter().filter(|f| f.present()).collect();
                match present.get(rng.below(present.len().max(1) as u64) as usize) {
                    Some(p) => ck(fs.fsync(p.ino, rng.one_in(2)), "fsync")?,
                    None => ck(fs.syncfs(), "syncfs")?,
                }
                m.synced();
                for f in &mut files {
                    f.clean = true;
                }
            }
            _ => {}
        }
    }
    ck(fs.syncfs(), "syncfs")?;
    m.synced();
    if trace {
        eprintln!(
            "syncs (log length, state): {:?}; {} states",
            m.syncs,
            m.states.len()
        );
        for (i, s) in m.states.iter().enumerate() {
            let d: Vec<String> = s
                .iter()
                .filter(|(_, e)| !matches!(e, Expect::Absent))
                .map(|(p, e)| match e {
                    Expect::File(d) => format!("{p}=F{}", d.len()),
                    Expect::Mix(a, _) => format!("{p}=M{}", a.len()),
                    _ => format!("{p}=?"),
                })
                .collect();
            eprintln!("  state {i}: {}", d.join(" "));
        }
    }
    Ok(())
}
