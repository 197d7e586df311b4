//! husk's device models.
//!
//! `bus` routes guest port and MMIO accesses to devices; `legacy` holds the
//! PC devices a Linux guest expects to find (16550 serial console, i8042 reset
//! line). Virtio devices follow, one folder per device.

pub mod bus;
pub mod legacy;
