//! A sandbox's directory on the host, `<state_dir>/sandboxes/<id>/`:
//!
//! ```text
//! shared/            what the virtio-fs device serves (GUEST_SHARED_DIR)
//!   <cid>/rootfs     the container's rootfs (a slave bind of <bundle>/rootfs)
//!   <cid>/mounts/<n> the spec's n-th mount, when it binds a host path
//! vsock.sock         the vsock device's host socket; vsock.sock_1025 is
//!                    where the agent says it is ready
//! console.log        the guest console
//! ```
//!
//! Removing it unmounts whatever is still mounted below it first, so a
//! crashed runtime's directory can be removed by the next one.

use std::path::{Path, PathBuf};

use husk_agent_protocol::{GUEST_SHARED_DIR, READY_VSOCK_PORT};

use super::mounts::{remove_tree, MountError};

/// The virtio-fs tag of a sandbox's shared directory.
pub const SHARED_FS_TAG: &str = "husk-shared";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxDir {
    root: PathBuf,
}

impl SandboxDir {
    pub fn new(state_dir: &Path, sandbox_id: &str) -> Self {
        Self {
            root: state_dir.join("sandboxes").join(sandbox_id),
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Creates the directory and its `shared/`, readable by root only.
    pub fn create(&self) -> Result<(), MountError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.shared())
            .map_err(|source| MountError::Io {
                what: "creating the sandbox directory",
                path: self.root.clone(),
                source,
            })
    }

    pub fn shared(&self) -> PathBuf {
        self.root.join("shared")
    }

    pub fn container(&self, container_id: &str) -> PathBuf {
        self.shared().join(container_id)
    }

    pub fn vsock_socket(&self) -> PathBuf {
        self.root.join("vsock.sock")
    }

    /// Where the guest's connection to host port READY_VSOCK_PORT arrives.
    pub fn ready_socket(&self) -> PathBuf {
        self.root.join(format!("vsock.sock_{READY_VSOCK_PORT}"))
    }

    pub fn console(&self) -> PathBuf {
        self.root.join("console.log")
    }

    /// Unmounts everything below the directory, then removes it.
    pub fn remove(&self) -> Result<(), MountError> {
        remove_tree(&self.root)
    }
}

/// A container's root in the guest.
pub fn guest_rootfs(container_id: &str) -> PathBuf {
    Path::new(GUEST_SHARED_DIR)
        .join(container_id)
        .join("rootfs")
}

/// Where the spec's `index`-th mount's host path is in the guest.
pub fn guest_mount_source(container_id: &str, index: usize) -> PathBuf {
    Path::new(GUEST_SHARED_DIR)
        .join(container_id)
        .join("mounts")
        .join(index.to_string())
}
