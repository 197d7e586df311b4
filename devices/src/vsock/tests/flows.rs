//! Connection flows a well-behaved guest and host go through.

use std::io::{ErrorKind, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixListener;

use super::*;
use crate::vsock::csm::TX_BUF_SIZE;

#[test]
fn host_initiated_connection_carries_data_both_ways() {
    let mut h = Harness::new();
    let (mut host, local) = h.host_connect(1234);
    host.write_all(b"ping").unwrap();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.dst_port, &pkts[0].1[..]),
        (OP_RW, 1234, &b"ping"[..])
    );
    assert_eq!(pkts[0].0.dst_cid, CID);
    h.send(Hdr::guest(1234, local, OP_RW), b"pong");
    let mut got = Vec::new();
    read_avail(&mut host, &mut got);
    assert_eq!(got, b"pong");
    assert_eq!(h.conns(), 1);
}

#[test]
fn host_data_over_several_buffers_arrives_whole_and_later_data_still_comes() {
    let mut h = Harness::new();
    let (mut host, local) = h.host_connect(1234);
    // Two full buffers and a bit: the device reads one buffer after
    // another without waiting for epoll, until the socket is empty.
    let data = pattern(2 * MAX_PKT_DATA as usize + 5, 9);
    host.write_all(&data).unwrap();
    let pkts = h.recv();
    let lens: Vec<usize> = pkts.iter().map(|(_, d)| d.len()).collect();
    let max = MAX_PKT_DATA as usize;
    assert_eq!(lens, [max, max, 5]);
    assert_eq!(payloads(&pkts), data);
    // The read that found the socket empty re-armed it: new data is seen.
    host.write_all(b"tail").unwrap();
    let pkts = h.recv();
    assert_eq!(payloads(&pkts), b"tail");
    assert!(pkts
        .iter()
        .all(|(hdr, _)| hdr.op == OP_RW && hdr.dst_port == 1234));
    h.send(Hdr::guest(1234, local, OP_RW), b"ok");
    let mut got = Vec::new();
    read_avail(&mut host, &mut got);
    assert_eq!(got, b"ok");
}

/// The packets' payloads, in order.
fn payloads(pkts: &[(Hdr, Vec<u8>)]) -> Vec<u8> {
    pkts.iter().flat_map(|(_, d)| d.iter().copied()).collect()
}

#[test]
fn guest_initiated_connection_is_bridged_to_the_port_socket() {
    let mut h = Harness::new();
    let listener = UnixListener::bind(format!("{}_5000", h.path.display())).unwrap();
    h.send(Hdr::guest(40000, 5000, OP_REQUEST), &[]);
    let pkts = h.recv();
    assert_eq!(pkts[0].0.op, OP_RESPONSE);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (5000, 40000));
    let (mut host, _) = listener.accept().unwrap();
    host.set_nonblocking(true).unwrap();
    h.send(Hdr::guest(40000, 5000, OP_RW), b"hello host");
    let mut got = Vec::new();
    read_avail(&mut host, &mut got);
    assert_eq!(got, b"hello host");
    host.write_all(b"hello guest").unwrap();
    let pkts = h.recv();
    assert_eq!(pkts[0].1, b"hello guest");
}

#[test]
fn guest_connect_to_a_port_nobody_listens_on_gets_rst() {
    let mut h = Harness::new();
    h.send(Hdr::guest(40000, 5001, OP_REQUEST), &[]);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (OP_RST, 40000));
    assert_eq!(h.conns(), 0);
}

#[test]
fn packet_for_an_unknown_connection_gets_rst() {
    let mut h = Harness::new();
    h.send(Hdr::guest(40000, 7777, OP_RW), b"who?");
    let pkts = h.recv();
    assert_eq!((pkts[0].0.op, pkts[0].0.src_port), (OP_RST, 7777));
}

