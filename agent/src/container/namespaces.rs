//! Which namespaces a container process creates and which it joins.
//!
//! A container's init creates those its spec lists without a path and joins
//! those with one (a user namespace, a time namespace and joining another
//! mount namespace are refused). An exec joins every namespace of the
//! container's init through /proc/<pid>/ns, the mount namespace last.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};

use super::spawn::NamespacePlan;
use super::ContainerError;

fn namespace_flag(kind: LinuxNamespaceType) -> Result<CloneFlags, ContainerError> {
    Ok(match kind {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::User | LinuxNamespaceType::Time => {
            return Err(ContainerError::Unsupported(format!("{kind:?} namespaces")))
        }
    })
}

fn open_namespace(path: &Path) -> Result<OwnedFd, ContainerError> {
    File::open(path)
        .map(OwnedFd::from)
        .map_err(|e| ContainerError::InvalidSpec(format!("namespace path {}: {e}", path.display())))
}

/// A plan that does nothing yet, and the spec's namespace list.
fn empty_plan(spec: &Spec) -> (NamespacePlan, Vec<LinuxNamespace>) {
    let plan = NamespacePlan {
        join: Vec::new(),
        unshare: CloneFlags::empty(),
        new_cgroup_ns: false,
    };
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone());
    (plan, namespaces.unwrap_or_default())
}

/// The namespaces a new container creates or joins, from its spec.
pub fn init_namespaces(spec: &Spec) -> Result<NamespacePlan, ContainerError> {
    let (mut plan, namespaces) = empty_plan(spec);
    for ns in &namespaces {
        let flag = namespace_flag(ns.typ())?;
        match ns.path() {
            Some(_) if flag == CloneFlags::CLONE_NEWNS => {
                return Err(ContainerError::Unsupported(
                    "joining an existing mount namespace".into(),
                ))
            }
            Some(path) => plan.join.push((open_namespace(path)?, flag)),
            None if flag == CloneFlags::CLONE_NEWCGROUP => plan.new_cgroup_ns = true,
            None => plan.unshare |= flag,
        }
    }
    if !plan.unshare.contains(CloneFlags::CLONE_NEWNS) {
        return Err(ContainerError::InvalidSpec(
            "linux.namespaces must create a mount namespace".into(),
        ));
    }
    if spec.hostname().is_some() && !plan.unshare.contains(CloneFlags::CLONE_NEWUTS) {
        return Err(ContainerError::InvalidSpec(
            "hostname needs a new uts namespace".into(),
        ));
    }
    Ok(plan)
}

/// The namespaces an exec joins: the container init's.
pub fn exec_namespaces(spec: &Spec, init_pid: i32) -> Result<NamespacePlan, ContainerError> {
    let (mut plan, namespaces) = empty_plan(spec);
    // The mount namespace last: after it, /proc is the container's.
    for (kind, name) in [
        (LinuxNamespaceType::Ipc, "ipc"),
        (LinuxNamespaceType::Uts, "uts"),
        (LinuxNamespaceType::Network, "net"),
        (LinuxNamespaceType::Pid, "pid"),
        (LinuxNamespaceType::Cgroup, "cgroup"),
        (LinuxNamespaceType::Mount, "mnt"),
    ] {
        if namespaces.iter().any(|ns| ns.typ() == kind) {
            let path = format!("/proc/{init_pid}/ns/{name}");
            let fd = File::open(&path)
                .map(OwnedFd::from)
                .map_err(|e| ContainerError::Io {
                    what: format!("opening {path}"),
                    source: e,
                })?;
            plan.join.push((fd, namespace_flag(kind)?));
        }
    }
    Ok(plan)
}
