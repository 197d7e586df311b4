//! Mounting a container's root filesystem when CreateContainer asks for it
//! (`Rootfs.fstype` set: e.g. a virtio-fs share or a pmem device), and
//! unmounting it again when the container is removed or its creation fails,
//! so a failed request leaves no mount behind.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::requests::{RootfsMount, RootfsSpec};
use super::status::RpcError;

/// A mount this module made; [`MountedRootfs::unmount`] undoes it.
#[derive(Debug)]
pub struct MountedRootfs {
    path: PathBuf,
    created_dir: bool,
}

/// Mounts `spec.mount` at `spec.path` if there is one; `Ok(None)` when the
/// rootfs is already in place (e.g. carried in the initramfs).
pub fn mount_rootfs(spec: &RootfsSpec) -> Result<Option<MountedRootfs>, RpcError> {
    let Some(m) = &spec.mount else {
        return Ok(None);
    };
    let created_dir = !spec.path.exists();
    std::fs::create_dir_all(&spec.path).map_err(|e| {
        RpcError::Internal(format!(
            "creating rootfs mount point {}: {e}",
            spec.path.display()
        ))
    })?;
    let (flags, data) = split_options(&m.options);
    let result = mount(
        Some(m.source.as_str()),
        &spec.path,
        Some(m.fstype.as_str()),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    );
    if let Err(e) = result {
        if created_dir {
            let _ = std::fs::remove_dir(&spec.path);
        }
        return Err(mount_error(m, &spec.path, e));
    }
    tracing::debug!(path = %spec.path.display(), fstype = %m.fstype, "rootfs mounted");
    Ok(Some(MountedRootfs {
        path: spec.path.clone(),
        created_dir,
    }))
}

fn mount_error(m: &RootfsMount, path: &Path, e: nix::Error) -> RpcError {
    let text = format!(
        "mounting rootfs {:?} ({}) at {}: {e}",
        m.source,
        m.fstype,
        path.display()
    );
    match e {
        nix::Error::ENOENT | nix::Error::ENODEV | nix::Error::EINVAL | nix::Error::ENOTBLK => {
            RpcError::InvalidArgument(text)
        }
        _ => RpcError::Internal(text),
    }
}

impl MountedRootfs {
    /// Detaches the mount (lazily, so a straggling process cannot pin it) and
    /// removes the mount point if this module created it.
    pub fn unmount(self) -> Result<(), RpcError> {
        umount2(&self.path, MntFlags::MNT_DETACH).map_err(|e| {
            RpcError::Internal(format!("unmounting rootfs {}: {e}", self.path.display()))
        })?;
        if self.created_dir {
            let _ = std::fs::remove_dir(&self.path);
        }
        Ok(())
    }
}

/// Splits mount(8)-style options into flags and the data string the
/// filesystem parses ("ro,nosuid,size=1m" -> RDONLY|NOSUID, "size=1m").
/// "bind"/"rbind" make a bind mount of a guest folder (fstype is then
/// ignored by the kernel; "none" by convention).
fn split_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for opt in options.iter().flat_map(|o| o.split(',')) {
        match opt {
            "" | "rw" | "defaults" => {}
            "ro" => flags |= MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) = split_options(&["ro,nosuid".into(), "size=1m,mode=0755".into()]);
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(data, "size=1m,mode=0755");
        let (flags, data) = split_options(&["rbind".into()]);
        assert_eq!(flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(data, "");
        assert_eq!(split_options(&[]), (MsFlags::empty(), String::new()));
    }

    fn spec(path: &Path, fstype: &str) -> RootfsSpec {
        RootfsSpec {
            path: path.into(),
            mount: Some(RootfsMount {
                source: "husk-test".into(),
                fstype: fstype.into(),
                options: vec!["size=1m".into()],
            }),
        }
    }

    #[test]
    fn a_tmpfs_rootfs_is_mounted_and_cleaned_up() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping a_tmpfs_rootfs_is_mounted_and_cleaned_up: mounting needs root");
            return;
        }
        let path = std::env::temp_dir().join(format!("husk-rootfs-mount-{}", std::process::id()));
        let mounted = mount_rootfs(&spec(&path, "tmpfs")).unwrap().unwrap();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            mounts.contains(&format!(" {} tmpfs ", path.display())),
            "{mounts}"
        );
        mounted.unmount().unwrap();
        assert!(!path.exists(), "the mount point it created is removed");
    }

    #[test]
    fn a_bad_fstype_is_refused_and_leaves_nothing() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping a_bad_fstype_is_refused_and_leaves_nothing: mounting needs root");
            return;
        }
        let path = std::env::temp_dir().join(format!("husk-rootfs-bad-{}", std::process::id()));
        let err = mount_rootfs(&spec(&path, "no-such-fs")).unwrap_err();
        assert!(matches!(err, RpcError::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains("no-such-fs"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn no_mount_requested_is_none() {
        let spec = RootfsSpec {
            path: "/containers/x".into(),
            mount: None,
        };
        assert!(mount_rootfs(&spec).unwrap().is_none());
    }
}
