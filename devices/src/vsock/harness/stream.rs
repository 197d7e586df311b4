//! One connection through the harness's device, with the guest's credit
//! bookkeeping, for moving bulk data in either direction: the vsock
//! benchmark's device path, and the seccomp benchmark's (which confines
//! the thread between building a stream and timing it).

use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::{read_avail, split_even, Harness, Hdr, OP_CREDIT_UPDATE, OP_RST, OP_RW, TX_BUF_SIZE};

/// The host port the stream's host side listens on.
const PORT: u32 = 1234;
/// Credit the scripted guest advertises for host -> guest data.
const GUEST_BUF: u32 = 4 << 20;

pub struct GuestStream {
    h: Harness,
    host: UnixStream,
    local: u32,
    /// Bytes the guest has consumed (its fwd_cnt).
    guest_fwd: u32,
    /// Guest -> host: bytes sent, and the device's last credit report.
    sent: u32,
    peer_fwd: u32,
    peer_alloc: u32,
    /// Descriptors each guest payload is spread over (Linux 6.x: 2 for 64 KiB).
    data_descs: usize,
}

impl GuestStream {
    /// A connected stream whose guest payloads take `data_descs` descriptors.
    pub fn new(data_descs: usize) -> Self {
        let mut h = Harness::new();
        let (host, local) = h.host_connect(PORT);
        let mut p = Self {
            h,
            host,
            local,
            guest_fwd: 0,
            sent: 0,
            peer_fwd: 0,
            peer_alloc: TX_BUF_SIZE,
            data_descs,
        };
        p.guest_send(OP_CREDIT_UPDATE, &[]);
        p
    }

    /// Runs the device on a thread of its own after `confine` has run
    /// there; the guest and the host side then poll, on this thread.
    pub fn run_device_on_thread(&mut self, confine: impl FnOnce() + Send + 'static) {
        self.h.run_device_on_thread(confine);
    }

    fn hdr(&self, op: u16) -> Hdr {
        Hdr {
            buf_alloc: GUEST_BUF,
            fwd_cnt: self.guest_fwd,
            ..Hdr::guest(PORT, self.local, op)
        }
    }

    fn guest_send(&mut self, op: u16, data: &[u8]) {
        let mut hdr = self.hdr(op);
        if self.data_descs <= 1 || data.is_empty() {
            return self.h.send(hdr, data);
        }
        hdr.len = data.len() as u32;
        let mut parts = vec![hdr.bytes()];
        parts.extend(split_even(data, self.data_descs).iter().map(|p| p.to_vec()));
        self.h.send_chain(&parts);
    }

    /// Host writes `msg` to its socket; the guest takes what arrives.
    pub fn host_write(&mut self, msg: &[u8], got: &mut usize) {
        let mut off = 0;
        while off < msg.len() {
            match self.host.write(&msg[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.guest_take(got),
                Err(e) => panic!("host write: {e}"),
            }
        }
    }

    /// The guest consumes every RX packet and returns the credit.
    pub fn guest_take(&mut self, got: &mut usize) {
        let mut n = 0;
        for (hdr, data) in self.h.recv() {
            assert_ne!(hdr.op, OP_RST, "device reset the connection");
            self.note_credit(&hdr);
            n += data.len();
        }
        if n > 0 {
            *got += n;
            self.guest_fwd = self.guest_fwd.wrapping_add(n as u32);
            self.guest_send(OP_CREDIT_UPDATE, &[]);
        }
    }

    fn note_credit(&mut self, hdr: &Hdr) {
        (self.peer_fwd, self.peer_alloc) = (hdr.fwd_cnt, hdr.buf_alloc);
    }

    /// The guest sends `msg` within the device's credit; the host reads it.
    pub fn guest_write(&mut self, msg: &[u8], host_got: &mut Vec<u8>) {
        let mut off = 0;
        while off < msg.len() {
            let in_flight = self.sent.wrapping_sub(self.peer_fwd);
            let credit = self.peer_alloc.saturating_sub(in_flight) as usize;
            let chunk = credit.min(msg.len() - off);
            if chunk == 0 {
                self.host_drain(host_got);
                continue;
            }
            self.guest_send(OP_RW, &msg[off..off + chunk]);
            self.sent = self.sent.wrapping_add(chunk as u32);
            off += chunk;
        }
    }

    /// The host reads what has arrived; the guest takes credit updates.
    pub fn host_drain(&mut self, host_got: &mut Vec<u8>) {
        read_avail(&mut self.host, host_got).expect("host stream closed");
        for (hdr, _) in self.h.recv() {
            assert_ne!(hdr.op, OP_RST, "device reset the connection");
            self.note_credit(&hdr);
        }
    }

    /// Time to move `total` bytes host -> guest in writes of `size`.
    pub fn time_to_guest(mut self, size: usize, total: usize) -> Duration {
        let msg = vec![0x5a; size];
        let (start, mut got) = (Instant::now(), 0);
        for _ in 0..total / size {
            self.host_write(&msg, &mut got);
            self.guest_take(&mut got);
        }
        while got < total / size * size {
            self.guest_take(&mut got);
        }
        start.elapsed()
    }

    /// Time to move `total` bytes guest -> host in writes of `size`.
    pub fn time_to_host(mut self, size: usize, total: usize) -> Duration {
        let msg = vec![0xa5; size];
        let mut got = Vec::with_capacity(total);
        let start = Instant::now();
        for _ in 0..total / size {
            self.guest_write(&msg, &mut got);
            self.host_drain(&mut got);
        }
        while got.len() < total / size * size {
            self.host_drain(&mut got);
        }
        start.elapsed()
    }

    /// Mean time of host -> guest -> host with `size` bytes each way.
    pub fn time_round_trip(mut self, size: usize, rounds: usize) -> Duration {
        let msg = vec![0x3c; size];
        let mut back = Vec::with_capacity(size);
        let start = Instant::now();
        for _ in 0..rounds {
            let mut got = 0;
            self.host_write(&msg, &mut got);
            while got < size {
                self.guest_take(&mut got);
            }
            back.clear();
            self.guest_write(&msg, &mut back);
            while back.len() < size {
                self.host_drain(&mut back);
            }
        }
        start.elapsed() / rounds.max(1) as u32
    }
}
