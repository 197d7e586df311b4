//! Everything written into the guest before its first instruction.

pub mod cmdline;
pub mod cpu_state;
pub mod kernel;
pub mod mptable;
pub mod params;
