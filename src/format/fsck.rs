//! Checking and repairing a filesystem (the library under `fsck.biofs`),
//! in the passes of e2fsck:
//!
//! 0. the superblock (falling back to the backup), the journal (replayed;
//!    a read-only check reads through the committed transactions instead),
//!    and the orphan list (inodes unlinked while open: freed);
//! 1. every inode in use: checksum, type, extent tree (bounds, order,
//!    overlaps, node checksums and owners), xattr block, block count;
//!    blocks claimed twice (the later owner gets a copy);
//! 2. every directory: blocks, index, names and hashes, entries pointing to
//!    free inodes, wrong types, duplicates, second links to a directory;
//! 3. connectivity from the root: what can't be reached goes to
//!    `lost+found` (made if missing); each directory's parent;
//! 4. link counts;
//! 5. block and inode bitmaps, group descriptors and summary counters,
//!    recomputed from what passes 1-4 left.
//!
//! `--scrub` then reads every data block of every file through the engine,
//! which verifies each against its integrity tuple, and names the files
//! that own bad blocks.
//!
//! Repairs write directly to the blocks' homes (the check runs offline).

mod inomap;
mod read;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{BufRead, IsTerminal, Write};

use crate::block::Page;
use inomap::InoMap;
use read::Readahead;

use super::bitmap;
use super::dev::Dev;
use super::dir::{valid_name, DirEntry};
use super::error::{FormatError, Result};
use super::extent::Extent;
use super::group::{uninit_block_bitmap, uninit_inode_bitmap, GroupDesc};
use super::image::Image;
use super::inode::{FileType, Inode, Timespec, S_IFDIR};
use super::journal::Journal;
use super::superblock::{Superblock, INCOMPAT_RECOVER, STATE_CLEAN, STATE_ERRORS};
use super::{BLOCK_SIZE, INODES_PER_BLOCK, INODE_SIZE, ROOT_INO};

/// Set (by a signal handler) to stop the check at the next safe point.
pub static CANCEL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn check_cancel() -> std::result::Result<(), FsckError> {
    if CANCEL.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(FsckError::Cancelled);
    }
    Ok(())
}

/// How problems are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `-n`: report, change nothing, open the device read-only.
    No,
    /// `-y`: fix everything.
    Yes,
    /// `-p`: fix what is safe without asking; stop on what is not.
    Preen,
    /// Ask on the terminal for each problem.
    Ask,
}

/// What to do.
#[derive(Clone, Debug)]
pub struct FsckOptions {
    pub mode: Mode,
    /// Check even if the filesystem is marked clean.
    pub force: bool,
    pub verbose: bool,
    /// Read every data block and verify its integrity tuple.
    pub scrub: bool,
    /// Read the superblock from this block instead of block 0.
    pub backup: Option<u64>,
}

/// The outcome.
#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    pub problems: u64,
    pub fixed: u64,
    /// Problems left as they were (read-only check, or declined).
    pub left: u64,
    /// Skipped: marked clean and not forced.
    pub skipped_clean: bool,
    pub journal_transactions: u64,
    pub orphans_freed: u64,
    pub files: u64,
    pub dirs: u64,
    pub used_blocks: u64,
    pub total_blocks: u64,
    pub used_inodes: u64,
    pub total_inodes: u64,
    /// Files owning blocks that failed their integrity check: (inode, path,
    /// logical block, error).
    pub scrub_bad: Vec<(u64, String, u64, String)>,
    pub scrub_blocks: u64,
}

impl FsckReport {
    /// fsck(8) exit status: 0 clean, 1 errors corrected, 4 errors left.
    pub fn exit_code(&self) -> i32 {
        if self.left > 0 || !self.scrub_bad.is_empty() {
            4
        } else if self.fixed > 0 {
            1
        } else {
            0
        }
    }
}

/// Why the check could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    /// The device, or the filesystem's essentials, could not be used: exit 8.
    #[error("{0}")]
    Operational(String),
    /// `-p` met a problem it must not fix alone: exit 4.
    #[error("UNEXPECTED INCONSISTENCY; run fsck.biofs manually: {0}")]
    NeedsManual(String),
    /// The user stopped it: exit 32.
    #[error("cancelled")]
    Cancelled,
    /// The user stopped it after repairs were written (the filesystem is
    /// marked not clean): exit 33.
    #[error("cancelled after some repairs; run fsck.biofs again")]
    CancelledAfterRepairs,
}

impl From<FormatError> for FsckError {
    fn from(e: FormatError) -> FsckError {
        FsckError::Operational(e.to_string())
    }
}

/// What pass 1 learned about an inode in use.
#[derive(Clone, Debug)]
struct Info {
    ftype: FileType,
    nlink: u32,
    /// A directory's recorded parent.
    parent: u64,
    /// Blocks it owns (data, tree, xattr), as claimed.
    extents: Vec<Extent>,
    /// A directory's inode as pass 1 read it: what passes 2 and 3 read
    /// again, while nothing has been written ([`Checker::dir_inode`]).
    dir_inode: Option<Box<Inode>>,
}

/// Groups whose inode tables pass 1 reads ahead of the one it checks
/// (each about 4 MiB in flight when groups are full).
const TABLES_AHEAD: u32 = 3;

/// A group's inode table being read ahead.
struct TableAhead {
    start: u64,
    n: u64,
    ra: Readahead,
}

/// A growable bitset over block numbers.
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: u64) -> Bits {
        Bits(vec![0; n.div_ceil(64) as usize])
    }
    fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn set(&mut self, i: u64) {
        if let Some(w) = self.0.get_mut((i / 64) as usize) {
            *w |= 1 << (i % 64);
        }
    }
    /// True if any bit in `[from, to)` is set.
    fn any_in(&self, from: u64, to: u64) -> bool {
        let mut i = from;
        while i < to {
            if i % 64 == 0 && i + 64 <= to {
                if self.0.get((i / 64) as usize).is_some_and(|&w| w != 0) {
                    return true;
                }
                i += 64;
            } else {
                if self.get(i) {
                    return true;
                }
                i += 1;
            }
        }
        false
    }
    /// Set bit `i`; true if it was clear (false too if `i` is beyond).
    fn insert(&mut self, i: u64) -> bool {
        match self.0.get_mut((i / 64) as usize) {
            Some(w) if *w & (1 << (i % 64)) == 0 => {
                *w |= 1 << (i % 64);
                true
            }
            _ => false,
        }
    }
    fn clear(&mut self, i: u64) {
        if let Some(w) = self.0.get_mut((i / 64) as usize) {
            *w &= !(1 << (i % 64));
        }
    }
}

struct Checker<'a, 'd> {
    img: Image<'d>,
    opts: &'a FsckOptions,
    out: &'a mut dyn FnMut(&str),
    report: FsckReport,
    /// Set when anything was written: pass 5 then rescans.
    changed: bool,
    /// The superblock was marked not clean for the repairs.
    in_repair: bool,
    /// Must the superblock be written at the end?
    sb_dirty: bool,
    infos: InoMap<Info>,
    /// Blocks claimed by inodes (data, tree, xattr).
    claimed: Bits,
    /// Directory contents after pass 2.
    dirs: BTreeMap<u64, Vec<DirEntry>>,
    /// Directories whose blocks must be rewritten from `dirs`.
    dirs_dirty: HashSet<u64>,
    /// Parent of each directory found in pass 2.
    parent: HashMap<u64, u64>,
    /// Blocks handed out by repairs (kept apart from `claimed` of pass 1).
    allocated: Bits,
    alloc_cursor: u64,
}

