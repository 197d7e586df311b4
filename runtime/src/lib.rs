//! husk-runtime as a library: the parts of the runtime that the `husk`
//! binary, the shim and the integration tests share.
//!
//! - `agent`: a sandbox's agent client, every call timed for the metrics.
//! - `agent_client`: reaching husk-agent in the guest over the vsock bridge.
//! - `config`: husk's configuration file.
//! - `metrics`: each sandbox's Prometheus endpoint (`metrics.sock`).
//! - `network`: pod networking (a tap in the pod's netns joined to the CNI
//!   interface by tc redirects; what the guest's NIC must copy).
//! - `procfs`: a process's memory (split guest / husk), threads and CPU
//!   time, and the host's available memory, from /proc.
//! - `sandbox`: a VM with its agent, and the containers in it.
//! - `seccomp`: the runtime threads' system-call allowlist.
//! - `shim`: `containerd-shim-husk-v2`.
//! - `stdio`: a guest process's streams bridged to FIFOs or host streams.
//! - `template`: starting sandboxes from a snapshot of a booted agent VM.
//! - `size`: human memory sizes.
pub mod agent;
pub mod agent_client;
pub mod agent_io;
pub mod config;
pub mod metrics;
pub mod network;
pub mod procfs;
pub mod sandbox;
pub mod seccomp;
pub mod shim;
pub mod size;
pub mod stdio;
pub mod template;
