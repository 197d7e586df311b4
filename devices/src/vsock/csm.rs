//! One vsock stream connection: the state machine between a guest socket and
//! a host Unix stream.
//!
//! The connection turns guest packets into writes on the host stream and host
//! stream readiness into packets for the guest. Flow control is the virtio
//! credit scheme both ways: the guest may have at most `TX_BUF_SIZE` bytes in
//! flight to us (we advertise it as buf_alloc and report what reached the host
//! as fwd_cnt), and we send the guest no more than its own buf_alloc minus
//! what it has not yet consumed. Anything the host stream cannot take at once
//! waits in a buffer capped by that same credit, so memory stays bounded.
//! The muxer owns the event loop side; this file never registers anything.

use std::io::{ErrorKind, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::packet::*;
use super::snapshot::SavedConnection;

/// Bytes of guest data the device buffers per connection (our buf_alloc).
pub const TX_BUF_SIZE: u32 = 256 * 1024;
/// Send an unsolicited CREDIT_UPDATE once this much was forwarded unreported.
const CREDIT_UPDATE_THRESHOLD: u32 = TX_BUF_SIZE / 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host connected; our REQUEST is (to be) sent, the guest has not answered.
    LocalInit,
    Established,
    /// An RST is owed to the guest; the connection goes once it is sent.
    Resetting,
    /// Finished: the muxer drops it (closing the host stream).
    Closed,
}

// Packets owed to the guest, sent in this order.
const PEND_REQUEST: u8 = 1;
const PEND_RESPONSE: u8 = 2;
const PEND_RW: u8 = 4;
const PEND_CREDIT_UPDATE: u8 = 8;
const PEND_CREDIT_REQUEST: u8 = 16;

pub struct Connection {
    stream: UnixStream,
    state: State,
    local_port: u32,
    peer_port: u32,
    pending: u8,
    /// Guest data not yet accepted by the host stream.
    tx_buf: Vec<u8>,
    /// Bytes at the head of `tx_buf` that are ours (the OK line), not guest data.
    reply_bytes: usize,
    /// Guest bytes forwarded to the host stream (our fwd_cnt).
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    credit_requested: bool,
    /// SHUTDOWN flags received from the guest.
    peer_shut: u32,
    /// The host stream reached EOF and the guest was (or will be) told.
    host_eof: bool,
    host_eof_sent: bool,
    /// The host stream hung up: no epoll interest, reads are credit-driven.
    host_hup: bool,
}

impl Connection {
    /// A host-initiated connection: REQUEST the guest's `peer_port`.
    pub fn new_local(stream: UnixStream, local_port: u32, peer_port: u32) -> Self {
        let mut c = Self::new(stream, local_port, peer_port);
        c.state = State::LocalInit;
        c.pending = PEND_REQUEST;
        c
    }

    /// A guest-initiated connection that the host accepted: RESPONSE owed.
    pub fn new_peer(stream: UnixStream, hdr: &Header) -> Self {
        let mut c = Self::new(stream, hdr.dst_port(), hdr.src_port());
        c.pending = PEND_RESPONSE;
        c.update_peer_credit(hdr);
        c
    }

    /// A connection the guest made before a snapshot, taken over by a new
    /// host client: established, its credit where the snapshot left it,
    /// and the client told `OK <local-port>` as after a handshake.
    pub fn adopted(stream: UnixStream, saved: &SavedConnection) -> Self {
        let mut c = Self::new(stream, saved.local_port, saved.peer_port);
        c.fwd_cnt = Wrapping(saved.fwd_cnt);
        c.last_fwd_cnt_sent = Wrapping(saved.last_fwd_cnt_sent);
        c.rx_cnt = Wrapping(saved.rx_cnt);
        c.peer_buf_alloc = saved.peer_buf_alloc;
        c.peer_fwd_cnt = Wrapping(saved.peer_fwd_cnt);
        c.established_by_guest();
        c
    }

    /// This connection's state for a snapshot, if it is quiet: established,
    /// nothing buffered or owed either way, no shutdown begun.
    pub fn saved(&self) -> Option<SavedConnection> {
        let quiet = self.state == State::Established
            && self.pending == 0
            && self.tx_buf.is_empty()
            && self.peer_shut == 0
            && !self.host_eof
            && !self.host_hup;
        quiet.then_some(SavedConnection {
            local_port: self.local_port,
            peer_port: self.peer_port,
            fwd_cnt: self.fwd_cnt.0,
            last_fwd_cnt_sent: self.last_fwd_cnt_sent.0,
            rx_cnt: self.rx_cnt.0,
            peer_buf_alloc: self.peer_buf_alloc,
            peer_fwd_cnt: self.peer_fwd_cnt.0,
        })
    }

