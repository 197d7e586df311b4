//! UpdateRoutes: the main table's routes through the guest's non-loopback
//! links become the requested ones. The new ones are added first,
//! connected-first, each with create-or-replace (a connected route the
//! kernel made for an address, or an old default route, is taken over
//! rather than refused); only then are the routes that were not asked for
//! removed (a template's, the kernel's for replaced addresses). So a
//! request the kernel refuses part-way leaves the old routes in place.

use std::collections::HashMap;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::interface::{find_nic, read_links};
use super::rtnl::Rtnl;
use super::{netlink, NetworkError, RouteConfig};

const RT_TABLE_MAIN: u32 = 254;

pub fn update_routes(routes: &[RouteConfig]) -> Result<(), NetworkError> {
    let mut rtnl = Rtnl::open().map_err(netlink("opening a netlink socket"))?;
    let links = read_links(&mut rtnl)?;
    let by_name: HashMap<&str, u32> = links.iter().map(|l| (l.name.as_str(), l.index)).collect();
    // Resolve every device before changing anything.
    let mut resolved = Vec::with_capacity(routes.len());
    for r in routes {
        let index = match &r.device {
            Some(dev) => *by_name
                .get(dev.as_str())
                .ok_or_else(|| NetworkError::NoSuchDevice {
                    route: r.to_string(),
                    device: dev.clone(),
                })?,
            None => find_nic(&links)?.index,
        };
        resolved.push((r, index));
    }
    resolved.sort_by_key(|(r, _)| r.gateway.is_some());
    for (r, index) in &resolved {
        rtnl.request(
            RouteNetlinkMessage::NewRoute(route_message(r, *index)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(netlink(format!("adding route {r}")))?;
    }
    let loopbacks: Vec<u32> = links
        .iter()
        .filter(|l| l.loopback)
        .map(|l| l.index)
        .collect();
    let wanted: Vec<Key> = resolved
        .iter()
        .map(|(r, index)| Key {
            ipv6: r.is_ipv6(),
            dest: r.dest.filter(|d| d.len > 0).map(|d| (d.addr, d.len)),
            gateway: r.gateway,
            oif: Some(*index),
        })
        .collect();
    remove_other_routes(&mut rtnl, &loopbacks, &wanted)?;
    tracing::debug!(routes = routes.len(), "routes configured");
    Ok(())
}

fn family(ipv6: bool) -> AddressFamily {
    if ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

fn route_message(r: &RouteConfig, oif: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(r.is_ipv6());
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = RouteScope::from(r.scope);
    m.header.kind = RouteType::Unicast;
    if let Some(d) = r.dest {
        m.header.destination_prefix_length = d.len;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(d.addr)));
    }
    if let Some(g) = r.gateway {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(g)));
    }
    if let Some(s) = r.source {
        m.attributes
            .push(RouteAttribute::PrefSource(RouteAddress::from(s)));
    }
    m.attributes.push(RouteAttribute::Oif(oif));
    m
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// What tells one route from another here.
#[derive(Debug, PartialEq, Eq)]
struct Key {
    ipv6: bool,
    /// None for a default route.
    dest: Option<(IpAddr, u8)>,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
}

fn key_of(m: &RouteMessage) -> Key {
    let mut key = Key {
        ipv6: m.header.address_family == AddressFamily::Inet6,
        dest: None,
        gateway: None,
        oif: None,
    };
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Destination(d) if m.header.destination_prefix_length > 0 => {
                key.dest = ip_of(d).map(|ip| (ip, m.header.destination_prefix_length));
            }
            RouteAttribute::Gateway(g) => key.gateway = ip_of(g),
            RouteAttribute::Oif(i) => key.oif = Some(*i),
            _ => {}
        }
    }
    key
}

/// Whether the kernel keeps this route to itself: IPv6 link-local and
/// multicast destinations.
fn kernel_managed(m: &RouteMessage) -> bool {
    let dest = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => ip_of(d),
        _ => None,
    });
    matches!(dest, Some(IpAddr::V6(v6))
        if v6.is_multicast() || v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// Removes the main table's unicast routes through non-loopback links that
/// are not `wanted`.
fn remove_other_routes(
    rtnl: &mut Rtnl,
    loopbacks: &[u32],
    wanted: &[Key],
) -> Result<(), NetworkError> {
    for ipv6 in [false, true] {
        let mut req = RouteMessage::default();
        req.header.address_family = family(ipv6);
        let dump = rtnl
            .dump(RouteNetlinkMessage::GetRoute(req))
            .map_err(netlink("reading the guest's routes"))?;
        for m in dump {
            let RouteNetlinkMessage::NewRoute(route) = m else {
                continue;
            };
            let table = route
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(route.header.table.into());
            let key = key_of(&route);
            let stale = table == RT_TABLE_MAIN
                && route.header.kind == RouteType::Unicast
                && key.oif.is_some_and(|i| !loopbacks.contains(&i))
                && !kernel_managed(&route)
                && !wanted.contains(&key);
            if stale {
                match rtnl.request(RouteNetlinkMessage::DelRoute(route), 0) {
                    // Gone with an earlier one (e.g. its address's route).
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    other => other.map_err(netlink("removing an old route"))?,
                }
            }
        }
    }
    Ok(())
}
