//! A hostile guest driver: malformed chains and requests get an error reply
//! or are dropped, and the device keeps serving (checked after each abuse).

use std::fs;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::test_utils::MEM_SIZE;

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

// A valid request after the abuse, to prove the device still serves.
fn still_serves(h: &mut FsHarness) {
    fs::write(h.host("alive"), b"yes").unwrap();
    let entry = h.lookup(ROOT, "alive").unwrap();
    let fh = h.open(entry.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(entry.nodeid, fh, 0, 16).unwrap(), b"yes");
    assert_eq!(h.release(entry.nodeid, fh), 0);
}

// Writes `bytes` into the buffer of descriptor `idx` and returns its address.
fn stage(h: &FsHarness, q: usize, idx: u16, bytes: &[u8]) -> u64 {
    let addr = h.drv.buf_addr(q, idx);
    h.drv.mem.write_slice(bytes, addr).unwrap();
    addr.0
}

#[test]
fn a_truncated_header_is_dropped() {
    let mut h = FsHarness::new();
    let req = request(Opcode::Getattr, ROOT, 7, &[]);
    for cut in [0, 1, 20, 39] {
        let reply = h.send_on(REQUEST_QUEUE, &[&req[..cut.max(1)]], &[4096]);
        assert_eq!(reply.used_len, 0, "header cut to {cut} bytes");
        still_serves(&mut h);
    }
    assert_eq!(h.metric(|m| &m.dropped_chains), 4);
}

#[test]
fn header_lengths_beyond_the_buffer_get_an_error_reply() {
    let mut h = FsHarness::new();
    for claimed in [100u32, 1 << 20, u32::MAX] {
        let mut req = request(Opcode::Lookup, ROOT, 9, &[&name("x")]);
        req[..4].copy_from_slice(&claimed.to_le_bytes());
        let reply = h.send_on(REQUEST_QUEUE, &[&req], &[4096]);
        assert_eq!(reply.used_len, OUT_HEADER_LEN as u32, "len {claimed}");
        assert_eq!(reply.header.unique, 9);
        assert_ne!(reply.errno(), 0, "len {claimed}");
        still_serves(&mut h);
    }
}

#[test]
fn truncated_arguments_and_absurd_sizes_get_error_replies() {
    let mut h = FsHarness::new();
    // SETATTR with half its argument struct.
    let reply = h.call(Opcode::Setattr, ROOT, &[&[0u8; 20]]);
    assert_ne!(reply.errno(), 0);
    // A name without its NUL terminator.
    let reply = h.call(Opcode::Lookup, ROOT, &[b"noterm"]);
    assert_ne!(reply.errno(), 0);
    // WRITE claiming more data than the request carries: a short write of
    // what is there, never bytes from beyond the guest's buffer.
    fs::write(h.host("w"), b"").unwrap();
    let node = h.lookup(ROOT, "w").unwrap().nodeid;
    let fh = h.open(node, libc::O_RDWR).unwrap();
    let args = WriteIn {
        fh,
        size: 1 << 20,
        ..Default::default()
    };
    let reply = h.call(Opcode::Write, node, &[args.as_slice(), b"short"]);
    assert_eq!(reply.ok::<WriteOut>().unwrap().size, 5);
    // READ of 4 GiB into a 4 KiB buffer.
    let args = ReadIn {
        fh,
        size: u32::MAX,
        ..Default::default()
    };
    let reply = h.call(Opcode::Read, node, &[args.as_slice()]);
    assert_ne!(reply.errno(), 0);
    assert_eq!(fs::read(h.host("w")).unwrap(), b"short");
    still_serves(&mut h);
}

#[test]
fn unknown_opcodes_and_node_ids_get_error_replies() {
    let mut h = FsHarness::new();
    for op in [0u32, 7, 19, 50, 999, u32::MAX] {
        let mut req = request(Opcode::Getattr, ROOT, 11, &[]);
        req[4..8].copy_from_slice(&op.to_le_bytes());
        let reply = h.send_on(REQUEST_QUEUE, &[&req], &[4096]);
        assert_eq!(reply.errno(), libc::ENOSYS, "opcode {op}");
        still_serves(&mut h);
    }
    assert_eq!(h.getattr(0xdead_beef).unwrap_err(), libc::EBADF);
    // SETUPMAPPING without a DAX window.
    let reply = h.call(Opcode::SetupMapping, ROOT, &[&[0u8; 40]]);
    assert_eq!(reply.errno(), libc::EINVAL);
    still_serves(&mut h);
}

