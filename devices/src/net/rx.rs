//! Tap to guest: one frame at a time, read into a host buffer, then spread
//! over guest RX chains.
//!
//! With VIRTIO_NET_F_MRG_RXBUF a frame may fill several chains; the first
//! starts with the header, whose `num_buffers` says how many. Without it one
//! chain must hold the whole frame; a frame too large for the chain at the
//! head of the ring is dropped and counted, and the chain stays for the next
//! frame. Chains are popped only for a frame that they can take: when the
//! ring runs dry part-way, the popped chains are given back (the ring
//! position moves back), the frame stays pending in the host buffer, and
//! the tap is not read again until the guest adds buffers. So nothing is
//! dropped for lack of buffers, nothing spins, and the device never holds
//! a guest chain between events (which keeps snapshots simple).
//!
//! A chain the device cannot write into (a readable descriptor, memory
//! outside the guest, shorter than a header, no end) is used with length 0,
//! counted and warned about. When it comes after chains already popped for
//! the frame, those cannot be given back past it: they are used empty too,
//! and the frame is dropped. Only a hostile driver gets there. A frame
//! whose header uses an offload the guest did not take (one the tap queued
//! before it was told the guest's offloads) is dropped too.

use std::io;
use std::ops::Range;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory as _};

use super::device::RXQ;
use super::{NetMetrics, Tap, MAX_FRAME_LEN, NET_HDR_LEN};
use crate::virtio::{ActiveQueues, GuestMemory};

/// Frames read from the tap per event, so TX and other devices get a turn
/// (the tap stays readable, so the event loop comes back).
const RX_BUDGET: usize = 64;
/// The shortest frame the tap can hand over: a header and an Ethernet header.
const MIN_READ: usize = NET_HDR_LEN + 14;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RxChainError {
    #[error("an RX chain has a device-readable descriptor")]
    ReadableInRx,
    #[error("descriptor at {addr:#x} ({len} bytes) is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("the chain holds {got} bytes, less than the {NET_HDR_LEN}-byte header")]
    TooSmall { got: usize },
    #[error("the chain does not end (a loop, or a next index past the table)")]
    Unterminated,
}

/// What the negotiated features change in RX.
#[derive(Debug, Clone, Copy)]
pub(super) struct RxMode {
    /// VIRTIO_NET_F_MRG_RXBUF: a frame may span chains.
    pub mergeable: bool,
    /// VIRTIO_NET_F_GUEST_CSUM: header flags may reach the guest.
    pub csum: bool,
    /// VIRTIO_NET_F_GUEST_TSO4 / TSO6: GSO frames of that kind may too.
    pub tso4: bool,
    pub tso6: bool,
}

impl RxMode {
    /// Whether the guest took every offload the frame's header uses. The
    /// tap is told the guest's offloads at activation, but a frame it
    /// queued before (or before a reset) may still carry others.
    fn takes(&self, hdr: &[u8]) -> bool {
        let needs_csum = hdr[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 != 0;
        let gso = match u32::from(hdr[1]) {
            VIRTIO_NET_HDR_GSO_NONE => true,
            VIRTIO_NET_HDR_GSO_TCPV4 => self.tso4,
            VIRTIO_NET_HDR_GSO_TCPV6 => self.tso6,
            _ => false,
        };
        gso && (self.csum || !needs_csum)
    }
}

/// One popped chain: its head and its writable pieces in `RxState::parts`.
struct RxChain {
    head: u16,
    parts: Range<usize>,
}

pub(super) struct RxState {
    /// Header and frame as read from the tap, one byte longer than the
    /// largest frame so a frame the kernel had to cut shows.
    buf: Box<[u8]>,
    /// Bytes of a frame in `buf` not yet delivered (0: none).
    pending: usize,
    // Scratch kept between frames, so the hot path does not allocate.
    chains: Vec<RxChain>,
    parts: Vec<(GuestAddress, usize)>,
}

/// How one attempt to place the pending frame ended.
enum Placed {
    Delivered,
    /// The guest has not offered enough buffers yet; the frame waits.
    Waiting,
    Dropped,
}

/// How one read from the tap ended.
enum Read {
    Frame,
    /// A frame no guest could take was read and dropped.
    Skipped,
    Empty,
    Gone(io::Error),
}

impl RxState {
    pub fn new() -> Self {
        Self {
            buf: vec![0u8; NET_HDR_LEN + MAX_FRAME_LEN + 1].into_boxed_slice(),
            pending: 0,
            chains: Vec::new(),
            parts: Vec::new(),
        }
    }

