//! One descriptor chain in, one FUSE reply out.
//!
//! fuse-backend-rs's `Reader`/`Writer` are built from the chain (each
//! descriptor checked against guest memory) and handed to its `Server`.
//! What the guest gets when things go wrong is decided here, once: a request
//! the server could not answer gets an error reply with the request's
//! `unique` (as does one whose readable buffers hold more than the header's
//! length); a chain without a readable FUSE header, or whose buffers lie
//! outside guest memory, is returned used with length 0 (dropped). Nothing
//! here panics on guest data, so the device keeps serving. Fuzzing reaches
//! this through `harness::FsHarness::send_on` (arbitrary chains, real queues).

use std::io::Write;
use std::sync::atomic::Ordering;

use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader};
use fuse_backend_rs::transport::{FsCacheReqHandler, Reader, VirtioFsWriter, Writer};
use virtio_queue::DescriptorChain;
use vm_memory::ByteValued;

use super::backend::FuseServer;
use super::FsMetrics;
use crate::virtio::GuestMemory;

/// Serves the FUSE request in `chain`; returns the used length for the ring.
pub(super) fn serve_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    server: &FuseServer,
    dax: Option<&mut dyn FsCacheReqHandler>,
    metrics: &FsMetrics,
) -> u32 {
    let used = serve(mem, chain, server, dax, metrics);
    metrics
        .bytes_out
        .fetch_add(u64::from(used), Ordering::Relaxed);
    used
}

fn serve(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    server: &FuseServer,
    dax: Option<&mut dyn FsCacheReqHandler>,
    metrics: &FsMetrics,
) -> u32 {
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(reader) => reader,
        Err(e) => return dropped(metrics, &format!("unusable readable buffers: {e}")),
    };
    let Ok(header) = reader.clone().read_obj::<InHeader>() else {
        return dropped(metrics, "no complete FUSE request header");
    };
    metrics.requests.fetch_add(1, Ordering::Relaxed);
    let readable = reader.available_bytes();
    metrics
        .bytes_in
        .fetch_add(readable as u64, Ordering::Relaxed);
    if readable > header.len as usize {
        // Linux sends exactly the request; more is a guest sizing host
        // buffers by its descriptors (FUSE_IOCTL allocates and fills what
        // they hold, and they may all point at the same memory).
        crate::debug_limited!(
            opcode = header.opcode,
            "virtio-fs: {readable} readable bytes for a request of {}",
            header.len
        );
        metrics.error_replies.fetch_add(1, Ordering::Relaxed);
        return error_reply(mem, chain, header.unique, libc::EINVAL, metrics);
    }
    let writer = match VirtioFsWriter::new(mem, chain.clone()) {
        Ok(writer) => Writer::from(writer),
        Err(e) => return dropped(metrics, &format!("unusable writable buffers: {e}")),
    };
    match server.handle_message(reader, writer, dax, None) {
        Ok(len) => u32::try_from(len).unwrap_or(0),
        Err(e) => {
            crate::debug_limited!(
                opcode = header.opcode,
                "virtio-fs: request failed without a reply: {e}"
            );
            metrics.error_replies.fetch_add(1, Ordering::Relaxed);
            error_reply(mem, chain, header.unique, libc::EINVAL, metrics)
        }
    }
}

fn dropped(metrics: &FsMetrics, why: &str) -> u32 {
    crate::debug_limited!("virtio-fs: dropping a chain: {why}");
    metrics.dropped_chains.fetch_add(1, Ordering::Relaxed);
    0
}

// Replaces whatever the server may have started writing with a bare error
// reply. Requests that expect no reply (FORGET) have no writable buffer, and
// their chain is simply returned.
fn error_reply(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    unique: u64,
    errno: i32,
    metrics: &FsMetrics,
) -> u32 {
    let header = OutHeader {
        len: std::mem::size_of::<OutHeader>() as u32,
        error: -errno,
        unique,
    };
    let written = VirtioFsWriter::new(mem, chain)
        .ok()
        .and_then(|mut w| w.write_all(header.as_slice()).ok());
    match written {
        Some(()) => header.len,
        None => dropped(metrics, "no room for an error reply"),
    }
}
