//! A scripted guest for the net device, shared by its tests, the fuzz
//! target and benchmarks.
//!
//! `NetHarness` puts a `GuestDriver` (mock guest memory playing the guest's
//! virtio-net driver) in front of a real `NetDevice` and the real
//! event-manager loop, with a real tap behind it (`tap_rig`) or none. TX
//! chains and RX buffers of any shape are posted one call at a time; what
//! the device wrote into RX buffers is read back and put together into
//! frames with the header's `num_buffers`, as a driver would.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};

pub use super::device::{RXQ, TXQ};
use super::{MacAddr, NetConfig, NetDevice, NetMetrics, Tap, NET_HDR_LEN};
use crate::virtio::test_utils::GuestDriver;
use crate::virtio::{MmioTransport, SnapshotError};

/// The harness device's address.
pub const MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
/// Queue size the harness's driver sets up.
pub const QUEUE_SIZE: u16 = 64;

/// A virtio_net_hdr_v1 as the guest writes or reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl VnetHdr {
    pub fn bytes(&self) -> [u8; NET_HDR_LEN] {
        let mut b = [0u8; NET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (at, v) in [
            (2, self.hdr_len),
            (4, self.gso_size),
            (6, self.csum_start),
            (8, self.csum_offset),
            (10, self.num_buffers),
        ] {
            b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    pub fn parse(b: &[u8]) -> Self {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }
}

/// An Ethernet frame from the harness's MAC to `dst` with an experimental
/// ethertype (0x88b5) and `payload`.
pub fn eth_frame(dst: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend(dst);
    f.extend(MAC.0);
    f.extend([0x88, 0xb5]);
    f.extend_from_slice(payload);
    f
}

/// An Ethernet + IPv4 + TCP frame to `dst` whose IP packet is `ip_len`
/// bytes (40 to 65535), between addresses of 198.18.0.0/15 (RFC 2544's
/// benchmarking range); checksums are left to offload.
pub fn tcp4_frame(dst: [u8; 6], ip_len: usize) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip.extend([198, 18, 0, 1, 198, 18, 0, 2]);
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[12] = 5 << 4; // data offset: 5 words
    tcp[13] = 0x18; // PSH, ACK
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let mut frame = eth_frame(dst, &[]);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    frame.extend(ip);
    frame.extend(tcp);
    frame.extend(pattern(ip_len - 40, 7));
    frame
}

/// The virtio_net_hdr of a TCPv4 GSO frame from `tcp4_frame`, cut into
/// segments of `mss` bytes, its TCP checksum left to the receiver.
pub fn tcp4_gso_hdr(mss: u16) -> VnetHdr {
    VnetHdr {
        flags: 1,    // VIRTIO_NET_HDR_F_NEEDS_CSUM
        gso_type: 1, // VIRTIO_NET_HDR_GSO_TCPV4
        hdr_len: 54,
        gso_size: mss,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    }
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub struct NetHarness {
    pub drv: GuestDriver,
    em: EventManager<Arc<Mutex<NetDevice>>>,
    pub dev: Arc<Mutex<NetDevice>>,
    /// Each offered RX chain's descriptors and their lengths, by head.
    rx_chains: HashMap<u16, (Vec<u16>, Vec<u32>)>,
}

impl NetHarness {
    /// A device behind `tap` whose driver acked every feature offered.
    pub fn new(tap: Option<Tap>) -> Self {
        Self::acking(tap, u64::MAX)
    }

    /// A device behind `tap` whose driver acked only the features in `mask`.
    pub fn acking(tap: Option<Tap>, mask: u64) -> Self {
        let config = NetConfig {
            mac: MAC,
            mtu: 1500,
        };
        let dev = NetDevice::new(config, tap.map(Arc::new)).unwrap();
        Self::with_device(dev, mask)
    }

    pub fn with_device(dev: NetDevice, mask: u64) -> Self {
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let mut drv = GuestDriver::new(dev.clone(), QUEUE_SIZE);
        drv.init_acking(mask);
        let mut h = Self {
            drv,
            em,
            dev,
            rx_chains: HashMap::new(),
        };
        h.pump();
        h
    }

    /// What a template and its clone do: snapshots the transport and
    /// restores it into `dev`, a fresh device over the same guest memory,
    /// with a new event loop. The guest goes on with the rings it had.
    pub fn restore_into(self, dev: NetDevice) -> Result<Self, SnapshotError> {
        let snapshot = self.drv.transport.snapshot();
        let Self {
            mut drv, rx_chains, ..
        } = self;
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        drv.transport =
            MmioTransport::new(drv.mem.clone(), dev.clone(), drv.interrupt.clone()).unwrap();
        drv.transport.restore(&snapshot)?;
        let mut h = Self {
            drv,
            em,
            dev,
            rx_chains,
        };
        h.pump();
        Ok(h)
    }

    pub fn metric(&self, f: impl Fn(&NetMetrics) -> &AtomicU64) -> u64 {
        f(&self.dev.lock().unwrap().metrics).load(Ordering::Relaxed)
    }

    /// Runs the event loop until nothing is ready. An event that keeps
    /// firing (a device spinning on an fd it cannot serve) panics.
    pub fn pump(&mut self) {
        for _ in 0..10_000 {
            if self.em.run_with_timeout(0).unwrap() == 0 {
                return;
            }
        }
        panic!("the event loop never goes quiet: something spins");
    }

    /// Events ready right now, without waiting (0 once `pump` returned,
    /// unless something new arrived).
    pub fn ready_events(&mut self) -> usize {
        self.em.run_with_timeout(0).unwrap()
    }

    /// Pumps until `done` holds or `ms` milliseconds pass; returns `done`.
    pub fn pump_until(&mut self, ms: u64, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        let end = std::time::Instant::now() + std::time::Duration::from_millis(ms);
        loop {
            self.pump();
            if done(self) {
                return true;
            }
            if std::time::Instant::now() >= end {
                return false;
            }
            if self.em.run_with_timeout(20).unwrap() > 0 {
                continue;
            }
        }
    }

    /// Sends one TX chain, one readable descriptor per part, and takes
    /// the used entry back; returns the length the device used it with.
    pub fn send_chain(&mut self, parts: &[&[u8]]) -> u32 {
        let head = match self.drv.add_chain(TXQ, parts, &[]) {
            Some(descs) => descs[0],
            None => {
                self.drv.take_used(TXQ);
                self.drv.add_chain(TXQ, parts, &[]).expect("a free TX slot")[0]
            }
        };
        self.drv.kick(TXQ);
        self.pump();
        let used = self.drv.take_used(TXQ);
        let mine = used
            .iter()
            .find(|(h, _)| *h == head)
            .expect("the chain came back");
        mine.1
    }

    /// Sends a frame behind a header, header and frame in one part each.
    pub fn send_frame(&mut self, hdr: VnetHdr, frame: &[u8]) -> u32 {
        self.send_chain(&[&hdr.bytes(), frame])
    }

    /// Offers one RX chain of writable descriptors of `lens`; no kick.
    pub fn offer_rx(&mut self, lens: &[u32]) -> Option<u16> {
        let descs = self.drv.add_chain(RXQ, &[], lens)?;
        let head = descs[0];
        self.rx_chains.insert(head, (descs, lens.to_vec()));
        Some(head)
    }

    /// Offers `count` RX chains of one `len`-byte buffer each and kicks.
    pub fn fill_rx(&mut self, count: usize, len: u32) {
        for _ in 0..count {
            self.offer_rx(&[len]).expect("a free RX slot");
        }
        self.drv.kick(RXQ);
        self.pump();
    }

    /// Each RX chain the device used, in used order: its head, the length
    /// it was used with, and the bytes written into it.
    pub fn take_rx_used(&mut self) -> Vec<(u16, u32, Vec<u8>)> {
        let used = self.drv.take_used(RXQ);
        used.iter()
            .map(|&(head, len)| {
                // Chains posted raw (hostile tests) read as empty.
                let bytes = match self.rx_chains.remove(&head) {
                    Some((descs, lens)) => self.drv.read_chain(RXQ, &descs, &lens, len as usize),
                    None => Vec::new(),
                };
                (head, len, bytes)
            })
            .collect()
    }

    /// What the device wrote into each RX chain it used, in used order.
    pub fn take_rx_buffers(&mut self) -> Vec<Vec<u8>> {
        self.take_rx_used().into_iter().map(|(_, _, b)| b).collect()
    }

    /// Waits up to 2 s for `n` frames in RX buffers (fewer if they do not come).
    pub fn recv_n(&mut self, n: usize) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut frames = Vec::new();
        self.pump_until(2000, |h| {
            frames.extend(h.recv_frames());
            frames.len() >= n
        });
        frames
    }

    /// Frames the device delivered, each with its header, put together from
    /// `num_buffers` consecutive buffers as the guest driver does.
    pub fn recv_frames(&mut self) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut bufs = self.take_rx_buffers().into_iter();
        let mut frames = Vec::new();
        while let Some(first) = bufs.next() {
            assert!(
                first.len() >= NET_HDR_LEN,
                "a used RX buffer without a header"
            );
            let hdr = VnetHdr::parse(&first);
            let mut frame = first[NET_HDR_LEN..].to_vec();
            for _ in 1..hdr.num_buffers {
                frame.extend(bufs.next().expect("num_buffers buffers"));
            }
            frames.push((hdr, frame));
        }
        frames
    }
}
