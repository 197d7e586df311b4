//! Finding the CNI plugin's interface in the pod's network namespace and
//! reading what the guest must copy from it.
//!
//! The namespace's links, addresses and main-table routes are read with
//! netlink into plain facts (`read`), then judged without netlink
//! (`choose_interface`, `guest_network`), which is what the unit tests
//! drive. Supported: exactly one interface, a veth (what the bridge, ptp
//! and most CNI plugins make) or a plain ethernet device, with at least one
//! IP address. Not counted: loopback, husk's own tap, and links that are
//! down without addresses (the fallback tunnels `sit0`, `tunl0`, ... that
//! the kernel puts in every namespace). Refused with an error naming what
//! was found: no interface, several, another kind of link (bridge, vxlan,
//! macvlan, tun, ...), no address, an unusable MAC or MTU, more than
//! `MAX_ADDRESSES` addresses or `MAX_ROUTES` routes, multipath routes.
//! Left out on purpose: IPv6 link-local addresses and routes (the guest's
//! kernel makes the same ones from the same MAC), routes of other tables,
//! and non-unicast routes.

use std::io;
use std::net::IpAddr;

use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::guest::{self, GuestNetwork, GuestRoute, IpPrefix, MAX_ADDRESSES, MAX_ROUTES};
use super::rtnl::Rtnl;

const RT_TABLE_MAIN: u32 = 254;

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error(
        "no network interface to give the guest (found only: {found}); did the CNI plugin run?"
    )]
    NoInterface { found: String },
    #[error("{count} network interfaces ({found}); husk gives a pod one, so several CNI interfaces are not supported")]
    SeveralInterfaces { count: usize, found: String },
    #[error("interface {name} is a {kind} link; husk supports a veth or a plain ethernet device")]
    UnsupportedLink { name: String, kind: String },
    #[error("interface {name} has no IP address (IPv6 link-local ones do not count)")]
    NoAddress { name: String },
    #[error("interface {name} has {count} IP addresses; husk supports at most {MAX_ADDRESSES}")]
    TooManyAddresses { name: String, count: usize },
    #[error(
        "interface {name} has {count} routes in the main table; husk supports at most {MAX_ROUTES}"
    )]
    TooManyRoutes { name: String, count: usize },
    #[error("interface {name} has MAC address {mac}, which is not a unicast ethernet address")]
    BadMac { name: String, mac: String },
    #[error("interface {name} has MTU {mtu}, {problem}")]
    BadMtu {
        name: String,
        mtu: u32,
        problem: String,
    },
    #[error("route {route} has several next hops; husk supports single-path routes")]
    MultipathRoute { route: String },
    #[error("reading the {what} of the namespace: {source}")]
    Netlink {
        what: &'static str,
        source: io::Error,
    },
}

/// What kind of link a link is, as far as choosing the pod interface goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    Loopback,
    Veth,
    /// An ethernet device without a link kind (a physical NIC or VF).
    Ethernet,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: LinkKind,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub prefix: IpPrefix,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub oif: Option<u32>,
    pub table: u32,
    pub unicast: bool,
    pub multipath: bool,
    pub dest: Option<IpPrefix>,
    pub gateway: Option<IpAddr>,
    pub source: Option<IpAddr>,
    pub scope: u8,
}

/// The namespace's links, addresses and routes.
pub struct Facts {
    pub links: Vec<Link>,
    pub addresses: Vec<Address>,
    pub routes: Vec<Route>,
}

pub fn read(rtnl: &mut Rtnl) -> Result<Facts, DiscoverError> {
    let netlink = |what| move |source| DiscoverError::Netlink { what, source };
    Ok(Facts {
        links: read_links(rtnl).map_err(netlink("links"))?,
        addresses: read_addresses(rtnl).map_err(netlink("addresses"))?,
        routes: read_routes(rtnl).map_err(netlink("routes"))?,
    })
}

pub fn read_links(rtnl: &mut Rtnl) -> io::Result<Vec<Link>> {
    let dump = rtnl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    Ok(dump
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_of(&l)),
            _ => None,
        })
        .collect())
}

