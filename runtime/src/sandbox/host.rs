//! What a sandbox holds on the host beside its directory: the host cgroup
//! the husk process joined (`host_cgroup`) and the pod network (a tap and
//! tc redirects in the pod's network namespace, `crate::network`).
//!
//! Each is written to `<sandbox dir>/host.json` as soon as it exists, so a
//! `delete` after kill -9, or the next boot of the same id, releases them
//! from the record alone; releasing twice is harmless.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use husk_vmm::{NetSpec, Tap};
use serde::{Deserialize, Serialize};

use super::dir::SandboxDir;
use super::host_cgroup::{HostCgroup, HostCgroupError};
use super::spec::SandboxNetwork;
use crate::network::{self, NetworkError, PodNetwork, TAP_NAME};

const RECORD: &str = "host.json";

/// How long a dead husk process's host cgroup may stay busy: within
/// containerd's 5 s limit for the `delete` that releases it.
const EXIT_PATIENCE: Duration = Duration::from_secs(3);

/// The MTU every sandbox NIC offers (the most a pod may use): the guest
/// reads it once, when its driver probes, so a template's card must offer
/// any pod's; the agent then sets the pod's own.
const SANDBOX_NIC_MTU: u16 = 9000;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Cgroup(#[from] HostCgroupError),
    #[error("the pod network: {0}")]
    Network(#[from] NetworkError),
    #[error(
        "the pod's network interface has MTU {0}; a husk guest's NIC supports at most \
         {SANDBOX_NIC_MTU}: configure the CNI network with a smaller MTU"
    )]
    Mtu(u32),
    #[error("cannot duplicate the pod's tap fd: {0}")]
    TapFd(std::io::Error),
    #[error("the pod's tap: {0}")]
    Tap(#[from] husk_vmm::TapError),
    #[error("cannot record the sandbox's host resources in {path}: {source}")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What `delete` needs to release a dead sandbox's resources.
#[derive(Debug, Default, Serialize, Deserialize)]
struct HostRecord {
    cgroup: Option<HostCgroup>,
    /// The pod's network namespace and the tap husk made in it.
    netns: Option<PathBuf>,
    tap_name: Option<String>,
}

pub struct HostResources {
    record: HostRecord,
    record_path: PathBuf,
    network: Option<PodNetwork>,
    /// The pod's tap as the VMM's virtio-net device takes it.
    tap: Option<Arc<Tap>>,
}

impl HostResources {
    /// Joins `cgroups_path` and sets up the pod network; on failure what
    /// was taken is released.
    pub fn acquire(
        dir: &SandboxDir,
        cgroups_path: Option<&str>,
        net: &SandboxNetwork,
    ) -> Result<Self, HostError> {
        let mut me = Self {
            record: HostRecord::default(),
            record_path: dir.path().join(RECORD),
            network: None,
            tap: None,
        };
        if let Err(e) = me.acquire_all(cgroups_path, net) {
            me.release();
            return Err(e);
        }
        Ok(me)
    }

    fn acquire_all(
        &mut self,
        cgroups_path: Option<&str>,
        net: &SandboxNetwork,
    ) -> Result<(), HostError> {
        if let Some(path) = cgroups_path {
            self.record.cgroup = Some(HostCgroup::join(path)?);
            self.save()?;
        }
        if let SandboxNetwork::Pod(netns) = net {
            // Recorded before the tap exists: a crash in between leaves a
            // record that cleans up nothing, never a tap without a record.
            self.record.netns = Some(netns.clone());
            self.record.tap_name = Some(TAP_NAME.to_string());
            self.save()?;
            let pod = network::setup(netns, TAP_NAME)?;
            if pod.guest.mtu > u32::from(SANDBOX_NIC_MTU) {
                let mtu = pod.guest.mtu;
                let _ = pod.teardown();
                return Err(HostError::Mtu(mtu));
            }
            let fd = pod.tap.try_clone().map_err(HostError::TapFd)?;
            self.network = Some(pod);
            self.tap = Some(Arc::new(Tap::from_fd(fd.into())?));
        }
        Ok(())
    }

    /// The pod network, when the sandbox has one.
    pub fn network(&self) -> Option<&PodNetwork> {
        self.network.as_ref()
    }

    /// The guest's NIC: behind the pod's tap, or, without a pod network,
    /// with nothing behind it. Its MAC is the one the guest already has
    /// (random at a cold boot, the template's in a clone) until the agent
    /// sets the pod's, and its MTU is the most any pod may use; the agent
    /// sets the pod's. So every sandbox VM has the same card, and each can
    /// start from the template.
    pub fn nic(&self) -> NetSpec {
        NetSpec {
            mac: None,
            mtu: SANDBOX_NIC_MTU,
            tap: self.tap.clone(),
        }
    }

    /// A sandbox's NIC with nothing behind it (templates, `husk sandbox-vm`).
    pub fn unconnected_nic() -> NetSpec {
        NetSpec {
            mac: None,
            mtu: SANDBOX_NIC_MTU,
            tap: None,
        }
    }

    fn save(&self) -> Result<(), HostError> {
        let json = serde_json::to_vec_pretty(&self.record).map_err(std::io::Error::other);
        json.and_then(|j| std::fs::write(&self.record_path, j))
            .map_err(|source| HostError::Record {
                path: self.record_path.clone(),
                source,
            })
    }

    /// Tears the network down and leaves the cgroup (best effort, logged).
    pub fn release(&mut self) {
        self.tap = None;
        if let Some(net) = self.network.take() {
            if let Err(e) = net.teardown() {
                tracing::warn!("tearing down the pod network: {e}; cleaning up what is left");
                release_network(&self.record);
            }
        }
        if let Some(cg) = self.record.cgroup.take() {
            cg.leave();
        }
        self.record = HostRecord::default();
        let _ = std::fs::remove_file(&self.record_path);
    }
}

/// Releases what a dead husk process recorded in `dir` (nothing when there
/// is no record). Only for a sandbox no process serves any more.
pub fn release_recorded(dir: &SandboxDir) {
    let path = dir.path().join(RECORD);
    let Ok(text) = std::fs::read(&path) else {
        return;
    };
    let record: HostRecord = match serde_json::from_slice(&text) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(record = %path.display(), "unreadable host record, nothing released: {e}");
            return;
        }
    };
    release_network(&record);
    if let Some(cg) = &record.cgroup {
        cg.remove_created(EXIT_PATIENCE);
    }
    let _ = std::fs::remove_file(path);
}

fn release_network(record: &HostRecord) {
    let (Some(netns), Some(tap)) = (&record.netns, &record.tap_name) else {
        return;
    };
    match network::cleanup(Path::new(netns), tap) {
        Ok(done) => tracing::info!(netns = %netns.display(), ?done, "pod network cleaned up"),
        Err(e) => tracing::warn!(netns = %netns.display(), "cleaning up the pod network: {e}"),
    }
}