#[test]
fn buffers_outside_guest_memory_are_dropped() {
    let mut h = FsHarness::new();
    let q = REQUEST_QUEUE;
    let req = request(
        Opcode::Getattr,
        ROOT,
        13,
        &[GetattrIn::default().as_slice()],
    );
    // Readable header straddling the end of guest memory.
    let head = h.drv.next_head(q).unwrap();
    let out = h.drv.buf_addr(q, head + 1).0;
    let descs = [(MEM_SIZE - 16, 64, NEXT, head + 1), (out, 4096, WRITE, 0)];
    assert_eq!(h.send_raw(q, &descs), 0);
    still_serves(&mut h);
    // A valid request whose reply buffer lies beyond guest memory.
    let head = h.drv.next_head(q).unwrap();
    let at = stage(&h, q, head, &req);
    let descs = [
        (at, req.len() as u32, NEXT, head + 1),
        (MEM_SIZE + 4096, 4096, WRITE, 0),
    ];
    assert_eq!(h.send_raw(q, &descs), 0);
    still_serves(&mut h);
    assert_eq!(h.metric(|m| &m.dropped_chains), 2);
}

#[test]
fn descriptor_loops_and_missing_reply_buffers_are_survived() {
    let mut h = FsHarness::new();
    let q = REQUEST_QUEUE;
    let req = request(
        Opcode::Getattr,
        ROOT,
        15,
        &[GetattrIn::default().as_slice()],
    );
    // The head's next points at itself.
    let head = h.drv.next_head(q).unwrap();
    let at = stage(&h, q, head, &req);
    h.send_raw(q, &[(at, req.len() as u32, NEXT, head)]);
    still_serves(&mut h);
    // A two-descriptor cycle with a writable buffer in it.
    let head = h.drv.next_head(q).unwrap();
    let at = stage(&h, q, head, &req);
    let out = h.drv.buf_addr(q, head + 1).0;
    h.send_raw(
        q,
        &[
            (at, req.len() as u32, NEXT, head + 1),
            (out, 64, WRITE | NEXT, head),
        ],
    );
    still_serves(&mut h);
    // No writable buffer at all, and one too small for the reply.
    assert_eq!(h.send_on(q, &[&req], &[]).used_len, 0);
    assert_eq!(h.send_on(q, &[&req], &[8]).used_len, 0);
    still_serves(&mut h);
}

#[test]
fn a_request_split_across_many_descriptors_is_served() {
    let mut h = FsHarness::new();
    fs::write(h.host("split"), b"0123456789").unwrap();
    let unique = h.next_unique();
    let req = request(Opcode::Lookup, ROOT, unique, &[&name("split")]);
    let parts: Vec<&[u8]> = req.chunks(7).collect();
    let reply = h.send_on(REQUEST_QUEUE, &parts, &[10, 6, 200]);
    assert_eq!(reply.header.unique, unique);
    let entry: EntryOut = reply.ok().unwrap();
    assert_eq!(entry.attr.size, 10);
    // The hiprio queue serves ordinary requests too.
    let req = request(
        Opcode::Getattr,
        entry.nodeid,
        99,
        &[GetattrIn::default().as_slice()],
    );
    let reply = h.send_on(HIPRIO_QUEUE, &[&req], &[4096]);
    assert_eq!(reply.ok::<AttrOut>().unwrap().attr.size, 10);
}

#[test]
fn a_reset_drops_every_inode_and_a_new_init_serves_again() {
    let mut h = FsHarness::new();
    fs::write(h.host("f"), b"x").unwrap();
    let node = h.lookup(ROOT, "f").unwrap().nodeid;
    h.drv.write_reg(0x70, 0);
    h.drv.init();
    h.pump();
    h.init();
    assert_eq!(
        h.getattr(node).unwrap_err(),
        libc::EBADF,
        "old node ids are gone"
    );
    still_serves(&mut h);
}

