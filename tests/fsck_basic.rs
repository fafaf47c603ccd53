//! mkfs.biofs and fsck.biofs on populated images: a clean image checks
//! clean, read-only and forced.

mod common;

use common::fsimage::*;

#[test]
fn populated_image_checks_clean() {
    let p = populated();
    let (code, out) = fsck(&p.image, &["-fn"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = fsck(&p.image, &["-fy"]);
    assert_eq!(code, 0, "{out}");
    let dev = open_rw(&p.image);
    let img = biofs::format::image::Image::open(&dev, None).unwrap();
    for (path, data) in &p.files {
        let ino = lookup(&img, path).unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!(read_file(&img, ino).as_ref(), Some(data), "{path}");
    }
    assert_eq!(list(&img, "/bigdir").len(), p.big_dir_entries);
    assert_eq!(readlink(&img, "/slow").unwrap(), vec![b'x'; 300]);
}
