//! A sandbox: one VM (run by the embedded VMM in this process), the agent
//! in it, and its directory on the host. The shim and `husk run` both hold
//! one and add containers to it.
//!
//! - `boot`: starting the VM and waiting for the agent's ready call; the
//!   metrics endpoint (`metrics.sock`) serves from the start of the boot.
//! - `container`: adding and removing containers (host mounts + agent RPCs).
//! - `dir`: the sandbox's host directory layout.
//! - `host`: the host resources a sandbox holds (cgroup, pod network),
//!   recorded for cleanup after a crash; `host_cgroup`: the cgroup part.
//! - `mounts`: host mount handling (rootfs, binds, teardown).
//! - `size`: the VM's vCPUs and memory.
//! - `spec`: the bundle's OCI spec and the guest's version of it.

mod boot;
mod container;
pub mod dir;
mod ended;
pub mod host;
pub mod host_cgroup;
pub mod mounts;
pub mod size;
pub mod spec;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use husk_agent_protocol::agent;
use husk_agent_protocol::ttrpc;
use husk_vmm::VmHandle;

pub use boot::{
    guest_vm_config, sandbox_vm_signature, start_and_wait_ready, BootTimings, SandboxSettings,
};
pub use container::NewContainer;
pub use dir::SandboxDir;

use crate::agent::Agent;
use crate::agent_client::AgentConnectError;
use crate::config::ConfigError;
use crate::metrics::{MetricsServer, SandboxMetrics};

/// Timeout of an agent RPC that should answer at once. Generous: on a
/// software-KVM host every guest system call costs ~300 us.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(120);

/// Timeout of an agent RPC that makes the guest do real work: creating,
/// starting or removing a container, starting an exec. That costs tens of
/// seconds of emulated guest kernel time on a software-KVM host, and
/// several times more while other VMs or builds share its cores. containerd
/// sets no deadline on Create; on the CRI path kubelet's own (2 to 4
/// minutes) ends the request first.
pub const GUEST_WORK_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Size(#[from] size::SizeError),
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    #[error("sandbox {id}: cannot start its VM: {source}")]
    Vm {
        id: String,
        source: husk_vmm::VmError,
    },
    #[error("sandbox {id}: the VM ended before the agent was ready ({how}); last console lines:\n{console}")]
    GuestEnded {
        id: String,
        how: String,
        console: String,
    },
    #[error(
        "sandbox {id}: the agent was not ready after {secs} s; last console lines:\n{console}"
    )]
    AgentTimeout {
        id: String,
        secs: u64,
        console: String,
    },
    #[error("sandbox {id}: waiting for the agent: {source}")]
    Ready { id: String, source: std::io::Error },
    #[error("sandbox {id}: reaching the agent: {source}")]
    Agent {
        id: String,
        source: AgentConnectError,
    },
    #[error("{what}: the agent said: {message}")]
    Rpc { what: String, message: String },
    #[error("{what}: the sandbox's VM ended ({why})")]
    VmEnded { what: String, why: String },
    #[error("template: {0}")]
    Template(String),
    #[error("sandbox {id}: {source}")]
    Host { id: String, source: host::HostError },
}

impl SandboxError {
    /// An agent RPC failed; the agent's status message is kept as is.
    pub fn rpc(what: impl Into<String>, e: ttrpc::Error) -> Self {
        let message = match e {
            ttrpc::Error::RpcStatus(s) => s.message().to_string(),
            other => other.to_string(),
        };
        SandboxError::Rpc {
            what: what.into(),
            message,
        }
    }
}

pub struct Sandbox {
    id: String,
    dir: SandboxDir,
    vm: Mutex<Option<VmHandle>>,
    agent: Agent,
    timings: BootTimings,
    host: Mutex<host::HostResources>,
    metrics: Arc<SandboxMetrics>,
    /// `<dir>/metrics.sock`; none if it could not be bound (logged).
    metrics_server: Mutex<Option<MetricsServer>>,
}

pub fn ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(timeout.as_nanos() as i64)
}

/// How long a failed agent call gives the VM's thread to finish before
/// the failure is put down to the agent connection alone (the guest's
/// connections close a little before the VM's thread is done).
pub const VM_END_GRACE: Duration = Duration::from_secs(2);

