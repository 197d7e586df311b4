//! Shared helpers for the container engine tests: the root check, a busybox
//! rootfs, a runc-style default spec, and leftover checks.
//!
//! No std::process::Command here: once the reaper runs it owns every child's
//! exit status, so `Command::output` would fail with ECHILD.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use husk_agent::container::{CgroupVersion, ContainerError, ContainerManager, EngineConfig};
use husk_agent::reaper::Reaper;
use serde_json::{json, Value};

/// Busybox applets the tests use (linked as bin/<applet> -> busybox).
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "ps", "sleep", "tty", "stty", "test", "[", "head", "tail", "dd",
    "true", "false", "id", "hostname", "pwd", "mkdir", "grep", "wc", "env", "kill",
];

/// Where a hybrid host mounts its cgroup2 hierarchy.
const UNIFIED: &str = "/sys/fs/cgroup/unified";

/// The busybox-static binary the tests put into their rootfs.
const BUSYBOX: &str = "/bin/busybox";

/// True when the tests can create containers; otherwise says why not.
pub fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {test}: creating containers needs root");
        return false;
    }
    if !Path::new(BUSYBOX).exists() {
        eprintln!("SKIP {test}: {BUSYBOX} missing (apt-get install busybox-static)");
        return false;
    }
    true
}

/// One test's engine, rootfs and cgroup parent. Dropping it removes every
/// container still known (a failed test leaves nothing running) and the
/// parent cgroup.
pub struct Fixture {
    pub engine: ContainerManager,
    pub rootfs: tempfile::TempDir,
    parent: String,
}

impl Fixture {
    /// None (after saying why) when this machine cannot run the test.
    pub fn new(test: &str) -> Option<Fixture> {
        if !can_run(test) {
            return None;
        }
        Some(Fixture::with_engine(test, ContainerManager::new))
    }

    /// Like `new`, but on the cgroup2 hierarchy a hybrid host mounts at
    /// /sys/fs/cgroup/unified (it holds no controllers). None, after saying
    /// why, when there is no such hierarchy.
    pub fn with_cgroup2(test: &str) -> Option<Fixture> {
        if !can_run(test) {
            return None;
        }
        let unified = Path::new(UNIFIED);
        let magic = nix::sys::statfs::statfs(unified).map(|s| s.filesystem_type());
        if magic != Ok(nix::sys::statfs::CGROUP2_SUPER_MAGIC) {
            eprintln!("SKIP {test}: no cgroup2 hierarchy at {UNIFIED}");
            return None;
        }
        let v2 = CgroupVersion::V2(unified.to_path_buf());
        Some(Fixture::with_engine(test, |cfg| {
            ContainerManager::with_cgroup_version(cfg, v2)
        }))
    }

    fn with_engine(
        test: &str,
        make: impl FnOnce(EngineConfig) -> Result<ContainerManager, ContainerError>,
    ) -> Fixture {
        let parent = format!("husk-test-{}-{test}", std::process::id());
        let cfg = EngineConfig {
            cgroup_parent: parent.clone(),
            reaper: Reaper::start(),
        };
        let engine = make(cfg).expect("engine starts");
        Fixture {
            engine,
            rootfs: busybox_rootfs(),
            parent,
        }
    }

    /// Creates and starts container `id` without a terminal; returns the
    /// init's pid.
    pub fn start(&self, id: &str, spec: &Value) -> u32 {
        let pid = self
            .engine
            .create(id, &bytes(spec), self.rootfs.path(), false)
            .expect("create");
        self.engine.start(id).expect("start");
        pid
    }

    /// The container's cgroup directories on this host, whichever version.
    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        let root = Path::new("/sys/fs/cgroup");
        let unified = Path::new(UNIFIED).join(&self.parent).join(id);
        let mut dirs = vec![root.join(&self.parent).join(id), unified];
        for ctrl in [
            "memory", "cpu", "cpuacct", "pids", "blkio", "devices", "freezer",
        ] {
            dirs.push(root.join(ctrl).join(&self.parent).join(id));
        }
        dirs
    }

    /// A file of the container's cgroup in a v1 controller's hierarchy.
    pub fn v1_file(&self, id: &str, controller: &str, file: &str) -> String {
        let dir = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(&self.parent)
            .join(id);
        std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
    }

    /// Asserts that nothing of container `id` is left: no cgroup directory,
    /// no mount of the rootfs in our namespace, none of `pids` alive.
    pub fn assert_nothing_left(&self, id: &str, pids: &[u32]) {
        for dir in self.cgroup_dirs(id) {
            assert!(!dir.exists(), "cgroup {} left behind", dir.display());
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let rootfs = self.rootfs.path().to_string_lossy();
        assert!(
            !mountinfo.contains(rootfs.as_ref()),
            "a mount of {rootfs} is left:\n{mountinfo}"
        );
        for pid in pids {
            // A zombie would still have a /proc entry; reaped processes have none.
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "process {pid} is still there"
            );
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for id in self.engine.list() {
            if let Err(e) = self.engine.remove(&id) {
                eprintln!("cleanup: removing container {id}: {e}");
            }
        }
        for dir in self.cgroup_dirs("") {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A busybox rootfs in a temporary directory.
pub fn busybox_rootfs() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("husk-rootfs-")
        .tempdir()
        .expect("tempdir");
    let root = dir.path();
    for sub in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(root.join(sub)).expect("rootfs dir");
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copy busybox");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet link");
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    dir
}

/// The default spec `runc spec` writes, running `args`.
pub fn spec(args: &[&str]) -> Value {
    let caps = json!([
        "CAP_AUDIT_WRITE",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_CHOWN",
        "CAP_SETUID",
        "CAP_SETGID"
    ]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "inheritable": caps,
                             "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "husk-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"},
                                      {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                                      {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
                                      {"allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
                                      {"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
                                      {"allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
                                      {"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
                                      {"allow": true, "type": "c", "major": 136, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"},
                           {"type": "mount"}, {"type": "cgroup"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

pub fn bytes(spec: &Value) -> Vec<u8> {
    serde_json::to_vec(spec).expect("spec serialises")
}

/// Reads a stream until end of file.
pub fn read_all(
    engine: &ContainerManager,
    id: &str,
    exec_id: Option<&str>,
    stderr: bool,
) -> Result<String, ContainerError> {
    let mut out = Vec::new();
    loop {
        let chunk = if stderr {
            engine.read_stderr(id, exec_id, 4096)?
        } else {
            engine.read_stdout(id, exec_id, 4096)?
        };
        if chunk.is_empty() {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.extend(chunk);
    }
}

/// Reads stdout until `needle` has appeared (not to end of file).
pub fn read_until(
    engine: &ContainerManager,
    id: &str,
    exec_id: Option<&str>,
    needle: &str,
) -> String {
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(needle) {
        let chunk = engine.read_stdout(id, exec_id, 4096).expect("read stdout");
        assert!(
            !chunk.is_empty(),
            "stdout ended before {needle:?}: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend(chunk);
    }
    String::from_utf8_lossy(&out).into_owned()
}
