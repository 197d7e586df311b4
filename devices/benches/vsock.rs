//! vsock device benchmark: throughput and round-trip latency for 4 KiB and
//! 64 KiB messages through the real device, its muxer and a host Unix socket,
//! with the harness's scripted guest driver on the other side. Each figure is
//! also given as a ratio against a plain Unix socketpair doing the same
//! exchange in the same thread, measured in the same run.
//!
//! 64 KiB guest writes are measured twice: in one data descriptor and as a
//! Linux 6.x guest lays them out (header + 2 x 32 KiB).
//!
//! Run: `cargo bench -p husk-devices --features test-harness --bench vsock`.
//! The guest side is the harness (one thread, copies into mock guest memory),
//! so the figures bound the device's own cost, not a real guest's.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use husk_devices::vsock::harness::{
    read_avail, split_even, Harness, Hdr, OP_CREDIT_UPDATE, OP_RST, OP_RW, TX_BUF_SIZE,
};

const PORT: u32 = 1234;
/// Bytes moved per direction in each throughput run.
const THROUGHPUT_BYTES: usize = 64 << 20;
/// Credit the scripted guest advertises for host -> guest data.
const GUEST_BUF: u32 = 4 << 20;

/// One connection through the device, with the guest's credit bookkeeping.
struct DevicePath {
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

impl DevicePath {
    fn new() -> Self {
        Self::with_data_descs(1)
    }

    fn with_data_descs(data_descs: usize) -> Self {
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
    fn host_write(&mut self, msg: &[u8], got: &mut usize) {
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
    fn guest_take(&mut self, got: &mut usize) {
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
    fn guest_write(&mut self, msg: &[u8], host_got: &mut Vec<u8>) {
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

    fn host_drain(&mut self, host_got: &mut Vec<u8>) {
        read_avail(&mut self.host, host_got).expect("host stream closed");
        for (hdr, _) in self.h.recv() {
            assert_ne!(hdr.op, OP_RST, "device reset the connection");
            self.note_credit(&hdr);
        }
    }
}

fn device_to_guest(size: usize) -> Duration {
    let mut p = DevicePath::new();
    let msg = vec![0x5a; size];
    let (start, mut got) = (Instant::now(), 0);
    for _ in 0..THROUGHPUT_BYTES / size {
        p.host_write(&msg, &mut got);
        p.guest_take(&mut got);
    }
    while got < THROUGHPUT_BYTES {
        p.guest_take(&mut got);
    }
    start.elapsed()
}

fn device_to_host(size: usize, data_descs: usize) -> Duration {
    let mut p = DevicePath::with_data_descs(data_descs);
    let msg = vec![0xa5; size];
    let mut got = Vec::with_capacity(THROUGHPUT_BYTES);
    let start = Instant::now();
    for _ in 0..THROUGHPUT_BYTES / size {
        p.guest_write(&msg, &mut got);
        p.host_drain(&mut got);
    }
    while got.len() < THROUGHPUT_BYTES {
        p.host_drain(&mut got);
    }
    start.elapsed()
}

/// Host -> guest -> host with `size` bytes each way; mean time per round trip.
fn device_round_trip(size: usize, rounds: usize) -> Duration {
    let mut p = DevicePath::new();
    let msg = vec![0x3c; size];
    let mut back = Vec::with_capacity(size);
    let start = Instant::now();
    for _ in 0..rounds {
        let mut got = 0;
        p.host_write(&msg, &mut got);
        while got < size {
            p.guest_take(&mut got);
        }
        back.clear();
        p.guest_write(&msg, &mut back);
        while back.len() < size {
            p.host_drain(&mut back);
        }
    }
    start.elapsed() / rounds as u32
}

fn socketpair_one_way(size: usize) -> Duration {
    let (mut a, mut b) = UnixStream::pair().expect("socketpair");
    let (msg, mut buf) = (vec![0x5a; size], vec![0; size]);
    let start = Instant::now();
    for _ in 0..THROUGHPUT_BYTES / size {
        a.write_all(&msg).expect("socketpair write");
        b.read_exact(&mut buf).expect("socketpair read");
    }
    start.elapsed()
}

fn socketpair_round_trip(size: usize, rounds: usize) -> Duration {
    let (mut a, mut b) = UnixStream::pair().expect("socketpair");
    let (msg, mut buf) = (vec![0x3c; size], vec![0; size]);
    let start = Instant::now();
    for _ in 0..rounds {
        a.write_all(&msg).expect("socketpair write");
        b.read_exact(&mut buf).expect("socketpair read");
        b.write_all(&buf).expect("socketpair write");
        a.read_exact(&mut buf).expect("socketpair read");
    }
    start.elapsed() / rounds as u32
}

fn mib_per_s(d: Duration) -> f64 {
    THROUGHPUT_BYTES as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU", str::trim)
        .to_string();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{model}, {cpus} CPUs")
}

fn main() {
    // `cargo bench` passes --bench; any other argument is a filter we ignore.
    println!("vsock device vs Unix socketpair, on {}", machine());
    println!(
        "throughput: {} MiB per direction; latency: mean round trip (size each way)\n",
        THROUGHPUT_BYTES >> 20
    );
    println!(
        "{:<7} {:<24} {:>12} {:>12} {:>8}",
        "size", "figure", "device", "socketpair", "ratio"
    );
    for (size, rounds) in [(4096usize, 4000usize), (65536, 1000)] {
        let label = format!("{} KiB", size >> 10);
        let base = mib_per_s(socketpair_one_way(size));
        let mut figures = vec![
            ("host->guest MiB/s", mib_per_s(device_to_guest(size))),
            ("guest->host MiB/s", mib_per_s(device_to_host(size, 1))),
        ];
        if size == 65536 {
            // How a Linux 6.x guest sends a 64 KiB write: header + 2 x 32 KiB.
            figures.push((
                "guest->host 2x32K MiB/s",
                mib_per_s(device_to_host(size, 2)),
            ));
        }
        for (name, dev) in figures {
            println!(
                "{label:<7} {name:<24} {dev:>12.1} {base:>12.1} {:>7.3}x",
                dev / base
            );
        }
        let dev = device_round_trip(size, rounds).as_secs_f64() * 1e6;
        let base = socketpair_round_trip(size, rounds).as_secs_f64() * 1e6;
        println!(
            "{label:<7} {:<24} {dev:>12.1} {base:>12.1} {:>7.1}x",
            "round trip us",
            dev / base
        );
    }
    println!(
        "\nratio: device / socketpair (throughput: higher is better; latency: lower is better)"
    );
}
