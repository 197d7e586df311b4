//! VM snapshots, the ground of templates: boot once, snapshot the booted
//! agent VM, and start every later VM from it.
//!
//! - `format`: the template directory (header, state, memory) and its checks.
//! - `kvm_state`: vCPU and VM state through KVM's ioctls, in restore order.
//! - `memory`: guest RAM to a sparse file, and mapped back MAP_PRIVATE.
//!
//! Taking a snapshot (`Vm`'s control loop) pauses every vCPU at the top of
//! its run loop, where no instruction is half-completed by the VMM, with
//! one KVM_RUN under `immediate_exit` so KVM finishes any pending port or
//! MMIO access first; then the device thread stops, and devices, VM and
//! memory are written. The template VM ends there.

pub mod format;
pub mod kvm_state;
pub mod memory;

pub use format::{Template, TemplateError, TemplateHeader, VmSnapshot};