/// Check (and with `Yes`/`Preen`/`Ask`, repair) the filesystem on `dev`.
/// Messages go to `out` as they are found.
pub fn fsck(
    dev: &Dev,
    opts: &FsckOptions,
    out: &mut dyn FnMut(&str),
) -> std::result::Result<FsckReport, FsckError> {
    if opts.mode == Mode::Ask && !std::io::stdin().is_terminal() {
        return Err(FsckError::Operational(
            "interactive repair needs a terminal; use -n, -p or -y".into(),
        ));
    }
    let mut report = FsckReport::default();
    let img = open_superblock(dev, opts, &mut report, out)?;
    let mut c = Checker {
        claimed: Bits::new(img.geo.blocks_count),
        allocated: Bits::new(img.geo.blocks_count),
        alloc_cursor: 0,
        infos: InoMap::new(img.geo.inodes_count()),
        img,
        opts,
        out,
        report,
        changed: false,
        in_repair: false,
        sb_dirty: false,
        dirs: BTreeMap::new(),
        dirs_dirty: HashSet::new(),
        parent: HashMap::new(),
    };
    if c.report.fixed > 0 {
        c.sb_dirty = true;
        c.changed = true;
    }
    c.journal()?;
    let clean = c.img.sb.state & STATE_CLEAN != 0
        && c.img.sb.state & STATE_ERRORS == 0
        && c.img.sb.incompat & INCOMPAT_RECOVER == 0
        && !c.sb_dirty
        && c.img.sb.orphan_head == 0
        && c.report.problems == 0
        && c.report.journal_transactions == 0;
    if clean && !opts.force && !opts.scrub {
        c.report.skipped_clean = true;
        let data = c.img.geo.data_blocks();
        c.say(&format!(
            "{}: clean, {}/{} inodes, {}/{} blocks",
            label_or_uuid(&c.img.sb),
            c.img.sb.inodes_count.saturating_sub(c.img.sb.free_inodes),
            c.img.sb.inodes_count,
            data.saturating_sub(c.img.sb.free_blocks),
            data
        ));
        return Ok(c.report);
    }
    let run = |c: &mut Checker<'_, '_>| -> std::result::Result<(), FsckError> {
        c.orphans()?;
        c.pass1()?;
        c.pass2()?;
        c.pass3()?;
        c.pass4()?;
        c.write_dirs()?;
        c.pass5()?;
        if opts.scrub {
            c.scrub()?;
        }
        c.finish()
    };
    match run(&mut c) {
        Ok(()) => Ok(c.report),
        Err(FsckError::Cancelled) if c.changed => Err(FsckError::CancelledAfterRepairs),
        Err(e) => Err(e),
    }
}

fn label_or_uuid(sb: &Superblock) -> String {
    if sb.label.is_empty() {
        super::units::format_uuid(&sb.uuid)
    } else {
        sb.label.clone()
    }
}

/// Pass 0: the superblock, or its backup.
fn open_superblock<'d>(
    dev: &'d Dev,
    opts: &FsckOptions,
    report: &mut FsckReport,
    out: &mut dyn FnMut(&str),
) -> std::result::Result<Image<'d>, FsckError> {
    if let Some(b) = opts.backup {
        return Image::open(dev, Some(b))
            .map_err(|e| FsckError::Operational(format!("superblock at block {b}: {e}")));
    }
    let primary = Image::open(dev, None);
    let err = match primary {
        Ok(img) => {
            check_backup(&img, opts, report, out)?;
            return Ok(img);
        }
        Err(e) if !e.is_corruption() => {
            return Err(FsckError::Operational(format!(
                "can't read the superblock: {e}"
            )))
        }
        Err(e) => e,
    };
    let Some((at, sb)) = Image::find_backup(dev) else {
        return Err(FsckError::Operational(format!(
            "the superblock is damaged ({err}) and no backup superblock was found; \
             is this a biofs filesystem? (a backup elsewhere can be named with -b BLOCK)"
        )));
    };
    out(&format!(
        "Superblock damaged ({err}); using the backup at block {at}."
    ));
    report.problems += 1;
    let img = Image::with_superblock(dev, sb)
        .map_err(|e| FsckError::Operational(format!("backup superblock: {e}")))?;
    match opts.mode {
        Mode::No => report.left += 1,
        Mode::Preen => {
            return Err(FsckError::NeedsManual(
                "the primary superblock is damaged".into(),
            ))
        }
        Mode::Yes | Mode::Ask => {
            if opts.mode == Mode::Ask && !ask("Restore the primary superblock from the backup")? {
                report.left += 1;
            } else {
                img.write("superblock", 0, &img.sb.encode(0))?;
                report.fixed += 1;
            }
        }
    }
    Ok(img)
}

/// The backup must describe the same filesystem as the primary.
fn check_backup(
    img: &Image<'_>,
    opts: &FsckOptions,
    report: &mut FsckReport,
    out: &mut dyn FnMut(&str),
) -> std::result::Result<(), FsckError> {
    let b = img.geo.backup_block();
    let ok = img
        .read("backup superblock", b)
        .and_then(|raw| Superblock::decode(&raw, b))
        .is_ok_and(|bk| bk.uuid == img.sb.uuid && bk.geometry().ok() == Some(img.geo));
    if ok {
        return Ok(());
    }
    out(&format!(
        "Backup superblock at block {b} is damaged or stale."
    ));
    report.problems += 1;
    if opts.mode == Mode::No || (opts.mode == Mode::Ask && !ask("Rewrite the backup superblock")?) {
        report.left += 1;
    } else {
        img.write("backup superblock", b, &img.sb.encode(b))?;
        report.fixed += 1;
    }
    Ok(())
}

fn ask(question: &str) -> std::result::Result<bool, FsckError> {
    let mut err = std::io::stderr();
    let _ = write!(err, "{question}<y>? ");
    let _ = err.flush();
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) => Err(FsckError::Cancelled),
        Ok(_) => {
            let a = line.trim().to_ascii_lowercase();
            Ok(a.is_empty() || a == "y" || a == "yes")
        }
        Err(e) => Err(FsckError::Operational(format!("reading the answer: {e}"))),
    }
}

impl Checker<'_, '_> {
    fn say(&mut self, msg: &str) {
        (self.out)(msg);
    }

    fn verbose(&mut self, msg: &str) {
        if self.opts.verbose {
            (self.out)(msg);
        }
    }

    /// A problem whose repair loses something (an inode, entries, extents,
    /// a journal) or guesses: preen (`-p`) stops there for a person, as
    /// e2fsck's "UNEXPECTED INCONSISTENCY"; other modes as [`Checker::problem`].
    fn problem_manual(&mut self, msg: &str, fix: &str) -> std::result::Result<bool, FsckError> {
        if self.opts.mode == Mode::Preen {
            check_cancel()?;
            self.report.problems += 1;
            self.report.left += 1;
            self.say(msg);
            return Err(FsckError::NeedsManual(msg.to_string()));
        }
        self.problem(msg, fix)
    }

    /// Report a problem; true if it is to be fixed now (the caller fixes it
    /// and calls [`Checker::fixed`]).
    fn problem(&mut self, msg: &str, fix: &str) -> std::result::Result<bool, FsckError> {
        check_cancel()?;
        self.report.problems += 1;
        let fixing = match self.opts.mode {
            Mode::No => false,
            Mode::Yes | Mode::Preen => true,
            Mode::Ask => {
                self.say(msg);
                ask(fix)?
            }
        };
        if self.opts.mode != Mode::Ask {
            let tail = if fixing {
                format!(" {fix}.")
            } else {
                format!(" {fix}? no")
            };
            self.say(&format!("{msg}{tail}"));
        }
        if fixing {
            self.mark_in_repair()?;
            self.report.fixed += 1;
            self.changed = true;
        } else {
            self.report.left += 1;
        }
        Ok(fixing)
    }

    /// Before the first repair: the superblock stops saying clean, so that
    /// a check stopped half way (cancelled, out of space, an I/O error)
    /// leaves a filesystem the next check won't skip.
    fn mark_in_repair(&mut self) -> std::result::Result<(), FsckError> {
        if self.in_repair || !self.writable() {
            return Ok(());
        }
        self.in_repair = true;
        self.img.sb.state &= !STATE_CLEAN;
        self.img.write_superblock()?;
        self.img
            .dev
            .flush()
            .map_err(|e| FsckError::Operational(format!("flush: {e}")))
    }

    fn writable(&self) -> bool {
        self.opts.mode != Mode::No
    }

