//! UpdateInterface and UpdateRoutes: the requests checked into
//! `network::InterfaceConfig` / `RouteConfig` (every text field parsed, every
//! number bounded, INVALID_ARGUMENT naming the field otherwise), then handed
//! to `crate::network`.
//!
//! Changing the network is for the agent that owns the guest. Run on a host
//! for tests, the agent only does it in a network namespace of its own, never
//! in its parent's or the host's PID 1's: a test that forgot to start it in
//! a namespace of its own must not rename the host's NIC.

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;

use husk_agent_protocol::agent;

use super::sandbox::GuestScope;
use super::status::RpcError;
use crate::network::{self, InterfaceConfig, IpPrefix, NetworkError, RouteConfig};

/// Longest interface name (IFNAMSIZ less the NUL).
const MAX_NAME_LEN: usize = 15;
const MIN_MTU: u32 = 68;
const MIN_MTU_IPV6: u32 = 1280;
const MAX_MTU: u32 = 65535;
const MAX_ADDRESSES: usize = 16;
const MAX_ROUTES: usize = 64;

pub fn update_interface(
    scope: GuestScope,
    req: &agent::UpdateInterfaceRequest,
) -> Result<(), RpcError> {
    let iface = req
        .interface
        .as_ref()
        .ok_or_else(|| RpcError::InvalidArgument("interface is missing".into()))?;
    let cfg = InterfaceConfig::try_from(iface)?;
    may_change_network(scope)?;
    network::update_interface(&cfg).map_err(rpc_error)
}

pub fn update_routes(scope: GuestScope, req: &agent::UpdateRoutesRequest) -> Result<(), RpcError> {
    if req.routes.len() > MAX_ROUTES {
        return Err(RpcError::InvalidArgument(format!(
            "{} routes; at most {MAX_ROUTES}",
            req.routes.len()
        )));
    }
    let routes = req
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| route_config(i, r))
        .collect::<Result<Vec<_>, _>>()?;
    may_change_network(scope)?;
    network::update_routes(&routes).map_err(rpc_error)
}

fn rpc_error(e: NetworkError) -> RpcError {
    let text = e.to_string();
    match e {
        NetworkError::NoNic { .. } | NetworkError::SeveralNics { .. } => {
            RpcError::FailedPrecondition(text)
        }
        NetworkError::NoSuchDevice { .. } => RpcError::NotFound(text),
        e if e.is_refusal() => RpcError::InvalidArgument(text),
        NetworkError::Netlink { .. } => RpcError::Internal(text),
    }
}

/// As PID 1 always; on a host only in a network namespace of its own: not
/// its parent's (a test starts the agent in one it made) and not PID 1's
/// where that can be read.
fn may_change_network(scope: GuestScope) -> Result<(), RpcError> {
    if scope == GuestScope::OwnsTheGuest {
        return Ok(());
    }
    let ns = |path: &str| std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
    let parent = format!("/proc/{}/ns/net", std::os::unix::process::parent_id());
    let mine = ns("/proc/self/ns/net");
    let own = mine.is_some() && mine != ns(&parent) && mine != ns("/proc/1/ns/net");
    if own {
        Ok(())
    } else {
        Err(RpcError::FailedPrecondition(
            "not PID 1 and not in a network namespace of its own: the agent leaves the host's network alone (run it in a network namespace of its own to test)".into(),
        ))
    }
}

fn invalid(field: &str, what: impl std::fmt::Display) -> RpcError {
    RpcError::InvalidArgument(format!("{field}: {what}"))
}

fn checked_name(field: &str, name: &str) -> Result<String, RpcError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if !ok {
        return Err(invalid(
            field,
            format!("{name:?} is not an interface name (1-{MAX_NAME_LEN} printable bytes, no '/' or ':')"),
        ));
    }
    Ok(name.to_string())
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
        return None;
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    let usable = mac != [0; 6] && mac[0] & 1 == 0;
    usable.then_some(mac)
}

fn parse_ip(field: &str, text: &str) -> Result<IpAddr, RpcError> {
    text.parse()
        .map_err(|_| invalid(field, format!("{text:?} is not an IP address")))
}

fn prefix(field: &str, addr: IpAddr, len: u32) -> Result<IpPrefix, RpcError> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(invalid(
            field,
            format!("prefix length {len} is longer than {max}"),
        ));
    }
    Ok(IpPrefix {
        addr,
        len: len as u8,
    })
}

