//! What the guest's NIC must look like: the pod interface's name, MAC, MTU,
//! addresses and routes, as `discover` found them in the pod's network
//! namespace, and the agent requests (UpdateInterface, UpdateRoutes) that
//! give them to the guest.
//!
//! The values come from the CNI plugin, so they are checked here before the
//! guest sees them: a MAC must be a unicast ethernet address, an MTU must be
//! one a tap can carry, and the counts of addresses and routes are capped.

use std::fmt;
use std::net::IpAddr;

use husk_agent_protocol::agent;

/// Smallest MTU IPv4 allows.
pub const MIN_MTU: u32 = 68;
/// Smallest MTU with which Linux keeps IPv6 on an interface.
pub const MIN_MTU_IPV6: u32 = 1280;
/// Largest MTU a tap takes (65535 less its headers).
pub const MAX_MTU: u32 = 65521;
/// More addresses than this on the pod interface are refused.
pub const MAX_ADDRESSES: usize = 16;
/// More routes than this through the pod interface are refused.
pub const MAX_ROUTES: usize = 64;

/// An address with its prefix length: `198.18.0.2/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl IpPrefix {
    /// None when `len` is longer than the family allows.
    pub fn new(addr: IpAddr, len: u8) -> Option<IpPrefix> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (len <= max).then_some(IpPrefix { addr, len })
    }

    fn to_proto(self) -> agent::IPAddress {
        agent::IPAddress {
            address: self.addr.to_string(),
            prefix_len: self.len.into(),
            ..Default::default()
        }
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A route of the main table through the pod interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRoute {
    /// None for the default route.
    pub dest: Option<IpPrefix>,
    /// None for a directly connected route.
    pub gateway: Option<IpAddr>,
    /// The interface, by its name in the pod (which the guest's NIC takes).
    pub device: String,
    /// The preferred source address.
    pub source: Option<IpAddr>,
    /// rtnetlink's scope (0 universe, 253 link, 254 host).
    pub scope: u8,
}

impl fmt::Display for GuestRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dest {
            Some(d) => write!(f, "{d}")?,
            None => write!(f, "default")?,
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        write!(f, " dev {}", self.device)
    }
}

/// The guest's side of the pod network: what the agent configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNetwork {
    /// The pod interface's name (e.g. `eth0`); the guest's NIC is renamed to it.
    pub iface_name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// IPv4 and global IPv6 addresses (IPv6 link-local ones are left out:
    /// the guest derives the same one from the same MAC).
    pub addresses: Vec<IpPrefix>,
    /// Connected routes first, then routes through a gateway.
    pub routes: Vec<GuestRoute>,
}

impl GuestNetwork {
    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }

    /// The agent request that gives the guest's NIC this name, MAC, MTU and
    /// these addresses.
    pub fn update_interface_request(&self) -> agent::UpdateInterfaceRequest {
        let interface = agent::Interface {
            name: self.iface_name.clone(),
            mac: self.mac_string(),
            mtu: self.mtu,
            addresses: self.addresses.iter().map(|a| a.to_proto()).collect(),
            ..Default::default()
        };
        agent::UpdateInterfaceRequest {
            interface: Some(interface).into(),
            ..Default::default()
        }
    }

    /// The agent request that gives the guest these routes (send it after
    /// UpdateInterface: routes need the interface and its addresses).
    pub fn update_routes_request(&self) -> agent::UpdateRoutesRequest {
        let text = |ip: Option<IpAddr>| ip.map(|ip| ip.to_string()).unwrap_or_default();
        let routes = self
            .routes
            .iter()
            .map(|r| agent::Route {
                dest: r.dest.map(|d| d.to_string()).unwrap_or_default(),
                gateway: text(r.gateway),
                device: r.device.clone(),
                source: text(r.source),
                scope: r.scope.into(),
                ..Default::default()
            })
            .collect();
        agent::UpdateRoutesRequest {
            routes,
            ..Default::default()
        }
    }
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A MAC the guest can take: 6 bytes, not all zero, not multicast.
pub fn unicast_mac(bytes: &[u8]) -> Option<[u8; 6]> {
    let mac: [u8; 6] = bytes.try_into().ok()?;
    let usable = mac != [0; 6] && mac[0] & 1 == 0;
    usable.then_some(mac)
}

