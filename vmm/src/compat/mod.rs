//! Everything husk does for hosts whose /dev/kvm is software (`kvm_pvm`).
//!
//! `profile` decides whether the host needs help and what the guest is told
//! (CPUID masks, kernel command-line flags); `cpuid` builds the guest's CPUID
//! from the host's, with the profile's masks; `insn_fallback` and
//! `xsave_fallback` complete instructions the host's KVM cannot emulate;
//! `guest_walk` reads guest memory through the guest's page tables, which
//! both fallbacks and the failure reports need. On hardware KVM only
//! `cpuid` (without masks) is used.

pub mod cpuid;
pub mod guest_walk;
pub mod insn_fallback;
pub mod profile;
pub mod xsave_fallback;

pub use profile::{CompatMode, CompatProfile, CpuidBit, CpuidReg, HostKvm};
