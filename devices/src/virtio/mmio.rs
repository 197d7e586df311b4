//! The virtio-mmio transport (virtio 1.2, 4.2; register layout version 2).
//!
//! The guest driver negotiates features and configures queues through 32-bit
//! registers; this file keeps that negotiation apart from device models. The
//! driver is untrusted: an out-of-order status write, a bad queue size, or a
//! ring outside guest memory never panics, it sets DEVICE_NEEDS_RESET, raises
//! a config interrupt and is logged. Queues are handed to the device, checked
//! against guest memory, when the driver sets DRIVER_OK.

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::snapshot::{DeviceState, QueueSnapshot, SnapshotError, TransportSnapshot};
use super::status::*;
use super::{
    ActivateContext, GuestMemory, InterruptCause, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
};
use crate::bus::BusDevice;

/// Size of the MMIO window of one device (registers + config space).
pub const MMIO_LEN: u64 = 0x1000;
/// Offset of QueueNotify: the VMM registers each queue's ioeventfd at
/// `base + QUEUE_NOTIFY_OFFSET` with the queue index as datamatch.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976;
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4b53_5548; // "HUSK"
const CONFIG_OFFSET: u64 = 0x100;

#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("cannot duplicate the queue notification eventfd: {0}")]
    CloneEventFd(#[source] std::io::Error),
    #[error("invalid max size {0} for a queue (must be a power of two, at most 32768)")]
    QueueMaxSize(u16),
}

/// A virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    device_type: u32,
    avail_features: u64,
    acked_features: u64,
    features_sel: u32,
    acked_features_sel: u32,
    queue_sel: u32,
    shm_sel: u32,
    status: u32,
    config_generation: u32,
}

