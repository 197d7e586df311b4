//! Vsock packets as the guest lays them out in descriptor chains.
//!
//! The virtio spec fixes no layout: a TX chain is a 44-byte header followed
//! by `len` payload bytes over any number of device-readable descriptors
//! (Linux 6.x sends a 64 KiB packet as header + 2 x 32 KiB; the header may
//! be split, or share a descriptor with the payload), and an RX chain is any
//! run of device-writable descriptors. The `virtio-vsock` crate's parser
//! takes only one data descriptor (rust-vmm/vm-virtio#216), so this file
//! walks chains itself, once: `TxPacket` holds the header (copied out, so
//! the guest cannot change it under us) and the payload as guest-memory
//! slices; `RxBuffer` is where the device writes a header and payload. The
//! header layout is the crate's `PacketHeader`. Every length is checked
//! against the chain and the 64 KiB cap; a chain that fails keeps its header
//! when it got that far, so the muxer can reset that connection.

use virtio_queue::desc::split::Descriptor;
use virtio_vsock::packet::{PacketHeader, PKT_HEADER_SIZE};
use vm_memory::{
    ByteValued, GuestMemory as _, ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile,
};

use crate::virtio::GuestMemory;

/// The host's CID (VMADDR_CID_HOST).
pub const HOST_CID: u64 = 2;
/// The only socket type virtio-vsock defines for stream sockets.
pub const TYPE_STREAM: u16 = 1;
/// Largest payload the device accepts or produces in one packet.
pub const MAX_PKT_DATA: u32 = 64 * 1024;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet header in host memory, in the crate's wire layout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header(PacketHeader);

// Getters and chainable setters for each little-endian field at its offset.
macro_rules! header_fields {
    ($($get:ident, $set:ident: $ty:ty, $off:expr;)*) => {
        impl Header {
            $(
                pub fn $get(&self) -> $ty {
                    const N: usize = std::mem::size_of::<$ty>();
                    let mut b = [0u8; N];
                    b.copy_from_slice(&self.0.as_slice()[$off..$off + N]);
                    <$ty>::from_le_bytes(b)
                }

                pub fn $set(&mut self, v: $ty) -> &mut Self {
                    const N: usize = std::mem::size_of::<$ty>();
                    self.0.as_mut_slice()[$off..$off + N].copy_from_slice(&v.to_le_bytes());
                    self
                }
            )*
        }
    };
}

header_fields! {
    src_cid, set_src_cid: u64, 0;
    dst_cid, set_dst_cid: u64, 8;
    src_port, set_src_port: u32, 16;
    dst_port, set_dst_port: u32, 20;
    len, set_len: u32, 24;
    type_, set_type: u16, 28;
    op, set_op: u16, 30;
    flags, set_flags: u32, 32;
    buf_alloc, set_buf_alloc: u32, 36;
    fwd_cnt, set_fwd_cnt: u32, 40;
}

impl Header {
    pub fn from_bytes(bytes: [u8; PKT_HEADER_SIZE]) -> Self {
        let mut h = Self::default();
        h.0.as_mut_slice().copy_from_slice(&bytes);
        h
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// Why a descriptor chain is not a packet (or not a place for one).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("the chain holds {got} header bytes, a vsock header needs {PKT_HEADER_SIZE}")]
    HeaderTooShort { got: usize },
    #[error("descriptor at {addr:#x} ({len} bytes) is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("a TX chain has a device-writable descriptor")]
    WritableInTx,
    #[error("an RX chain has a device-readable descriptor")]
    ReadableInRx,
    #[error("the header claims {len} payload bytes, more than the {MAX_PKT_DATA}-byte cap")]
    PayloadTooLong { len: u32 },
    #[error("the header claims {len} payload bytes, the chain holds {got}")]
    PayloadShort { len: u32, got: usize },
}

/// A TX chain that failed, with its header when the chain held one.
#[derive(Debug, PartialEq, Eq)]
pub struct TxChainError {
    pub header: Option<Header>,
    pub error: ChainError,
}

/// A packet the guest sent: its header and its payload in guest memory.
#[derive(Debug)]
pub struct TxPacket<'a> {
    hdr: Header,
    data: Vec<VolatileSlice<'a>>,
}

