//! A container's cgroup, on either cgroup v1 or v2.
//!
//! Inside the guest the agent mounts cgroup2 at /sys/fs/cgroup; developer and
//! CI hosts run v1 in hybrid mode. Both are handled here behind one type. A
//! limit the spec asks for that this code cannot apply is an error, never a
//! silent no-op: a container that believes it is limited must be.

use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

use super::ContainerError;

/// Where cgroups are mounted. cgroup v2 is recognised by the filesystem magic
/// of the mount point; anything else is treated as a v1 hierarchy set.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// v1 controllers a container joins when the host has them.
const V1_CONTROLLERS: [&str; 7] = [
    "memory", "cpu", "cpuacct", "pids", "blkio", "devices", "freezer",
];
/// v2 controllers enabled for containers when the kernel offers them.
const V2_CONTROLLERS: [&str; 4] = ["cpu", "io", "memory", "pids"];

/// Which cgroup layout this machine has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller (name -> mount point).
    V1(Vec<(String, PathBuf)>),
    /// The unified hierarchy at this mount point.
    V2(PathBuf),
}

impl CgroupVersion {
    /// Looks at /sys/fs/cgroup and says which layout it holds.
    pub fn detect() -> Result<Self, ContainerError> {
        let stat = nix::sys::statfs::statfs(CGROUP_MOUNT).map_err(|e| ContainerError::Cgroup {
            path: PathBuf::from(CGROUP_MOUNT),
            source: e.into(),
        })?;
        if stat.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC {
            return Ok(CgroupVersion::V2(PathBuf::from(CGROUP_MOUNT)));
        }
        let mut controllers = Vec::new();
        for name in V1_CONTROLLERS {
            let path = Path::new(CGROUP_MOUNT).join(name);
            if path.join("cgroup.procs").exists() {
                controllers.push((name.to_string(), path));
            }
        }
        if controllers.is_empty() {
            return Err(ContainerError::Unsupported(format!(
                "no cgroup v2 and no cgroup v1 controller under {CGROUP_MOUNT}"
            )));
        }
        Ok(CgroupVersion::V1(controllers))
    }
}

/// Resource usage of one container, read from its cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerStats {
    pub cpu_usage_ns: u64,
    pub memory_usage_bytes: u64,
    /// None when unlimited.
    pub memory_limit_bytes: Option<u64>,
    pub pids_current: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
}

/// One container's cgroup directories (one per v1 controller, or one on v2).
#[derive(Debug)]
pub struct Cgroup {
    pub(super) version: CgroupVersion,
    /// (controller or "" on v2, directory)
    pub(super) dirs: Vec<(String, PathBuf)>,
}

fn cgroup_err(path: &Path, source: io::Error) -> ContainerError {
    ContainerError::Cgroup {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn write_file(path: &Path, value: &str) -> Result<(), ContainerError> {
    fs::write(path, value).map_err(|e| cgroup_err(path, e))
}

fn read_file(path: &Path) -> Result<String, ContainerError> {
    fs::read_to_string(path).map_err(|e| cgroup_err(path, e))
}

fn read_u64(path: &Path) -> Result<u64, ContainerError> {
    let text = read_file(path)?;
    text.trim().parse().map_err(|_| {
        cgroup_err(
            path,
            io::Error::new(ErrorKind::InvalidData, format!("not a number: {text:?}")),
        )
    })
}

/// Value of `key` in a "key value" per line file (memory.events, cpu.stat).
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(key)).then(|| words.next()?.parse().ok())?
    })
}

