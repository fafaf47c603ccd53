//! mkfs.biofs: make a biofs filesystem on an image file or block device.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use biofs::block::backend::{BlockBackend, DirectMode, FileBackend, FileOptions};
use biofs::block::integrity::layout;
use biofs::block::{Checksum, IntegrityProfile, IntegrityStore};
use biofs::format::dev::{Dev, DevOptions};
use biofs::format::inode::Timespec;
use biofs::format::mkfs::{make_fs, plan, InodeCount, MkfsParams, DEFAULT_BYTES_PER_INODE};
use biofs::format::units::{format_uuid, human, parse_size, parse_uuid};
use biofs::format::{superblock, BLOCK_SIZE, BLOCK_SIZE_U64};
use biofs::fs::populate::populate;
use biofs::fs::{Fs, MountOptions};

const HELP: &str = "\
NAME
    mkfs.biofs - make a biofs filesystem

SYNOPSIS
    mkfs.biofs [options] TARGET

DESCRIPTION
    Makes a biofs filesystem on TARGET, an image file or a block device.
    An image file that does not exist is created (sparse) with --size; an
    existing one shorter than --size is grown. Formatting writes a few
    blocks whatever the size: a 1 TiB sparse image formats in well under
    a second.

    mkfs.biofs refuses to overwrite a device or image that holds a biofs,
    ext2/3/4, XFS or Btrfs filesystem unless -f is given.

OPTIONS
    -s, --size SIZE
        Size of the image to create or grow to, in bytes with an optional
        K, M, G, T suffix (powers of 1024). On a block device, the size of
        the filesystem (at most the device's).
    -b, --block-size BYTES
        Block size. Only 4096 is supported by this version.
    -i, --bytes-per-inode BYTES
        One inode per BYTES of space (default 16384).
    -N, --inodes COUNT
        About COUNT inodes in all (overrides -i).
    -J, --journal-size SIZE
        Size of the journal (default 1/256 of the filesystem, 1 MiB to
        128 MiB).
    -L, --label LABEL
        Volume label, at most 64 bytes.
    -U, --uuid UUID
        Filesystem UUID (default: random).
    -I, --integrity CHECKSUM
        Checksum of the block engine's per-interval integrity tuples:
        crc32c (default), t10dif, or none (no tuples: reads are not
        verified).
        --integrity-interval BYTES
        Bytes each tuple protects: 4096 (default) or 512.
    -d, --root-directory DIR
        Copy the tree under DIR into the new filesystem (as mke2fs -d):
        file contents (runs of zeros stay holes), modes, owners, times,
        hard links, symlinks, device nodes, fifos, sockets and extended
        attributes. This is how images for containers and VMs are built.
    -f, --force
        Overwrite an existing filesystem.
    -n, --dry-run
        Show what would be made; write nothing.
    -q, --quiet
        Print nothing but errors.
    -V, --version
        Print the version and exit.
    -h, --help
        Print this help and exit.

EXIT STATUS
    0 on success, 1 on any error (bad options included).

EXAMPLES
    mkfs.biofs --size 4G disk.img
    mkfs.biofs --size 2G -d rootfs/ vm.img
    mkfs.biofs -L data -I t10dif /dev/vdb

SEE ALSO
    fsck.biofs(8), biofs(8)
";

#[derive(Parser, Debug)]
#[command(name = "mkfs.biofs", version, override_help = HELP, disable_help_subcommand = true)]
struct Args {
    #[arg(short = 's', long = "size")]
    size: Option<String>,
    #[arg(short = 'b', long = "block-size")]
    block_size: Option<u32>,
    #[arg(short = 'i', long = "bytes-per-inode")]
    bytes_per_inode: Option<String>,
    #[arg(short = 'N', long = "inodes")]
    inodes: Option<u64>,
    #[arg(short = 'J', long = "journal-size")]
    journal_size: Option<String>,
    #[arg(short = 'L', long = "label")]
    label: Option<String>,
    #[arg(short = 'U', long = "uuid")]
    uuid: Option<String>,
    #[arg(short = 'I', long = "integrity", default_value = "crc32c")]
    integrity: String,
    #[arg(long = "integrity-interval", default_value_t = 4096)]
    integrity_interval: u32,
    #[arg(short = 'd', long = "root-directory")]
    root_directory: Option<PathBuf>,
    #[arg(short = 'f', long = "force")]
    force: bool,
    #[arg(short = 'n', long = "dry-run")]
    dry_run: bool,
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    target: PathBuf,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Args = match biofs::cli::parse_args("mkfs.biofs", std::env::args_os()) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mkfs.biofs: {e}");
            ExitCode::from(1)
        }
    }
}