fn link_of(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        kind: LinkKind::Ethernet,
        mac: Vec::new(),
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
    };
    let mut info_kind = None;
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) => link.mac = a.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::LinkInfo(infos) => {
                info_kind = infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(k.clone()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    link.kind = match (m.header.link_layer_type, info_kind) {
        (LinkLayerType::Loopback, _) => LinkKind::Loopback,
        (_, Some(InfoKind::Veth)) => LinkKind::Veth,
        (_, Some(other)) => LinkKind::Other(other.to_string()),
        (LinkLayerType::Ether, None) => LinkKind::Ethernet,
        (other, None) => LinkKind::Other(format!("{other:?}").to_lowercase()),
    };
    link
}

fn read_addresses(rtnl: &mut Rtnl) -> io::Result<Vec<Address>> {
    let dump = rtnl.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
    Ok(dump
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) => address_of(&a),
            _ => None,
        })
        .collect())
}

fn address_of(m: &AddressMessage) -> Option<Address> {
    // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's
    // on point-to-point links); IPv6 only sends IFA_ADDRESS.
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let addr = local.or_else(|| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    Some(Address {
        index: m.header.index,
        prefix: IpPrefix::new(addr, m.header.prefix_len)?,
    })
}

fn read_routes(rtnl: &mut Rtnl) -> io::Result<Vec<Route>> {
    let mut routes = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        for m in rtnl.dump(RouteNetlinkMessage::GetRoute(req))? {
            if let RouteNetlinkMessage::NewRoute(r) = m {
                routes.push(route_of(&r));
            }
        }
    }
    Ok(routes)
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn route_of(m: &RouteMessage) -> Route {
    let mut route = Route {
        oif: None,
        table: m.header.table.into(),
        unicast: m.header.kind == RouteType::Unicast,
        multipath: false,
        dest: None,
        gateway: None,
        source: None,
        scope: m.header.scope.into(),
    };
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::MultiPath(_) => route.multipath = true,
            RouteAttribute::Destination(d) => {
                route.dest =
                    ip_of(d).and_then(|ip| IpPrefix::new(ip, m.header.destination_prefix_length));
            }
            RouteAttribute::Gateway(g) => route.gateway = ip_of(g),
            RouteAttribute::PrefSource(s) => route.source = ip_of(s),
            _ => {}
        }
    }
    route
}

fn describe(links: &[&Link]) -> String {
    let names: Vec<String> = links
        .iter()
        .map(|l| {
            let kind = match &l.kind {
                LinkKind::Loopback => "loopback",
                LinkKind::Veth => "veth",
                LinkKind::Ethernet => "ethernet",
                LinkKind::Other(k) => k,
            };
            let down = if l.up { "" } else { ", down" };
            format!("{} ({kind}{down})", l.name)
        })
        .collect();
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

/// The pod interface: the one link that is not loopback, not `tap_name`,
/// and not a down link without addresses.
pub fn choose_interface<'a>(facts: &'a Facts, tap_name: &str) -> Result<&'a Link, DiscoverError> {
    let has_address = |l: &Link| facts.addresses.iter().any(|a| a.index == l.index);
    let candidates: Vec<&Link> = facts
        .links
        .iter()
        .filter(|l| l.kind != LinkKind::Loopback && l.name != tap_name)
        .filter(|l| l.up || has_address(l))
        .collect();
    let link = match candidates.as_slice() {
        [] => {
            let all: Vec<&Link> = facts.links.iter().collect();
            return Err(DiscoverError::NoInterface {
                found: describe(&all),
            });
        }
        [one] => *one,
        several => {
            return Err(DiscoverError::SeveralInterfaces {
                count: several.len(),
                found: describe(several),
            })
        }
    };
    match &link.kind {
        LinkKind::Veth | LinkKind::Ethernet => Ok(link),
        LinkKind::Other(kind) => Err(DiscoverError::UnsupportedLink {
            name: link.name.clone(),
            kind: kind.clone(),
        }),
        LinkKind::Loopback => unreachable!("loopback links were filtered out"),
    }
}

fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

fn is_ipv6_multicast(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.is_multicast())
}

