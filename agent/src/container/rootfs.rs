//! The container's filesystem view, built inside its new mount namespace.
//!
//! Runs in the container's first process (before exec), in this order as runc
//! does: make every mount private/slave so nothing leaks back, bind the rootfs
//! onto itself, mount the spec's mounts under it, create /dev nodes and links,
//! pivot_root, apply sysctls, read-only paths, masked paths, read-only root.
//! Mount destinations come from untrusted specs and point into an untrusted
//! rootfs, so they are resolved with symlinks evaluated inside the rootfs.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Spec};

use super::cgroup::Cgroup;
use super::ContainerError;

/// Errors in the child are plain text: they cross the control channel.
pub type ChildResult<T> = Result<T, String>;

fn at(what: &str, path: &Path, error: impl std::fmt::Display) -> String {
    format!("{what} {}: {error}", path.display())
}

/// Device nodes every container gets, as runc creates them.
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// One mount of the spec, with its options already parsed.
#[derive(Debug, Clone)]
pub struct MountPlan {
    pub destination: PathBuf,
    pub fstype: String,
    pub source: Option<PathBuf>,
    pub flags: MsFlags,
    pub propagation: MsFlags,
    pub data: String,
}

/// How to mount the cgroup filesystem inside the container.
#[derive(Debug, Clone)]
pub enum CgroupMount {
    V2,
    /// (controller, host directory of the container's cgroup)
    V1(Vec<(String, PathBuf)>),
}

/// Everything the child needs to build the rootfs, prepared before the clone.
#[derive(Debug, Clone)]
pub struct RootfsPlan {
    pub rootfs: PathBuf,
    pub mounts: Vec<MountPlan>,
    pub cgroup_mount: CgroupMount,
    pub devices: Vec<LinuxDevice>,
    pub root_propagation: MsFlags,
    pub readonly_root: bool,
    pub masked: Vec<PathBuf>,
    pub readonly: Vec<PathBuf>,
    pub sysctl: Vec<(String, String)>,
}

fn parse_options(options: &[String]) -> (MsFlags, MsFlags, String) {
    let (mut flags, mut propagation, mut data) = (MsFlags::empty(), MsFlags::empty(), Vec::new());
    for option in options {
        let (set, clear) = match option.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                propagation |= propagation_flags(option).unwrap_or(MsFlags::empty());
                continue;
            }
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, propagation, data.join(","))
}

fn propagation_flags(name: &str) -> Option<MsFlags> {
    let base = match name.trim_start_matches('r') {
        "private" => MsFlags::MS_PRIVATE,
        "shared" => MsFlags::MS_SHARED,
        "slave" => MsFlags::MS_SLAVE,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        _ => return None,
    };
    Some(if name.starts_with('r') {
        base | MsFlags::MS_REC
    } else {
        base
    })
}

fn clean_relative(path: &Path, field: &str) -> Result<PathBuf, ContainerError> {
    if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(ContainerError::InvalidSpec(format!(
            "{field}: {} must be absolute without ..",
            path.display()
        )));
    }
    Ok(path.to_path_buf())
}

impl RootfsPlan {
    /// Checks the spec's filesystem parts and prepares them for the child.
    pub fn from_spec(spec: &Spec, rootfs: &Path, cgroup: &Cgroup) -> Result<Self, ContainerError> {
        let linux = spec.linux().clone().unwrap_or_default();
        let mut mounts = Vec::new();
        for m in spec.mounts().iter().flatten() {
            let destination = clean_relative(m.destination(), "mounts[].destination")?;
            let (flags, propagation, data) = parse_options(m.options().as_deref().unwrap_or(&[]));
            let fstype = m.typ().clone().unwrap_or_else(|| {
                if flags.contains(MsFlags::MS_BIND) {
                    "bind".into()
                } else {
                    String::new()
                }
            });
            if fstype.is_empty() {
                return Err(ContainerError::InvalidSpec(format!(
                    "mount {}: no type",
                    destination.display()
                )));
            }
            mounts.push(MountPlan {
                destination,
                fstype,
                source: m.source().clone(),
                flags,
                propagation,
                data,
            });
        }
        let root_propagation = match linux.rootfs_propagation() {
            None => MsFlags::MS_SLAVE | MsFlags::MS_REC,
            Some(name) => propagation_flags(name).ok_or_else(|| {
                ContainerError::InvalidSpec(format!("linux.rootfsPropagation {name:?}"))
            })?,
        };
        let paths =
            |list: &Option<Vec<String>>, field: &str| -> Result<Vec<PathBuf>, ContainerError> {
                list.iter()
                    .flatten()
                    .map(|p| clean_relative(Path::new(p), field))
                    .collect()
            };
        let cgroup_mount = match cgroup.v1_dirs() {
            Some(dirs) => CgroupMount::V1(dirs),
            None => CgroupMount::V2,
        };
        let mut sysctl: Vec<(String, String)> = linux
            .sysctl()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        sysctl.sort();
        if sysctl
            .iter()
            .any(|(k, _)| k.contains('/') || k.contains(".."))
        {
            return Err(ContainerError::InvalidSpec(
                "linux.sysctl: key with '/' or '..'".into(),
            ));
        }
        Ok(RootfsPlan {
            rootfs: rootfs.to_path_buf(),
            mounts,
            cgroup_mount,
            devices: linux.devices().clone().unwrap_or_default(),
            root_propagation,
            readonly_root: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
            masked: paths(linux.masked_paths(), "linux.maskedPaths")?,
            readonly: paths(linux.readonly_paths(), "linux.readonlyPaths")?,
            sysctl,
        })
    }
}

