//! Host mounts of a sandbox: containerd's rootfs (an overlay snapshot) at
//! `<bundle>/rootfs`, each container's rootfs and bind mounts made visible
//! under the sandbox's shared directory, and taking all of it down again.
//!
//! The shared directory is what the sandbox's one virtio-fs device serves,
//! so a container added later appears in the guest as a new directory there,
//! without a new device. Each bind mount into it is made a slave (of the
//! source's peer group when the source is shared), so mounts on the source
//! side still propagate into it, but nothing done inside the shared tree
//! leaks back to the host's mounts.
//! Teardown reads /proc/self/mountinfo and lazily unmounts everything below
//! a directory, deepest first, so a crashed runtime's leftovers go too.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(
        "rootfs mount type {typ:?} cannot be shared with the VM: husk shares overlay and \
         bind mounts (containerd's overlayfs and native snapshotters)"
    )]
    Unsupported { typ: String },
    #[error("containerd gave {0} rootfs mounts; husk takes one (overlay or bind)")]
    TooMany(usize),
    #[error("mounting {what} at {path}: {source}")]
    Mount {
        what: String,
        path: PathBuf,
        source: nix::Error,
    },
    #[error("unmounting {path}: {source}")]
    Unmount { path: PathBuf, source: nix::Error },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One of containerd's rootfs mounts (CreateTaskRequest.rootfs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    pub typ: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Checks containerd's rootfs mounts are ones husk can share (before a
/// sandbox is booted for them): none, or one overlay or bind mount.
pub fn check_rootfs(mounts: &[RootfsMount]) -> Result<(), MountError> {
    match mounts {
        [] => Ok(()),
        [m] if m.typ == "overlay" || is_bind(m) => Ok(()),
        [m] => Err(MountError::Unsupported { typ: m.typ.clone() }),
        more => Err(MountError::TooMany(more.len())),
    }
}

fn is_bind(m: &RootfsMount) -> bool {
    m.typ == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind")
}

/// Mounts containerd's rootfs mounts at `target`; nothing to do when there
/// are none (the bundle's rootfs is already in place).
pub fn mount_rootfs(mounts: &[RootfsMount], target: &Path) -> Result<(), MountError> {
    check_rootfs(mounts)?;
    let [m] = mounts else {
        return Ok(());
    };
    create_dir(target)?;
    let (mut flags, data) = split_options(&m.options);
    let fstype = if m.typ == "overlay" {
        Some("overlay")
    } else {
        flags |= MsFlags::MS_BIND;
        None
    };
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(Some(m.source.as_str()), target, fstype, flags, data).map_err(|source| {
        MountError::Mount {
            what: format!("the {} rootfs", m.typ),
            path: target.into(),
            source,
        }
    })
}

/// Bind-mounts `src` (a file or a directory) at `dst`, creating `dst` to
/// match, as a slave of `src`, read-only if asked.
pub fn bind(src: &Path, dst: &Path, read_only: bool, recursive: bool) -> Result<(), MountError> {
    let meta = std::fs::metadata(src).map_err(|source| MountError::Io {
        what: "bind mount source",
        path: src.into(),
        source,
    })?;
    if meta.is_dir() {
        create_dir(dst)?;
    } else {
        if let Some(parent) = dst.parent() {
            create_dir(parent)?;
        }
        std::fs::File::create(dst).map_err(|source| MountError::Io {
            what: "creating bind mount point",
            path: dst.into(),
            source,
        })?;
    }
    let fail = |what: &str| {
        let what = format!("{what} {}", src.display());
        move |source| MountError::Mount {
            what,
            path: dst.into(),
            source,
        }
    };
    let rec = if recursive {
        MsFlags::MS_REC
    } else {
        MsFlags::empty()
    };
    let none: Option<&str> = None;
    mount(Some(src), dst, none, MsFlags::MS_BIND | rec, none).map_err(fail("binding"))?;
    mount(none, dst, none, MsFlags::MS_SLAVE | rec, none).map_err(fail("making a slave of"))?;
    if read_only {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(none, dst, none, flags, none).map_err(fail("remounting read-only"))?;
    }
    Ok(())
}

/// Lazily unmounts every mount at or below `dir`, deepest first; returns
/// how many. A missing `dir` has none.
pub fn unmount_all_under(dir: &Path) -> Result<usize, MountError> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| MountError::Io {
            what: "reading",
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    // Deepest first; a path mounted twice is unmounted twice.
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in &points {
        match umount2(p, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
            Err(source) => {
                return Err(MountError::Unmount {
                    path: p.clone(),
                    source,
                })
            }
        }
    }
    Ok(points.len())
}

/// Unmounts everything below `dir`, then removes it, never crossing into
/// another filesystem: if anything is still mounted below, the removal
/// stops there with an error instead of deleting what the mount holds
/// (a host directory bound into a container, say).
pub fn remove_tree(dir: &Path) -> Result<(), MountError> {
    unmount_all_under(dir)?;
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io_err("inspecting", dir, source)),
    };
    remove_same_fs(dir, std::os::unix::fs::MetadataExt::dev(&meta))
}

