//! The host side of vsock: guest connections bridged to host Unix sockets.
//!
//! Firecracker-compatible. A host client connects to the device's socket
//! PATH and writes `CONNECT <port>\n`; once the guest accepts, it reads
//! `OK <local-port>\n` and then has a byte stream to the guest's listener. A
//! guest connecting to host port P is bridged to the Unix socket `PATH_P`.
//! All host fds live in one private epoll set, so the device registers a
//! single fd with the event manager. Packets owed to the guest wait in a
//! queue of connection keys (plus a bounded queue of RSTs for strangers), and
//! are produced only when the guest supplies an RX buffer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::csm::Connection;
use super::packet::*;
use super::snapshot::SavedConnection;
use super::VsockMetrics;

mod parked;

/// Longest accepted `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// Cap on queued RSTs for packets that match no connection.
const MAX_STRAY_RSTS: usize = 1024;
/// Host-initiated connections use local ports from here up.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// A host client that has not sent its whole CONNECT line by then loses its
/// slot when the next client arrives, so idle clients cannot exhaust the limit.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("cannot bind the vsock Unix socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the vsock Unix socket {0} is in use by a running process")]
    InUse(PathBuf),
    #[error("{0} exists and is not a Unix socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot set up the vsock muxer's epoll set: {0}")]
    Epoll(#[source] std::io::Error),
}

/// (host-side port, guest-side port)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    local: u32,
    peer: u32,
}

enum FdOwner {
    Listener,
    Handshake,
    Conn(ConnKey),
}

enum RxItem {
    Conn(ConnKey),
    Rst(RxHeader),
}

pub struct VsockMuxer {
    guest_cid: u64,
    path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    fds: HashMap<RawFd, FdOwner>,
    /// Host clients still sending their CONNECT line: stream, bytes so far, arrival.
    handshakes: HashMap<RawFd, (UnixStream, Vec<u8>, Instant)>,
    conns: HashMap<ConnKey, Connection>,
    /// Guest connections from before a snapshot, waiting for a host client.
    parked: HashMap<ConnKey, SavedConnection>,
    /// Current epoll interest of each connection's host stream.
    interest: HashMap<ConnKey, EventSet>,
    rxq: VecDeque<RxItem>,
    queued: HashSet<ConnKey>,
    next_local_port: u32,
    max_conns: usize,
    handshake_timeout: Duration,
    metrics: Arc<VsockMetrics>,
}

impl VsockMuxer {
    pub fn new(
        guest_cid: u64,
        path: &Path,
        max_conns: usize,
        handshake_timeout: Duration,
        metrics: Arc<VsockMetrics>,
    ) -> Result<Self, MuxerError> {
        let listener = bind_listener(path)?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        let mut muxer = Self {
            guest_cid,
            path: path.to_owned(),
            listener,
            epoll,
            fds: HashMap::new(),
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            parked: HashMap::new(),
            interest: HashMap::new(),
            rxq: VecDeque::new(),
            queued: HashSet::new(),
            next_local_port: FIRST_LOCAL_PORT,
            max_conns,
            handshake_timeout,
            metrics,
        };
        let fd = muxer.listener.as_raw_fd();
        muxer
            .epoll_ctl(ControlOperation::Add, fd, EventSet::IN)
            .map_err(MuxerError::Epoll)?;
        muxer.fds.insert(fd, FdOwner::Listener);
        Ok(muxer)
    }

