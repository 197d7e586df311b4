//! A hostile or broken driver: every bad chain is used (length 0), counted
//! and warned about, and the next good frame goes through as if nothing
//! had happened.

use std::time::Duration;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use super::*;
use crate::log_budget::capture::logged;
use crate::net::NET_HDR_LEN;
use crate::virtio::test_utils::MEM_SIZE;

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// A bad TX chain as raw descriptors (addr, len, flags, next), built
/// knowing the head index and the guest address of its first buffer.
type RawChain = fn(head: u16, buf: u64) -> Vec<(u64, u32, u16, u16)>;

fn bad_tx_chains() -> Vec<(&'static str, RawChain)> {
    vec![
        ("a header and nothing else", |_, a| {
            vec![(a, NET_HDR_LEN as u32, 0, 0)]
        }),
        ("a device-writable descriptor", |h, a| {
            vec![(a, 12, NEXT, h + 1), (a + 4096, 64, WRITE, 0)]
        }),
        ("a descriptor past the end of memory", |h, a| {
            vec![(a, 12, NEXT, h + 1), (MEM_SIZE - 16, 4096, 0, 0)]
        }),
        ("an address that wraps around", |h, a| {
            vec![(a, 12, NEXT, h + 1), (u64::MAX - 10, 100, 0, 0)]
        }),
        ("a loop back to the head", |h, a| vec![(a, 60, NEXT, h)]),
        ("a next index past the table", |_, a| {
            vec![(a, 60, NEXT, 1000)]
        }),
        ("two 64 KiB descriptors", |h, a| {
            vec![(a, 65536, NEXT, h + 1), (a + 65536, 65536, 0, 0)]
        }),
        ("a 4 GiB descriptor", |_, a| vec![(a, u32::MAX, 0, 0)]),
    ]
}

#[test]
fn bad_tx_chains_are_used_counted_and_the_next_frame_goes_through() {
    if !tap_or_skip("bad_tx_chains_are_used_counted_and_the_next_frame_goes_through") {
        return;
    }
    let (rig, tap) = TapRig::new();
    let mut h = NetHarness::new(Some(tap));
    let good = eth_frame(PEER, b"still here");
    for (i, (name, chain)) in bad_tx_chains().into_iter().enumerate() {
        let head = h.drv.next_head(TXQ).unwrap();
        let buf = h.drv.buf_addr(TXQ, head).0;
        h.drv.add_raw(TXQ, &chain(head, buf)).unwrap();
        h.drv.kick(TXQ);
        h.pump();
        assert_eq!(h.drv.take_used(TXQ), [(head, 0)], "{name}: used, empty");
        assert_eq!(
            h.metric(|m| &m.tx_malformed),
            i as u64 + 1,
            "{name}: counted"
        );
        h.send_frame(VnetHdr::default(), &good);
        let got = rig.recv(Duration::from_secs(2));
        assert_eq!(got.as_deref(), Some(&good[..]), "{name}: the next frame");
    }
    assert!(
        rig.recv(Duration::from_millis(50)).is_none(),
        "nothing else reached the tap"
    );
    assert_eq!(h.metric(|m| &m.tx_dropped), 0);
}

#[test]
fn a_bad_tx_chain_is_warned_about() {
    let mut h = NetHarness::new(None);
    let log = logged(|| {
        h.send_chain(&[&[0u8; 5]]);
    });
    assert!(
        log.contains("WARN") && log.contains("malformed TX chain"),
        "{log}"
    );
    assert_eq!(h.metric(|m| &m.tx_malformed), 1);
}

