//! The sandbox: the one pod this guest exists for. CreateSandbox names it
//! (and sets the guest's hostname), container RPCs require it, and
//! DestroySandbox ends it. Kept apart from the container engine because it is
//! guest-wide state, not a container's.

use std::path::PathBuf;
use std::sync::Mutex;

use husk_agent_protocol::GUEST_SHARED_DIR;

use super::requests::{checked_id, RootfsMount, RootfsSpec};
use super::rootfs_mount::{mount_rootfs, MountedRootfs};
use super::status::RpcError;

/// Whether the agent may change guest-wide settings such as the hostname:
/// only as the guest's PID 1, never when run on a host for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestScope {
    OwnsTheGuest,
    HostTest,
}

pub struct Sandbox {
    scope: GuestScope,
    id: Mutex<Option<String>>,
    /// The sandbox's shared directory, mounted at GUEST_SHARED_DIR.
    shared: Mutex<Option<MountedRootfs>>,
}

impl Sandbox {
    pub fn new(scope: GuestScope) -> Self {
        Sandbox {
            scope,
            id: Mutex::new(None),
            shared: Mutex::new(None),
        }
    }

    pub fn scope(&self) -> GuestScope {
        self.scope
    }

    pub fn create(
        &self,
        sandbox_id: &str,
        hostname: &str,
        shared_fs_tag: &str,
    ) -> Result<(), RpcError> {
        let sandbox_id = checked_id("sandbox_id", sandbox_id)?;
        let mut current = self.id.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = current.as_ref() {
            return Err(RpcError::AlreadyExists(format!(
                "this guest already runs sandbox {existing}"
            )));
        }
        if !hostname.is_empty() {
            self.set_hostname(hostname)?;
        }
        if !shared_fs_tag.is_empty() {
            self.mount_shared(shared_fs_tag)?;
        }
        tracing::debug!(sandbox = %sandbox_id, "sandbox created");
        *current = Some(sandbox_id);
        Ok(())
    }

    fn mount_shared(&self, tag: &str) -> Result<(), RpcError> {
        if self.scope == GuestScope::HostTest {
            return Err(RpcError::FailedPrecondition(
                "a shared virtio-fs directory needs the agent to own the guest".into(),
            ));
        }
        let spec = RootfsSpec {
            path: PathBuf::from(GUEST_SHARED_DIR),
            mount: Some(RootfsMount {
                source: tag.to_string(),
                fstype: "virtiofs".into(),
                options: Vec::new(),
            }),
        };
        let mounted = mount_rootfs(&spec)?;
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = mounted;
        Ok(())
    }

    /// Checks `sandbox_id` names the current sandbox; the caller tears down
    /// its containers, then calls [`Sandbox::forget`].
    pub fn check_is_current(&self, sandbox_id: &str) -> Result<(), RpcError> {
        let current = self.id.lock().unwrap_or_else(|p| p.into_inner());
        match current.as_deref() {
            Some(id) if id == sandbox_id => Ok(()),
            Some(id) => Err(RpcError::NotFound(format!(
                "sandbox {sandbox_id:?} does not exist (this guest runs {id})"
            ))),
            None => Err(RpcError::NotFound(format!(
                "sandbox {sandbox_id:?} does not exist (no sandbox created)"
            ))),
        }
    }

    pub fn forget(&self) {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(Err(e)) = shared.map(MountedRootfs::unmount) {
            tracing::warn!("unmounting the shared directory: {e}");
        }
        let old = self.id.lock().unwrap_or_else(|p| p.into_inner()).take();
        tracing::debug!(sandbox = ?old, "sandbox destroyed");
    }

    /// Container RPCs need a sandbox to belong to.
    pub fn require(&self) -> Result<(), RpcError> {
        match *self.id.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(_) => Ok(()),
            None => Err(RpcError::FailedPrecondition(
                "no sandbox: call CreateSandbox first".into(),
            )),
        }
    }

    fn set_hostname(&self, hostname: &str) -> Result<(), RpcError> {
        let valid = hostname.len() <= 64
            && hostname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid {
            return Err(RpcError::InvalidArgument(format!(
                "hostname {hostname:?} is not a valid host name"
            )));
        }
        match self.scope {
            GuestScope::OwnsTheGuest => nix::unistd::sethostname(hostname)
                .map_err(|e| RpcError::Internal(format!("sethostname {hostname:?}: {e}"))),
            GuestScope::HostTest => {
                tracing::info!(hostname, "not PID 1: leaving the host's hostname alone");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sandbox_per_guest() {
        let s = Sandbox::new(GuestScope::HostTest);
        assert!(matches!(s.require(), Err(RpcError::FailedPrecondition(_))));
        s.create("pod1", "web", "").unwrap();
        s.require().unwrap();
        assert!(matches!(
            s.create("pod2", "", ""),
            Err(RpcError::AlreadyExists(_))
        ));
        assert!(matches!(
            s.check_is_current("pod2"),
            Err(RpcError::NotFound(_))
        ));
        s.check_is_current("pod1").unwrap();
        s.forget();
        assert!(matches!(
            s.check_is_current("pod1"),
            Err(RpcError::NotFound(_))
        ));
        s.create("pod2", "", "").unwrap();
    }

    #[test]
    fn bad_names_are_refused_and_change_nothing() {
        let s = Sandbox::new(GuestScope::HostTest);
        assert!(matches!(
            s.create("a/b", "", ""),
            Err(RpcError::InvalidArgument(_))
        ));
        assert!(matches!(
            s.create("pod1", "no spaces", ""),
            Err(RpcError::InvalidArgument(_))
        ));
        assert!(s.require().is_err(), "a refused create leaves no sandbox");
    }
}
