//! A bundle's OCI spec on the host, and the spec the agent gets in the guest.
//!
//! The spec is containerd's (or the user's) and so untrusted input: it is
//! parsed with oci-spec, and everything husk derives from it is checked. The
//! guest cannot see host paths, so the guest spec differs from the host's in
//! what points at the host: bind-mount sources become paths under the
//! sandbox's shared directory, namespace paths (a pod's pause process on the
//! host) are dropped, the network namespace is the VM's own (the VM is the
//! pod's network boundary), and hooks, which would run host programs, go.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

/// The annotations that put a container into another's sandbox (CRI's).
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read the OCI spec {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the OCI spec {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("the OCI spec has no root.path and containerd gave no rootfs mount")]
    NoRoot,
    #[error("annotation {CONTAINER_TYPE}=container needs {SANDBOX_ID} to name the sandbox")]
    NoSandboxId,
    #[error("annotation {key}={value:?}: {problem}")]
    Annotation {
        key: &'static str,
        value: String,
        problem: String,
    },
    #[error("cannot encode the guest's OCI spec: {0}")]
    Encode(String),
    #[error(
        "the spec asks for the host's network ({why}): a husk sandbox's network is its \
         VM's own, so it cannot share the host's; give the container a network namespace \
         (Kubernetes: hostNetwork: false)"
    )]
    HostNetwork { why: String },
    #[error("the spec's network namespace {path} cannot be used: {source}")]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The network a sandbox's VM gets, from the spec's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxNetwork {
    /// A new, empty namespace (no path): the guest's NIC has nothing behind it.
    Isolated,
    /// The pod's namespace (CRI's), where the CNI put the pod's interface.
    Pod(PathBuf),
}

/// Which sandbox a container belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxRole {
    /// A sandbox of its own: a plain container, or a pod's sandbox container.
    Own,
    /// A pod's app container, joining sandbox `0`'s VM.
    Join(String),
}

/// A bind mount of the host spec: where it comes from on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    /// Index in the spec's mounts.
    pub index: usize,
    pub source: PathBuf,
    pub read_only: bool,
    pub recursive: bool,
}

pub struct BundleSpec {
    pub spec: Spec,
    pub path: PathBuf,
}

impl BundleSpec {
    /// `<bundle>/config.json`.
    pub fn load(bundle: &Path) -> Result<Self, SpecError> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(|source| SpecError::Read {
            path: path.clone(),
            source,
        })?;
        let spec: Spec = serde_json::from_slice(&text).map_err(|e| SpecError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Self { spec, path })
    }

    pub fn annotations(&self) -> HashMap<String, String> {
        self.spec.annotations().clone().unwrap_or_default()
    }

    pub fn sandbox_role(&self) -> Result<SandboxRole, SpecError> {
        let a = self.annotations();
        match a.get(CONTAINER_TYPE).map(String::as_str) {
            Some("container") => a
                .get(SANDBOX_ID)
                .filter(|s| !s.is_empty())
                .map(|s| SandboxRole::Join(s.clone()))
                .ok_or(SpecError::NoSandboxId),
            _ => Ok(SandboxRole::Own),
        }
    }

    /// The sandbox's network; the host's is refused (no network namespace,
    /// or a path to the namespace husk itself runs in).
    pub fn network(&self) -> Result<SandboxNetwork, SpecError> {
        use std::os::unix::fs::MetadataExt;
        let entry = self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|list| {
                list.iter()
                    .find(|ns| ns.typ() == LinuxNamespaceType::Network)
            });
        let Some(entry) = entry else {
            return Err(SpecError::HostNetwork {
                why: "it has no network namespace".into(),
            });
        };
        let Some(path) = entry.path() else {
            return Ok(SandboxNetwork::Isolated);
        };
        let meta = |p: &Path| {
            std::fs::metadata(p).map_err(|source| SpecError::Netns {
                path: path.clone(),
                source,
            })
        };
        let (theirs, ours) = (meta(path)?, meta(Path::new("/proc/self/ns/net"))?);
        if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
            return Err(SpecError::HostNetwork {
                why: format!("its network namespace {} is the host's", path.display()),
            });
        }
        Ok(SandboxNetwork::Pod(path.clone()))
    }

    /// `linux.cgroupsPath`, if any.
    pub fn cgroups_path(&self) -> Option<String> {
        self.spec
            .linux()
            .as_ref()?
            .cgroups_path()
            .as_ref()
            .map(|p| p.display().to_string())
            .filter(|p| !p.is_empty())
    }

    /// The container's memory limit in bytes, if it has a positive one.
    pub fn memory_limit(&self) -> Option<u64> {
        let limit = self
            .spec
            .linux()
            .as_ref()?
            .resources()
            .as_ref()?
            .memory()
            .as_ref()?
            .limit()?;
        u64::try_from(limit).ok().filter(|&l| l > 0)
    }

    /// The spec's root, relative to the bundle when not absolute.
    pub fn root_path(&self, bundle: &Path) -> Result<PathBuf, SpecError> {
        let root = self.spec.root().as_ref().ok_or(SpecError::NoRoot)?.path();
        Ok(if root.is_absolute() {
            root.clone()
        } else {
            bundle.join(root)
        })
    }

    /// The mounts whose source is a host path the guest must be given.
    pub fn host_binds(&self) -> Vec<HostBind> {
        mounts(&self.spec)
            .iter()
            .enumerate()
            .filter(|(_, m)| is_bind(m))
            .filter_map(|(index, m)| {
                let opts = m.options().clone().unwrap_or_default();
                Some(HostBind {
                    index,
                    source: m.source().clone()?,
                    read_only: opts.iter().any(|o| o == "ro"),
                    recursive: opts.iter().any(|o| o == "rbind"),
                })
            })
            .collect()
    }

    /// The spec for the guest: bind sources replaced by `guest_sources`
    /// (by mount index), the root at `guest_root`, host-only parts removed.
    pub fn for_guest(
        &self,
        guest_root: &Path,
        guest_sources: &HashMap<usize, PathBuf>,
    ) -> Result<Vec<u8>, SpecError> {
        let mut spec = self.spec.clone();
        let mounts: Vec<Mount> = mounts(&spec)
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut m = m.clone();
                if let Some(src) = guest_sources.get(&i) {
                    m.set_source(Some(src.clone()));
                }
                m
            })
            .collect();
        spec.set_mounts(Some(mounts));
        if let Some(root) = spec.root_mut() {
            root.set_path(guest_root.to_path_buf());
        }
        spec.set_hooks(None);
        if let Some(linux) = spec.linux_mut() {
            let namespaces = linux.namespaces().clone().map(|list| {
                list.into_iter()
                    .filter(|ns| ns.typ() != LinuxNamespaceType::Network)
                    .map(|mut ns| {
                        ns.set_path(None);
                        ns
                    })
                    .collect()
            });
            linux.set_namespaces(namespaces);
            linux.set_cgroups_path(None);
        }
        serde_json::to_vec(&spec).map_err(|e| SpecError::Encode(e.to_string()))
    }
}

