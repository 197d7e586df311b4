//! Virtio: the transport and the contract every virtio device implements.
//!
//! The split follows the three parts of a device: `device` is the contract a
//! device model fulfils (type, features, config space, activate/reset),
//! `mmio` is the virtio-mmio transport that turns guest register accesses
//! into calls on that contract, and `interrupt` is how a device signals the
//! guest (an irqfd in the VMM, a plain eventfd in tests). Queue processing
//! uses virtio-queue's split queues directly; the transport hands them over,
//! validated, when the driver sets DRIVER_OK.

mod device;
#[cfg(any(test, feature = "test-harness"))]
pub mod device_loop;
mod interrupt;
mod mmio;
mod snapshot;
#[cfg(any(test, feature = "test-harness"))]
pub mod test_utils;

pub use device::{
    read_config_bytes, ActivateContext, ActivateError, ActiveQueues, ShmRegion, VirtioDevice,
};
pub use interrupt::{InterruptCause, IrqFdInterrupt, VirtioInterrupt};
pub use mmio::{MmioError, MmioTransport, MMIO_LEN, QUEUE_NOTIFY_OFFSET};
pub use snapshot::{DeviceState, QueueSnapshot, SnapshotError, TransportSnapshot};

/// Guest memory as every virtio device sees it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// How a device registers its queues' notification eventfds (KVM's
/// ioeventfds): edge-triggered, and never read. Each kick is a new edge, and
/// a device drains its queue on every event, so reading the counter back
/// to zero (what level-triggered readiness needs) was one more system call
/// per kick on the device thread, each paying seccomp's entry cost.
pub const QUEUE_EVENTS: event_manager::EventSet =
    event_manager::EventSet::IN.union(event_manager::EventSet::EDGE_TRIGGERED);

/// Registers a device's eventfds with its event manager, each as
/// (fd, token, events). A refusal is logged naming the device and token:
/// the device then never hears of that fd, so the guest sees a stalled queue.
pub fn register_events(
    ops: &mut event_manager::EventOps,
    device: &str,
    registrations: impl IntoIterator<Item = (std::os::fd::RawFd, u32, event_manager::EventSet)>,
) {
    for (fd, token, set) in registrations {
        if let Err(e) = ops.add(event_manager::Events::with_data_raw(fd, token, set)) {
            tracing::error!(
                token,
                "{device}: cannot register with the event manager: {e:?}"
            );
        }
    }
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Feature bit every modern (non-legacy) device offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
