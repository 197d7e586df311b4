//! What a net device keeps across a snapshot: the MAC address and MTU its
//! guest read when the driver probed.
//!
//! The rest is elsewhere or is not kept on purpose: the negotiated features
//! and the queues are the transport's (`virtio::snapshot`), no chain is ever
//! held between events, and the tap is the host's: a restored device gets a
//! fresh one (or none) from its VM's configuration. A frame read from the
//! template's tap but not yet delivered is dropped with it.

use serde::{Deserialize, Serialize};

use super::{MacAddr, NetConfig};
use crate::virtio::SnapshotError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSnapshot {
    pub mac: MacAddr,
    pub mtu: u16,
}

impl NetSnapshot {
    pub fn of(config: &NetConfig) -> Self {
        Self {
            mac: config.mac,
            mtu: config.mtu,
        }
    }

    /// A restored device must show its guest what the guest already knows.
    pub fn check(&self, config: &NetConfig) -> Result<(), SnapshotError> {
        if self.mac != config.mac || self.mtu != config.mtu {
            return Err(SnapshotError::DeviceState(format!(
                "the snapshot's net device is {} with MTU {}, this one {} with MTU {}",
                self.mac, self.mtu, config.mac, config.mtu
            )));
        }
        Ok(())
    }
}