    /// The journal: replay it, or read through it when read-only.
    fn journal(&mut self) -> std::result::Result<(), FsckError> {
        let jsb_block = self.img.sb.journal_start;
        let mut journal = match Journal::open(self.img.dev, &self.img.sb) {
            Ok(j) => j,
            Err(e) if !e.is_corruption() => {
                return Err(FsckError::Operational(format!(
                    "can't read the journal superblock: {e}"
                )))
            }
            Err(e) => {
                if self.problem_manual(
                    &format!("Journal superblock at block {jsb_block} is damaged ({e})."),
                    "Recreate an empty journal",
                )? {
                    // Above any sequence number the old log used, so that
                    // none of its blocks can pass for a live transaction.
                    let mut r = [0u8; 8];
                    crate::sys::random_bytes(&mut r).map_err(|e| {
                        FsckError::Operational(format!("random sequence number: {e}"))
                    })?;
                    let seq = (u64::from_le_bytes(r) >> 2) | (1 << 61);
                    Journal::format(self.img.dev, &self.img.sb, seq)?;
                    self.img.sb.incompat &= !INCOMPAT_RECOVER;
                    self.sb_dirty = true;
                }
                return Ok(());
            }
        };
        if !journal.needs_recovery() {
            if self.img.sb.incompat & INCOMPAT_RECOVER != 0 && self.writable() {
                self.img.sb.incompat &= !INCOMPAT_RECOVER;
                self.sb_dirty = true;
            }
            return Ok(());
        }
        if self.writable() {
            let r = journal.replay(self.img.dev)?;
            self.say(&format!(
                "{}: recovering journal: {} transactions, {} blocks replayed",
                label_or_uuid(&self.img.sb),
                r.transactions,
                r.blocks
            ));
            self.report.journal_transactions = r.transactions;
            // The superblock itself may have been replayed.
            let raw = self.img.read("superblock", 0)?;
            if let Ok(sb) = Superblock::decode(&raw, 0) {
                if sb.geometry().ok() == Some(self.img.geo) {
                    self.img.sb = sb;
                }
            }
            self.img.sb.incompat &= !INCOMPAT_RECOVER;
            self.sb_dirty = true;
            self.changed = true;
        } else {
            let (txns, _) = journal.scan(self.img.dev)?;
            for (home, log) in super::journal::images_to_replay(&txns).0 {
                let data = self
                    .img
                    .dev
                    .read_block(log)
                    .map_err(|e| FormatError::io("journal", log, e))?;
                self.img.overlay_put(home, data);
            }
            self.say(&format!(
                "{}: journal has {} committed transactions; checking as if replayed (read-only)",
                label_or_uuid(&self.img.sb),
                txns.len()
            ));
            self.report.journal_transactions = txns.len() as u64;
            if let Some(raw) = self.img.overlay.get(&0) {
                if let Ok(sb) = Superblock::decode(raw, 0) {
                    if sb.geometry().ok() == Some(self.img.geo) {
                        self.img.sb = sb;
                    }
                }
            }
        }
        Ok(())
    }

    /// Free the inodes on the orphan list (unlinked while open when the
    /// filesystem stopped). Not an error: the filesystem's own recovery.
    fn orphans(&mut self) -> std::result::Result<(), FsckError> {
        let mut ino = self.img.sb.orphan_head;
        let mut seen = HashSet::new();
        let mut list = Vec::new();
        while ino != 0 {
            if !self.img.geo.ino_valid(ino) || !seen.insert(ino) {
                if !self.problem_manual(
                    &format!("Orphan list is corrupt at inode {ino}."),
                    "Cut it there",
                )? {
                    // Declined: leave the list as it is; its inodes are
                    // then checked like any other.
                    return Ok(());
                }
                break;
            }
            match self.img.inode(ino) {
                Ok(Some(i)) if i.nlink == 0 => {
                    list.push(ino);
                    ino = i.orphan_next;
                }
                _ => {
                    if !self.problem_manual(
                        &format!("Orphan list names inode {ino}, which is not an unlinked inode."),
                        "Cut it there",
                    )? {
                        // Declined: leave the list as it is.
                        return Ok(());
                    }
                    break;
                }
            }
        }
        if self.img.sb.orphan_head != 0 {
            self.img.sb.orphan_head = 0;
            self.sb_dirty = true;
        }
        for ino in list {
            self.verbose(&format!("Freeing orphan inode {ino} (unlinked while open)"));
            self.free_orphan(ino)?;
            self.report.orphans_freed += 1;
        }
        Ok(())
    }

    /// Write block `b`: to the device, or, in a read-only check, to the
    /// overlay (what the filesystem's own recovery would write).
    fn store(
        &mut self,
        what: &'static str,
        b: u64,
        data: Vec<u8>,
    ) -> std::result::Result<(), FsckError> {
        if self.writable() {
            self.img.write(what, b, &data)?;
            self.changed = true;
        } else {
            self.img.overlay_put(b, data);
        }
        Ok(())
    }

