//! Templates for sandboxes: boot the agent VM once, snapshot it, and start
//! every later sandbox of that size from the snapshot, its memory shared
//! copy-on-write in the host page cache.
//!
//! A template VM is a sandbox VM (same kernel, image, command line and
//! devices: vsock, the shared-directory virtio-fs, the pmem image) stopped
//! right after its agent said it was ready and answered Check on a
//! connection that stays open in the template (each clone's first agent
//! client takes it over), before anything is mounted from the share. With
//! `template = "auto"` the runtime makes one on first use for the config's
//! default size, under `template_dir/<key>`, the key a hash of the kernel
//! and image (path, size, mtime), memory, vCPUs, command line, husk's
//! version and the template format's; a file lock makes concurrent first
//! pods build it once. A pod of another size cold-boots, and says so.
//! Every clone keeps the template's vsock CID (3): each VM has its own
//! vsock device and host socket, so CIDs never meet.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use husk_agent_protocol::agent;

use crate::agent::AgentClient;
use crate::agent_client::{connect_agent, AGENT_VSOCK_PORT};
use crate::config::{GuestBoot, HuskConfig, TemplateMode};
use crate::sandbox::size::VmSize;
use crate::sandbox::{
    ctx, guest_vm_config, sandbox_vm_signature, start_and_wait_ready, RPC_TIMEOUT,
};
use crate::sandbox::{SandboxDir, SandboxError};

/// Which template a sandbox of `size` starts from, making the config's
/// automatic one if it is missing; None: cold boot.
pub fn resolve(
    config: &HuskConfig,
    size: VmSize,
    timeout: Duration,
) -> Result<Option<PathBuf>, SandboxError> {
    let default = VmSize {
        vcpus: config.guest.vcpus,
        mem_bytes: config.guest.memory,
    };
    match &config.runtime.template {
        TemplateMode::Off => Ok(None),
        TemplateMode::Path(p) => Ok(Some(p.clone())),
        TemplateMode::Auto if size != default => {
            tracing::info!(
                vcpus = size.vcpus,
                mem_mib = size.mem_bytes >> 20,
                "cold boot: the pod's size is not the template's ({} vCPU, {} MiB)",
                default.vcpus,
                default.mem_bytes >> 20
            );
            Ok(None)
        }
        TemplateMode::Auto => ensure(config, size, timeout).map(Some),
    }
}

/// `template_dir/<key>` for this config and size, made if missing.
pub fn ensure(
    config: &HuskConfig,
    size: VmSize,
    timeout: Duration,
) -> Result<PathBuf, SandboxError> {
    let base = &config.runtime.template_dir;
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| SandboxError::Template(format!("{what} {}: {source}", path.display()))
    };
    std::fs::create_dir_all(base).map_err(io("creating", base))?;
    let key = key(config, size)?;
    let dir = base.join(&key);
    if dir.join(husk_vmm::snapshot::format::HEADER_FILE).is_file() {
        return Ok(dir);
    }
    let lock_path = base.join(format!("{key}.lock"));
    let lock = File::create(&lock_path).map_err(io("creating", &lock_path))?;
    nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| SandboxError::Template(format!("locking {}: {e}", lock_path.display())))
        .and_then(|_held| {
            if dir.join(husk_vmm::snapshot::format::HEADER_FILE).is_file() {
                return Ok(());
            }
            tracing::info!(template = %dir.display(), "making the template (one cold boot)");
            let tmp = base.join(format!("{key}.tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            let made = create(config, size, &tmp, timeout, AgentConnection::Kept);
            match made {
                Ok(()) => std::fs::rename(&tmp, &dir).map_err(io("renaming", &tmp)),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&tmp);
                    Err(e)
                }
            }
        })?;
    Ok(dir)
}

/// Whether a template keeps an open connection to its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentConnection {
    /// Each clone's first agent client takes it over, ready at once; a new
    /// connection costs the guest seconds on software KVM (its ttrpc server
    /// starts threads for each).
    Kept,
    /// None: clones get a vsock transport reset and connect afresh.
    Dropped,
}

