//! virtio-fs (device ID 26): a host directory shared with the guest over FUSE.
//!
//! The FUSE protocol and the passthrough filesystem come from fuse-backend-rs;
//! this module is the virtio side around them, split by concept: `device` is
//! the virtio contract (tag and queue count in config space, activate/reset),
//! `event_handler` pops descriptor chains on event-manager events, `request`
//! turns one chain into a FUSE reply (or an error reply, or a dropped chain),
//! `backend` builds the confined passthrough filesystem, `policy` wraps it
//! with the rules husk adds (no device nodes, no setuid/setgid files, no
//! file capabilities) and `space` is the optional per-share size limit;
//! `dax` is the optional DAX window FUSE SETUPMAPPING maps file pages into.

mod backend;
mod dax;
mod device;
mod event_handler;
#[cfg(any(test, feature = "test-harness"))]
pub mod harness;
mod policy;
mod request;
mod space;
#[cfg(test)]
mod tests;

use std::sync::atomic::AtomicU64;

pub use dax::{DaxWindow, DAX_ALIGNMENT};
pub use device::{CacheMode, FsConfig, FsDevice, FsError, MAX_REQUEST_QUEUES, TAG_LEN};
pub use event_handler::{PROCESS_ACTIVATE, PROCESS_QUEUE_BASE};

/// Virtio device ID of virtio-fs.
pub const VIRTIO_ID_FS: u32 = 26;
/// The shmid of the DAX window (VIRTIO_FS_SHMCAP_ID_CACHE).
pub const DAX_SHM_ID: u8 = 0;

/// Counters tests and operators read to see what the device did.
#[derive(Debug, Default)]
pub struct FsMetrics {
    /// Chains whose FUSE header could be read and that were handed to the server.
    pub requests: AtomicU64,
    /// Requests the server could not answer itself; the device replied with an error.
    pub error_replies: AtomicU64,
    /// Chains too broken to answer (no readable header, unusable buffers).
    pub dropped_chains: AtomicU64,
    /// Requests refused by husk's policy on top of the passthrough filesystem
    /// (device nodes, `security.capability`, KEEP_SIZE fallocate under a limit).
    pub refused: AtomicU64,
    /// Setuid/setgid bits stripped from a guest's mode or cleared before a
    /// change to a file's content.
    pub mode_bits_stripped: AtomicU64,
    /// Writes, truncations and fallocates cut short or refused (ENOSPC) by
    /// the share's size limit.
    pub over_limit: AtomicU64,
    /// Bytes of the requests handed to the server (FUSE headers included).
    pub bytes_in: AtomicU64,
    /// Bytes of the replies written to the guest (FUSE headers included).
    pub bytes_out: AtomicU64,
}
