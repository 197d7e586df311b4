//! A hostile or broken guest and host: rejected, counted, and never able to
//! stop the device from serving everybody else.

use std::io::Write;
use std::os::unix::net::UnixStream;

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use vm_memory::Bytes;

use super::*;
use crate::log_budget::capture::logged;
use crate::virtio::test_utils::MEM_SIZE;
use crate::vsock::{VsockConfig, VsockDevice, VsockError, DEFAULT_HANDSHAKE_TIMEOUT};

// A working connection, to prove the device still serves after each abuse.
fn still_serves(h: &mut Harness, host: &mut UnixStream, local: u32, port: u32) {
    h.send(Hdr::guest(port, local, OP_RW), b"alive");
    let mut got = Vec::new();
    read_avail(host, &mut got);
    assert_eq!(got, b"alive");
}

#[test]
fn malformed_tx_chains_are_dropped_and_counted() {
    let mut h = Harness::new();
    let (mut host, local) = h.host_connect(90);
    let slot_addr = |h: &Harness, i| h.drv.buf_addr(TXQ, i).0;

    // Header descriptor shorter than a vsock header.
    h.send_raw(&[&[0u8; 20]]);
    // A descriptor loop: the head points at itself.
    let head = h.drv.free_slots(TXQ) as u16 * 2 - 2;
    let a = slot_addr(&h, head);
    h.drv
        .add_raw(TXQ, &[(a, HDR as u32, VRING_DESC_F_NEXT as u16, head)])
        .unwrap();
    h.drv.kick(TXQ);
    // A chain that ends at a device-writable descriptor.
    h.drv.add_chain(TXQ, &[&[0u8; 30]], &[64]).unwrap();
    h.drv.kick(TXQ);
    h.pump();
    h.drv.take_used(TXQ);

    assert_eq!(h.metric(|m| &m.malformed), 3);
    assert!(h.recv().is_empty(), "no header, nobody to reset");
    still_serves(&mut h, &mut host, local, 90);
}

fn assert_reset(h: &mut Harness, host: &mut UnixStream, port: u32, local: u32) {
    let rst = h
        .recv()
        .into_iter()
        .find(|(p, _)| p.op == OP_RST)
        .expect("the guest got an RST");
    assert_eq!((rst.0.src_port, rst.0.dst_port), (local, port));
    assert_eq!(
        read_avail(host, &mut Vec::new()),
        None,
        "host stream closed"
    );
    assert_eq!(h.conns(), 0);
}

#[test]
fn a_header_claiming_more_than_its_chain_resets_that_connection_with_a_warning() {
    let mut h = Harness::new();
    let (mut host, local) = h.host_connect(93);
    let mut hdr = Hdr::guest(93, local, OP_RW);
    hdr.len = 8192;
    let log = logged(|| h.send_raw(&[&hdr.bytes(), &[7u8; 4096]]));
    assert!(
        log.contains("WARN") && log.contains("malformed TX chain"),
        "{log}"
    );
    assert_reset(&mut h, &mut host, 93, local);
    let (mut host, local) = h.host_connect(93);
    still_serves(&mut h, &mut host, local, 93);
}

#[test]
fn payload_past_guest_memory_or_past_the_cap_resets_the_connection() {
    let mut h = Harness::new();
    let (mut host, local) = h.host_connect(94);
    let mut hdr = Hdr::guest(94, local, OP_RW);
    hdr.len = 4096;
    let head = h.drv.next_head(TXQ).unwrap();
    let a = h.drv.buf_addr(TXQ, head).0;
    h.drv
        .mem
        .write_slice(&hdr.bytes(), vm_memory::GuestAddress(a))
        .unwrap();
    let descs = [
        (a, HDR as u32, VRING_DESC_F_NEXT as u16, head + 1),
        (MEM_SIZE - 16, 4096, 0, 0),
    ];
    h.drv.add_raw(TXQ, &descs).unwrap();
    h.drv.kick(TXQ);
    h.pump();
    h.drv.take_used(TXQ);
    assert_reset(&mut h, &mut host, 94, local);

    let (mut host, local) = h.host_connect(94);
    let mut hdr = Hdr::guest(94, local, OP_RW);
    hdr.len = MAX_PKT_DATA + 1;
    h.send_raw(&[&hdr.bytes(), b"x"]);
    assert_reset(&mut h, &mut host, 94, local);
    assert_eq!(h.metric(|m| &m.malformed), 2);
    let (mut host, local) = h.host_connect(94);
    still_serves(&mut h, &mut host, local, 94);
}