impl TryFrom<&agent::Interface> for InterfaceConfig {
    type Error = RpcError;

    fn try_from(i: &agent::Interface) -> Result<Self, RpcError> {
        let name = checked_name("interface.name", &i.name)?;
        let mac = parse_mac(&i.mac).ok_or_else(|| {
            invalid(
                "interface.mac",
                format!("{:?} is not a unicast MAC address aa:bb:cc:dd:ee:ff", i.mac),
            )
        })?;
        if i.addresses.len() > MAX_ADDRESSES {
            return Err(invalid(
                "interface.addresses",
                format!("{} addresses; at most {MAX_ADDRESSES}", i.addresses.len()),
            ));
        }
        let mut addresses = Vec::with_capacity(i.addresses.len());
        for (n, a) in i.addresses.iter().enumerate() {
            let field = format!("interface.addresses[{n}]");
            let ip = parse_ip(&field, &a.address)?;
            addresses.push(prefix(&field, ip, a.prefix_len)?);
        }
        let v6 = addresses.iter().any(|a| a.addr.is_ipv6());
        if !(MIN_MTU..=MAX_MTU).contains(&i.mtu) || (v6 && i.mtu < MIN_MTU_IPV6) {
            return Err(invalid(
                "interface.mtu",
                format!(
                    "{} is outside {MIN_MTU}..={MAX_MTU} (at least {MIN_MTU_IPV6} with IPv6)",
                    i.mtu
                ),
            ));
        }
        Ok(InterfaceConfig {
            name,
            mac,
            mtu: i.mtu,
            addresses,
        })
    }
}

fn optional_ip(field: &str, text: &str) -> Result<Option<IpAddr>, RpcError> {
    match text {
        "" => Ok(None),
        t => parse_ip(field, t).map(Some),
    }
}

