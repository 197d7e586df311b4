//! Network cards as the VM's owner asks for them: the guest NIC's address
//! and MTU and the tap behind it.
//!
//! The tap is opened by whoever knows where the pod's network lives (the
//! runtime, inside the pod's network namespace, with
//! `Tap::open_in_netns`; `husk vm --net tap=NAME` in its own), and handed
//! over already open, so the VMM never enters a namespace. It sits in an
//! `Arc` so a `VmConfig` stays `Clone`; the device holds a reference for as
//! long as it uses it. A card without a tap is a real device whose frames
//! go nowhere, which is what a template is made with.

use std::sync::Arc;

pub use husk_devices::net::DEFAULT_MTU;
use husk_devices::net::{MacAddr, NetConfig, Tap};

/// One virtio-net device of a VM.
#[derive(Debug, Clone)]
pub struct NetSpec {
    /// The guest NIC's address. None: a random locally administered one
    /// when booting; the template's own when restoring one (the guest
    /// learned it when its driver probed and keeps it).
    pub mac: Option<MacAddr>,
    pub mtu: u16,
    /// None: no backend (frames the guest sends are dropped and counted).
    pub tap: Option<Arc<Tap>>,
}

impl NetSpec {
    /// A card behind `tap` with a random address and the default MTU.
    pub fn with_tap(tap: Tap) -> Self {
        Self {
            mac: None,
            mtu: DEFAULT_MTU,
            tap: Some(Arc::new(tap)),
        }
    }

    /// What the device shows the guest, picking the address if nobody did.
    pub fn device_config(&self) -> NetConfig {
        NetConfig {
            mac: self.mac.unwrap_or_else(MacAddr::random_local),
            mtu: self.mtu,
        }
    }
}
