//! husk's policy on top of the passthrough: no setuid/setgid files, no
//! `security.capability`, no device nodes; each abuse is followed by a
//! valid request that works.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::*;

fn host_mode(h: &FsHarness, rel: &str) -> u32 {
    fs::symlink_metadata(h.host(rel))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn set_host_mode(h: &FsHarness, rel: &str, mode: u32) {
    fs::set_permissions(h.host(rel), fs::Permissions::from_mode(mode)).unwrap();
    assert_eq!(
        host_mode(h, rel),
        mode,
        "the host keeps {mode:o} (run as root)"
    );
}

/// The value of xattr `name` on the host file, or the errno.
fn host_xattr(h: &FsHarness, rel: &str, name: &str) -> Result<Vec<u8>, i32> {
    let path = CString::new(h.host(rel).to_str().unwrap()).unwrap();
    let name = CString::new(name).unwrap();
    let mut buf = [0u8; 256];
    // SAFETY: both strings are NUL-terminated; the kernel writes at most
    // `buf.len()` bytes into `buf`; the result is checked.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    Ok(buf[..n as usize].to_vec())
}

// A valid request after the refusal or the stripping: a file written and read back.
fn still_serves(h: &mut FsHarness, n: &str) {
    let (entry, fh) = h.create(ROOT, n, 0o644).unwrap();
    assert_eq!(h.write(entry.nodeid, fh, 0, b"fine").unwrap(), 4);
    assert_eq!(h.read(entry.nodeid, fh, 0, 16).unwrap(), b"fine");
    assert_eq!(h.release(entry.nodeid, fh), 0);
    assert_eq!(host_mode(h, n), 0o644);
}

#[test]
fn create_with_setuid_or_setgid_leaves_a_plain_file_on_the_host() {
    let mut h = FsHarness::new();
    for (n, mode) in [("suid", 0o4755), ("sgid", 0o2755), ("both", 0o6755)] {
        let (entry, fh) = h.create(ROOT, n, mode).unwrap();
        assert_eq!(entry.attr.mode & 0o7777, 0o755, "{n}: the reply");
        assert_eq!(host_mode(&h, n), 0o755, "{n}: the host file");
        assert_eq!(h.release(entry.nodeid, fh), 0);
    }
    assert_eq!(h.metric(|m| &m.mode_bits_stripped), 3);
    still_serves(&mut h, "after");
}

#[test]
fn chmod_to_06755_is_stripped_on_files_and_directories_keep_only_setgid() {
    let mut h = FsHarness::new();
    fs::write(h.host("f"), b"x").unwrap();
    let file = h.lookup(ROOT, "f").unwrap().nodeid;
    let chmod = |mode| SetattrIn {
        valid: SetattrValid::MODE.bits(),
        mode,
        ..Default::default()
    };
    let attr = h.setattr(file, chmod(libc::S_IFREG | 0o6755)).unwrap();
    assert_eq!(attr.mode & 0o7777, 0o755);
    assert_eq!(host_mode(&h, "f"), 0o755);
    // A guest that lies about the type (claims a directory) gains nothing.
    h.setattr(file, chmod(libc::S_IFDIR | 0o2755)).unwrap();
    assert_eq!(host_mode(&h, "f"), 0o755);
    // A directory keeps S_ISGID, never S_ISUID (mkdir itself ignores both).
    let dir = h.mkdir(ROOT, "shared", 0o6755).unwrap();
    assert_eq!(host_mode(&h, "shared"), 0o755);
    let attr = h
        .setattr(dir.nodeid, chmod(libc::S_IFDIR | 0o6775))
        .unwrap();
    assert_eq!(attr.mode & 0o7777, 0o2775);
    assert_eq!(host_mode(&h, "shared"), 0o2775);
    // ... so new directories inherit it, and new files its group.
    h.mkdir(dir.nodeid, "sub", 0o755).unwrap();
    assert_eq!(host_mode(&h, "shared/sub"), 0o2755);
    h.setattr(dir.nodeid, chmod(libc::S_IFDIR | 0o4755))
        .unwrap();
    assert_eq!(host_mode(&h, "shared"), 0o755);
    // A plain chmod passes untouched.
    h.setattr(file, chmod(libc::S_IFREG | 0o640)).unwrap();
    assert_eq!(host_mode(&h, "f"), 0o640);
    assert_eq!(h.metric(|m| &m.mode_bits_stripped), 5);
    still_serves(&mut h, "after");
}

#[test]
fn mknod_strips_setuid_from_files_and_fifos_and_still_refuses_devices() {
    let mut h = FsHarness::new();
    let f = h.mknod(ROOT, "reg", libc::S_IFREG | 0o4755, 0).unwrap();
    assert_eq!(f.attr.mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(host_mode(&h, "reg"), 0o755);
    h.mknod(ROOT, "fifo", libc::S_IFIFO | 0o2644, 0).unwrap();
    assert_eq!(host_mode(&h, "fifo"), 0o644);
    let tty = libc::makedev(5, 0) as u32;
    assert_eq!(
        h.mknod(ROOT, "tty", libc::S_IFCHR | 0o4666, tty)
            .unwrap_err(),
        libc::EPERM
    );
    assert!(!h.host("tty").exists());
    // The overlayfs whiteout (0:0 character device) is allowed.
    let wh = h.mknod(ROOT, "wh", libc::S_IFCHR, 0).unwrap();
    assert_eq!(wh.attr.rdev, 0);
    assert_eq!(h.metric(|m| &m.refused), 1);
    still_serves(&mut h, "after");
}

#[test]
fn writing_a_setuid_file_clears_its_bits_as_for_an_unprivileged_writer() {
    let mut h = FsHarness::new();
    for n in ["su", "sg", "trunc", "falloc", "ro"] {
        fs::write(h.host(n), b"#!/bin/sh\n").unwrap();
    }
    set_host_mode(&h, "su", 0o4755);
    set_host_mode(&h, "sg", 0o2755);
    set_host_mode(&h, "trunc", 0o6755);
    set_host_mode(&h, "falloc", 0o4755);
    set_host_mode(&h, "ro", 0o4755);
    for n in ["su", "sg"] {
        let node = h.lookup(ROOT, n).unwrap().nodeid;
        let fh = h.open(node, libc::O_RDWR).unwrap();
        assert_eq!(h.write(node, fh, 0, b"#!/bin/bash").unwrap(), 11);
        assert_eq!(host_mode(&h, n), 0o755, "{n}");
        assert_eq!(fs::read(h.host(n)).unwrap(), b"#!/bin/bash");
        assert_eq!(h.release(node, fh), 0);
    }
    let node = h.lookup(ROOT, "trunc").unwrap().nodeid;
    let truncate = SetattrIn {
        valid: SetattrValid::SIZE.bits(),
        size: 0,
        ..Default::default()
    };
    h.setattr(node, truncate).unwrap();
    assert_eq!(host_mode(&h, "trunc"), 0o755);
    let node = h.lookup(ROOT, "falloc").unwrap().nodeid;
    let fh = h.open(node, libc::O_RDWR).unwrap();
    assert_eq!(h.fallocate(node, fh, 0, 0, 4096), 0);
    assert_eq!(host_mode(&h, "falloc"), 0o755);
    // Reading changes nothing: the host's setuid file stays as it is.
    let node = h.lookup(ROOT, "ro").unwrap().nodeid;
    let fh = h.open(node, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(node, fh, 0, 64).unwrap(), b"#!/bin/sh\n");
    assert_eq!(host_mode(&h, "ro"), 0o4755);
    assert_eq!(h.metric(|m| &m.mode_bits_stripped), 4);
    still_serves(&mut h, "after");
}

#[test]
fn setxattr_security_capability_gets_eperm_and_sets_nothing() {
    // cap_net_raw+ep, as setcap writes it (VFS_CAP_REVISION_2).
    let cap: [u8; 20] = [
        0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    for xattr in [true, false] {
        let mut h = FsHarness::with_config(|c| c.xattr = xattr);
        fs::write(h.host("ping"), b"\x7fELF").unwrap();
        let node = h.lookup(ROOT, "ping").unwrap().nodeid;
        assert_eq!(
            h.setxattr(node, "security.capability", &cap),
            libc::EPERM,
            "xattr={xattr}"
        );
        assert_eq!(
            host_xattr(&h, "ping", "security.capability"),
            Err(libc::ENODATA)
        );
        assert_eq!(h.metric(|m| &m.refused), 1);
        // Other attributes pass through when xattrs are on.
        let other = h.setxattr(node, "user.note", b"hello");
        if xattr {
            assert_eq!(other, 0);
            assert_eq!(host_xattr(&h, "ping", "user.note").unwrap(), b"hello");
        } else {
            assert_eq!(other, libc::ENOSYS);
        }
        still_serves(&mut h, "after");
    }
}
