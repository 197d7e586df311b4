//! The KVM state of a vCPU and of the VM, saved and restored with the
//! KVM_GET_* / KVM_SET_* ioctls.
//!
//! Each KVM struct is kept as its raw bytes (kvm-bindings' zerocopy views):
//! the layout is KVM's own, checked for size when read back. Restore order
//! matters (measured on this workplace's software KVM, and Firecracker's
//! order): cpuid, mp_state, regs, sregs, xsave, xcrs, debugregs, lapic,
//! msrs, vcpu_events; the LAPIC before the MSRs, or a TSC-deadline timer
//! write is dropped and a halted vCPU never wakes. Then the VM: PIT, clock
//! (kvmclock; the guest TSC cannot be set on that KVM, so the guest must
//! run on kvm-clock), irqchip.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, Immutable, IntoBytes};

#[derive(Debug, thiserror::Error)]
pub enum KvmStateError {
    #[error("{what} failed: {source}")]
    Ioctl {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("the snapshot's {what} is {got} bytes, KVM's is {want}")]
    Size {
        what: &'static str,
        want: usize,
        got: usize,
    },
    #[error("KVM saved {got} of the vCPU's {want} MSRs")]
    Msrs { want: usize, got: usize },
}

fn bytes<T: IntoBytes + Immutable>(t: &T) -> Vec<u8> {
    t.as_bytes().to_vec()
}

