//! The tap behind the device: deleted under a running guest it is let go
//! once, with a warning, and nothing spins; a device without one gets one
//! later and carries frames both ways from then on.

use std::sync::Arc;
use std::time::Duration;

use super::*;

const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const WAIT: Duration = Duration::from_secs(2);

fn gone(h: &NetHarness) -> bool {
    h.dev.lock().unwrap().tap().is_none()
}

#[test]
fn a_tap_deleted_under_an_idle_guest_is_let_go_without_spinning() {
    if !tap_or_skip("a_tap_deleted_under_an_idle_guest_is_let_go_without_spinning") {
        return;
    }
    let (rig, tap) = TapRig::new();
    let mut h = NetHarness::new(Some(tap));
    h.fill_rx(8, 2048);
    let frame = eth_frame(PEER, b"before");
    h.send_frame(VnetHdr::default(), &frame);
    assert_eq!(rig.recv(WAIT).as_deref(), Some(&frame[..]));

    rig.delete_link();
    // Nobody sends anything: the tap's fd reports the error by itself.
    assert!(
        h.pump_until(2000, |h| gone(h)),
        "the device lets the deleted tap go"
    );
    assert_eq!(h.metric(|m| &m.backend_lost), 1);
    assert_eq!(h.ready_events(), 0, "nothing keeps firing");
    assert!(h.dev.lock().unwrap().registration.is_none());

    h.send_frame(VnetHdr::default(), &frame);
    assert_eq!(h.metric(|m| &m.tx_dropped), 1);
    assert_eq!(h.metric(|m| &m.backend_lost), 1, "lost once");
    assert_eq!(h.ready_events(), 0);
}

#[test]
fn a_tap_deleted_while_the_guest_sends_is_let_go_once() {
    if !tap_or_skip("a_tap_deleted_while_the_guest_sends_is_let_go_once") {
        return;
    }
    let (rig, tap) = TapRig::new();
    let mut h = NetHarness::new(Some(tap));
    rig.delete_link();
    // Several frames in one kick: the first write fails for good, the
    // rest are dropped without touching the tap again.
    let frame = eth_frame(PEER, b"after");
    for _ in 0..4 {
        h.drv
            .add_chain(TXQ, &[&VnetHdr::default().bytes(), &frame], &[])
            .unwrap();
    }
    h.drv.kick(TXQ);
    h.pump();
    assert_eq!(h.drv.take_used(TXQ).len(), 4, "every chain is returned");
    assert!(gone(&h));
    assert_eq!(h.metric(|m| &m.backend_lost), 1);
    assert_eq!(h.metric(|m| &m.tx_dropped), 4);
    assert_eq!(h.metric(|m| &m.tx_packets), 0);
    assert_eq!(h.ready_events(), 0);
}

#[test]
fn a_device_without_a_tap_gets_one_later() {
    if !tap_or_skip("a_device_without_a_tap_gets_one_later") {
        return;
    }
    let mut h = NetHarness::new(None);
    h.fill_rx(8, 2048);
    let frame = eth_frame(PEER, b"hello");
    h.send_frame(VnetHdr::default(), &frame);
    assert_eq!(h.metric(|m| &m.tx_dropped), 1);

    let (rig, tap) = TapRig::new();
    h.dev.lock().unwrap().set_backend(Some(Arc::new(tap)));
    h.pump();
    h.send_frame(VnetHdr::default(), &frame);
    assert_eq!(rig.recv(WAIT).as_deref(), Some(&frame[..]));
    let back = eth_frame(MAC.0, b"welcome");
    rig.inject(&back);
    let got = h.recv_n(1);
    assert!(got.len() == 1 && got[0].1 == back);

    // Detached again: frames are dropped, the tap is no longer watched.
    h.dev.lock().unwrap().set_backend(None);
    h.pump();
    assert!(h.dev.lock().unwrap().registration.is_none());
    h.send_frame(VnetHdr::default(), &frame);
    assert_eq!(h.metric(|m| &m.tx_dropped), 2);
    assert!(rig.recv(Duration::from_millis(100)).is_none());
}

#[test]
fn a_reset_keeps_the_tap_and_drops_the_pending_frame() {
    if !tap_or_skip("a_reset_keeps_the_tap_and_drops_the_pending_frame") {
        return;
    }
    let (rig, tap) = TapRig::new();
    let mut h = NetHarness::new(Some(tap));
    rig.inject(&eth_frame(MAC.0, &pattern(500, 1)));
    h.offer_rx(&[64]).unwrap(); // the frame needs more than this one buffer
    h.drv.kick(RXQ);
    assert!(h.pump_until(2000, |h| h.dev.lock().unwrap().rx.has_pending()));
    h.drv.write_reg(0x70, 0); // the driver resets the device
    h.pump();
    assert!(!h.dev.lock().unwrap().rx.has_pending());
    assert!(h.dev.lock().unwrap().tap().is_some());
    h.drv.init();
    h.pump();
    h.fill_rx(4, 2048);
    let frame = eth_frame(MAC.0, b"after the reset");
    rig.inject(&frame);
    let got = h.recv_n(1);
    assert!(got.len() == 1 && got[0].1 == frame, "{got:?}");
}