fn remove_same_fs(path: &Path, dev: u64) -> Result<(), MountError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).map_err(|e| io_err("inspecting", path, e))?;
    if meta.dev() != dev {
        return Err(io_err(
            "refusing to remove",
            path,
            std::io::Error::other("another filesystem is still mounted there"),
        ));
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| io_err("reading", path, e))? {
            let entry = entry.map_err(|e| io_err("reading", path, e))?;
            remove_same_fs(&entry.path(), dev)?;
        }
        std::fs::remove_dir(path).map_err(|e| io_err("removing", path, e))
    } else {
        std::fs::remove_file(path).map_err(|e| io_err("removing", path, e))
    }
}

fn io_err(what: &'static str, path: &Path, source: std::io::Error) -> MountError {
    MountError::Io {
        what,
        path: path.into(),
        source,
    }
}

/// The mount point (5th field) of a mountinfo line, octal escapes decoded.
fn mount_point(line: &str) -> Option<PathBuf> {
    let field = line.split(' ').nth(4)?;
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes.get(i + 1..i + 4).filter(|_| bytes[i] == b'\\');
        match escaped.and_then(|o| u8::from_str_radix(std::str::from_utf8(o).ok()?, 8).ok()) {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Some(PathBuf::from(
        <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out),
    ))
}

fn create_dir(path: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(path).map_err(|source| MountError::Io {
        what: "creating",
        path: path.into(),
        source,
    })
}

/// mount(8)-style options: the flags mount(2) takes, and the rest as data.
/// Public for the fuzz targets (a rootfs mount's options are containerd's).
pub fn split_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
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
    fn mountinfo_points_are_decoded() {
        let line = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw";
        assert_eq!(mount_point(line), Some(PathBuf::from("/mnt/with space")));
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["ro", "rbind", "lowerdir=/a", "index=off"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = split_options(&opts);
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC));
        assert_eq!(data, "lowerdir=/a,index=off");
    }

    #[test]
    fn only_one_overlay_or_bind_rootfs_is_taken() {
        let dir = std::env::temp_dir().join(format!("husk-mounts-{}", std::process::id()));
        let m = |typ: &str| RootfsMount {
            typ: typ.into(),
            source: "/dev/vdb".into(),
            options: vec![],
        };
        let err = mount_rootfs(&[m("ext4")], &dir).unwrap_err();
        assert!(err.to_string().contains("\"ext4\"") && err.to_string().contains("overlay"));
        assert!(matches!(
            mount_rootfs(&[m("overlay"), m("overlay")], &dir),
            Err(MountError::TooMany(2))
        ));
        assert!(mount_rootfs(&[], &dir).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_bind_into_a_tree_is_a_slave_and_all_of_it_comes_down() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!(
                "SKIP a_bind_into_a_tree_is_a_slave_and_all_of_it_comes_down: needs root to mount"
            );
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let (src, tree) = (base.path().join("src"), base.path().join("tree"));
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("file"), "hello").unwrap();
        bind(&src, &tree.join("dir"), true, false).unwrap();
        bind(&src.join("file"), &tree.join("one/file"), false, false).unwrap();
        assert_eq!(
            std::fs::read_to_string(tree.join("dir/file")).unwrap(),
            "hello"
        );
        assert_eq!(
            std::fs::read_to_string(tree.join("one/file")).unwrap(),
            "hello"
        );
        assert!(
            std::fs::write(tree.join("dir/new"), "x").is_err(),
            "read-only bind"
        );
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info
            .lines()
            .find(|l| mount_point(l) == Some(tree.join("dir")))
            .unwrap();
        assert!(
            !line.contains("shared:"),
            "propagates back to the host: {line}"
        );
        assert_eq!(unmount_all_under(&tree).unwrap(), 2);
        assert_eq!(unmount_all_under(&tree).unwrap(), 0);
        assert!(!tree.join("dir/file").exists());

        // Removing a tree with a mount still in it unmounts first: the
        // bound source is untouched.
        bind(&src, &tree.join("again"), false, true).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(std::fs::read_to_string(src.join("file")).unwrap(), "hello");
    }
}
