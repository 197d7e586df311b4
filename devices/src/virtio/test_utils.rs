//! A test double of the guest's virtio driver, so devices run without a guest.
//!
//! `GuestDriver` owns mock guest memory and an `MmioTransport`, performs the
//! driver's register handshake, and plays the driver's side of each split
//! queue with virtio-queue's `MockSplitQueue`: it posts descriptor chains
//! (readable TX packets, writable RX buffers, or raw hostile descriptors),
//! kicks QueueNotify and reads the used ring back. Each queue has fixed
//! two-descriptor slots with a buffer per descriptor, recycled when used;
//! longer chains (FUSE requests mix readable and writable descriptors) span
//! several slots, all recycled when the chain's head is used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::{Descriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::{DescriptorTable, MockSplitQueue};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::status::*;
use super::{GuestMemory, IrqFdInterrupt, MmioTransport, VirtioDevice};
use crate::bus::BusDevice;

/// Guest memory size; buffers of queue q start at `BUF_BASE + q * QUEUE_BUFS`.
pub const MEM_SIZE: u64 = 64 << 20;
const RING_BASE: u64 = 0x1_0000;
const RING_STRIDE: u64 = 0x1_0000;
const USED_OFFSET: u64 = 0x8000;
const BUF_BASE: u64 = 0x10_0000;
/// Size of the buffer behind every descriptor.
pub const BUF_SIZE: u64 = 0x1_0000;

/// A fresh temporary directory named `<prefix>XXXXXX` under $TMPDIR: fuzz
/// runs make one per input, and creating and removing them on ext4 took a
/// third of vsock_tx's time; with TMPDIR=/dev/shm (tmpfs) it ran 1.8 times
/// as many inputs a second.
pub fn temp_dir(prefix: &str) -> vmm_sys_util::tempdir::TempDir {
    vmm_sys_util::tempdir::TempDir::new_with_prefix(std::env::temp_dir().join(prefix))
        .expect("a temporary directory under $TMPDIR")
}

/// One element of a used ring: (head descriptor index, bytes written).
pub type Used = (u16, u32);

pub struct GuestDriver {
    pub mem: GuestMemory,
    pub transport: MmioTransport,
    pub interrupt: Arc<IrqFdInterrupt>,
    queue_size: u16,
    queues: Vec<DriverQueue>,
}

struct DriverQueue {
    free_slots: Vec<u16>,
    last_used: u16,
    /// Slots after the first of each multi-slot chain, by head index.
    chain_slots: HashMap<u16, Vec<u16>>,
}