    fn new(stream: UnixStream, local_port: u32, peer_port: u32) -> Self {
        Self {
            stream,
            state: State::Established,
            local_port,
            peer_port,
            pending: 0,
            tx_buf: Vec::new(),
            reply_bytes: 0,
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            credit_requested: false,
            peer_shut: 0,
            host_eof: false,
            host_eof_sent: false,
            host_hup: false,
        }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub fn has_pending_rx(&self) -> bool {
        self.state == State::Resetting
            || self.pending != 0
            || (self.host_eof && !self.host_eof_sent)
    }

    /// What the host stream should be polled for, given state and credit.
    pub fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.wants_host_data() && self.pending & PEND_RW == 0 && self.peer_credit() > 0 {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() && self.state == State::Established {
            set |= EventSet::OUT;
        }
        set
    }

    /// Whether the host stream stays registered with the muxer's epoll.
    pub fn polled(&self) -> bool {
        !self.host_hup && !self.is_closed()
    }

    fn wants_host_data(&self) -> bool {
        self.state == State::Established && !self.host_eof && self.peer_shut & SHUTDOWN_RCV == 0
    }

    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Kills the connection, owing the guest an RST.
    pub fn reset(&mut self) {
        if self.state != State::Closed {
            self.state = State::Resetting;
        }
    }

    /// Reacts to readiness of the host stream.
    pub fn notify(&mut self, events: EventSet) {
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            self.host_hup = true;
        }
        if events.contains(EventSet::OUT) {
            self.flush_tx();
        }
        if (events.contains(EventSet::IN) || self.host_hup) && self.wants_host_data() {
            self.pending |= PEND_RW;
        }
    }

    /// Handles a guest packet addressed to this connection.
    pub fn send_pkt(&mut self, pkt: &TxPacket<'_>) {
        self.update_peer_credit(pkt.hdr());
        match (self.state, pkt.hdr().op()) {
            (_, OP_RST) => self.state = State::Closed,
            (State::LocalInit, OP_RESPONSE) => self.established_by_guest(),
            (State::Established, OP_RW) => self.guest_data(pkt),
            (State::Established, OP_CREDIT_UPDATE) => {}
            (State::Established, OP_CREDIT_REQUEST) => self.pending |= PEND_CREDIT_UPDATE,
            (State::Established, OP_SHUTDOWN) => self.guest_shutdown(pkt.hdr().flags()),
            (state, op) => {
                tracing::debug!(?state, op, port = self.local_port, "vsock: unexpected op");
                self.reset();
            }
        }
        self.maybe_finish();
    }

    fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc();
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt());
        if self.peer_credit() > 0 {
            self.credit_requested = false;
            if self.host_hup && self.wants_host_data() {
                self.pending |= PEND_RW;
            }
        }
    }

    fn established_by_guest(&mut self) {
        self.state = State::Established;
        // The host client learns the connection is up from this line.
        let line = format!("OK {}\n", self.local_port);
        self.reply_bytes = line.len();
        self.tx_buf.extend_from_slice(line.as_bytes());
        self.flush_tx();
    }

    fn guest_data(&mut self, pkt: &TxPacket<'_>) {
        let len = pkt.data_len();
        if len == 0 {
            return;
        }
        if self.peer_shut & SHUTDOWN_SEND != 0 || self.tx_buf.len() + len > TX_BUF_SIZE as usize {
            tracing::debug!(port = self.local_port, "vsock: guest ignored our credit");
            return self.reset();
        }
        let mut written = 0;
        if self.tx_buf.is_empty() {
            match pkt.write_data_to(&mut self.stream) {
                Ok(n) => written = n,
                Err(e) => {
                    tracing::debug!(port = self.local_port, "vsock: host write failed: {e}");
                    return self.reset();
                }
            }
            self.forwarded(written);
        }
        if written < len {
            pkt.copy_data_from(written, &mut self.tx_buf);
        }
    }

    fn forwarded(&mut self, n: usize) {
        self.fwd_cnt += n as u32;
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending |= PEND_CREDIT_UPDATE;
        }
    }

    fn flush_tx(&mut self) {
        while !self.tx_buf.is_empty() {
            match self.stream.write(&self.tx_buf) {
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    // The OK line is not guest data: it earns the guest no credit.
                    let ours = n.min(self.reply_bytes);
                    self.reply_bytes -= ours;
                    self.forwarded(n - ours);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(port = self.local_port, "vsock: host write failed: {e}");
                    return self.reset();
                }
            }
        }
        self.maybe_finish();
    }

    fn guest_shutdown(&mut self, flags: u32) {
        self.peer_shut |= flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
        if self.peer_shut & SHUTDOWN_RCV != 0 {
            self.pending &= !PEND_RW;
        }
    }

    // Once the guest will send nothing more and we have nothing more to give
    // it, the stream is finished: half-close the host side, then RST.
    fn maybe_finish(&mut self) {
        if self.state != State::Established || !self.tx_buf.is_empty() {
            return;
        }
        if self.peer_shut & SHUTDOWN_SEND != 0 {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            let nothing_to_send = self.host_eof_sent || self.peer_shut & SHUTDOWN_RCV != 0;
            if nothing_to_send {
                self.reset();
            }
        }
    }

    /// Fills `rx` with the next packet owed to the guest; returns its header.
    pub fn recv_pkt(&mut self, rx: &mut RxBuffer<'_>, guest_cid: u64) -> Option<Header> {
        let (op, flags, len) = self.next_op(rx)?;
        let hdr = RxHeader {
            local_port: self.local_port,
            peer_port: self.peer_port,
            op,
            flags,
            buf_alloc: TX_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        };
        let hdr = hdr.to_header(guest_cid, len);
        rx.write_header(&hdr);
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !PEND_CREDIT_UPDATE;
        if op == OP_RST {
            self.state = State::Closed;
        }
        Some(hdr)
    }

    fn next_op(&mut self, rx: &mut RxBuffer<'_>) -> Option<(u16, u32, u32)> {
        if self.state == State::Resetting {
            return Some((OP_RST, 0, 0));
        }
        if self.take(PEND_RESPONSE) {
            return Some((OP_RESPONSE, 0, 0));
        }
        if self.take(PEND_REQUEST) {
            return Some((OP_REQUEST, 0, 0));
        }
        if self.pending & PEND_RW != 0 {
            if let Some(next) = self.read_host(rx) {
                return Some(next);
            }
        }
        if self.host_eof && !self.host_eof_sent {
            self.host_eof_sent = true;
            self.maybe_finish();
            return Some((OP_SHUTDOWN, SHUTDOWN_SEND, 0));
        }
        if self.take(PEND_CREDIT_UPDATE) {
            return Some((OP_CREDIT_UPDATE, 0, 0));
        }
        if self.take(PEND_CREDIT_REQUEST) {
            return Some((OP_CREDIT_REQUEST, 0, 0));
        }
        None
    }

    fn take(&mut self, bit: u8) -> bool {
        let had = self.pending & bit != 0;
        self.pending &= !bit;
        had
    }

    // Owes the guest a CREDIT_REQUEST, unless one is already outstanding.
    fn request_credit_once(&mut self) {
        if !self.credit_requested {
            self.credit_requested = true;
            self.pending |= PEND_CREDIT_REQUEST;
        }
    }

    // Reads host data straight into the guest buffer, within the guest's credit.
    fn read_host(&mut self, rx: &mut RxBuffer<'_>) -> Option<(u16, u32, u32)> {
        self.pending &= !PEND_RW;
        if !self.wants_host_data() {
            return None;
        }
        let credit = self.peer_credit();
        if credit == 0 {
            self.request_credit_once();
            return None;
        }
        let max = rx.capacity().min(credit as usize);
        if max == 0 {
            return None;
        }
        match rx.fill_from(&mut self.stream, max) {
            Ok(0) => {
                self.host_eof = true;
                None
            }
            Ok(n) => {
                self.rx_cnt += n as u32;
                let credit_left = self.peer_credit() > 0;
                if !credit_left {
                    self.request_credit_once();
                }
                // A read that filled the buffer with credit left may have
                // left more: stay queued and read again for the next
                // buffer, rather than re-arming epoll (two epoll_ctl calls
                // per packet) only to be told so. The read that finds the
                // socket empty ends the burst and re-arms it.
                let may_have_more = n == max && credit_left;
                if self.host_hup || may_have_more {
                    self.pending |= PEND_RW;
                }
                Some((OP_RW, 0, n as u32))
            }
            Err(e) if is_would_block(&e) => None,
            Err(e) => {
                tracing::debug!(port = self.local_port, "vsock: host read failed: {e}");
                self.state = State::Closed;
                Some((OP_RST, 0, 0))
            }
        }
    }
}
