//! PID-1 duties of husk-agent in the guest: the kernel starts it with nothing
//! mounted, so it moves off the initramfs root mount (see
//! [`leave_initramfs_root`]), mounts the pseudo filesystems containers and
//! the engine rely on, turns on the cgroup v2 controllers, and powers the
//! guest off on a fatal error so the host sees the guest end instead of a
//! kernel panic ("attempted to kill init"). The binary starts the reaper.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;

/// What went wrong while setting up the guest.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("creating mount point {path}: {source}")]
    MountPoint {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mounting {fstype} at {path}: {source}")]
    Mount {
        fstype: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
    #[error("moving off the initramfs root: {step}: {source}")]
    LeaveInitramfs {
        step: &'static str,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    ReadControllers {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("enabling cgroup controllers {controllers:?} in {path}: {source}")]
    EnableControllers {
        controllers: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One filesystem PID 1 mounts.
struct PseudoMount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In order: /dev before /dev/pts, /sys before /sys/fs/cgroup.
const PSEUDO_MOUNTS: &[PseudoMount] = &[
    PseudoMount {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    PseudoMount {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    PseudoMount {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    PseudoMount {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620"),
    },
    PseudoMount {
        fstype: "tmpfs",
        target: "/run",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    PseudoMount {
        fstype: "cgroup2",
        target: CGROUP_ROOT,
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
];

/// Where the agent mounts the cgroup v2 hierarchy.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Whether this process is the guest's init.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Mounts /proc, /sys, /dev, /dev/pts, /run and cgroup2, then enables every
/// available cgroup controller for the containers below the root.
pub fn setup_guest() -> Result<(), InitError> {
    leave_initramfs_root()?;
    for m in PSEUDO_MOUNTS {
        mount_pseudo(m)?;
    }
    // The initramfs's /dev/console is hidden under devtmpfs, which has its own.
    let ptmx = Path::new("/dev/ptmx");
    if !ptmx.exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", ptmx);
    }
    let enabled = enable_cgroup_controllers(Path::new(CGROUP_ROOT))?;
    tracing::info!(controllers = %enabled, "guest filesystems mounted, cgroup controllers enabled");
    Ok(())
}

/// Where / is bound before it replaces the initramfs root.
const BOUND_ROOT: &str = "/.husk-root";

/// An initramfs is the kernel's `rootfs` mount, the one mount with no
/// parent, and pivot_root(2) refuses to leave it (EINVAL), so no container
/// could be set up. Binding / onto a folder, moving that bind mount over /
/// and chrooting into it (switch_root without the copy) gives the agent a
/// root mount that has a parent. Other roots (a pmem or disk image) are kept.
fn leave_initramfs_root() -> Result<(), InitError> {
    use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
    // linux/magic.h; libc does not export it.
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    let step = |step| {
        move |e: nix::Error| InitError::LeaveInitramfs {
            step,
            source: e.into(),
        }
    };
    let kind = statfs("/").map_err(step("statfs /"))?.filesystem_type();
    if kind != RAMFS_MAGIC && kind != TMPFS_MAGIC {
        return Ok(());
    }
    let none: Option<&str> = None;
    if let Err(source) = std::fs::create_dir(BOUND_ROOT) {
        if source.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(InitError::LeaveInitramfs {
                step: "mkdir",
                source,
            });
        }
    }
    mount(Some("/"), BOUND_ROOT, none, MsFlags::MS_BIND, none).map_err(step("bind /"))?;
    nix::unistd::chdir(BOUND_ROOT).map_err(step("chdir"))?;
    mount(Some("."), "/", none, MsFlags::MS_MOVE, none).map_err(step("move onto /"))?;
    nix::unistd::chroot(".").map_err(step("chroot"))?;
    nix::unistd::chdir("/").map_err(step("chdir /"))?;
    // The bind shows the (now unused) mount point too; tidy it away.
    let _ = std::fs::remove_dir(BOUND_ROOT);
    tracing::info!("initramfs root: re-rooted on a bind mount so containers can pivot_root");
    Ok(())
}

fn mount_pseudo(m: &PseudoMount) -> Result<(), InitError> {
    let path = Path::new(m.target);
    // Booted from a disk or pmem root, the kernel mounts devtmpfs on /dev
    // itself (DEVTMPFS_MOUNT); a second mount there is refused (EBUSY).
    if already_mounted(m) {
        tracing::info!(
            fstype = m.fstype,
            target = m.target,
            "already mounted by the kernel"
        );
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|source| InitError::MountPoint {
        path: path.into(),
        source,
    })?;
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    mount(Some(m.fstype), path, Some(m.fstype), m.flags, m.data).map_err(|source| {
        InitError::Mount {
            fstype: m.fstype,
            path: path.into(),
            source,
        }
    })
}

/// Whether /proc/self/mounts already shows `m` (its type at its target).
fn already_mounted(m: &PseudoMount) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts.lines().any(|l| {
        let mut f = l.split(' ');
        let (_, target, fstype) = (f.next(), f.next(), f.next());
        target == Some(m.target) && fstype == Some(m.fstype)
    })
}

/// Writes "+cpu +memory ..." for every controller listed in
/// `cgroup.controllers` into `cgroup.subtree_control`; returns what it wrote.
pub fn enable_cgroup_controllers(root: &Path) -> Result<String, InitError> {
    let list = root.join("cgroup.controllers");
    let available =
        std::fs::read_to_string(&list).map_err(|source| InitError::ReadControllers {
            path: list.clone(),
            source,
        })?;
    let request = subtree_control_request(&available);
    if request.is_empty() {
        return Ok(request);
    }
    let control = root.join("cgroup.subtree_control");
    std::fs::write(&control, &request).map_err(|source| InitError::EnableControllers {
        controllers: request.clone(),
        path: control,
        source,
    })?;
    Ok(request)
}

/// "cpu io memory" -> "+cpu +io +memory".
fn subtree_control_request(available: &str) -> String {
    available
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Ends the guest after a fatal error: logs, syncs and powers off. Never
/// returns; if even power-off fails PID 1 has nothing better to do than exit
/// (the kernel then panics, which husk also reports).
pub fn power_off(reason: &dyn std::fmt::Display) -> ! {
    tracing::error!("husk-agent: fatal: {reason}; powering the guest off");
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    tracing::error!("husk-agent: power-off failed: {err:?}");
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_available_controller_is_requested() {
        assert_eq!(
            subtree_control_request("cpuset cpu io memory pids\n"),
            "+cpuset +cpu +io +memory +pids"
        );
        assert_eq!(subtree_control_request("\n"), "");
    }

    #[test]
    fn controllers_are_written_to_subtree_control() {
        let dir = std::env::temp_dir().join(format!("husk-init-cg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.controllers"), "memory pids\n").unwrap();
        let written = enable_cgroup_controllers(&dir).unwrap();
        assert_eq!(written, "+memory +pids");
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap(),
            "+memory +pids"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_controller_list_names_the_file() {
        let err = enable_cgroup_controllers(Path::new("/nonexistent-husk-cgroup")).unwrap_err();
        assert!(
            err.to_string()
                .contains("/nonexistent-husk-cgroup/cgroup.controllers"),
            "{err}"
        );
    }
}
