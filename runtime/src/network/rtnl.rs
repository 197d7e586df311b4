//! A blocking rtnetlink socket: one request at a time, answered by the
//! kernel's ack or by a dump. Blocking is what we want here: every netlink
//! call of pod networking runs on a thread that entered the pod's network
//! namespace for that job (see `netns`), so there is no event loop to share,
//! and a socket opened on that thread talks to that namespace's kernel state
//! for as long as it lives.
//!
//! Errors are `io::Error`s: the kernel's answer keeps its errno (callers
//! test `ENOENT`/`ENODEV` to make removal idempotent), and a reply that does
//! not parse is `InvalidData`.

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

/// True for the errnos that mean "that object is not there (any more)".
pub fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ENODEV | libc::ESRCH)
    )
}
