//! The one owner of a VM's guest resources: MMIO windows, legacy IRQs, KVM
//! memory slots and device-memory ranges.
//!
//! Every device a VM gets (at boot, or later from a runtime adding devices per
//! sandbox) takes what it needs from here, so no two can collide. Built on
//! rust-vmm's `vm-allocator`, as Firecracker does: `AddressAllocator` for
//! address ranges, `IdAllocator` for IRQs and slots.

use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap};

use crate::layout::{
    device_memory_start, DEVICE_MEMORY_ALIGN, DEVICE_MEMORY_GRANULE, IOAPIC_ADDR, MMIO_GAP_START,
};

/// Size of one virtio-mmio window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// First legacy IRQ for devices (0-4 are PIT, keyboard, cascade, COM2, COM1).
pub const FIRST_DEVICE_IRQ: u32 = 5;
/// Legacy IRQs the MP table routes (IOAPIC pins).
pub const LAST_DEVICE_IRQ: u32 = 23;
/// KVM's usual limit on user memory slots per address space.
const MAX_MEMORY_SLOTS: u32 = 509;
/// Guest-physical room for device memory: 1 TiB above its start.
const DEVICE_MEMORY_SPAN: u64 = 1 << 40;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourceError {
    #[error("no free virtio-mmio window left below the IOAPIC")]
    NoMmioWindow,
    #[error("too many devices: only IRQs {FIRST_DEVICE_IRQ}-{LAST_DEVICE_IRQ} are free")]
    NoIrq,
    #[error("no free KVM memory slot (the limit is {MAX_MEMORY_SLOTS})")]
    NoMemorySlot,
    #[error(
        "device memory region of {len} bytes is empty or not a multiple of {} MiB",
        DEVICE_MEMORY_GRANULE >> 20
    )]
    BadLength { len: u64 },
    #[error("no guest-physical room for {len} more bytes of device memory")]
    OutOfAddressSpace { len: u64 },
}

pub struct GuestResources {
    mmio: AddressAllocator,
    irqs: IdAllocator,
    slots: IdAllocator,
    device_memory: AddressAllocator,
}

impl GuestResources {
    /// The resources of a VM with `ram` as guest RAM; RAM's own regions
    /// already hold the first memory slots (0..regions).
    pub fn new(ram: &GuestMemoryMmap) -> Self {
        let ram_end = ram.last_addr().0 + 1;
        let mut slots = IdAllocator::new(0, MAX_MEMORY_SLOTS - 1).expect("a valid slot range");
        for _ in 0..ram.num_regions() {
            slots.allocate_id().expect("RAM takes the first slots");
        }
        let gap = u64::from(IOAPIC_ADDR) - MMIO_GAP_START;
        Self {
            mmio: AddressAllocator::new(MMIO_GAP_START, gap).expect("a valid MMIO gap"),
            irqs: IdAllocator::new(FIRST_DEVICE_IRQ, LAST_DEVICE_IRQ).expect("a valid IRQ range"),
            slots,
            device_memory: AddressAllocator::new(device_memory_start(ram_end), DEVICE_MEMORY_SPAN)
                .expect("a valid device-memory span"),
        }
    }

    /// A 4 KiB virtio-mmio window in the MMIO gap, lowest first.
    pub fn mmio_window(&mut self) -> Result<GuestAddress, ResourceError> {
        self.mmio
            .allocate(MMIO_WINDOW, MMIO_WINDOW, AllocPolicy::FirstMatch)
            .map(|r| GuestAddress(r.start()))
            .map_err(|_| ResourceError::NoMmioWindow)
    }

    pub fn irq(&mut self) -> Result<u32, ResourceError> {
        self.irqs.allocate_id().map_err(|_| ResourceError::NoIrq)
    }

    pub fn memory_slot(&mut self) -> Result<u32, ResourceError> {
        self.slots
            .allocate_id()
            .map_err(|_| ResourceError::NoMemorySlot)
    }

    /// A guest-physical range of `len` bytes (a multiple of 2 MiB) above RAM
    /// and the 4 GiB boundary, 128 MiB aligned (see `layout`).
    pub fn device_memory(&mut self, len: u64) -> Result<GuestAddress, ResourceError> {
        if len == 0 || !len.is_multiple_of(DEVICE_MEMORY_GRANULE) {
            return Err(ResourceError::BadLength { len });
        }
        // Whole sections: the next region must start on a fresh 128 MiB boundary.
        let span = len
            .checked_next_multiple_of(DEVICE_MEMORY_ALIGN)
            .ok_or(ResourceError::OutOfAddressSpace { len })?;
        self.device_memory
            .allocate(span, DEVICE_MEMORY_ALIGN, AllocPolicy::FirstMatch)
            .map(|r| GuestAddress(r.start()))
            .map_err(|_| ResourceError::OutOfAddressSpace { len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::MMIO_GAP_END;

    fn ram(bytes: u64) -> GuestMemoryMmap {
        let ranges: Vec<_> = crate::memory::ram_ranges(bytes)
            .into_iter()
            .map(|(a, l)| (a, l as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    #[test]
    fn mmio_windows_and_irqs_are_handed_out_once_each() {
        let mut r = GuestResources::new(&ram(64 << 20));
        let a = r.mmio_window().unwrap();
        let b = r.mmio_window().unwrap();
        assert_eq!(a, GuestAddress(MMIO_GAP_START));
        assert_eq!(b, GuestAddress(MMIO_GAP_START + MMIO_WINDOW));
        let irqs: Vec<u32> = (0..19).map(|_| r.irq().unwrap()).collect();
        assert_eq!(irqs, (5..=23).collect::<Vec<_>>());
        assert_eq!(r.irq(), Err(ResourceError::NoIrq));
    }

    #[test]
    fn memory_slots_start_after_ram() {
        assert_eq!(GuestResources::new(&ram(256 << 20)).memory_slot(), Ok(1));
        // 4.5 GiB of RAM is two regions, below and above the MMIO gap.
        assert_eq!(GuestResources::new(&ram(4608 << 20)).memory_slot(), Ok(2));
    }

    #[test]
    fn device_memory_sits_above_ram_and_the_gap_in_whole_sections() {
        let mut small = GuestResources::new(&ram(256 << 20));
        assert_eq!(small.device_memory(2 << 20), Ok(GuestAddress(MMIO_GAP_END)));
        assert_eq!(
            small.device_memory(130 << 20),
            Ok(GuestAddress(MMIO_GAP_END + DEVICE_MEMORY_ALIGN))
        );
        assert_eq!(
            small.device_memory(2 << 20),
            Ok(GuestAddress(MMIO_GAP_END + 3 * DEVICE_MEMORY_ALIGN))
        );
        // 4.5 GiB of RAM ends at 5.25 GiB: device memory starts at 6 GiB.
        let mut big = GuestResources::new(&ram(4608 << 20));
        assert_eq!(big.device_memory(2 << 20), Ok(GuestAddress(6 << 30)));
    }

    #[test]
    fn rejects_empty_unaligned_and_oversized_device_memory() {
        let mut r = GuestResources::new(&ram(64 << 20));
        for len in [0, 4096, (2 << 20) + 4096] {
            assert_eq!(r.device_memory(len), Err(ResourceError::BadLength { len }));
        }
        let len = DEVICE_MEMORY_SPAN + (2 << 20);
        assert_eq!(
            r.device_memory(len),
            Err(ResourceError::OutOfAddressSpace { len })
        );
    }
}
