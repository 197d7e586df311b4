//! The one place where the agent's failures become ttrpc statuses. Every
//! handler returns `Result<_, RpcError>`; the variant picks the code the host
//! sees and the message says what was wrong with which request.

use husk_agent_protocol::ttrpc::{self, Code};

use crate::container::ContainerError;

/// A failed RPC, named for the ttrpc code it becomes.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Internal(String),
}

impl RpcError {
    fn code(&self) -> Code {
        match self {
            RpcError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            RpcError::NotFound(_) => Code::NOT_FOUND,
            RpcError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            RpcError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            RpcError::Unimplemented(_) => Code::UNIMPLEMENTED,
            RpcError::Internal(_) => Code::INTERNAL,
        }
    }
}

impl From<RpcError> for ttrpc::Error {
    fn from(e: RpcError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

/// The engine's errors, by what the host should make of them.
impl From<ContainerError> for RpcError {
    fn from(e: ContainerError) -> Self {
        let text = e.to_string();
        match e {
            ContainerError::InvalidId(_)
            | ContainerError::InvalidSpec(_)
            | ContainerError::MissingRootfs(_)
            | ContainerError::InvalidSignal(_) => RpcError::InvalidArgument(text),
            ContainerError::NotFound(_) | ContainerError::ExecNotFound { .. } => {
                RpcError::NotFound(text)
            }
            ContainerError::AlreadyExists(_) | ContainerError::ExecAlreadyExists { .. } => {
                RpcError::AlreadyExists(text)
            }
            ContainerError::AlreadyStarted(_)
            | ContainerError::NotRunning(_)
            | ContainerError::StdinClosed
            | ContainerError::NoTerminal
            | ContainerError::Busy(_) => RpcError::FailedPrecondition(text),
            ContainerError::Unsupported(_) => RpcError::Unimplemented(text),
            ContainerError::Cgroup { .. }
            | ContainerError::SpawnFailed(_)
            | ContainerError::Io { .. } => RpcError::Internal(text),
        }
    }
}

/// Logs a failed call with its method name and turns it into a ttrpc error.
pub fn reply<T>(method: &str, result: Result<T, RpcError>) -> ttrpc::Result<T> {
    result.map_err(|e| {
        tracing::warn!(method, code = ?e.code(), "{e}");
        e.into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_variant_carries_its_code_and_message() {
        let e: ttrpc::Error = RpcError::NotFound("container \"x\" does not exist".into()).into();
        match e {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::NOT_FOUND);
                assert_eq!(s.message(), "container \"x\" does not exist");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            RpcError::FailedPrecondition(String::new()).code(),
            Code::FAILED_PRECONDITION
        );
    }
}