#[test]
fn a_repeated_init_and_requests_with_odd_credentials_do_not_break_the_device() {
    let mut h = FsHarness::new();
    fs::write(h.host("f"), b"x").unwrap();
    let node = h.lookup(ROOT, "f").unwrap().nodeid;
    assert_eq!(h.init().major, 7);
    still_serves(&mut h);
    assert_eq!(h.getattr(node).unwrap().size, 1);
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping the guest-uid part: acting as guest uid 1000 needs host root");
        return;
    }
    // A request from an unprivileged guest user creates a file it owns.
    let unique = h.next_unique();
    let args = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    let mut req = request(
        Opcode::Mkdir,
        ROOT,
        unique,
        &[args.as_slice(), &name("userdir")],
    );
    let header = InHeader {
        uid: 1000,
        gid: 1000,
        ..*InHeader::from_slice(&req[..40]).unwrap()
    };
    req[..40].copy_from_slice(header.as_slice());
    let reply = h.send_on(REQUEST_QUEUE, &[&req], &[4096]);
    let entry: EntryOut = reply.ok().unwrap();
    assert_eq!((entry.attr.uid, entry.attr.gid), (1000, 1000));
    let meta = std::os::unix::fs::MetadataExt::uid(&fs::metadata(h.host("userdir")).unwrap());
    assert_eq!(meta, 1000);
    // The event loop's thread is back to root afterwards.
    // SAFETY: geteuid has no memory effects.
    assert_eq!(unsafe { libc::geteuid() }, 0);
    still_serves(&mut h);
}

// xorshift64: deterministic pseudo-random bytes, so a failure reproduces.
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn random_requests_for_every_opcode_never_stop_the_device() {
    let mut h = FsHarness::new();
    fs::create_dir(h.host("d")).unwrap();
    fs::write(h.host("d/f"), b"payload").unwrap();
    let d = h.lookup(ROOT, "d").unwrap().nodeid;
    let f = h.lookup(d, "f").unwrap().nodeid;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..40 {
        for op in 1..=50u32 {
            let len = (next_rand(&mut seed) % 160) as usize;
            let body: Vec<u8> = (0..len).map(|_| next_rand(&mut seed) as u8).collect();
            let nodeid = [ROOT, d, f, next_rand(&mut seed)][round % 4];
            let mut req = request(Opcode::Getattr, nodeid, 1000 + round as u64, &[&body]);
            req[4..8].copy_from_slice(&op.to_le_bytes());
            let q = if op % 7 == 0 {
                HIPRIO_QUEUE
            } else {
                REQUEST_QUEUE
            };
            h.send_on(q, &[&req], &[4096]);
        }
    }
    assert!(h.metric(|m| &m.requests) >= 2000);
    h.init();
    still_serves(&mut h);
}

#[test]
fn requests_made_available_before_driver_ok_are_served_on_activation() {
    let mut h = FsHarness::new();
    h.drv.write_reg(0x70, 0);
    h.drv.init_queues();
    let unique = h.next_unique();
    let init = InitIn {
        major: 7,
        minor: 36,
        ..Default::default()
    };
    let req = request(Opcode::Init, 0, unique, &[init.as_slice(), &[0u8; 48]]);
    // No kick: the device learns of the request from its activation alone.
    let descs = h.drv.add_chain(REQUEST_QUEUE, &[&req], &[4096]).unwrap();
    h.drv.set_driver_ok();
    h.pump();
    let used = h.drv.take_used(REQUEST_QUEUE);
    assert_eq!(used, [(descs[0], (OUT_HEADER_LEN + 64) as u32)]);
    let out = h.drv.read_buf(REQUEST_QUEUE, descs[1], OUT_HEADER_LEN);
    assert_eq!(OutHeader::from_slice(&out).unwrap().unique, unique);
    still_serves(&mut h);
}

