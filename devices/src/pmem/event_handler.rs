//! What the pmem device does on each event-manager event: serve FLUSH requests.
//!
//! A request chain is a readable `type: u32` followed by a writable
//! `ret: u32`. FLUSH is answered after an fsync of the backing file, so a
//! guest that flushed knows its writes reached the host's storage. A chain
//! with an unknown type or a short or out-of-memory request gets `ret`
//! nonzero when it has room for a response, and is returned used with
//! length 0 when it has not; either way the device keeps serving.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{DescriptorChain, QueueT};
use vmm_sys_util::epoll::EventSet;

use super::device::PmemDevice;
use super::{PmemMetrics, VIRTIO_PMEM_REQ_TYPE_FLUSH, VIRTIO_PMEM_RESP_EIO, VIRTIO_PMEM_RESP_OK};
use crate::virtio::{register_events, ActiveQueues, GuestMemory};

pub const PROCESS_REQUESTS: u32 = 0;
pub const PROCESS_ACTIVATE: u32 = 1;

impl PmemDevice {
    fn process_requests(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let ActiveQueues { mem, queues, .. } = &mut *active;
        let Some(queue) = queues.first_mut() else {
            return;
        };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            let len = serve(mem, chain, &self.backing, &self.metrics);
            if let Err(e) = queue.add_used(&*mem, head, len) {
                crate::error_limited!("pmem: cannot return a request: {e}");
            }
            used = true;
        }
        if used {
            active.notify_used(0, "pmem");
        }
    }
}

/// Serves one request chain; returns the bytes written into it.
fn serve(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    backing: &std::fs::File,
    metrics: &PmemMetrics,
) -> u32 {
    let request = chain
        .clone()
        .reader(mem)
        .ok()
        .and_then(|mut r| r.read_obj::<u32>().ok())
        .map(u32::from_le);
    let ret = match request {
        Some(VIRTIO_PMEM_REQ_TYPE_FLUSH) => {
            metrics.flushes.fetch_add(1, Ordering::Relaxed);
            match backing.sync_all() {
                Ok(()) => VIRTIO_PMEM_RESP_OK,
                Err(e) => {
                    metrics.flush_errors.fetch_add(1, Ordering::Relaxed);
                    crate::error_limited!("pmem: fsync of the backing file failed: {e}");
                    VIRTIO_PMEM_RESP_EIO
                }
            }
        }
        other => {
            metrics.bad_requests.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(request = ?other, "pmem: unknown or malformed request");
            VIRTIO_PMEM_RESP_EIO
        }
    };
    let written = chain
        .writer(mem)
        .ok()
        .and_then(|mut w| w.write_obj(ret.to_le()).ok());
    match written {
        Some(()) => 4,
        None => {
            // A malformed or unknown request was counted above already.
            if request == Some(VIRTIO_PMEM_REQ_TYPE_FLUSH) {
                metrics.bad_requests.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!("pmem: request without room for a response");
            0
        }
    }
}

impl MutEventSubscriber for PmemDevice {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let evt = match events.data() {
            PROCESS_REQUESTS => &self.queue_evts[0],
            PROCESS_ACTIVATE => &self.activate_evt,
            _ => return,
        };
        // Nonblocking: a spurious wake-up reads EAGAIN, which is harmless.
        let _ = evt.read();
        self.process_requests();
    }

    fn init(&mut self, ops: &mut EventOps) {
        let registrations = [
            (self.queue_evts[0].as_raw_fd(), PROCESS_REQUESTS),
            (self.activate_evt.as_raw_fd(), PROCESS_ACTIVATE),
        ];
        // Level-triggered, queue too: pmem reads its eventfds (it is kicked
        // only on a flush).
        let registrations = registrations.map(|(fd, token)| (fd, token, EventSet::IN));
        register_events(ops, "pmem", registrations);
    }
}