/// What the guest must copy from `link`.
pub fn guest_network(facts: &Facts, link: &Link) -> Result<GuestNetwork, DiscoverError> {
    let name = link.name.clone();
    let mac = guest::unicast_mac(&link.mac).ok_or_else(|| DiscoverError::BadMac {
        name: name.clone(),
        mac: guest::format_mac(&link.mac),
    })?;
    let addresses: Vec<IpPrefix> = facts
        .addresses
        .iter()
        .filter(|a| a.index == link.index && !is_ipv6_link_local(&a.prefix.addr))
        .map(|a| a.prefix)
        .collect();
    if addresses.is_empty() {
        return Err(DiscoverError::NoAddress { name });
    }
    if addresses.len() > MAX_ADDRESSES {
        let count = addresses.len();
        return Err(DiscoverError::TooManyAddresses { name, count });
    }
    if let Some(problem) = guest::mtu_problem(link.mtu, &addresses) {
        let mtu = link.mtu;
        return Err(DiscoverError::BadMtu { name, mtu, problem });
    }
    let mut routes = guest_routes(facts, link)?;
    guest::order_routes(&mut routes);
    Ok(GuestNetwork {
        iface_name: name,
        mac,
        mtu: link.mtu,
        addresses,
        routes,
    })
}

fn guest_routes(facts: &Facts, link: &Link) -> Result<Vec<GuestRoute>, DiscoverError> {
    let mut routes = Vec::new();
    let ours = facts.routes.iter().filter(|r| {
        r.table == RT_TABLE_MAIN && r.unicast && (r.oif == Some(link.index) || r.multipath)
    });
    for r in ours {
        let route = GuestRoute {
            dest: r.dest,
            gateway: r.gateway,
            device: link.name.clone(),
            source: r.source,
            scope: r.scope,
        };
        if r.multipath {
            return Err(DiscoverError::MultipathRoute {
                route: route.to_string(),
            });
        }
        let kernel_managed = r
            .dest
            .is_some_and(|d| is_ipv6_link_local(&d.addr) || is_ipv6_multicast(&d.addr));
        if !kernel_managed {
            routes.push(route);
        }
    }
    if routes.len() > MAX_ROUTES {
        return Err(DiscoverError::TooManyRoutes {
            name: link.name.clone(),
            count: routes.len(),
        });
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, kind: LinkKind, up: bool) -> Link {
        Link {
            index,
            name: name.into(),
            kind,
            mac: vec![0x02, 0, 0, 0, 0, index as u8],
            mtu: 1500,
            up,
        }
    }

    fn addr(index: u32, ip: &str, len: u8) -> Address {
        Address {
            index,
            prefix: IpPrefix::new(ip.parse().unwrap(), len).unwrap(),
        }
    }

    fn route(oif: u32, dest: Option<(&str, u8)>, gateway: Option<&str>) -> Route {
        Route {
            oif: Some(oif),
            table: RT_TABLE_MAIN,
            unicast: true,
            multipath: false,
            dest: dest.map(|(ip, len)| IpPrefix::new(ip.parse().unwrap(), len).unwrap()),
            gateway: gateway.map(|g| g.parse().unwrap()),
            source: None,
            scope: if gateway.is_some() { 0 } else { 253 },
        }
    }

    /// What the bridge plugin leaves: lo, a fallback tunnel, eth0 with
    /// IPv4, IPv6 and link-local addresses and their routes.
    fn cni_namespace() -> Facts {
        Facts {
            links: vec![
                link(1, "lo", LinkKind::Loopback, true),
                link(2, "tunl0", LinkKind::Other("ipip".into()), false),
                link(3, "eth0", LinkKind::Veth, true),
            ],
            addresses: vec![
                addr(1, "127.0.0.1", 8),
                addr(3, "198.18.0.2", 24),
                addr(3, "2001:db8::2", 64),
                addr(3, "fe80::42:c6ff:fe12:2", 64),
            ],
            routes: vec![
                route(3, None, Some("198.18.0.1")),
                route(3, Some(("198.18.0.0", 24)), None),
                route(3, Some(("2001:db8::", 64)), None),
                route(3, Some(("fe80::", 64)), None),
                route(3, None, Some("fe80::1")),
                Route {
                    table: 255,
                    ..route(3, Some(("198.18.0.2", 32)), None)
                },
                route(1, Some(("127.0.0.0", 8)), None),
            ],
        }
    }

    #[test]
    fn the_cni_veth_is_chosen_and_copied() {
        let facts = cni_namespace();
        let eth0 = choose_interface(&facts, "tap0_husk").unwrap();
        assert_eq!(eth0.name, "eth0");
        let n = guest_network(&facts, eth0).unwrap();
        assert_eq!(n.iface_name, "eth0");
        assert_eq!(n.mac, [2, 0, 0, 0, 0, 3]);
        assert_eq!(n.mtu, 1500);
        let addrs: Vec<String> = n.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["198.18.0.2/24", "2001:db8::2/64"]);
        let routes: Vec<String> = n.routes.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            routes,
            [
                "198.18.0.0/24 dev eth0",
                "2001:db8::/64 dev eth0",
                "default via 198.18.0.1 dev eth0",
                "default via fe80::1 dev eth0",
            ]
        );
    }

    #[test]
    fn husks_tap_is_not_a_candidate() {
        let mut facts = cni_namespace();
        facts
            .links
            .push(link(9, "tap0_husk", LinkKind::Other("tun".into()), true));
        assert_eq!(choose_interface(&facts, "tap0_husk").unwrap().name, "eth0");
        let err = choose_interface(&facts, "tap1").unwrap_err();
        assert!(
            matches!(err, DiscoverError::SeveralInterfaces { count: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn no_interface_names_what_was_found() {
        let mut facts = cni_namespace();
        facts.links.retain(|l| l.name != "eth0");
        let err = choose_interface(&facts, "tap0_husk").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("lo (loopback)") && text.contains("tunl0 (ipip, down)"),
            "{text}"
        );
    }

    #[test]
    fn several_interfaces_are_refused_by_name() {
        let mut facts = cni_namespace();
        facts.links.push(link(4, "net1", LinkKind::Veth, true));
        let text = choose_interface(&facts, "tap0_husk")
            .unwrap_err()
            .to_string();
        assert!(text.contains("eth0 (veth), net1 (veth)"), "{text}");
    }

    #[test]
    fn other_link_kinds_are_refused() {
        let mut facts = cni_namespace();
        facts.links[2].kind = LinkKind::Other("macvlan".into());
        let err = choose_interface(&facts, "tap0_husk").unwrap_err();
        assert!(
            matches!(err, DiscoverError::UnsupportedLink { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("eth0 is a macvlan"), "{err}");
    }

    #[test]
    fn untrusted_values_become_errors() {
        let facts = cni_namespace();
        let mut eth0 = facts.links[2].clone();
        for mtu in [0, 67, 65522, u32::MAX] {
            eth0.mtu = mtu;
            let err = guest_network(&facts, &eth0).unwrap_err();
            assert!(matches!(err, DiscoverError::BadMtu { .. }), "{mtu}: {err}");
        }
        eth0.mtu = 1500;
        eth0.mac = vec![0xff; 6];
        assert!(matches!(
            guest_network(&facts, &eth0),
            Err(DiscoverError::BadMac { .. })
        ));
        eth0.mac = vec![2; 20];
        assert!(matches!(
            guest_network(&facts, &eth0),
            Err(DiscoverError::BadMac { .. })
        ));
    }

    #[test]
    fn address_and_route_counts_are_bounded() {
        let mut facts = cni_namespace();
        facts
            .addresses
            .retain(|a| a.index != 3 || is_ipv6_link_local(&a.prefix.addr));
        let eth0 = facts.links[2].clone();
        let err = guest_network(&facts, &eth0).unwrap_err();
        assert!(matches!(err, DiscoverError::NoAddress { .. }), "{err}");

        for i in 0..17u8 {
            facts.addresses.push(addr(3, &format!("198.18.1.{i}"), 24));
        }
        let err = guest_network(&facts, &eth0).unwrap_err();
        assert!(
            matches!(err, DiscoverError::TooManyAddresses { count: 17, .. }),
            "{err}"
        );

        let mut facts = cni_namespace();
        for i in 0..MAX_ROUTES as u8 {
            let net = format!("198.19.{i}.0");
            facts
                .routes
                .push(route(3, Some((&net, 24)), Some("198.18.0.1")));
        }
        let err = guest_network(&facts, &eth0).unwrap_err();
        assert!(matches!(err, DiscoverError::TooManyRoutes { .. }), "{err}");
    }

    #[test]
    fn multipath_routes_are_refused() {
        let mut facts = cni_namespace();
        facts.routes.push(Route {
            oif: None,
            multipath: true,
            ..route(0, Some(("198.19.0.0", 16)), None)
        });
        let eth0 = facts.links[2].clone();
        let err = guest_network(&facts, &eth0).unwrap_err();
        assert!(err.to_string().contains("198.19.0.0/16"), "{err}");
    }
}
