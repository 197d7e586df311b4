//! UpdateInterface: the guest's NIC takes the pod interface's name, MAC,
//! MTU and addresses. Idempotent: a second call with the same values
//! changes nothing and never takes the link down.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::rtnl::Rtnl;
use super::{netlink, InterfaceConfig, IpPrefix, NetworkError};

/// A link as far as finding the NIC goes.
#[derive(Debug, Clone)]
pub(super) struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub ether: bool,
    pub loopback: bool,
    pub up: bool,
}

pub(super) fn read_links(rtnl: &mut Rtnl) -> Result<Vec<Link>, NetworkError> {
    let dump = rtnl
        .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .map_err(netlink("reading the guest's links"))?;
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
        mac: Vec::new(),
        ether: m.header.link_layer_type == LinkLayerType::Ether,
        loopback: m.header.link_layer_type == LinkLayerType::Loopback,
        up: m.header.flags.contains(LinkFlags::Up),
    };
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) => link.mac = a.clone(),
            _ => {}
        }
    }
    link
}

/// The one non-loopback ethernet link.
pub(super) fn find_nic(links: &[Link]) -> Result<&Link, NetworkError> {
    let nics: Vec<&Link> = links.iter().filter(|l| l.ether && !l.loopback).collect();
    let names = |ls: &[&Link]| {
        ls.iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match nics.as_slice() {
        [nic] => Ok(nic),
        [] => Err(NetworkError::NoNic {
            found: names(&links.iter().collect::<Vec<_>>()),
        }),
        several => Err(NetworkError::SeveralNics {
            count: several.len(),
            found: names(several),
        }),
    }
}

pub fn update_interface(cfg: &InterfaceConfig) -> Result<(), NetworkError> {
    let mut rtnl = Rtnl::open().map_err(netlink("opening a netlink socket"))?;
    let links = read_links(&mut rtnl)?;
    let nic = find_nic(&links)?.clone();
    let rename = nic.name != cfg.name;
    let new_mac = nic.mac != cfg.mac;
    if (rename || new_mac) && nic.up {
        set_link(&mut rtnl, nic.index, Some(false), Vec::new())
            .map_err(netlink(format!("setting {} down", nic.name)))?;
    }
    let mut changes = vec![LinkAttribute::Mtu(cfg.mtu)];
    if rename {
        changes.push(LinkAttribute::IfName(cfg.name.clone()));
    }
    if new_mac {
        changes.push(LinkAttribute::Address(cfg.mac.to_vec()));
    }
    set_link(&mut rtnl, nic.index, Some(true), changes).map_err(netlink(format!(
        "setting {} up as {} with MTU {}",
        nic.name, cfg.name, cfg.mtu
    )))?;
    replace_addresses(&mut rtnl, nic.index, &cfg.name, &cfg.addresses)?;
    if let Some(lo) = links.iter().find(|l| l.loopback && !l.up) {
        set_link(&mut rtnl, lo.index, Some(true), Vec::new())
            .map_err(netlink(format!("setting {} up", lo.name)))?;
    }
    tracing::debug!(
        nic = %cfg.name,
        was = %nic.name,
        mtu = cfg.mtu,
        addresses = cfg.addresses.len(),
        "network interface configured"
    );
    Ok(())
}

fn set_link(
    rtnl: &mut Rtnl,
    index: u32,
    up: Option<bool>,
    attributes: Vec<LinkAttribute>,
) -> std::io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    if let Some(up) = up {
        m.header.change_mask = LinkFlags::Up;
        m.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
    }
    m.attributes = attributes;
    rtnl.request(RouteNetlinkMessage::SetLink(m), 0)
}

fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

fn address_message(index: u32, p: &IpPrefix) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = match p.addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    m.header.prefix_len = p.len;
    m.header.index = index;
    m.header.scope = AddressScope::Universe;
    m.attributes.push(AddressAttribute::Local(p.addr));
    m.attributes.push(AddressAttribute::Address(p.addr));
    m
}

/// The NIC's addresses become `wanted` (IPv6 link-local ones stay).
fn replace_addresses(
    rtnl: &mut Rtnl,
    index: u32,
    name: &str,
    wanted: &[IpPrefix],
) -> Result<(), NetworkError> {
    let dump = rtnl
        .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
        .map_err(netlink(format!("reading {name}'s addresses")))?;
    let current = dump.into_iter().filter_map(|m| match m {
        RouteNetlinkMessage::NewAddress(a) if a.header.index == index => Some(a),
        _ => None,
    });
    for old in current {
        let addr = old.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        let Some(addr) = addr else { continue };
        let keep = is_ipv6_link_local(&addr)
            || wanted.contains(&IpPrefix {
                addr,
                len: old.header.prefix_len,
            });
        if !keep {
            let what = format!("removing {addr}/{} from {name}", old.header.prefix_len);
            rtnl.request(RouteNetlinkMessage::DelAddress(old), 0)
                .map_err(netlink(what))?;
        }
    }
    for p in wanted {
        let mut m = address_message(index, p);
        if p.addr.is_ipv6() {
            m.header.flags = AddressHeaderFlags::Nodad;
        }
        rtnl.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(netlink(format!("adding {}/{} to {name}", p.addr, p.len)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, ether: bool, loopback: bool) -> Link {
        Link {
            index,
            name: name.into(),
            mac: vec![2, 0, 0, 0, 0, index as u8],
            ether,
            loopback,
            up: false,
        }
    }

    #[test]
    fn the_nic_is_the_one_ethernet_link() {
        let links = vec![
            link(1, "lo", false, true),
            link(2, "sit0", false, false),
            link(3, "enp0s1", true, false),
        ];
        assert_eq!(find_nic(&links).unwrap().name, "enp0s1");

        let err = find_nic(&links[..2]).unwrap_err();
        assert!(err.to_string().contains("lo, sit0"), "{err}");

        let mut two = links.clone();
        two.push(link(4, "eth1", true, false));
        let err = find_nic(&two).unwrap_err();
        assert!(
            matches!(err, NetworkError::SeveralNics { count: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("enp0s1, eth1"), "{err}");
    }
}