    pub fn has_pending(&self) -> bool {
        self.pending > 0
    }

    pub fn drop_pending(&mut self) {
        self.pending = 0;
    }

    fn read(&mut self, tap: &Tap, mode: RxMode, metrics: &NetMetrics) -> Read {
        let n = match tap.read_frame(&mut self.buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read::Empty,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Read::Skipped,
            // A tap read fails for nothing else that passes: the device would
            // spin on a readable fd it cannot read, so it lets the tap go.
            Err(e) => return Read::Gone(e),
        };
        if !(MIN_READ..=NET_HDR_LEN + MAX_FRAME_LEN).contains(&n) {
            metrics.rx_dropped.fetch_add(1, Ordering::Relaxed);
            crate::warn_limited!(
                len = n,
                tap = tap.name(),
                "net: dropped a tap frame of impossible size"
            );
            return Read::Skipped;
        }
        if !mode.takes(&self.buf) {
            metrics.rx_dropped.fetch_add(1, Ordering::Relaxed);
            let (flags, gso_type) = (self.buf[0], self.buf[1]);
            crate::warn_limited!(
                flags,
                gso_type,
                tap = tap.name(),
                "net: dropped a tap frame with offloads the guest did not take"
            );
            return Read::Skipped;
        }
        self.pending = n;
        Read::Frame
    }

    // Pops chains until they hold the pending frame, then writes it.
    fn place(
        &mut self,
        active: &mut ActiveQueues,
        mode: RxMode,
        metrics: &NetMetrics,
        used: &mut bool,
    ) -> Placed {
        let ActiveQueues { mem, queues, .. } = active;
        let queue = &mut queues[RXQ];
        let len = self.pending;
        self.chains.clear();
        self.parts.clear();
        let mut capacity = 0;
        while capacity < len {
            if !mode.mergeable && !self.chains.is_empty() {
                queue.go_to_previous_position();
                metrics.rx_dropped.fetch_add(1, Ordering::Relaxed);
                crate::warn_limited!(
                    len,
                    capacity,
                    "net: a frame does not fit the guest's RX buffer (no mergeable buffers); dropped"
                );
                return Placed::Dropped;
            }
            let Some(chain) = queue.pop_descriptor_chain(&*mem) else {
                return self.give_back(queue, capacity, metrics);
            };
            let head = chain.head_index();
            let start = self.parts.len();
            match parse_rx_chain(mem, chain, &mut self.parts) {
                Ok(room) => {
                    capacity += room;
                    let parts = start..self.parts.len();
                    self.chains.push(RxChain { head, parts });
                }
                Err(e) => {
                    *used = true;
                    if self.reject(mem, queue, head, &e, metrics) {
                        return Placed::Dropped;
                    }
                }
            }
        }
        self.write(mem, queue, mode, metrics);
        *used = true;
        Placed::Delivered
    }

    // The ring ran dry before the frame fit: the popped chains go back for
    // next time, unless they are every buffer the ring can hold (then no
    // kick will ever make room, and the frame is dropped).
    fn give_back(
        &mut self,
        queue: &mut virtio_queue::Queue,
        capacity: usize,
        metrics: &NetMetrics,
    ) -> Placed {
        let popped = self.chains.len();
        (0..popped).for_each(|_| queue.go_to_previous_position());
        if popped == 0 || popped < usize::from(queue.size()) {
            return Placed::Waiting;
        }
        metrics.rx_dropped.fetch_add(1, Ordering::Relaxed);
        let len = self.pending;
        crate::warn_limited!(
            len,
            capacity,
            "net: the whole RX ring cannot hold a frame; dropped"
        );
        Placed::Dropped
    }

    // Uses an unusable chain empty, with the chains popped before it (they
    // cannot be given back past it); true when that costs the frame.
    fn reject(
        &mut self,
        mem: &GuestMemory,
        queue: &mut virtio_queue::Queue,
        head: u16,
        e: &RxChainError,
        metrics: &NetMetrics,
    ) -> bool {
        metrics.rx_malformed.fetch_add(1, Ordering::Relaxed);
        crate::warn_limited!(head, "net: unusable RX chain returned empty: {e}");
        for h in self.chains.iter().map(|c| c.head).chain([head]) {
            if let Err(e) = queue.add_used(mem, h, 0) {
                crate::error_limited!("net: cannot return an RX buffer: {e}");
            }
        }
        if self.chains.is_empty() {
            return false;
        }
        metrics.rx_dropped.fetch_add(1, Ordering::Relaxed);
        self.chains.clear();
        self.parts.clear();
        true
    }

