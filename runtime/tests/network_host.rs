//! Pod networking on this host, as root: each test makes its own pair of
//! network namespaces joined by a veth (a "pod" with `eth0`, as a CNI
//! plugin leaves it, and a "peer" standing in for the rest of the cluster),
//! addresses from 198.18.0.0/15, and removes both namespaces at the end,
//! also when it fails. Frames go only between those two namespaces.

mod netns_pair;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use husk_runtime::network::{self, in_netns, NetworkError, PodNetwork, TAP_NAME};
use husk_runtime::sandbox::host::{HostError, HostResources};
use husk_runtime::sandbox::spec::SandboxNetwork;
use husk_runtime::sandbox::SandboxDir;
use netns_pair::NetnsPair;

/// IFF_VNET_HDR without TUNSETVNETHDRSZ: a 10-byte virtio_net_hdr per frame.
const VNET_HDR: usize = 10;
const WAIT: Duration = Duration::from_secs(5);

fn setup(pair: &NetnsPair) -> PodNetwork {
    network::setup(&pair.pod_path(), TAP_NAME).expect("pod network setup")
}

fn my_netns() -> std::path::PathBuf {
    std::fs::read_link("/proc/thread-self/ns/net").unwrap()
}

#[test]
fn setup_copies_the_cni_interface_and_leaves_the_caller_where_it_was() {
    let Some(pair) = NetnsPair::new("copy") else {
        return;
    };
    pair.pod(&["link", "set", "eth0", "mtu", "1400"]);
    pair.pod(&["addr", "add", "2001:db8::2/64", "dev", "eth0", "nodad"]);
    let before = my_netns();
    let pod = setup(&pair);
    assert_eq!(my_netns(), before, "the caller's thread changed namespace");

    let g = &pod.guest;
    assert_eq!(g.iface_name, "eth0");
    assert_eq!(g.mac_string(), pair.pod_mac());
    assert_eq!(g.mtu, 1400);
    let addrs: Vec<String> = g.addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(addrs, ["198.18.0.2/24", "2001:db8::2/64"]);
    let routes: Vec<String> = g.routes.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        routes,
        [
            "198.18.0.0/24 dev eth0",
            "2001:db8::/64 dev eth0",
            "default via 198.18.0.1 dev eth0"
        ]
    );

    let tap = pair.pod_json(&["-d", "link", "show", TAP_NAME]);
    let tap = &tap[0];
    assert_eq!(tap["mtu"], 1400, "{tap}");
    assert!(
        tap["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{tap}"
    );
    let info = &tap["linkinfo"]["info_data"];
    assert_eq!(info["type"], "tap", "{tap}");
    assert_eq!(info["pi"], false, "{tap}");
    assert_eq!(info["vnet_hdr"], true, "{tap}");
    assert_eq!(
        info["persist"], false,
        "the tap must die with its fd: {tap}"
    );
    pod.teardown().unwrap();
}

#[test]
fn frames_flow_from_the_peer_to_the_tap_and_from_the_tap_to_the_peer() {
    let Some(pair) = NetnsPair::new("flow") else {
        return;
    };
    let pod = setup(&pair);
    let (guest_mac, peer_mac) = (mac_bytes(&pair.pod_mac()), mac_bytes(&pair.peer_mac()));

    // peer -> veth -> tap: the pod namespace's own stack never sees it.
    pair.peer(&[
        "neigh",
        "add",
        "198.18.0.2",
        "lladdr",
        &pair.pod_mac(),
        "dev",
        "peer0",
    ]);
    let sender = in_netns(&pair.peer_path(), || UdpSocket::bind("198.18.0.1:40000")).unwrap();
    let sender = sender.unwrap();
    sender.send_to(b"to the guest", "198.18.0.2:40001").unwrap();
    let frame = read_udp_frame(&pod.tap, 40001).expect("the datagram reached the tap");
    assert_eq!(&frame.dst_mac, &guest_mac);
    assert_eq!(&frame.src_mac, &peer_mac);
    assert_eq!(
        frame.src,
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40000)
    );
    assert_eq!(frame.payload, b"to the guest");

    // tap -> veth -> peer.
    let receiver = in_netns(&pair.peer_path(), || UdpSocket::bind("198.18.0.1:40002")).unwrap();
    let receiver = receiver.unwrap();
    receiver.set_read_timeout(Some(WAIT)).unwrap();
    let frame = udp_frame(&guest_mac, &peer_mac, 40003, 40002, b"from the guest");
    (&pod.tap).write_all(&frame).unwrap();
    let mut buf = [0u8; 256];
    let (n, from) = receiver
        .recv_from(&mut buf)
        .expect("the peer got the datagram");
    assert_eq!(&buf[..n], b"from the guest");
    assert_eq!(from.to_string(), "198.18.0.2:40003");
    pod.teardown().unwrap();
}

