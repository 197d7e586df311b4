//! A scripted guest for the vsock device, shared by its tests and its benchmark.
//!
//! `Harness` puts a `GuestDriver` (mock guest memory playing the guest's
//! virtio driver) on one side of a real `VsockDevice`, real host Unix sockets
//! on the other, and the real event-manager loop in between, so packets can
//! be driven one at a time without a guest. Built for tests and, with the
//! `test-harness` feature, for `benches/vsock.rs`.

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, SubscriberOps};
use vmm_sys_util::tempdir::TempDir;

/// Credit the device advertises to the guest for each connection.
pub use super::csm::TX_BUF_SIZE;
pub use super::device::{RXQ, TXQ};
pub use super::packet::{
    HOST_CID, MAX_PKT_DATA, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
    OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::{VsockConfig, VsockDevice, VsockMetrics, DEFAULT_HANDSHAKE_TIMEOUT};
use crate::virtio::device_loop::DeviceLoop;
use crate::virtio::test_utils::{temp_dir, GuestDriver};

mod stream;
pub use stream::GuestStream;

/// The guest CID every harness device uses.
pub const CID: u64 = 3;
/// Size of a vsock packet header.
pub const HDR: usize = 44;

/// A packet header as the guest writes or reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    /// A guest packet from `src` to host port `dst`.
    pub fn guest(src: u32, dst: u32, op: u16) -> Self {
        Self {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: src,
            dst_port: dst,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 256 * 1024,
            ..Default::default()
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HDR);
        b.extend(self.src_cid.to_le_bytes());
        b.extend(self.dst_cid.to_le_bytes());
        b.extend(self.src_port.to_le_bytes());
        b.extend(self.dst_port.to_le_bytes());
        b.extend(self.len.to_le_bytes());
        b.extend(self.type_.to_le_bytes());
        b.extend(self.op.to_le_bytes());
        b.extend(self.flags.to_le_bytes());
        b.extend(self.buf_alloc.to_le_bytes());
        b.extend(self.fwd_cnt.to_le_bytes());
        b
    }

    pub fn parse(b: &[u8]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

pub struct Harness {
    pub drv: GuestDriver,
    em: DeviceLoop<Arc<Mutex<VsockDevice>>>,
    pub dev: Arc<Mutex<VsockDevice>>,
    /// The device's host Unix socket.
    pub path: PathBuf,
    _dir: TempDir,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Self {
        Self::with_max_conns(128)
    }

    pub fn with_max_conns(max_connections: usize) -> Self {
        Self::with_limits(max_connections, DEFAULT_HANDSHAKE_TIMEOUT)
    }

    pub fn with_limits(max_connections: usize, handshake_timeout: Duration) -> Self {
        let mut h = Self::without_rx_buffers(max_connections, handshake_timeout);
        h.fill_rx();
        h
    }

    /// A device whose guest has offered no RX buffers yet.
    pub fn without_rx_buffers(max_connections: usize, handshake_timeout: Duration) -> Self {
        let dir = temp_dir("husk-vsock-");
        let path = dir.as_path().join("v.sock");
        let config = VsockConfig {
            guest_cid: CID,
            uds_path: path.clone(),
            max_connections,
            handshake_timeout,
        };
        let dev = Arc::new(Mutex::new(VsockDevice::new(&config).unwrap()));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let mut drv = GuestDriver::new(dev.clone(), 64);
        drv.init();
        Self {
            drv,
            em: DeviceLoop::new(em),
            dev,
            path,
            _dir: dir,
        }
    }

    pub fn metric(&self, f: impl Fn(&VsockMetrics) -> &AtomicU64) -> u64 {
        f(&self.dev.lock().unwrap().metrics).load(Ordering::Relaxed)
    }

    pub fn conns(&self) -> usize {
        self.dev.lock().unwrap().connection_count()
    }

    /// Runs the event loop until nothing is ready (nothing once the device
    /// runs on its own thread).
    pub fn pump(&mut self) {
        self.em.pump();
    }

    /// Runs the device's event loop on a thread of its own, after `confine`
    /// has run there: the guest's calls then only post, kick and poll.
    pub fn run_device_on_thread(&mut self, confine: impl FnOnce() + Send + 'static) {
        self.em.move_to_thread(confine);
    }

    /// Offers every free RX slot as a header + 64 KiB buffer, and kicks
    /// the device if there was one (a guest that polls for RX calls this
    /// often, and an empty kick would wake the device each time).
    pub fn fill_rx(&mut self) {
        let mut offered = false;
        while self
            .drv
            .add_writable(RXQ, &[HDR as u32, MAX_PKT_DATA])
            .is_some()
        {
            offered = true;
        }
        if offered {
            self.drv.kick(RXQ);
        }
        self.pump();
    }

    /// Sends one guest packet (header + data) through the TX queue.
    pub fn send(&mut self, mut hdr: Hdr, data: &[u8]) {
        hdr.len = data.len() as u32;
        self.send_raw(&[&hdr.bytes(), data]);
    }

    /// Sends one chain of readable descriptors, one per part (empty parts
    /// too). A part may exceed a slot's buffer when it is the chain's only
    /// descriptor: it then runs on into the slot's unused second buffer.
    pub fn send_chain(&mut self, parts: &[Vec<u8>]) {
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let descs = match self.drv.add_chain(TXQ, &refs, &[]) {
            Some(descs) => descs,
            None => {
                self.drv.take_used(TXQ);
                self.drv.add_chain(TXQ, &refs, &[]).unwrap()
            }
        };
        self.drv.kick(TXQ);
        self.em.take_used_until(&mut self.drv, TXQ, descs[0]);
    }

    pub fn send_raw(&mut self, parts: &[&[u8]]) {
        let parts: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
        let head = match self.drv.add_readable(TXQ, &parts) {
            Some(head) => head,
            None => {
                self.drv.take_used(TXQ);
                self.drv.add_readable(TXQ, &parts).unwrap()
            }
        };
        self.drv.kick(TXQ);
        self.em.take_used_until(&mut self.drv, TXQ, head);
    }

    /// Every packet the device has put in the RX queue so far.
    pub fn recv(&mut self) -> Vec<(Hdr, Vec<u8>)> {
        self.pump();
        let used = self.drv.take_used(RXQ);
        let pkts = used
            .iter()
            .filter(|&&(_, len)| len > 0)
            .map(|&(head, len)| {
                let hdr = Hdr::parse(&self.drv.read_buf(RXQ, head, HDR));
                let data = self.drv.read_buf(RXQ, head + 1, len as usize - HDR);
                (hdr, data)
            })
            .collect();
        self.fill_rx();
        pkts
    }

    /// Host client: connect to PATH, CONNECT to guest `port`, return the stream
    /// and the host-side port from the guest's REQUEST; the guest accepts.
    pub fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut s = UnixStream::connect(&self.path).unwrap();
        std::io::Write::write_all(&mut s, format!("CONNECT {port}\n").as_bytes()).unwrap();
        let pkts = self.recv();
        let req = pkts
            .iter()
            .find(|(h, _)| h.op == OP_REQUEST && h.dst_port == port);
        let local = req.expect("guest got no REQUEST").0.src_port;
        self.send(Hdr::guest(port, local, OP_RESPONSE), &[]);
        let mut line = [0u8; 64];
        let n = s.read(&mut line).unwrap();
        assert_eq!(
            std::str::from_utf8(&line[..n]).unwrap(),
            format!("OK {local}\n")
        );
        s.set_nonblocking(true).unwrap();
        (s, local)
    }
}

/// Non-blocking read of whatever the host stream holds (None on EOF).
pub fn read_avail(s: &mut UnixStream, out: &mut Vec<u8>) -> Option<usize> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (total > 0).then_some(total),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                total += n;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Some(total),
            // An RST from the device closes the stream with data unread.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("host read: {e}"),
        }
    }
}

