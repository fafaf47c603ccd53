//! Populating a filesystem offline, straight through the format layer:
//! directories, files with their data, symlinks, device nodes, hard links
//! and xattrs, with bitmaps, descriptors and counters kept right. Tests use
//! it to make populated images (for fsck and the corruption suite) before
//! the mounted filesystem exists to make them.

use std::collections::{BTreeMap, BTreeSet};

use super::dev::Dev;
use super::dir::{valid_name, DirEntry};
use super::error::{FormatError, Result};
use super::extent::Extent;
use super::image::Image;
use super::inode::{FileType, Inode, InodeData, Timespec, INLINE_DATA, S_IFLNK};
use super::xattr::{self, Xattr};
use super::{bitmap, BLOCK_SIZE, BLOCK_SIZE_U64, ROOT_INO};

/// An open filesystem being populated. Call [`Builder::finish`] to write
/// the directories, bitmaps and counters.
pub struct Builder<'d> {
    pub img: Image<'d>,
    /// Contents of every directory touched.
    dirs: BTreeMap<u64, Vec<DirEntry>>,
    /// Inodes in memory until `finish`.
    inodes: BTreeMap<u64, Inode>,
    used_blocks: BTreeSet<u64>,
    used_inodes: BTreeSet<u64>,
    next_block: u64,
    now: Timespec,
}