impl Cgroup {
    /// Creates `<parent>/<id>` in every hierarchy. Fails if it already exists:
    /// a stale cgroup with processes in it must not be adopted silently.
    pub fn create(version: &CgroupVersion, parent: &str, id: &str) -> Result<Self, ContainerError> {
        let mut cgroup = Cgroup {
            version: version.clone(),
            dirs: Vec::new(),
        };
        let mounts = match version {
            CgroupVersion::V1(mounts) => mounts.clone(),
            CgroupVersion::V2(root) => vec![(String::new(), root.clone())],
        };
        for (name, mount) in mounts {
            let parent_dir = mount.join(parent);
            fs::create_dir_all(&parent_dir).map_err(|e| cgroup_err(&parent_dir, e))?;
            if matches!(version, CgroupVersion::V2(_)) {
                enable_v2_controllers(&mount, &parent_dir)?;
            }
            let dir = parent_dir.join(id);
            // v1: cpu and cpuacct may be one hierarchy mounted twice.
            if same_hierarchy(&cgroup.dirs, &parent_dir, id) {
                cgroup.dirs.push((name, dir));
                continue;
            }
            if let Err(e) = fs::create_dir(&dir) {
                let _ = cgroup.destroy();
                return Err(cgroup_err(&dir, e));
            }
            cgroup.dirs.push((name, dir));
        }
        Ok(cgroup)
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(name, _)| name == controller || name.is_empty())
            .map(|(_, dir)| dir.as_path())
    }

    pub(super) fn need(&self, controller: &str, what: &str) -> Result<&Path, ContainerError> {
        self.dir(controller).ok_or_else(|| {
            ContainerError::Unsupported(format!(
                "{what}: this machine has no {controller} cgroup controller"
            ))
        })
    }

    /// The directory holding the memory controller's files, if there is one.
    /// On v2 only when the memory controller is delegated to it.
    pub fn memory_dir(&self) -> Option<&Path> {
        self.dir("memory")
            .filter(|dir| !self.is_v2() || dir.join("memory.events").exists())
    }

    /// On v1: each controller with the container's directory, for the
    /// cgroup mount inside the container. None on v2.
    pub fn v1_dirs(&self) -> Option<Vec<(String, PathBuf)>> {
        match self.version {
            CgroupVersion::V1(_) => Some(self.dirs.clone()),
            CgroupVersion::V2(_) => None,
        }
    }

    pub fn is_v2(&self) -> bool {
        matches!(self.version, CgroupVersion::V2(_))
    }

    /// Moves `pid` into every hierarchy of this cgroup.
    pub fn add_process(&self, pid: i32) -> Result<(), ContainerError> {
        for (_, dir) in &self.dirs {
            write_file(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Pids of every process in the cgroup.
    pub fn pids(&self) -> Result<Vec<u32>, ContainerError> {
        let dir = self
            .dirs
            .first()
            .map(|(_, d)| d.as_path())
            .unwrap_or(Path::new("/"));
        let text = read_file(&dir.join("cgroup.procs"))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Reads the container's usage counters.
    pub fn stats(&self) -> Result<ContainerStats, ContainerError> {
        let mut stats = ContainerStats::default();
        if self.is_v2() {
            return self.stats_v2();
        }
        if let Some(dir) = self.dir("cpuacct") {
            stats.cpu_usage_ns = read_u64(&dir.join("cpuacct.usage"))?;
        }
        if let Some(dir) = self.dir("memory") {
            stats.memory_usage_bytes = read_u64(&dir.join("memory.usage_in_bytes"))?;
            let limit = read_u64(&dir.join("memory.limit_in_bytes"))?;
            // v1 reports "unlimited" as a huge page-aligned number.
            stats.memory_limit_bytes = (limit < i64::MAX as u64 / 2).then_some(limit);
        }
        if let Some(dir) = self.dir("pids") {
            stats.pids_current = read_u64(&dir.join("pids.current"))?;
        }
        if let Some(dir) = self.dir("blkio") {
            if let Ok(text) = fs::read_to_string(dir.join("blkio.throttle.io_service_bytes")) {
                for line in text.lines() {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    if let [_, op, value] = words[..] {
                        match op {
                            "Read" => stats.io_read_bytes += value.parse().unwrap_or(0),
                            "Write" => stats.io_write_bytes += value.parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                }
            }
        }
        Ok(stats)
    }

    /// v2 stats. Files of controllers the hierarchy does not delegate are
    /// absent; their counters read as zero (stats inform, they limit nothing).
    fn stats_v2(&self) -> Result<ContainerStats, ContainerError> {
        let dir = &self.dirs[0].1;
        let optional = |name: &str| fs::read_to_string(dir.join(name)).ok();
        let cpu = read_file(&dir.join("cpu.stat"))?;
        let mut stats = ContainerStats {
            cpu_usage_ns: keyed_value(&cpu, "usage_usec").unwrap_or(0) * 1000,
            ..ContainerStats::default()
        };
        let number = |text: Option<String>| text.and_then(|t| t.trim().parse::<u64>().ok());
        stats.memory_usage_bytes = number(optional("memory.current")).unwrap_or(0);
        stats.memory_limit_bytes = number(optional("memory.max"));
        stats.pids_current = number(optional("pids.current")).unwrap_or(0);
        for word in optional("io.stat").unwrap_or_default().split_whitespace() {
            if let Some(v) = word.strip_prefix("rbytes=") {
                stats.io_read_bytes += v.parse().unwrap_or(0);
            } else if let Some(v) = word.strip_prefix("wbytes=") {
                stats.io_write_bytes += v.parse().unwrap_or(0);
            }
        }
        Ok(stats)
    }

    /// Freezes (true) or thaws (false) every process, and waits until the
    /// kernel reports the cgroup in that state.
    pub fn freeze(&self, frozen: bool) -> Result<(), ContainerError> {
        let (file, value, report) = if self.is_v2() {
            let dir = &self.dirs[0].1;
            let value = if frozen { "1" } else { "0" };
            (dir.join("cgroup.freeze"), value, dir.join("cgroup.events"))
        } else {
            let file = self.need("freezer", "pause/resume")?.join("freezer.state");
            let value = if frozen { "FROZEN" } else { "THAWED" };
            (file.clone(), value, file)
        };
        write_file(&file, value)?;
        for _ in 0..2000 {
            let text = read_file(&report)?;
            let reached = if self.is_v2() {
                keyed_value(&text, "frozen") == Some(u64::from(frozen))
            } else {
                text.trim() == value
            };
            if reached {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Err(ContainerError::Busy(format!(
            "{} did not reach {value}",
            report.display()
        )))
    }

    /// SIGKILLs every process in the cgroup until it is empty.
    pub fn kill_all(&self) -> Result<(), ContainerError> {
        for _ in 0..100 {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            for pid in pids {
                // SAFETY: kill with plain integers.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(ContainerError::Busy(
            "processes survive SIGKILL in the container's cgroup".into(),
        ))
    }

    /// Removes every directory. Dead processes may keep a cgroup busy for a
    /// moment after they were reaped, so EBUSY is retried for a while.
    pub fn destroy(&self) -> Result<(), ContainerError> {
        let mut first_error = None;
        for (_, dir) in &self.dirs {
            let mut result = fs::remove_dir(dir);
            for _ in 0..200 {
                match &result {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        result = fs::remove_dir(dir);
                    }
                    _ => break,
                }
            }
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert(cgroup_err(dir, e));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Whether `<parent_dir>/<id>` is one of `dirs` under another name.
fn same_hierarchy(dirs: &[(String, PathBuf)], parent_dir: &Path, id: &str) -> bool {
    if dirs.is_empty() {
        return false;
    }
    let canonical = fs::canonicalize(parent_dir)
        .unwrap_or(parent_dir.to_path_buf())
        .join(id);
    dirs.iter()
        .any(|(_, d)| fs::canonicalize(d).ok().as_ref() == Some(&canonical))
}

fn enable_v2_controllers(root: &Path, parent_dir: &Path) -> Result<(), ContainerError> {
    let available = read_file(&root.join("cgroup.controllers"))?;
    let wanted: Vec<&str> = V2_CONTROLLERS
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .collect();
    let mut dir = root.to_path_buf();
    let relative = parent_dir.strip_prefix(root).unwrap_or(Path::new(""));
    // Every level above the container's own directory must delegate them.
    let mut levels = vec![dir.clone()];
    for part in relative.components() {
        dir.push(part);
        levels.push(dir.clone());
    }
    for level in levels {
        // Only what is missing: each write is a system call and a pass over
        // the subtree, and the levels above are shared by every container.
        let file = level.join("cgroup.subtree_control");
        let enabled = read_file(&file)?;
        let missing: Vec<String> = wanted
            .iter()
            .filter(|w| !enabled.split_whitespace().any(|e| e == **w))
            .map(|w| format!("+{w}"))
            .collect();
        if !missing.is_empty() {
            write_file(&file, &missing.join(" "))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::keyed_value;

    #[test]
    fn keyed_value_finds_the_named_counter() {
        let text = "low 0\nhigh 0\nmax 5\noom 2\noom_kill 1\n";
        assert_eq!(keyed_value(text, "oom_kill"), Some(1));
        assert_eq!(keyed_value(text, "oom"), Some(2));
        assert_eq!(keyed_value(text, "missing"), None);
    }
}
