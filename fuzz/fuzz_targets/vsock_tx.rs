//! Arbitrary guest packets and raw descriptor chains on the vsock TX queue,
//! through the real device, muxer and event loop (`vsock::harness::Harness`).
//! A host listener on port 1024 lets guest REQUESTs open real connections, so
//! data, credit and shutdown packets reach connected streams too.

#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use husk_devices::vsock::harness::{Harness, Hdr, CID, HDR, HOST_CID, RXQ, TXQ, TYPE_STREAM};
use husk_fuzz::{fit_buf, MAX_CHAINS};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

const LISTEN_PORT: u32 = 1024;

#[derive(Arbitrary, Debug)]
struct FuzzHdr {
    src_cid: u8,
    dst_cid: u8,
    wide_cid: u64,
    src_port: u8,
    dst_port: u8,
    wide_port: Option<u32>,
    len: Option<u32>,
    /// None: a stream packet, the only type the device serves.
    type_: Option<u16>,
    op: u8,
    wide_op: Option<u16>,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl FuzzHdr {
    fn hdr(&self, payload_len: usize) -> Hdr {
        let cid = |sel: u8| match sel % 4 {
            0 | 1 => CID,
            2 => HOST_CID,
            _ => self.wide_cid,
        };
        let port = |sel: u8| match sel % 4 {
            0 => LISTEN_PORT,
            _ => u32::from(sel),
        };
        Hdr {
            src_cid: cid(self.src_cid),
            dst_cid: cid(self.dst_cid),
            src_port: port(self.src_port),
            dst_port: self.wide_port.unwrap_or_else(|| port(self.dst_port)),
            len: self.len.unwrap_or(payload_len as u32),
            type_: self.type_.unwrap_or(TYPE_STREAM),
            op: self.wide_op.unwrap_or(u16::from(self.op % 8)),
            flags: self.flags,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// A header (possibly cut short) and payload, laid over descriptors cut
    /// at the given offsets (none: one descriptor), as any driver may.
    Packet {
        hdr: FuzzHdr,
        hdr_cut: Option<u8>,
        payload: Vec<u8>,
        cuts: Vec<u16>,
    },
    /// One or two raw descriptors: (addr, len, flags, next).
    Raw {
        first: (u64, u32, u16, u16),
        second: Option<(u64, u32, u16, u16)>,
    },
    /// The guest consumes what the device put in RX and refills it.
    DrainRx,
    /// The host accepts pending connections and reads what they hold.
    HostRead,
    /// The host writes to every accepted connection.
    HostWrite(Vec<u8>),
}

struct Host {
    listener: UnixListener,
    streams: Vec<UnixStream>,
}

impl Host {
    fn accept(&mut self) {
        while let Ok((s, _)) = self.listener.accept() {
            s.set_nonblocking(true).unwrap();
            self.streams.push(s);
        }
    }

    fn read(&mut self) {
        self.accept();
        let mut buf = [0u8; 4096];
        for s in &mut self.streams {
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
    }

    fn write(&mut self, data: &[u8]) {
        self.accept();
        for s in &mut self.streams {
            let _ = s.write(data);
        }
    }
}

/// At most this many descriptors per fuzzed packet.
const MAX_PARTS: usize = 16;

// Cuts `bytes` at the given offsets (sorted, deduplicated, in range), each
// part at most one slot buffer long.
fn cut<'a>(bytes: &'a [u8], cuts: &[u16]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c))
        .filter(|&c| c < bytes.len())
        .collect();
    at.sort_unstable();
    at.dedup();
    at.truncate(MAX_PARTS - 1);
    let mut parts = Vec::new();
    let mut start = 0;
    for end in at.into_iter().chain([bytes.len()]) {
        parts.push(fit_buf(&bytes[start..end]));
        start = end;
    }
    parts
}

fn post(h: &mut Harness, step: &Step) {
    // The device may hold TX chains under back-pressure; a full queue ends the input.
    let head = match step {
        Step::Packet {
            hdr,
            hdr_cut,
            payload,
            cuts,
        } => {
            let payload = fit_buf(payload);
            let mut bytes = hdr.hdr(payload.len()).bytes();
            bytes.truncate(hdr_cut.map_or(HDR, usize::from));
            bytes.extend_from_slice(payload);
            let parts = cut(&bytes, cuts);
            h.drv.add_chain(TXQ, &parts, &[]).map(|d| d[0])
        }
        Step::Raw { first, second } => {
            let descs: Vec<_> = std::iter::once(*first).chain(*second).collect();
            h.drv.add_raw(TXQ, &descs)
        }
        _ => return,
    };
    if head.is_some() {
        h.drv.kick(TXQ);
        h.pump();
    }
}

fuzz_target!(|steps: Vec<Step>| {
    let mut h = Harness::new();
    let listen_path = format!("{}_{}", h.path.display(), LISTEN_PORT);
    let listener = UnixListener::bind(&listen_path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut host = Host {
        listener,
        streams: Vec::new(),
    };
    for step in steps.iter().take(MAX_CHAINS) {
        match step {
            Step::DrainRx => {
                h.drv.take_used(RXQ);
                h.fill_rx();
            }
            Step::HostRead => host.read(),
            Step::HostWrite(data) => host.write(data),
            _ => post(&mut h, step),
        }
        h.pump();
        h.drv.take_used(TXQ);
    }
});
