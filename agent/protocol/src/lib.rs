//! husk's agent API, shared by the runtime (client) and husk-agent (server):
//! the messages and the `husk.agent.v1.AgentService` ttrpc service, generated
//! at build time from `proto/agent.proto`.
//!
//! - [`agent`]: the messages (`CreateContainerRequest`, `GuestDetails`, ...).
//! - [`agent_ttrpc`]: `AgentServiceClient` (sync), the `AgentService` trait a
//!   server implements, and `create_agent_service` to register it.
//! - `agent_ttrpc_async` (feature `async-client`): the async
//!   `AgentServiceClient` the runtime uses; ttrpc's sync client polls its
//!   connection every 10 ms, the async one waits on tokio's reactor.

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

/// The async client of `husk.agent.v1.AgentService`.
#[cfg(feature = "async-client")]
#[allow(warnings, clippy::all, clippy::pedantic)]
pub mod agent_ttrpc_async {
    include!(concat!(env!("OUT_DIR"), "/async/agent_ttrpc.rs"));
}

/// The vsock port the agent listens on in the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The host port the agent connects to once it serves, to say it is ready
/// (`READY <agent version>\n`): the runtime waits on that connection instead
/// of retrying until the agent answers.
pub const READY_VSOCK_PORT: u32 = 1025;

/// Where the agent mounts the sandbox's shared directory (virtio-fs).
pub const GUEST_SHARED_DIR: &str = "/run/husk/shared";

/// Whether `id` may name a container or process: the id becomes a
/// directory name on the host and in the guest, so 1-128 of
/// `[A-Za-z0-9_.-]`, not starting with `.` (containerd's rule is stricter).
/// The agent and the shim both check with this.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}
