//! A real guest's virtio-net driver against husk's device and a real tap.
//!
//! The tap lives in a network namespace the test makes (`TapRig`), with
//! 198.18.0.1/24 on it and TCP listeners inside; nothing can leave the
//! host. One boot of the busybox initramfs: the guest shows the MAC and MTU
//! the device offers, brings eth0 up as 198.18.0.2, pings the host side,
//! sends 256 KiB over TCP and receives 256 KiB back, printing each side's
//! sha256; the host checks both against what it got and sent.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use common::{guest_assets, kvm_or_skip, vm_config, TestVm};
use husk_devices::net::tap_rig::{tap_or_skip, TapRig};
use husk_vmm::{MacAddr, NetSpec};
use sha2::{Digest, Sha256};

const MAC: MacAddr = MacAddr([0x02, 0x48, 0x53, 0x4b, 0x00, 0x01]);
const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const LEN: usize = 256 * 1024;

const SCRIPT: &str = "b=busybox; $b ip link set eth0 up; \
$b ip addr add 198.18.0.2/24 dev eth0; \
echo NET-NIC $($b cat /sys/class/net/eth0/address) $($b cat /sys/class/net/eth0/mtu); \
$b ping -c 1 -W 60 198.18.0.1 >/dev/null && echo NET-PING ok; \
$b head -c 262144 /bin/busybox > /up; echo NET-UP $($b sha256sum /up); \
$b nc 198.18.0.1 5201 < /up; \
$b nc 198.18.0.1 5202 > /down; echo NET-DOWN $($b sha256sum /down)";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The first word after `marker` on the console.
fn word_after<'a>(console: &'a str, marker: &str) -> &'a str {
    console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(marker))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {marker:?} line:\n{console}"))
}

fn serve(listener: TcpListener, send: Option<Vec<u8>>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        match send {
            Some(data) => conn.write_all(&data).unwrap(),
            None => {
                conn.read_to_end(&mut got).unwrap();
            }
        }
        got
    })
}

#[test]
fn a_guest_talks_tcp_through_the_net_device_and_a_tap() {
    let test = "a_guest_talks_tcp_through_the_net_device_and_a_tap";
    if !kvm_or_skip(test) || !tap_or_skip(test) {
        return;
    }
    let assets = guest_assets();
    let (rig, tap) = TapRig::new();
    rig.set_ipv4(HOST.octets(), 24);
    let upload = serve(rig.tcp_listener(SocketAddrV4::new(HOST, 5201)), None);
    let down: Vec<u8> = (0..LEN as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let download = serve(
        rig.tcp_listener(SocketAddrV4::new(HOST, 5202)),
        Some(down.clone()),
    );

    let cmdline = format!("console=ttyS0 reboot=k panic=-1 -- run /bin/busybox sh -c \"{SCRIPT}\"");
    let mut config = vm_config(256, 1, &cmdline);
    config.initrd = Some(assets.busybox_initrd.clone());
    config.net = vec![NetSpec {
        mac: Some(MAC),
        mtu: 1400,
        tap: Some(Arc::new(tap)),
    }];
    let run = TestVm::start(&config).finish();
    run.assert_powered_off();
    let console = &run.console;

    assert_eq!(
        word_after(console, "NET-NIC "),
        MAC.to_string(),
        "the guest's MAC"
    );
    assert!(
        console.contains("NET-NIC 02:48:53:4b:00:01 1400"),
        "MTU 1400:\n{console}"
    );
    assert_eq!(word_after(console, "NET-PING "), "ok");
    let got = upload.join().unwrap();
    assert_eq!(got.len(), LEN, "bytes the guest sent");
    assert_eq!(
        sha256_hex(&got),
        word_after(console, "NET-UP "),
        "upload intact"
    );
    download.join().unwrap();
    assert_eq!(
        word_after(console, "NET-DOWN "),
        sha256_hex(&down),
        "download intact"
    );
}
