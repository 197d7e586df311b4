//! The host cgroup of a sandbox: the husk process (VMM, devices, shim)
//! joins the cgroup containerd asked for in the sandbox's spec
//! (`linux.cgroupsPath`), as Kata's `sandbox_cgroup_only` does.
//!
//! Why: the VM is what a pod costs the host, so the pod's cgroup must hold
//! it. Kubelet's pod cgroup (the parent of that path) then accounts for the
//! VM's memory and CPU, and CRI's PodSandboxStats, which containerd reads
//! from that cgroup on the host, reports them. No limits are written: the
//! VM's size already bounds it, and the guest enforces the containers'
//! limits.
//!
//! Only the cgroupfs form is supported (a path; no systemd `slice:prefix:name`,
//! this host has no systemd). The path is untrusted: it must not climb out
//! with `..`. On cgroup v1 the process joins the memory, cpu, cpuacct and
//! pids hierarchies; on a pure v2 host the unified hierarchy. Directories
//! husk created (and only those) are removed again, deepest first, after
//! the process moved back to the root cgroup; `host::release_recorded`
//! does the same for a husk process that died, giving its threads a few
//! seconds to finish leaving.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The v1 hierarchies a sandbox joins: what PodSandboxStats reads, and pids.
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];

#[derive(Debug, thiserror::Error)]
pub enum HostCgroupError {
    #[error(
        "linux.cgroupsPath {0:?} is not a cgroupfs path (husk uses the cgroupfs driver: \
         no systemd slices, no `..`)"
    )]
    InvalidPath(String),
    #[error("cannot read the host's cgroup mounts: {0}")]
    Mounts(std::io::Error),
    #[error(
        "the host has no cgroup hierarchy husk can join (memory, cpu, cpuacct, pids or cgroup2)"
    )]
    NoHierarchy,
    #[error("cannot create the cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot move the husk process into {path}: {source}")]
    Join {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A cgroup the husk process is in, and the directories husk made for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCgroup {
    /// Per hierarchy: its mount point (the root cgroup) and the cgroup.
    pub joined: Vec<(PathBuf, PathBuf)>,
    /// Directories husk created, parents before children.
    pub created: Vec<PathBuf>,
}

impl HostCgroup {
    /// Creates `cgroups_path` in each hierarchy (parents too) and moves
    /// this process into it. On failure nothing husk made is left.
    pub fn join(cgroups_path: &str) -> Result<Self, HostCgroupError> {
        let rel = relative_path(cgroups_path)?;
        let roots = hierarchy_roots()?;
        let mut me = HostCgroup {
            joined: Vec::new(),
            created: Vec::new(),
        };
        let pid = std::process::id();
        let result = roots
            .iter()
            .try_for_each(|root| me.join_one(root, &rel, pid));
        if let Err(e) = result {
            me.leave();
            return Err(e);
        }
        tracing::info!(
            cgroup = cgroups_path,
            hierarchies = me.joined.len(),
            "joined the host cgroup"
        );
        Ok(me)
    }

    /// Creates `rel` below `root` (parents too) and moves process `pid` in.
    fn join_one(&mut self, root: &Path, rel: &Path, pid: u32) -> Result<(), HostCgroupError> {
        let target = root.join(rel);
        let mut dir = root.to_path_buf();
        for part in rel.components() {
            dir.push(part);
            match std::fs::create_dir(&dir) {
                Ok(()) => self.created.push(dir.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(HostCgroupError::Create { path: dir, source }),
            }
        }
        std::fs::write(target.join("cgroup.procs"), pid.to_string()).map_err(|source| {
            HostCgroupError::Join {
                path: target.clone(),
                source,
            }
        })?;
        self.joined.push((root.to_path_buf(), target));
        Ok(())
    }

    /// Moves this process back to each hierarchy's root cgroup and removes
    /// what husk created. Best effort: failures are logged.
    pub fn leave(&self) {
        let pid = std::process::id().to_string();
        for (root, _) in &self.joined {
            if let Err(e) = std::fs::write(root.join("cgroup.procs"), &pid) {
                tracing::warn!(root = %root.display(), "cannot leave the sandbox cgroup: {e}");
            }
        }
        self.remove_created(Duration::ZERO);
    }

    /// Removes the directories husk created, deepest first; a cgroup that
    /// still has processes or children stays (rmdir refuses). A busy leaf
    /// is retried for up to `patience`: a dead husk process's threads
    /// leave the cgroup only at the end of their exit, after the kernel
    /// tore down the VM's memory and KVM file, which can outlast the
    /// sockets whose closing told containerd it died.
    pub fn remove_created(&self, patience: Duration) {
        let deadline = Instant::now() + patience;
        for dir in self.created.iter().rev() {
            let leaf = self.joined.iter().any(|(_, target)| target == dir);
            match remove_cgroup(dir, if leaf { deadline } else { Instant::now() }) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // A parent another sandbox's cgroup is still in.
                Err(e) if !leaf && e.raw_os_error() == Some(libc::EBUSY) => {
                    tracing::debug!(cgroup = %dir.display(), "still in use, kept")
                }
                Err(e) => tracing::warn!(
                    cgroup = %dir.display(),
                    procs = %read_procs(dir),
                    "cannot remove the sandbox's host cgroup: {e}"
                ),
            }
        }
    }
}

/// rmdir of a cgroup, retried while it is busy until `deadline`.
fn remove_cgroup(dir: &Path, deadline: Instant) -> std::io::Result<()> {
    loop {
        match std::fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            result => return result,
        }
    }
}

