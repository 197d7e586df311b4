//! Chain layouts the parser must accept or refuse, played on virtio-queue's
//! mock queue over mock guest memory.

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::vsock::harness::{split_even as parts, tx_layouts};

const MEM: usize = 16 << 20;
const BUFS: u64 = 0x10_0000;
/// Each descriptor's buffer gets its own 128 KiB stretch of memory.
const STRIDE: u64 = 0x2_0000;

fn mem() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).unwrap()
}

fn header(len: u32) -> Header {
    let mut h = Header::default();
    h.set_src_cid(3)
        .set_dst_cid(HOST_CID)
        .set_src_port(1000)
        .set_dst_port(2000)
        .set_type(TYPE_STREAM)
        .set_op(OP_RW)
        .set_len(len)
        .set_buf_alloc(4096);
    h
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Writes each part to its own buffer; one descriptor per part, `flags` on all.
fn descs(mem: &GuestMemory, parts: &[&[u8]], flags: u16) -> Vec<RawDescriptor> {
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let addr = BUFS + i as u64 * STRIDE;
            mem.write_slice(part, GuestAddress(addr)).unwrap();
            Descriptor::new(addr, part.len() as u32, flags, 0).into()
        })
        .collect()
}

fn parse_tx<'a>(mem: &'a GuestMemory, raw: &[RawDescriptor]) -> Result<TxPacket<'a>, TxChainError> {
    let q = MockSplitQueue::new(mem, 256);
    let chain = q.build_desc_chain(raw).unwrap();
    let descs: Vec<Descriptor> = chain.collect();
    TxPacket::parse(mem, descs)
}

fn payload(pkt: &TxPacket<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    pkt.copy_data_from(0, &mut out);
    out
}

#[test]
fn tx_payload_is_read_whole_from_every_layout() {
    let mem = mem();
    for size in [1usize, 4096, 32 * 1024 + 1, 64 * 1024] {
        let data = pattern(size);
        let hdr = header(size as u32);
        for (name, layout) in tx_layouts(hdr.as_bytes(), &data) {
            let refs: Vec<&[u8]> = layout.iter().map(Vec::as_slice).collect();
            let raw = descs(&mem, &refs, 0);
            let pkt = parse_tx(&mem, &raw).unwrap_or_else(|e| panic!("{name}, {size} B: {e:?}"));
            assert_eq!(pkt.hdr(), &hdr, "{name}, {size} B");
            assert_eq!(pkt.data_len(), size, "{name}");
            assert!(payload(&pkt) == data, "{name}, {size} B: payload differs");
        }
    }
}

#[test]
fn short_writes_leave_the_rest_for_the_buffer() {
    let mem = mem();
    let data = pattern(64 * 1024);
    let hdr = header(data.len() as u32);
    let mut layout = vec![hdr.as_bytes()];
    layout.extend(parts(&data, 2));
    let pkt = parse_tx(&mem, &descs(&mem, &layout, 0)).unwrap();
    let mut sink = vec![0u8; 40_000];
    let n = pkt.write_data_to(&mut sink.as_mut_slice()).unwrap();
    assert_eq!(n, 40_000);
    let mut rest = Vec::new();
    pkt.copy_data_from(n, &mut rest);
    assert!([&sink[..], &rest[..]].concat() == data);
}

#[test]
fn bytes_past_len_are_ignored_and_empty_descriptors_skipped() {
    let mem = mem();
    let hdr = header(5);
    let raw = descs(&mem, &[hdr.as_bytes(), b"", b"hel", b"", b"lo and more"], 0);
    let pkt = parse_tx(&mem, &raw).unwrap();
    assert_eq!(payload(&pkt), b"hello");
}

#[test]
fn a_header_claiming_more_than_the_chain_keeps_the_header_for_the_reset() {
    let mem = mem();
    let hdr = header(8192);
    let raw = descs(&mem, &[hdr.as_bytes(), &[1u8; 4096]], 0);
    let err = parse_tx(&mem, &raw).unwrap_err();
    assert_eq!(err.header, Some(hdr));
    assert_eq!(
        err.error,
        ChainError::PayloadShort {
            len: 8192,
            got: 4096
        }
    );
}

