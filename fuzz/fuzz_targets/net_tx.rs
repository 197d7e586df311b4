//! Arbitrary guest frames and raw descriptor chains on the net TX queue,
//! through the real device and event loop (`net::harness::NetHarness`),
//! with no tap: every chain is parsed and checked exactly as with one, then
//! dropped. Every chain must come back used with length 0 and be counted
//! once, as a frame (dropped) or as malformed; anything else is a finding.

#![no_main]

use std::sync::atomic::Ordering;

use husk_devices::net::harness::{NetHarness, VnetHdr, TXQ};
use husk_fuzz::{split_parts, MAX_CHAINS};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

/// At most this many descriptors per fuzzed frame.
const MAX_PARTS: usize = 16;

#[derive(Arbitrary, Debug)]
struct FuzzHdr {
    flags: u8,
    gso_type: u8,
    hdr_len: u16,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
    num_buffers: u16,
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// A header (possibly cut short) and a frame, cut into descriptors at
    /// the given points, as any driver may lay them out.
    Frame {
        hdr: FuzzHdr,
        hdr_cut: Option<u8>,
        frame: Vec<u8>,
        cuts: Vec<u16>,
    },
    /// One or two raw descriptors: (addr, len, flags, next).
    Raw {
        first: (u64, u32, u16, u16),
        second: Option<(u64, u32, u16, u16)>,
    },
    /// The driver resets the device and sets it up again.
    Reset,
}

fn bytes(step: &FuzzHdr, cut: Option<u8>, frame: &[u8]) -> Vec<u8> {
    let hdr = VnetHdr {
        flags: step.flags,
        gso_type: step.gso_type,
        hdr_len: step.hdr_len,
        gso_size: step.gso_size,
        csum_start: step.csum_start,
        csum_offset: step.csum_offset,
        num_buffers: step.num_buffers,
    };
    let mut b = hdr.bytes().to_vec();
    b.truncate(cut.map_or(b.len(), usize::from));
    b.extend_from_slice(frame);
    b
}

fuzz_target!(|steps: Vec<Step>| {
    let mut h = NetHarness::new(None);
    let mut posted = 0u64;
    for step in steps.iter().take(MAX_CHAINS) {
        let head = match step {
            Step::Frame {
                hdr,
                hdr_cut,
                frame,
                cuts,
            } => {
                let all = bytes(hdr, *hdr_cut, frame);
                let parts = split_parts(&all, cuts, MAX_PARTS);
                if parts.is_empty() {
                    continue;
                }
                h.drv.add_chain(TXQ, &parts, &[]).map(|d| d[0])
            }
            Step::Raw { first, second } => {
                let descs: Vec<_> = std::iter::once(*first).chain(*second).collect();
                h.drv.add_raw(TXQ, &descs)
            }
            Step::Reset => {
                h.drv.write_reg(0x70, 0);
                h.drv.init();
                h.pump();
                continue;
            }
        };
        let Some(head) = head else { continue };
        posted += 1;
        h.drv.kick(TXQ);
        h.pump();
        let used = h.drv.take_used(TXQ);
        assert_eq!(used, [(head, 0)], "the chain comes back used, empty");
    }
    let dev = h.dev.lock().unwrap();
    let m = dev.metrics();
    let counted = m.tx_dropped.load(Ordering::Relaxed) + m.tx_malformed.load(Ordering::Relaxed);
    assert_eq!(counted, posted, "every chain counted once");
    assert_eq!(m.tx_packets.load(Ordering::Relaxed), 0);
});
