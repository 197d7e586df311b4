//! husk's agent API, shared by the runtime (client) and husk-agent (server):
//! the messages and the `husk.agent.v1.AgentService` ttrpc service, generated
//! at build time from `proto/agent.proto`.
//!
//! - [`agent`]: the messages (`CreateContainerRequest`, `GuestDetails`, ...).
//! - [`agent_ttrpc`]: `AgentServiceClient` (sync), the `AgentService` trait a
//!   server implements, and `create_agent_service` to register it.

pub use protobuf;
pub use ttrpc;

/// The protobuf messages of `husk.agent.v1`.
#[allow(warnings, clippy::all, clippy::pedantic)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// The ttrpc client and server glue of `husk.agent.v1.AgentService`.
#[allow(warnings, clippy::all, clippy::pedantic)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

/// The vsock port the agent listens on in the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;
