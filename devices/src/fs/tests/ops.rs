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

#[test]
fn create_write_read_flush_fsync_release_round_trip_through_the_host_file() {
    let mut h = FsHarness::new();
    let (entry, fh) = h.create(ROOT, "data.bin", 0o640).unwrap();
    assert_eq!(entry.attr.mode & 0o777, 0o640);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(
        h.write(entry.nodeid, fh, 0, &data[..60_000]).unwrap(),
        60_000
    );
    assert_eq!(
        h.write(entry.nodeid, fh, 60_000, &data[60_000..]).unwrap(),
        40_000
    );
    let flush = FlushIn {
        fh,
        ..Default::default()
    };
    assert_eq!(
        h.status(Opcode::Flush, entry.nodeid, &[flush.as_slice()]),
        0
    );
    let fsync = FsyncIn {
        fh,
        ..Default::default()
    };
    assert_eq!(
        h.status(Opcode::Fsync, entry.nodeid, &[fsync.as_slice()]),
        0
    );
    assert_eq!(fs::read(h.host("data.bin")).unwrap(), data);
    // A read spanning several writable descriptors.
    assert_eq!(h.read(entry.nodeid, fh, 0, 100_000).unwrap(), data);
    assert_eq!(
        h.read(entry.nodeid, fh, 99_990, 4096).unwrap(),
        &data[99_990..]
    );
    assert_eq!(h.release(entry.nodeid, fh), 0);
    // After release the handle is gone.
    assert_eq!(h.read(entry.nodeid, fh, 0, 10).unwrap_err(), libc::EBADF);
}

#[test]
fn open_reads_a_host_file_and_sees_host_changes_with_cache_none() {
    let mut h = FsHarness::new();
    fs::write(h.host("f"), b"first").unwrap();
    let node = h.lookup(ROOT, "f").unwrap().nodeid;
    let fh = h.open(node, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(node, fh, 0, 100).unwrap(), b"first");
    fs::write(h.host("f"), b"second!").unwrap();
    assert_eq!(h.read(node, fh, 0, 100).unwrap(), b"second!");
    assert_eq!(h.getattr(node).unwrap().size, 7);
    // Read-only handle: writes fail on the host fd.
    assert_eq!(h.write(node, fh, 0, b"x").unwrap_err(), libc::EBADF);
    assert_eq!(h.release(node, fh), 0);
}

#[test]
fn setattr_changes_mode_size_and_times_on_the_host() {
    let mut h = FsHarness::new();
    fs::write(h.host("f"), b"0123456789").unwrap();
    let node = h.lookup(ROOT, "f").unwrap().nodeid;
    let set = SetattrIn {
        valid: (SetattrValid::MODE | SetattrValid::SIZE | SetattrValid::MTIME).bits(),
        mode: libc::S_IFREG | 0o600,
        size: 4,
        mtime: 1_000_000,
        ..Default::default()
    };
    let attr = h.setattr(node, set).unwrap();
    assert_eq!(
        (attr.size, attr.mode & 0o777, attr.mtime),
        (4, 0o600, 1_000_000)
    );
    let meta = fs::metadata(h.host("f")).unwrap();
    assert_eq!(meta.len(), 4);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.mtime(), 1_000_000);
    assert_eq!(fs::read(h.host("f")).unwrap(), b"0123");
}

#[test]
fn mkdir_unlink_rmdir_and_rename_act_on_the_host() {
    let mut h = FsHarness::new();
    let dir = h.mkdir(ROOT, "d", 0o755).unwrap();
    assert!(h.host("d").is_dir());
    let (file, fh) = h.create(dir.nodeid, "a", 0o644).unwrap();
    h.write(file.nodeid, fh, 0, b"moved").unwrap();
    h.release(file.nodeid, fh);
    assert_eq!(h.rename(dir.nodeid, "a", ROOT, "b"), 0);
    assert!(!h.host("d/a").exists());
    assert_eq!(fs::read(h.host("b")).unwrap(), b"moved");
    assert_eq!(h.status(Opcode::Rmdir, ROOT, &[&name("d")]), 0);
    assert!(!h.host("d").exists());
    assert_eq!(h.unlink(ROOT, "b"), 0);
    assert!(!h.host("b").exists());
    assert_eq!(h.unlink(ROOT, "b"), libc::ENOENT);
}

#[test]
fn readdir_and_readdirplus_list_the_host_directory() {
    let mut h = FsHarness::new();
    fs::create_dir(h.host("sub")).unwrap();
    fs::write(h.host("one"), b"1").unwrap();
    fs::write(h.host("two"), b"22").unwrap();
    let mut names: Vec<_> = h
        .readdir(ROOT, false)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(names, ["one", "sub", "two"]);
    let plus = h.readdir(ROOT, true).unwrap();
    let two = plus.iter().find(|e| e.name == "two").unwrap();
    let entry = two.entry.unwrap();
    assert_eq!(entry.attr.size, 2);
    assert_eq!(entry.attr.ino, fs::metadata(h.host("two")).unwrap().ino());
    assert_ne!(entry.nodeid, 0, "readdirplus looked the entry up");
    assert_eq!(h.getattr(entry.nodeid).unwrap().size, 2);
}

#[test]
fn symlink_and_readlink_store_the_target_without_following_it() {
    let mut h = FsHarness::new();
    let link = h.symlink(ROOT, "l", "some/where/../else").unwrap();
    assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(
        fs::read_link(h.host("l")).unwrap().to_str(),
        Some("some/where/../else")
    );
    assert_eq!(h.readlink(link.nodeid).unwrap(), b"some/where/../else");
}

