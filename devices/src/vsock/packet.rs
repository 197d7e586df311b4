//! Vsock packet vocabulary on top of the `virtio-vsock` crate.
//!
//! Parsing guest buffers (bounds, permissions, header size) is the crate's
//! `VsockPacket::from_{tx,rx}_virtq_chain`; this file only names the protocol
//! constants, validates the header fields the crate leaves to the device, and
//! writes the headers the device sends, so the connection code never touches
//! raw header bytes.

use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};

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

/// A guest packet as parsed by virtio-vsock.
pub type Packet<'a> = VsockPacket<'a, ()>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("packet from CID {src} to CID {dst}; the guest is CID {guest}, the host {HOST_CID}")]
    WrongCid { src: u64, dst: u64, guest: u64 },
    #[error("socket type {0} is not a stream socket")]
    NotStream(u16),
    #[error("unknown vsock operation {0}")]
    UnknownOp(u16),
}

/// Checks what the crate's parser leaves to the device: addressing, type, op.
pub fn validate_tx(pkt: &Packet<'_>, guest_cid: u64) -> Result<(), PacketError> {
    if pkt.src_cid() != guest_cid || pkt.dst_cid() != HOST_CID {
        return Err(PacketError::WrongCid {
            src: pkt.src_cid(),
            dst: pkt.dst_cid(),
            guest: guest_cid,
        });
    }
    if pkt.type_() != TYPE_STREAM {
        return Err(PacketError::NotStream(pkt.type_()));
    }
    if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&pkt.op()) {
        return Err(PacketError::UnknownOp(pkt.op()));
    }
    Ok(())
}

/// The header of a packet the device sends to the guest.
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
    pub fn rst_for(pkt: &Packet<'_>) -> Self {
        Self {
            local_port: pkt.dst_port(),
            peer_port: pkt.src_port(),
            op: OP_RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }

    /// Writes this header (with `len` payload bytes) into a guest RX buffer.
    pub fn write_to(&self, pkt: &mut Packet<'_>, guest_cid: u64, len: u32) {
        // The crate's setters write through to guest memory; start from zero
        // so no stale guest bytes survive in fields we do not set.
        if let Err(e) = pkt.set_header_from_raw(&[0u8; PKT_HEADER_SIZE]) {
            tracing::error!("vsock: cannot clear an RX header: {e}");
        }
        pkt.set_src_cid(HOST_CID)
            .set_dst_cid(guest_cid)
            .set_src_port(self.local_port)
            .set_dst_port(self.peer_port)
            .set_type(TYPE_STREAM)
            .set_op(self.op)
            .set_flags(self.flags)
            .set_buf_alloc(self.buf_alloc)
            .set_fwd_cnt(self.fwd_cnt)
            .set_len(len);
    }
}
