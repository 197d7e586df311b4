//! What the vsock device does on each event-manager event.
//!
//! One `process()` dispatches on the event's token: a queue kick, host-side
//! activity in the muxer, or activation. Queue work is two loops: TX pops
//! guest packets and feeds them to the muxer; RX fills guest buffers with what
//! the muxer owes the guest. A malformed chain is returned used with length 0,
//! counted and logged (rate-limited); when its header names a connection,
//! that connection is reset. It never stops other connections. The guest is interrupted
//! once per `process()`, if any queue was used.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{QueueOwnedT, QueueT};
use virtio_vsock::packet::PKT_HEADER_SIZE;
use vmm_sys_util::epoll::EventSet;

use super::device::{VsockDevice, EVQ, RXQ, TXQ};
use super::muxer::VsockMuxer;
use super::packet::{RxBuffer, TxPacket};
use super::VsockMetrics;
use crate::virtio::{register_events, ActiveQueues, QUEUE_EVENTS};

pub const PROCESS_RXQ: u32 = 0;
pub const PROCESS_TXQ: u32 = 1;
pub const PROCESS_EVQ: u32 = 2;
pub const PROCESS_BACKEND: u32 = 3;
pub const PROCESS_ACTIVATE: u32 = 4;

impl VsockDevice {
    fn handle(&mut self, token: u32) {
        let Some(active) = self.active.as_mut() else {
            // Host clients may connect before the guest driver is up.
            if token == PROCESS_BACKEND {
                self.muxer.process_events();
            }
            return;
        };
        let mut used_rx = false;
        let mut used_tx = false;
        if token == PROCESS_EVQ && self.reset_pending {
            // The guest returned the event buffer: the reset is done.
            self.reset_pending = false;
            tracing::debug!("vsock: the guest took the transport reset");
        }
        match token {
            PROCESS_RXQ | PROCESS_EVQ => {}
            PROCESS_TXQ | PROCESS_ACTIVATE => {
                used_tx = process_tx(active, &mut self.muxer, &self.metrics)
            }
            PROCESS_BACKEND => self.muxer.process_events(),
            _ => return,
        }
        if !self.reset_pending {
            used_rx |= process_rx(active, &mut self.muxer, &self.metrics);
        }
        if used_tx {
            active.notify_used(TXQ, "vsock");
        }
        if used_rx {
            active.notify_used(RXQ, "vsock");
        }
    }
}

fn process_tx(active: &mut ActiveQueues, muxer: &mut VsockMuxer, metrics: &VsockMetrics) -> bool {
    let ActiveQueues { mem, queues, .. } = active;
    let queue = &mut queues[TXQ];
    let mut used = false;
    while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
        let head = chain.head_index();
        match TxPacket::parse(mem, chain) {
            Ok(pkt) => {
                metrics.tx_packets.fetch_add(1, Ordering::Relaxed);
                metrics
                    .tx_bytes
                    .fetch_add(pkt.data_len() as u64, Ordering::Relaxed);
                muxer.send_pkt(&pkt);
            }
            Err(e) => {
                metrics.malformed.fetch_add(1, Ordering::Relaxed);
                match &e.header {
                    Some(hdr) => {
                        let (src, dst) = (hdr.src_port(), hdr.dst_port());
                        crate::warn_limited!(
                            src,
                            dst,
                            "vsock: malformed TX chain, resetting its connection: {}",
                            e.error
                        );
                        muxer.reset_for(hdr);
                    }
                    None => crate::warn_limited!(
                        "vsock: malformed TX chain without a header: {}",
                        e.error
                    ),
                }
            }
        }
        // TX buffers are device-readable: nothing was written to them.
        if let Err(e) = queue.add_used(&*mem, head, 0) {
            crate::error_limited!("vsock: cannot return a TX buffer: {e}");
        }
        used = true;
    }
    used
}

fn process_rx(active: &mut ActiveQueues, muxer: &mut VsockMuxer, metrics: &VsockMetrics) -> bool {
    let ActiveQueues { mem, queues, .. } = active;
    let queue = &mut queues[RXQ];
    let mut used = false;
    while muxer.has_pending_rx() {
        let Some(chain) = queue.pop_descriptor_chain(&*mem) else {
            break;
        };
        let head = chain.head_index();
        let len = match RxBuffer::parse(mem, chain) {
            Ok(mut rx) => {
                let Some(hdr) = muxer.recv_pkt(&mut rx) else {
                    queue.go_to_previous_position();
                    break;
                };
                metrics.rx_packets.fetch_add(1, Ordering::Relaxed);
                metrics
                    .rx_bytes
                    .fetch_add(u64::from(hdr.len()), Ordering::Relaxed);
                PKT_HEADER_SIZE as u32 + hdr.len()
            }
            Err(e) => {
                metrics.malformed.fetch_add(1, Ordering::Relaxed);
                crate::warn_limited!("vsock: unusable RX buffer returned empty: {e}");
                0
            }
        };
        if let Err(e) = queue.add_used(&*mem, head, len) {
            crate::error_limited!("vsock: cannot return an RX buffer: {e}");
        }
        used = true;
    }
    used
}

/// virtio_vsock_event.id of a transport reset (virtio 1.2, 5.10.6.4.1).
const EVENT_TRANSPORT_RESET: u32 = 0;

/// Puts a transport-reset event in the first event buffer the guest
/// offered; true if the guest got one (it gives the buffer back, kicking
/// the event queue, once it has dropped its connections).
pub(super) fn send_transport_reset(dev: &mut VsockDevice) -> bool {
    let Some(active) = dev.active.as_mut() else {
        return false;
    };
    let ActiveQueues { mem, queues, .. } = &mut *active;
    let queue = &mut queues[EVQ];
    let Some(chain) = queue.pop_descriptor_chain(&*mem) else {
        tracing::warn!("vsock: the guest offered no event buffer for the transport reset");
        return false;
    };
    let head = chain.head_index();
    let written = chain
        .writer(&*mem)
        .ok()
        .and_then(|mut w| w.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes()).ok());
    if written.is_none() {
        tracing::warn!("vsock: the guest's event buffer cannot hold an event");
    }
    let len = if written.is_some() { 4 } else { 0 };
    if let Err(e) = queue.add_used(&*mem, head, len) {
        tracing::error!("vsock: cannot return the event buffer: {e}");
        return false;
    }
    active.notify_used(EVQ, "vsock");
    tracing::info!("vsock: told the guest its transport was reset (restored from a snapshot)");
    len > 0
}

impl MutEventSubscriber for VsockDevice {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let token = events.data();
        // Queue eventfds are edge-triggered and never read (QUEUE_EVENTS).
        if token == PROCESS_ACTIVATE {
            // Nonblocking: a spurious wake-up reads EAGAIN, which is harmless.
            let _ = self.activate_evt.read();
        }
        self.handle(token);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let registrations = [
            (self.queue_evts[RXQ].as_raw_fd(), PROCESS_RXQ, QUEUE_EVENTS),
            (self.queue_evts[TXQ].as_raw_fd(), PROCESS_TXQ, QUEUE_EVENTS),
            (self.queue_evts[EVQ].as_raw_fd(), PROCESS_EVQ, QUEUE_EVENTS),
            (
                self.activate_evt.as_raw_fd(),
                PROCESS_ACTIVATE,
                EventSet::IN,
            ),
            (self.muxer.epoll_fd(), PROCESS_BACKEND, EventSet::IN),
        ];
        register_events(ops, "vsock", registrations);
    }
}
