//! virtio-vsock (device ID 19) with a userspace muxer to host Unix sockets.
//!
//! Split by concept, as in Firecracker: `device` is the virtio contract
//! (features, config space, activate/reset), `event_handler` moves packets
//! between the queues and the backend on event-manager events, `packet` is
//! the protocol vocabulary over the `virtio-vsock` crate's parser, `csm` is
//! one connection's state machine with credit flow control, `muxer`
//! bridges connections to host Unix sockets, and `snapshot` is what the
//! device keeps across a VM snapshot.

mod csm;
mod device;
mod event_handler;
#[cfg(any(test, feature = "test-harness"))]
pub mod harness;
mod muxer;
mod packet;
mod snapshot;
#[cfg(test)]
mod tests;

use std::sync::atomic::AtomicU64;

pub use device::{VsockConfig, VsockDevice, VsockError};
pub use event_handler::{PROCESS_ACTIVATE, PROCESS_BACKEND, PROCESS_EVQ, PROCESS_RXQ, PROCESS_TXQ};
pub use muxer::{MuxerError, DEFAULT_HANDSHAKE_TIMEOUT};
pub use snapshot::{SavedConnection, VsockSnapshot};

/// Virtio device ID of vsock.
pub const VIRTIO_ID_VSOCK: u32 = 19;

/// Counters tests and operators read to see what the device did.
#[derive(Debug, Default)]
pub struct VsockMetrics {
    pub tx_packets: AtomicU64,
    pub rx_packets: AtomicU64,
    /// Payload bytes of the packets the guest sent (TX) and was given (RX),
    /// headers excluded.
    pub tx_bytes: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Guest buffers or packets rejected as malformed.
    pub malformed: AtomicU64,
    pub rst_sent: AtomicU64,
    pub conns_opened: AtomicU64,
    pub conns_closed: AtomicU64,
}
