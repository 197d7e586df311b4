//! Every descriptor layout a driver may use, through the whole device: TX
//! packets reach the host socket intact, RX buffers of any shape carry the
//! host's bytes back.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use super::*;
use crate::vsock::DEFAULT_HANDSHAKE_TIMEOUT;

#[test]
fn tx_packets_in_every_layout_reach_the_host_socket_intact() {
    let mut h = Harness::new();
    let (mut host, local) = h.host_connect(70);
    let mut payload = 0;
    for size in [1usize, 4096, 32 * 1024 + 1, 64 * 1024] {
        let data = pattern(size, size as u8);
        let mut hdr = Hdr::guest(70, local, OP_RW);
        hdr.len = size as u32;
        for (name, parts) in tx_layouts(&hdr.bytes(), &data) {
            h.send_chain(&parts);
            let mut got = Vec::new();
            read_avail(&mut host, &mut got);
            assert_eq!(got.len(), size, "{name}, {size} B");
            assert!(got == data, "{name}, {size} B: bytes differ");
            payload += size as u64;
        }
    }
    assert_eq!(h.metric(|m| &m.tx_bytes), payload);
    assert_eq!(h.metric(|m| &m.malformed), 0);
    assert_eq!(h.conns(), 1);
}

/// Offers one RX chain of `lens`, lets the device fill it, and returns
/// what it wrote: the header and the payload.
fn receive_into(h: &mut Harness, lens: &[u32]) -> (Hdr, Vec<u8>) {
    let descs = h.drv.add_chain(RXQ, &[], lens).expect("a free RX slot");
    h.drv.kick(RXQ);
    h.pump();
    let used = h.drv.take_used(RXQ);
    assert_eq!(used.len(), 1, "{lens:?}: one buffer used");
    assert_eq!(used[0].0, descs[0]);
    let bytes = h.drv.read_chain(RXQ, &descs, lens, used[0].1 as usize);
    (Hdr::parse(&bytes[..HDR]), bytes[HDR..].to_vec())
}

#[test]
fn rx_buffers_of_any_shape_carry_host_data_back() {
    let mut h = Harness::without_rx_buffers(8, DEFAULT_HANDSHAKE_TIMEOUT);
    let mut host = UnixStream::connect(&h.path).unwrap();
    host.write_all(b"CONNECT 71\n").unwrap();
    h.pump();
    // Even the REQUEST arrives in a header split over two descriptors.
    let (req, _) = receive_into(&mut h, &[20, 24]);
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 71));
    h.send(Hdr::guest(71, req.src_port, OP_RESPONSE), &[]);
    let mut ok = [0u8; 32];
    let n = host.read(&mut ok).unwrap();
    assert!(ok[..n].starts_with(b"OK "));

    let rx_before = h.metric(|m| &m.rx_bytes);
    let mut payload = 0;
    let shapes: [&[u32]; 4] = [
        &[44 + 4096],
        &[20, 24, 4096],
        &[10, 34, 1000, 3096],
        &[44, 1, 0, 4095],
    ];
    for lens in shapes {
        let total = lens.iter().sum::<u32>() as usize;
        let data = pattern(total - HDR, lens.len() as u8);
        host.write_all(&data).unwrap();
        let (hdr, got) = receive_into(&mut h, lens);
        assert_eq!((hdr.op, hdr.len as usize), (OP_RW, data.len()), "{lens:?}");
        assert!(got == data, "{lens:?}: bytes differ");
        payload += data.len() as u64;
    }
    assert_eq!(h.metric(|m| &m.rx_bytes) - rx_before, payload);
    assert_eq!(h.metric(|m| &m.malformed), 0);
}