/// No timeout: for calls that block until something happens (Wait, Read*).
pub fn blocking_ctx() -> ttrpc::context::Context {
    ttrpc::context::Context::default()
}

impl Sandbox {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &SandboxDir {
        &self.dir
    }

    /// The agent's client (cheap to clone; calls may run concurrently).
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The sandbox's metrics (served on `metrics.sock`); callers mark the
    /// container phases they reach.
    pub fn metrics(&self) -> &Arc<SandboxMetrics> {
        &self.metrics
    }

    pub fn timings(&self) -> &BootTimings {
        &self.timings
    }

    /// Whether the VM has ended (on its own: a guest panic, a power-off; or
    /// by `shutdown`).
    pub fn vm_ended(&self) -> bool {
        self.vm().as_ref().is_none_or(VmHandle::is_finished)
    }

    /// Stops the VM from any thread (e.g. a signal handler thread); the
    /// agent calls in flight then fail and the holder cleans up.
    pub fn stopper(&self) -> SandboxStopper {
        SandboxStopper(self.vm().as_ref().and_then(|vm| vm.stopper().ok()))
    }

    fn vm(&self) -> std::sync::MutexGuard<'_, Option<VmHandle>> {
        self.vm.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An agent call's failure, named by why the VM ended if it has (a
    /// caller then learns of the guest's panic, not of a closed socket).
    /// Only a failed transport waits for the VM: an answer from the agent
    /// came from a live guest.
    pub fn rpc_error(&self, what: impl Into<String>, e: ttrpc::Error) -> SandboxError {
        if matches!(e, ttrpc::Error::RpcStatus(_)) {
            return SandboxError::rpc(what, e);
        }
        match self.end_reason(VM_END_GRACE) {
            Some(why) => SandboxError::VmEnded {
                what: what.into(),
                why,
            },
            None => SandboxError::rpc(what, e),
        }
    }

    /// Why the VM ended, once it has; waits up to `grace` for its thread to
    /// finish (an agent call fails the moment the guest's connections
    /// close, a little before the VM's thread is done). None while it runs.
    pub fn end_reason(&self, grace: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + grace;
        while !self.vm_ended() {
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(ended::end_reason(&self.console_tail(40)))
    }

    /// The last lines of the guest console, for error reports.
    pub fn console_tail(&self, lines: usize) -> String {
        boot::console_tail(&self.dir, lines)
    }

    /// Ends the sandbox: the agent tears its containers down (best effort),
    /// the VM stops, and the sandbox directory goes, mounts and all.
    pub fn shutdown(&self) -> Result<(), SandboxError> {
        self.stop_vm();
        self.release_host();
        self.stop_metrics();
        self.dir.remove()?;
        Ok(())
    }

    fn stop_metrics(&self) {
        self.metrics_server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// The pod network and host cgroup go once the VM is gone.
    fn release_host(&self) {
        self.host
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release();
    }

    fn stop_vm(&self) {
        let Some(vm) = self.vm().take() else {
            return;
        };
        if !vm.is_finished() {
            let req = agent::DestroySandboxRequest {
                sandbox_id: self.id.clone(),
                ..Default::default()
            };
            if let Err(e) = self
                .agent
                .destroy_sandbox(ctx(Duration::from_secs(10)), &req)
            {
                tracing::debug!(sandbox = %self.id, "DestroySandbox: {e}");
            }
        }
        vm.stop();
        match vm.wait() {
            Ok(report) => tracing::info!(sandbox = %self.id, outcome = ?report.outcome, "VM ended"),
            Err(e) => tracing::warn!(sandbox = %self.id, "VM ended: {e}"),
        }
    }
}

pub struct SandboxStopper(Option<husk_vmm::VmStopper>);

impl SandboxStopper {
    pub fn stop(&self) {
        if let Some(s) = &self.0 {
            s.stop();
        }
    }
}

impl Drop for Sandbox {
    /// A sandbox dropped without `shutdown` (an error path) still leaves
    /// nothing behind.
    fn drop(&mut self) {
        if self.vm().is_some() {
            self.stop_vm();
            self.release_host();
            self.stop_metrics();
            if let Err(e) = self.dir.remove() {
                tracing::warn!(sandbox = %self.id, "removing the sandbox directory: {e}");
            }
        }
    }
}