impl<'a> TxPacket<'a> {
    /// Walks a TX chain: the header, then exactly `len` payload bytes.
    /// Bytes past `len` are ignored, as in Linux's vhost-vsock.
    pub fn parse(
        mem: &'a GuestMemory,
        descs: impl IntoIterator<Item = Descriptor>,
    ) -> Result<Self, TxChainError> {
        let mut raw = [0u8; PKT_HEADER_SIZE];
        let mut have = 0;
        let mut hdr: Option<Header> = None;
        let mut data = Vec::new();
        let mut got = 0usize;
        let fail = |header, error| TxChainError { header, error };
        for desc in descs {
            if desc.is_write_only() {
                return Err(fail(hdr, ChainError::WritableInTx));
            }
            let mut slice = match desc_slice(mem, &desc) {
                None => continue,
                Some(Ok(slice)) => slice,
                Some(Err(e)) => return Err(fail(hdr, e)),
            };
            let h = match hdr {
                Some(h) => h,
                None => {
                    let (head, rest) = split(&slice, PKT_HEADER_SIZE - have);
                    have += head.copy_to(&mut raw[have..]);
                    slice = rest;
                    if have < PKT_HEADER_SIZE {
                        continue;
                    }
                    let h = Header::from_bytes(raw);
                    if h.len() > MAX_PKT_DATA {
                        let len = h.len();
                        return Err(fail(Some(h), ChainError::PayloadTooLong { len }));
                    }
                    *hdr.insert(h)
                }
            };
            let want = h.len() as usize - got;
            let (part, _) = split(&slice, want);
            if !part.is_empty() {
                got += part.len();
                data.push(part);
            }
            if got == h.len() as usize {
                break;
            }
        }
        let Some(hdr) = hdr else {
            return Err(fail(None, ChainError::HeaderTooShort { got: have }));
        };
        if got < hdr.len() as usize {
            let len = hdr.len();
            return Err(fail(Some(hdr), ChainError::PayloadShort { len, got }));
        }
        Ok(Self { hdr, data })
    }

    pub fn hdr(&self) -> &Header {
        &self.hdr
    }

    /// Payload bytes (the header's `len`).
    pub fn data_len(&self) -> usize {
        self.hdr.len() as usize
    }