    /// The fd to watch (readable) for host-side activity.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Number of open connections (handshakes excluded).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub fn has_pending_rx(&self) -> bool {
        !self.rxq.is_empty()
    }

    /// Drops every connection and pending handshake (device reset).
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        keys.into_iter().for_each(|k| self.remove_conn(k));
        let fds: Vec<RawFd> = self.handshakes.keys().copied().collect();
        fds.into_iter().for_each(|fd| self.drop_handshake(fd));
        self.rxq.clear();
        self.queued.clear();
        self.parked.clear();
    }

    /// Handles whatever host fds are ready, without blocking.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return tracing::error!("vsock: muxer epoll_wait failed: {e}"),
            };
            for ev in &events[..n] {
                self.handle_event(ev.fd(), ev.event_set());
            }
            if n < events.len() {
                return;
            }
        }
    }

    fn handle_event(&mut self, fd: RawFd, set: EventSet) {
        match self.fds.get(&fd) {
            Some(FdOwner::Listener) => self.accept(),
            Some(FdOwner::Handshake) => self.read_connect_line(fd),
            Some(FdOwner::Conn(key)) => {
                let key = *key;
                if let Some(conn) = self.conns.get_mut(&key) {
                    conn.notify(set);
                }
                self.sync(key);
            }
            None => tracing::warn!(fd, "vsock: event for an unknown fd"),
        }
    }

    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            self.expire_handshakes();
            if self.conns.len() + self.handshakes.len() >= self.max_conns {
                crate::warn_limited!(max = self.max_conns, "vsock: connection limit reached");
                continue;
            }
            let fd = stream.as_raw_fd();
            if stream.set_nonblocking(true).is_err()
                || self
                    .epoll_ctl(ControlOperation::Add, fd, EventSet::IN)
                    .is_err()
            {
                continue;
            }
            self.fds.insert(fd, FdOwner::Handshake);
            self.handshakes
                .insert(fd, (stream, Vec::new(), Instant::now()));
        }
    }

    fn expire_handshakes(&mut self) {
        let stale: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, (_, _, since))| since.elapsed() >= self.handshake_timeout)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in stale {
            self.reject_handshake(fd, "no CONNECT line in time");
        }
    }

    // Reads byte by byte so no stream data after the line is consumed here.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some((stream, line, _)) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break,
                Ok(1) if line.len() < MAX_CONNECT_LINE => line.push(byte[0]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                _ => return self.reject_handshake(fd, "line too long, EOF or read error"),
            }
        }
        let port = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.strip_prefix("CONNECT "))
            .and_then(|p| p.trim().parse::<u32>().ok());
        match port {
            Some(port) => self.connect_to_guest(fd, port),
            None => self.reject_handshake(fd, "malformed CONNECT line"),
        }
    }

    fn reject_handshake(&mut self, fd: RawFd, why: &str) {
        tracing::debug!("vsock: closing host connection: {why}");
        self.drop_handshake(fd);
    }

    fn drop_handshake(&mut self, fd: RawFd) {
        let _ = self.epoll_ctl(ControlOperation::Delete, fd, EventSet::empty());
        self.fds.remove(&fd);
        self.handshakes.remove(&fd);
    }

    fn connect_to_guest(&mut self, fd: RawFd, peer: u32) {
        let Some((stream, _, _)) = self.handshakes.remove(&fd) else {
            return;
        };
        if let Some(saved) = self.unpark_for(peer) {
            return self.adopt(fd, stream, &saved);
        }
        let Some(local) = self.alloc_local_port(peer) else {
            return self.drop_handshake(fd);
        };
        let key = ConnKey { local, peer };
        self.fds.insert(fd, FdOwner::Conn(key));
        self.interest.insert(key, EventSet::IN);
        self.conns
            .insert(key, Connection::new_local(stream, local, peer));
        self.metrics.conns_opened.fetch_add(1, Ordering::Relaxed);
        self.sync(key);
    }

    fn alloc_local_port(&mut self, peer: u32) -> Option<u32> {
        for _ in 0..1024 {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            let key = ConnKey { local: port, peer };
            if !self.conns.contains_key(&key) && !self.parked.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    /// Handles one packet the guest sent.
    pub fn send_pkt(&mut self, pkt: &TxPacket<'_>) {
        let hdr = pkt.hdr();
        if let Err(e) = validate_tx(hdr, self.guest_cid) {
            self.metrics.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("vsock: rejected guest packet: {e}");
            if !matches!(e, PacketError::WrongCid { .. }) && hdr.op() != OP_RST {
                self.push_stray_rst(hdr);
            }
            return;
        }
        let key = ConnKey {
            local: hdr.dst_port(),
            peer: hdr.src_port(),
        };
        if self.parked.contains_key(&key) {
            return self.parked_pkt(key, hdr);
        }
        match self.conns.get_mut(&key) {
            Some(conn) if hdr.op() != OP_REQUEST => conn.send_pkt(pkt),
            Some(conn) => conn.reset(),
            None if hdr.op() == OP_REQUEST => return self.guest_connect(key, hdr),
            None if hdr.op() != OP_RST => return self.push_stray_rst(hdr),
            None => return,
        }
        self.sync(key);
    }

    /// A guest chain whose header was read but whose payload is broken: the
    /// connection it names is reset (RST to the guest, host stream closed),
    /// so neither end waits for data that will never come.
    pub fn reset_for(&mut self, hdr: &Header) {
        if hdr.src_cid() != self.guest_cid || hdr.dst_cid() != HOST_CID {
            return;
        }
        let key = ConnKey {
            local: hdr.dst_port(),
            peer: hdr.src_port(),
        };
        if self.parked.remove(&key).is_some() {
            return self.push_stray_rst(hdr);
        }
        match self.conns.get_mut(&key) {
            Some(conn) => {
                conn.reset();
                self.sync(key);
            }
            None if hdr.op() != OP_RST => self.push_stray_rst(hdr),
            None => {}
        }
    }

    fn guest_connect(&mut self, key: ConnKey, hdr: &Header) {
        if self.conns.len() + self.handshakes.len() >= self.max_conns {
            crate::warn_limited!(max = self.max_conns, "vsock: connection limit reached");
            return self.push_stray_rst(hdr);
        }
        let target = format!("{}_{}", self.path.display(), key.local);
        let stream = match UnixStream::connect(&target) {
            Ok(s) if s.set_nonblocking(true).is_ok() => s,
            _ => {
                tracing::debug!(target, "vsock: nothing listens for the guest's connect");
                return self.push_stray_rst(hdr);
            }
        };
        let fd = stream.as_raw_fd();
        if self
            .epoll_ctl(ControlOperation::Add, fd, EventSet::empty())
            .is_err()
        {
            return self.push_stray_rst(hdr);
        }
        self.fds.insert(fd, FdOwner::Conn(key));
        self.interest.insert(key, EventSet::empty());
        self.conns.insert(key, Connection::new_peer(stream, hdr));
        self.metrics.conns_opened.fetch_add(1, Ordering::Relaxed);
        self.sync(key);
    }

    fn push_stray_rst(&mut self, hdr: &Header) {
        let strays = self
            .rxq
            .iter()
            .filter(|i| matches!(i, RxItem::Rst(_)))
            .count();
        if strays < MAX_STRAY_RSTS {
            self.rxq.push_back(RxItem::Rst(RxHeader::rst_for(hdr)));
        }
    }

    /// Brings a connection's epoll interest and RX queueing up to date.
    fn sync(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        if conn.is_closed() {
            return self.remove_conn(key);
        }
        let fd = conn.stream().as_raw_fd();
        let want = conn.interest();
        let polled = conn.polled();
        if conn.has_pending_rx() && self.queued.insert(key) {
            self.rxq.push_back(RxItem::Conn(key));
        }
        match self.interest.get(&key).copied() {
            Some(cur) if !polled => {
                let _ = self.epoll_ctl(ControlOperation::Delete, fd, cur);
                self.interest.remove(&key);
            }
            Some(cur)
                if cur != want && self.epoll_ctl(ControlOperation::Modify, fd, want).is_ok() =>
            {
                self.interest.insert(key, want);
            }
            _ => {}
        }
    }

    fn remove_conn(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream().as_raw_fd();
            if self.interest.remove(&key).is_some() {
                let _ = self.epoll_ctl(ControlOperation::Delete, fd, EventSet::empty());
            }
            self.fds.remove(&fd);
            self.metrics.conns_closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Fills `rx` with the next packet owed to the guest and returns its
    /// header; None if nothing is owed.
    pub fn recv_pkt(&mut self, rx: &mut RxBuffer<'_>) -> Option<Header> {
        while let Some(item) = self.rxq.pop_front() {
            let key = match item {
                RxItem::Rst(rst) => {
                    let hdr = rst.to_header(self.guest_cid, 0);
                    rx.write_header(&hdr);
                    self.metrics.rst_sent.fetch_add(1, Ordering::Relaxed);
                    return Some(hdr);
                }
                RxItem::Conn(key) => key,
            };
            self.queued.remove(&key);
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let produced = conn.recv_pkt(rx, self.guest_cid);
            if produced.is_some_and(|h| h.op() == OP_RST) {
                self.metrics.rst_sent.fetch_add(1, Ordering::Relaxed);
            }
            self.sync(key);
            if produced.is_some() {
                return produced;
            }
        }
        None
    }

    fn epoll_ctl(&self, op: ControlOperation, fd: RawFd, set: EventSet) -> std::io::Result<()> {
        self.epoll.ctl(op, fd, EpollEvent::new(set, fd as u64))
    }
}

/// Binds PATH. A socket file left by a process that is gone (connecting to it
/// is refused) is replaced, with a log line; a live socket or any other kind
/// of file is an error, never deleted.
fn bind_listener(path: &Path) -> Result<UnixListener, MuxerError> {
    let bind_err = |source| MuxerError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = match UnixListener::bind(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            use std::os::unix::fs::FileTypeExt;
            let is_socket =
                std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
            if !is_socket {
                return Err(MuxerError::NotASocket(path.to_owned()));
            }
            match UnixStream::connect(path) {
                Ok(_) => return Err(MuxerError::InUse(path.to_owned())),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(bind_err(e)),
            }
            tracing::warn!(path = %path.display(), "vsock: replacing a stale socket nobody listens on");
            std::fs::remove_file(path).map_err(bind_err)?;
            UnixListener::bind(path).map_err(bind_err)?
        }
        other => other.map_err(bind_err)?,
    };
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

impl Drop for VsockMuxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