impl MmioTransport {
    pub fn new(
        mem: GuestMemory,
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<Self, MmioError> {
        let (queues, queue_evts, device_type, avail_features) = {
            let dev = lock(&device);
            let queues = dev
                .queue_max_sizes()
                .iter()
                .map(|&max| Queue::new(max).map_err(|_| MmioError::QueueMaxSize(max)))
                .collect::<Result<Vec<_>, _>>()?;
            let evts = dev
                .queue_events()
                .iter()
                .map(|e| e.try_clone().map_err(MmioError::CloneEventFd))
                .collect::<Result<Vec<_>, _>>()?;
            (queues, evts, dev.device_type(), dev.avail_features())
        };
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            queue_evts,
            device_type,
            avail_features: avail_features | VIRTIO_F_VERSION_1,
            acked_features: 0,
            features_sel: 0,
            acked_features_sel: 0,
            queue_sel: 0,
            shm_sel: 0,
            status: 0,
            config_generation: 0,
        })
    }

    /// Queue notification eventfds, in queue order, for KVM_IOEVENTFD at
    /// `QUEUE_NOTIFY_OFFSET` with datamatch = queue index.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The current device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The transport's registers and the device's live queues.
    pub fn snapshot(&self) -> TransportSnapshot {
        // One guard: temporaries in the literal below would all live to
        // its end, and a second lock() of the device would deadlock.
        let device = lock(&self.device);
        TransportSnapshot {
            device_type: self.device_type,
            acked_features: self.acked_features,
            features_sel: self.features_sel,
            acked_features_sel: self.acked_features_sel,
            queue_sel: self.queue_sel,
            shm_sel: self.shm_sel,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            queues: self.queues.iter().map(QueueSnapshot::of).collect(),
            active_queues: device.active_queue_states(),
            device_state: device.device_state(),
        }
    }

    /// Puts a fresh transport (and its device) back where `s` was: the
    /// registers, then, if the driver had reached DRIVER_OK, the device
    /// activated with its saved queues. Call once the VM's interrupt
    /// controller is restored: a pending interrupt is raised again.
    pub fn restore(&mut self, s: &TransportSnapshot) -> Result<(), SnapshotError> {
        if s.device_type != self.device_type {
            return Err(SnapshotError::DeviceType {
                want: self.device_type,
                got: s.device_type,
            });
        }
        if s.queues.len() != self.queues.len() {
            return Err(SnapshotError::QueueCount {
                want: self.queues.len(),
                got: s.queues.len(),
            });
        }
        self.queues = s
            .queues
            .iter()
            .map(|q| q.to_queue())
            .collect::<Result<_, _>>()?;
        self.acked_features = s.acked_features;
        self.features_sel = s.features_sel;
        self.acked_features_sel = s.acked_features_sel;
        self.queue_sel = s.queue_sel;
        self.shm_sel = s.shm_sel;
        self.status = s.status;
        self.config_generation = s.config_generation;
        if let Some(active) = &s.active_queues {
            self.activate_restored(active, s.device_state.as_ref())?;
        }
        self.interrupt
            .restore_status(s.interrupt_status)
            .map_err(|e| SnapshotError::Activate(format!("raising the interrupt: {e}")))
    }

    fn activate_restored(
        &mut self,
        active: &[QueueSnapshot],
        state: Option<&DeviceState>,
    ) -> Result<(), SnapshotError> {
        if active.len() != self.queues.len() {
            return Err(SnapshotError::QueueCount {
                want: self.queues.len(),
                got: active.len(),
            });
        }
        let queues = active
            .iter()
            .map(|q| q.to_queue())
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(i) = queues.iter().position(|q| !q.is_valid(&self.mem)) {
            return Err(SnapshotError::Queue(format!(
                "queue {i} is outside guest memory"
            )));
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
        };
        let mut dev = lock(&self.device);
        dev.activate(ctx)
            .map_err(|e| SnapshotError::Activate(e.to_string()))?;
        dev.restored(state)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.device_type,
            0x00c => VENDOR_ID,
            0x010 => match self.features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            0x034 => self.queue().map_or(0, |q| u32::from(q.max_size())),
            0x044 => self.queue().map_or(0, |q| u32::from(q.ready())),
            0x060 => self.interrupt.status(),
            0x070 => self.status,
            0x0b0..=0x0bc => self.read_shm_reg(offset),
            0x0fc => self.config_generation,
            _ => {
                crate::warn_limited!(
                    offset,
                    "virtio-mmio: read of unknown or write-only register"
                );
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            0x014 => self.features_sel = v,
            0x020 => self.write_driver_features(v),
            0x024 => self.acked_features_sel = v,
            0x030 => self.queue_sel = v,
            0x038 | 0x044 | 0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 => {
                self.write_queue_reg(offset, v)
            }
            0x050 => self.notify(v),
            0x064 => self.interrupt.ack(v),
            0x070 => self.write_status(v),
            0x0ac => self.shm_sel = v,
            _ => crate::warn_limited!(
                offset,
                "virtio-mmio: write to unknown or read-only register"
            ),
        }
    }

    // SHMLen/SHMBase of the selected region; all ones for a region that does
    // not exist or that the VMM has not placed in guest memory (virtio 1.2, 4.2.2).
    fn read_shm_reg(&self, offset: u64) -> u32 {
        let value = {
            let dev = lock(&self.device);
            let id = u8::try_from(self.shm_sel).ok();
            let region = id.and_then(|id| {
                let region = dev.shm_regions().into_iter().find(|r| r.id == id)?;
                Some((region.len, dev.shm_base(id)?.0))
            });
            match (offset, region) {
                (0x0b0 | 0x0b4, Some((len, _))) => len,
                (0x0b8 | 0x0bc, Some((_, base))) => base,
                _ => u64::MAX,
            }
        };
        if offset & 4 == 0 {
            value as u32
        } else {
            (value >> 32) as u32
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        if self.status & (DRIVER | FEATURES_OK) != DRIVER {
            return self.needs_reset("DriverFeatures written outside feature negotiation");
        }
        let shift = match self.acked_features_sel {
            0 => 0,
            1 => 32,
            _ => return,
        };
        self.acked_features &= !(0xffff_ffffu64 << shift);
        self.acked_features |= u64::from(v) << shift;
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) {
        if self.status & (FEATURES_OK | DRIVER_OK | DEVICE_NEEDS_RESET) != FEATURES_OK {
            return self.needs_reset("queue configured outside FEATURES_OK");
        }
        let mem = self.mem.clone();
        let Some(q) = self.queue_mut() else {
            return crate::warn_limited!("virtio-mmio: QueueSel names no queue");
        };
        if q.ready() && offset != 0x044 {
            return self.needs_reset("queue reconfigured while ready");
        }
        let ok = match offset {
            0x038 => u16::try_from(v).is_ok_and(|n| q.try_set_size(n).is_ok()),
            0x044 => set_ready(q, v, &mem),
            0x080 => addr(
                q.desc_table(),
                v,
                true,
                |q, a| q.try_set_desc_table_address(a),
                q,
            ),
            0x084 => addr(
                q.desc_table(),
                v,
                false,
                |q, a| q.try_set_desc_table_address(a),
                q,
            ),
            0x090 => addr(
                q.avail_ring(),
                v,
                true,
                |q, a| q.try_set_avail_ring_address(a),
                q,
            ),
            0x094 => addr(
                q.avail_ring(),
                v,
                false,
                |q, a| q.try_set_avail_ring_address(a),
                q,
            ),
            0x0a0 => addr(
                q.used_ring(),
                v,
                true,
                |q, a| q.try_set_used_ring_address(a),
                q,
            ),
            _ => addr(
                q.used_ring(),
                v,
                false,
                |q, a| q.try_set_used_ring_address(a),
                q,
            ),
        };
        if !ok {
            self.needs_reset("invalid queue size, alignment or address");
        }
    }

    fn notify(&mut self, index: u32) {
        if self.status & DRIVER_OK == 0 {
            return crate::warn_limited!(index, "virtio-mmio: QueueNotify before DRIVER_OK");
        }
        match self.queue_evts.get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    crate::error_limited!(index, "virtio-mmio: cannot kick queue: {e}");
                }
            }
            None => crate::warn_limited!(index, "virtio-mmio: QueueNotify for a missing queue"),
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            return self.reset();
        }
        let new = v & !self.status;
        if v & self.status != self.status || v & DEVICE_NEEDS_RESET != 0 {
            return self.needs_reset("driver cleared status bits without a reset");
        }
        let expected = match self.status & !DEVICE_NEEDS_RESET {
            0 => ACKNOWLEDGE,
            ACKNOWLEDGE => DRIVER,
            s if s == ACKNOWLEDGE | DRIVER => FEATURES_OK,
            s if s == ACKNOWLEDGE | DRIVER | FEATURES_OK => DRIVER_OK,
            _ => 0,
        };
        if new == FAILED {
            self.status |= FAILED;
            return crate::warn_limited!("virtio-mmio: driver gave up on the device (FAILED)");
        }
        if new != expected || self.status & DEVICE_NEEDS_RESET != 0 {
            return self.needs_reset("status bits set out of order");
        }
        match new {
            FEATURES_OK if !self.features_acceptable() => {
                crate::warn_limited!(
                    acked = self.acked_features,
                    offered = self.avail_features,
                    "virtio-mmio: driver acked unoffered features or not VERSION_1"
                );
            }
            DRIVER_OK => self.activate(),
            _ => self.status |= new,
        }
    }

    fn features_acceptable(&self) -> bool {
        self.acked_features & !self.avail_features == 0
            && self.acked_features & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self) {
        if let Some(i) = self.queues.iter().position(|q| !q.is_valid(&self.mem)) {
            crate::warn_limited!(
                queue = i,
                "virtio-mmio: DRIVER_OK with a queue not ready or invalid"
            );
            return self.needs_reset("DRIVER_OK with invalid queues");
        }
        // The device gets its own copies; the transport keeps the registers
        // so the driver can read them back.
        let queues = self.queues.iter().map(|q| Queue::try_from(q.state()));
        let queues = match queues.collect::<Result<Vec<_>, _>>() {
            Ok(queues) => queues,
            Err(_) => return self.needs_reset("queue state cannot be copied"),
        };
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
        };
        let result = lock(&self.device).activate(ctx);
        match result {
            Ok(()) => self.status |= DRIVER_OK,
            Err(e) => {
                crate::error_limited!("virtio-mmio: device activation failed: {e}");
                self.needs_reset("activation failed");
            }
        }
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        self.queues.iter_mut().for_each(QueueT::reset);
        self.interrupt.ack(u32::MAX);
        self.status = 0;
        self.acked_features = 0;
        self.features_sel = 0;
        self.acked_features_sel = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
    }

    fn needs_reset(&mut self, why: &str) {
        crate::warn_limited!(
            status = self.status,
            "virtio-mmio: misbehaving driver: {why}"
        );
        if self.status & DEVICE_NEEDS_RESET == 0 {
            self.status |= DEVICE_NEEDS_RESET;
            if self.status & DRIVER_OK != 0 {
                if let Err(e) = self.interrupt.trigger(InterruptCause::Config) {
                    crate::error_limited!("virtio-mmio: cannot raise config interrupt: {e}");
                }
            }
        }
    }

    fn queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    fn queue_mut(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }
}