/// Resolves `path` under `root`, following symlinks as if `root` were "/".
fn secure_join(root: &Path, path: &Path) -> ChildResult<PathBuf> {
    let mut queue: VecDeque<OsString> = path.components().filter_map(part).collect();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(next) = queue.pop_front() {
        if next == ".." {
            resolved.pop();
            continue;
        }
        let candidate = root.join(&resolved).join(&next);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(at("too many symlinks resolving", path, "ELOOP"));
                }
                let target =
                    fs::read_link(&candidate).map_err(|e| at("readlink", &candidate, e))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for (i, p) in target.components().filter_map(part).enumerate() {
                    queue.insert(i, p);
                }
            }
            _ => resolved.push(next),
        }
    }
    Ok(root.join(resolved))
}

fn part(component: Component<'_>) -> Option<OsString> {
    match component {
        Component::Normal(p) => Some(p.to_os_string()),
        Component::ParentDir => Some("..".into()),
        _ => None,
    }
}

fn do_mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: &str,
) -> ChildResult<()> {
    let data = (!data.is_empty()).then_some(data);
    mount(source, target, fstype, flags, data).map_err(|e| at("mount", target, e))
}

fn mount_one(plan: &RootfsPlan, m: &MountPlan) -> ChildResult<()> {
    let target = secure_join(&plan.rootfs, &m.destination)?;
    if m.flags.contains(MsFlags::MS_BIND) || m.fstype == "bind" {
        let source = m
            .source
            .as_deref()
            .ok_or_else(|| at("bind mount without source to", &m.destination, ""))?;
        let is_dir = fs::metadata(source)
            .map_err(|e| at("bind source", source, e))?
            .is_dir();
        make_target(&target, is_dir)?;
        let rec = m.flags & MsFlags::MS_REC;
        do_mount(Some(source), &target, None, MsFlags::MS_BIND | rec, "")?;
        let extra = m.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            do_mount(
                None,
                &target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rec | extra,
                "",
            )?;
        }
    } else if m.fstype == "cgroup" || m.fstype == "cgroup2" {
        make_target(&target, true)?;
        mount_cgroup(plan, &target, m.flags)?;
    } else {
        make_target(&target, true)?;
        let source = m.source.clone().unwrap_or_else(|| PathBuf::from(&m.fstype));
        do_mount(Some(&source), &target, Some(&m.fstype), m.flags, &m.data)?;
    }
    if !m.propagation.is_empty() {
        do_mount(None, &target, None, m.propagation, "")?;
    }
    Ok(())
}

fn mount_cgroup(plan: &RootfsPlan, target: &Path, flags: MsFlags) -> ChildResult<()> {
    let flags = flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match &plan.cgroup_mount {
        CgroupMount::V2 => do_mount(
            Some(Path::new("cgroup2")),
            target,
            Some("cgroup2"),
            flags,
            "",
        ),
        CgroupMount::V1(dirs) => {
            // A tmpfs holding one directory per controller, each a bind of
            // the container's own cgroup (what runc does without cgroupns).
            do_mount(
                Some(Path::new("tmpfs")),
                target,
                Some("tmpfs"),
                flags & !MsFlags::MS_RDONLY,
                "mode=755",
            )?;
            for (name, host_dir) in dirs {
                let sub = target.join(name);
                fs::create_dir_all(&sub).map_err(|e| at("mkdir", &sub, e))?;
                do_mount(Some(host_dir), &sub, None, MsFlags::MS_BIND, "")?;
                let ro = flags & MsFlags::MS_RDONLY;
                do_mount(
                    None,
                    &sub,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | ro,
                    "",
                )?;
            }
            if flags.contains(MsFlags::MS_RDONLY) {
                do_mount(None, target, None, MsFlags::MS_REMOUNT | flags, "mode=755")?;
            }
            Ok(())
        }
    }
}

fn make_target(target: &Path, dir: bool) -> ChildResult<()> {
    if dir {
        return fs::create_dir_all(target).map_err(|e| at("mkdir", target, e));
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| at("mkdir", parent, e))?;
    }
    if !target.exists() {
        fs::File::create(target).map_err(|e| at("create", target, e))?;
    }
    Ok(())
}