#[test]
fn link_makes_a_second_name_for_a_file_inside_the_share() {
    let mut h = FsHarness::new();
    fs::write(h.host("orig"), b"x").unwrap();
    let orig = h.lookup(ROOT, "orig").unwrap();
    let linked = h.link(orig.nodeid, ROOT, "alias").unwrap();
    assert_eq!(linked.attr.ino, orig.attr.ino);
    assert_eq!(fs::metadata(h.host("orig")).unwrap().nlink(), 2);
}

#[test]
fn statfs_reports_the_host_filesystem() {
    let mut h = FsHarness::new();
    let st = h.statfs().unwrap().st;
    // SAFETY: statvfs writes into the zeroed struct; the result is checked.
    let host = unsafe {
        let mut buf: libc::statvfs = std::mem::zeroed();
        let path = std::ffi::CString::new(h.root().to_str().unwrap()).unwrap();
        assert_eq!(libc::statvfs(path.as_ptr(), &mut buf), 0);
        buf
    };
    assert_eq!(st.bsize as u64, host.f_bsize);
    assert_eq!(st.blocks, host.f_blocks);
    assert_eq!(st.namelen as u64, host.f_namemax);
}

#[test]
fn forget_on_the_hiprio_queue_drops_the_inode_without_a_reply() {
    let mut h = FsHarness::new();
    fs::write(h.host("f"), b"x").unwrap();
    let node = h.lookup(ROOT, "f").unwrap().nodeid;
    assert!(h.getattr(node).is_ok());
    let reply = h.forget(node, 1);
    assert_eq!(reply.used_len, 0, "FORGET has no reply");
    assert_eq!(h.getattr(node).unwrap_err(), libc::EBADF);
    // Looking it up again gives a working node.
    let again = h.lookup(ROOT, "f").unwrap().nodeid;
    assert_eq!(h.getattr(again).unwrap().size, 1);
}

#[test]
fn mknod_makes_fifos_but_refuses_device_nodes() {
    let mut h = FsHarness::new();
    let fifo = h.mknod(ROOT, "pipe", libc::S_IFIFO | 0o600, 0).unwrap();
    assert_eq!(fifo.attr.mode & libc::S_IFMT, libc::S_IFIFO);
    let null_dev = libc::makedev(1, 3) as u32;
    let refused = h.mknod(ROOT, "null", libc::S_IFCHR | 0o666, null_dev);
    assert_eq!(refused.unwrap_err(), libc::EPERM);
    let disk = libc::makedev(8, 0) as u32;
    assert_eq!(
        h.mknod(ROOT, "disk", libc::S_IFBLK | 0o600, disk)
            .unwrap_err(),
        libc::EPERM
    );
    assert!(!h.host("null").exists() && !h.host("disk").exists());
    assert_eq!(h.metric(|m| &m.refused), 2);
}

#[test]
fn a_fifo_in_the_share_is_never_opened_by_the_host() {
    let mut h = FsHarness::new();
    let fifo = h.mknod(ROOT, "pipe", libc::S_IFIFO | 0o600, 0).unwrap();
    // Opening a FIFO on the host would block the event loop; it is refused.
    assert_eq!(
        h.open(fifo.nodeid, libc::O_RDONLY).unwrap_err(),
        libc::EBADF
    );
}

#[test]
fn byte_counters_follow_requests_and_replies() {
    let mut h = FsHarness::new();
    let (entry, fh) = h.create(ROOT, "counted.bin", 0o600).unwrap();
    let (in0, out0) = (h.metric(|m| &m.bytes_in), h.metric(|m| &m.bytes_out));
    let data = vec![7u8; 50_000];
    assert_eq!(h.write(entry.nodeid, fh, 0, &data).unwrap(), 50_000);
    let (in1, out1) = (h.metric(|m| &m.bytes_in), h.metric(|m| &m.bytes_out));
    // The request carries the data plus its FUSE headers; the reply is small.
    assert!(in1 - in0 > 50_000 && in1 - in0 < 50_200, "{}", in1 - in0);
    assert!(out1 > out0 && out1 - out0 < 100, "{}", out1 - out0);
    assert_eq!(h.read(entry.nodeid, fh, 0, 50_000).unwrap(), data);
    let (in2, out2) = (h.metric(|m| &m.bytes_in), h.metric(|m| &m.bytes_out));
    assert!(in2 - in1 < 200, "{}", in2 - in1);
    assert_eq!(out2 - out1, 50_000 + 16, "the data and its out header");
}

#[test]
fn requests_are_served_by_a_device_loop_on_its_own_thread() {
    let mut h = FsHarness::new();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 13) as u8).collect();
    fs::write(h.host("f"), &data).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    h.run_device_on_thread(move || tx.send(std::thread::current().id()).unwrap());
    let device_thread = rx.recv().unwrap();
    assert_ne!(device_thread, std::thread::current().id());
    let node = h.lookup(ROOT, "f").unwrap().nodeid;
    assert_eq!(h.getattr(node).unwrap().size, 200_000);
    let fh = h.open(node, libc::O_RDWR).unwrap();
    assert_eq!(h.read(node, fh, 1000, 65536).unwrap(), &data[1000..66536]);
    assert_eq!(h.write(node, fh, 0, b"threaded").unwrap(), 8);
    assert_eq!(&fs::read(h.host("f")).unwrap()[..8], b"threaded");
    assert_eq!(h.lookup(ROOT, "missing").unwrap_err(), libc::ENOENT);
}
