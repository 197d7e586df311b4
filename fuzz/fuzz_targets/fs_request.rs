//! Arbitrary FUSE requests on the virtio-fs hiprio and request queues,
//! through `fs::harness::FsHarness::send_on` to the real device and its
//! passthrough filesystem over a temporary directory. Each request is a
//! well-framed FUSE header (opcode, node, optionally a lying length) with
//! arbitrary argument bytes, split across readable descriptors, followed by
//! arbitrary writable reply buffers. The share has a size limit, so husk's
//! policy layer (mode stripping, refusals and the space accounting of
//! writes, truncation, fallocate, unlink, rename, release and forget) is
//! fuzzed with the passthrough under it.

#![no_main]

use husk_devices::fs::harness::{FsHarness, InHeader, HIPRIO_QUEUE, REQUEST_QUEUE};
use husk_fuzz::{split_parts, MAX_CHAINS};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use vm_memory::ByteValued;

/// FUSE_FALLOCATE and FUSE_COPY_FILE_RANGE: their length argument is capped
/// so an input cannot make the host allocate or copy gigabytes.
const FALLOCATE: u32 = 43;
const COPY_FILE_RANGE: u32 = 47;
const MAX_HOST_LEN: u64 = 1 << 20;
const DEFAULT_REPLY_LEN: u32 = 4096;
/// Small enough for inputs to reach it, large enough for a few files.
const SIZE_LIMIT: u64 = 256 << 10;
const HEADER_LEN: usize = std::mem::size_of::<InHeader>();

#[derive(Arbitrary, Debug)]
struct Request {
    hiprio: bool,
    opcode: u8,
    wide_opcode: Option<u32>,
    node: u8,
    wide_node: Option<u64>,
    /// A length field that need not match the request.
    len: Option<u32>,
    args: Vec<u8>,
    /// Where the request is cut into readable descriptors.
    cuts: Vec<u16>,
    /// Writable reply buffers; None: one page, room for most replies.
    reply_lens: Option<Vec<u16>>,
}

impl Request {
    fn bytes(&self) -> Vec<u8> {
        let opcode = self.wide_opcode.unwrap_or(u32::from(self.opcode));
        let mut args = self.args.clone();
        cap_host_len(opcode, &mut args);
        let header = InHeader {
            len: self.len.unwrap_or((HEADER_LEN + args.len()) as u32),
            opcode,
            unique: 2,
            nodeid: self.wide_node.unwrap_or(u64::from(self.node)),
            pid: 1,
            ..Default::default()
        };
        [header.as_slice(), &args].concat()
    }
}

fn cap_host_len(opcode: u32, args: &mut [u8]) {
    let at = match opcode {
        FALLOCATE => 16,
        COPY_FILE_RANGE => 40,
        _ => return,
    };
    if let Some(field) = args.get_mut(at..at + 8) {
        let len = u64::from_le_bytes(field.try_into().unwrap()) % MAX_HOST_LEN;
        field.copy_from_slice(&len.to_le_bytes());
    }
}

fuzz_target!(|requests: Vec<Request>| {
    let mut h = FsHarness::with_config(|c| c.size_limit = Some(SIZE_LIMIT));
    std::fs::write(h.host("file"), b"some bytes").unwrap();
    std::fs::create_dir(h.host("dir")).unwrap();
    for req in requests.iter().take(MAX_CHAINS) {
        let bytes = req.bytes();
        let parts = split_parts(&bytes, &req.cuts, 4);
        let lens: Vec<u32> = match &req.reply_lens {
            Some(lens) => lens.iter().take(4).map(|&l| u32::from(l)).collect(),
            None => vec![DEFAULT_REPLY_LEN],
        };
        if parts.is_empty() && lens.is_empty() {
            continue;
        }
        let q = if req.hiprio {
            HIPRIO_QUEUE
        } else {
            REQUEST_QUEUE
        };
        h.send_on(q, &parts, &lens);
    }
});
