//! Harness tests for the net device: a scripted guest driver on one side
//! (`GuestDriver` over mock memory), a real tap in a private network
//! namespace (or no tap) on the other, and the real event-manager loop in
//! between.

mod backend;
mod config;
mod hostile;
mod rx;
mod snapshot;
mod tap;
mod tx;

pub(super) use super::harness::*;
pub(super) use super::tap_rig::{in_private_netns, tap_or_skip, TapRig};
