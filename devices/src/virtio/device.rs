//! The contract between a virtio device model and its transport.
//!
//! A device knows its type, features, config space and queue sizes; the
//! transport (`mmio`) owns the negotiation with the driver and only calls
//! `activate` once the driver has finished setting up valid queues. Queue
//! notifications reach the device through the eventfds it exposes (the VMM
//! registers them as ioeventfds; the transport also kicks them on a trapped
//! QueueNotify write), so a device can be driven by an event loop alone.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::snapshot::{DeviceState, QueueSnapshot, SnapshotError};
use super::{GuestMemory, InterruptCause, VirtioInterrupt};

/// Everything a device needs to start serving the driver.
pub struct ActivateContext {
    pub mem: GuestMemory,
    /// One queue per entry of `queue_max_sizes()`, validated against `mem`.
    pub queues: Vec<Queue>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub acked_features: u64,
}

impl ActivateContext {
    /// Checks what every device checks before it takes the queues (it is not
    /// active yet, and it got as many queues as it offered) and hands over
    /// what an active device keeps.
    pub fn into_active(
        self,
        already_active: bool,
        expected: usize,
    ) -> Result<ActiveQueues, ActivateError> {
        if already_active {
            return Err(ActivateError::AlreadyActive);
        }
        if self.queues.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: self.queues.len(),
            });
        }
        Ok(ActiveQueues {
            mem: self.mem,
            queues: self.queues,
            interrupt: self.interrupt,
        })
    }
}

/// What a device holds between activation and reset.
pub struct ActiveQueues {
    pub mem: GuestMemory,
    pub queues: Vec<Queue>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

impl ActiveQueues {
    pub fn snapshots(&self) -> Vec<QueueSnapshot> {
        self.queues.iter().map(QueueSnapshot::of).collect()
    }

    /// Interrupts the guest after buffers of queue `q` were used, unless the
    /// driver suppressed notifications; `device` names the device in the log.
    pub fn notify_used(&mut self, q: usize, device: &str) {
        let Some(queue) = self.queues.get_mut(q) else {
            return;
        };
        if queue.needs_notification(&self.mem).unwrap_or(true) {
            if let Err(e) = self.interrupt.trigger(InterruptCause::Queue) {
                crate::error_limited!("{device}: cannot interrupt the guest: {e}");
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("device expects {expected} queues, the transport gave {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("device is already active; the driver must reset it first")]
    AlreadyActive,
    #[error("cannot signal the device's event loop: {0}")]
    Signal(#[source] std::io::Error),
}

/// A shared memory region a device exposes to the guest (virtio 1.2, 2.10),
/// e.g. virtio-fs's DAX window: host memory the VMM maps into the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmRegion {
    /// The shmid the driver selects with SHMSel.
    pub id: u8,
    /// Start of the host mapping, for the VMM's KVM memory slot.
    pub host_addr: u64,
    pub len: u64,
}

/// A virtio device model, independent of the transport that exposes it.
pub trait VirtioDevice: Send {
    /// Virtio device ID (virtio 1.2, 5).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered to the driver.
    fn avail_features(&self) -> u64;
    /// Reads device config space; out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space; read-only devices ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Per-queue notification eventfds, in queue order.
    fn queue_events(&self) -> &[EventFd];
    /// Starts serving the driver.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Returns to the pre-activation state, dropping all backend state.
    fn reset(&mut self);
    /// Shared memory regions; the VMM places each in guest-physical memory.
    fn shm_regions(&self) -> Vec<ShmRegion> {
        Vec::new()
    }
    /// Where the VMM placed region `id` in guest-physical memory; called
    /// before the guest can see the device.
    fn set_shm_base(&mut self, id: u8, guest_base: GuestAddress) {
        tracing::warn!(
            id,
            base = guest_base.0,
            "device has no shared memory region"
        );
    }
    /// The guest-physical base of region `id`, once the VMM has set it.
    fn shm_base(&self, _id: u8) -> Option<GuestAddress> {
        None
    }
    /// The live queues of an active device, for a snapshot.
    fn active_queue_states(&self) -> Option<Vec<QueueSnapshot>>;
    /// What the device keeps across a snapshot beyond its queues.
    fn device_state(&self) -> Option<DeviceState> {
        None
    }
    /// Called once after the device was activated from a snapshot, with the
    /// state `device_state` gave, before the guest runs again (vsock takes
    /// over the guest's quiet connections, or tells it they are gone).
    fn restored(&mut self, _state: Option<&DeviceState>) -> Result<(), SnapshotError> {
        Ok(())
    }
}

/// Copies config-space bytes from `offset` into `data`; bytes past the end
/// of `config` (or an offset that overflows) read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        let at = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok());
        *b = at.and_then(|o| config.get(o)).copied().unwrap_or(0);
    }
}