    /// Writes as much payload as `dst` takes now; `Ok(n)` with `n` short of
    /// `data_len()` when it would block. Only other errors are errors.
    pub fn write_data_to(
        &self,
        dst: &mut impl WriteVolatile,
    ) -> Result<usize, VolatileMemoryError> {
        let mut total = 0;
        for part in &self.data {
            match write_some(dst, part) {
                Ok(n) => {
                    total += n;
                    if n < part.len() {
                        break;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Appends the payload from byte `from` on to `out`.
    pub fn copy_data_from(&self, mut from: usize, out: &mut Vec<u8>) {
        for part in &self.data {
            if from >= part.len() {
                from -= part.len();
                continue;
            }
            let (_, rest) = split(part, from);
            from = 0;
            let old = out.len();
            out.resize(old + rest.len(), 0);
            rest.copy_to(&mut out[old..]);
        }
    }
}

/// A guest RX buffer: room for a header, then up to 64 KiB of payload.
#[derive(Debug)]
pub struct RxBuffer<'a> {
    hdr: Vec<VolatileSlice<'a>>,
    data: Vec<VolatileSlice<'a>>,
}

impl<'a> RxBuffer<'a> {
    /// Walks an RX chain: device-writable descriptors only, at least a
    /// header's worth; payload room beyond 64 KiB is not used.
    pub fn parse(
        mem: &'a GuestMemory,
        descs: impl IntoIterator<Item = Descriptor>,
    ) -> Result<Self, ChainError> {
        let (mut hdr, mut data) = (Vec::new(), Vec::new());
        let (mut hdr_len, mut room) = (0, 0);
        for desc in descs {
            if !desc.is_write_only() {
                return Err(ChainError::ReadableInRx);
            }
            let Some(slice) = desc_slice(mem, &desc) else {
                continue;
            };
            let mut slice = slice?;
            if hdr_len < PKT_HEADER_SIZE {
                let (head, rest) = split(&slice, PKT_HEADER_SIZE - hdr_len);
                hdr_len += head.len();
                hdr.push(head);
                slice = rest;
            }
            let (part, _) = split(&slice, MAX_PKT_DATA as usize - room);
            if !part.is_empty() {
                room += part.len();
                data.push(part);
            }
        }
        if hdr_len < PKT_HEADER_SIZE {
            return Err(ChainError::HeaderTooShort { got: hdr_len });
        }
        Ok(Self { hdr, data })
    }

    /// Payload bytes this buffer can take.
    pub fn capacity(&self) -> usize {
        self.data.iter().map(|s| s.len()).sum()
    }

    /// Reads up to `max` payload bytes from `src`. `Ok(0)` means EOF (or no
    /// room); a would-block before any byte is an error, after some is not.
    pub fn fill_from(
        &mut self,
        src: &mut impl ReadVolatile,
        max: usize,
    ) -> Result<usize, VolatileMemoryError> {
        let mut total = 0;
        for part in &self.data {
            if total >= max {
                break;
            }
            let (mut part, _) = split(part, max - total);
            let want = part.len();
            match src.read_volatile(&mut part) {
                Ok(n) => {
                    total += n;
                    if n < want {
                        break;
                    }
                }
                Err(e) if total > 0 && is_would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Writes `hdr` over the buffer's header bytes (possibly split).
    pub fn write_header(&self, hdr: &Header) {
        let mut bytes = hdr.as_bytes();
        for part in &self.hdr {
            part.copy_from(&bytes[..part.len()]);
            bytes = &bytes[part.len()..];
        }
    }
}

pub fn is_would_block(e: &VolatileMemoryError) -> bool {
    matches!(e, VolatileMemoryError::IOError(io) if io.kind() == std::io::ErrorKind::WouldBlock)
}

// The guest memory behind a descriptor; None for an empty descriptor.
fn desc_slice<'a>(
    mem: &'a GuestMemory,
    desc: &Descriptor,
) -> Option<Result<VolatileSlice<'a>, ChainError>> {
    if desc.len() == 0 {
        return None;
    }
    Some(
        mem.get_slice(desc.addr(), desc.len() as usize)
            .map_err(|_| ChainError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            }),
    )
}

// Splits at `at`, or keeps the whole slice in front when it is shorter.
fn split<'a>(s: &VolatileSlice<'a>, at: usize) -> (VolatileSlice<'a>, VolatileSlice<'a>) {
    s.split_at(at.min(s.len()))
        .expect("split point is within the slice")
}

// One write; would-block counts as nothing written.
fn write_some(
    dst: &mut impl WriteVolatile,
    part: &VolatileSlice<'_>,
) -> Result<usize, VolatileMemoryError> {
    loop {
        match dst.write_volatile(part) {
            Ok(n) => return Ok(n),
            Err(VolatileMemoryError::IOError(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
            }
            Err(e) if is_would_block(&e) => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("packet from CID {src} to CID {dst}; the guest is CID {guest}, the host {HOST_CID}")]
    WrongCid { src: u64, dst: u64, guest: u64 },
    #[error("socket type {0} is not a stream socket")]
    NotStream(u16),
    #[error("unknown vsock operation {0}")]
    UnknownOp(u16),
}

/// Checks what chain parsing leaves to the device: addressing, type, op.
pub fn validate_tx(hdr: &Header, guest_cid: u64) -> Result<(), PacketError> {
    if hdr.src_cid() != guest_cid || hdr.dst_cid() != HOST_CID {
        return Err(PacketError::WrongCid {
            src: hdr.src_cid(),
            dst: hdr.dst_cid(),
            guest: guest_cid,
        });
    }
    if hdr.type_() != TYPE_STREAM {
        return Err(PacketError::NotStream(hdr.type_()));
    }
    if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&hdr.op()) {
        return Err(PacketError::UnknownOp(hdr.op()));
    }
    Ok(())
}

/// The fields of a packet the device sends to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxHeader {
    /// Host-side port (the packet's source).
    pub local_port: u32,
    /// Guest-side port (the packet's destination).
    pub peer_port: u32,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl RxHeader {
    /// An RST answering a guest packet that matches no connection.
    pub fn rst_for(hdr: &Header) -> Self {
        Self {
            local_port: hdr.dst_port(),
            peer_port: hdr.src_port(),
            op: OP_RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }

    /// The whole header, with `len` payload bytes, as the guest will read it.
    pub fn to_header(self, guest_cid: u64, len: u32) -> Header {
        let mut h = Header::default();
        h.set_src_cid(HOST_CID)
            .set_dst_cid(guest_cid)
            .set_src_port(self.local_port)
            .set_dst_port(self.peer_port)
            .set_type(TYPE_STREAM)
            .set_op(self.op)
            .set_flags(self.flags)
            .set_buf_alloc(self.buf_alloc)
            .set_fwd_cnt(self.fwd_cnt)
            .set_len(len);
        h
    }
}

#[cfg(test)]
#[path = "packet_tests.rs"]
mod tests;
