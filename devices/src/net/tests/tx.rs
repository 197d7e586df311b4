//! Guest to tap: frames in every descriptor layout a driver may use, up to
//! a 64 KiB GSO frame, reach the tap byte for byte; without a tap, or with
//! its link down, they are dropped and counted.

use std::time::Duration;

use super::*;

const WAIT: Duration = Duration::from_secs(2);
const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// The ways a driver may lay header + frame over descriptors, each named.
fn layouts(hdr: &[u8], frame: &[u8]) -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let whole = [hdr, frame].concat();
    let sixteen: Vec<Vec<u8>> = std::iter::once(hdr.to_vec())
        .chain(frame.chunks(frame.len().div_ceil(16)).map(<[u8]>::to_vec))
        .collect();
    vec![
        ("header + 1", vec![hdr.to_vec(), frame.to_vec()]),
        ("header and frame in one", vec![whole.clone()]),
        (
            "header split 5 + 7, then the frame",
            vec![hdr[..5].to_vec(), hdr[5..].to_vec(), frame.to_vec()],
        ),
        (
            "header split, its second part carrying the frame's start",
            vec![
                whole[..7].to_vec(),
                whole[7..40].to_vec(),
                whole[40..].to_vec(),
            ],
        ),
        ("header + 16", sixteen),
        (
            "header + 2 with an empty descriptor between",
            vec![
                hdr.to_vec(),
                frame[..20].to_vec(),
                Vec::new(),
                frame[20..].to_vec(),
            ],
        ),
    ]
}

#[test]
fn frames_in_every_layout_reach_the_tap_intact() {
    if !tap_or_skip("frames_in_every_layout_reach_the_tap_intact") {
        return;
    }
    let (rig, tap) = TapRig::new();
    let mut h = NetHarness::new(Some(tap));
    let hdr = VnetHdr::default().bytes();
    let (mut packets, mut bytes) = (0, 0);
    for size in [60usize, 1514, 9000, 65_535] {
        let frame = eth_frame(PEER, &pattern(size - 14, size as u8));
        for (name, parts) in layouts(&hdr, &frame) {
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            assert_eq!(
                h.send_chain(&refs),
                0,
                "{name}: TX chains are used with length 0"
            );
            let got = rig
                .recv(WAIT)
                .unwrap_or_else(|| panic!("{name}, {size} B: nothing on the tap"));
            assert_eq!(got.len(), size, "{name}, {size} B");
            assert!(got == frame, "{name}, {size} B: bytes differ");
            packets += 1;
            bytes += size as u64;
        }
    }
    assert_eq!(h.metric(|m| &m.tx_packets), packets);
    assert_eq!(h.metric(|m| &m.tx_bytes), bytes);
    assert_eq!(h.metric(|m| &m.tx_malformed), 0);
    assert_eq!(h.metric(|m| &m.tx_dropped), 0);
}

#[test]
fn a_64k_gso_frame_reaches_the_tap_whole() {
    if !tap_or_skip("a_64k_gso_frame_reaches_the_tap_whole") {
        return;
    }
    let (rig, tap) = TapRig::new();
    let mut h = NetHarness::new(Some(tap));
    let frame = tcp4_frame(PEER, 65_535);
    let hdr = tcp4_gso_hdr(1448);
    // As Linux sends it: the header, then the frame in page-sized pieces.
    let mut parts = vec![hdr.bytes().to_vec()];
    parts.extend(frame.chunks(32 * 1024).map(<[u8]>::to_vec));
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    h.send_chain(&refs);
    assert_eq!(
        h.metric(|m| &m.tx_dropped),
        0,
        "the kernel took the GSO frame"
    );
    let got = rig.recv(WAIT).expect("the GSO frame on the tap");
    assert_eq!(got.len(), frame.len());
    assert!(got == frame, "bytes differ");
    assert_eq!(h.metric(|m| &m.tx_bytes), frame.len() as u64);
}

#[test]
fn without_a_tap_frames_are_dropped_and_counted() {
    let mut h = NetHarness::new(None);
    let frame = eth_frame(PEER, b"into the void");
    for _ in 0..3 {
        assert_eq!(h.send_frame(VnetHdr::default(), &frame), 0);
    }
    assert_eq!(h.metric(|m| &m.tx_dropped), 3);
    assert_eq!(h.metric(|m| &m.tx_packets), 0);
    assert_eq!(h.metric(|m| &m.tx_malformed), 0);
}

#[test]
fn a_link_that_is_down_drops_frames_and_keeps_the_tap() {
    if !tap_or_skip("a_link_that_is_down_drops_frames_and_keeps_the_tap") {
        return;
    }
    let (rig, tap) = TapRig::new();
    let mut h = NetHarness::new(Some(tap));
    rig.set_link(false);
    let frame = eth_frame(PEER, b"while down");
    h.send_frame(VnetHdr::default(), &frame);
    assert_eq!(h.metric(|m| &m.tx_dropped), 1, "EIO drops the frame");
    assert_eq!(
        h.metric(|m| &m.backend_lost),
        0,
        "a link down is not a tap gone"
    );
    assert!(h.dev.lock().unwrap().tap().is_some());
    rig.set_link(true);
    h.send_frame(VnetHdr::default(), &frame);
    assert_eq!(rig.recv(WAIT).as_deref(), Some(&frame[..]));
}
