//! Device memory: guest-physical ranges above RAM that are backed by host
//! mappings other than guest RAM, i.e. pmem images and virtio shared-memory
//! windows (the virtio-fs DAX window).
//!
//! Each range gets its own KVM memory slot, so the guest reaches the host
//! mapping with plain loads and stores (no exits), and a read-only slot lets
//! many VMs share one file's page-cache pages. Ranges and slots come from the
//! VM's `GuestResources`; mappings the VMM owns are kept here for as long as
//! the VM lives.

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegion;
use vm_memory::GuestAddress;

use crate::resources::{GuestResources, ResourceError};

#[derive(Debug, thiserror::Error)]
pub enum DeviceMemoryError {
    #[error(transparent)]
    Resource(#[from] ResourceError),
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

/// The host mappings behind a VM's device memory (pmem images), kept until
/// the VM ends; addresses and slots come from the VM's `GuestResources`.
#[derive(Default)]
pub struct DeviceMemory {
    mappings: Vec<MmapRegion>,
}

impl DeviceMemory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `len` bytes of host memory at `host_addr` the guest's memory at
    /// `guest`, in a slot of its own.
    ///
    /// # Safety
    /// `host_addr..host_addr + len` must stay mapped while any vCPU of `vm` can run.
    pub unsafe fn register(
        &mut self,
        vm: &VmFd,
        res: &mut GuestResources,
        guest: GuestAddress,
        host_addr: u64,
        len: u64,
        access: SlotAccess,
    ) -> Result<(), DeviceMemoryError> {
        let region = kvm_userspace_memory_region {
            slot: res.memory_slot()?,
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
        })
    }

    /// Allocates a range for a mapping the VMM owns, registers it and keeps it.
    pub fn add_mapping(
        &mut self,
        vm: &VmFd,
        res: &mut GuestResources,
        mapping: MmapRegion,
        access: SlotAccess,
    ) -> Result<GuestAddress, DeviceMemoryError> {
        let len = mapping.size() as u64;
        let guest = res.device_memory(len)?;
        // SAFETY: the mapping is stored in `self`, which `Vm` drops after the VM fd.
        unsafe { self.register(vm, res, guest, mapping.as_ptr() as u64, len, access)? };
        self.mappings.push(mapping);
        Ok(guest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::DEVICE_MEMORY_ALIGN;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn registers_each_range_as_its_own_kvm_slot() {
        if !crate::testing::kvm_or_skip("registers_each_range_as_its_own_kvm_slot") {
            return;
        }
        let (_kvm, vm) = crate::kvm_setup::create_vm().unwrap();
        let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        crate::kvm_setup::register_memory(&vm, &ram).unwrap();
        let mut res = GuestResources::new(&ram);
        let mut dm = DeviceMemory::new();
        let image = MmapRegion::new(4 << 20).unwrap();
        let host = image.as_ptr() as u64;
        let a = dm
            .add_mapping(&vm, &mut res, image, SlotAccess::ReadOnly)
            .unwrap();
        let window = MmapRegion::new(2 << 20).unwrap();
        let b = dm
            .add_mapping(&vm, &mut res, window, SlotAccess::ReadWrite)
            .unwrap();
        assert_eq!(b.0 - a.0, DEVICE_MEMORY_ALIGN);
        assert_eq!(res.memory_slot(), Ok(3));
        // KVM refuses a second slot over a range already mapped, and the error says where.
        // SAFETY: `dm` keeps the mapping at `host` alive.
        let err = unsafe { dm.register(&vm, &mut res, a, host, 2 << 20, SlotAccess::ReadWrite) };
        assert!(
            matches!(err, Err(DeviceMemoryError::Slot { addr, .. }) if addr == a.0),
            "{err:?}"
        );
    }
}