#[test]
fn opcodes_the_abi_skips_are_safe_with_log_records_bridged_at_every_level() {
    // fuse-backend-rs transmutes the opcode for a trace record; the bridge
    // never enables trace, so the transmute is never evaluated.
    crate::log_budget::capture::bridge_log_records();
    let mut h = FsHarness::new();
    let log = crate::log_budget::capture::logged_at(tracing::Level::TRACE, || {
        for op in [0u32, 7, 19] {
            let mut req = request(Opcode::Getattr, ROOT, 11, &[]);
            req[4..8].copy_from_slice(&op.to_le_bytes());
            let reply = h.send_on(REQUEST_QUEUE, &[&req], &[4096]);
            assert_eq!(reply.errno(), libc::ENOSYS, "opcode {op}");
        }
    });
    assert!(!log.contains("new req"), "{log}");
    still_serves(&mut h);
}

/// A READDIR may ask for up to 4 GiB when its writable buffers are that
/// big (descriptors may share memory); the host reads at most 1 MiB of
/// directory per request (the passthrough allocates what is asked for), a
/// shorter answer the guest reads on from.
#[test]
fn readdir_reads_at_most_a_mebibyte_of_directory_whatever_it_asks() {
    let mut h = FsHarness::new();
    // 8,000 names of 150 bytes: about 1.4 MiB of directory entries.
    let total = 8000;
    for i in 0..total {
        fs::write(h.host(format!("{i:0>150}")), b"").unwrap();
    }
    let fh = h
        .call(Opcode::Opendir, ROOT, &[OpenIn::default().as_slice()])
        .ok::<OpenOut>()
        .unwrap()
        .fh;
    let asked = 2 << 20;
    let args = ReadIn {
        fh,
        size: asked,
        ..Default::default()
    };
    let reply = h.call_with(
        Opcode::Readdir,
        ROOT,
        &[args.as_slice()],
        asked as usize + 4096,
    );
    assert_eq!(reply.errno(), 0);
    assert!(reply.body.len() <= 1 << 20, "{} bytes", reply.body.len());
    let names = parse_dirents(&reply.body, false);
    assert!(
        !names.is_empty() && names.len() < total,
        "{} of {total} entries in one reply",
        names.len()
    );
    still_serves(&mut h);
}

/// A request whose readable buffers hold more than its header's length is
/// refused before the server sizes anything by them: FUSE_IOCTL allocated
/// and filled its `in_size` (up to 4 GiB) from whatever the buffers held.
#[test]
fn readable_buffers_longer_than_the_request_get_an_error_reply() {
    let mut h = FsHarness::new();
    let q = REQUEST_QUEUE;
    fs::write(h.host("i"), b"").unwrap();
    let node = h.lookup(ROOT, "i").unwrap().nodeid;
    let fh = h.open(node, libc::O_RDONLY).unwrap();
    // fuse_ioctl_in: fh, flags, cmd, arg, in_size, out_size.
    let ioctl = |in_size: u32| -> Vec<u8> {
        [
            &fh.to_le_bytes()[..],
            &0u32.to_le_bytes(),
            &0x5401u32.to_le_bytes(),
            &0u64.to_le_bytes(),
            &in_size.to_le_bytes(),
            &0u32.to_le_bytes(),
        ]
        .concat()
    };
    let head = h.drv.next_head(q).unwrap();
    let req = request(Opcode::Ioctl, node, 21, &[&ioctl(16 << 20)]);
    let at = stage(&h, q, head, &req);
    let out = h.drv.buf_addr(q, head + 1).0;
    // One readable buffer of 32 MiB from the request on: the rest of it is
    // other guest memory, as it would be for descriptors sharing memory.
    let descs = [(at, 32 << 20, NEXT, head + 1), (out, 4096, WRITE, 0)];
    assert!(at + (32 << 20) <= MEM_SIZE);
    assert_eq!(h.send_raw(q, &descs), OUT_HEADER_LEN as u32);
    let reply: OutHeader = h.drv.mem.read_obj(GuestAddress(out)).unwrap();
    assert_eq!((reply.unique, reply.error), (21, -libc::EINVAL));
    // The same IOCTL with exactly its own bytes reaches the filesystem.
    let reply = h.call(Opcode::Ioctl, node, &[&ioctl(0)]);
    assert_ne!(reply.errno(), libc::EINVAL, "an ioctl of the right size");
    still_serves(&mut h);
}
