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

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use husk_devices::vsock::harness::GuestStream;

/// Bytes moved per direction in each throughput run.
const THROUGHPUT_BYTES: usize = 64 << 20;

fn device_to_guest(size: usize) -> Duration {
    GuestStream::new(1).time_to_guest(size, THROUGHPUT_BYTES)
}

fn device_to_host(size: usize, data_descs: usize) -> Duration {
    GuestStream::new(data_descs).time_to_host(size, THROUGHPUT_BYTES)
}

fn device_round_trip(size: usize, rounds: usize) -> Duration {
    GuestStream::new(1).time_round_trip(size, rounds)
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
