//! The pmem device's virtio contract: config space, one request queue, activation.
//!
//! Config space is two little-endian u64s, `start` and `size`: the
//! guest-physical range the VMM mapped the image at. The device keeps the
//! backing file only to fsync it on FLUSH; the mapping belongs to the VMM.

use std::fs::File;
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{PmemMetrics, VIRTIO_ID_PMEM};
use crate::virtio::{
    read_config_bytes, ActivateContext, ActivateError, ActiveQueues, QueueSnapshot, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

const QUEUE_MAX_SIZES: [u16; 1] = [256];

#[derive(Debug, thiserror::Error)]
pub enum PmemError {
    #[error("pmem region of {0} bytes is empty or not a whole number of 4 KiB pages")]
    BadSize(u64),
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

pub struct PmemDevice {
    /// Guest-physical start and size of the mapped image.
    pub(super) start: u64,
    pub(super) size: u64,
    pub(super) backing: File,
    pub(super) queue_evts: Vec<EventFd>,
    pub(super) activate_evt: EventFd,
    pub(super) active: Option<ActiveQueues>,
    pub(super) metrics: Arc<PmemMetrics>,
}

impl PmemDevice {
    /// A device announcing `size` bytes at guest-physical `start`, flushing `backing`.
    pub fn new(backing: File, start: u64, size: u64) -> Result<Self, PmemError> {
        if size == 0 || !size.is_multiple_of(4096) {
            return Err(PmemError::BadSize(size));
        }
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(PmemError::EventFd);
        Ok(Self {
            start,
            size,
            backing,
            queue_evts: vec![evt()?],
            activate_evt: evt()?,
            active: None,
            metrics: Arc::new(PmemMetrics::default()),
        })
    }

    pub fn metrics(&self) -> Arc<PmemMetrics> {
        self.metrics.clone()
    }
}

impl VirtioDevice for PmemDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_PMEM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_MAX_SIZES
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&self.start.to_le_bytes());
        config[8..].copy_from_slice(&self.size.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        crate::warn_limited!(offset, "pmem: guest wrote read-only config space");
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.active = Some(ctx.into_active(self.active.is_some(), 1)?);
        // Requests posted before DRIVER_OK are served on activation.
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn active_queue_states(&self) -> Option<Vec<QueueSnapshot>> {
        self.active.as_ref().map(ActiveQueues::snapshots)
    }
}