fn make_device(dev: &Path, kind: SFlag, major: u64, minor: u64, mode: u32) -> ChildResult<()> {
    if fs::symlink_metadata(dev).is_ok() {
        return Ok(());
    }
    if let Some(parent) = dev.parent() {
        fs::create_dir_all(parent).map_err(|e| at("mkdir", parent, e))?;
    }
    mknod(
        dev,
        kind,
        Mode::from_bits_truncate(mode),
        makedev(major, minor),
    )
    .map_err(|e| at("mknod", dev, e))?;
    fs::set_permissions(dev, fs::Permissions::from_mode(mode)).map_err(|e| at("chmod", dev, e))
}

fn create_devices(plan: &RootfsPlan) -> ChildResult<()> {
    let dev_dir = secure_join(&plan.rootfs, Path::new("/dev"))?;
    for (name, major, minor) in DEFAULT_DEVICES {
        make_device(&dev_dir.join(name), SFlag::S_IFCHR, major, minor, 0o666)?;
    }
    for device in &plan.devices {
        let kind = match device.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(at("device type 'a' for", device.path(), "not a node"))
            }
        };
        let path = secure_join(&plan.rootfs, device.path())?;
        let mode = device.file_mode().unwrap_or(0o666) & 0o7777;
        make_device(
            &path,
            kind,
            device.major() as u64,
            device.minor() as u64,
            mode,
        )?;
        if device.uid().is_some() || device.gid().is_some() {
            std::os::unix::fs::chown(&path, device.uid(), device.gid())
                .map_err(|e| at("chown", &path, e))?;
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let path = dev_dir.join(link);
        if fs::symlink_metadata(&path).is_err() {
            symlink(target, &path).map_err(|e| at("symlink", &path, e))?;
        }
    }
    Ok(())
}

fn pivot_into(rootfs: &Path) -> ChildResult<()> {
    nix::unistd::chdir(rootfs).map_err(|e| at("chdir", rootfs, e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| at("pivot_root to", rootfs, e))?;
    // The old root now sits on top of "/"; detach it without propagating.
    do_mount(
        None,
        Path::new("."),
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "",
    )?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| at("unmount old root", Path::new("/"), e))?;
    nix::unistd::chdir("/").map_err(|e| at("chdir", Path::new("/"), e))
}

fn mask(path: &Path) -> ChildResult<()> {
    match fs::metadata(path) {
        Err(_) => Ok(()),
        Ok(meta) if meta.is_dir() => do_mount(
            Some(Path::new("tmpfs")),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            "",
        ),
        Ok(_) => do_mount(
            Some(Path::new("/dev/null")),
            path,
            None,
            MsFlags::MS_BIND,
            "",
        ),
    }
}

fn make_readonly(path: &Path) -> ChildResult<()> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let rec = MsFlags::MS_BIND | MsFlags::MS_REC;
    do_mount(Some(path), path, None, rec, "")?;
    do_mount(
        None,
        path,
        None,
        rec | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        "",
    )
}

/// Builds the container's filesystem and pivots into it. Child side only.
pub fn prepare(plan: &RootfsPlan) -> ChildResult<()> {
    do_mount(None, Path::new("/"), None, plan.root_propagation, "")?;
    do_mount(
        Some(&plan.rootfs),
        &plan.rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        "",
    )?;
    for m in &plan.mounts {
        mount_one(plan, m)?;
    }
    create_devices(plan)?;
    pivot_into(&plan.rootfs)?;
    for (key, value) in &plan.sysctl {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        fs::write(&path, value).map_err(|e| at("sysctl", &path, e))?;
    }
    for path in &plan.readonly {
        make_readonly(path)?;
    }
    for path in &plan.masked {
        mask(path)?;
    }
    if plan.readonly_root {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        do_mount(None, Path::new("/"), None, flags, "")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let opts: Vec<String> = ["nosuid", "ro", "rslave", "mode=755", "size=65536k", "rw"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, propagation, data) = parse_options(&opts);
        assert_eq!(flags, MsFlags::MS_NOSUID);
        assert_eq!(propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(data, "mode=755,size=65536k");
    }

    #[test]
    fn secure_join_keeps_symlinks_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        symlink("/etc", root.path().join("escape")).unwrap();
        symlink("../../..", root.path().join("up")).unwrap();
        assert_eq!(
            secure_join(root.path(), Path::new("/escape/x")).unwrap(),
            root.path().join("etc/x")
        );
        assert_eq!(
            secure_join(root.path(), Path::new("/up/proc")).unwrap(),
            root.path().join("proc")
        );
        assert_eq!(
            secure_join(root.path(), Path::new("/../a")).unwrap(),
            root.path().join("a")
        );
    }
}