    // Writes the pending frame over the popped chains and uses them.
    fn write(
        &mut self,
        mem: &GuestMemory,
        queue: &mut virtio_queue::Queue,
        mode: RxMode,
        metrics: &NetMetrics,
    ) {
        let len = std::mem::take(&mut self.pending);
        if !mode.csum {
            // Without GUEST_CSUM the driver must see no flags (virtio 1.2, 5.1.6.4).
            self.buf[0] = 0;
        }
        let count = self.chains.len() as u16;
        self.buf[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&count.to_le_bytes());
        let mut pos = 0;
        for chain in &self.chains {
            let mut written = 0;
            for &(addr, room) in &self.parts[chain.parts.clone()] {
                let take = room.min(len - pos);
                if take == 0 {
                    break;
                }
                // Checked by parse_rx_chain; a failure here is a bug, not the guest.
                if let Err(e) = mem.write_slice(&self.buf[pos..pos + take], addr) {
                    crate::error_limited!("net: cannot write an RX buffer: {e}");
                }
                pos += take;
                written += take;
            }
            if let Err(e) = queue.add_used(mem, chain.head, written as u32) {
                crate::error_limited!("net: cannot return an RX buffer: {e}");
            }
        }
        metrics.rx_packets.fetch_add(1, Ordering::Relaxed);
        metrics
            .rx_bytes
            .fetch_add((len - NET_HDR_LEN) as u64, Ordering::Relaxed);
    }
}

/// Walks an RX chain, appending its writable pieces to `parts`; returns the
/// bytes it can take. On error `parts` is as it was.
fn parse_rx_chain(
    mem: &GuestMemory,
    descs: impl IntoIterator<Item = Descriptor>,
    parts: &mut Vec<(GuestAddress, usize)>,
) -> Result<usize, RxChainError> {
    let start = parts.len();
    let result = walk_rx_chain(mem, descs, parts);
    if result.is_err() {
        parts.truncate(start);
    }
    result
}

fn walk_rx_chain(
    mem: &GuestMemory,
    descs: impl IntoIterator<Item = Descriptor>,
    parts: &mut Vec<(GuestAddress, usize)>,
) -> Result<usize, RxChainError> {
    let (mut room, mut ended) = (0usize, false);
    for desc in descs {
        ended = !desc.has_next();
        if !desc.is_write_only() {
            return Err(RxChainError::ReadableInRx);
        }
        let len = desc.len() as usize;
        if len == 0 {
            continue;
        }
        if !mem.check_range(desc.addr(), len) {
            return Err(RxChainError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        // Room past the largest frame is never written; counting it would
        // only make the sum overflow-prone.
        room = room.saturating_add(len).min(NET_HDR_LEN + MAX_FRAME_LEN);
        parts.push((desc.addr(), len));
    }
    if !ended {
        return Err(RxChainError::Unterminated);
    }
    if room < NET_HDR_LEN {
        return Err(RxChainError::TooSmall { got: room });
    }
    Ok(room)
}

/// What one round of RX did.
pub(super) struct RxOutcome {
    pub used: bool,
    /// The error that showed the tap is gone, if one did.
    pub lost: Option<io::Error>,
}

/// Delivers the pending frame, then reads and delivers more, until the tap
/// is empty, the guest's buffers run out, or the budget is spent.
pub(super) fn process_rx(
    active: &mut ActiveQueues,
    tap: Option<&Tap>,
    rx: &mut RxState,
    mode: RxMode,
    metrics: &NetMetrics,
) -> RxOutcome {
    let mut out = RxOutcome {
        used: false,
        lost: None,
    };
    let mut reads = 0;
    loop {
        if !rx.has_pending() {
            let Some(tap) = tap else { break };
            if reads == RX_BUDGET {
                break;
            }
            reads += 1;
            match rx.read(tap, mode, metrics) {
                Read::Frame => {}
                Read::Skipped => continue,
                Read::Empty => break,
                Read::Gone(e) => {
                    out.lost = Some(e);
                    break;
                }
            }
        }
        match rx.place(active, mode, metrics, &mut out.used) {
            Placed::Delivered => {}
            Placed::Dropped => rx.drop_pending(),
            Placed::Waiting => break,
        }
    }
    out
}

/// Whether the guest has offered RX buffers the device has not taken.
pub(super) fn buffers_available(active: &ActiveQueues) -> bool {
    let queue = &active.queues[RXQ];
    queue
        .avail_idx(&active.mem, Ordering::Acquire)
        .is_ok_and(|idx| idx.0 != queue.next_avail())
}