#[test]
fn tx_chains_that_are_not_packets_are_refused() {
    let mem = mem();
    let big = header(MAX_PKT_DATA + 1);
    let err = parse_tx(&mem, &descs(&mem, &[big.as_bytes(), &[0u8; 1024]], 0)).unwrap_err();
    assert_eq!(err.header, Some(big));
    assert_eq!(
        err.error,
        ChainError::PayloadTooLong {
            len: MAX_PKT_DATA + 1
        }
    );

    let hdr = header(0);
    let err = parse_tx(&mem, &descs(&mem, &[&hdr.as_bytes()[..30]], 0)).unwrap_err();
    assert_eq!(
        (err.header, err.error),
        (None, ChainError::HeaderTooShort { got: 30 })
    );

    let raw = descs(
        &mem,
        &[&hdr.as_bytes()[..10], &[0; 40]],
        VRING_DESC_F_WRITE as u16,
    );
    let err = parse_tx(&mem, &raw).unwrap_err();
    assert_eq!(err.error, ChainError::WritableInTx);

    let hdr = header(100);
    let mut raw = descs(&mem, &[hdr.as_bytes()], 0);
    raw.push(Descriptor::new(MEM as u64 - 10, 100, 0, 0).into());
    let err = parse_tx(&mem, &raw).unwrap_err();
    assert_eq!(err.header, Some(hdr));
    assert!(matches!(err.error, ChainError::OutsideMemory { .. }));
}

fn parse_rx<'a>(
    mem: &'a GuestMemory,
    lens: &[u32],
    flags: u16,
) -> Result<RxBuffer<'a>, ChainError> {
    let zeros: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0u8; l as usize]).collect();
    let refs: Vec<&[u8]> = zeros.iter().map(Vec::as_slice).collect();
    let raw = descs(mem, &refs, flags);
    let q = MockSplitQueue::new(mem, 256);
    let chain = q.build_desc_chain(&raw).unwrap();
    RxBuffer::parse(mem, chain.collect::<Vec<_>>())
}

// What the guest reads back from an RX chain of `lens`: the whole buffer.
fn read_back(mem: &GuestMemory, lens: &[u32]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &len) in lens.iter().enumerate() {
        let mut b = vec![0u8; len as usize];
        mem.read_slice(&mut b, GuestAddress(BUFS + i as u64 * STRIDE))
            .unwrap();
        out.extend(b);
    }
    out
}

#[test]
fn rx_header_and_payload_land_in_every_layout() {
    let layouts: [&[u32]; 5] = [
        &[44, 65536],
        &[44 + 4096],
        &[20, 24, 4096],
        &[10, 10, 10, 20, 100, 3990],
        &[44, 1000, 0, 3096],
    ];
    for lens in layouts {
        let mem = mem();
        let mut rx = parse_rx(&mem, lens, VRING_DESC_F_WRITE as u16).unwrap();
        let room = lens.iter().sum::<u32>() as usize - PKT_HEADER_SIZE;
        assert_eq!(rx.capacity(), room, "{lens:?}");
        let data = pattern(4096);
        let n = rx.fill_from(&mut data.as_slice(), 4096).unwrap();
        assert_eq!(n, 4096, "{lens:?}");
        let hdr = header(n as u32);
        rx.write_header(&hdr);
        let back = read_back(&mem, lens);
        assert_eq!(&back[..PKT_HEADER_SIZE], hdr.as_bytes(), "{lens:?}");
        assert!(back[PKT_HEADER_SIZE..][..n] == data[..], "{lens:?}");
    }
}

#[test]
fn rx_room_is_capped_at_the_packet_limit_and_reads_stop_at_max() {
    let mem = mem();
    let mut rx = parse_rx(&mem, &[44, 65536, 65536], VRING_DESC_F_WRITE as u16).unwrap();
    assert_eq!(rx.capacity(), MAX_PKT_DATA as usize);
    let data = pattern(100_000);
    assert_eq!(rx.fill_from(&mut data.as_slice(), 70_000).unwrap(), 65536);
    let mut rx = parse_rx(&mem, &[44, 100, 100], VRING_DESC_F_WRITE as u16).unwrap();
    assert_eq!(rx.fill_from(&mut data.as_slice(), 150).unwrap(), 150);
    // EOF before any byte reads as 0.
    assert_eq!(rx.fill_from(&mut &b""[..], 150).unwrap(), 0);
}

#[test]
fn rx_chains_that_cannot_hold_a_packet_are_refused() {
    let mem = mem();
    let w = VRING_DESC_F_WRITE as u16;
    assert_eq!(
        parse_rx(&mem, &[20, 20], w).unwrap_err(),
        ChainError::HeaderTooShort { got: 40 }
    );
    assert_eq!(
        parse_rx(&mem, &[44, 100], 0).unwrap_err(),
        ChainError::ReadableInRx
    );
}
