//! UpdateInterface and UpdateRoutes end to end on a host, as root: the built
//! husk-agent runs in a "guest" network namespace the test made, where one end of a veth (`enp0s1`, a random MAC) stands in for the
//! guest's virtio-net NIC; the other end is in a "peer" namespace standing
//! in for the pod network. Addresses come from 198.18.0.0/15; both
//! namespaces are deleted at the end, also when the test fails.

mod agent_process;

use std::process::Command;

use agent_process::{ctx, status_of, AgentProcess};
use husk_agent_protocol::agent;
use husk_agent_protocol::ttrpc::Code;
use serde_json::Value;

const MAC: &str = "02:42:c6:12:00:02";

struct Namespaces {
    guest: String,
    peer: String,
}

impl Namespaces {
    /// None (after saying why) when this machine cannot run the test.
    fn new(test: &str) -> Option<Namespaces> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP {test}: network namespaces and veths need root");
            return None;
        }
        if Command::new("ip").arg("-V").output().is_err() {
            eprintln!("SKIP {test}: needs iproute2's ip (apt-get install iproute2)");
            return None;
        }
        let base = format!("husk-agent-{}-{test}", std::process::id());
        let ns = Namespaces {
            guest: format!("{base}-guest"),
            peer: format!("{base}-peer"),
        };
        for name in [&ns.guest, &ns.peer] {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            run(&["netns", "add", name]);
        }
        ns.guest_ip(&[
            "link", "add", "enp0s1", "type", "veth", "peer", "name", "peer0", "netns", &ns.peer,
        ]);
        ns.peer_ip(&["addr", "add", "198.18.0.1/24", "dev", "peer0"]);
        ns.peer_ip(&["addr", "add", "2001:db8::1/64", "dev", "peer0", "nodad"]);
        ns.peer_ip(&["addr", "add", "198.19.5.1/32", "dev", "lo"]);
        ns.peer_ip(&["link", "set", "peer0", "up"]);
        ns.peer_ip(&["link", "set", "lo", "up"]);
        Some(ns)
    }

    fn guest_ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.guest];
        all.extend_from_slice(args);
        run(&all)
    }

    fn peer_ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.peer];
        all.extend_from_slice(args);
        run(&all)
    }

    fn guest_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.guest_ip(&all)).expect("ip -j prints JSON")
    }

    /// The guest namespace's links by name, with their addresses.
    fn link(&self, name: &str) -> Value {
        let links = self.guest_json(&["addr", "show"]);
        links
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["ifname"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no link {name} in {links}"))
    }

    /// `ip route show` lines of the guest's main table (IPv4, then IPv6).
    fn routes(&self) -> String {
        let v4 = self.guest_ip(&["route", "show"]);
        let v6 = self.guest_ip(&["-6", "route", "show"]);
        format!("{v4}{v6}")
    }

    /// One ping from the guest namespace (busybox, since iputils is not here).
    fn ping(&self, to: &str) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.guest,
                "busybox",
                "ping",
                "-c",
                "1",
                "-W",
                "5",
                to,
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in [&self.guest, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn interface_req(name: &str, mtu: u32, addrs: &[(&str, u32)]) -> agent::UpdateInterfaceRequest {
    let interface = agent::Interface {
        name: name.into(),
        mac: MAC.into(),
        mtu,
        addresses: addrs
            .iter()
            .map(|(a, l)| agent::IPAddress {
                address: a.to_string(),
                prefix_len: *l,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    agent::UpdateInterfaceRequest {
        interface: Some(interface).into(),
        ..Default::default()
    }
}

fn route(dest: &str, gateway: &str, device: &str, source: &str, scope: u32) -> agent::Route {
    agent::Route {
        dest: dest.into(),
        gateway: gateway.into(),
        device: device.into(),
        source: source.into(),
        scope,
        ..Default::default()
    }
}

fn routes_req(routes: Vec<agent::Route>) -> agent::UpdateRoutesRequest {
    agent::UpdateRoutesRequest {
        routes,
        ..Default::default()
    }
}

/// The link's addresses without IPv6 link-local ones, as "addr/len".
fn addresses(link: &Value) -> Vec<String> {
    link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

fn is_up(link: &Value) -> bool {
    link["flags"].as_array().unwrap().iter().any(|f| f == "UP")
}

#[test]
fn the_nic_takes_the_pod_interface_and_its_routes_and_traffic_flows() {
    let Some(ns) = Namespaces::new("nic") else {
        return;
    };
    let agent = AgentProcess::start_in_netns("net-nic", &ns.guest);
    let c = &agent.client;
    let req = interface_req("eth0", 1400, &[("198.18.0.2", 24), ("2001:db8::2", 64)]);
    c.update_interface(ctx(), &req).unwrap();

    let eth0 = ns.link("eth0");
    assert_eq!(eth0["address"], MAC, "{eth0}");
    assert_eq!(eth0["mtu"], 1400, "{eth0}");
    assert!(is_up(&eth0), "{eth0}");
    assert_eq!(addresses(&eth0), ["198.18.0.2/24", "2001:db8::2/64"]);
    assert!(is_up(&ns.link("lo")), "lo is up");

    // Gateway routes first: the agent must add the connected one before them.
    let routes = vec![
        route("", "198.18.0.1", "eth0", "", 0),
        route("198.19.5.0/24", "198.18.0.1", "", "", 0),
        route("198.18.0.0/24", "", "eth0", "198.18.0.2", 253),
        route("2001:db8::/64", "", "eth0", "", 0),
        route("", "2001:db8::1", "eth0", "", 0),
    ];
    c.update_routes(ctx(), &routes_req(routes)).unwrap();
    let table = ns.routes();
    for line in [
        "default via 198.18.0.1 dev eth0",
        "198.18.0.0/24 dev eth0 scope link src 198.18.0.2",
        "198.19.5.0/24 via 198.18.0.1 dev eth0",
        "2001:db8::/64 dev eth0",
        "default via 2001:db8::1 dev eth0",
    ] {
        assert!(table.contains(line), "{line:?} missing from:\n{table}");
    }
    assert!(ns.ping("198.19.5.1"), "through the gateway route");
    assert!(ns.ping("2001:db8::1"), "over IPv6");

    // Again, with other values: addresses and routes are replaced.
    let req = interface_req("eth0", 1500, &[("198.18.0.3", 24)]);
    c.update_interface(ctx(), &req).unwrap();
    let eth0 = ns.link("eth0");
    assert_eq!(addresses(&eth0), ["198.18.0.3/24"]);
    assert_eq!(eth0["mtu"], 1500);
    let only = vec![route("198.18.0.0/24", "", "", "", 253)];
    c.update_routes(ctx(), &routes_req(only)).unwrap();
    let table = ns.routes();
    assert!(!table.contains("default"), "{table}");
    assert!(!table.contains("198.19.5.0/24"), "{table}");
    assert!(table.contains("198.18.0.0/24 dev eth0"), "{table}");
    assert!(ns.ping("198.18.0.1"));
}

#[test]
fn refused_requests_get_clear_statuses_and_change_nothing() {
    let Some(ns) = Namespaces::new("refused") else {
        return;
    };
    let agent = AgentProcess::start_in_netns("net-refused", &ns.guest);
    let c = &agent.client;

    let (code, msg) = status_of(c.update_interface(ctx(), &agent::UpdateInterfaceRequest::new()));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    let mut bad_mac = interface_req("eth0", 1500, &[("198.18.0.2", 24)]);
    bad_mac.interface.as_mut().unwrap().mac = "02:42:c6:12:00".into();
    let (code, msg) = status_of(c.update_interface(ctx(), &bad_mac));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("interface.mac"), "{msg}");
    assert!(ns.link("enp0s1")["addr_info"]
        .as_array()
        .unwrap()
        .is_empty());

    c.update_interface(ctx(), &interface_req("eth0", 1500, &[("198.18.0.2", 24)]))
        .unwrap();
    let unknown_dev = routes_req(vec![route("198.19.6.0/24", "", "eth9", "", 253)]);
    let (code, msg) = status_of(c.update_routes(ctx(), &unknown_dev));
    assert_eq!(code, Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("eth9"), "{msg}");
    let unreachable = routes_req(vec![route("198.19.6.0/24", "198.19.9.9", "", "", 0)]);
    let (code, msg) = status_of(c.update_routes(ctx(), &unreachable));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("198.19.9.9"), "{msg}");
    let table = ns.routes();
    assert!(
        table.contains("198.18.0.0/24 dev eth0"),
        "a refused request keeps the old routes:\n{table}"
    );
    let no_gateway = routes_req(vec![route("", "", "", "", 0)]);
    let (code, msg) = status_of(c.update_routes(ctx(), &no_gateway));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("routes[0].dest"), "{msg}");

    // A second ethernet link: which one is the NIC is not for the agent to guess.
    ns.guest_ip(&[
        "link", "add", "eth1", "type", "veth", "peer", "name", "peer1", "netns", &ns.peer,
    ]);
    let (code, msg) = status_of(c.update_interface(ctx(), &interface_req("eth0", 1500, &[])));
    assert_eq!(code, Code::FAILED_PRECONDITION, "{msg}");
    assert!(
        msg.contains("eth0, eth1") || msg.contains("eth1, eth0"),
        "{msg}"
    );
}