/// Splits `bytes` into `n` parts whose sizes differ by at most one (some
/// empty when `bytes` is shorter than `n`).
pub fn split_even(bytes: &[u8], n: usize) -> Vec<&[u8]> {
    let (base, extra) = (bytes.len() / n, bytes.len() % n);
    let mut at = 0;
    (0..n)
        .map(|i| {
            let len = base + usize::from(i < extra);
            at += len;
            &bytes[at - len..at]
        })
        .collect()
}

/// The ways a driver may lay a TX packet (`hdr` + `data`) over descriptors,
/// each named, as the readable parts of one chain.
pub fn tx_layouts(hdr: &[u8], data: &[u8]) -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let own = |v: Vec<&[u8]>| v.into_iter().map(<[u8]>::to_vec).collect::<Vec<_>>();
    let with_hdr = |n| {
        let mut v = vec![hdr];
        v.extend(split_even(data, n));
        own(v)
    };
    let one = [hdr, data].concat();
    let cut = 30 + data.len().min(100);
    vec![
        ("header + 1", with_hdr(1)),
        ("header + 2", with_hdr(2)),
        ("header + 16", with_hdr(16)),
        (
            "header split 20 + 24, then data",
            own(vec![&hdr[..20], &hdr[20..], data]),
        ),
        ("header and data in one", vec![one.clone()]),
        (
            "header split, its second part carrying data",
            vec![
                one[..20].to_vec(),
                one[20..cut].to_vec(),
                one[cut..].to_vec(),
            ],
        ),
    ]
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub fn checksum(data: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    h.write(data);
    h.finish()
}
