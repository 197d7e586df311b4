//! A blocking rtnetlink socket: one request at a time, answered by the
//! kernel's ack or by a dump. The agent has no async runtime and configures
//! the guest's one NIC a few times per pod, so blocking calls on the ttrpc
//! worker thread are all it needs.
//!
//! Errors are `io::Error`s: the kernel's answer keeps its errno (the RPC
//! layer tells a refused request from an internal failure by it), and a
//! reply that does not parse is `InvalidData`.
//!
//! (husk-runtime has the same helper for the host side; the agent shares
//! no code with the host but the protocol.)

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Large enough for any one datagram of a dump (the kernel fills at most
/// 32 KiB per read unless asked for more).
const RECV_BUFFER: usize = 64 * 1024;

pub struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// Opens a route netlink socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// Sends a change (`flags` such as `NLM_F_CREATE | NLM_F_EXCL`) and waits
    /// for the kernel's ack.
    pub fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(message, NLM_F_ACK | flags)?;
        self.receive(seq).map(drop)
    }

    /// Sends a dump request and returns every message of the answer.
    pub fn dump(&mut self, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(message, NLM_F_DUMP)?;
        self.receive(seq)
    }

    fn send(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), message.into());
        packet.header.flags = NLM_F_REQUEST | flags;
        packet.header.sequence_number = self.seq;
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        Ok(self.seq)
    }

    /// Reads until the dump's end or the request's ack (an error message
    /// with code 0); a non-zero code is the kernel's refusal.
    fn receive(&mut self, seq: u32) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut messages = Vec::new();
        loop {
            let len = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < len {
                let packet: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&self.buf[offset..len]).map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("unreadable netlink reply: {e}"),
                        )
                    })?;
                // Messages start on 4-byte boundaries (NLMSG_ALIGN).
                let step = (packet.header.length as usize + 3) & !3;
                if packet.header.sequence_number == seq {
                    match packet.payload {
                        NetlinkPayload::Done(_) => return Ok(messages),
                        NetlinkPayload::Error(e) if e.code.is_none() => return Ok(messages),
                        NetlinkPayload::Error(e) => return Err(e.to_io()),
                        NetlinkPayload::InnerMessage(m) => messages.push(m),
                        _ => {}
                    }
                }
                if step == 0 {
                    break;
                }
                offset += step;
            }
        }
    }
}
