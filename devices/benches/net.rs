//! net device benchmark: frames per second and throughput through the real
//! device and a real tap (in a private network namespace), for MTU-sized
//! frames and 64 KiB TCP GSO frames, each direction. Each figure is also
//! given as a ratio against the same frames moved by plain tap reads and
//! writes from host memory in the same thread, measured in the same run.
//!
//! TX: the scripted guest posts batches of 16 chains (header + frame in
//! pieces of at most 32 KiB, as Linux sends them) and kicks; the device writes each to the tap with one
//! writev from guest memory. RX: frames are sent out of the tap through a
//! packet socket (`TapRig::inject*`, one syscall each, in both the device
//! and the baseline figure) and the device spreads them over 4 KiB
//! mergeable guest buffers.
//!
//! Run: `cargo bench -p husk-devices --features test-harness --bench net`
//! (needs root for the tap and the namespace; says so and exits otherwise).
//! The guest side is the harness (one thread), so the figures bound the
//! device's own cost, not a real guest's.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use husk_devices::net::harness::{
    eth_frame, pattern, tcp4_frame, tcp4_gso_hdr, NetHarness, VnetHdr, MAC, RXQ, TXQ,
};
use husk_devices::net::tap_rig::{tap_or_skip, TapRig};
use husk_devices::net::{Tap, NET_HDR_LEN};

const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Bytes moved in each run.
const RUN_BYTES: usize = 256 << 20;
const BATCH: usize = 16;

struct Case {
    name: &'static str,
    hdr: VnetHdr,
    frame: Vec<u8>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "1514 B frames",
            hdr: VnetHdr::default(),
            frame: eth_frame(PEER, &pattern(1500, 1)),
        },
        Case {
            name: "64 KiB TCP GSO frames",
            hdr: tcp4_gso_hdr(1448),
            frame: tcp4_frame(PEER, 65_535),
        },
    ]
}

fn report(what: &str, frames: usize, bytes: usize, took: Duration, base: Duration) {
    let secs = took.as_secs_f64();
    println!(
        "{what:<34} {:>9.0} frames/s {:>7.2} Gbit/s   {:.2}x the plain tap's time",
        frames as f64 / secs,
        bytes as f64 * 8.0 / secs / 1e9,
        secs / base.as_secs_f64(),
    );
}

fn tx_device(case: &Case, count: usize) -> Duration {
    let (_rig, tap) = TapRig::new();
    let mut h = NetHarness::new(Some(tap));
    let hdr = case.hdr.bytes();
    // As Linux lays frames out: the header, then at most 32 KiB per
    // descriptor (and each within one harness buffer).
    let mut parts: Vec<&[u8]> = vec![&hdr];
    parts.extend(case.frame.chunks(32 * 1024));
    let start = Instant::now();
    let mut sent = 0;
    while sent < count {
        let n = BATCH.min(count - sent);
        for _ in 0..n {
            h.drv.add_chain(TXQ, &parts, &[]).unwrap();
        }
        h.drv.kick(TXQ);
        h.pump();
        assert_eq!(h.drv.take_used(TXQ).len(), n);
        sent += n;
    }
    let took = start.elapsed();
    let m = h.dev.lock().unwrap().metrics();
    assert_eq!(m.tx_packets.load(Ordering::Relaxed), count as u64);
    took
}

fn tx_plain(case: &Case, count: usize) -> Duration {
    let (_rig, tap) = TapRig::new();
    tap.set_offload(0).unwrap();
    let hdr = case.hdr.bytes();
    let iov = [
        libc::iovec {
            iov_base: hdr.as_ptr().cast_mut().cast(),
            iov_len: hdr.len(),
        },
        libc::iovec {
            iov_base: case.frame.as_ptr().cast_mut().cast(),
            iov_len: case.frame.len(),
        },
    ];
    let start = Instant::now();
    for _ in 0..count {
        // SAFETY: both iovecs point at live host buffers of their length.
        unsafe { tap.writev_frame(&iov) }.unwrap();
    }
    start.elapsed()
}

fn inject(rig: &TapRig, case: &Case) {
    if case.hdr.gso_type == 0 {
        rig.inject(&case.frame);
    } else {
        rig.inject_with_vnet_hdr(&case.hdr.bytes(), &case.frame);
    }
}

fn rx_device(case: &Case, count: usize) -> Duration {
    let (rig, tap) = TapRig::new();
    let mut h = NetHarness::new(Some(tap));
    let frame = to_guest(case);
    let bufs_per_frame = (NET_HDR_LEN + frame.frame.len()).div_ceil(4096);
    let start = Instant::now();
    let mut got = 0;
    while got < count {
        let n = (24 / bufs_per_frame).max(1).min(count - got);
        h.fill_rx(n * bufs_per_frame, 4096);
        for _ in 0..n {
            inject(&rig, &frame);
        }
        let want = (got + n) as u64;
        assert!(h.pump_until(5000, |h| h.metric(|m| &m.rx_packets) >= want));
        h.drv.take_used(RXQ);
        got += n;
    }
    start.elapsed()
}

fn rx_plain(case: &Case, count: usize) -> Duration {
    let (rig, tap) = TapRig::new();
    let frame = to_guest(case);
    if frame.hdr.gso_type != 0 {
        tap.set_offload(husk_devices::net::TUN_OFFLOADS).unwrap();
    }
    let mut buf = vec![0u8; NET_HDR_LEN + 70_000];
    let start = Instant::now();
    for _ in 0..count {
        inject(&rig, &frame);
        read_one(&tap, &mut buf);
    }
    start.elapsed()
}

fn read_one(tap: &Tap, buf: &mut [u8]) {
    loop {
        match tap.read_frame(buf) {
            Ok(_) => return,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("tap read: {e}"),
        }
    }
}

// The same case addressed to the guest.
fn to_guest(case: &Case) -> Case {
    let mut frame = case.frame.clone();
    frame[..6].copy_from_slice(&MAC.0);
    Case {
        name: case.name,
        hdr: case.hdr,
        frame,
    }
}

fn main() {
    if !tap_or_skip("net bench") {
        return;
    }
    for case in cases() {
        let count = RUN_BYTES / case.frame.len();
        let bytes = count * case.frame.len();
        let base = tx_plain(&case, count);
        let dev = tx_device(&case, count);
        report(&format!("TX {}", case.name), count, bytes, dev, base);
        let count = count / 4;
        let bytes = count * case.frame.len();
        let base = rx_plain(&case, count);
        let dev = rx_device(&case, count);
        report(&format!("RX {}", case.name), count, bytes, dev, base);
    }
}