/// The processes in a cgroup, for a log line.
fn read_procs(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unreadable ({e})"))
}

/// `cgroups_path` as a path below a hierarchy's root.
fn relative_path(cgroups_path: &str) -> Result<PathBuf, HostCgroupError> {
    let invalid = || HostCgroupError::InvalidPath(cgroups_path.to_string());
    if cgroups_path.contains(':') || cgroups_path.contains('\0') {
        return Err(invalid());
    }
    let mut rel = PathBuf::new();
    for c in Path::new(cgroups_path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => rel.push(p),
            Component::ParentDir | Component::Prefix(_) => return Err(invalid()),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(invalid());
    }
    Ok(rel)
}

/// The mount points of the hierarchies to join: the v1 ones of
/// `V1_CONTROLLERS`, or the unified one on a pure v2 host.
fn hierarchy_roots() -> Result<Vec<PathBuf>, HostCgroupError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(HostCgroupError::Mounts)?;
    let mut v1 = Vec::new();
    let mut v2 = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(point), Some(fstype), Some(opts)) =
            (fields.get(4), fields.get(sep + 1), fields.get(sep + 3))
        else {
            continue;
        };
        match *fstype {
            "cgroup" if opts.split(',').any(|o| V1_CONTROLLERS.contains(&o)) => {
                v1.push(PathBuf::from(point))
            }
            "cgroup2" => v2 = Some(PathBuf::from(point)),
            _ => {}
        }
    }
    if !v1.is_empty() {
        v1.sort();
        v1.dedup();
        return Ok(v1);
    }
    v2.map(|p| vec![p]).ok_or(HostCgroupError::NoHierarchy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_below_the_root() {
        assert_eq!(
            relative_path("/kubepods/pod1/abc").unwrap(),
            PathBuf::from("kubepods/pod1/abc")
        );
        assert_eq!(
            relative_path("default/c1").unwrap(),
            PathBuf::from("default/c1")
        );
        for bad in ["/a/../../etc", "..", "system.slice:cri:abc", "/", ""] {
            assert!(relative_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn joins_and_leaves_a_cgroup() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP joins_and_leaves_a_cgroup: needs root to create cgroups");
            return;
        }
        // This test moves its whole process: run it in a child so other
        // tests of this binary are not moved with it.
        if std::env::var_os("HUSK_CGROUP_CHILD").is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "sandbox::host_cgroup::tests::joins_and_leaves_a_cgroup",
                    "--nocapture",
                ])
                .env("HUSK_CGROUP_CHILD", "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && text.contains("1 passed"), "{text}");
            return;
        }
        let path = format!("/husk-test-{}/sandbox", std::process::id());
        let cg = HostCgroup::join(&path).unwrap();
        assert!(!cg.joined.is_empty());
        let mine = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        for (root, target) in &cg.joined {
            let procs = std::fs::read_to_string(target.join("cgroup.procs")).unwrap();
            assert!(
                procs.lines().any(|l| l == std::process::id().to_string()),
                "not in {}: {mine}",
                target.display()
            );
            assert!(target.starts_with(root));
        }
        assert!(mine.contains(&path), "{mine}");
        cg.leave();
        for dir in &cg.created {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
        assert!(!std::fs::read_to_string("/proc/self/cgroup")
            .unwrap()
            .contains(&path));
    }

    #[test]
    fn a_dead_processs_cgroup_is_removed_once_its_threads_have_left() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP a_dead_processs_cgroup_is_removed: needs root to create cgroups");
            return;
        }
        // A child stands for the husk process, killed while the removal
        // already waits.
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let rel = relative_path(&format!("/husk-test-{}-exit/sandbox", child.id())).unwrap();
        let mut cg = HostCgroup {
            joined: Vec::new(),
            created: Vec::new(),
        };
        for root in hierarchy_roots().unwrap() {
            cg.join_one(&root, &rel, child.id()).unwrap();
        }
        cg.remove_created(Duration::ZERO);
        let leaves = || cg.joined.iter().filter(|(_, t)| t.exists()).count();
        assert_eq!(leaves(), cg.joined.len(), "a busy leaf stays");
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            child.kill().unwrap();
            child.wait().unwrap();
        });
        cg.remove_created(Duration::from_secs(5));
        killer.join().unwrap();
        for dir in &cg.created {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }
}
