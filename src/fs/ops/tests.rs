//! Unit tests of [`Fs`] that look inside its metadata.

use super::*;
use crate::format::mkfs::fresh_dev;

fn mounted(opts: &MountOptions) -> Fs {
    Fs::mount_dev(fresh_dev(64 << 20), opts).unwrap()
}

fn check_counts(fs: &Fs, when: &str) {
    if let Err(e) = fs.meta().check_free_counts() {
        panic!("{when}: {e}");
    }
    let s = fs.statfs().unwrap();
    let m = fs.meta();
    assert_eq!(s.ffree, m.free_inodes(), "{when}: statfs's free inodes");
}

/// Issue 12: statfs takes the free counts kept in memory; after creates,
/// writes, truncates, unlinks (one of an open file), directories made
/// and removed, and commits between, they are the descriptors' counts.
#[test]
fn free_counts_in_memory_match_the_descriptors() {
    let opts = MountOptions {
        commit_interval_secs: 3600,
        meta_cache_bytes: Some(16 * 4096),
        ..MountOptions::default()
    };
    let fs = mounted(&opts);
    let c = Ctx::root();
    check_counts(&fs, "mounted");
    let before = fs.statfs().unwrap();
    let d = fs.mkdir(&c, ROOT_INO, b"d", 0o755).unwrap().ino;
    let mut files = Vec::new();
    for i in 0..300u32 {
        let parent = if i % 2 == 0 { ROOT_INO } else { d };
        let name = format!("f{i}");
        let ino = fs.create(&c, parent, name.as_bytes(), 0o644).unwrap().ino;
        let len = (i as usize % 7) * 3000 + (i as usize % 3) * 70_000;
        if len > 0 {
            fs.write(&c, ino, 0, &vec![i as u8; len], false).unwrap();
        }
        fs.release(ino).unwrap();
        files.push((parent, name, ino));
        if i % 97 == 0 {
            fs.syncfs().unwrap();
        }
    }
    check_counts(&fs, "after the creates (writes not yet back)");
    fs.syncfs().unwrap();
    check_counts(&fs, "after the creates, synced");
    assert!(fs.statfs().unwrap().ffree < before.ffree - 300);
    for (k, (_, _, ino)) in files.iter().enumerate().filter(|(k, _)| k % 3 == 1) {
        let size = Some((k as u64 * 1_111) % 50_000);
        let set = SetAttr {
            size,
            ..SetAttr::default()
        };
        fs.setattr(&c, *ino, &set).unwrap();
    }
    check_counts(&fs, "after the truncates");
    let created = fs.statfs().unwrap().ffree;
    // An unlinked file still open is freed at its release.
    let held = files[4].2;
    fs.open(&c, held, false).unwrap();
    // As through FUSE: the kernel holds each file it unlinks (its
    // lookup from the create) and forgets it after.
    for (parent, name, ino) in files.iter().step_by(2) {
        fs.unlink(*parent, name.as_bytes()).unwrap();
        fs.forget(*ino, 1);
    }
    check_counts(&fs, "after the unlinks (one file open)");
    assert_eq!(
        fs.statfs().unwrap().ffree,
        created + 149,
        "150 unlinked, one open"
    );
    let open_left = fs.statfs().unwrap().ffree;
    fs.syncfs().unwrap();
    fs.release(held).unwrap();
    check_counts(&fs, "after the last release");
    assert_eq!(fs.statfs().unwrap().ffree, open_left + 1);
    for i in 0..20u32 {
        let name = format!("sub{i}");
        let s = fs.mkdir(&c, d, name.as_bytes(), 0o755).unwrap().ino;
        let x = fs.create(&c, s, b"x", 0o644).unwrap().ino;
        fs.release(x).unwrap();
        if i % 2 == 0 {
            fs.unlink(s, b"x").unwrap();
            fs.rmdir(d, name.as_bytes()).unwrap();
        }
        fs.forget(x, 1);
        fs.forget(s, 1);
    }
    check_counts(&fs, "after mkdir/rmdir");
    fs.syncfs().unwrap();
    check_counts(&fs, "at the end");
    let b = fs.buffer_stats();
    assert!(
        b.held <= 16 && b.evictions > 0 && b.hits > b.misses,
        "{b:?}"
    );
    assert!(fs
        .stats()
        .contains(&format!("buffer cache: {} of 16 blocks held", b.held)));
}
