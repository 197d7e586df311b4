//! Pod networking on the host: joining the guest's NIC to the interface a
//! CNI plugin put into the pod's network namespace, the way Kata's
//! "tcfilter" mode does.
//!
//! containerd's CRI creates the pod's network namespace and runs the CNI
//! plugin, which leaves a veth (`eth0`) there with the pod's addresses and
//! routes. husk does not move or change it. Instead, in that namespace:
//!
//! ```text
//!   guest virtio-net <-fd-> tap0_husk --(ingress: mirred redirect)--> eth0 egress --> CNI
//!                           tap0_husk egress <--(ingress: mirred redirect)-- eth0 <-- CNI
//! ```
//!
//! and the guest's NIC takes eth0's name, MAC, MTU, addresses and routes, so
//! the rest of the cluster cannot tell the VM from the veth.
//!
//! How the shim uses it:
//! 1. RunPodSandbox: [`setup`]`(netns, TAP_NAME)` with the network namespace
//!    path of the sandbox's OCI spec ([`pod_netns`]); persist `netns` and `tap_name` in the
//!    sandbox state (what [`cleanup`] needs); give a clone of
//!    [`PodNetwork::tap`] to the VMM's virtio-net device, with MAC
//!    `guest.mac`.
//! 2. Once the agent serves: `UpdateInterface` with
//!    [`GuestNetwork::update_interface_request`], then `UpdateRoutes` with
//!    [`GuestNetwork::update_routes_request`].
//! 3. Sandbox end: [`PodNetwork::teardown`].
//! 4. `delete` after a crash (no `PodNetwork` in memory): [`cleanup`] with
//!    the persisted `netns` and `tap_name`.
//!
//! Refused, with an error naming what was found (see `discover`): no CNI
//! interface, several, a link other than a veth or plain ethernet device,
//! no IP address, odd MAC or MTU values, too many addresses or routes,
//! multipath routes, a tap name already taken, an ingress qdisc on the
//! interface that husk did not make.
//!
//! Files: `netns` (running work inside the namespace), `rtnl` (a blocking
//! netlink socket), `discover` (finding and reading the CNI interface),
//! `guest` (what the guest gets, and the agent requests), `tap` (the tap
//! device), `link` (link changes), `tc` (qdiscs and redirect filters), `pod`
//! (setup, teardown, cleanup).

mod discover;
mod guest;
mod link;
mod netns;
mod pod;
mod rtnl;
mod tap;
mod tc;

pub use discover::DiscoverError;
pub use guest::{GuestNetwork, GuestRoute, IpPrefix};
pub use netns::{in_netns, NetnsError};
pub use pod::{cleanup, setup, Cleanup, NetworkError, PodNetwork};

use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// The tap husk creates in every pod's network namespace.
pub const TAP_NAME: &str = "tap0_husk";

/// The pod's network namespace: the path of the spec's `network` namespace
/// entry (the CRI's `/var/run/netns/cni-...`). None when the spec asks for
/// no network namespace (host network) or a new empty one (no path): then
/// there is no CNI interface to join.
pub fn pod_netns(spec: &Spec) -> Option<PathBuf> {
    let namespaces = spec.linux().as_ref()?.namespaces().as_ref()?;
    namespaces
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": { "namespaces": namespaces }
        }))
        .unwrap()
    }

    #[test]
    fn the_pod_netns_is_the_network_namespace_path() {
        let s = spec(serde_json::json!([
            {"type": "pid"},
            {"type": "network", "path": "/var/run/netns/cni-1234"}
        ]));
        assert_eq!(
            pod_netns(&s),
            Some(PathBuf::from("/var/run/netns/cni-1234"))
        );
        assert_eq!(
            pod_netns(&spec(serde_json::json!([{"type": "network"}]))),
            None
        );
        assert_eq!(pod_netns(&spec(serde_json::json!([{"type": "pid"}]))), None);
    }
}
