//! husk's guest side. For now: the guest self-test program that proves guest
//! user space works under husk (see `bin/husk-guest-selftest.rs`).

pub mod container;
pub mod reaper;