/// Why an MTU is refused, or None when it is fine for these addresses.
pub fn mtu_problem(mtu: u32, addresses: &[IpPrefix]) -> Option<String> {
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return Some(format!("outside {MIN_MTU}..={MAX_MTU}"));
    }
    if mtu < MIN_MTU_IPV6 && addresses.iter().any(|a| a.addr.is_ipv6()) {
        return Some(format!(
            "below {MIN_MTU_IPV6}, with which Linux turns IPv6 off"
        ));
    }
    None
}

/// Connected routes first: a gateway must be reachable when its route is added.
pub fn order_routes(routes: &mut [GuestRoute]) {
    routes.sort_by_key(|r| r.gateway.is_some());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(s: &str, len: u8) -> IpPrefix {
        IpPrefix::new(s.parse().unwrap(), len).unwrap()
    }

    fn network() -> GuestNetwork {
        GuestNetwork {
            iface_name: "eth0".into(),
            mac: [0x02, 0x42, 0xc6, 0x12, 0x00, 0x02],
            mtu: 1450,
            addresses: vec![prefix("198.18.0.2", 24), prefix("2001:db8::2", 64)],
            routes: vec![
                GuestRoute {
                    dest: Some(prefix("198.18.0.0", 24)),
                    gateway: None,
                    device: "eth0".into(),
                    source: Some("198.18.0.2".parse().unwrap()),
                    scope: 253,
                },
                GuestRoute {
                    dest: None,
                    gateway: Some("198.18.0.1".parse().unwrap()),
                    device: "eth0".into(),
                    source: None,
                    scope: 0,
                },
            ],
        }
    }

    #[test]
    fn the_agent_requests_carry_every_field_as_text() {
        let n = network();
        let req = n.update_interface_request();
        let i = req.interface.as_ref().unwrap();
        assert_eq!(
            (i.name.as_str(), i.mac.as_str(), i.mtu),
            ("eth0", "02:42:c6:12:00:02", 1450)
        );
        let addrs: Vec<_> = i
            .addresses
            .iter()
            .map(|a| (a.address.as_str(), a.prefix_len))
            .collect();
        assert_eq!(addrs, [("198.18.0.2", 24), ("2001:db8::2", 64)]);

        let routes = n.update_routes_request().routes;
        assert_eq!(routes.len(), 2);
        assert_eq!(
            (routes[0].dest.as_str(), routes[0].gateway.as_str()),
            ("198.18.0.0/24", "")
        );
        assert_eq!(
            (routes[0].source.as_str(), routes[0].scope),
            ("198.18.0.2", 253)
        );
        assert_eq!(
            (routes[1].dest.as_str(), routes[1].gateway.as_str()),
            ("", "198.18.0.1")
        );
        assert_eq!(routes[1].device, "eth0");
    }

    #[test]
    fn odd_cni_values_are_refused_not_trusted() {
        assert_eq!(unicast_mac(&[0; 6]), None);
        assert_eq!(unicast_mac(&[1, 0, 0, 0, 0, 1]), None, "multicast");
        assert_eq!(unicast_mac(&[2, 0, 0, 0, 1]), None, "5 bytes");
        assert_eq!(unicast_mac(&[2, 0, 0, 0, 0, 1, 0, 0]), None, "8 bytes");
        assert!(unicast_mac(&[2, 0, 0, 0, 0, 1]).is_some());

        let v4 = [prefix("198.18.0.2", 24)];
        let v6 = [prefix("2001:db8::2", 64)];
        assert!(mtu_problem(0, &v4).is_some());
        assert!(mtu_problem(u32::MAX, &v4).is_some());
        assert!(mtu_problem(65535, &v4).is_some());
        assert!(mtu_problem(576, &v4).is_none());
        assert!(mtu_problem(576, &v6).unwrap().contains("IPv6"));
        assert!(mtu_problem(1500, &v6).is_none());

        assert!(IpPrefix::new("198.18.0.2".parse().unwrap(), 33).is_none());
        assert!(IpPrefix::new("2001:db8::".parse().unwrap(), 129).is_none());
    }

    #[test]
    fn connected_routes_come_before_gateway_routes() {
        let mut routes = network().routes;
        routes.reverse();
        order_routes(&mut routes);
        assert_eq!(routes[0].gateway, None);
        assert_eq!(routes[1].to_string(), "default via 198.18.0.1 dev eth0");
    }
}
