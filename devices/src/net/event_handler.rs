//! What the net device does on each event-manager event, and when it
//! listens to the tap.
//!
//! One `process()` dispatches on the token: a TX kick sends the guest's
//! frames, an RX kick (the guest added buffers) delivers the pending frame
//! and reads on, tap readiness reads frames, activation and a new backend do
//! both. The guest is interrupted once per queue per event, if that queue
//! was used.
//!
//! The tap fd is registered for EPOLLIN only while a frame could go
//! somewhere: the device is active, no frame is pending, and the RX ring has
//! buffers the device has not taken. Otherwise it stays registered with no
//! events, so a tap deleted under an idle guest still shows up (EPOLLERR)
//! and is let go, and a full guest never makes the loop spin on a readable
//! tap. After every event the registration is brought in line with that.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_MRG_RXBUF,
};
use vmm_sys_util::epoll::EventSet;

use super::device::{NetDevice, TapRegistration, RXQ, TXQ};
use super::rx::{buffers_available, process_rx, RxMode};
use super::tx::process_tx;
use crate::virtio::{register_events, QUEUE_EVENTS};

pub const PROCESS_RXQ: u32 = 0;
pub const PROCESS_TXQ: u32 = 1;
pub const PROCESS_TAP: u32 = 2;
pub const PROCESS_ACTIVATE: u32 = 3;
pub const PROCESS_BACKEND: u32 = 4;

impl NetDevice {
    fn handle(&mut self, token: u32) {
        let mode = RxMode {
            mergeable: self.has_feature(VIRTIO_NET_F_MRG_RXBUF),
            csum: self.has_feature(VIRTIO_NET_F_GUEST_CSUM),
            tso4: self.has_feature(VIRTIO_NET_F_GUEST_TSO4),
            tso6: self.has_feature(VIRTIO_NET_F_GUEST_TSO6),
        };
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (mut used_tx, mut used_rx, mut lost) = (false, false, None);
        if matches!(token, PROCESS_TXQ | PROCESS_ACTIVATE | PROCESS_BACKEND) {
            (used_tx, lost) = process_tx(active, self.tap.as_deref(), &self.metrics);
        }
        let rx_token = matches!(
            token,
            PROCESS_RXQ | PROCESS_TAP | PROCESS_ACTIVATE | PROCESS_BACKEND
        );
        if rx_token && lost.is_none() {
            let out = process_rx(
                active,
                self.tap.as_deref(),
                &mut self.rx,
                mode,
                &self.metrics,
            );
            (used_rx, lost) = (out.used, out.lost);
        }
        if used_tx {
            active.notify_used(TXQ, "net");
        }
        if used_rx {
            active.notify_used(RXQ, "net");
        }
        if let Some(e) = lost {
            self.lose_backend(&e);
        }
    }

    // Whether the tap should wake the loop when a frame arrives.
    fn wants_rx(&self) -> bool {
        !self.rx.has_pending() && self.active.as_ref().is_some_and(buffers_available)
    }

    /// Brings the tap's registration in line with what the device needs,
    /// then closes the taps it let go of.
    fn sync_tap(&mut self, ops: &mut EventOps) {
        let want = self.tap_fd().map(|fd| TapRegistration {
            fd,
            rx_wanted: self.wants_rx(),
        });
        match (self.registration, want) {
            (have, want) if have == want => {}
            (Some(have), Some(want)) if have.fd == want.fd => match ops.modify(tap_events(want)) {
                Ok(()) => self.registration = Some(want),
                Err(e) => crate::error_limited!("net: cannot change the tap's events: {e:?}"),
            },
            (have, want) => {
                if let Some(have) = have {
                    if let Err(e) = ops.remove(Events::empty_raw(have.fd)) {
                        crate::error_limited!("net: cannot stop watching the old tap: {e:?}");
                    }
                    self.registration = None;
                }
                if let Some(want) = want {
                    match ops.add(tap_events(want)) {
                        Ok(()) => self.registration = Some(want),
                        Err(e) => crate::error_limited!("net: cannot watch the tap: {e:?}"),
                    }
                }
            }
        }
        self.retired.clear();
    }
}

fn tap_events(r: TapRegistration) -> Events {
    let set = if r.rx_wanted {
        EventSet::IN
    } else {
        EventSet::empty()
    };
    Events::with_data_raw(r.fd, PROCESS_TAP, set)
}

impl MutEventSubscriber for NetDevice {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        // Queue eventfds are edge-triggered and never read (QUEUE_EVENTS).
        let evt = match token {
            PROCESS_ACTIVATE => Some(&self.activate_evt),
            PROCESS_BACKEND => Some(&self.backend_evt),
            _ => None,
        };
        if let Some(evt) = evt {
            // Nonblocking: a spurious wake-up reads EAGAIN, which is harmless.
            let _ = evt.read();
        }
        let broken = EventSet::ERROR | EventSet::HANG_UP;
        if token == PROCESS_TAP && events.event_set().intersects(broken) {
            // A tun fd reports an error only once its interface is gone.
            self.lose_backend(&"its fd reports an error");
        } else {
            self.handle(token);
        }
        self.sync_tap(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let registrations = [
            (self.queue_evts[RXQ].as_raw_fd(), PROCESS_RXQ, QUEUE_EVENTS),
            (self.queue_evts[TXQ].as_raw_fd(), PROCESS_TXQ, QUEUE_EVENTS),
            (
                self.activate_evt.as_raw_fd(),
                PROCESS_ACTIVATE,
                EventSet::IN,
            ),
            (self.backend_evt.as_raw_fd(), PROCESS_BACKEND, EventSet::IN),
        ];
        register_events(ops, "net", registrations);
        self.sync_tap(ops);
    }
}