#[test]
fn bad_header_fields_get_rst_or_are_dropped() {
    let mut h = Harness::new();
    let (mut host, local) = h.host_connect(91);
    h.send(
        Hdr {
            op: 99,
            ..Hdr::guest(91, 4444, 0)
        },
        &[],
    );
    h.send(
        Hdr {
            type_: 2,
            ..Hdr::guest(91, 4445, OP_REQUEST)
        },
        &[],
    );
    h.send(
        Hdr {
            src_cid: 77,
            ..Hdr::guest(91, local, OP_RW)
        },
        b"spoofed",
    );
    let rsts: Vec<u32> = h
        .recv()
        .iter()
        .filter(|(p, _)| p.op == OP_RST)
        .map(|(p, _)| p.src_port)
        .collect();
    assert_eq!(rsts, [4444, 4445]);
    assert_eq!(h.metric(|m| &m.malformed), 3);
    still_serves(&mut h, &mut host, local, 91);
}

#[test]
fn malformed_rx_buffers_are_skipped() {
    let mut h = Harness::new();
    let (mut host, _) = h.host_connect(92);
    // Replace the offered RX buffers with read-only ones.
    h.drv.write_reg(0x70, 0);
    h.drv.init();
    while h
        .drv
        .add_readable(RXQ, &[&[0u8; HDR], &[0u8; 16]])
        .is_some()
    {}
    h.drv.kick(RXQ);
    let mut host2 = UnixStream::connect(&h.path).unwrap();
    host2.write_all(b"CONNECT 5\n").unwrap();
    h.pump();
    assert!(h.metric(|m| &m.malformed) > 0);
    // The device reset closed the first host connection.
    assert_eq!(read_avail(&mut host, &mut Vec::new()), None);
}

#[test]
fn bad_connect_lines_close_the_host_connection() {
    let mut h = Harness::new();
    for line in [&b"HELLO 52\n"[..], b"CONNECT notaport\n", &[b'9'; 40][..]] {
        let mut s = UnixStream::connect(&h.path).unwrap();
        s.write_all(line).unwrap();
        h.pump();
        s.set_nonblocking(true).unwrap();
        assert_eq!(read_avail(&mut s, &mut Vec::new()), None, "{line:?}");
    }
    assert!(h.recv().is_empty());
    assert_eq!(h.conns(), 0);
}

#[test]
fn connect_to_a_port_the_guest_does_not_listen_on_closes_the_host() {
    let mut h = Harness::new();
    let mut s = UnixStream::connect(&h.path).unwrap();
    s.write_all(b"CONNECT 4000\n").unwrap();
    let req = h.recv()[0].0;
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 4000));
    h.send(Hdr::guest(4000, req.src_port, OP_RST), &[]);
    s.set_nonblocking(true).unwrap();
    assert_eq!(read_avail(&mut s, &mut Vec::new()), None);
    assert_eq!(h.conns(), 0);
    assert!(h.recv().is_empty(), "no RST answers an RST");
}

#[test]
fn connection_limit_is_enforced() {
    let mut h = Harness::with_max_conns(2);
    let _a = h.host_connect(1);
    let _b = h.host_connect(2);
    let mut c = UnixStream::connect(&h.path).unwrap();
    c.write_all(b"CONNECT 3\n").unwrap();
    h.pump();
    c.set_nonblocking(true).unwrap();
    assert_eq!(read_avail(&mut c, &mut Vec::new()), None);
    assert!(h.recv().is_empty());
    assert_eq!(h.conns(), 2);
}

#[test]
fn a_client_silent_past_the_handshake_timeout_loses_its_slot() {
    // Timeout zero: any pending handshake is stale once the next client comes.
    let mut h = Harness::with_limits(1, std::time::Duration::ZERO);
    let mut idle = UnixStream::connect(&h.path).unwrap();
    h.pump();
    let (mut host, local) = h.host_connect(7);
    idle.set_nonblocking(true).unwrap();
    assert_eq!(
        read_avail(&mut idle, &mut Vec::new()),
        None,
        "idle client closed"
    );
    h.send(Hdr::guest(7, local, OP_RW), b"served");
    let mut got = Vec::new();
    read_avail(&mut host, &mut got);
    assert_eq!(got, b"served");
}

fn device_at(path: &std::path::Path) -> Result<VsockDevice, VsockError> {
    VsockDevice::new(&VsockConfig {
        guest_cid: CID,
        uds_path: path.to_owned(),
        max_connections: 4,
        handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
    })
}

#[test]
fn a_stale_socket_is_replaced_but_a_live_one_or_a_file_is_refused() {
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/husk-vsock-").unwrap();
    // Left behind by a process that is gone: nobody accepts on it.
    let stale = dir.as_path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let dev = device_at(&stale).expect("stale socket replaced");
    UnixStream::connect(&stale).expect("the new device listens");
    drop(dev);

    let live = dir.as_path().join("live.sock");
    let _owner = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let err = device_at(&live).err().expect("live socket refused");
    assert!(err.to_string().contains("in use"), "{err}");
    UnixStream::connect(&live).expect("the owner still listens");

    let file = dir.as_path().join("file");
    std::fs::write(&file, b"keep me").unwrap();
    let err = device_at(&file).err().expect("regular file refused");
    assert!(err.to_string().contains("not a Unix socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}
