//! Device memory: guest-physical ranges above RAM that are backed by host
//! mappings other than guest RAM, i.e. pmem images and virtio shared-memory
//! windows (the virtio-fs DAX window).
//!
//! Each range gets its own KVM memory slot, so the guest reaches the host
//! mapping with plain loads and stores (no exits), and a read-only slot lets
//! many VMs share one file's page-cache pages. Ranges are handed out upwards
//! from `layout::device_memory_start`, 128 MiB aligned; mappings the VMM owns
//! are kept here for as long as the VM lives.

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap};

use crate::layout::{device_memory_start, DEVICE_MEMORY_ALIGN, DEVICE_MEMORY_GRANULE};

#[derive(Debug, thiserror::Error)]
pub enum DeviceMemoryError {
    #[error(
        "device memory region of {len} bytes is empty or not a multiple of {} MiB",
        DEVICE_MEMORY_GRANULE >> 20
    )]
    BadLength { len: u64 },
    #[error("no guest-physical room for {len} more bytes of device memory")]
    OutOfAddressSpace { len: u64 },
    #[error("cannot register device memory at {addr:#x} ({len} bytes) with KVM: {source}")]
    Slot {
        addr: u64,
        len: u64,
        source: kvm_ioctls::Error,
    },
}

/// How the guest may access a device-memory slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotAccess {
    ReadWrite,
    /// KVM_MEM_READONLY: guest writes exit to the VMM as MMIO and are dropped.
    ReadOnly,
}

/// The device memory of one VM.
pub struct DeviceMemory {
    next_addr: u64,
    next_slot: u32,
    /// Host mappings the VMM made (pmem images), unmapped when the VM ends.
    mappings: Vec<MmapRegion>,
}

impl DeviceMemory {
    /// Device memory above `ram`, using the KVM slots after RAM's.
    pub fn new(ram: &GuestMemoryMmap) -> Self {
        let ram_end = ram.last_addr().0 + 1;
        Self {
            next_addr: device_memory_start(ram_end),
            next_slot: ram.num_regions() as u32,
            mappings: Vec::new(),
        }
    }

    /// Reserves a guest-physical range of `len` bytes.
    pub fn allocate(&mut self, len: u64) -> Result<GuestAddress, DeviceMemoryError> {
        if len == 0 || !len.is_multiple_of(DEVICE_MEMORY_GRANULE) {
            return Err(DeviceMemoryError::BadLength { len });
        }
        let base = self.next_addr;
        let next = base
            .checked_add(len)
            .and_then(|end| end.checked_next_multiple_of(DEVICE_MEMORY_ALIGN))
            .ok_or(DeviceMemoryError::OutOfAddressSpace { len })?;
        self.next_addr = next;
        Ok(GuestAddress(base))
    }

    /// Makes `len` bytes of host memory at `host_addr` the guest's memory at `guest`.
    ///
    /// # Safety
    /// `host_addr..host_addr + len` must stay mapped while any vCPU of `vm` can run.
    pub unsafe fn register(
        &mut self,
        vm: &VmFd,
        guest: GuestAddress,
        host_addr: u64,
        len: u64,
        access: SlotAccess,
    ) -> Result<(), DeviceMemoryError> {
        let region = kvm_userspace_memory_region {
            slot: self.next_slot,
            guest_phys_addr: guest.0,
            memory_size: len,
            userspace_addr: host_addr,
            flags: match access {
                SlotAccess::ReadWrite => 0,
                SlotAccess::ReadOnly => KVM_MEM_READONLY,
            },
        };
        // SAFETY: the caller keeps the host range mapped while the guest can use it.
        unsafe { vm.set_user_memory_region(region) }.map_err(|source| DeviceMemoryError::Slot {
            addr: guest.0,
            len,
            source,
        })?;
        self.next_slot += 1;
        Ok(())
    }

    /// Allocates a range for a mapping the VMM owns, registers it and keeps it.
    pub fn add_mapping(
        &mut self,
        vm: &VmFd,
        mapping: MmapRegion,
        access: SlotAccess,
    ) -> Result<GuestAddress, DeviceMemoryError> {
        let len = mapping.size() as u64;
        let guest = self.allocate(len)?;
        // SAFETY: the mapping is stored in `self`, which `Vm` drops after the VM fd.
        unsafe { self.register(vm, guest, mapping.as_ptr() as u64, len, access)? };
        self.mappings.push(mapping);
        Ok(guest)
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
    fn regions_sit_above_ram_and_the_mmio_gap_aligned() {
        let mut small = DeviceMemory::new(&ram(256 << 20));
        assert_eq!(small.next_slot, 1);
        assert_eq!(small.allocate(2 << 20).unwrap(), GuestAddress(MMIO_GAP_END));
        assert_eq!(
            small.allocate(130 << 20).unwrap(),
            GuestAddress(MMIO_GAP_END + DEVICE_MEMORY_ALIGN)
        );
        assert_eq!(
            small.allocate(2 << 20).unwrap(),
            GuestAddress(MMIO_GAP_END + 3 * DEVICE_MEMORY_ALIGN)
        );
        // 4.5 GiB of RAM ends at 5.25 GiB: device memory starts at 6 GiB.
        let big = DeviceMemory::new(&ram(4608 << 20));
        assert_eq!(big.next_slot, 2);
        assert_eq!(big.next_addr, 6 << 30);
    }

    #[test]
    fn rejects_empty_and_unaligned_lengths() {
        let mut dm = DeviceMemory::new(&ram(64 << 20));
        for len in [0, 4096, (2 << 20) + 4096] {
            assert!(matches!(
                dm.allocate(len),
                Err(DeviceMemoryError::BadLength { .. })
            ));
        }
        dm.next_addr = u64::MAX - (4 << 20);
        assert!(matches!(
            dm.allocate(128 << 20),
            Err(DeviceMemoryError::OutOfAddressSpace { .. })
        ));
    }

    #[test]
    fn registers_each_range_as_its_own_kvm_slot() {
        if !crate::testing::kvm_or_skip("registers_each_range_as_its_own_kvm_slot") {
            return;
        }
        let (_kvm, vm) = crate::kvm_setup::create_vm().unwrap();
        let ram = ram(64 << 20);
        crate::kvm_setup::register_memory(&vm, &ram).unwrap();
        let mut dm = DeviceMemory::new(&ram);
        let image = MmapRegion::new(4 << 20).unwrap();
        let host = image.as_ptr() as u64;
        let a = dm.add_mapping(&vm, image, SlotAccess::ReadOnly).unwrap();
        let window = MmapRegion::new(2 << 20).unwrap();
        let b = dm.add_mapping(&vm, window, SlotAccess::ReadWrite).unwrap();
        assert_eq!(b.0 - a.0, DEVICE_MEMORY_ALIGN);
        assert_eq!(dm.next_slot, 3);
        // KVM refuses a second slot over a range already mapped, and the error says where.
        // SAFETY: `dm` keeps the mapping at `host` alive.
        let err = unsafe { dm.register(&vm, a, host, 2 << 20, SlotAccess::ReadWrite) };
        assert!(
            matches!(err, Err(DeviceMemoryError::Slot { addr, .. }) if addr == a.0),
            "{err:?}"
        );
    }
}
