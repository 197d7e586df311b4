//! Guest to tap: each TX chain is one frame, written with one writev.
//!
//! A chain is the 12-byte `virtio_net_hdr_v1` followed by the Ethernet
//! frame, over any number of device-readable descriptors (the header may be
//! split, or share a descriptor with the frame). The tap takes the same
//! header, so the chain goes to the kernel as it is: `parse_tx_chain`
//! checks every descriptor against guest memory and the size cap and
//! collects iovecs pointing into guest memory (no copy, no allocation), and
//! the kernel validates the header's offload fields itself (a frame it
//! refuses is counted as dropped). A chain that is not a frame is used with
//! length 0, counted and warned about (rate-limited); the next one is served.

use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueT;
use vm_memory::GuestMemory as _;

use super::device::TXQ;
use super::{is_gone, NetMetrics, Tap, MAX_FRAME_LEN, NET_HDR_LEN};
use crate::virtio::{ActiveQueues, GuestMemory};

/// Most pieces one frame may be gathered from (Linux's UIO_MAXIOV).
pub const MAX_TX_IOVS: usize = 1024;
/// An Ethernet header: the shortest frame worth sending.
const ETH_HLEN: usize = 14;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxChainError {
    #[error("a TX chain has a device-writable descriptor")]
    WritableInTx,
    #[error("descriptor at {addr:#x} ({len} bytes) is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("the chain holds more than {max} bytes", max = NET_HDR_LEN + MAX_FRAME_LEN)]
    TooLong,
    #[error("the chain holds {got} bytes, less than a header and an Ethernet header")]
    TooShort { got: usize },
    #[error("the chain is spread over more than {MAX_TX_IOVS} pieces")]
    TooManyPieces,
    #[error("the chain does not end (a loop, or a next index past the table)")]
    Unterminated,
}

/// A frame ready for the tap: iovecs over guest memory, header first.
#[derive(Debug)]
pub struct TxFrame<'a> {
    iov: &'a [libc::iovec],
    len: usize,
}

impl TxFrame<'_> {
    /// The iovecs, for `Tap::writev_frame`.
    pub fn iovecs(&self) -> &[libc::iovec] {
        self.iov
    }

    /// Frame bytes, header excluded.
    pub fn frame_len(&self) -> usize {
        self.len - NET_HDR_LEN
    }
}

/// An empty iovec, to fill a scratch array with.
pub const EMPTY_IOVEC: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

/// Walks a TX chain into `scratch`: every descriptor device-readable and
/// inside guest memory, the whole at most a header plus `MAX_FRAME_LEN`
/// and at least a header plus an Ethernet header, and the chain ended.
pub fn parse_tx_chain<'a>(
    mem: &'a GuestMemory,
    descs: impl IntoIterator<Item = Descriptor>,
    scratch: &'a mut [libc::iovec; MAX_TX_IOVS],
) -> Result<TxFrame<'a>, TxChainError> {
    let (mut count, mut len) = (0, 0usize);
    let mut ended = false;
    for desc in descs {
        ended = !desc.has_next();
        if desc.is_write_only() {
            return Err(TxChainError::WritableInTx);
        }
        len += desc.len() as usize;
        if len > NET_HDR_LEN + MAX_FRAME_LEN {
            return Err(TxChainError::TooLong);
        }
        let outside = || TxChainError::OutsideMemory {
            addr: desc.addr().0,
            len: desc.len(),
        };
        for slice in mem.get_slices(desc.addr(), desc.len() as usize) {
            let slice = slice.map_err(|_| outside())?;
            let slot = scratch.get_mut(count).ok_or(TxChainError::TooManyPieces)?;
            // The pointer stays valid as long as `mem` is borrowed: guest
            // RAM is mapped for the VM's lifetime, and these mmap-backed
            // slices need no guard (no Xen foreign mappings here).
            *slot = libc::iovec {
                iov_base: slice.ptr_guard().as_ptr().cast_mut().cast(),
                iov_len: slice.len(),
            };
            count += 1;
        }
    }
    if !ended {
        return Err(TxChainError::Unterminated);
    }
    if len < NET_HDR_LEN + ETH_HLEN {
        return Err(TxChainError::TooShort { got: len });
    }
    Ok(TxFrame {
        iov: &scratch[..count],
        len,
    })
}

/// Sends every available TX chain to `tap` (or drops it when there is
/// none). Returns whether any chain was used, and the error that showed
/// the tap is gone, if one did.
pub(super) fn process_tx(
    active: &mut ActiveQueues,
    mut tap: Option<&Tap>,
    metrics: &NetMetrics,
) -> (bool, Option<std::io::Error>) {
    let ActiveQueues { mem, queues, .. } = active;
    let queue = &mut queues[TXQ];
    let mut scratch = [EMPTY_IOVEC; MAX_TX_IOVS];
    let (mut used, mut lost) = (false, None);
    while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
        let head = chain.head_index();
        match parse_tx_chain(mem, chain, &mut scratch) {
            Ok(frame) => {
                if let Err(e) = send(tap, &frame, metrics) {
                    tap = None;
                    lost = Some(e);
                }
            }
            Err(e) => {
                metrics.tx_malformed.fetch_add(1, Ordering::Relaxed);
                crate::warn_limited!(head, "net: malformed TX chain returned unused: {e}");
            }
        }
        // TX buffers are device-readable: nothing was written to them.
        if let Err(e) = queue.add_used(&*mem, head, 0) {
            crate::error_limited!("net: cannot return a TX buffer: {e}");
        }
        used = true;
    }
    (used, lost)
}

// Writes one frame; Err only when the tap is gone for good.
fn send(tap: Option<&Tap>, frame: &TxFrame, metrics: &NetMetrics) -> std::io::Result<()> {
    let Some(tap) = tap else {
        metrics.tx_dropped.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    };
    // SAFETY: the iovecs point into guest memory that `frame` borrows,
    // each checked by vm-memory for its full length.
    match unsafe { tap.writev_frame(frame.iovecs()) } {
        Ok(_) => {
            metrics.tx_packets.fetch_add(1, Ordering::Relaxed);
            metrics
                .tx_bytes
                .fetch_add(frame.frame_len() as u64, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            metrics.tx_dropped.fetch_add(1, Ordering::Relaxed);
            if is_gone(&e) {
                return Err(e);
            }
            let len = frame.frame_len();
            let hint = match e.raw_os_error() {
                Some(libc::EIO) => " (its link is down)",
                _ => "",
            };
            crate::warn_limited!(
                len,
                tap = tap.name(),
                "net: the tap refused a frame{hint}: {e}"
            );
            Ok(())
        }
    }
}
