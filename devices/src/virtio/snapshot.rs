//! A virtio device's state for a VM snapshot: the transport's registers and
//! the device's live queues, as plain data.
//!
//! The transport keeps the queue registers the driver wrote; an active
//! device keeps its own copies, whose ring positions moved on. Both are
//! saved. Restoring sets the registers back and, when the driver had
//! reached DRIVER_OK, activates the device with the saved live queues, so
//! it resumes exactly where the snapshot left the rings. A snapshot is read
//! back from a file and so is checked like driver input: a queue the
//! device does not have, or a ring virtio-queue refuses, is an error.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

/// One split queue (virtio-queue's `QueueState`, which is not serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(s: QueueState) -> Self {
        Self {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

impl QueueSnapshot {
    pub fn of(q: &Queue) -> Self {
        q.state().into()
    }

    /// The queue, checked by virtio-queue (size, alignment, ranges).
    pub fn to_queue(self) -> Result<Queue, SnapshotError> {
        Queue::try_from(QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx_enabled,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
        .map_err(|e| SnapshotError::Queue(format!("{e:?}")))
    }
}

/// A virtio-mmio transport and its device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportSnapshot {
    pub device_type: u32,
    pub acked_features: u64,
    pub features_sel: u32,
    pub acked_features_sel: u32,
    pub queue_sel: u32,
    pub shm_sel: u32,
    pub status: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    /// The queue registers as the driver set them.
    pub queues: Vec<QueueSnapshot>,
    /// The device's live queues, when it was active.
    pub active_queues: Option<Vec<QueueSnapshot>>,
    /// What the device itself keeps across a restore, if anything.
    pub device_state: Option<DeviceState>,
}

/// Device-specific state a snapshot carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    Vsock(crate::vsock::VsockSnapshot),
    Net(crate::net::NetSnapshot),
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the snapshot has a device of type {got} where this VM has type {want}")]
    DeviceType { want: u32, got: u32 },
    #[error("the snapshot's device has {got} queues, this one {want}")]
    QueueCount { want: usize, got: usize },
    #[error("a queue of the snapshot is not valid: {0}")]
    Queue(String),
    #[error("the snapshot's device does not activate: {0}")]
    Activate(String),
    #[error("the snapshot's device state is not valid: {0}")]
    DeviceState(String),
}
