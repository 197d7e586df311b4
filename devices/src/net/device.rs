//! The net device's virtio contract: features, config space, activation,
//! and the slot that holds the tap.
//!
//! Offered features are fixed when the device is made: VERSION_1, MAC, MTU,
//! STATUS, MRG_RXBUF, and the checksum/TSO offloads both ways unless the
//! tap cannot take them (every Linux tap with a vnet header can; a device
//! without a tap offers them too, so a template made without one restores
//! into a VM that has one). On activation the tap is told which offloaded
//! frames the guest accepts (TUNSETOFFLOAD). The link is always reported
//! up, backend or not: the guest configures its NIC the same way in a
//! template and in every clone, and a device without a tap behaves like an
//! unplugged cable at the switch (frames sent are dropped and counted).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_bindings::virtio_net::*;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::rx::RxState;
use super::snapshot::NetSnapshot;
use super::{MacAddr, NetMetrics, Tap, VIRTIO_ID_NET};
use crate::virtio::{
    read_config_bytes, ActivateContext, ActivateError, ActiveQueues, DeviceState, QueueSnapshot,
    SnapshotError, VirtioDevice, VIRTIO_F_VERSION_1,
};

pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
const QUEUE_MAX_SIZES: [u16; 2] = [256; 2];

/// MTU when nobody names one.
pub const DEFAULT_MTU: u16 = 1500;
/// The smallest MTU a device may offer (virtio 1.2, 5.1.4.1: IPv4's 68).
const MIN_MTU: u16 = 68;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// Features every net device offers.
const BASE_FEATURES: u64 = VIRTIO_F_VERSION_1
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MRG_RXBUF);
/// Checksum and TSO offloads, guest to host and host to guest.
pub(super) const OFFLOAD_FEATURES: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("MTU {0} is below the minimum of {MIN_MTU}")]
    BadMtu(u16),
    #[error("MAC address {0} is multicast; a NIC needs a unicast address")]
    MulticastMac(MacAddr),
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// What the guest sees of the NIC: its address and MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    pub mac: MacAddr,
    pub mtu: u16,
}

/// Where the tap stands with the event loop: its fd and the events it is
/// registered for (`event_handler` keeps this in step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TapRegistration {
    pub fd: RawFd,
    pub rx_wanted: bool,
}

pub struct NetDevice {
    pub(super) config: NetConfig,
    pub(super) avail_features: u64,
    pub(super) acked_features: u64,
    pub(super) queue_evts: Vec<EventFd>,
    pub(super) activate_evt: EventFd,
    /// Written when the tap is replaced, so the event loop re-registers.
    pub(super) backend_evt: EventFd,
    pub(super) active: Option<ActiveQueues>,
    pub(super) tap: Option<Arc<Tap>>,
    /// Taps that were replaced or lost, kept open until the event loop has
    /// removed their fd (so the number cannot be reused under it).
    pub(super) retired: Vec<Arc<Tap>>,
    pub(super) registration: Option<TapRegistration>,
    pub(super) rx: RxState,
    pub(super) metrics: Arc<NetMetrics>,
}

impl NetDevice {
    /// A device with `config`, backed by `tap` (or by nothing: see the
    /// module comment).
    pub fn new(config: NetConfig, tap: Option<Arc<Tap>>) -> Result<Self, NetError> {
        if config.mtu < MIN_MTU {
            return Err(NetError::BadMtu(config.mtu));
        }
        if config.mac.is_multicast() {
            return Err(NetError::MulticastMac(config.mac));
        }
        let offloads = tap.as_ref().is_none_or(|t| t.supports_offloads());
        let avail_features = BASE_FEATURES | if offloads { OFFLOAD_FEATURES } else { 0 };
        match &tap {
            Some(t) => {
                tracing::info!(mac = %config.mac, mtu = config.mtu, tap = t.name(), "net device")
            }
            None => tracing::info!(
                mac = %config.mac,
                mtu = config.mtu,
                "net device without a tap: the link shows up, frames the guest sends are dropped"
            ),
        }
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(NetError::EventFd);
        Ok(Self {
            config,
            avail_features,
            acked_features: 0,
            queue_evts: vec![evt()?, evt()?],
            activate_evt: evt()?,
            backend_evt: evt()?,
            active: None,
            tap,
            retired: Vec::new(),
            registration: None,
            rx: RxState::new(),
            metrics: Arc::new(NetMetrics::default()),
        })
    }

    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    pub fn config(&self) -> NetConfig {
        self.config
    }

