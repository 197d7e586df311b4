//! husk's guest side: husk-agent, PID 1 in the VM, and the guest self-test
//! program (`bin/husk-guest-selftest.rs`).
//!
//! - `init`: PID-1 duties (mounts, cgroup controllers, power-off on fatal errors).
//! - `reaper`: the process-wide child reaper.
//! - `container`: the container engine (OCI spec -> namespaced, cgrouped process).
//! - `network`: the guest's NIC and routes, as the pod's interface has them.
//! - `fd_limit`: the agent's raised open-file limit, and containers' own.
//! - `sched_slice`: a longer scheduler slice when the host asks (software KVM).
//! - `rpc`: the ttrpc server for `husk.agent.v1.AgentService`.
//! - `guest_details`: what GetGuestDetails reports.
//! - `ready`: telling the host the agent serves.
pub mod container;
pub mod fd_limit;
pub mod guest_details;
pub mod init;
pub mod network;
pub mod ready;
pub mod reaper;
pub mod rpc;
pub mod sched_slice;
