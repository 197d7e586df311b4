//! The guest's network: its one NIC made to look like the pod's interface on
//! the host, and the pod's routes.
//!
//! On the host, husk-runtime joins a tap to the CNI plugin's veth in the
//! pod's network namespace and hands the tap to the VM's virtio-net device;
//! the guest's NIC then has to take the veth's name, MAC, MTU, addresses
//! and routes, so that frames the guest sends look like the veth's own.
//! The runtime sends them as UpdateInterface, then UpdateRoutes.
//!
//! - `interface`: UpdateInterface. The NIC is the guest's one non-loopback
//!   ethernet link, whatever its name and MAC (a VM restored from a template
//!   kept the template's). It is set down if it must be renamed or get a new
//!   MAC, renamed, given the MAC and MTU, set up, and its addresses replaced
//!   (IPv6 ones without DAD: the address is the pod's already; IPv6
//!   link-local ones are the kernel's and stay). `lo` is brought up.
//! - `routes`: UpdateRoutes. The main table's routes through non-loopback
//!   links become the requested ones: these are added (or replace the
//!   same destination's) connected routes first, as a gateway must be
//!   reachable when its route is added; then the others are removed. IPv6
//!   link-local and multicast routes are the kernel's and stay.
//! - `rtnl`: the blocking netlink socket both use.
//!
//! Refused: no NIC or several (FailedPrecondition), a route through a device
//! the guest lacks (NotFound); what the kernel refuses (an unreachable
//! gateway, a bad scope) comes back with its errno. Requests are checked
//! before they get here (`rpc::network`).

mod interface;
mod routes;
mod rtnl;

use std::io;
use std::net::IpAddr;

pub use interface::update_interface;
pub use routes::update_routes;

/// An address with its prefix length, already checked against its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

/// What UpdateInterface asks for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<IpPrefix>,
}

/// One route of UpdateRoutes, checked: the families of its addresses agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// None for the default route (its family is the gateway's).
    pub dest: Option<IpPrefix>,
    pub gateway: Option<IpAddr>,
    /// None for the guest's NIC.
    pub device: Option<String>,
    pub source: Option<IpAddr>,
    pub scope: u8,
}

impl RouteConfig {
    pub fn is_ipv6(&self) -> bool {
        let any = self.dest.map(|d| d.addr).or(self.gateway).or(self.source);
        any.is_some_and(|ip| ip.is_ipv6())
    }
}

impl std::fmt::Display for RouteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.dest {
            Some(d) => write!(f, "{}/{}", d.addr, d.len)?,
            None => write!(f, "default")?,
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(d) = &self.device {
            write!(f, " dev {d}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("the guest has no ethernet interface to configure (links: {found})")]
    NoNic { found: String },
    #[error("the guest has {count} ethernet interfaces ({found}); husk configures exactly one")]
    SeveralNics { count: usize, found: String },
    #[error("route {route}: the guest has no interface {device}")]
    NoSuchDevice { route: String, device: String },
    #[error("{what}: {source}")]
    Netlink { what: String, source: io::Error },
}

impl NetworkError {
    /// The kernel refused what was asked (as opposed to failing to do it).
    pub fn is_refusal(&self) -> bool {
        match self {
            NetworkError::Netlink { source, .. } => matches!(
                source.raw_os_error(),
                Some(
                    libc::EINVAL
                        | libc::ENETUNREACH
                        | libc::EADDRNOTAVAIL
                        | libc::EEXIST
                        | libc::ERANGE
                        | libc::EAFNOSUPPORT
                )
            ),
            _ => false,
        }
    }
}

fn netlink(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}
