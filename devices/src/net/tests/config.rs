//! The virtio contract: what the device offers and shows in config space,
//! what it refuses to be, and that the tap learns which offloads the guest
//! took (a GSO frame reaches a guest that takes TSO whole, and one that
//! does not in MTU-sized pieces the kernel cut).

use virtio_bindings::virtio_net::*;

use super::*;
use crate::bus::BusDevice;
use crate::net::{NetConfig, NetDevice, NetError, DEFAULT_MTU, NET_HDR_LEN};
use crate::virtio::VirtioDevice;

fn offered(h: &mut NetHarness) -> u64 {
    let mut features = 0u64;
    for sel in 0..2u32 {
        h.drv.write_reg(0x14, sel);
        features |= u64::from(h.drv.read_reg(0x10)) << (32 * sel);
    }
    features
}

#[test]
fn offers_its_features_and_shows_mac_link_and_mtu() {
    let mut h = NetHarness::new(None);
    let want = [
        32, // VIRTIO_F_VERSION_1
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
    ]
    .iter()
    .fold(0u64, |f, b| f | 1 << b);
    assert_eq!(offered(&mut h), want, "{:#x}", offered(&mut h));
    let mut config = [0u8; 12];
    h.drv.transport.read(0x100, &mut config);
    assert_eq!(&config[..6], &MAC.0);
    assert_eq!(
        u16::from_le_bytes([config[6], config[7]]),
        VIRTIO_NET_S_LINK_UP as u16
    );
    assert_eq!(u16::from_le_bytes([config[10], config[11]]), 1500);
    let mut past = [0xffu8; 4];
    h.drv.transport.read(0x100 + 12, &mut past);
    assert_eq!(past, [0; 4], "nothing past the MTU");
}

#[test]
fn refuses_an_mtu_below_68_and_a_multicast_mac() {
    let cfg = |mac, mtu| NetConfig { mac, mtu };
    assert!(matches!(
        NetDevice::new(cfg(MAC, 67), None),
        Err(NetError::BadMtu(67))
    ));
    let multicast = crate::net::MacAddr([0x01, 0, 0x5e, 0, 0, 1]);
    assert!(matches!(
        NetDevice::new(cfg(multicast, DEFAULT_MTU), None),
        Err(NetError::MulticastMac(_))
    ));
    let dev = NetDevice::new(cfg(MAC, 68), None).unwrap();
    assert_eq!(dev.device_type(), 1);
    assert_eq!(dev.queue_max_sizes(), [256, 256]);
}

#[test]
fn a_guest_that_takes_tso_gets_a_gso_frame_whole() {
    if !tap_or_skip("a_guest_that_takes_tso_gets_a_gso_frame_whole") {
        return;
    }
    let (rig, tap) = TapRig::new();
    let mut h = NetHarness::new(Some(tap));
    h.fill_rx(24, 4096);
    let frame = tcp4_frame(MAC.0, 60_000);
    rig.inject_with_vnet_hdr(&tcp4_gso_hdr(1448).bytes(), &frame);
    let got = h.recv_n(1);
    assert_eq!(got.len(), 1, "one frame");
    let (hdr, bytes) = &got[0];
    assert_eq!(hdr.gso_type, VIRTIO_NET_HDR_GSO_TCPV4 as u8);
    assert_eq!(hdr.gso_size, 1448);
    assert_ne!(hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, 0);
    assert_eq!(
        usize::from(hdr.num_buffers),
        (NET_HDR_LEN + frame.len()).div_ceil(4096)
    );
    assert!(bytes[..] == frame[..], "the GSO frame came back different");
}

#[test]
fn a_guest_without_tso_gets_mtu_sized_segments() {
    if !tap_or_skip("a_guest_without_tso_gets_mtu_sized_segments") {
        return;
    }
    let (rig, tap) = TapRig::new();
    let no_offloads = !(1 << VIRTIO_NET_F_GUEST_CSUM
        | 1 << VIRTIO_NET_F_GUEST_TSO4
        | 1 << VIRTIO_NET_F_GUEST_TSO6);
    let mut h = NetHarness::acking(Some(tap), no_offloads);
    h.fill_rx(24, 2048);
    let frame = tcp4_frame(MAC.0, 40 + 10 * 1448);
    rig.inject_with_vnet_hdr(&tcp4_gso_hdr(1448).bytes(), &frame);
    let got = h.recv_n(10);
    assert_eq!(got.len(), 10, "the kernel cut it into 10 segments");
    let mut payload = Vec::new();
    for (hdr, seg) in &got {
        assert_eq!(
            (hdr.flags, hdr.gso_type),
            (0, 0),
            "no offload reaches this guest"
        );
        assert_eq!(seg.len(), 14 + 40 + 1448);
        payload.extend_from_slice(&seg[54..]);
    }
    assert!(
        payload == frame[54..],
        "the segments carry the frame's payload in order"
    );
}

#[test]
fn a_frame_with_offloads_the_guest_did_not_take_is_dropped() {
    if !tap_or_skip("a_frame_with_offloads_the_guest_did_not_take_is_dropped") {
        return;
    }
    let (rig, tap) = TapRig::new();
    let no_tso = !(1 << VIRTIO_NET_F_GUEST_TSO4 | 1 << VIRTIO_NET_F_GUEST_TSO6);
    let mut h = NetHarness::acking(Some(tap), no_tso);
    // As if the tap had queued it before the guest's offloads were set.
    let tap = h.dev.lock().unwrap().tap().unwrap().clone();
    tap.set_offload(crate::net::TUN_OFFLOADS).unwrap();
    h.fill_rx(24, 4096);
    rig.inject_with_vnet_hdr(&tcp4_gso_hdr(1448).bytes(), &tcp4_frame(MAC.0, 20_000));
    assert!(h.pump_until(2000, |h| h.metric(|m| &m.rx_dropped) == 1));
    assert_eq!(h.metric(|m| &m.rx_packets), 0);
    let plain = eth_frame(MAC.0, b"plain");
    rig.inject(&plain);
    let got = h.recv_n(1);
    assert!(got.len() == 1 && got[0].1 == plain);
}
