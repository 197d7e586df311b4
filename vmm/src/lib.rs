//! husk's in-process KVM virtual machine monitor.
//!
//! `vm` ties the pieces together: `memory` (guest RAM), `boot` (kernel,
//! initrd, boot parameters, MP table, initial CPU state), `kvm_setup` (VM and
//! vCPU ioctls), `device_memory` and `pmem` (host mappings above RAM: pmem
//! images, shared-memory windows), `cpuid` and `compat` (what the guest CPU looks like, and the
//! profile for software-KVM hosts), `vcpu` (run loop), `guest_walk`
//! (reading guest memory through the guest's page tables) and
//! `insn_fallback` (instructions the host's KVM cannot emulate).

pub mod boot;
pub mod compat;
pub mod cpuid;
pub mod device_manager;
pub mod device_memory;
pub mod guest_walk;
pub mod insn_fallback;
pub mod kvm_setup;
pub mod layout;
pub mod memory;
pub mod pmem;
pub mod testing;
pub mod vcpu;
pub mod vm;
pub mod xsave_fallback;

pub use compat::{CompatMode, CompatProfile, HostKvm};
pub use device_manager::VsockSpec;
pub use husk_devices::fs::{CacheMode, FsConfig};
pub use pmem::PmemSpec;
pub use vm::{ConsoleTarget, RunReport, Vm, VmConfig, VmError, VmOutcome};
