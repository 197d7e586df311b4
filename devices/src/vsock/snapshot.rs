//! What a vsock device keeps across a snapshot: the guest's quiet
//! connections, so a restored VM's first host client can take one over
//! instead of opening a new one.
//!
//! Why: on a software KVM a new connection to the agent costs the guest
//! seconds (its ttrpc server starts threads per connection, and every guest
//! system call is emulated), while a connection made before the snapshot is
//! already served. A connection is saved only when nothing is in flight on
//! it (no data either way, nothing owed to the guest, no shutdown), so its
//! credit counters are all the state there is. When any connection is not
//! quiet the device saves nothing and a restored guest gets a transport
//! reset instead, which drops them all.

use serde::{Deserialize, Serialize};

/// One established, quiet connection: its ports and credit counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedConnection {
    /// The host-side port (the guest's peer port).
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
    /// Guest bytes the host consumed, and what the guest was last told of it.
    pub fwd_cnt: u32,
    pub last_fwd_cnt_sent: u32,
    /// Bytes sent to the guest.
    pub rx_cnt: u32,
    /// The guest's receive buffer and how much of what we sent it consumed.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
}

/// Every connection the guest had with the host, all quiet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockSnapshot {
    pub connections: Vec<SavedConnection>,
}

impl VsockSnapshot {
    /// A snapshot is read from a file: at most `max` connections, each pair
    /// of ports once.
    pub fn check(&self, max: usize) -> Result<(), String> {
        if self.connections.len() > max {
            return Err(format!(
                "{} saved vsock connections, the device allows {max}",
                self.connections.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.connections {
            if !seen.insert((c.local_port, c.peer_port)) {
                return Err(format!(
                    "the vsock connection {}->{} is saved twice",
                    c.local_port, c.peer_port
                ));
            }
        }
        Ok(())
    }
}