    /// The tap serving the device now, if any.
    pub fn tap(&self) -> Option<&Arc<Tap>> {
        self.tap.as_ref()
    }

    /// Attaches `tap` (or detaches the current one with `None`), on a
    /// running device too: the event loop picks the change up. The old tap
    /// is closed once the loop has let go of it.
    pub fn set_backend(&mut self, tap: Option<Arc<Tap>>) {
        if let Some(old) = std::mem::replace(&mut self.tap, tap) {
            self.retired.push(old);
        }
        self.rx.drop_pending();
        if let Some(t) = &self.tap {
            tracing::info!(tap = t.name(), "net: tap attached");
            if self.active.is_some() {
                self.apply_offloads();
            }
        }
        if let Err(e) = self.backend_evt.write(1) {
            tracing::error!("net: cannot wake the event loop for the new tap: {e}");
        }
    }

    /// Drops the tap after it failed for good (see `tap::is_gone`).
    pub(super) fn lose_backend(&mut self, why: &dyn std::fmt::Display) {
        let Some(tap) = self.tap.take() else {
            return;
        };
        self.metrics
            .backend_lost
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            tap = tap.name(),
            "net: the tap is gone ({why}); frames the guest sends are dropped from now on"
        );
        self.rx.drop_pending();
        self.retired.push(tap);
    }

    pub(super) fn has_feature(&self, bit_nr: u32) -> bool {
        self.acked_features & bit(bit_nr) != 0
    }

    // Tells the tap which offloaded frames the guest takes; a guest that
    // acked TSO without checksum offload gets neither (the spec ties them).
    fn apply_offloads(&self) {
        let Some(tap) = &self.tap else {
            return;
        };
        let mut flags = 0;
        if self.has_feature(VIRTIO_NET_F_GUEST_CSUM) {
            flags |= libc::TUN_F_CSUM;
            if self.has_feature(VIRTIO_NET_F_GUEST_TSO4) {
                flags |= libc::TUN_F_TSO4;
            }
            if self.has_feature(VIRTIO_NET_F_GUEST_TSO6) {
                flags |= libc::TUN_F_TSO6;
            }
        }
        if let Err(e) = tap.set_offload(flags) {
            crate::warn_limited!(
                tap = tap.name(),
                flags,
                "net: the tap refused the guest's offloads; it gets plain frames: {e}"
            );
        }
    }

    /// The config space: mac, status, max_virtqueue_pairs, mtu.
    fn config_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..6].copy_from_slice(&self.config.mac.0);
        b[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        b[8..10].copy_from_slice(&1u16.to_le_bytes());
        b[10..12].copy_from_slice(&self.config.mtu.to_le_bytes());
        b
    }

    pub(super) fn tap_fd(&self) -> Option<RawFd> {
        self.tap.as_ref().map(|t| t.as_raw_fd())
    }
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_MAX_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        crate::warn_limited!(offset, "net: guest wrote read-only config space");
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let acked = ctx.acked_features;
        self.active = Some(ctx.into_active(self.active.is_some(), QUEUE_MAX_SIZES.len())?);
        self.acked_features = acked;
        self.apply_offloads();
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.rx.drop_pending();
    }

    fn active_queue_states(&self) -> Option<Vec<QueueSnapshot>> {
        self.active.as_ref().map(ActiveQueues::snapshots)
    }

    /// What the guest knows of the NIC. Nothing else needs saving: TX
    /// chains are used as soon as they are popped, RX chains are popped only
    /// when a frame fills them, and a frame read from the template's tap but
    /// not yet delivered belongs to the template's network, not the clone's.
    fn device_state(&self) -> Option<DeviceState> {
        self.active.as_ref()?;
        Some(DeviceState::Net(NetSnapshot::of(&self.config)))
    }

    /// The guest of a restored VM keeps the MAC and MTU it read when its
    /// driver probed; a device configured otherwise would lie to it.
    fn restored(&mut self, state: Option<&DeviceState>) -> Result<(), SnapshotError> {
        match state {
            Some(DeviceState::Net(saved)) => saved.check(&self.config),
            Some(other) => Err(SnapshotError::DeviceState(format!(
                "a net device cannot take the state of another device type: {other:?}"
            ))),
            None => Ok(()),
        }
    }
}
