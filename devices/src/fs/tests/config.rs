//! The device's configuration: validation, config space, queues, cache
//! modes and xattr passthrough as the guest sees them.

use std::fs;
use std::path::PathBuf;

use super::*;
use crate::fs::{CacheMode, FsConfig, FsDevice, FsError, MAX_REQUEST_QUEUES};
use crate::virtio::VirtioDevice;
use fuse_backend_rs::abi::fuse_abi::{FsOptions, GetxattrOut, OpenOptions};

fn config(dir: PathBuf) -> FsConfig {
    FsConfig {
        tag: "rootfs".into(),
        shared_dir: dir,
        cache: CacheMode::Auto,
        xattr: false,
        dax_window: None,
        request_queues: 1,
        size_limit: None,
    }
}

#[test]
fn bad_configurations_are_refused_with_the_reason() {
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/husk-fs-").unwrap();
    let ok = config(dir.as_path().to_path_buf());
    let file = dir.as_path().join("file");
    fs::write(&file, b"").unwrap();
    type Expect = fn(&FsError) -> bool;
    let cases: Vec<(FsConfig, Expect)> = vec![
        (
            FsConfig {
                tag: String::new(),
                ..ok.clone()
            },
            |e| matches!(e, FsError::BadTag(_)),
        ),
        (
            FsConfig {
                tag: "x".repeat(37),
                ..ok.clone()
            },
            |e| matches!(e, FsError::BadTag(_)),
        ),
        (
            FsConfig {
                shared_dir: dir.as_path().join("missing"),
                ..ok.clone()
            },
            |e| matches!(e, FsError::SharedDir { .. }),
        ),
        (
            FsConfig {
                shared_dir: file,
                ..ok.clone()
            },
            |e| matches!(e, FsError::NotADirectory(_)),
        ),
        (
            FsConfig {
                request_queues: 0,
                ..ok.clone()
            },
            |e| matches!(e, FsError::RequestQueues(0)),
        ),
        (
            FsConfig {
                request_queues: MAX_REQUEST_QUEUES + 1,
                ..ok.clone()
            },
            |e| matches!(e, FsError::RequestQueues(_)),
        ),
        (
            FsConfig {
                dax_window: Some(0),
                ..ok.clone()
            },
            |e| matches!(e, FsError::DaxWindowSize(0)),
        ),
        (
            FsConfig {
                dax_window: Some(3 << 20),
                ..ok.clone()
            },
            |e| matches!(e, FsError::DaxWindowSize(_)),
        ),
        (
            FsConfig {
                size_limit: Some(0),
                ..ok.clone()
            },
            |e| matches!(e, FsError::ZeroSizeLimit),
        ),
    ];
    for (bad, expected) in cases {
        let err = FsDevice::new(&bad).err().expect("accepted a bad config");
        assert!(expected(&err), "{bad:?} gave {err}");
    }
    let tag36 = FsConfig {
        tag: "t".repeat(36),
        ..ok
    };
    assert!(FsDevice::new(&tag36).is_ok());
}

#[test]
fn config_space_holds_the_tag_and_the_request_queue_count() {
    let mut h = FsHarness::with_config(|c| {
        c.tag = "my-tag".into();
        c.request_queues = 3;
    });
    assert_eq!(h.drv.read_reg(0x008), 26, "device id");
    let mut space = [0xffu8; 44];
    bus_read(&mut h, 0x100, &mut space);
    assert_eq!(&space[..6], b"my-tag");
    assert!(space[6..36].iter().all(|&b| b == 0), "tag is NUL-padded");
    assert_eq!(u32::from_le_bytes(space[36..40].try_into().unwrap()), 3);
    assert_eq!(&space[40..], &[0; 4], "past the end reads as zero");
    // Four queues: hiprio + 3 request queues, each served.
    assert_eq!(h.dev.lock().unwrap().queue_max_sizes().len(), 4);
    fs::write(h.host("q"), b"abc").unwrap();
    for q in 1..=3 {
        let req = request(Opcode::Lookup, ROOT, 100 + q as u64, &[&name("q")]);
        let reply = h.send_on(q, &[&req], &[4096]);
        assert_eq!(reply.ok::<EntryOut>().unwrap().attr.size, 3, "queue {q}");
    }
}

fn bus_read(h: &mut FsHarness, offset: u64, data: &mut [u8]) {
    use crate::bus::BusDevice;
    h.drv.transport.read(offset, data);
}

#[test]
fn cache_modes_set_the_entry_and_attribute_timeouts() {
    for (mode, secs) in [
        (CacheMode::None, 0),
        (CacheMode::Auto, 1),
        (CacheMode::Always, 86_400),
    ] {
        let mut h = FsHarness::with_config(|c| c.cache = mode);
        fs::write(h.host("f"), b"").unwrap();
        let entry = h.lookup(ROOT, "f").unwrap();
        assert_eq!(
            (entry.entry_valid, entry.attr_valid),
            (secs, secs),
            "{mode:?}"
        );
    }
}