#[test]
fn teardown_leaves_no_tap_qdisc_or_filter() {
    let Some(pair) = NetnsPair::new("teardown") else {
        return;
    };
    let pod = setup(&pair);
    for (dev, to) in [("eth0", TAP_NAME), (TAP_NAME, "eth0")] {
        let filters = pair.tc(&["filter", "show", "dev", dev, "ingress"]);
        assert!(
            filters.contains(&format!("Egress Redirect to device {to}")),
            "{dev}: {filters}"
        );
    }
    pod.teardown().unwrap();
    assert_eq!(pair.ingress_qdiscs(), Vec::<String>::new());
    assert!(!pair.pod_has_link(TAP_NAME));
    assert!(pair.pod_has_link("eth0"), "the CNI interface stays");
}

#[test]
fn cleanup_after_a_crash_removes_the_stale_redirect_and_is_idempotent() {
    let Some(pair) = NetnsPair::new("crash") else {
        return;
    };
    // What kill -9 does to the runtime: its fds close, nothing else runs.
    let PodNetwork { tap, .. } = setup(&pair);
    drop(tap);
    assert!(
        !pair.pod_has_link(TAP_NAME),
        "the tap dies with its last fd"
    );
    assert_eq!(
        pair.ingress_qdiscs(),
        ["eth0"],
        "the veth's redirect is left"
    );

    let done = network::cleanup(&pair.pod_path(), TAP_NAME).unwrap();
    assert!(!done.tap_removed);
    assert_eq!(done.ingress_removed, ["eth0"]);
    assert_eq!(pair.ingress_qdiscs(), Vec::<String>::new());
    let again = network::cleanup(&pair.pod_path(), TAP_NAME).unwrap();
    assert_eq!(again, network::Cleanup::default());

    // With the tap still held (a persistent leftover, say): both go.
    let pod = setup(&pair);
    let done = network::cleanup(&pair.pod_path(), TAP_NAME).unwrap();
    assert!(done.tap_removed);
    assert_eq!(done.ingress_removed, ["eth0"]);
    assert!(!pair.pod_has_link(TAP_NAME));
    pod.teardown()
        .expect("teardown after cleanup has nothing left to do");
}

#[test]
fn setup_replaces_a_crashed_husks_leftover_but_not_someone_elses_qdisc() {
    let Some(pair) = NetnsPair::new("leftover") else {
        return;
    };
    let PodNetwork { tap, .. } = setup(&pair);
    drop(tap);
    let pod = setup(&pair);
    pod.teardown().unwrap();

    pair.run(
        "tc",
        &[
            "-n",
            &pair.pod_name,
            "qdisc",
            "add",
            "dev",
            "eth0",
            "ingress",
        ],
    );
    let err = network::setup(&pair.pod_path(), TAP_NAME).unwrap_err();
    assert!(matches!(err, NetworkError::IngressInUse { .. }), "{err}");
    assert!(err.to_string().contains("eth0"), "{err}");
    assert!(
        !pair.pod_has_link(TAP_NAME),
        "a refused setup leaves no tap"
    );
    let done = network::cleanup(&pair.pod_path(), TAP_NAME).unwrap();
    assert_eq!(done, network::Cleanup::default(), "cleanup leaves it too");
    assert_eq!(pair.ingress_qdiscs(), ["eth0"]);
}

#[test]
fn a_taken_tap_name_is_refused() {
    let Some(pair) = NetnsPair::new("taken") else {
        return;
    };
    let pod = setup(&pair);
    let err = network::setup(&pair.pod_path(), TAP_NAME).unwrap_err();
    assert!(matches!(err, NetworkError::TapExists { .. }), "{err}");
    pod.teardown().unwrap();
}

#[test]
fn cleanup_and_teardown_of_a_deleted_namespace_are_nothing_to_do() {
    let Some(mut pair) = NetnsPair::new("gone") else {
        return;
    };
    let pod = setup(&pair);
    let path = pair.pod_path();
    pair.delete_pod();
    assert!(!path.exists());
    assert_eq!(
        network::cleanup(&path, TAP_NAME).unwrap(),
        network::Cleanup::default()
    );
    pod.teardown().unwrap();
}

