//! What the virtio-fs device does on each event-manager event.
//!
//! Queue q's ioeventfd is registered with token `PROCESS_QUEUE_BASE + q`
//! (queue 0 is hiprio, the rest are request queues; all carry FUSE requests
//! and are served the same way), activation with `PROCESS_ACTIVATE`, which
//! drains every queue once in case the driver queued requests before the
//! device was up. Requests are served synchronously on the event loop's
//! thread; the guest is interrupted once per queue that used buffers.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use fuse_backend_rs::transport::FsCacheReqHandler;
use virtio_queue::QueueT;
use vmm_sys_util::epoll::EventSet;

use super::backend::FuseServer;
use super::dax::DaxWindow;
use super::device::FsDevice;
use super::request::serve_chain;
use super::FsMetrics;
use crate::virtio::{register_events, ActiveQueues, QUEUE_EVENTS};

pub const PROCESS_ACTIVATE: u32 = 0;
/// Token of queue 0; queue q uses `PROCESS_QUEUE_BASE + q`.
pub const PROCESS_QUEUE_BASE: u32 = 1;

impl FsDevice {
    fn handle(&mut self, token: u32) {
        if self.active.is_none() {
            return;
        }
        self.renew_server_if_stale();
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let queues = match token {
            PROCESS_ACTIVATE => 0..active.queues.len(),
            _ => {
                let q = (token - PROCESS_QUEUE_BASE) as usize;
                q..q + 1
            }
        };
        for q in queues {
            let used = process_queue(active, q, &self.server, self.dax.as_mut(), &self.metrics);
            if used {
                active.notify_used(q, "virtio-fs");
            }
        }
    }
}

fn process_queue(
    active: &mut ActiveQueues,
    q: usize,
    server: &FuseServer,
    mut dax: Option<&mut DaxWindow>,
    metrics: &FsMetrics,
) -> bool {
    let ActiveQueues { mem, queues, .. } = active;
    let Some(queue) = queues.get_mut(q) else {
        return false;
    };
    let mut used = false;
    while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
        let head = chain.head_index();
        let window = dax.as_deref_mut().map(|w| w as &mut dyn FsCacheReqHandler);
        let len = serve_chain(mem, chain, server, window, metrics);
        if let Err(e) = queue.add_used(&*mem, head, len) {
            crate::error_limited!(queue = q, "virtio-fs: cannot return a buffer: {e}");
        }
        used = true;
    }
    used
}

impl MutEventSubscriber for FsDevice {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let token = events.data();
        match token {
            PROCESS_ACTIVATE => {
                // Nonblocking: a spurious wake-up reads EAGAIN, which is harmless.
                let _ = self.activate_evt.read();
            }
            // Queue eventfds are edge-triggered and never read (QUEUE_EVENTS).
            _ if token
                .checked_sub(PROCESS_QUEUE_BASE)
                .is_some_and(|q| (q as usize) < self.queue_evts.len()) => {}
            _ => return tracing::warn!(token, "virtio-fs: event with an unknown token"),
        }
        self.handle(token);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let queues = self.queue_evts.iter().zip(PROCESS_QUEUE_BASE..);
        let queues = queues.map(|(evt, token)| (evt.as_raw_fd(), token, QUEUE_EVENTS));
        let activate = (
            self.activate_evt.as_raw_fd(),
            PROCESS_ACTIVATE,
            EventSet::IN,
        );
        register_events(ops, "virtio-fs", std::iter::once(activate).chain(queues));
    }
}
