//! Validated forms of the RPC requests. The host is trusted more than the
//! guest, but an RPC request is still untrusted input: ids become paths and
//! cgroup names, so each is checked here once, with an error naming the field,
//! before any handler acts on it.

use std::path::PathBuf;

use husk_agent_protocol::agent;

use super::status::RpcError;

/// Longest container or exec id accepted (containerd's ids are 64 hex chars).
const MAX_ID_LEN: usize = 128;

/// A container or exec id: 1..=128 of `[A-Za-z0-9_.-]`, not starting with '.'.
pub fn checked_id(field: &str, id: &str) -> Result<String, RpcError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if id.is_empty() || id.len() > MAX_ID_LEN || id.starts_with('.') || !id.chars().all(ok_char) {
        return Err(RpcError::InvalidArgument(format!(
            "{field} {id:?} is not a valid id (1-{MAX_ID_LEN} of [A-Za-z0-9_.-], not starting with '.')"
        )));
    }
    Ok(id.to_string())
}

/// A process in a container; `exec_id: None` is the container's init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRef {
    pub container_id: String,
    pub exec_id: Option<String>,
}

impl ProcessRef {
    pub fn new(container_id: &str, exec_id: &str) -> Result<Self, RpcError> {
        Ok(ProcessRef {
            container_id: checked_id("container_id", container_id)?,
            exec_id: match exec_id {
                "" => None,
                id => Some(checked_id("exec_id", id)?),
            },
        })
    }
}

/// A filesystem to mount at the rootfs path before creating the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    pub source: String,
    pub fstype: String,
    pub options: Vec<String>,
}

/// Where the container's root is, and what to mount there first, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsSpec {
    pub path: PathBuf,
    pub mount: Option<RootfsMount>,
}

impl TryFrom<&agent::Rootfs> for RootfsSpec {
    type Error = RpcError;

    fn try_from(r: &agent::Rootfs) -> Result<Self, RpcError> {
        let path = PathBuf::from(&r.path);
        if !path.is_absolute() {
            return Err(RpcError::InvalidArgument(format!(
                "rootfs.path {:?} must be an absolute path in the guest",
                r.path
            )));
        }
        let mount = if r.fstype.is_empty() {
            if !r.source.is_empty() || !r.options.is_empty() {
                return Err(RpcError::InvalidArgument(
                    "rootfs.source/options given without rootfs.fstype".into(),
                ));
            }
            None
        } else {
            Some(RootfsMount {
                source: r.source.clone(),
                fstype: r.fstype.clone(),
                options: r.options.clone(),
            })
        };
        Ok(RootfsSpec { path, mount })
    }
}

/// A CreateContainer request with its fields checked.
#[derive(Debug)]
pub struct CreateContainer {
    pub container_id: String,
    pub oci_spec: Vec<u8>,
    pub rootfs: RootfsSpec,
    pub terminal: bool,
}

impl TryFrom<agent::CreateContainerRequest> for CreateContainer {
    type Error = RpcError;

    fn try_from(req: agent::CreateContainerRequest) -> Result<Self, RpcError> {
        let container_id = checked_id("container_id", &req.container_id)?;
        if req.oci_spec.is_empty() {
            return Err(RpcError::InvalidArgument(format!(
                "container {container_id}: oci_spec is empty"
            )));
        }
        let rootfs = req.rootfs.as_ref().ok_or_else(|| {
            RpcError::InvalidArgument(format!("container {container_id}: rootfs is missing"))
        })?;
        Ok(CreateContainer {
            rootfs: RootfsSpec::try_from(rootfs)?,
            container_id,
            oci_spec: req.oci_spec,
            terminal: req.terminal,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_a_path_are_refused() {
        for bad in ["", "..", ".hidden", "a/b", "a b", "x\0", &"a".repeat(129)] {
            let err = checked_id("container_id", bad).unwrap_err();
            assert!(matches!(err, RpcError::InvalidArgument(_)), "{bad:?}");
            assert!(err.to_string().contains("container_id"), "{err}");
        }
        assert_eq!(
            checked_id("container_id", "web-1_a.b").unwrap(),
            "web-1_a.b"
        );
    }

    #[test]
    fn an_empty_exec_id_is_the_init_process() {
        let p = ProcessRef::new("c1", "").unwrap();
        assert_eq!(p.exec_id, None);
        assert_eq!(
            ProcessRef::new("c1", "e1").unwrap().exec_id.as_deref(),
            Some("e1")
        );
        assert!(ProcessRef::new("c1", "../e").is_err());
    }

    fn request(rootfs: Option<agent::Rootfs>) -> agent::CreateContainerRequest {
        agent::CreateContainerRequest {
            container_id: "c1".into(),
            oci_spec: b"{}".to_vec(),
            rootfs: rootfs.into(),
            ..Default::default()
        }
    }

    #[test]
    fn rootfs_must_be_absolute_and_coherent() {
        let rel = agent::Rootfs {
            path: "containers/c1".into(),
            ..Default::default()
        };
        let err = CreateContainer::try_from(request(Some(rel))).unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");

        let no_type = agent::Rootfs {
            path: "/c1".into(),
            source: "/dev/pmem0".into(),
            ..Default::default()
        };
        let err = CreateContainer::try_from(request(Some(no_type))).unwrap_err();
        assert!(err.to_string().contains("fstype"), "{err}");

        let err = CreateContainer::try_from(request(None)).unwrap_err();
        assert!(err.to_string().contains("rootfs is missing"), "{err}");
    }

    #[test]
    fn a_mount_is_kept_when_fstype_is_set() {
        let r = agent::Rootfs {
            path: "/c1".into(),
            source: "shared".into(),
            fstype: "virtiofs".into(),
            options: vec!["ro".into()],
            ..Default::default()
        };
        let c = CreateContainer::try_from(request(Some(r))).unwrap();
        let m = c.rootfs.mount.unwrap();
        assert_eq!(
            (m.source.as_str(), m.fstype.as_str()),
            ("shared", "virtiofs")
        );
        assert_eq!(m.options, ["ro"]);
    }

    #[test]
    fn an_empty_spec_is_refused() {
        let mut req = request(Some(agent::Rootfs {
            path: "/c1".into(),
            ..Default::default()
        }));
        req.oci_spec.clear();
        let err = CreateContainer::try_from(req).unwrap_err();
        assert!(err.to_string().contains("oci_spec is empty"), "{err}");
    }
}