#[test]
fn no_interface_and_two_interfaces_are_clear_errors() {
    let Some(pair) = NetnsPair::new("count") else {
        return;
    };
    pair.pod(&[
        "link",
        "add",
        "net1",
        "type",
        "veth",
        "peer",
        "name",
        "peer1",
        "netns",
        &pair.peer_name,
    ]);
    pair.pod(&["link", "set", "net1", "up"]);
    let err = network::setup(&pair.pod_path(), TAP_NAME).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("2 network interfaces"), "{text}");
    assert!(
        text.contains("eth0 (veth)") && text.contains("net1 (veth)"),
        "{text}"
    );
    assert!(
        text.contains(&pair.pod_name),
        "the namespace is named: {text}"
    );
    assert!(!pair.pod_has_link(TAP_NAME));

    pair.pod(&["link", "del", "net1"]);
    pair.pod(&["link", "del", "eth0"]);
    let err = network::setup(&pair.pod_path(), TAP_NAME).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("no network interface"), "{text}");
    assert!(text.contains("lo (loopback)"), "{text}");
}

#[test]
fn an_interface_without_addresses_is_refused() {
    let Some(pair) = NetnsPair::new("noaddr") else {
        return;
    };
    pair.pod(&["addr", "flush", "dev", "eth0"]);
    let err = network::setup(&pair.pod_path(), TAP_NAME).unwrap_err();
    assert!(err.to_string().contains("eth0 has no IP address"), "{err}");
}

#[test]
fn an_mtu_above_the_guest_nics_is_refused_and_leaves_nothing() {
    let Some(pair) = NetnsPair::new("bigmtu") else {
        return;
    };
    pair.pod(&["link", "set", "eth0", "mtu", "9500"]);
    let state = tempfile::tempdir().unwrap();
    let dir = SandboxDir::new(state.path(), "bigmtu");
    dir.create().unwrap();
    let err = HostResources::acquire(&dir, None, &SandboxNetwork::Pod(pair.pod_path()))
        .err()
        .expect("MTU 9500 is refused");
    assert!(matches!(err, HostError::Mtu(9500)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("MTU 9500") && text.contains("at most 9000"),
        "{text}"
    );
    assert!(!pair.pod_has_link(TAP_NAME), "a refused pod keeps no tap");
    assert_eq!(pair.ingress_qdiscs(), Vec::<String>::new());
    dir.remove().unwrap();
}

// ---- frames -------------------------------------------------------------

struct UdpFrame {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: SocketAddrV4,
    payload: Vec<u8>,
}

/// Reads frames from the tap until an IPv4 UDP datagram to `port` (other
/// traffic, such as the peer's IPv6 router solicitations, is skipped).
fn read_udp_frame(tap: &File, port: u16) -> Option<UdpFrame> {
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; 65536];
    for _ in 0..100 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut fds = [nix::poll::PollFd::new(
            tap.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        if nix::poll::poll(&mut fds, ms).unwrap() == 0 {
            return None;
        }
        let n = (&*tap).read(&mut buf).unwrap();
        if let Some(f) = parse_udp(&buf[..n], port) {
            return Some(f);
        }
    }
    None
}

fn parse_udp(frame: &[u8], port: u16) -> Option<UdpFrame> {
    let eth = frame.get(VNET_HDR..)?;
    let ip = eth.get(14..)?;
    if eth.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 || *ip.get(9)? != 17 {
        return None;
    }
    let udp = ip.get(usize::from(ip[0] & 0xf) * 4..)?;
    let be16 = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    if be16(udp.get(2..4)?) != port {
        return None;
    }
    let len = usize::from(be16(udp.get(4..6)?));
    Some(UdpFrame {
        dst_mac: eth[0..6].try_into().unwrap(),
        src_mac: eth[6..12].try_into().unwrap(),
        src: SocketAddrV4::new(
            Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            be16(&udp[0..2]),
        ),
        payload: udp.get(8..len)?.to_vec(),
    })
}

/// vnet header + Ethernet + IPv4 198.18.0.2 -> 198.18.0.1 + UDP (no checksum).
fn udp_frame(src_mac: &[u8; 6], dst_mac: &[u8; 6], sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR];
    f.extend_from_slice(dst_mac);
    f.extend_from_slice(src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + data.len()) as u16;
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 198, 18, 0, 2, 198, 18, 0, 1,
    ];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let sum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(8 + data.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(data);
    f
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn mac_bytes(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

#[test]
fn the_test_frames_are_well_formed() {
    // The checksum of a header that carries its checksum folds to zero.
    let f = udp_frame(&[2; 6], &[4; 6], 1, 2, b"x");
    let ip = &f[VNET_HDR + 14..VNET_HDR + 34];
    assert_eq!(ipv4_checksum(ip), 0);
    let parsed = parse_udp(&f, 2).unwrap();
    assert_eq!(parsed.payload, b"x");
    assert_eq!(parsed.src.port(), 1);
    assert!(parse_udp(&f, 3).is_none());
    assert!(parse_udp(&f[..20], 2).is_none());
}