fn mounts(spec: &Spec) -> &[Mount] {
    spec.mounts().as_deref().unwrap_or_default()
}

fn is_bind(m: &Mount) -> bool {
    let opts = m.options().as_deref().unwrap_or_default();
    m.typ().as_deref() == Some("bind") || opts.iter().any(|o| o == "bind" || o == "rbind")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(json: &str) -> (tempfile::TempDir, BundleSpec) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        let spec = BundleSpec::load(dir.path()).unwrap();
        (dir, spec)
    }

    const SPEC: &str = r#"{
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "hooks": {"prestart": [{"path": "/usr/bin/true"}]},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["rbind", "ro"]},
            {"destination": "/data", "source": "/srv/data", "options": ["bind"]}
        ],
        "annotations": {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "pod1"},
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": "/var/run/netns/x"}, {"type": "ipc", "path": "/proc/7/ns/ipc"}],
            "cgroupsPath": "/k8s/pod1/c1",
            "resources": {"memory": {"limit": 67108864}}
        }
    }"#;

    #[test]
    fn roles_binds_and_limits_come_from_the_spec() {
        let (dir, b) = bundle(SPEC);
        assert_eq!(b.sandbox_role().unwrap(), SandboxRole::Join("pod1".into()));
        assert_eq!(b.memory_limit(), Some(64 << 20));
        assert_eq!(b.root_path(dir.path()).unwrap(), dir.path().join("rootfs"));
        let binds = b.host_binds();
        assert_eq!(binds.len(), 2);
        assert_eq!(
            (binds[0].index, binds[0].read_only, binds[0].recursive),
            (1, true, true)
        );
        assert_eq!(binds[1].source, PathBuf::from("/srv/data"));
    }

    #[test]
    fn the_guest_spec_points_only_at_guest_paths() {
        let (_dir, b) = bundle(SPEC);
        let sources = HashMap::from([(1, PathBuf::from("/run/husk/shared/c1/mounts/1"))]);
        let json = b
            .for_guest(Path::new("/run/husk/shared/c1/rootfs"), &sources)
            .unwrap();
        let guest: Spec = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            guest.root().as_ref().unwrap().path(),
            Path::new("/run/husk/shared/c1/rootfs")
        );
        let m = guest.mounts().as_ref().unwrap();
        assert_eq!(
            m[1].source().as_deref(),
            Some(Path::new("/run/husk/shared/c1/mounts/1"))
        );
        assert!(guest.hooks().is_none());
        let linux = guest.linux().as_ref().unwrap();
        let ns = linux.namespaces().as_ref().unwrap();
        assert!(ns.iter().all(|n| n.path().is_none()));
        assert!(ns.iter().all(|n| n.typ() != LinuxNamespaceType::Network));
        assert!(linux.cgroups_path().is_none());
    }

    #[test]
    fn the_host_network_is_refused() {
        let with_ns = |ns: &str| {
            bundle(&format!(
                r#"{{"ociVersion":"1.0.2","linux":{{"namespaces":[{{"type":"pid"}}{ns}]}}}}"#
            ))
        };
        let (_d, b) = with_ns("");
        let err = b.network().unwrap_err().to_string();
        assert!(
            err.contains("host's network") && err.contains("no network namespace"),
            "{err}"
        );
        let (_d, b) = with_ns(r#",{"type":"network","path":"/proc/self/ns/net"}"#);
        let err = b.network().unwrap_err().to_string();
        assert!(err.contains("is the host's"), "{err}");
        let (_d, b) = with_ns(r#",{"type":"network","path":"/nonexistent/netns"}"#);
        let err = b.network().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/netns"), "{err}");
        let (_d, b) = with_ns(r#",{"type":"network"}"#);
        assert_eq!(b.network().unwrap(), SandboxNetwork::Isolated);
    }

    #[test]
    fn a_joining_container_must_name_its_sandbox_and_bad_json_is_named() {
        let (_d, b) = bundle(
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.container-type":"container"}}"#,
        );
        assert!(matches!(b.sandbox_role(), Err(SpecError::NoSandboxId)));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
        let err = BundleSpec::load(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("config.json") && err.contains("not valid"),
            "{err}"
        );
    }
}
