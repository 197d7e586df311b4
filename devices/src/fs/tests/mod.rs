//! Harness tests for the virtio-fs device: a scripted guest driver sends real
//! FUSE requests over mock guest memory to the device, which serves a temp
//! directory; results are compared with what the host sees in that directory.

mod config;
mod confinement;
mod dax;
mod flood;
mod hostile;
mod ops;
mod policy;
mod space;

pub(super) use super::harness::*;
pub(super) use vm_memory::ByteValued;
