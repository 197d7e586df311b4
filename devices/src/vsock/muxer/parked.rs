//! Parked connections: the guest's quiet connections from before a
//! snapshot, each held until a host client asking for its guest port takes
//! it over (the client gets `OK <local-port>` at once, with no handshake
//! with the guest), so a restored guest serves its first client on a
//! connection it already has.

use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;

use vmm_sys_util::epoll::EventSet;

use super::{ConnKey, FdOwner, VsockMuxer};
use crate::vsock::csm::Connection;
use crate::vsock::packet::{Header, OP_CREDIT_UPDATE, OP_RST};
use crate::vsock::snapshot::{SavedConnection, VsockSnapshot};

impl VsockMuxer {
    /// Every guest connection, if all are quiet and nothing is owed to the
    /// guest; None when something is in flight.
    pub fn snapshot(&self) -> Option<VsockSnapshot> {
        if !self.rxq.is_empty() {
            return None;
        }
        let mut connections = self
            .conns
            .values()
            .map(Connection::saved)
            .collect::<Option<Vec<_>>>()?;
        connections.extend(self.parked.values().copied());
        connections.sort_by_key(|c| (c.local_port, c.peer_port));
        Some(VsockSnapshot { connections })
    }

    /// Holds a snapshot's connections for host clients to take over.
    pub fn park(&mut self, saved: &VsockSnapshot) -> Result<(), String> {
        saved.check(self.max_conns)?;
        for c in &saved.connections {
            let key = ConnKey {
                local: c.local_port,
                peer: c.peer_port,
            };
            self.parked.insert(key, *c);
        }
        if !saved.connections.is_empty() {
            tracing::info!(
                count = saved.connections.len(),
                "vsock: the guest's connections from the snapshot wait for host clients"
            );
        }
        Ok(())
    }

    /// A parked connection to guest port `peer` (the lowest host port
    /// first), taken out of the parking.
    pub(super) fn unpark_for(&mut self, peer: u32) -> Option<SavedConnection> {
        let key = self
            .parked
            .keys()
            .filter(|k| k.peer == peer)
            .min_by_key(|k| k.local)
            .copied()?;
        self.parked.remove(&key)
    }

    /// Binds host client `stream` (registered as handshake `fd`) to a
    /// parked connection.
    pub(super) fn adopt(&mut self, fd: RawFd, stream: UnixStream, saved: &SavedConnection) {
        let key = ConnKey {
            local: saved.local_port,
            peer: saved.peer_port,
        };
        self.fds.insert(fd, FdOwner::Conn(key));
        self.interest.insert(key, EventSet::IN);
        self.conns.insert(key, Connection::adopted(stream, saved));
        self.metrics.conns_opened.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            local = key.local,
            peer = key.peer,
            "vsock: a host client took over a connection from the snapshot"
        );
        self.sync(key);
    }

    /// A guest packet on a parked connection. Credit news is kept and an
    /// RST ends it; anything else (data nobody can take yet, a shutdown, a
    /// request) resets it.
    pub(super) fn parked_pkt(&mut self, key: ConnKey, hdr: &Header) {
        match hdr.op() {
            OP_CREDIT_UPDATE => {
                if let Some(c) = self.parked.get_mut(&key) {
                    c.peer_buf_alloc = hdr.buf_alloc();
                    c.peer_fwd_cnt = hdr.fwd_cnt();
                }
            }
            OP_RST => {
                self.parked.remove(&key);
            }
            _ => {
                self.parked.remove(&key);
                self.push_stray_rst(hdr);
            }
        }
    }
}