#[test]
fn a_missing_name_is_a_negative_entry_for_the_entry_timeout() {
    for (mode, secs) in [(CacheMode::Auto, 1), (CacheMode::Always, 86_400)] {
        let mut h = FsHarness::with_config(|c| c.cache = mode);
        let entry = h.lookup_reply(ROOT, "missing").unwrap();
        assert_eq!((entry.nodeid, entry.entry_valid), (0, secs), "{mode:?}");
    }
    // Without caching the guest must ask again: a plain ENOENT.
    let mut h = FsHarness::with_config(|c| c.cache = CacheMode::None);
    assert_eq!(h.lookup_reply(ROOT, "missing").unwrap_err(), libc::ENOENT);
}

#[test]
fn auto_and_always_keep_the_guest_page_cache_across_opens() {
    // Without KEEP_CACHE the guest drops a file's pages at every open, so
    // every exec of a container's binary reads it again from the host.
    for (mode, expected) in [
        (CacheMode::None, OpenOptions::DIRECT_IO),
        (CacheMode::Auto, OpenOptions::KEEP_CACHE),
        (CacheMode::Always, OpenOptions::KEEP_CACHE),
    ] {
        let mut h = FsHarness::with_config(|c| c.cache = mode);
        // ...and drops them when it sees the host changed the file.
        let init = FsOptions::from_bits_truncate(u64::from(h.init_flags));
        assert!(init.contains(FsOptions::AUTO_INVAL_DATA), "{mode:?}");
        fs::write(h.host("f"), b"data").unwrap();
        let node = h.lookup(ROOT, "f").unwrap().nodeid;
        let out = h.open_out(node, libc::O_RDONLY).unwrap();
        assert_eq!(
            OpenOptions::from_bits_truncate(out.open_flags)
                & (OpenOptions::DIRECT_IO | OpenOptions::KEEP_CACHE),
            expected,
            "{mode:?}"
        );
    }
}

fn setxattr(h: &mut FsHarness, node: u64, key: &str, value: &[u8]) -> i32 {
    let args = [(value.len() as u32).to_le_bytes(), 0u32.to_le_bytes()].concat();
    h.status(Opcode::Setxattr, node, &[&args, &name(key), value])
}

#[test]
fn xattrs_pass_through_only_when_enabled() {
    let mut h = FsHarness::with_config(|c| c.xattr = true);
    fs::write(h.host("f"), b"").unwrap();
    let node = h.lookup(ROOT, "f").unwrap().nodeid;
    assert_eq!(setxattr(&mut h, node, "user.husk", b"on"), 0);
    let mut got = [0u8; 8];
    // SAFETY: getxattr writes at most `got.len()` bytes into `got`.
    let n = unsafe {
        let path = std::ffi::CString::new(h.host("f").to_str().unwrap()).unwrap();
        libc::getxattr(
            path.as_ptr(),
            c"user.husk".as_ptr(),
            got.as_mut_ptr().cast(),
            got.len(),
        )
    };
    assert_eq!(&got[..n as usize], b"on");
    let mut h = FsHarness::with_config(|c| c.xattr = false);
    fs::write(h.host("f"), b"").unwrap();
    let node = h.lookup(ROOT, "f").unwrap().nodeid;
    assert_eq!(setxattr(&mut h, node, "user.husk", b"on"), libc::ENOSYS);
}

/// GETXATTR or LISTXATTR's args: the guest's buffer size, then padding.
fn xattr_size(size: u32) -> Vec<u8> {
    [size.to_le_bytes(), 0u32.to_le_bytes()].concat()
}

/// A guest may ask for an xattr value or the name list with any buffer
/// size, up to 4 GiB; the device answers from a buffer of at most the
/// kernel's 64 KiB limit (the passthrough allocates what it is asked for),
/// and the answers are those of the kernel. The fuzz seed
/// `fs_request/listxattr_4gib` is the allocation's own check.
#[test]
fn xattr_reads_of_any_buffer_size_answer_as_the_kernel_does() {
    let mut h = FsHarness::with_config(|c| c.xattr = true);
    fs::write(h.host("f"), b"").unwrap();
    let node = h.lookup(ROOT, "f").unwrap().nodeid;
    assert_eq!(setxattr(&mut h, node, "user.husk", b"on"), 0);
    for size in [u32::MAX, 64 * 1024 + 1, 64 * 1024, 64] {
        let args = xattr_size(size);
        let value = h.call(Opcode::Getxattr, node, &[&args, &name("user.husk")]);
        assert_eq!(value.bytes(), Ok(b"on".to_vec()), "GETXATTR of {size}");
        let names = h.call(Opcode::Listxattr, node, &[&args]).bytes().unwrap();
        let names: Vec<&[u8]> = names.split(|&b| b == 0).collect();
        assert!(names.contains(&&b"user.husk"[..]), "LISTXATTR of {size}");
    }
    // Size 0 asks for the length.
    let len = h.call(
        Opcode::Getxattr,
        node,
        &[&xattr_size(0), &name("user.husk")],
    );
    assert_eq!(len.ok::<GetxattrOut>().map(|o| o.size), Ok(2));
    let too_small = h.call(
        Opcode::Getxattr,
        node,
        &[&xattr_size(1), &name("user.husk")],
    );
    assert_eq!(too_small.errno(), libc::ERANGE);
}