    /// Free an orphan as the filesystem would: its blocks and inode in the
    /// bitmaps and group counts, then the inode. Damage met on the way is
    /// left for the passes (which then count it).
    fn free_orphan(&mut self, ino: u64) -> std::result::Result<(), FsckError> {
        let Some(inode) = self.img.inode(ino)? else {
            return Ok(());
        };
        let geo = self.img.geo;
        let scan = self.img.extents(ino, &inode);
        let mut blocks: Vec<u64> = scan.tree_blocks.clone();
        for e in &scan.extents {
            blocks.extend(e.physical..e.physical_end());
        }
        if inode.xattr_block != 0 {
            blocks.push(inode.xattr_block);
        }
        // Group -> (descriptor, block bitmap, inode bitmap), as modified.
        let mut groups: BTreeMap<u32, (GroupDesc, Vec<u8>, Vec<u8>)> = BTreeMap::new();
        type Group = (GroupDesc, Vec<u8>, Vec<u8>);
        fn group<'m>(
            groups: &'m mut BTreeMap<u32, Group>,
            img: &Image<'_>,
            g: u32,
        ) -> Result<&'m mut Group> {
            if let std::collections::btree_map::Entry::Vacant(v) = groups.entry(g) {
                let d = img.desc(g)?;
                v.insert((d, img.block_bitmap(g, &d)?, img.inode_bitmap(g, &d)?));
            }
            groups
                .get_mut(&g)
                .ok_or_else(|| FormatError::invalid("fsck", "group vanished"))
        }
        let (ig, idx) = geo.ino_group(ino);
        let ok = (|| -> Result<()> {
            let e = group(&mut groups, &self.img, ig)?;
            if bitmap::test(&e.2, idx as usize) {
                bitmap::clear(&mut e.2, idx as usize);
                e.0.free_inodes += 1;
                if inode.file_type() == FileType::Directory {
                    e.0.used_dirs = e.0.used_dirs.saturating_sub(1);
                }
            }
            for &b in &blocks {
                let Some((g, i)) = geo.block_group(b) else {
                    continue;
                };
                let e = group(&mut groups, &self.img, g)?;
                if bitmap::test(&e.1, i as usize) {
                    bitmap::clear(&mut e.1, i as usize);
                    e.0.free_blocks += 1;
                }
            }
            Ok(())
        })();
        if ok.is_ok() {
            for (g, (mut d, bm, im)) in groups {
                let (bb, ib) = (geo.block_bitmap(g), geo.inode_bitmap(g));
                d.block_bitmap_csum = super::group::bitmap_csum(self.img.seed, bb, &bm);
                d.inode_bitmap_csum = super::group::bitmap_csum(self.img.seed, ib, &im);
                d.flags = 0;
                let (gb, off) = geo.desc_location(g);
                let mut gdt = self.img.read("group descriptor table", gb)?;
                let slot = gdt.get_mut(off..);
                d.encode(
                    self.img.seed,
                    g,
                    slot.ok_or_else(|| FormatError::invalid("group descriptor table", "short"))?,
                );
                self.store("block bitmap", bb, bm)?;
                self.store("inode bitmap", ib, im)?;
                self.store("group descriptor table", gb, gdt)?;
            }
            self.img.sb.free_inodes += 1;
            self.img.sb.free_blocks += blocks.len() as u64;
        }
        let (b, mut raw, off) = self.img.inode_block(ino)?;
        let slot = raw.get_mut(off..off + INODE_SIZE);
        slot.ok_or_else(|| FormatError::invalid("inode table", "short"))?
            .fill(0);
        self.store("inode table", b, raw)
    }

    /// The inodes of group `g` that may be in use: (descriptor if readable,
    /// how many to scan).
    fn group_scan_limit(
        &mut self,
        g: u32,
    ) -> std::result::Result<(Option<GroupDesc>, u32), FsckError> {
        match self.img.desc(g) {
            Ok(d) if d.inode_uninit() => Ok((Some(d), 0)),
            // The whole table: an in-use inode beyond the unused mark (a
            // damaged mark) is found, and pass 5 raises the mark. Slots
            // beyond the mark that fail their checksum are stale, not
            // damage (see `pass1`).
            Ok(d) => Ok((Some(d), self.img.geo.inodes_per_group)),
            Err(e) if e.is_corruption() => {
                // Scan the whole table; pass 5 rewrites the descriptor.
                self.verbose(&format!(
                    "group {g}: descriptor damaged ({e}); scanning its whole inode table"
                ));
                Ok((None, self.img.geo.inodes_per_group))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Pass 1: inodes, extent trees, blocks.
    fn pass1(&mut self) -> std::result::Result<(), FsckError> {
        self.verbose("Pass 1: checking inodes, blocks and sizes");
        let geo = self.img.geo;
        let mut rewrite_tree: Vec<(u64, Inode, Vec<Extent>)> = Vec::new();
        let mut dups: Vec<(u64, HashSet<u64>)> = Vec::new();
        // The next groups' tables are read while this one's is checked.
        let mut ahead: VecDeque<(u32, TableAhead)> = VecDeque::new();
        let mut next = 0u32;
        for g in 0..geo.groups {
            check_cancel()?;
            while next < geo.groups && next <= g.saturating_add(TABLES_AHEAD) {
                if let Some(t) = self.table_readahead(next) {
                    ahead.push_back((next, t));
                }
                next += 1;
            }
            let this = match ahead.front() {
                Some((ag, _)) if *ag == g => ahead.pop_front().map(|(_, t)| t),
                _ => None,
            };
            let (desc, limit) = self.group_scan_limit(g)?;
            let mark = desc.map_or(0, |d| d.itable_unused_from);
            if limit == 0 {
                continue;
            }
            let nblocks = u64::from(limit.div_ceil(INODES_PER_BLOCK));
            // Table blocks wholly at or after the unused mark may never have
            // been written: unreadable ones there are not damage.
            let first_unused = match desc {
                Some(_) => u64::from(mark.div_ceil(INODES_PER_BLOCK)),
                None => 0,
            };
            let start = geo.itable_start(g);
            let this = this.filter(|t| t.start == start && t.n == nblocks);
            let table = self.read_table(start, nblocks, first_unused, this)?;
            for idx in 0..limit {
                let ino = geo.ino_of(g, idx);
                let off = idx as usize * INODE_SIZE;
                let raw = table
                    .get(off / BLOCK_SIZE)
                    .and_then(|p| {
                        p.as_slice()
                            .get(off % BLOCK_SIZE..off % BLOCK_SIZE + INODE_SIZE)
                    })
                    .unwrap_or_default();
                let inode = match Inode::decode(self.img.seed, ino, raw) {
                    Ok(None) => continue,
                    Ok(Some(i)) => i,
                    Err(e) => {
                        if desc.is_none() || idx >= mark {
                            // Never-used slots (beyond the unused mark, or
                            // in a table whose descriptor was lost) may hold
                            // anything: only valid inodes count there.
                            continue;
                        }
                        if self
                            .problem_manual(&format!("Inode {ino} is damaged ({e})."), "Clear it")?
                        {
                            self.img.write_inode(ino, None)?;
                        }
                        continue;
                    }
                };
                if ino == ROOT_INO && inode.file_type() != FileType::Directory {
                    if self.problem_manual("Root inode is not a directory.", "Clear it")? {
                        self.img.write_inode(ino, None)?;
                    }
                    continue;
                }
                self.check_inode(ino, inode, &mut rewrite_tree, &mut dups)?;
            }
        }
        // Repairs that allocate come after every claim is known. The inode
        // is read again: other repairs of pass 1 may have changed it.
        for (ino, _, extents) in rewrite_tree {
            if let Some(mut inode) = self.img.inode(ino)? {
                self.rewrite_tree(ino, &mut inode, &extents)?;
            }
        }
        for (ino, shared) in dups {
            self.clone_dups(ino, &shared)?;
        }
        Ok(())
    }

    /// Start reading group `g`'s inode table (as much of it as pass 1
    /// scans), unless there is no such group, its table is not scanned, or
    /// blocks may come from the overlay.
    fn table_readahead(&self, g: u32) -> Option<TableAhead> {
        let geo = self.img.geo;
        if g >= geo.groups || !self.img.overlay.is_empty() {
            return None;
        }
        // As `group_scan_limit`, without its message.
        let limit = match self.img.desc(g) {
            Ok(d) if d.inode_uninit() => return None,
            _ => geo.inodes_per_group,
        };
        let (start, n) = (
            geo.itable_start(g),
            u64::from(limit.div_ceil(INODES_PER_BLOCK)),
        );
        Some(TableAhead {
            start,
            n,
            ra: Readahead::submit(self.img.dev, &[(start, n)]),
        })
    }

    /// Inode-table blocks; an unreadable one (integrity or medium error)
    /// is reported and, when fixing, rewritten as free inodes.
    /// Blocks from index `unused_from` on are past the group's unused mark
    /// (or, with the descriptor lost, possibly never written): unreadable
    /// ones there read as free inodes, silently.
    /// One page per block, as read (not copied into one buffer).
    fn read_table(
        &mut self,
        start: u64,
        n: u64,
        unused_from: u64,
        ahead: Option<TableAhead>,
    ) -> std::result::Result<Vec<Page>, FsckError> {
        if self.img.overlay.is_empty() {
            // The fast path: the whole table in large bios, several in
            // flight, submitted while the previous group was checked.
            let ra = ahead.map_or_else(|| Readahead::submit(self.img.dev, &[(start, n)]), |a| a.ra);
            let ranges = ra.wait();
            if ranges.iter().all(|r| r.pages.is_some()) {
                return Ok(ranges
                    .into_iter()
                    .flat_map(|r| r.pages.into_iter().flatten())
                    .collect());
            }
        }
        let mut out = Vec::with_capacity(n as usize);
        for b in start..start + n {
            match self.img.read("inode table", b) {
                Ok(raw) => out.push(Page::from_slice(&raw)),
                Err(e) if e.is_corruption() && b - start >= unused_from => {
                    out.push(Page::new());
                }
                Err(e) if e.is_corruption() => {
                    if self.problem_manual(
                        &format!("Inode table block {b} is unreadable ({e})."),
                        "Clear its inodes",
                    )? {
                        self.img.write("inode table", b, &[0u8; BLOCK_SIZE])?;
                    }
                    out.push(Page::new());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    fn check_inode(
        &mut self,
        ino: u64,
        mut inode: Inode,
        rewrite_tree: &mut Vec<(u64, Inode, Vec<Extent>)>,
        dups: &mut Vec<(u64, HashSet<u64>)>,
    ) -> std::result::Result<(), FsckError> {
        let ftype = inode.file_type();
        let mut dirty = false;
        let mut owned: u64 = 0;
        let mut has_dup = false;
        let scan = self.img.extents(ino, &inode);
        if let Some(f) = scan.fatal {
            return Err(FsckError::Operational(format!("inode {ino}: {f}")));
        }
        if !scan.problems.is_empty() {
            let msg = format!(
                "Inode {ino}: extent tree damaged: {}.",
                scan.problems.join("; ")
            );
            if self.problem_manual(&msg, "Rebuild it from the extents that are intact")? {
                rewrite_tree.push((ino, inode.clone(), scan.extents.clone()));
            }
        }
        if let Err(what) = inode.check_fields(&scan.extents) {
            let msg = format!("Inode {ino}: {what}.");
            match ftype {
                FileType::Symlink => {
                    if self.problem_manual(&msg, "Clear it")? {
                        // Pass 2 drops its names; pass 5 frees its blocks.
                        self.img.write_inode(ino, None)?;
                        return Ok(());
                    }
                }
                FileType::Directory => {
                    if self.problem(&msg, "Rebuild the directory")? {
                        // Pass 2 rebuilds it, which sets the size.
                        self.dirs_dirty.insert(ino);
                    }
                }
                _ => {
                    let end = scan.extents.last().map_or(0, |e| e.logical_end());
                    let size = (end * BLOCK_SIZE as u64).min(super::MAX_FILE_SIZE);
                    if self.problem_manual(&msg, &format!("Set the size to {size}"))? {
                        inode.size = size;
                        dirty = true;
                    }
                }
            }
        }
        for &b in &scan.tree_blocks {
            if self.claimed.get(b) {
                has_dup = true;
            }
            self.claimed.set(b);
            owned += 1;
        }
        let mut shared = HashSet::new();
        for e in &scan.extents {
            for b in e.physical..e.physical_end() {
                if self.claimed.get(b) {
                    has_dup = true;
                    shared.insert(b);
                }
                self.claimed.set(b);
            }
            owned += u64::from(e.len);
        }
        if inode.xattr_block != 0 {
            let b = inode.xattr_block;
            let ok = self.img.geo.is_data_block(b)
                && !self.claimed.get(b)
                && self
                    .img
                    .read("xattr block", b)
                    .and_then(|raw| super::xattr::decode(self.img.seed, b, ino, &raw))
                    .is_ok();
            if ok {
                self.claimed.set(b);
                owned += 1;
            } else if self.problem_manual(
                &format!("Inode {ino}: xattr block {b} is invalid."),
                "Remove the attributes",
            )? {
                inode.xattr_block = 0;
                dirty = true;
            }
        }
        let rewriting = rewrite_tree.last().is_some_and(|(i, _, _)| *i == ino);
        if inode.blocks != owned
            && !rewriting
            && self.problem(
                &format!(
                    "Inode {ino}: block count is {}, should be {owned}.",
                    inode.blocks
                ),
                "Fix it",
            )?
        {
            inode.blocks = owned;
            dirty = true;
        }
        if dirty {
            self.img.write_inode(ino, Some(&inode))?;
        }
        if has_dup {
            let msg = format!("Inode {ino} shares blocks with another file.");
            if self.problem_manual(&msg, "Give it copies of the shared blocks")? {
                dups.push((ino, shared));
            }
        }
        if ftype == FileType::Directory {
            self.report.dirs += 1;
        } else {
            self.report.files += 1;
        }
        let (nlink, parent) = (inode.nlink, inode.rdev_or_parent);
        self.infos.insert(
            ino,
            Info {
                ftype,
                nlink,
                parent,
                extents: scan.extents,
                dir_inode: (ftype == FileType::Directory).then(|| Box::new(inode)),
            },
        );
        Ok(())
    }

    /// A free block for a repair, never one claimed or handed out before.
    fn alloc(&mut self) -> Result<u64> {
        let geo = self.img.geo;
        let total = geo.blocks_count;
        for _ in 0..total {
            let b = self.alloc_cursor;
            self.alloc_cursor = (self.alloc_cursor + 1) % total;
            if geo.is_data_block(b) && !self.claimed.get(b) && !self.allocated.get(b) {
                self.allocated.set(b);
                return Ok(b);
            }
        }
        Err(FormatError::invalid(
            "fsck",
            "no free block left for the repair",
        ))
    }

    fn rewrite_tree(
        &mut self,
        ino: u64,
        inode: &mut Inode,
        extents: &[Extent],
    ) -> std::result::Result<(), FsckError> {
        // Allocate first: the tree writer borrows the image.
        let mut blocks = Vec::new();
        for _ in 0..tree_blocks_needed(extents.len()) {
            blocks.push(self.alloc()?);
        }
        let mut it = blocks.into_iter();
        let tree = self.img.write_extent_tree(ino, inode, extents, &mut || {
            it.next()
                .ok_or_else(|| FormatError::invalid("fsck", "allocation"))
        })?;
        let data: u64 = extents.iter().map(|e| u64::from(e.len)).sum();
        inode.blocks = data + tree.len() as u64 + u64::from(inode.xattr_block != 0);
        self.img.write_inode(ino, Some(inode))?;
        if let Some(info) = self.infos.get_mut(ino) {
            info.extents = extents.to_vec();
        }
        Ok(())
    }

    /// Give inode `ino` its own copies of the blocks it shares.
    /// Copy only the `shared` data blocks; a shared tree block is replaced
    /// by the rewrite of the tree itself.
    fn clone_dups(
        &mut self,
        ino: u64,
        shared: &HashSet<u64>,
    ) -> std::result::Result<(), FsckError> {
        let Some(mut inode) = self.img.inode(ino)? else {
            return Ok(());
        };
        let Some(info) = self.infos.get(ino).cloned() else {
            return Ok(());
        };
        let mut out: Vec<Extent> = Vec::new();
        for e in &info.extents {
            for (i, b) in (e.physical..e.physical_end()).enumerate() {
                let nb = if shared.contains(&b) {
                    let nb = self.alloc()?;
                    let data = self.img.read("data block", b)?;
                    self.img.write("data block", nb, &data)?;
                    nb
                } else {
                    b
                };
                let logical = e.logical + i as u64;
                match out.last_mut() {
                    Some(p)
                        if p.logical_end() == logical
                            && p.physical_end() == nb
                            && p.unwritten == e.unwritten =>
                    {
                        p.len += 1
                    }
                    _ => out.push(Extent {
                        logical,
                        physical: nb,
                        len: 1,
                        unwritten: e.unwritten,
                    }),
                }
            }
        }
        self.rewrite_tree(ino, &mut inode, &out)
    }

    /// Directory `d`'s inode: as pass 1 read it while nothing has been
    /// written (every write follows a `problem` answered yes, which sets
    /// `changed`), else from the device.
    fn dir_inode(&self, d: u64) -> std::result::Result<Option<Inode>, FsckError> {
        if !self.changed {
            if let Some(i) = self.infos.get(d).and_then(|i| i.dir_inode.as_deref()) {
                return Ok(Some(i.clone()));
            }
        }
        Ok(self.img.inode(d)?)
    }

    /// `dirs` cut into windows of about [`DIR_WINDOW_BLOCKS`] directory
    /// blocks, with the blocks of each (at most that many of any one
    /// directory).
    fn dir_windows(&self, dirs: &[u64]) -> Vec<DirWindow> {
        let mut out = Vec::new();
        let (mut from, mut blocks) = (0, Vec::new());
        for (i, &d) in dirs.iter().enumerate() {
            let mut n = 0u64;
            for e in self.infos.get(d).into_iter().flat_map(|i| &i.extents) {
                if e.unwritten {
                    continue;
                }
                let k = u64::from(e.len).min(DIR_WINDOW_BLOCKS - n);
                blocks.extend(e.physical..e.physical + k);
                n += k;
                if n >= DIR_WINDOW_BLOCKS {
                    break;
                }
            }
            if blocks.len() as u64 >= DIR_WINDOW_BLOCKS || i + 1 == dirs.len() {
                out.push(DirWindow {
                    dirs: from..i + 1,
                    runs: read::runs_of(&mut blocks),
                });
                blocks.clear();
                from = i + 1;
            }
        }
        out
    }

    /// Pass 2: directory structure.
    fn pass2(&mut self) -> std::result::Result<(), FsckError> {
        self.verbose("Pass 2: checking directory structure");
        let dirs: Vec<u64> = self
            .infos
            .iter()
            .filter(|(_, i)| i.ftype == FileType::Directory)
            .map(|(ino, _)| ino)
            .collect();
        // Read every directory first: which directories each one names.
        // Their blocks are read ahead a window at a time, the next window
        // while this one is walked.
        let mut scans = Vec::with_capacity(dirs.len());
        let windows = self.dir_windows(&dirs);
        let mut ahead = windows
            .first()
            .map(|w| Readahead::submit(self.img.dev, &w.runs));
        for (i, w) in windows.iter().enumerate() {
            let this = ahead.take();
            ahead = windows
                .get(i + 1)
                .map(|w| Readahead::submit(self.img.dev, &w.runs));
            let pages = this.map(Readahead::wait_map).unwrap_or_default();
            for &d in dirs.get(w.dirs.clone()).unwrap_or_default() {
                let Some(inode) = self.dir_inode(d)? else {
                    continue;
                };
                let Some(info) = self.infos.get(d) else {
                    continue;
                };
                let scan = self.img.dir_entries_ahead(&pages, d, &inode, &info.extents);
                if let Some(f) = scan.fatal {
                    return Err(FsckError::Operational(format!("directory inode {d}: {f}")));
                }
                scans.push((d, scan));
            }
        }
        // A directory named by several: the one its own parent field
        // names keeps it (as e2fsck trusts "..").
        let mut named_by: HashMap<u64, Vec<u64>> = HashMap::new();
        for (d, scan) in &scans {
            for e in &scan.entries {
                if self
                    .infos
                    .get(e.ino)
                    .is_some_and(|i| i.ftype == FileType::Directory)
                {
                    named_by.entry(e.ino).or_default().push(*d);
                }
            }
        }
        let chosen: HashMap<u64, u64> = named_by
            .into_iter()
            .filter_map(|(c, ps)| {
                let recorded = self.infos.get(c).map(|i| i.parent);
                let p = ps
                    .iter()
                    .copied()
                    .find(|&p| Some(p) == recorded)
                    .or_else(|| ps.first().copied())?;
                Some((c, p))
            })
            .collect();
        for (d, scan) in scans {
            let mut rewrite = self.dirs_dirty.contains(&d);
            if !scan.problems.is_empty() {
                let msg = format!("Directory inode {d}: {}.", scan.problems.join("; "));
                rewrite |=
                    self.problem_manual(&msg, "Rebuild the directory from its intact entries")?;
            }
            let mut keep: Vec<DirEntry> = Vec::with_capacity(scan.entries.len());
            let dup = duplicate_names(&scan.entries);
            for (mut e, dup) in scan.entries.into_iter().zip(dup) {
                let target = self.infos.get(e.ino).map(|i| i.ftype);
                let why = if !valid_name(&e.name) {
                    Some("an invalid name".to_string())
                } else if dup {
                    Some("a duplicate name".to_string())
                } else if target.is_none() {
                    Some(format!("inode {}, which is not in use", e.ino))
                } else if e.ino == ROOT_INO || e.ino == d {
                    Some("the root or the directory itself".to_string())
                } else if target == Some(FileType::Directory)
                    && (self.parent.contains_key(&e.ino) || chosen.get(&e.ino) != Some(&d))
                {
                    Some(format!(
                        "directory inode {}, which already has a parent",
                        e.ino
                    ))
                } else {
                    None
                };
                if let Some(why) = why {
                    if self.problem_manual(
                        &format!(
                            "Entry '{}' in directory inode {d} points to {why}.",
                            String::from_utf8_lossy(&e.name)
                        ),
                        "Remove it",
                    )? {
                        rewrite = true;
                        continue;
                    }
                } else if let Some(t) = target.filter(|&t| t != e.ftype) {
                    if self.problem(
                        &format!(
                            "Entry '{}' in directory inode {d} has the wrong type.",
                            String::from_utf8_lossy(&e.name)
                        ),
                        "Fix it",
                    )? {
                        e.ftype = t;
                        rewrite = true;
                    }
                }
                if e.ftype == FileType::Directory && target == Some(FileType::Directory) {
                    self.parent.entry(e.ino).or_insert(d);
                }
                keep.push(e);
            }
            if rewrite {
                self.dirs_dirty.insert(d);
            }
            self.dirs.insert(d, keep);
        }
        Ok(())
    }

    /// Pass 3: connectivity, `lost+found`, parents.
    fn pass3(&mut self) -> std::result::Result<(), FsckError> {
        self.verbose("Pass 3: checking directory connectivity");
        if !self
            .infos
            .get(ROOT_INO)
            .is_some_and(|i| i.ftype == FileType::Directory)
        {
            if !self.problem_manual("Root directory is missing.", "Make a new one")? {
                // Counted as left; nothing can be connected without a root.
                return Ok(());
            }
            self.make_dir(ROOT_INO, ROOT_INO, 0o755)?;
        }
        // Reachable from the root.
        let mut reach = Bits::new(self.img.geo.inodes_count() + 1);
        self.mark_reachable(ROOT_INO, &mut reach);
        let mut unreachable: Vec<u64> = self.infos.keys().filter(|&i| !reach.get(i)).collect();
        if unreachable.is_empty() {
            return self.fix_parents();
        }
        let lf = self.lost_found()?;
        if let Some(lf) = lf {
            self.mark_reachable(lf, &mut reach);
        }
        unreachable.retain(|&i| !reach.get(i));
        // Directories first (each takes its subtree along), topmost first.
        unreachable.sort_by_key(|i| {
            (
                self.infos.get(*i).map(|x| x.ftype) != Some(FileType::Directory),
                *i,
            )
        });
        for ino in unreachable {
            if reach.get(ino) {
                continue;
            }
            let mut top = ino;
            let mut seen = HashSet::new();
            while let Some(&p) = self.parent.get(&top) {
                if reach.get(p) || !seen.insert(p) {
                    break;
                }
                top = p;
            }
            if reach.get(top) {
                continue;
            }
            let what = if self
                .infos
                .get(top)
                .is_some_and(|i| i.ftype == FileType::Directory)
            {
                "Unconnected directory"
            } else {
                "Unattached inode"
            };
            let Some(lf) = lf else {
                self.report.problems += 1;
                self.report.left += 1;
                self.say(&format!("{what} {top}: no /lost+found to connect it to."));
                continue;
            };
            if !self.problem(&format!("{what} {top}."), "Connect it to /lost+found")? {
                continue;
            }
            let ftype = self
                .infos
                .get(top)
                .map(|i| i.ftype)
                .unwrap_or(FileType::Regular);
            let name = format!("#{top}");
            if let Some(old) = self.parent.get(&top).copied() {
                if let Some(es) = self.dirs.get_mut(&old) {
                    es.retain(|e| e.ino != top);
                    self.dirs_dirty.insert(old);
                }
            }
            let e = DirEntry::new(self.img.sb.hash_seed, name.as_bytes(), top, ftype);
            self.dirs.entry(lf).or_default().push(e);
            self.dirs_dirty.insert(lf);
            if ftype == FileType::Directory {
                self.parent.insert(top, lf);
            }
            self.mark_reachable(top, &mut reach);
        }
        self.fix_parents()
    }

    fn mark_reachable(&self, from: u64, reach: &mut Bits) {
        let mut stack = vec![from];
        while let Some(d) = stack.pop() {
            if !reach.insert(d) {
                continue;
            }
            if let Some(es) = self.dirs.get(&d) {
                for e in es {
                    if self
                        .infos
                        .get(e.ino)
                        .is_some_and(|i| i.ftype == FileType::Directory)
                    {
                        if self.parent.get(&e.ino) == Some(&d) {
                            stack.push(e.ino);
                        }
                    } else {
                        reach.set(e.ino);
                    }
                }
            }
        }
    }

    /// The inode of `/lost+found`, made if missing; `None` if it can't be.
    fn lost_found(&mut self) -> std::result::Result<Option<u64>, FsckError> {
        let want = self.dirs.get(&ROOT_INO).and_then(|es| {
            es.iter()
                .find(|e| e.name == b"lost+found" && e.ftype == FileType::Directory)
                .map(|e| e.ino)
        });
        if let Some(lf) = want.filter(|lf| self.parent.get(lf) == Some(&ROOT_INO)) {
            return Ok(Some(lf));
        }
        // Something else named lost+found keeps its inode under another
        // name ("#ino"), so that nothing is unlinked in passing.
        let squatter = self.dirs.get(&ROOT_INO).and_then(|es| {
            es.iter()
                .find(|e| e.name == b"lost+found")
                .map(|e| (e.ino, e.ftype))
        });
        if let Some((ino, ftype)) = squatter {
            if !self.problem_manual(
                &format!("/lost+found is not a directory (inode {ino})."),
                &format!("Rename it to /#{ino}"),
            )? {
                return Ok(None);
            }
            let seed = self.img.sb.hash_seed;
            if let Some(es) = self.dirs.get_mut(&ROOT_INO) {
                es.retain(|e| e.name != b"lost+found");
                es.push(DirEntry::new(
                    seed,
                    format!("#{ino}").as_bytes(),
                    ino,
                    ftype,
                ));
            }
            self.dirs_dirty.insert(ROOT_INO);
        }
        if !self.problem("/lost+found is missing.", "Make it")? {
            return Ok(None);
        }
        let Some(ino) = self.free_inode() else {
            self.say("No free inode for /lost+found.");
            return Ok(None);
        };
        self.make_dir(ino, ROOT_INO, 0o700)?;
        if let Some(es) = self.dirs.get_mut(&ROOT_INO) {
            es.retain(|e| e.name != b"lost+found");
        }
        let e = DirEntry::new(
            self.img.sb.hash_seed,
            b"lost+found",
            ino,
            FileType::Directory,
        );
        self.dirs.entry(ROOT_INO).or_default().push(e);
        self.dirs_dirty.insert(ROOT_INO);
        self.parent.insert(ino, ROOT_INO);
        self.img.sb.lost_found_ino = ino;
        self.sb_dirty = true;
        Ok(Some(ino))
    }

    /// An inode number not in use (pass 5 sets its bitmap bit).
    fn free_inode(&self) -> Option<u64> {
        (super::FIRST_FREE_INO..=self.img.geo.inodes_count()).find(|&i| !self.infos.contains_key(i))
    }

    /// Write a new empty directory `ino` under `parent`.
    fn make_dir(&mut self, ino: u64, parent: u64, perm: u32) -> std::result::Result<(), FsckError> {
        let now = Timespec::now();
        let mut d = Inode::new(S_IFDIR | perm, 0, 0, now);
        d.nlink = 2;
        d.rdev_or_parent = parent;
        self.img.write_inode(ino, Some(&d))?;
        self.infos.insert(
            ino,
            Info {
                ftype: FileType::Directory,
                nlink: 2,
                parent,
                extents: Vec::new(),
                dir_inode: None,
            },
        );
        self.dirs.insert(ino, Vec::new());
        self.changed = true;
        Ok(())
    }

    /// Each directory's parent field must name the directory holding it.
    fn fix_parents(&mut self) -> std::result::Result<(), FsckError> {
        let dirs: Vec<u64> = self.dirs.keys().copied().collect();
        for d in dirs {
            let want = if d == ROOT_INO {
                ROOT_INO
            } else {
                self.parent.get(&d).copied().unwrap_or(ROOT_INO)
            };
            let Some(mut inode) = self.dir_inode(d)? else {
                continue;
            };
            if inode.rdev_or_parent != want
                && self.problem(
                    &format!(
                        "Directory inode {d}: parent is {}, should be {want}.",
                        inode.rdev_or_parent
                    ),
                    "Fix it",
                )?
            {
                inode.rdev_or_parent = want;
                self.img.write_inode(d, Some(&inode))?;
            }
        }
        Ok(())
    }

    /// Pass 4: link counts.
    fn pass4(&mut self) -> std::result::Result<(), FsckError> {
        self.verbose("Pass 4: checking reference counts");
        // One count per inode in use, beside `infos`: a million entries
        // are a million increments of an array, not of a hash map. (Only
        // inodes in use are looked at below.)
        let mut refs: Vec<u32> = vec![0; self.infos.len()];
        let infos = &self.infos;
        let mut count = |ino: u64| {
            if let Some(r) = infos.index(ino).and_then(|i| refs.get_mut(i)) {
                *r = r.saturating_add(1);
            }
        };
        for (d, es) in &self.dirs {
            for e in es {
                let is_dir = self
                    .infos
                    .get(e.ino)
                    .is_some_and(|i| i.ftype == FileType::Directory);
                if is_dir {
                    // The entry, and the child's ".." in the parent.
                    count(e.ino);
                    count(*d);
                } else {
                    count(e.ino);
                }
            }
        }
        let wrong: Vec<(u64, u32, u32)> = self
            .infos
            .iter()
            .zip(&refs)
            .filter_map(|((ino, info), &r)| {
                // A directory: its entry (or the root's own), its ".", and
                // one ".." per subdirectory (counted above).
                let want = if info.ftype == FileType::Directory {
                    r.saturating_add(1 + u32::from(ino == ROOT_INO))
                } else {
                    r
                };
                (want != 0 && info.nlink != want).then_some((ino, info.nlink, want))
            })
            .collect();
        for (ino, nlink, want) in wrong {
            if self.problem(
                &format!("Inode {ino}: link count is {nlink}, should be {want}."),
                "Fix it",
            )? {
                if let Some(mut inode) = self.img.inode(ino)? {
                    inode.nlink = want;
                    self.img.write_inode(ino, Some(&inode))?;
                }
            }
        }
        Ok(())
    }

    /// Rewrite the directories pass 2 and 3 changed.
    fn write_dirs(&mut self) -> std::result::Result<(), FsckError> {
        if !self.writable() {
            return Ok(());
        }
        let mut dirty: Vec<u64> = self.dirs_dirty.iter().copied().collect();
        dirty.sort_unstable();
        for d in dirty {
            let Some(mut inode) = self.img.inode(d)? else {
                continue;
            };
            let entries = self.dirs.get(&d).cloned().unwrap_or_default();
            let bytes: usize = entries.iter().map(DirEntry::disk_len).sum();
            let need = bytes.div_ceil(super::dir::ENTRY_SPACE / 2).max(1) * 2 + 8;
            let mut blocks = Vec::new();
            for _ in 0..need {
                blocks.push(self.alloc()?);
            }
            let mut it = blocks.into_iter();
            let extra = u64::from(inode.xattr_block != 0);
            self.img.write_dir(d, &mut inode, entries, extra, &mut || {
                it.next()
                    .ok_or_else(|| FormatError::invalid("fsck", "allocation"))
            })?;
            // Unused reservations go back.
            for b in it {
                self.allocated.clear(b);
            }
            self.img.write_inode(d, Some(&inode))?;
            self.changed = true;
        }
        Ok(())
    }

    /// Pass 5: bitmaps, descriptors, counters, recomputed from the inodes.
    fn pass5(&mut self) -> std::result::Result<(), FsckError> {
        self.verbose("Pass 5: checking group summary information");
        let geo = self.img.geo;
        // After repairs, claims are recomputed from what is on the device.
        let (used_blocks, used_inodes, dirs) = self.census()?;
        let mut total_free_blocks = 0u64;
        let mut total_free_inodes = 0u64;
        for g in 0..geo.groups {
            check_cancel()?;
            let start = geo.group_start(g);
            let data_from = start + u64::from(geo.group_meta_blocks());
            let end = start + u64::from(geo.group_blocks(g));
            let first_ino = geo.ino_of(g, 0);
            let end_ino = first_ino + u64::from(geo.inodes_per_group);
            let disk = self.img.desc(g);
            // The common case of a big filesystem: an untouched group.
            if !used_inodes.any_in(first_ino, end_ino)
                && !used_blocks.any_in(data_from, end)
                && disk
                    .as_ref()
                    .is_ok_and(|d| d.block_uninit() && d.inode_uninit())
            {
                total_free_blocks += end - data_from;
                total_free_inodes += u64::from(geo.inodes_per_group);
                continue;
            }
            let mut bmap = uninit_block_bitmap(&geo, g);
            if used_blocks.any_in(data_from, end) {
                for b in data_from..end {
                    if used_blocks.get(b) {
                        bitmap::set(&mut bmap, (b - start) as usize);
                    }
                }
            }
            let mut imap = uninit_inode_bitmap(&geo);
            let mut highest = 0u32;
            let mut ndirs = 0u32;
            for ino in (first_ino..end_ino).filter(|&i| used_inodes.get(i)) {
                let idx = (ino - first_ino) as u32;
                bitmap::set(&mut imap, idx as usize);
                highest = idx + 1;
                ndirs += u32::from(dirs.get(ino));
            }
            let free_blocks = (geo.group_blocks(g) - geo.group_meta_blocks())
                - bitmap::count_set(
                    &bmap,
                    geo.group_meta_blocks() as usize,
                    (geo.group_blocks(g) - geo.group_meta_blocks()) as usize,
                ) as u32;
            let free_inodes = geo.inodes_per_group
                - bitmap::count_set(&imap, 0, geo.inodes_per_group as usize) as u32;
            total_free_blocks += u64::from(free_blocks);
            total_free_inodes += u64::from(free_inodes);
            let fatal = |r: Result<Vec<u8>>| match r {
                Ok(v) => Ok(Some(v)),
                Err(e) if e.is_corruption() => Ok(None),
                Err(e) => Err(FsckError::from(e)),
            };
            let (bm_disk, im_disk) = match &disk {
                Ok(d) => (
                    fatal(self.img.block_bitmap(g, d))?,
                    fatal(self.img.inode_bitmap(g, d))?,
                ),
                Err(e) if !e.is_corruption() => return Err(FsckError::Operational(e.to_string())),
                Err(_) => (None, None),
            };
            let unused_ok = disk
                .as_ref()
                .is_ok_and(|d| d.inode_uninit() || d.itable_unused_from >= highest);
            let counts_ok = disk.as_ref().is_ok_and(|d| {
                d.free_blocks == free_blocks && d.free_inodes == free_inodes && d.used_dirs == ndirs
            });
            let bm_ok = bm_disk.as_deref() == Some(&bmap[..]);
            let im_ok = im_disk.as_deref() == Some(&imap[..]);
            if bm_ok && im_ok && counts_ok && unused_ok {
                continue;
            }
            let mut what = Vec::new();
            if disk.is_err() {
                what.push("descriptor damaged".to_string());
            }
            if !bm_ok {
                what.push("block bitmap differs".into());
            }
            if !im_ok {
                what.push("inode bitmap differs".into());
            }
            if !counts_ok && disk.is_ok() {
                what.push("free counts wrong".into());
            }
            if !unused_ok && disk.is_ok() {
                what.push("unused-inode mark too low".into());
            }
            if self.problem(&format!("Group {g}: {}.", what.join(", ")), "Fix it")? {
                let mut d = GroupDesc {
                    flags: 0,
                    free_blocks,
                    free_inodes,
                    used_dirs: ndirs,
                    block_bitmap_csum: 0,
                    inode_bitmap_csum: 0,
                    itable_unused_from: match &disk {
                        Ok(d) if !d.inode_uninit() => d.itable_unused_from.max(highest),
                        Ok(_) => highest,
                        Err(_) => geo.inodes_per_group,
                    },
                };
                if d.itable_unused_from < geo.inodes_per_group && disk.is_err() {
                    d.itable_unused_from = geo.inodes_per_group;
                }
                // Inodes between the old and new mark were never written:
                // zero their table blocks so that nothing stale is read.
                // With the descriptor lost, any free slot may hold damage
                // pass 1 could not tell from never-used bytes: all of them.
                let from = match &disk {
                    Ok(old) if old.inode_uninit() => 0,
                    Ok(old) => old.itable_unused_from,
                    Err(_) => 0,
                };
                self.zero_itable(g, from, d.itable_unused_from, &used_inodes)?;
                self.img.write_group(g, &mut d, &bmap, &imap)?;
            }
        }
        self.report.used_blocks = geo.data_blocks() - total_free_blocks;
        self.report.total_blocks = geo.data_blocks();
        self.report.used_inodes = geo.inodes_count() - total_free_inodes;
        self.report.total_inodes = geo.inodes_count();
        if self.img.sb.free_blocks != total_free_blocks
            || self.img.sb.free_inodes != total_free_inodes
        {
            // Summaries the filesystem updates lazily: fixed quietly.
            self.verbose("Superblock free counts updated");
            self.img.sb.free_blocks = total_free_blocks;
            self.img.sb.free_inodes = total_free_inodes;
            self.sb_dirty = true;
        }
        Ok(())
    }

    /// Zero the inode slots `[from, to)` of group `g` that are not in use
    /// (slots past the old unused mark may hold stale bytes).
    fn zero_itable(
        &mut self,
        g: u32,
        from: u32,
        to: u32,
        used: &Bits,
    ) -> std::result::Result<(), FsckError> {
        if !self.writable() || from >= to {
            return Ok(());
        }
        let geo = self.img.geo;
        let mut block_of = BTreeMap::new();
        for idx in from..to {
            let ino = geo.ino_of(g, idx);
            if used.get(ino) {
                continue;
            }
            let (b, off) = geo.ino_location(ino);
            block_of.entry(b).or_insert_with(Vec::new).push(off);
        }
        for (b, offs) in block_of {
            let mut raw = match self.img.read("inode table", b) {
                Ok(raw) => raw,
                Err(e) if e.is_corruption() => vec![0u8; BLOCK_SIZE],
                Err(e) => return Err(e.into()),
            };
            let before = raw.clone();
            for off in offs {
                if let Some(slot) = raw.get_mut(off..off + INODE_SIZE) {
                    slot.fill(0);
                }
            }
            if raw != before {
                self.img.write("inode table", b, &raw)?;
            }
        }
        Ok(())
    }

    /// Blocks and inodes in use, and which inodes are directories, from
    /// the inodes as they now are (after every repair).
    /// Each a bitset: blocks, inodes, directories.
    fn census(&mut self) -> std::result::Result<(Bits, Bits, Bits), FsckError> {
        let geo = self.img.geo;
        let mut used = Bits::new(geo.blocks_count);
        let mut inodes = Bits::new(geo.inodes_count() + 1);
        let mut dirs = Bits::new(geo.inodes_count() + 1);
        if !self.changed {
            for (ino, info) in self.infos.iter() {
                inodes.set(ino);
                if info.ftype == FileType::Directory {
                    dirs.set(ino);
                }
            }
            used.0.clone_from(&self.claimed.0);
            return Ok((used, inodes, dirs));
        }
        let infos: Vec<u64> = self.infos.keys().collect();
        for ino in infos {
            let Some(inode) = self.img.inode(ino)? else {
                continue;
            };
            inodes.set(ino);
            if inode.file_type() == FileType::Directory {
                dirs.set(ino);
            }
            let scan = self.img.extents(ino, &inode);
            if let Some(f) = scan.fatal {
                return Err(FsckError::Operational(format!("inode {ino}: {f}")));
            }
            for b in scan.tree_blocks {
                used.set(b);
            }
            for e in scan.extents {
                for b in e.physical..e.physical_end() {
                    used.set(b);
                }
            }
            if inode.xattr_block != 0 {
                used.set(inode.xattr_block);
            }
        }
        Ok((used, inodes, dirs))
    }

    /// Read every data block of every file; name the owners of bad ones.
    fn scrub(&mut self) -> std::result::Result<(), FsckError> {
        self.verbose("Scrub: reading every data block");
        let paths = self.paths();
        let total: u64 = self
            .infos
            .values()
            .flat_map(|i| &i.extents)
            .filter(|e| !e.unwritten)
            .map(|e| u64::from(e.len))
            .sum();
        let bar = progress_bar(total);
        let files: Vec<(u64, Vec<Extent>)> = self
            .infos
            .iter()
            .map(|(i, info)| (i, info.extents.clone()))
            .collect();
        for (ino, extents) in files {
            check_cancel()?;
            for e in extents.iter().filter(|e| !e.unwritten) {
                let mut b = e.physical;
                while b < e.physical_end() {
                    let n = (e.physical_end() - b).min(256);
                    if self.img.dev.read_pages(b, n).is_err() {
                        // Narrow it down block by block.
                        for x in b..b + n {
                            if let Err(err) = self.img.dev.read_pages(x, 1) {
                                let path = paths
                                    .get(&ino)
                                    .cloned()
                                    .unwrap_or_else(|| format!("<inode {ino}>"));
                                let logical = e.logical + (x - e.physical);
                                self.say(&format!("Scrub: {path} (inode {ino}): block {logical} (device block {x}): {err}"));
                                self.report
                                    .scrub_bad
                                    .push((ino, path, logical, err.to_string()));
                            }
                        }
                    }
                    self.report.scrub_blocks += n;
                    if let Some(bar) = &bar {
                        bar.inc(n);
                    }
                    b += n;
                }
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        Ok(())
    }

    /// A path for every inode reachable from the root.
    fn paths(&self) -> HashMap<u64, String> {
        let mut out = HashMap::new();
        out.insert(ROOT_INO, "/".to_string());
        let mut stack = vec![(ROOT_INO, String::new())];
        while let Some((d, prefix)) = stack.pop() {
            for e in self.dirs.get(&d).into_iter().flatten() {
                let p = format!("{prefix}/{}", String::from_utf8_lossy(&e.name));
                if out.insert(e.ino, p.clone()).is_none() && e.ftype == FileType::Directory {
                    stack.push((e.ino, p));
                }
            }
        }
        out
    }

    fn finish(&mut self) -> std::result::Result<(), FsckError> {
        if !self.writable() {
            return Ok(());
        }
        let state = if self.report.left > 0 {
            STATE_ERRORS
        } else {
            STATE_CLEAN
        };
        if self.img.sb.state != state || self.sb_dirty || self.changed {
            self.img.sb.state = state;
            self.img.sb.check_time = Timespec::now().sec;
            self.img.write_superblock()?;
        }
        self.img
            .dev
            .flush()
            .map_err(|e| FsckError::Operational(format!("flush: {e}")))?;
        Ok(())
    }
}

/// For each of `entries`, whether an earlier one with a valid name has the
/// same name (pass 2 keeps the first of them). Sorting beats a set of a
/// million cloned names: by the stored hash, which `DirNode::decode` has
/// checked is the name's (so one name has one hash), and which a directory
/// keeps its entries in already; names are compared only between entries
/// of one hash.
fn duplicate_names(entries: &[DirEntry]) -> Vec<bool> {
    let mut keys: Vec<(u64, &[u8], usize)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| valid_name(&e.name))
        .map(|(i, e)| (e.hash, e.name.as_slice(), i))
        .collect();
    keys.sort_unstable();
    let mut dup = vec![false; entries.len()];
    for pair in keys.windows(2) {
        if let [(h1, n1, _), (h2, n2, j)] = pair {
            if h1 == h2 && n1 == n2 {
                if let Some(d) = dup.get_mut(*j) {
                    *d = true;
                }
            }
        }
    }
    dup
}

/// Directories whose blocks are read ahead together in pass 2, and the
/// runs of blocks to read.
struct DirWindow {
    /// Indices into the list of directories.
    dirs: std::ops::Range<usize>,
    runs: Vec<(u64, u64)>,
}

/// Blocks read ahead per window of pass 2 (8 MiB); a directory's blocks
/// beyond it are read as its walk needs them.
const DIR_WINDOW_BLOCKS: u64 = 2048;

/// Node blocks an extent tree of `n` extents takes (an upper bound).
fn tree_blocks_needed(n: usize) -> usize {
    let inline = super::extent::ExtentNode::capacity(true, true);
    if n <= inline {
        return 0;
    }
    let leaf = super::extent::ExtentNode::capacity(true, false);
    let idx = super::extent::ExtentNode::capacity(false, false);
    let mut level = n.div_ceil(leaf);
    let mut total = level;
    while level > super::extent::ExtentNode::capacity(false, true) {
        level = level.div_ceil(idx);
        total += level;
    }
    total
}

fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() || total < 1 << 16 {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("scrub {bar:40} {pos}/{len} blocks ({eta})")
    {
        bar.set_style(style);
    }
    Some(bar)
}
