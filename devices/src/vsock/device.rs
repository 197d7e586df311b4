//! The vsock device's virtio contract: features, config space, activation.
//!
//! Everything event-driven (queue eventfds, the muxer's epoll fd, the
//! activation eventfd) is created once, with the device, so the event-manager
//! registrations never change across guest resets; activation only stores
//! the queues and memory and kicks the event loop, reset drops them and every
//! connection.

use std::path::PathBuf;
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::muxer::{MuxerError, VsockMuxer};
use super::{VsockMetrics, VIRTIO_ID_VSOCK};
use crate::virtio::{
    read_config_bytes, ActivateContext, ActivateError, ActiveQueues, DeviceState, QueueSnapshot,
    SnapshotError, VirtioDevice, VIRTIO_F_VERSION_1,
};

pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
pub(super) const EVQ: usize = 2;
const QUEUE_MAX_SIZES: [u16; 3] = [256; 3];

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved (CIDs 0, 1, 2 and u32::MAX are not guest CIDs)")]
    ReservedCid(u64),
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error(transparent)]
    Muxer(#[from] MuxerError),
}

/// How the VMM configures a vsock device.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    pub guest_cid: u64,
    /// Host Unix socket PATH; guest connections to port P go to `PATH_P`.
    pub uds_path: PathBuf,
    /// Cap on simultaneous connections (plus pending host handshakes).
    pub max_connections: usize,
    /// How long a host client may take to send its CONNECT line before the
    /// next client to arrive takes its slot (`DEFAULT_HANDSHAKE_TIMEOUT`).
    pub handshake_timeout: std::time::Duration,
}

pub struct VsockDevice {
    pub(super) guest_cid: u64,
    pub(super) queue_evts: Vec<EventFd>,
    pub(super) activate_evt: EventFd,
    pub(super) active: Option<ActiveQueues>,
    pub(super) muxer: VsockMuxer,
    pub(super) metrics: Arc<VsockMetrics>,
    /// A transport reset was sent and the guest has not taken it yet: no
    /// packet goes to the guest before it has, or the reset would also
    /// kill connections made after the restore.
    pub(super) reset_pending: bool,
}

impl VsockDevice {
    pub fn new(config: &VsockConfig) -> Result<Self, VsockError> {
        let cid = config.guest_cid;
        if cid <= 2 || cid >= u64::from(u32::MAX) {
            return Err(VsockError::ReservedCid(cid));
        }
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd);
        let metrics = Arc::new(VsockMetrics::default());
        Ok(Self {
            guest_cid: cid,
            queue_evts: vec![evt()?, evt()?, evt()?],
            activate_evt: evt()?,
            active: None,
            muxer: VsockMuxer::new(
                cid,
                &config.uds_path,
                config.max_connections,
                config.handshake_timeout,
                metrics.clone(),
            )?,
            metrics,
            reset_pending: false,
        })
    }

    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    /// Open guest connections, for tests and diagnostics.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }
}

impl VirtioDevice for VsockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_MAX_SIZES
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.guest_cid.to_le_bytes();
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        crate::warn_limited!(offset, "vsock: guest wrote read-only config space");
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.active = Some(ctx.into_active(self.active.is_some(), QUEUE_MAX_SIZES.len())?);
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }

    fn reset(&mut self) {
        self.active = None;
        self.reset_pending = false;
        self.muxer.reset();
    }

    fn active_queue_states(&self) -> Option<Vec<QueueSnapshot>> {
        self.active.as_ref().map(ActiveQueues::snapshots)
    }

    /// The guest's connections when they are all quiet (see `snapshot`);
    /// otherwise nothing, and a restored guest gets a transport reset.
    fn device_state(&self) -> Option<DeviceState> {
        self.active.as_ref()?;
        let saved = self.muxer.snapshot();
        if saved.is_none() {
            tracing::info!("vsock: a connection is busy; restored VMs get a transport reset");
        }
        saved.map(DeviceState::Vsock)
    }

    /// A restored guest still holds the connections of the VM it was
    /// snapshotted from. Saved quiet ones are parked for host clients to
    /// take over; without saved state, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
    /// tells the guest to drop them all (listening sockets survive).
    fn restored(&mut self, state: Option<&DeviceState>) -> Result<(), SnapshotError> {
        match state {
            Some(DeviceState::Vsock(saved)) => {
                self.muxer.park(saved).map_err(SnapshotError::DeviceState)
            }
            Some(other) => Err(SnapshotError::DeviceState(format!(
                "a vsock device cannot take the state of another device type: {other:?}"
            ))),
            None => {
                self.reset_pending = super::event_handler::send_transport_reset(self);
                Ok(())
            }
        }
    }
}