impl<'d> Builder<'d> {
    /// Open the filesystem on `dev` (as mkfs left it, or as a builder did).
    pub fn open(dev: &'d Dev, now: Timespec) -> Result<Builder<'d>> {
        let img = Image::open(dev, None)?;
        let mut b = Builder {
            dirs: BTreeMap::new(),
            inodes: BTreeMap::new(),
            used_blocks: BTreeSet::new(),
            used_inodes: BTreeSet::new(),
            next_block: 0,
            now,
            img,
        };
        // What is in use now: from the bitmaps.
        for g in 0..b.img.geo.groups {
            let d = b.img.desc(g)?;
            let bm = b.img.block_bitmap(g, &d)?;
            let im = b.img.inode_bitmap(g, &d)?;
            let start = b.img.geo.group_start(g);
            for i in b.img.geo.group_meta_blocks()..b.img.geo.group_blocks(g) {
                if bitmap::test(&bm, i as usize) {
                    b.used_blocks.insert(start + u64::from(i));
                }
            }
            for i in 0..b.img.geo.inodes_per_group {
                if bitmap::test(&im, i as usize) {
                    b.used_inodes.insert(b.img.geo.ino_of(g, i));
                }
            }
        }
        Ok(b)
    }

    fn inode_mut(&mut self, ino: u64) -> Result<&mut Inode> {
        if !self.inodes.contains_key(&ino) {
            let i = self
                .img
                .inode(ino)?
                .ok_or_else(|| FormatError::invalid("builder", format!("inode {ino} is free")))?;
            self.inodes.insert(ino, i);
        }
        self.inodes
            .get_mut(&ino)
            .ok_or_else(|| FormatError::invalid("builder", "inode vanished"))
    }

    fn entries(&mut self, dir: u64) -> Result<&mut Vec<DirEntry>> {
        if !self.dirs.contains_key(&dir) {
            let inode = self.img.inode(dir)?.ok_or_else(|| {
                FormatError::invalid("builder", format!("directory inode {dir} is free"))
            })?;
            let ext = self.img.extents(dir, &inode);
            let scan = self.img.dir_entries(dir, &inode, &ext.extents);
            if !scan.problems.is_empty() || !ext.problems.is_empty() {
                return Err(FormatError::invalid(
                    "builder",
                    format!("directory {dir} is damaged"),
                ));
            }
            self.dirs.insert(dir, scan.entries);
        }
        self.dirs
            .get_mut(&dir)
            .ok_or_else(|| FormatError::invalid("builder", "directory vanished"))
    }

    /// A free block, lowest first.
    pub fn alloc_block(&mut self) -> Result<u64> {
        let total = self.img.geo.blocks_count;
        while self.next_block < total {
            let b = self.next_block;
            self.next_block += 1;
            if self.img.geo.is_data_block(b) && !self.used_blocks.contains(&b) {
                self.used_blocks.insert(b);
                return Ok(b);
            }
        }
        Err(FormatError::NoSpace { what: "a block" })
    }

    fn alloc_inode(&mut self) -> Result<u64> {
        (super::FIRST_FREE_INO..=self.img.geo.inodes_count())
            .find(|i| !self.used_inodes.contains(i))
            .inspect(|&i| {
                self.used_inodes.insert(i);
            })
            .ok_or(FormatError::NoSpace { what: "an inode" })
    }

    fn add_entry(&mut self, dir: u64, name: &str, ino: u64, ftype: FileType) -> Result<()> {
        if !valid_name(name.as_bytes()) {
            return Err(FormatError::invalid(
                "builder",
                format!("bad name {name:?}"),
            ));
        }
        let seed = self.img.sb.hash_seed;
        let es = self.entries(dir)?;
        if es.iter().any(|e| e.name == name.as_bytes()) {
            return Err(FormatError::invalid("builder", format!("{name} exists")));
        }
        es.push(DirEntry::new(seed, name.as_bytes(), ino, ftype));
        Ok(())
    }

    fn new_inode(&mut self, dir: u64, name: &str, mode: u32) -> Result<u64> {
        let ino = self.alloc_inode()?;
        let ftype = FileType::from_mode(mode)
            .ok_or_else(|| FormatError::invalid("builder", format!("mode {mode:o}")))?;
        self.add_entry(dir, name, ino, ftype)?;
        let mut inode = Inode::new(mode, 0, 0, self.now);
        inode.generation = ino as u32;
        self.inodes.insert(ino, inode);
        Ok(ino)
    }

    /// Make directory `name` in `dir`.
    pub fn mkdir(&mut self, dir: u64, name: &str, perm: u32) -> Result<u64> {
        let ino = self.new_inode(dir, name, super::inode::S_IFDIR | perm)?;
        let d = self.inode_mut(ino)?;
        d.nlink = 2;
        d.rdev_or_parent = dir;
        self.dirs.insert(ino, Vec::new());
        self.inode_mut(dir)?.nlink += 1;
        Ok(ino)
    }

    /// Make regular file `name` in `dir` holding `data`, its blocks laid
    /// out contiguously where they can be.
    pub fn create_file(&mut self, dir: u64, name: &str, perm: u32, data: &[u8]) -> Result<u64> {
        let ino = self.new_inode(dir, name, super::inode::S_IFREG | perm)?;
        self.write_data(ino, 0, data, 1)?;
        Ok(ino)
    }

    /// Make a regular file of `blocks` blocks, each in its own extent (a
    /// free block left between them): a deep extent tree for tests.
    pub fn create_fragmented(&mut self, dir: u64, name: &str, blocks: u64) -> Result<u64> {
        let ino = self.new_inode(dir, name, super::inode::S_IFREG | 0o644)?;
        let data: Vec<u8> = (0..blocks * BLOCK_SIZE_U64)
            .map(|i| (i % 251) as u8)
            .collect();
        self.write_data(ino, 0, &data, 2)?;
        Ok(ino)
    }

    /// Write `data` as the file's contents from logical block `first`,
    /// taking every `stride`-th free block (1: contiguous).
    fn write_data(&mut self, ino: u64, first: u64, data: &[u8], stride: u64) -> Result<()> {
        let mut extents: Vec<Extent> = Vec::new();
        for (i, chunk) in data.chunks(BLOCK_SIZE).enumerate() {
            let mut b = self.alloc_block()?;
            for _ in 1..stride {
                // Skip (and leave free) blocks between the file's blocks.
                self.used_blocks.remove(&b);
                b = self.alloc_block()?;
            }
            let mut buf = chunk.to_vec();
            buf.resize(BLOCK_SIZE, 0);
            self.img.write("data block", b, &buf)?;
            let logical = first + i as u64;
            match extents.last_mut() {
                Some(e)
                    if e.physical_end() == b
                        && e.logical_end() == logical
                        && e.len < super::extent::MAX_EXTENT_LEN =>
                {
                    e.len += 1
                }
                _ => extents.push(Extent {
                    logical,
                    physical: b,
                    len: 1,
                    unwritten: false,
                }),
            }
        }
        let mut inode = self.inode_mut(ino)?.clone();
        let mut tree = Vec::new();
        let mut pool: Vec<u64> = Vec::new();
        for _ in 0..extents.len().div_ceil(100) + 2 {
            pool.push(self.alloc_block()?);
        }
        pool.reverse();
        let tree_blocks = self
            .img
            .write_extent_tree(ino, &mut inode, &extents, &mut || {
                pool.pop()
                    .ok_or_else(|| FormatError::invalid("builder", "tree pool"))
            })?;
        tree.extend(tree_blocks);
        for b in pool {
            self.used_blocks.remove(&b);
        }
        inode.size = data.len() as u64;
        inode.blocks = (data.len() as u64).div_ceil(BLOCK_SIZE_U64) + tree.len() as u64;
        self.inodes.insert(ino, inode);
        Ok(())
    }

    /// Make symlink `name` in `dir` to `target` (fast if it fits the inode).
    pub fn symlink(&mut self, dir: u64, name: &str, target: &[u8]) -> Result<u64> {
        let ino = self.new_inode(dir, name, S_IFLNK | 0o777)?;
        if target.len() <= INLINE_DATA {
            let i = self.inode_mut(ino)?;
            i.data = InodeData::Symlink(target.to_vec());
            i.size = target.len() as u64;
        } else {
            self.write_data(ino, 0, target, 1)?;
        }
        Ok(ino)
    }

    /// Make a device node, fifo or socket.
    pub fn mknod(&mut self, dir: u64, name: &str, mode: u32, rdev: u64) -> Result<u64> {
        let ino = self.new_inode(dir, name, mode)?;
        self.inode_mut(ino)?.rdev_or_parent = rdev;
        Ok(ino)
    }

    /// Add a hard link `name` in `dir` to `ino`.
    pub fn link(&mut self, dir: u64, name: &str, ino: u64) -> Result<()> {
        let ftype = self.inode_mut(ino)?.file_type();
        self.add_entry(dir, name, ino, ftype)?;
        self.inode_mut(ino)?.nlink += 1;
        Ok(())
    }

    /// Give `ino` these extended attributes.
    pub fn set_xattrs(&mut self, ino: u64, mut attrs: Vec<Xattr>) -> Result<()> {
        attrs.sort_by(|a, b| (a.ns, &a.name).cmp(&(b.ns, &b.name)));
        let b = self.alloc_block()?;
        let raw = xattr::encode(self.img.seed, b, ino, &attrs)?;
        self.img.write("xattr block", b, &raw)?;
        let i = self.inode_mut(ino)?;
        i.xattr_block = b;
        i.blocks += 1;
        Ok(())
    }

    /// Write every touched directory, inode, bitmap and counter, and flush.
    pub fn finish(mut self) -> Result<()> {
        let dirs: Vec<(u64, Vec<DirEntry>)> = std::mem::take(&mut self.dirs).into_iter().collect();
        for (d, entries) in dirs {
            let mut inode = self.inode_mut(d)?.clone();
            // Free the directory's old blocks; write it afresh.
            let old = self.img.extents(d, &inode);
            for e in &old.extents {
                for b in e.physical..e.physical_end() {
                    self.used_blocks.remove(&b);
                }
            }
            for b in old.tree_blocks {
                self.used_blocks.remove(&b);
            }
            let mut pool = Vec::new();
            let bytes: usize = entries.iter().map(DirEntry::disk_len).sum();
            for _ in 0..bytes / (BLOCK_SIZE / 2) + 8 {
                pool.push(self.alloc_block()?);
            }
            pool.reverse();
            let extra = u64::from(inode.xattr_block != 0);
            let new = self.img.write_dir(d, &mut inode, entries, extra, &mut || {
                pool.pop()
                    .ok_or_else(|| FormatError::invalid("builder", "directory pool"))
            })?;
            for b in pool {
                self.used_blocks.remove(&b);
            }
            debug_assert!(new.iter().all(|b| self.used_blocks.contains(b)));
            self.inodes.insert(d, inode);
        }
        let inodes = std::mem::take(&mut self.inodes);
        for (ino, inode) in &inodes {
            self.img.write_inode(*ino, Some(inode))?;
        }
        // Bitmaps, descriptors, counters.
        let geo = self.img.geo;
        let (mut free_b, mut free_i) = (0u64, 0u64);
        for g in 0..geo.groups {
            let mut bm = super::group::uninit_block_bitmap(&geo, g);
            let mut im = super::group::uninit_inode_bitmap(&geo);
            let start = geo.group_start(g);
            for i in geo.group_meta_blocks()..geo.group_blocks(g) {
                if self.used_blocks.contains(&(start + u64::from(i))) {
                    bitmap::set(&mut bm, i as usize);
                }
            }
            let mut dirs = 0;
            let mut highest = 0;
            for i in 0..geo.inodes_per_group {
                let ino = geo.ino_of(g, i);
                if self.used_inodes.contains(&ino) {
                    bitmap::set(&mut im, i as usize);
                    highest = i + 1;
                    let is_dir = match inodes.get(&ino) {
                        Some(x) => x.file_type() == FileType::Directory,
                        None => self
                            .img
                            .inode(ino)?
                            .is_some_and(|x| x.file_type() == FileType::Directory),
                    };
                    dirs += u32::from(is_dir);
                }
            }
            let data = geo.group_blocks(g) - geo.group_meta_blocks();
            let used =
                bitmap::count_set(&bm, geo.group_meta_blocks() as usize, data as usize) as u32;
            let iused = bitmap::count_set(&im, 0, geo.inodes_per_group as usize) as u32;
            let old = self.img.desc(g)?;
            if old.block_uninit() && old.inode_uninit() && used == 0 && iused == 0 {
                free_b += u64::from(data);
                free_i += u64::from(geo.inodes_per_group);
                continue;
            }
            let mut d = super::group::GroupDesc {
                flags: 0,
                free_blocks: data - used,
                free_inodes: geo.inodes_per_group - iused,
                used_dirs: dirs,
                block_bitmap_csum: 0,
                inode_bitmap_csum: 0,
                itable_unused_from: if old.inode_uninit() {
                    highest
                } else {
                    old.itable_unused_from.max(highest)
                },
            };
            free_b += u64::from(d.free_blocks);
            free_i += u64::from(d.free_inodes);
            self.img.write_group(g, &mut d, &bm, &im)?;
        }
        self.img.sb.free_blocks = free_b;
        self.img.sb.free_inodes = free_i;
        self.img.write_superblock()?;
        self.img
            .dev
            .flush()
            .map_err(|e| FormatError::io("flush", 0, e))
    }
}

/// The root directory's inode number, for callers.
pub const ROOT: u64 = ROOT_INO;
