//! Adding a container to a sandbox and taking it out again.
//!
//! Adding: containerd's rootfs mount goes up at `<bundle>/rootfs`, that and
//! each host bind mount of the spec are bound into `shared/<cid>/`, the spec
//! is rewritten for the guest, and the agent creates the container there.
//! Any failure undoes what was mounted. Removing undoes it all in reverse.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use husk_agent_protocol::agent;

use super::dir::{guest_mount_source, guest_rootfs};
use super::mounts::{self, RootfsMount};
use super::spec::BundleSpec;
use super::{ctx, Sandbox, SandboxError, GUEST_WORK_TIMEOUT};
use crate::metrics::Phase;

/// A container to add.
pub struct NewContainer<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    /// containerd's rootfs mounts; empty when the bundle's root is in place.
    pub rootfs: &'a [RootfsMount],
    pub terminal: bool,
}

impl Sandbox {
    /// Creates the container in the guest (created, not started); returns
    /// its init's pid in the guest.
    pub fn create_container(&self, c: &NewContainer) -> Result<u32, SandboxError> {
        let spec = BundleSpec::load(c.bundle)?;
        let host_root = if c.rootfs.is_empty() {
            spec.root_path(c.bundle)?
        } else {
            let target = c.bundle.join("rootfs");
            mounts::mount_rootfs(c.rootfs, &target)?;
            target
        };
        let result = self.share_and_create(c, &spec, &host_root);
        if result.is_ok() {
            self.metrics.mark(Phase::ContainerCreated);
        }
        if result.is_err() {
            self.unshare(c.id);
            if !c.rootfs.is_empty() {
                let _ = mounts::unmount_all_under(&host_root);
            }
        }
        result
    }

    fn share_and_create(
        &self,
        c: &NewContainer,
        spec: &BundleSpec,
        host_root: &Path,
    ) -> Result<u32, SandboxError> {
        let shared = self.dir.container(c.id);
        mounts::bind(host_root, &shared.join("rootfs"), false, true)?;
        let mut guest_sources = HashMap::new();
        for b in spec.host_binds() {
            let at = shared.join("mounts").join(b.index.to_string());
            mounts::bind(&b.source, &at, b.read_only, b.recursive)?;
            guest_sources.insert(b.index, guest_mount_source(c.id, b.index));
        }
        let oci_spec = spec.for_guest(&guest_rootfs(c.id), &guest_sources)?;
        let req = agent::CreateContainerRequest {
            container_id: c.id.to_string(),
            oci_spec,
            rootfs: Some(agent::Rootfs {
                path: guest_rootfs(c.id).display().to_string(),
                ..Default::default()
            })
            .into(),
            terminal: c.terminal,
            ..Default::default()
        };
        let resp = self
            .agent
            .create_container(ctx(GUEST_WORK_TIMEOUT), &req)
            .map_err(|e| SandboxError::rpc(format!("container {}: CreateContainer", c.id), e))?;
        tracing::info!(sandbox = %self.id, container = c.id, pid = resp.pid, "container created");
        Ok(resp.pid)
    }

    /// Removes the container from the guest (killing what still runs) and
    /// takes its mounts down; `mounted_rootfs` is `<bundle>/rootfs` when
    /// `create_container` mounted it.
    pub fn remove_container(
        &self,
        id: &str,
        mounted_rootfs: Option<&Path>,
    ) -> Result<(), SandboxError> {
        let req = agent::RemoveContainerRequest {
            container_id: id.to_string(),
            ..Default::default()
        };
        let removed = if self.vm_ended() {
            Ok(())
        } else {
            self.agent
                .remove_container(ctx(GUEST_WORK_TIMEOUT), &req)
                .map(|_| ())
                .map_err(|e| SandboxError::rpc(format!("container {id}: RemoveContainer"), e))
        };
        self.unshare(id);
        if let Some(root) = mounted_rootfs {
            mounts::unmount_all_under(root)?;
        }
        removed
    }

    /// Takes down `shared/<id>` (binds and all) and removes it.
    fn unshare(&self, id: &str) {
        let shared: PathBuf = self.dir.container(id);
        if let Err(e) = mounts::remove_tree(&shared) {
            tracing::warn!(sandbox = %self.id, container = id, "removing the container's share: {e}");
        }
    }
}