// QueueReady = 1 is accepted only for a queue whose rings lie in guest memory.
fn set_ready(q: &mut Queue, v: u32, mem: &GuestMemory) -> bool {
    if v == 0 {
        q.set_ready(false);
        return true;
    }
    q.set_ready(true);
    let valid = q.is_valid(mem);
    q.set_ready(valid);
    valid
}

// Replaces the low or high half of a ring address, through the queue's checked setter.
fn addr(
    cur: u64,
    v: u32,
    low: bool,
    set: impl Fn(&mut Queue, GuestAddress) -> Result<(), virtio_queue::Error>,
    q: &mut Queue,
) -> bool {
    let new = if low {
        (cur & !0xffff_ffff) | u64::from(v)
    } else {
        (cur & 0xffff_ffff) | (u64::from(v) << 32)
    };
    set(q, GuestAddress(new)).is_ok()
}

fn lock(device: &Arc<Mutex<dyn VirtioDevice>>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            return lock(&self.device).read_config(offset - CONFIG_OFFSET, data);
        }
        if data.len() != 4 || offset & 3 != 0 {
            crate::warn_limited!(
                offset,
                len = data.len(),
                "virtio-mmio: non 32-bit register read"
            );
            return data.fill(0);
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            return lock(&self.device).write_config(offset - CONFIG_OFFSET, data);
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset & 3 == 0 => self.write_reg(offset, u32::from_le_bytes(bytes)),
            _ => crate::warn_limited!(
                offset,
                len = data.len(),
                "virtio-mmio: non 32-bit register write"
            ),
        }
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
