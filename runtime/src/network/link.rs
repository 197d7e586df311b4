//! Link changes over netlink: bringing the tap up with the pod interface's
//! MTU, and deleting it. (Reading links is `discover`'s job.)

use std::io;

use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use super::rtnl::Rtnl;

/// Sets link `index`'s MTU and brings it up.
pub fn set_mtu_and_up(rtnl: &mut Rtnl, index: u32, mtu: u32) -> io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::Mtu(mtu));
    rtnl.request(RouteNetlinkMessage::SetLink(m), 0)
}

/// Deletes link `index`; false when it was already gone.
pub fn delete(rtnl: &mut Rtnl, index: u32) -> io::Result<bool> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    match rtnl.request(RouteNetlinkMessage::DelLink(m), 0) {
        Ok(()) => Ok(true),
        Err(e) if super::rtnl::is_gone(&e) => Ok(false),
        Err(e) => Err(e),
    }
}
