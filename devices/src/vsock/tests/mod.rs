//! Harness tests for the vsock device: a scripted guest driver on one side
//! (`GuestDriver` over mock memory), real host Unix sockets on the other, and
//! the real event-manager loop in between, driven packet by packet.

mod flows;
mod hostile;
mod layouts;
mod snapshot;

pub(super) use super::harness::*;
