//! Tap to guest: frames reach guest buffers intact, in one buffer or
//! spread over several mergeable ones (header split too), or in one big
//! chain without mergeable buffers; a guest with no room holds frames back
//! without dropping them or spinning.

use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;

use super::*;
use crate::net::NET_HDR_LEN;

/// A frame of `len` bytes to the guest's address.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    eth_frame(MAC.0, &pattern(len - 14, seed))
}

#[test]
fn frames_reach_mergeable_buffers_intact() {
    if !tap_or_skip("frames_reach_mergeable_buffers_intact") {
        return;
    }
    let (rig, tap) = TapRig::new();
    let mut h = NetHarness::new(Some(tap));
    h.fill_rx(16, 4096);
    let sent: Vec<Vec<u8>> = [60, 61, 1000, 1514]
        .iter()
        .map(|&n| frame(n, n as u8))
        .collect();
    for f in &sent {
        rig.inject(f);
    }
    let got = h.recv_n(sent.len());
    assert_eq!(got.len(), sent.len());
    for ((hdr, f), want) in got.iter().zip(&sent) {
        assert_eq!(hdr.num_buffers, 1);
        assert!(f == want, "a {}-byte frame came back different", want.len());
    }
    let bytes: usize = sent.iter().map(Vec::len).sum();
    assert_eq!(h.metric(|m| &m.rx_packets), sent.len() as u64);
    assert_eq!(h.metric(|m| &m.rx_bytes), bytes as u64);
    assert_eq!(h.metric(|m| &m.rx_dropped), 0);
}

#[test]
fn a_frame_spans_several_mergeable_buffers() {
    if !tap_or_skip("a_frame_spans_several_mergeable_buffers") {
        return;
    }
    let (rig, tap) = TapRig::new();
    let mut h = NetHarness::new(Some(tap));
    // The header itself split over two descriptors, then smaller chains.
    let heads = [
        h.offer_rx(&[5, 7, 300]).unwrap(),
        h.offer_rx(&[200]).unwrap(),
        h.offer_rx(&[1024]).unwrap(),
        h.offer_rx(&[1024]).unwrap(),
    ];
    h.drv.kick(RXQ);
    let want = frame(1514, 3);
    rig.inject(&want);
    assert!(h.pump_until(2000, |h| h.metric(|m| &m.rx_packets) == 1));
    let used = h.take_rx_used();
    let lens: Vec<(u16, u32)> = used.iter().map(|(h, l, _)| (*h, *l)).collect();
    assert_eq!(
        lens,
        [(heads[0], 312), (heads[1], 200), (heads[2], 1526 - 512)],
        "three buffers in ring order, the last one partly filled"
    );
    let bytes: Vec<u8> = used.into_iter().flat_map(|(_, _, b)| b).collect();
    assert_eq!(VnetHdr::parse(&bytes).num_buffers, 3);
    assert!(
        bytes[NET_HDR_LEN..] == want[..],
        "the frame came back different"
    );
    // The fourth chain was not taken; the next frame goes there.
    let next = frame(100, 4);
    rig.inject(&next);
    let got = h.recv_n(1);
    assert!(got.len() == 1 && got[0].1 == next);
}

#[test]
fn without_mergeable_buffers_one_chain_holds_the_frame() {
    if !tap_or_skip("without_mergeable_buffers_one_chain_holds_the_frame") {
        return;
    }
    let (rig, tap) = TapRig::new();
    let mut h = NetHarness::acking(Some(tap), !(1 << VIRTIO_NET_F_MRG_RXBUF));
    // A chain too small for a full frame at the head of the ring.
    let small = h.offer_rx(&[600]).unwrap();
    h.drv.kick(RXQ);
    rig.inject(&frame(1514, 1));
    assert!(h.pump_until(2000, |h| h.metric(|m| &m.rx_dropped) == 1));
    assert!(
        h.drv.take_used(RXQ).is_empty(),
        "the small chain stays with the device"
    );
    // The next frame that fits takes that same chain.
    let fits = frame(500, 2);
    rig.inject(&fits);
    assert!(h.pump_until(2000, |h| h.metric(|m| &m.rx_packets) == 1));
    let used = h.take_rx_used();
    assert_eq!(used.len(), 1);
    assert_eq!((used[0].0, used[0].1 as usize), (small, NET_HDR_LEN + 500));
    let hdr = VnetHdr::parse(&used[0].2);
    assert_eq!(hdr.num_buffers, 1, "num_buffers is 1 without MRG_RXBUF");
    assert!(used[0].2[NET_HDR_LEN..] == fits[..]);
    // A chain of a header buffer and a big data buffer takes a full frame.
    h.offer_rx(&[NET_HDR_LEN as u32, 1514]).unwrap();
    h.drv.kick(RXQ);
    let full = frame(1514, 3);
    rig.inject(&full);
    let got = h.recv_n(1);
    assert!(got.len() == 1 && got[0].1 == full);
}

#[test]
fn a_guest_without_buffers_holds_frames_back_without_drops_or_spinning() {
    if !tap_or_skip("a_guest_without_buffers_holds_frames_back_without_drops_or_spinning") {
        return;
    }
    let (rig, tap) = TapRig::new();
    let mut h = NetHarness::new(Some(tap));
    let sent: Vec<Vec<u8>> = (0..3).map(|i| frame(1514, i)).collect();
    for f in &sent {
        rig.inject(f);
    }
    h.pump();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(
        h.ready_events(),
        0,
        "the tap is not polled while the guest has no room"
    );
    {
        let dev = h.dev.lock().unwrap();
        let reg = dev
            .registration
            .expect("the tap stays registered for errors");
        assert!(!reg.rx_wanted);
    }
    // One small buffer is not enough for a frame: still nothing used.
    h.offer_rx(&[512]).unwrap();
    h.drv.kick(RXQ);
    h.pump();
    assert!(h.drv.take_used(RXQ).is_empty());
    assert!(h.dev.lock().unwrap().rx.has_pending());
    assert_eq!(h.ready_events(), 0);
    // With two more the first frame goes, over all three.
    h.offer_rx(&[512]).unwrap();
    h.offer_rx(&[512]).unwrap();
    h.drv.kick(RXQ);
    let got = h.recv_n(1);
    assert!(got.len() == 1 && got[0].0.num_buffers == 3 && got[0].1 == sent[0]);
    // Room for the rest: they follow in order.
    h.fill_rx(4, 2048);
    let got = h.recv_n(2);
    assert_eq!(got.len(), 2);
    assert!(got[0].1 == sent[1] && got[1].1 == sent[2]);
    assert_eq!(h.metric(|m| &m.rx_dropped), 0);
    assert_eq!(h.metric(|m| &m.rx_packets), 3);
}
