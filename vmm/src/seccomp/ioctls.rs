//! The ioctl requests the VMM's confined threads make, numbered as
//! kvm-ioctls numbers them (its own constants are private), so the vCPU
//! and control lists can name each one instead of every KVM ioctl.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msrs,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVMIO,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_iow_nr!(KVM_SET_XSAVE, KVMIO, 0xa5, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);

/// What a vCPU thread asks of its vCPU fd: run it, read and complete the
/// instructions KVM cannot emulate (registers, FPU/XSAVE state, exceptions
/// to inject), and save its state for a snapshot.
pub fn vcpu_requests() -> Vec<u64> {
    vec![
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_SET_REGS(),
        KVM_GET_SREGS(),
        KVM_GET_FPU(),
        KVM_GET_XCRS(),
        KVM_GET_XSAVE(),
        KVM_SET_XSAVE(),
        KVM_GET_VCPU_EVENTS(),
        KVM_SET_VCPU_EVENTS(),
        KVM_GET_MSRS(),
        KVM_GET_MP_STATE(),
        KVM_GET_DEBUGREGS(),
        KVM_GET_LAPIC(),
    ]
}

/// What the control thread asks of the VM fd: the VM-wide state a
/// snapshot saves (interrupt controllers, PIT, kvmclock).
pub fn control_requests() -> Vec<u64> {
    vec![KVM_GET_IRQCHIP(), KVM_GET_PIT2(), KVM_GET_CLOCK()]
}

/// An ioctl request's type byte (bits 8..16): KVM's is 0xAE.
pub const TYPE_MASK: u64 = 0xff00;
/// KVM's ioctls, all of them (the runtime builds and restores VMs).
pub const KVM_TYPE: u64 = (KVMIO as u64) << 8;
/// 'T': terminals (TCGETS, TIOCGWINSZ, ...), tun/tap (TUNSETIFF, ...)
/// and FIONBIO/FIOCLEX.
pub const TTY_TUN_TYPE: u64 = (b'T' as u64) << 8;