fn from_bytes<T: FromBytes>(b: &[u8], what: &'static str) -> Result<T, KvmStateError> {
    T::read_from_bytes(b).map_err(|_| KvmStateError::Size {
        what,
        want: std::mem::size_of::<T>(),
        got: b.len(),
    })
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmStateError {
    move |source| KvmStateError::Ioctl { what, source }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    pub mp_state: Vec<u8>,
    pub regs: Vec<u8>,
    pub sregs: Vec<u8>,
    pub xsave: Vec<u8>,
    pub xcrs: Vec<u8>,
    pub debugregs: Vec<u8>,
    pub lapic: Vec<u8>,
    /// (index, value) of every MSR KVM lists.
    pub msrs: Vec<(u32, u64)>,
    pub vcpu_events: Vec<u8>,
}

impl VcpuState {
    /// Saves vCPU `id`; it must be out of KVM_RUN (paused).
    pub fn save(fd: &VcpuFd, id: u8, msr_index: &[u32]) -> Result<Self, KvmStateError> {
        let entries: Vec<kvm_msr_entry> = msr_index
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| KvmStateError::Msrs {
            want: entries.len(),
            got: 0,
        })?;
        let got = fd.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
        if got != entries.len() {
            return Err(KvmStateError::Msrs {
                want: entries.len(),
                got,
            });
        }
        Ok(Self {
            id,
            mp_state: bytes(&fd.get_mp_state().map_err(ioctl("KVM_GET_MP_STATE"))?),
            regs: bytes(&fd.get_regs().map_err(ioctl("KVM_GET_REGS"))?),
            sregs: bytes(&fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?),
            xsave: bytes(&fd.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?),
            xcrs: bytes(&fd.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?),
            debugregs: bytes(&fd.get_debug_regs().map_err(ioctl("KVM_GET_DEBUGREGS"))?),
            lapic: bytes(&fd.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?),
            msrs: msrs.as_slice().iter().map(|e| (e.index, e.data)).collect(),
            vcpu_events: bytes(&fd.get_vcpu_events().map_err(ioctl("KVM_GET_VCPU_EVENTS"))?),
        })
    }

    /// Restores the state into a fresh vCPU with `cpuid`, in KVM's order.
    pub fn restore(&self, fd: &VcpuFd, cpuid: &CpuId) -> Result<(), KvmStateError> {
        fd.set_cpuid2(cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
        let mp: kvm_mp_state = from_bytes(&self.mp_state, "mp_state")?;
        fd.set_mp_state(mp).map_err(ioctl("KVM_SET_MP_STATE"))?;
        fd.set_regs(&from_bytes::<kvm_regs>(&self.regs, "regs")?)
            .map_err(ioctl("KVM_SET_REGS"))?;
        fd.set_sregs(&from_bytes::<kvm_sregs>(&self.sregs, "sregs")?)
            .map_err(ioctl("KVM_SET_SREGS"))?;
        let xsave: kvm_xsave = from_bytes(&self.xsave, "xsave")?;
        // SAFETY: a whole kvm_xsave as KVM_GET_XSAVE returned it, checked for size.
        unsafe { fd.set_xsave(&xsave) }.map_err(ioctl("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&from_bytes::<kvm_xcrs>(&self.xcrs, "xcrs")?)
            .map_err(ioctl("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&from_bytes::<kvm_debugregs>(&self.debugregs, "debugregs")?)
            .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&from_bytes::<kvm_lapic_state>(&self.lapic, "lapic")?)
            .map_err(ioctl("KVM_SET_LAPIC"))?;
        let entries: Vec<kvm_msr_entry> = self
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| KvmStateError::Msrs {
            want: entries.len(),
            got: 0,
        })?;
        let set = fd.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
        if set != entries.len() {
            return Err(KvmStateError::Msrs {
                want: entries.len(),
                got: set,
            });
        }
        fd.set_vcpu_events(&from_bytes::<kvm_vcpu_events>(
            &self.vcpu_events,
            "vcpu_events",
        )?)
        .map_err(ioctl("KVM_SET_VCPU_EVENTS"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: Vec<u8>,
    pub pic_slave: Vec<u8>,
    pub ioapic: Vec<u8>,
    pub pit: Vec<u8>,
    pub clock: Vec<u8>,
}

fn get_chip(fd: &VmFd, chip_id: u32) -> Result<Vec<u8>, KvmStateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut chip)
        .map_err(ioctl("KVM_GET_IRQCHIP"))?;
    Ok(bytes(&chip))
}

fn set_chip(fd: &VmFd, saved: &[u8], chip_id: u32) -> Result<(), KvmStateError> {
    let chip: kvm_irqchip = from_bytes(saved, "irqchip")?;
    if chip.chip_id != chip_id {
        return Err(KvmStateError::Size {
            what: "irqchip id",
            want: chip_id as usize,
            got: chip.chip_id as usize,
        });
    }
    fd.set_irqchip(&chip).map_err(ioctl("KVM_SET_IRQCHIP"))
}

impl VmState {
    pub fn save(fd: &VmFd) -> Result<Self, KvmStateError> {
        Ok(Self {
            pic_master: get_chip(fd, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: get_chip(fd, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: get_chip(fd, KVM_IRQCHIP_IOAPIC)?,
            pit: bytes(&fd.get_pit2().map_err(ioctl("KVM_GET_PIT2"))?),
            clock: bytes(&fd.get_clock().map_err(ioctl("KVM_GET_CLOCK"))?),
        })
    }

    /// PIT, kvmclock, then the interrupt controllers.
    pub fn restore(&self, fd: &VmFd) -> Result<(), KvmStateError> {
        fd.set_pit2(&from_bytes::<kvm_pit_state2>(&self.pit, "pit")?)
            .map_err(ioctl("KVM_SET_PIT2"))?;
        let mut clock: kvm_clock_data = from_bytes(&self.clock, "clock")?;
        // Only the clock value: the flags KVM_GET_CLOCK reports (e.g. the
        // host TSC it read) are not inputs.
        clock.flags = 0;
        fd.set_clock(&clock).map_err(ioctl("KVM_SET_CLOCK"))?;
        set_chip(fd, &self.pic_master, KVM_IRQCHIP_PIC_MASTER)?;
        set_chip(fd, &self.pic_slave, KVM_IRQCHIP_PIC_SLAVE)?;
        set_chip(fd, &self.ioapic, KVM_IRQCHIP_IOAPIC)
    }
}
