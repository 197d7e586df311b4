//! Every FUSE operation the guest uses, checked against the host directory.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

#[test]
fn init_negotiates_fuse_7_and_lookup_matches_the_host() {
    let mut h = FsHarness::new();
    fs::write(h.host("hello.txt"), b"hello world").unwrap();
    let entry = h.lookup(ROOT, "hello.txt").unwrap();
    let meta = fs::metadata(h.host("hello.txt")).unwrap();
    assert_eq!(entry.attr.size, 11);
    assert_eq!(entry.attr.mode, meta.mode());
    assert_eq!(entry.attr.ino, meta.ino());
    assert_eq!(h.lookup(ROOT, "missing").unwrap_err(), libc::ENOENT);
    let root = h.getattr(ROOT).unwrap();
    assert_eq!(root.ino, fs::metadata(h.root()).unwrap().ino());
}