#[test]
fn sixteen_mib_each_way_arrive_intact() {
    const TOTAL: usize = 16 << 20;
    let mut h = Harness::new();
    let (mut host, local) = h.host_connect(80);
    let g = |op| Hdr {
        buf_alloc: 4 << 20,
        ..Hdr::guest(80, local, op)
    };
    h.send(g(OP_CREDIT_UPDATE), &[]);

    // Host -> guest, the guest returning credit as it consumes.
    let data = pattern(TOTAL, 1);
    let (mut written, mut got) = (0, Vec::with_capacity(TOTAL));
    while got.len() < TOTAL {
        if written < TOTAL {
            match host.write(&data[written..TOTAL.min(written + (1 << 20))]) {
                Ok(n) => written += n,
                Err(e) => assert_eq!(e.kind(), ErrorKind::WouldBlock),
            }
        }
        for (hdr, d) in h.recv() {
            assert_eq!(hdr.op, OP_RW);
            got.extend_from_slice(&d);
        }
        h.send(
            Hdr {
                fwd_cnt: got.len() as u32,
                ..g(OP_CREDIT_UPDATE)
            },
            &[],
        );
    }
    assert_eq!(checksum(&got), checksum(&data));

    // Guest -> host, within the device's advertised credit.
    let data = pattern(TOTAL, 2);
    let (mut sent, mut peer_fwd, mut peer_alloc) = (0usize, 0u32, TX_BUF_SIZE);
    let mut recvd = Vec::with_capacity(TOTAL);
    while recvd.len() < TOTAL {
        while sent < TOTAL {
            let credit =
                (peer_alloc as usize).saturating_sub((sent as u32).wrapping_sub(peer_fwd) as usize);
            let chunk = credit.min(64 * 1024).min(TOTAL - sent);
            if chunk == 0 {
                break;
            }
            h.send(g(OP_RW), &data[sent..sent + chunk]);
            sent += chunk;
        }
        read_avail(&mut host, &mut recvd);
        for (hdr, _) in h.recv() {
            assert_ne!(hdr.op, OP_RST);
            (peer_fwd, peer_alloc) = (hdr.fwd_cnt, hdr.buf_alloc);
        }
    }
    assert_eq!(checksum(&recvd), checksum(&data));
}

#[test]
fn flow_control_stops_the_host_until_the_guest_returns_credit() {
    let mut h = Harness::new();
    let (mut host, local) = h.host_connect(81);
    let g = |op, fwd| Hdr {
        buf_alloc: 64 * 1024,
        fwd_cnt: fwd,
        ..Hdr::guest(81, local, op)
    };
    h.send(g(OP_CREDIT_UPDATE, 0), &[]);
    host.write_all(&pattern(150 * 1024, 3)).unwrap();

    let pkts = h.recv();
    let delivered: usize = pkts.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(delivered, 64 * 1024);
    assert!(pkts.iter().any(|(hdr, _)| hdr.op == OP_CREDIT_REQUEST));
    assert!(
        h.recv().is_empty(),
        "sender must stay stopped without credit"
    );

    h.send(g(OP_CREDIT_UPDATE, 64 * 1024), &[]);
    let delivered: usize = h.recv().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(delivered, 64 * 1024);
}

#[test]
fn guest_ignoring_credit_gets_rst() {
    let mut h = Harness::new();
    let (_host, local) = h.host_connect(82);
    let chunk = vec![7u8; 64 * 1024];
    let mut rst = false;
    for _ in 0..16 {
        h.send(Hdr::guest(82, local, OP_RW), &chunk);
        rst |= h.recv().iter().any(|(hdr, _)| hdr.op == OP_RST);
    }
    assert!(rst);
    assert_eq!(h.conns(), 0);
}

#[test]
fn guest_half_close_then_host_close() {
    let mut h = Harness::new();
    let (mut host, local) = h.host_connect(83);
    h.send(Hdr::guest(83, local, OP_RW), b"last words");
    h.send(
        Hdr {
            flags: SHUTDOWN_SEND,
            ..Hdr::guest(83, local, OP_SHUTDOWN)
        },
        &[],
    );
    let mut got = Vec::new();
    assert_eq!(read_avail(&mut host, &mut got), Some(10));
    assert_eq!(
        read_avail(&mut host, &mut Vec::new()),
        None,
        "host must see EOF"
    );
    host.write_all(b"reply").unwrap();
    assert_eq!(h.recv()[0].1, b"reply");
    host.shutdown(Shutdown::Write).unwrap();
    let ops: Vec<u16> = h.recv().iter().map(|(hdr, _)| hdr.op).collect();
    assert_eq!(ops, [OP_SHUTDOWN, OP_RST]);
    assert_eq!(h.conns(), 0);
}

#[test]
fn host_half_close_then_guest_close() {
    let mut h = Harness::new();
    let (mut host, local) = h.host_connect(84);
    host.shutdown(Shutdown::Write).unwrap();
    let pkts = h.recv();
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.flags),
        (OP_SHUTDOWN, SHUTDOWN_SEND)
    );
    h.send(Hdr::guest(84, local, OP_RW), b"still here");
    let mut got = Vec::new();
    read_avail(&mut host, &mut got);
    assert_eq!(got, b"still here");
    let both = SHUTDOWN_SEND | SHUTDOWN_RCV;
    h.send(
        Hdr {
            flags: both,
            ..Hdr::guest(84, local, OP_SHUTDOWN)
        },
        &[],
    );
    assert_eq!(h.recv()[0].0.op, OP_RST);
    assert_eq!(read_avail(&mut host, &mut Vec::new()), None);
    assert_eq!(h.conns(), 0);
}

