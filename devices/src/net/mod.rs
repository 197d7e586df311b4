//! virtio-net (device ID 1) with a Linux tap backend.
//!
//! One RX and one TX queue, no control queue. Split by concept, as vsock is:
//! `device` is the virtio contract (features, config space with MAC, status
//! and MTU, activate/reset, the backend slot), `tap` opens and drives the tap
//! (vnet header, offloads), `tx` turns guest chains into tap writes, `rx`
//! spreads tap frames over guest buffers (mergeable or not), `event_handler`
//! runs both on event-manager events and decides when the tap is polled,
//! `mac` is the address type and `snapshot` what a template keeps.
//!
//! The backend is optional: a device without a tap still negotiates and
//! reports its link up (so a template made without one restores into a VM
//! that has one, and the other way round), and drops what the guest sends,
//! counting it. A tap that disappears under a running guest (link or
//! namespace deleted) is dropped the same way, with one warning.

mod device;
mod event_handler;
#[cfg(any(test, feature = "test-harness"))]
pub mod harness;
mod mac;
mod rx;
mod snapshot;
mod tap;
#[cfg(any(test, feature = "test-harness"))]
pub mod tap_rig;
#[cfg(test)]
mod tests;
mod tx;

use std::sync::atomic::AtomicU64;

pub use device::{NetConfig, NetDevice, NetError, DEFAULT_MTU, RXQ, TXQ};
pub use event_handler::{PROCESS_ACTIVATE, PROCESS_BACKEND, PROCESS_RXQ, PROCESS_TAP, PROCESS_TXQ};
pub use mac::{MacAddr, MacError};
pub use snapshot::NetSnapshot;
pub use tap::{is_gone, Tap, TapError, TUN_OFFLOADS};

/// Virtio device ID of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// Size of the header before every frame: `virtio_net_hdr_v1` (virtio 1.x
/// always has `num_buffers`), and the tap's vnet header size.
pub const NET_HDR_LEN: usize =
    std::mem::size_of::<virtio_bindings::virtio_net::virtio_net_hdr_mrg_rxbuf>();
/// Largest frame either way: a maximal IP packet (64 KiB less one byte, as
/// TSO/GSO produce) behind an Ethernet header with one VLAN tag.
pub const MAX_FRAME_LEN: usize = 65_535 + 18;

/// Counters tests and operators read to see what the device did.
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames (and their bytes, headers excluded) handed to the guest.
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames read from the tap that no guest buffer could take.
    pub rx_dropped: AtomicU64,
    /// RX chains the device could not write into (returned empty).
    pub rx_malformed: AtomicU64,
    /// Frames (and their bytes, headers excluded) written to the tap.
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Well-formed guest frames that did not reach a tap (none attached,
    /// link down, refused by the kernel).
    pub tx_dropped: AtomicU64,
    /// TX chains that are not a frame (returned unused).
    pub tx_malformed: AtomicU64,
    /// Times the tap went away under the device.
    pub backend_lost: AtomicU64,
}
