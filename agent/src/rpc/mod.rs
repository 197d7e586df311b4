//! The agent's ttrpc server: `husk.agent.v1.AgentService` (see
//! agent/protocol/proto/agent.proto) on vsock in the guest, or on a Unix
//! socket when run on a host for tests.
//!
//! - `service`: the trait implementation, one thin method per RPC.
//! - `containers`: the container RPCs on the engine (`crate::container`).
//! - `rootfs_mount`: the rootfs mount CreateContainer may ask for.
//! - `requests`: request validation (`TryFrom` into checked types).
//! - `sandbox`: guest-wide sandbox state.
//! - `network`: the guest's NIC and routes (UpdateInterface, UpdateRoutes).
//! - `restored`: a clone of a template becoming itself (clock, entropy).
//! - `status`: how failures become ttrpc codes.

mod containers;
mod network;
mod requests;
mod restored;
mod rootfs_mount;
mod sandbox;
mod service;
mod status;

use std::sync::Arc;

use husk_agent_protocol::agent_ttrpc::create_agent_service;
use husk_agent_protocol::ttrpc;

pub use sandbox::GuestScope;
pub use service::AgentRpc;

/// The default listen address: any CID, port 1024.
pub fn default_listen_address() -> String {
    format!("vsock://-1:{}", husk_agent_protocol::AGENT_VSOCK_PORT)
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listen address {0:?} is neither vsock://CID:PORT nor unix:///PATH")]
    BadAddress(String),
    #[error("listening on {address}: {source}")]
    Listen {
        address: String,
        source: ttrpc::Error,
    },
    #[error("starting the ttrpc server on {address}: {source}")]
    Start {
        address: String,
        source: ttrpc::Error,
    },
}

/// Binds `address` and serves `service` on ttrpc's worker threads; the
/// returned server keeps serving until dropped or shut down.
pub fn serve(address: &str, service: Arc<AgentRpc>) -> Result<ttrpc::Server, ServeError> {
    if !(address.starts_with("vsock://") || address.starts_with("unix:///")) {
        return Err(ServeError::BadAddress(address.to_string()));
    }
    let mut server = ttrpc::Server::new()
        .bind(address)
        .map_err(|source| ServeError::Listen {
            address: address.to_string(),
            source,
        })?
        .register_service(create_agent_service(service));
    server.start().map_err(|source| ServeError::Start {
        address: address.to_string(),
        source,
    })?;
    tracing::info!("husk-agent: serving ttrpc on {address}");
    Ok(server)
}