fn route_config(n: usize, r: &agent::Route) -> Result<RouteConfig, RpcError> {
    let field = |f: &str| format!("routes[{n}].{f}");
    let dest = match r.dest.as_str() {
        "" => None,
        text => {
            let (ip, len) = text.split_once('/').ok_or_else(|| {
                invalid(&field("dest"), format!("{text:?} is not ADDRESS/PREFIX"))
            })?;
            let len: u32 = len
                .parse()
                .map_err(|_| invalid(&field("dest"), format!("{text:?} has no numeric prefix")))?;
            Some(prefix(&field("dest"), parse_ip(&field("dest"), ip)?, len)?)
        }
    };
    let gateway = optional_ip(&field("gateway"), &r.gateway)?;
    let source = optional_ip(&field("source"), &r.source)?;
    let device = match r.device.as_str() {
        "" => None,
        d => Some(checked_name(&field("device"), d)?),
    };
    let scope = u8::try_from(r.scope)
        .map_err(|_| invalid(&field("scope"), format!("{} is not 0..=255", r.scope)))?;
    if dest.is_none() && gateway.is_none() {
        return Err(invalid(
            &field("dest"),
            "a default route needs a gateway (or give dest 0.0.0.0/0 or ::/0)",
        ));
    }
    let families: Vec<bool> = [dest.map(|d| d.addr), gateway, source]
        .into_iter()
        .flatten()
        .map(|ip| ip.is_ipv6())
        .collect();
    if families.windows(2).any(|w| w[0] != w[1]) {
        return Err(invalid(
            &format!("routes[{n}]"),
            "dest, gateway and source mix IPv4 and IPv6",
        ));
    }
    Ok(RouteConfig {
        dest,
        gateway,
        device,
        source,
        scope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interface(mac: &str, mtu: u32, addrs: &[(&str, u32)]) -> agent::Interface {
        agent::Interface {
            name: "eth0".into(),
            mac: mac.into(),
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
        }
    }

    fn error_of(r: Result<InterfaceConfig, RpcError>) -> String {
        match r {
            Err(RpcError::InvalidArgument(m)) => m,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn a_good_interface_is_parsed() {
        let i = interface(
            "02:42:C6:12:00:02",
            1400,
            &[("198.18.0.2", 24), ("2001:db8::2", 64)],
        );
        let cfg = InterfaceConfig::try_from(&i).unwrap();
        assert_eq!(cfg.mac, [2, 0x42, 0xc6, 0x12, 0, 2]);
        assert_eq!(cfg.addresses[1].len, 64);
    }

    #[test]
    fn malformed_interfaces_name_the_field() {
        let ok = [("198.18.0.2", 24)];
        let cases = [
            (interface("02:42:c6:12:00", 1500, &ok), "interface.mac"),
            (interface("01:00:5e:00:00:01", 1500, &ok), "interface.mac"),
            (interface("00:00:00:00:00:00", 1500, &ok), "interface.mac"),
            (interface("02:42:c6:12:00:zz", 1500, &ok), "interface.mac"),
            (interface("02:42:c6:12:00:02", 0, &ok), "interface.mtu"),
            (interface("02:42:c6:12:00:02", 70000, &ok), "interface.mtu"),
            (
                interface("02:42:c6:12:00:02", 1000, &[("2001:db8::2", 64)]),
                "interface.mtu",
            ),
            (
                interface("02:42:c6:12:00:02", 1500, &[("198.18.0.2", 33)]),
                "interface.addresses[0]",
            ),
            (
                interface("02:42:c6:12:00:02", 1500, &[("198.18.0.2/24", 24)]),
                "interface.addresses[0]",
            ),
        ];
        for (i, field) in cases {
            let msg = error_of(InterfaceConfig::try_from(&i));
            assert!(msg.starts_with(field), "{field}: {msg}");
        }
        let many: Vec<(String, u32)> = (0..17).map(|n| (format!("198.18.1.{n}"), 24)).collect();
        let many: Vec<(&str, u32)> = many.iter().map(|(a, l)| (a.as_str(), *l)).collect();
        let msg = error_of(InterfaceConfig::try_from(&interface(
            "02:42:c6:12:00:02",
            1500,
            &many,
        )));
        assert!(msg.contains("at most 16"), "{msg}");
        let mut bad_name = interface("02:42:c6:12:00:02", 1500, &ok);
        bad_name.name = "a/b".into();
        let msg = error_of(InterfaceConfig::try_from(&bad_name));
        assert!(msg.starts_with("interface.name"), "{msg}");
    }

    fn route(dest: &str, gateway: &str, source: &str) -> agent::Route {
        agent::Route {
            dest: dest.into(),
            gateway: gateway.into(),
            source: source.into(),
            ..Default::default()
        }
    }

    #[test]
    fn routes_are_parsed_and_checked() {
        let r = route_config(0, &route("", "198.18.0.1", "")).unwrap();
        assert_eq!((r.dest, r.device.as_deref()), (None, None));
        let r = route_config(0, &route("2001:db8::/64", "", "")).unwrap();
        assert!(r.is_ipv6());

        let bad = [
            (route("", "", ""), "routes[3].dest"),
            (route("198.18.0.0", "", ""), "routes[3].dest"),
            (route("198.18.0.0/40", "", ""), "routes[3].dest"),
            (route("198.18.0.0/x", "", ""), "routes[3].dest"),
            (route("", "gateway", ""), "routes[3].gateway"),
            (route("198.18.0.0/24", "", "2001:db8::1"), "routes[3]"),
            (route("", "198.18.0.1", "nope"), "routes[3].source"),
        ];
        for (r, field) in bad {
            match route_config(3, &r) {
                Err(RpcError::InvalidArgument(m)) => assert!(m.starts_with(field), "{m}"),
                other => panic!("{r:?}: {other:?}"),
            }
        }
        let mut big_scope = route("198.18.0.0/24", "", "");
        big_scope.scope = 256;
        assert!(route_config(0, &big_scope).is_err());
        let mut bad_dev = route("198.18.0.0/24", "", "");
        bad_dev.device = "a b".into();
        assert!(route_config(0, &bad_dev).is_err());
    }

    #[test]
    fn on_a_host_the_parents_network_namespace_is_refused() {
        // This test process shares its parent's namespace (cargo's), so the
        // request must be refused before anything is read or changed.
        let req = agent::UpdateInterfaceRequest {
            interface: Some(interface("02:42:c6:12:00:02", 1500, &[("198.18.0.2", 24)])).into(),
            ..Default::default()
        };
        let err = update_interface(GuestScope::HostTest, &req).unwrap_err();
        assert!(matches!(err, RpcError::FailedPrecondition(_)), "{err}");
        assert!(
            err.to_string().contains("network namespace of its own"),
            "{err}"
        );
        let err =
            update_routes(GuestScope::HostTest, &agent::UpdateRoutesRequest::new()).unwrap_err();
        assert!(matches!(err, RpcError::FailedPrecondition(_)), "{err}");
    }
}