#[test]
fn sixty_four_concurrent_connections() {
    let mut h = Harness::new();
    let listener = UnixListener::bind(format!("{}_6000", h.path.display())).unwrap();
    let mut hosts = Vec::new();
    for port in 1000..1064 {
        h.send(Hdr::guest(port, 6000, OP_REQUEST), &[]);
        let (s, _) = listener.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        hosts.push(s);
    }
    let responses = h
        .recv()
        .iter()
        .filter(|(hdr, _)| hdr.op == OP_RESPONSE)
        .count()
        + h.recv()
            .iter()
            .filter(|(hdr, _)| hdr.op == OP_RESPONSE)
            .count();
    assert_eq!(responses, 64);
    assert_eq!(h.conns(), 64);
    for (i, port) in (1000..1064).enumerate() {
        h.send(Hdr::guest(port, 6000, OP_RW), format!("to {i}").as_bytes());
        hosts[i].write_all(format!("from {i}").as_bytes()).unwrap();
    }
    for (i, host) in hosts.iter_mut().enumerate() {
        let mut got = Vec::new();
        read_avail(host, &mut got);
        assert_eq!(got, format!("to {i}").as_bytes());
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.extend(h.recv().into_iter().map(|(hdr, d)| (hdr.dst_port, d)));
    }
    seen.sort();
    let want: Vec<_> = (0..64)
        .map(|i| (1000 + i, format!("from {i}").into_bytes()))
        .collect();
    assert_eq!(seen, want);
}

#[test]
fn device_reset_tears_down_every_connection() {
    let mut h = Harness::new();
    let (mut host, _) = h.host_connect(85);
    h.drv.write_reg(0x70, 0);
    assert_eq!(h.conns(), 0);
    assert_eq!(read_avail(&mut host, &mut Vec::new()), None);
}

#[test]
fn after_a_restore_the_guest_gets_a_transport_reset_before_any_packet() {
    use crate::virtio::VirtioDevice;
    let mut h = Harness::new();
    let evq = 2;
    let head = h.drv.add_writable(evq, &[4]).unwrap();
    h.drv.kick(evq);
    h.pump();
    h.dev.lock().unwrap().restored(None).unwrap();
    let used = h.drv.take_used(evq);
    assert_eq!(used, [(head, 4)], "the event buffer carries one event");
    assert_eq!(
        h.drv.read_buf(evq, head, 4),
        0u32.to_le_bytes(),
        "TRANSPORT_RESET"
    );

    // A host client connecting now waits: no REQUEST reaches the guest
    // until it has taken the reset (given its event buffer back).
    let mut s = std::os::unix::net::UnixStream::connect(&h.path).unwrap();
    s.write_all(b"CONNECT 77\n").unwrap();
    assert!(
        h.recv().is_empty(),
        "held back until the guest took the reset"
    );
    h.drv.add_writable(evq, &[4]).unwrap();
    h.drv.kick(evq);
    let pkts = h.recv();
    assert!(
        pkts.iter()
            .any(|(hdr, _)| hdr.op == OP_REQUEST && hdr.dst_port == 77),
        "{pkts:?}"
    );
}

#[test]
fn a_stream_flows_both_ways_with_the_device_loop_on_its_own_thread() {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut stream = GuestStream::new(2);
    stream.run_device_on_thread(move || tx.send(std::thread::current().id()).unwrap());
    assert_ne!(rx.recv().unwrap(), std::thread::current().id());
    // Each direction waits for every byte, so returning at all is the
    // check; more than the device's credit each way makes the guest wait
    // for the device's credit updates and the host for its socket.
    let (mut to_guest, mut back) = (0, Vec::new());
    let msg = pattern(3 * TX_BUF_SIZE as usize, 5);
    stream.host_write(&msg, &mut to_guest);
    while to_guest < msg.len() {
        stream.guest_take(&mut to_guest);
    }
    for packet in msg.chunks(MAX_PKT_DATA as usize) {
        stream.guest_write(packet, &mut back);
    }
    while back.len() < msg.len() {
        stream.host_drain(&mut back);
    }
    assert_eq!(checksum(&back), checksum(&msg));
    stream.time_round_trip(4096, 20);
}