/// The recognised filesystem on `backend`, if any.
fn signature(backend: &dyn BlockBackend) -> Option<String> {
    let size = backend.info().size_bytes;
    let mut head = vec![0u8; 68 * 1024];
    let n = (size as usize).min(head.len()) & !4095;
    if n == 0 {
        return None;
    }
    let mut buf = biofs::block::Page::new();
    let blocks = head
        .chunks_exact_mut(BLOCK_SIZE)
        .take(n.div_ceil(BLOCK_SIZE));
    for (off, block) in (0..).step_by(BLOCK_SIZE).zip(blocks) {
        let slice = buf.make_mut();
        let mut iov = [std::io::IoSliceMut::new(slice)];
        if backend.read_at(&mut iov, off as u64).is_err() {
            return None;
        }
        block.copy_from_slice(buf.as_slice());
    }
    if head.starts_with(&superblock::MAGIC) {
        if let Ok(sb) = superblock::Superblock::decode(&head, 0) {
            let label = if sb.label.is_empty() {
                String::new()
            } else {
                format!(" labelled '{}'", sb.label)
            };
            return Some(format!(
                "a biofs filesystem{label} (UUID {})",
                format_uuid(&sb.uuid)
            ));
        }
        return Some("a (damaged) biofs filesystem".into());
    }
    if n > 1082 && head.get(1080..1082) == Some(&[0x53, 0xEF][..]) {
        return Some("an ext2/ext3/ext4 filesystem".into());
    }
    if head.starts_with(b"XFSB") {
        return Some("an XFS filesystem".into());
    }
    if n >= 65536 + 72 && head.get(65536 + 64..65536 + 72) == Some(&b"_BHRfS_M"[..]) {
        return Some("a Btrfs filesystem".into());
    }
    None
}

