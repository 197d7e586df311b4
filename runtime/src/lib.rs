//! husk-runtime as a library: the parts of the runtime that the `husk`
//! binary, the shim and the integration tests share.
//!
//! - `agent_client`: reaching husk-agent in the guest over the vsock bridge.
//! - `config`: husk's configuration file.
//! - `network`: pod networking (a tap in the pod's netns joined to the CNI
//!   interface by tc redirects; what the guest's NIC must copy).
//! - `sandbox`: a VM with its agent, and the containers in it.
//! - `seccomp`: the runtime threads' system-call allowlist.
//! - `shim`: `containerd-shim-husk-v2`.
//! - `stdio`: a guest process's streams bridged to FIFOs or host streams.
//! - `template`: starting sandboxes from a snapshot of a booted agent VM.
//! - `size`: human memory sizes.
pub mod agent_client;
pub mod config;
pub mod network;
pub mod sandbox;
pub mod seccomp;
pub mod shim;
pub mod size;
pub mod stdio;
pub mod template;