impl GuestDriver {
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>, queue_size: u16) -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let interrupt = Arc::new(IrqFdInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let nqueues = device.lock().unwrap().queue_max_sizes().len();
        let transport = MmioTransport::new(mem.clone(), device, interrupt.clone()).unwrap();
        let queues = (0..nqueues)
            .map(|_| DriverQueue {
                free_slots: (0..queue_size / 2).rev().collect(),
                last_used: 0,
                chain_slots: HashMap::new(),
            })
            .collect();
        Self {
            mem,
            transport,
            interrupt,
            queue_size,
            queues,
        }
    }

    pub fn read_reg(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write_reg(&mut self, offset: u64, v: u32) {
        self.transport.write(offset, &v.to_le_bytes());
    }

    /// Where queue `q`'s rings live.
    pub fn ring_addr(q: usize) -> GuestAddress {
        GuestAddress(RING_BASE + q as u64 * RING_STRIDE)
    }

    /// Where queue `q`'s used ring lives. MockSplitQueue places its own used
    /// ring over the tail of the avail ring (its `end()` counts entries, not
    /// bytes), so the harness keeps the used ring apart and reads it itself.
    pub fn used_addr(q: usize) -> GuestAddress {
        GuestAddress(Self::ring_addr(q).0 + USED_OFFSET)
    }

    fn mock(&self, q: usize) -> MockSplitQueue<'_, GuestMemory> {
        MockSplitQueue::create(&self.mem, Self::ring_addr(q), self.queue_size)
    }

    /// The driver's initialization sequence (virtio 1.2, 3.1.1), all queues.
    pub fn init(&mut self) {
        self.init_queues();
        self.set_driver_ok();
    }

    /// Initialization up to live queues, without DRIVER_OK: a driver may
    /// make buffers available before the device is activated.
    pub fn init_queues(&mut self) {
        self.init_queues_acking(u64::MAX);
    }

    /// The driver's initialization sequence, acking only the offered
    /// features that are in `mask`.
    pub fn init_acking(&mut self, mask: u64) {
        self.init_queues_acking(mask);
        self.set_driver_ok();
    }

    /// `init_queues`, acking only the offered features that are in `mask`.
    pub fn init_queues_acking(&mut self, mask: u64) {
        self.clear_rings();
        self.write_reg(0x70, ACKNOWLEDGE);
        self.write_reg(0x70, ACKNOWLEDGE | DRIVER);
        for sel in 0..2 {
            self.write_reg(0x14, sel);
            let offered = self.read_reg(0x10) & (mask >> (32 * sel)) as u32;
            self.write_reg(0x24, sel);
            self.write_reg(0x20, offered);
        }
        self.write_reg(0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_ne!(self.read_reg(0x70) & FEATURES_OK, 0, "features refused");
        for q in 0..self.queues.len() {
            self.setup_queue(q);
        }
    }

    /// Sets DRIVER_OK, activating the device.
    pub fn set_driver_ok(&mut self) {
        self.write_reg(0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(
            self.read_reg(0x70),
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
        );
    }

    // A fresh driver starts with empty rings and every slot free.
    fn clear_rings(&mut self) {
        let size = self.queue_size;
        for (q, dq) in self.queues.iter_mut().enumerate() {
            let avail = Self::ring_addr(q).unchecked_add(16 * u64::from(size));
            self.mem.write_obj(0u16, avail.unchecked_add(2)).unwrap();
            self.mem
                .write_obj(0u16, Self::used_addr(q).unchecked_add(2))
                .unwrap();
            dq.free_slots = (0..size / 2).rev().collect();
            dq.last_used = 0;
            dq.chain_slots.clear();
        }
    }

    pub fn setup_queue(&mut self, q: usize) {
        let (desc, avail, used) = {
            let m = self.mock(q);
            (
                m.desc_table_addr().0,
                m.avail_addr().0,
                Self::used_addr(q).0,
            )
        };
        self.write_reg(0x30, q as u32);
        self.write_reg(0x38, u32::from(self.queue_size));
        for (reg, addr) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
            self.write_reg(reg, addr as u32);
            self.write_reg(reg + 4, (addr >> 32) as u32);
        }
        self.write_reg(0x44, 1);
    }

    /// Guest address of the buffer behind descriptor `idx` of queue `q`.
    pub fn buf_addr(&self, q: usize, idx: u16) -> GuestAddress {
        let queue_bufs = u64::from(self.queue_size) * BUF_SIZE;
        GuestAddress(BUF_BASE + q as u64 * queue_bufs + u64::from(idx) * BUF_SIZE)
    }

    /// The head index the next `add_raw` on queue `q` will use, so a raw
    /// chain can point its `next` fields at its own slot.
    pub fn next_head(&self, q: usize) -> Option<u16> {
        self.queues[q].free_slots.last().map(|slot| slot * 2)
    }

    pub fn free_slots(&self, q: usize) -> usize {
        self.queues[q].free_slots.len()
    }

    /// Posts a readable chain: `parts` (at most two) copied into slot buffers.
    /// Returns the head index, or None when the queue is full.
    pub fn add_readable(&mut self, q: usize, parts: &[&[u8]]) -> Option<u16> {
        let slot = self.queues[q].free_slots.pop()?;
        let descs: Vec<_> = parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let idx = slot * 2 + i as u16;
                self.mem.write_slice(part, self.buf_addr(q, idx)).unwrap();
                (self.buf_addr(q, idx).0, part.len() as u32, 0)
            })
            .collect();
        self.post(q, slot, &descs);
        Some(slot * 2)
    }

    /// Posts a writable chain of `lens` (at most two) buffers.
    pub fn add_writable(&mut self, q: usize, lens: &[u32]) -> Option<u16> {
        let slot = self.queues[q].free_slots.pop()?;
        let descs: Vec<_> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let addr = self.buf_addr(q, slot * 2 + i as u16);
                (addr.0, len, VRING_DESC_F_WRITE as u16)
            })
            .collect();
        self.post(q, slot, &descs);
        Some(slot * 2)
    }

    /// Posts a request chain: `request` in a readable descriptor, then a
    /// writable response buffer of `response_len` bytes.
    pub fn add_request(&mut self, q: usize, request: &[u8], response_len: u32) -> Option<u16> {
        let slot = self.queues[q].free_slots.pop()?;
        let (req, resp) = (self.buf_addr(q, slot * 2), self.buf_addr(q, slot * 2 + 1));
        self.mem.write_slice(request, req).unwrap();
        let descs = [
            (req.0, request.len() as u32, 0),
            (resp.0, response_len, VRING_DESC_F_WRITE as u16),
        ];
        self.post(q, slot, &descs);
        Some(slot * 2)
    }

    /// Posts up to two raw descriptors (addr, len, flags, next) as one chain in a slot.
    pub fn add_raw(&mut self, q: usize, descs: &[(u64, u32, u16, u16)]) -> Option<u16> {
        let slot = self.queues[q].free_slots.pop()?;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(addr, len, flags, next)| Descriptor::new(addr, len, flags, next).into())
            .collect();
        self.publish(q, slot, &raw);
        Some(slot * 2)
    }

    /// Posts one chain of readable `parts` followed by writable buffers of
    /// `lens` (each at most `BUF_SIZE`), spanning as many slots as it needs.
    /// Returns the descriptor indices in chain order (the head first), or
    /// None when the queue has too few free slots.
    pub fn add_chain(&mut self, q: usize, parts: &[&[u8]], lens: &[u32]) -> Option<Vec<u16>> {
        let count = parts.len() + lens.len();
        let slots_needed = count.div_ceil(2);
        if count == 0 || self.queues[q].free_slots.len() < slots_needed {
            return None;
        }
        let slots: Vec<u16> = (0..slots_needed)
            .filter_map(|_| self.queues[q].free_slots.pop())
            .collect();
        let idx: Vec<u16> = (0..count)
            .map(|i| slots[i / 2] * 2 + (i % 2) as u16)
            .collect();
        let mut raw = Vec::with_capacity(count);
        for (i, &at) in idx.iter().enumerate() {
            let addr = self.buf_addr(q, at);
            let (len, mut flags) = match parts.get(i) {
                Some(part) => {
                    self.mem.write_slice(part, addr).unwrap();
                    (part.len() as u32, 0)
                }
                None => (lens[i - parts.len()], VRING_DESC_F_WRITE as u16),
            };
            let next = idx.get(i + 1).copied().unwrap_or(0);
            if i + 1 < count {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            raw.push((at, Descriptor::new(addr.0, len, flags, next).into()));
        }
        self.publish_at(q, idx[0], &raw);
        self.queues[q]
            .chain_slots
            .insert(idx[0], slots[1..].to_vec());
        Some(idx)
    }

    /// Reads up to `len` bytes the device wrote across descriptors `descs`,
    /// each backed by a `BUF_SIZE` buffer of which the first `lens[i]` count.
    pub fn read_chain(&self, q: usize, descs: &[u16], lens: &[u32], len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        for (&idx, &cap) in descs.iter().zip(lens) {
            let take = (len - out.len()).min(cap as usize);
            out.extend(self.read_buf(q, idx, take));
        }
        out
    }

    fn post(&mut self, q: usize, slot: u16, descs: &[(u64, u32, u16)]) {
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let more = i + 1 < descs.len();
                let flags = flags | if more { VRING_DESC_F_NEXT as u16 } else { 0 };
                Descriptor::new(addr, len, flags, slot * 2 + i as u16 + 1).into()
            })
            .collect();
        self.publish(q, slot, &raw);
    }

    // Stores a chain in the slot's descriptors and makes it available.
    // Creating a MockSplitQueue zeroes its rings, so after setup the harness
    // uses the mock's descriptor table alone and writes the avail ring itself.
    fn publish(&self, q: usize, slot: u16, raw: &[RawDescriptor]) {
        let at: Vec<_> = raw
            .iter()
            .enumerate()
            .map(|(i, desc)| (slot * 2 + i as u16, *desc))
            .collect();
        self.publish_at(q, slot * 2, &at);
    }

    // Stores descriptors at the given indices and makes `head` available.
    fn publish_at(&self, q: usize, head: u16, raw: &[(u16, RawDescriptor)]) {
        let table = DescriptorTable::new(&self.mem, Self::ring_addr(q), self.queue_size);
        for &(idx, desc) in raw {
            table.store(idx, desc).unwrap();
        }
        let avail = Self::ring_addr(q).unchecked_add(16 * u64::from(self.queue_size));
        let idx: u16 = self.mem.read_obj(avail.unchecked_add(2)).unwrap();
        let entry = avail.unchecked_add(4 + 2 * u64::from(idx % self.queue_size));
        self.mem.write_obj(head, entry).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
    }

    /// QueueNotify for queue `q`.
    pub fn kick(&mut self, q: usize) {
        self.write_reg(0x50, q as u32);
    }

    /// New used-ring entries of queue `q`; their slots become free again.
    pub fn take_used(&mut self, q: usize) -> Vec<Used> {
        let used = Self::used_addr(q);
        let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        let mut last = self.queues[q].last_used;
        while last != idx {
            let at = used.unchecked_add(4 + 8 * u64::from(last % self.queue_size));
            let elem: VirtqUsedElem = self.mem.read_obj(at).unwrap();
            out.push((elem.id() as u16, elem.len()));
            last = last.wrapping_add(1);
        }
        let dq = &mut self.queues[q];
        dq.last_used = last;
        for &(id, _) in &out {
            dq.free_slots.push(id / 2);
            dq.free_slots
                .extend(dq.chain_slots.remove(&id).unwrap_or_default());
        }
        out
    }

    /// Reads `len` bytes of the buffer behind descriptor `idx` of queue `q`.
    pub fn read_buf(&self, q: usize, idx: u16, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, self.buf_addr(q, idx)).unwrap();
        v
    }
}