fn open_backend(path: &Path, read_only: bool) -> Result<FileBackend, String> {
    FileBackend::open(
        path,
        FileOptions {
            direct: DirectMode::Auto,
            read_only,
        },
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}

fn run(a: &Args) -> Result<(), String> {
    if let Some(dir) = &a.root_directory {
        if !dir.is_dir() {
            return Err(format!("-d {}: not a directory", dir.display()));
        }
    }
    if let Some(bs) = a.block_size {
        if bs as usize != BLOCK_SIZE {
            return Err(format!(
                "block size {bs} is not supported (only {BLOCK_SIZE})"
            ));
        }
    }
    let size = a.size.as_deref().map(parse_size).transpose()?;
    let checksum = match a.integrity.as_str() {
        "crc32c" => Some(Checksum::Crc32c),
        "t10dif" => Some(Checksum::T10DifCrc16),
        "none" => None,
        other => {
            return Err(format!(
                "--integrity: '{other}' is not crc32c, t10dif or none"
            ))
        }
    };
    let profile = checksum
        .map(|c| IntegrityProfile::new(a.integrity_interval, c))
        .transpose()
        .map_err(|e| format!("--integrity-interval: {e}"))?;
    let label = a.label.clone().unwrap_or_default();
    if label.len() > superblock::LABEL_MAX {
        return Err(format!(
            "label is {} bytes; at most {}",
            label.len(),
            superblock::LABEL_MAX
        ));
    }
    let uuid = match &a.uuid {
        Some(u) => parse_uuid(u)?,
        None => {
            let mut u = [0u8; 16];
            biofs::sys::random_bytes(&mut u).map_err(|e| format!("random UUID: {e}"))?;
            u[6] = (u[6] & 0x0f) | 0x40; // version 4
            u[8] = (u[8] & 0x3f) | 0x80; // RFC 4122 variant
            u
        }
    };
    let mut seed = [0u8; 8];
    biofs::sys::random_bytes(&mut seed).map_err(|e| format!("random hash seed: {e}"))?;
    let inodes = match (a.inodes, &a.bytes_per_inode) {
        (Some(n), _) => InodeCount::Total(n),
        (None, Some(b)) => InodeCount::BytesPerInode(parse_size(b)?),
        (None, None) => InodeCount::BytesPerInode(DEFAULT_BYTES_PER_INODE),
    };
    let journal_blocks = a
        .journal_size
        .as_deref()
        .map(parse_size)
        .transpose()?
        .map(|b| b / BLOCK_SIZE_U64);

    // The target: create or grow an image file.
    let meta = std::fs::metadata(&a.target);
    let is_blockdev = {
        use std::os::unix::fs::FileTypeExt;
        meta.as_ref().is_ok_and(|m| m.file_type().is_block_device())
    };
    if let Err(e) = &meta {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(format!("{}: {e}", a.target.display()));
        }
        if size.is_none() {
            return Err(format!(
                "{}: no such file; give --size to create an image",
                a.target.display()
            ));
        }
    }
    // Refuse before changing anything (growing the image would move the
    // old filesystem's integrity header out of reach).
    if meta.is_ok() && !a.force {
        if let Some(what) = signature(&open_backend(&a.target, true)?) {
            return Err(format!(
                "{} contains {what}; use -f to overwrite it",
                a.target.display()
            ));
        }
    }
    if let Some(s) = size {
        if !is_blockdev && !a.dry_run && meta.as_ref().map_or(true, |m| m.len() < s) {
            FileBackend::create(&a.target, s)
                .map_err(|e| format!("{}: can't create or grow: {e}", a.target.display()))?;
        }
    }
    let dry_run = |bytes| {
        report_plan(
            a,
            bytes,
            profile.as_ref(),
            inodes,
            journal_blocks,
            &label,
            uuid,
            seed,
        )
    };
    if a.dry_run && meta.is_err() {
        // Nothing to open: plan on the size alone.
        return dry_run(size.unwrap_or(0));
    }
    let backend = open_backend(&a.target, a.dry_run)?;
    let dev_bytes = backend.info().size_bytes;
    let fs_bytes = match size {
        Some(s) if is_blockdev && s > dev_bytes => {
            return Err(format!(
                "--size {} is larger than the device ({})",
                human(s),
                human(dev_bytes)
            ))
        }
        Some(s) if is_blockdev => s,
        _ => dev_bytes,
    };
    if a.dry_run {
        return dry_run(fs_bytes);
    }
    backend.lock_exclusive().map_err(|e| {
        format!(
            "{}: in use (mounted, or open in another biofs process): {e}",
            a.target.display()
        )
    })?;
    let backend: Arc<dyn BlockBackend> = Arc::new(backend);
    match &profile {
        Some(p) => {
            // Zeroing the tuple region (1/512 of the device) is the one
            // step that grows with the size: on a block device without a
            // write-zeroes offload it writes it all. Show that it runs.
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let spinner = (tty && !a.quiet).then(|| {
                let s = indicatif::ProgressBar::new_spinner();
                s.set_message(format!(
                    "laying out integrity metadata ({} of tuples)",
                    human(dev_bytes / 512)
                ));
                s.enable_steady_tick(std::time::Duration::from_millis(120));
                s
            });
            let r = IntegrityStore::format(&*backend, *p);
            if let Some(s) = spinner {
                s.finish_and_clear();
            }
            r.map_err(|e| format!("integrity metadata: {e}"))?;
        }
        None => {
            // No tuples: erase any old integrity header so nobody uses it.
            if let Some(off) = layout::header_offset(dev_bytes) {
                backend
                    .write_zeroes(off, dev_bytes - off)
                    .map_err(|e| format!("erasing the old integrity header: {e}"))?;
            }
        }
    }
    let dev = Dev::from_backend(
        backend,
        DevOptions {
            read_only: false,
            verify: true,
            workers: 0,
            queue_depth: 0,
        },
    )
    .map_err(|e| format!("{}: {e}", a.target.display()))?;
    let mut params = MkfsParams::new(uuid, u64::from_le_bytes(seed), Timespec::now());
    params.inodes = inodes;
    params.journal_blocks = journal_blocks;
    params.label = label;
    params.blocks = Some((fs_bytes / BLOCK_SIZE_U64).min(dev.blocks()));
    params.integrity = profile.map_or((0, 0), |p| {
        (p.interval_size() as u32, p.checksum().id() as u16)
    });
    let sb = make_fs(&dev, &params).map_err(|e| e.to_string())?;
    dev.close()
        .map_err(|e| format!("closing the device: {e}"))?;
    if !a.quiet {
        let geo = sb.geometry().map_err(|e| e.to_string())?;
        println!(
            "Made a biofs filesystem on {}\n  UUID:      {}\n  label:     {}\n  size:      {} ({} blocks of {BLOCK_SIZE} bytes)\n  inodes:    {} ({} per group, {} groups)\n  journal:   {} blocks\n  integrity: {}",
            a.target.display(),
            format_uuid(&sb.uuid),
            if sb.label.is_empty() { "(none)" } else { &sb.label },
            human(sb.blocks_count * BLOCK_SIZE_U64),
            sb.blocks_count,
            sb.inodes_count,
            sb.inodes_per_group,
            geo.groups,
            sb.journal_blocks,
            profile.map_or("none".to_string(), |p| p.name()),
        );
    }
    if let Some(dir) = &a.root_directory {
        let fs = Fs::mount(&a.target, &MountOptions::default())
            .map_err(|e| format!("mounting the new filesystem: {e}"))?;
        let copied = populate(&fs, dir);
        let closed = fs.shutdown();
        let st = copied.map_err(|e| format!("copying {}: {e}", dir.display()))?;
        closed.map_err(|e| format!("writing the copy out: {e}"))?;
        if !a.quiet {
            println!(
                "  copied:    {} files ({}), {} directories, {} hard links from {}",
                st.files,
                human(st.bytes),
                st.dirs,
                st.links,
                dir.display()
            );
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn report_plan(
    a: &Args,
    bytes: u64,
    profile: Option<&IntegrityProfile>,
    inodes: InodeCount,
    journal_blocks: Option<u64>,
    label: &str,
    uuid: [u8; 16],
    seed: [u8; 8],
) -> Result<(), String> {
    let data = match profile {
        Some(p) => layout::layout(bytes, p)
            .map(|l| l.data_sectors * 512)
            .map_err(|e| format!("integrity layout: {e}"))?,
        None => bytes,
    };
    let mut params = MkfsParams::new(uuid, u64::from_le_bytes(seed), Timespec::now());
    params.inodes = inodes;
    params.journal_blocks = journal_blocks;
    params.label = label.to_string();
    let geo = plan(data / BLOCK_SIZE_U64, &params).map_err(|e| e.to_string())?;
    println!(
        "Would make a biofs filesystem on {} (dry run, nothing written)\n  size:      {} ({} blocks)\n  inodes:    {} ({} per group, {} groups)\n  journal:   {} blocks\n  integrity: {}",
        a.target.display(),
        human(geo.blocks_count * BLOCK_SIZE_U64),
        geo.blocks_count,
        geo.inodes_count(),
        geo.inodes_per_group,
        geo.groups,
        geo.journal_blocks,
        profile.map_or("none".to_string(), |p| p.name()),
    );
    Ok(())
}
