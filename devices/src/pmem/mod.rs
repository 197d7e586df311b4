//! virtio-pmem (device ID 27): a host file the guest sees as persistent memory.
//!
//! The device itself is small: the VMM maps the image into guest-physical
//! address space (so guest loads and stores reach the host page cache
//! directly, and a DAX filesystem in the guest needs no copies), and the
//! device only tells the guest where that range is (config space) and turns
//! the guest's FLUSH requests into an fsync of the backing file. `device` is
//! the virtio contract, `event_handler` the request queue.

mod device;
mod event_handler;
#[cfg(test)]
mod tests;

use std::sync::atomic::AtomicU64;

pub use device::{PmemDevice, PmemError};
pub use event_handler::{PROCESS_ACTIVATE, PROCESS_REQUESTS};

/// Virtio device ID of pmem.
pub const VIRTIO_ID_PMEM: u32 = 27;
/// Request type: make everything written to the region durable.
pub const VIRTIO_PMEM_REQ_TYPE_FLUSH: u32 = 0;
/// Response `ret` for a request that succeeded; anything else is an error.
pub const VIRTIO_PMEM_RESP_OK: u32 = 0;
/// Response `ret` for a failed or unknown request.
pub const VIRTIO_PMEM_RESP_EIO: u32 = 1;

/// Counters tests and operators read to see what the device did.
#[derive(Debug, Default)]
pub struct PmemMetrics {
    pub flushes: AtomicU64,
    /// Flushes whose fsync failed.
    pub flush_errors: AtomicU64,
    /// Chains rejected as malformed or of an unknown request type.
    pub bad_requests: AtomicU64,
}
