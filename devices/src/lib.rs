//! husk's device models.
//!
//! `bus` routes guest port and MMIO accesses to devices; `legacy` holds the
//! PC devices a Linux guest expects to find (16550 serial console, i8042 reset
//! line). `virtio` is the virtio-mmio transport and device contract; virtio
//! devices follow, one folder per device (`vsock`, `fs`, `pmem`, `net`).

pub mod bus;
pub mod fs;
pub mod legacy;
pub mod log_budget;
pub mod net;
pub mod pmem;
pub mod virtio;
pub mod vsock;
