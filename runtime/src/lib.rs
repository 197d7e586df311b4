//! husk-runtime as a library: the parts of the runtime that integration
//! tests and later the shim share with the `husk` binary.
//!
//! - `agent_client`: reaching husk-agent in the guest over the vsock bridge.
pub mod agent_client;
