//! husk's in-process KVM virtual machine monitor.
//!
//! `handle` is the API: `VmHandle` builds a VM and runs it on its own thread.
//! `vm` ties the pieces together: `memory` (guest RAM), `boot` (kernel,
//! initrd, command line, boot parameters, MP table, initial CPU state),
//! `kvm_setup` (VM and vCPU ioctls), `resources` (the one allocator of MMIO
//! windows, IRQs, memory slots and device-memory ranges), `device_manager`
//! (virtio devices and their thread), `net` (network cards and their taps),
//! `device_memory` and `pmem` (host mappings above RAM: pmem images,
//! shared-memory windows), `vcpu` (run loop), `metrics` (what a running
//! VM counts: exits by reason, device counters), `compat` (everything
//! for software-KVM hosts: the profile, CPUID, instruction fallbacks, the
//! guest page walker), and `seccomp` (each VMM thread's system-call
//! allowlist).

pub mod boot;
pub mod compat;
pub mod console_watch;
pub mod device_manager;
pub mod device_memory;
pub mod handle;
pub mod kvm_setup;
pub mod layout;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod pmem;
pub mod resources;
pub mod seccomp;
pub mod snapshot;
pub mod testing;
pub mod vcpu;
pub mod vm;

pub use compat::{CompatMode, CompatProfile, HostKvm};
pub use console_watch::{ConsoleWaitError, ConsoleWatch};
pub use device_manager::VsockSpec;
pub use handle::{VmEvent, VmHandle};
pub use husk_devices::fs::{CacheMode, FsConfig};
/// Rate limits for guest-triggered log lines; the binary installs its `log` bridge.
pub use husk_devices::log_budget;
pub use husk_devices::net::{MacAddr, Tap, TapError};
pub use metrics::{ExitReason, VmMetrics};
pub use net::NetSpec;
pub use pmem::PmemSpec;
pub use vm::{ConsoleTarget, RunReport, Vm, VmConfig, VmError, VmOutcome, VmStopper};
