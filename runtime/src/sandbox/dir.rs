//! A sandbox's directory on the host, `<state_dir>/sandboxes/<id>/`:
//!
//! ```text
//! shared/            what the virtio-fs device serves (GUEST_SHARED_DIR)
//!   <cid>/rootfs     the container's rootfs (a slave bind of <bundle>/rootfs)
//!   <cid>/mounts/<n> the spec's n-th mount, when it binds a host path
//! vsock.sock         the vsock device's host socket; vsock.sock_1025 is
//!                    where the agent says it is ready
//! console.log        the guest console
//! metrics.sock       the husk process's Prometheus metrics (HTTP GET)
//! ```
//!
//! Removing it unmounts whatever is still mounted below it first, so a
//! crashed runtime's directory can be removed by the next one.
//!
//! The vsock device binds Unix sockets in the directory (`vsock.sock_<port>`
//! for each guest-initiated port), and a socket path holds at most 107
//! bytes. CRI's sandbox ids are 64 characters, so a sandbox whose
//! `<state_dir>/sandboxes/<id>` would be too long is named
//! `<first 12 characters of id>-<first 16 hex digits of sha256(id)>`
//! instead: still recognisable, deterministic (so `delete` finds it from
//! the id alone) and collision-free in practice. The config refuses a
//! `state_dir` too long even for that (`MAX_STATE_DIR_LEN`).

use std::path::{Path, PathBuf};

use husk_agent_protocol::{GUEST_SHARED_DIR, READY_VSOCK_PORT};
use sha2::{Digest, Sha256};

use super::mounts::{remove_tree, MountError};

/// The virtio-fs tag of a sandbox's shared directory.
pub const SHARED_FS_TAG: &str = "husk-shared";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxDir {
    root: PathBuf,
}

/// Longest sandbox directory path: its longest socket,
/// `<root>/vsock.sock_4294967295`, must fit in sun_path (107 bytes + NUL).
const MAX_ROOT_LEN: usize = 107 - "/vsock.sock_4294967295".len();
/// Length of a shortened directory name (`<12 chars>-<16 hex>`).
const SHORT_NAME_LEN: usize = 12 + 1 + 16;
/// Longest `runtime.state_dir` with which every sandbox directory fits.
pub const MAX_STATE_DIR_LEN: usize = MAX_ROOT_LEN - "/sandboxes/".len() - SHORT_NAME_LEN;

impl SandboxDir {
    pub fn new(state_dir: &Path, sandbox_id: &str) -> Self {
        let sandboxes = state_dir.join("sandboxes");
        let full = sandboxes.join(sandbox_id);
        if full.as_os_str().len() <= MAX_ROOT_LEN {
            return Self { root: full };
        }
        let digest = Sha256::digest(sandbox_id.as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let prefix: String = sandbox_id.chars().take(12).collect();
        Self {
            root: sandboxes.join(format!("{prefix}-{hex}")),
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

    /// The metrics endpoint (shorter than the vsock sockets, so it fits).
    pub fn metrics_socket(&self) -> PathBuf {
        self.root.join("metrics.sock")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_ids_get_short_directories_that_fit_a_socket_path() {
        let state = Path::new("/run/husk");
        assert_eq!(
            SandboxDir::new(state, "pod1").path(),
            Path::new("/run/husk/sandboxes/pod1")
        );
        let long_state = PathBuf::from("/").join("s".repeat(MAX_STATE_DIR_LEN - 1));
        let id = "f".repeat(64);
        let other = format!("{}e", "f".repeat(63));
        let a = SandboxDir::new(&long_state, &id);
        let b = SandboxDir::new(&long_state, &other);
        assert_ne!(a, b, "ids that share a prefix get different directories");
        assert_eq!(a, SandboxDir::new(&long_state, &id), "deterministic");
        for d in [&a, &b] {
            let longest = d.root.join("vsock.sock_4294967295");
            assert!(longest.as_os_str().len() <= 107, "{}", longest.display());
            assert!(d
                .root
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ffffffffffff-"));
        }
    }
}
