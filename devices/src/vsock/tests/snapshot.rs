//! A device's quiet connections survive a snapshot: a device restored with
//! them hands one to the first host client asking for its guest port, with
//! the credit counters where the snapshot left them; a busy device saves
//! nothing (its restored guest gets a transport reset instead).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use super::*;
use crate::virtio::{DeviceState, SnapshotError, VirtioDevice};
use crate::vsock::{SavedConnection, VsockSnapshot, DEFAULT_HANDSHAKE_TIMEOUT};

const EVQ: usize = 2;

fn state_of(h: &Harness) -> Option<DeviceState> {
    h.dev.lock().unwrap().device_state()
}

/// A host client's CONNECT, answered at once: the `OK` line's port.
fn connect_line(h: &mut Harness, port: u32) -> (UnixStream, String) {
    let mut s = UnixStream::connect(&h.path).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    h.pump();
    let mut line = [0u8; 64];
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let n = s.read(&mut line).unwrap();
    (s, String::from_utf8_lossy(&line[..n]).into_owned())
}

/// A restored device holding `saved`; returns the harness and the event
/// buffer the guest offered (to see whether a transport reset used it).
fn restored_with(saved: &VsockSnapshot) -> Harness {
    let mut h = Harness::new();
    h.drv.add_writable(EVQ, &[4]).unwrap();
    h.drv.kick(EVQ);
    h.pump();
    let state = DeviceState::Vsock(saved.clone());
    h.dev.lock().unwrap().restored(Some(&state)).unwrap();
    h
}

#[test]
fn a_quiet_connection_is_taken_over_by_the_first_client_after_a_restore() {
    let mut before = Harness::new();
    let (mut host, local) = before.host_connect(1024);
    host.write_all(b"request").unwrap();
    let got = before.recv();
    assert_eq!(got[0].1, b"request");
    let mut reply = Hdr::guest(1024, local, OP_RW);
    reply.fwd_cnt = 7;
    before.send(reply, b"reply!");
    read_avail(&mut host, &mut Vec::new());
    let Some(DeviceState::Vsock(saved)) = state_of(&before) else {
        panic!("a quiet device saves its connections");
    };
    let want = SavedConnection {
        local_port: local,
        peer_port: 1024,
        fwd_cnt: 6,
        last_fwd_cnt_sent: 0,
        rx_cnt: 7,
        peer_buf_alloc: 256 * 1024,
        peer_fwd_cnt: 7,
    };
    assert_eq!(saved.connections, [want]);

    let mut after = restored_with(&saved);
    let (mut client, line) = connect_line(&mut after, 1024);
    assert_eq!(line, format!("OK {local}\n"));
    assert!(after.drv.take_used(EVQ).is_empty(), "no transport reset");
    client.write_all(b"next").unwrap();
    let pkts = after.recv();
    assert_eq!(pkts.len(), 1, "no handshake, only the data: {pkts:?}");
    let (hdr, data) = &pkts[0];
    assert_eq!((hdr.op, hdr.src_port, hdr.dst_port), (OP_RW, local, 1024));
    assert_eq!((data.as_slice(), hdr.fwd_cnt), (&b"next"[..], 6));
    after.send(Hdr::guest(1024, local, OP_RW), b"answer");
    client.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    read_avail(&mut client, &mut got);
    assert_eq!(got, b"answer");

    // The parked connection is used up: the next client makes its own.
    UnixStream::connect(&after.path)
        .unwrap()
        .write_all(b"CONNECT 1024\n")
        .unwrap();
    let pkts = after.recv();
    assert!(
        pkts.iter()
            .any(|(h, _)| h.op == OP_REQUEST && h.src_port != local),
        "{pkts:?}"
    );
}

#[test]
fn a_busy_device_saves_nothing() {
    let mut h = Harness::new();
    let (_client, _) = connect_line_pending(&mut h, 1024);
    assert_eq!(state_of(&h), None, "a handshake in flight");

    let mut h = Harness::without_rx_buffers(8, DEFAULT_HANDSHAKE_TIMEOUT);
    assert!(
        matches!(state_of(&h), Some(DeviceState::Vsock(s)) if s.connections.is_empty()),
        "an idle device saves an empty list"
    );
    let mut s = UnixStream::connect(&h.path).unwrap();
    s.write_all(b"CONNECT 5\n").unwrap();
    h.pump();
    assert_eq!(state_of(&h), None, "a REQUEST owed to the guest");
}

/// A CONNECT the guest has not answered.
fn connect_line_pending(h: &mut Harness, port: u32) -> (UnixStream, Vec<(Hdr, Vec<u8>)>) {
    let mut s = UnixStream::connect(&h.path).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let pkts = h.recv();
    (s, pkts)
}

#[test]
fn guest_packets_on_a_parked_connection() {
    let parked = |local| SavedConnection {
        local_port: local,
        peer_port: 1024,
        fwd_cnt: 0,
        last_fwd_cnt_sent: 0,
        rx_cnt: 0,
        peer_buf_alloc: 4096,
        peer_fwd_cnt: 0,
    };
    let saved = VsockSnapshot {
        connections: vec![parked(1 << 30), parked((1 << 30) + 1)],
    };
    let mut h = restored_with(&saved);
    // Credit news keeps the first; data nobody can take yet resets the second.
    let mut credit = Hdr::guest(1024, 1 << 30, OP_CREDIT_UPDATE);
    credit.buf_alloc = 8192;
    h.send(credit, &[]);
    h.send(Hdr::guest(1024, (1 << 30) + 1, OP_RW), b"early");
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!((pkts[0].0.op, pkts[0].0.src_port), (OP_RST, (1 << 30) + 1));
    let (_c, line) = connect_line(&mut h, 1024);
    assert_eq!(line, format!("OK {}\n", 1 << 30));
}

#[test]
fn a_saved_state_naming_a_connection_twice_is_refused() {
    let c = SavedConnection {
        local_port: 1 << 30,
        peer_port: 1024,
        fwd_cnt: 0,
        last_fwd_cnt_sent: 0,
        rx_cnt: 0,
        peer_buf_alloc: 0,
        peer_fwd_cnt: 0,
    };
    let h = Harness::new();
    let state = DeviceState::Vsock(VsockSnapshot {
        connections: vec![c, c],
    });
    let err = h.dev.lock().unwrap().restored(Some(&state)).unwrap_err();
    assert!(
        matches!(&err, SnapshotError::DeviceState(m) if m.contains("saved twice")),
        "{err}"
    );
}
