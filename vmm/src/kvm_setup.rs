//! The KVM ioctls that turn a fresh VM fd into a PC-like machine.
//!
//! In-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT, guest memory slots, and
//! per-vCPU state: CPUID, MSRs, FPU, LAPIC LINT pins and the boot registers.

use std::sync::Once;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use crate::boot::cpu_state;
use crate::boot::kernel::KernelEntry;
use crate::compat::cpuid;
use crate::compat::CompatProfile;
use crate::vcpu::kick_signal;

/// Where KVM may put the TSS it needs for real-mode emulation: just below the BIOS.
const TSS_ADDR: usize = 0xfffb_d000;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

#[derive(Debug, thiserror::Error)]
pub enum KvmSetupError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    Open(kvm_ioctls::Error),
    #[error("cannot create a KVM VM: {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("cannot set up the in-kernel interrupt controller: {0}")]
    Irqchip(kvm_ioctls::Error),
    #[error("cannot set up the in-kernel PIT: {0}")]
    Pit(kvm_ioctls::Error),
    #[error("cannot set the TSS address: {0}")]
    Tss(kvm_ioctls::Error),
    #[error("cannot register guest memory at {addr:#x} with KVM: {source}")]
    MemorySlot {
        addr: u64,
        source: kvm_ioctls::Error,
    },
    #[error("cannot read the CPUID KVM supports: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
    #[error("cannot create vCPU: {0}")]
    CreateVcpu(kvm_ioctls::Error),
    #[error("cannot configure vCPU {cpu}: {what}: {source}")]
    Vcpu {
        cpu: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot register an interrupt eventfd: {0}")]
    Irqfd(kvm_ioctls::Error),
}

/// Opens /dev/kvm and creates a VM with the in-kernel irqchip and PIT.
pub fn create_vm() -> Result<(Kvm, VmFd), KvmSetupError> {
    let kvm = Kvm::new().map_err(KvmSetupError::Open)?;
    let fd = kvm.create_vm().map_err(KvmSetupError::CreateVm)?;
    fd.set_tss_address(TSS_ADDR).map_err(KvmSetupError::Tss)?;
    fd.create_irq_chip().map_err(KvmSetupError::Irqchip)?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    fd.create_pit2(pit).map_err(KvmSetupError::Pit)?;
    Ok((kvm, fd))
}

/// Makes every region of `mem` guest-physical memory of the VM.
pub fn register_memory(fd: &VmFd, mem: &GuestMemoryMmap) -> Result<(), KvmSetupError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .expect("a region's start is inside guest memory");
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the host range belongs to `mem`, which the VM keeps alive for
        // as long as the VM fd exists (both live in `Vm`).
        unsafe { fd.set_user_memory_region(region_desc) }.map_err(|source| {
            KvmSetupError::MemorySlot {
                addr: region.start_addr().0,
                source,
            }
        })?;
    }
    Ok(())
}

pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, KvmSetupError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(KvmSetupError::SupportedCpuid)
}

/// Configures vCPU `id` of `count`; the boot vCPU also gets `boot` = (entry, boot info address).
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    id: u8,
    count: u8,
    supported: &CpuId,
    profile: Option<&CompatProfile>,
    boot: Option<(&KernelEntry, GuestAddress)>,
) -> Result<(), KvmSetupError> {
    let err = |what| {
        move |source| KvmSetupError::Vcpu {
            cpu: id,
            what,
            source,
        }
    };
    let mut cpuid = supported.clone();
    cpuid::filter(&mut cpuid, id, count, profile);
    vcpu.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;
    vcpu.set_msrs(&cpu_state::boot_msrs())
        .map_err(err("KVM_SET_MSRS"))?;
    vcpu.set_fpu(&cpu_state::fpu())
        .map_err(err("KVM_SET_FPU"))?;
    let mut lapic = vcpu.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))?;
    if let Some((entry, boot_info)) = boot {
        let sregs = vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?;
        vcpu.set_sregs(&cpu_state::sregs(entry, sregs))
            .map_err(err("KVM_SET_SREGS"))?;
        vcpu.set_regs(&cpu_state::regs(entry, boot_info))
            .map_err(err("KVM_SET_REGS"))?;
    }
    Ok(())
}

// LAPIC registers are little-endian u32s inside KVM's byte array; delivery mode is bits 8-10.
fn set_lvt_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let bytes: [u8; 4] = std::array::from_fn(|i| regs[offset + i] as u8);
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().into_iter().enumerate() {
        regs[offset + i] = b as std::os::raw::c_char;
    }
}

/// Installs the no-op handler for the signal that kicks vCPUs out of KVM_RUN.
pub fn install_kick_handler() {
    static ONCE: Once = Once::new();
    extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    ONCE.call_once(|| {
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick) {
            tracing::error!("cannot install the vCPU kick handler: {e}");
        }
    });
}
