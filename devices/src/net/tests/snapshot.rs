//! Templates: a device's MAC and MTU survive a snapshot, and a restored
//! device serves the guest's rings as they were with whatever tap its VM
//! was given (a new one, or none), never the template's.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::net::{MacAddr, NetConfig, NetDevice, NetSnapshot, Tap};
use crate::virtio::{DeviceState, SnapshotError, VirtioDevice};

const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const WAIT: Duration = Duration::from_secs(2);

fn device(mac: MacAddr, tap: Option<Tap>) -> NetDevice {
    NetDevice::new(NetConfig { mac, mtu: 1500 }, tap.map(Arc::new)).unwrap()
}

#[test]
fn an_active_device_saves_its_mac_and_mtu() {
    let h = NetHarness::new(None);
    let state = h.dev.lock().unwrap().device_state();
    assert_eq!(
        state,
        Some(DeviceState::Net(NetSnapshot {
            mac: MAC,
            mtu: 1500
        }))
    );
    let idle = device(MAC, None);
    assert_eq!(idle.device_state(), None, "nothing before the driver is up");
}

#[test]
fn a_template_with_a_tap_restores_onto_a_new_tap() {
    if !tap_or_skip("a_template_with_a_tap_restores_onto_a_new_tap") {
        return;
    }
    let (old_rig, old_tap) = TapRig::new();
    let mut h = NetHarness::new(Some(old_tap));
    // The guest has buffers posted and has talked before the snapshot.
    h.fill_rx(4, 2048);
    let hello = eth_frame(PEER, b"from the template");
    h.send_frame(VnetHdr::default(), &hello);
    assert_eq!(old_rig.recv(WAIT).as_deref(), Some(&hello[..]));

    let (rig, tap) = TapRig::new();
    let mut h = h.restore_into(device(MAC, Some(tap))).unwrap();
    let out = eth_frame(PEER, b"from the clone");
    h.send_frame(VnetHdr::default(), &out);
    assert_eq!(rig.recv(WAIT).as_deref(), Some(&out[..]), "the clone's tap");
    assert!(
        old_rig.recv(Duration::from_millis(100)).is_none(),
        "not the template's"
    );
    let back = eth_frame(MAC.0, b"to the clone");
    rig.inject(&back);
    let got = h.recv_n(1);
    assert!(
        got.len() == 1 && got[0].1 == back,
        "into buffers posted before the snapshot"
    );
}

#[test]
fn a_template_with_a_tap_restores_without_one_and_the_other_way() {
    if !tap_or_skip("a_template_with_a_tap_restores_without_one_and_the_other_way") {
        return;
    }
    let (_old_rig, old_tap) = TapRig::new();
    let h = NetHarness::new(Some(old_tap));
    let mut h = h.restore_into(device(MAC, None)).unwrap();
    h.send_frame(VnetHdr::default(), &eth_frame(PEER, b"nowhere"));
    assert_eq!(h.metric(|m| &m.tx_dropped), 1);

    let (rig, tap) = TapRig::new();
    let mut h = h.restore_into(device(MAC, Some(tap))).unwrap();
    h.fill_rx(2, 2048);
    let out = eth_frame(PEER, b"somewhere");
    h.send_frame(VnetHdr::default(), &out);
    assert_eq!(rig.recv(WAIT).as_deref(), Some(&out[..]));
    let back = eth_frame(MAC.0, b"back");
    rig.inject(&back);
    assert_eq!(h.recv_n(1).len(), 1);
}

#[test]
fn a_restore_onto_another_mac_is_refused() {
    let h = NetHarness::new(None);
    let other = MacAddr([0x02, 0, 0, 0, 0, 0x99]);
    let err = h.restore_into(device(other, None)).err().expect("refused");
    assert!(
        matches!(&err, SnapshotError::DeviceState(m) if m.contains("02:00:00:00:00:99")),
        "{err}"
    );
}