fn bad_rx_chains() -> Vec<(&'static str, RawChain)> {
    vec![
        ("a device-readable descriptor", |_, a| vec![(a, 2048, 0, 0)]),
        ("a descriptor past the end of memory", |_, _| {
            vec![(MEM_SIZE - 16, 4096, WRITE, 0)]
        }),
        ("a loop back to the head", |h, a| {
            vec![(a, 1024, WRITE | NEXT, h)]
        }),
        ("a next index past the table", |_, a| {
            vec![(a, 2048, WRITE | NEXT, 999)]
        }),
        ("smaller than a header", |_, a| vec![(a, 8, WRITE, 0)]),
    ]
}

#[test]
fn bad_rx_chains_are_used_empty_and_the_frame_takes_the_next_one() {
    if !tap_or_skip("bad_rx_chains_are_used_empty_and_the_frame_takes_the_next_one") {
        return;
    }
    let (rig, tap) = TapRig::new();
    let mut h = NetHarness::new(Some(tap));
    for (i, (name, chain)) in bad_rx_chains().into_iter().enumerate() {
        let bad = h.drv.next_head(RXQ).unwrap();
        let buf = h.drv.buf_addr(RXQ, bad).0;
        h.drv.add_raw(RXQ, &chain(bad, buf)).unwrap();
        let good = h.offer_rx(&[2048]).unwrap();
        h.drv.kick(RXQ);
        let frame = eth_frame(MAC.0, &pattern(100, i as u8));
        rig.inject(&frame);
        assert!(
            h.pump_until(2000, |h| h.metric(|m| &m.rx_packets) == i as u64 + 1),
            "{name}"
        );
        let used = h.take_rx_used();
        assert_eq!(used.len(), 2, "{name}");
        assert_eq!(
            (used[0].0, used[0].1),
            (bad, 0),
            "{name}: the bad chain, empty"
        );
        assert_eq!(used[1].0, good, "{name}");
        assert!(
            used[1].2[NET_HDR_LEN..] == frame[..],
            "{name}: the frame intact"
        );
        assert_eq!(
            h.metric(|m| &m.rx_malformed),
            i as u64 + 1,
            "{name}: counted"
        );
    }
    assert_eq!(h.metric(|m| &m.rx_dropped), 0);
}

#[test]
fn a_bad_chain_in_the_middle_of_a_frame_costs_that_frame_only() {
    if !tap_or_skip("a_bad_chain_in_the_middle_of_a_frame_costs_that_frame_only") {
        return;
    }
    let (rig, tap) = TapRig::new();
    let mut h = NetHarness::new(Some(tap));
    let first = h.offer_rx(&[512]).unwrap();
    let bad = h.drv.add_chain(RXQ, &[&[0u8; 64]], &[]).unwrap()[0];
    let last = h.offer_rx(&[2048]).unwrap();
    h.drv.kick(RXQ);
    rig.inject(&eth_frame(MAC.0, &pattern(1500, 1)));
    assert!(h.pump_until(2000, |h| h.metric(|m| &m.rx_dropped) == 1));
    let used: Vec<(u16, u32)> = h.take_rx_used().iter().map(|u| (u.0, u.1)).collect();
    assert_eq!(
        used,
        [(first, 0), (bad, 0)],
        "the chains before it cannot be given back"
    );
    let next = eth_frame(MAC.0, &pattern(1000, 2));
    rig.inject(&next);
    assert!(h.pump_until(2000, |h| h.metric(|m| &m.rx_packets) == 1));
    let used = h.take_rx_used();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].0, last);
    assert!(used[0].2[NET_HDR_LEN..] == next[..]);
    assert_eq!(h.metric(|m| &m.rx_malformed), 1);
}

#[test]
fn guest_writes_to_config_space_change_nothing() {
    let mut h = NetHarness::new(None);
    let mut before = [0u8; 12];
    use crate::bus::BusDevice;
    h.drv.transport.read(0x100, &mut before);
    h.drv.transport.write(0x100, &[0xff; 6]);
    let mut after = [0u8; 12];
    h.drv.transport.read(0x100, &mut after);
    assert_eq!(before, after);
    assert_eq!(&after[..6], &MAC.0);
}