/// Boots the sandbox VM of `config` at `size`, waits for its agent, and
/// snapshots it into `out` (created).
pub fn create(
    config: &HuskConfig,
    size: VmSize,
    out: &Path,
    timeout: Duration,
    link: AgentConnection,
) -> Result<(), SandboxError> {
    config.check_guest_files()?;
    std::fs::create_dir_all(out)
        .map_err(|e| SandboxError::Template(format!("creating {}: {e}", out.display())))?;
    // The VM's own sockets and empty share live beside the template while
    // it is made; restored VMs get their pod's.
    let work = SandboxDir::new(out, "boot");
    work.create()?;
    let result = (|| {
        let vm = start_and_wait_ready(
            "template",
            &guest_vm_config(config, size, &work, None),
            &work,
            timeout,
        )?;
        // Held open through the snapshot: each clone's first agent client
        // takes this connection over (see husk_devices::vsock::VsockSnapshot).
        let _agent = match link {
            AgentConnection::Kept => Some(checked_agent(&work)?),
            AgentConnection::Dropped => None,
        };
        vm.snapshot(out).map_err(|e| {
            SandboxError::Template(format!("snapshotting into {}: {e}", out.display()))
        })?;
        Ok(())
    })();
    if let Err(e) = work.remove() {
        tracing::warn!("removing {}: {e}", work.path().display());
    }
    let _ = std::fs::remove_dir(out.join("sandboxes"));
    result
}

/// A connection to the template VM's agent, which has answered Check.
fn checked_agent(work: &SandboxDir) -> Result<AgentClient, SandboxError> {
    let agent =
        connect_agent(&work.vsock_socket(), AGENT_VSOCK_PORT, RPC_TIMEOUT).map_err(|source| {
            SandboxError::Agent {
                id: "template".into(),
                source,
            }
        })?;
    agent
        .check(ctx(RPC_TIMEOUT), &agent::CheckRequest::new())
        .map_err(|e| SandboxError::rpc("the template's agent: Check", e))?;
    Ok(agent)
}

/// What a template depends on, hashed: kernel and image (path, size,
/// mtime: cheap, and any rewrite changes them), size, the sandbox VM's
/// command line and devices, the compat profile this host gets (its words
/// end the kernel command line, which the agent reads at boot), husk and
/// the template format. Not the compat mode: it only chooses the profile,
/// and modes that give this host the same one share a template.
fn key(config: &HuskConfig, size: VmSize) -> Result<String, SandboxError> {
    let g = &config.guest;
    let image = match g.boot {
        GuestBoot::Image => &g.image,
        GuestBoot::Initrd => &g.initrd,
    };
    let mut h = Sha256::new();
    for path in [&g.kernel, image] {
        let m = std::fs::metadata(path)
            .map_err(|e| SandboxError::Template(format!("inspecting {}: {e}", path.display())))?;
        h.update(format!(
            "{}\0{}\0{}\0{}\n",
            path.display(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        ));
    }
    h.update(format!(
        "{} {} {:?} {}",
        size.vcpus,
        size.mem_bytes,
        g.boot,
        env!("CARGO_PKG_VERSION")
    ));
    h.update(sandbox_vm_signature(config, size));
    let profile = husk_vmm::CompatProfile::select(g.compat, husk_vmm::HostKvm::detect());
    h.update(format!("{profile:?}"));
    h.update(husk_vmm::snapshot::format::FORMAT_VERSION.to_le_bytes());
    Ok(h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_vmm::{CompatMode, CompatProfile, HostKvm};

    #[test]
    fn the_template_key_follows_the_compat_profile_not_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = HuskConfig::default();
        config.guest.kernel = dir.path().join("vmlinux");
        config.guest.image = dir.path().join("rootfs.img");
        std::fs::write(&config.guest.kernel, b"a kernel").unwrap();
        std::fs::write(&config.guest.image, b"an image").unwrap();
        let size = VmSize {
            vcpus: 1,
            mem_bytes: 256 << 20,
        };
        let key_with = |mode| {
            let mut c = config.clone();
            c.guest.compat = mode;
            key(&c, size).unwrap()
        };
        // On this host, `auto` gives the profile of one explicit mode.
        let profiled = CompatProfile::select(CompatMode::Auto, HostKvm::detect()).is_some();
        let (same, other) = if profiled {
            (CompatMode::On, CompatMode::Off)
        } else {
            (CompatMode::Off, CompatMode::On)
        };
        let auto = key_with(CompatMode::Auto);
        assert_eq!(auto, key_with(same), "same profile, another template");
        assert_ne!(auto, key_with(other), "another profile, the same template");
        // The key still follows what the template is made of.
        std::fs::write(&config.guest.image, b"another image").unwrap();
        assert_ne!(auto, key_with(CompatMode::Auto), "a rewritten image");
    }
}
