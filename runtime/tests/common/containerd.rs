//! A private containerd for end-to-end tests: Debian's containerd 1.6,
//! started by `ci/containerd-env.sh` in a directory of the test's own (its
//! socket, root and state), with `containerd-shim-husk-v2` (a link to the
//! husk binary under test) first on its PATH and a husk config of the
//! test's own (HUSK_CONFIG, read by the shim at each sandbox's create).
//! The busybox image is imported at start; `Drop` stops containerd, kills
//! its leftover shims and removes the directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::guest_assets;

pub const IMAGE: &str = "docker.io/husk/busybox:latest";
pub const RUNTIME: &str = "io.containerd.husk.v2";
/// Longest a ctr command may take (a cold sandbox boot is about a minute).
pub const CTR_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest a ctr that lives through a whole test may take (an attached
/// `ctr run` of a pod's init): under load a test outlasts CTR_TIMEOUT, and
/// `timeout`'s SIGTERM would reach the task, as ctr forwards signals.
pub const LASTING_CTR_TIMEOUT: Duration = Duration::from_secs(3600);

pub struct Containerd {
    pub dir: PathBuf,
    pub address: PathBuf,
    /// The husk config the shims read; tests may rewrite it.
    pub config: PathBuf,
    /// husk's state directory for this containerd's sandboxes.
    pub state_dir: PathBuf,
    root: PathBuf,
    /// What `ci/containerd-env.sh start` was given, for `restart`.
    start_env: Vec<(String, String)>,
}

/// Whether this host can run the containerd tests, or why not.
pub fn containerd_or_skip(test: &str) -> bool {
    if !super::kvm_or_skip(test) {
        return false;
    }
    if !Path::new("/usr/bin/containerd").exists() || !Path::new("/usr/bin/ctr").exists() {
        eprintln!("SKIP {test}: needs Debian's containerd and ctr (ci/setup.sh installs them)");
        return false;
    }
    if !nix_is_root() {
        eprintln!("SKIP {test}: needs root (containerd and the shim mount filesystems)");
        return false;
    }
    true
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The pod sandbox image CRI is configured with (imported from the cache).
pub const PAUSE_IMAGE: &str = "husk.local/pause:1";

impl Containerd {
    /// Starts containerd in `/tmp/husk-ctrd-<name>-<pid>` and imports the
    /// busybox image.
    pub fn start(name: &str) -> Self {
        Self::start_with(name, false, &[])
    }

    /// `start` with extra environment for containerd, which its shims
    /// inherit (e.g. HUSK_SECCOMP_PROBE).
    pub fn start_with_env(name: &str, env: &[(&str, &str)]) -> Self {
        Self::start_with(name, false, env)
    }

    /// Starts containerd with its CRI plugin and a CNI bridge network
    /// (ci/containerd-env.sh), the busybox and pause images imported into
    /// CRI's `k8s.io` namespace as well.
    pub fn start_cri(name: &str) -> Self {
        Self::start_with(name, true, &[])
    }

    fn start_with(name: &str, cri: bool, env: &[(&str, &str)]) -> Self {
        let assets = guest_assets();
        let base = PathBuf::from(format!("/tmp/husk-ctrd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let shims = base.join("bin");
        std::fs::create_dir_all(&shims).unwrap();
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_husk"),
            shims.join("containerd-shim-husk-v2"),
        )
        .unwrap();
        let state_dir = base.join("husk");
        let config = base.join("husk.toml");
        std::fs::write(&config, husk_config(&state_dir)).unwrap();
        let dir = base.join("containerd");
        let mut start_env: Vec<(String, String)> = vec![
            ("HUSK_SHIM_DIR".into(), shims.display().to_string()),
            ("HUSK_CONFIG".into(), config.display().to_string()),
            (
                "HUSK_CONTAINERD_CRI".into(),
                if cri { "1" } else { "0" }.into(),
            ),
            ("HUSK_CRI_SANDBOX_IMAGE".into(), PAUSE_IMAGE.into()),
        ];
        start_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let address = env_start(&dir, &start_env);
        let c = Self {
            dir,
            address,
            config,
            state_dir,
            root: base,
            start_env,
        };
        let mut imports = vec![vec!["images", "import"]];
        if cri {
            imports.push(vec!["-n", "k8s.io", "images", "import"]);
        }
        for args in imports {
            let mut archives = vec![&assets.busybox_oci];
            if cri {
                archives.push(&assets.pause_oci);
            }
            for archive in archives {
                let archive = archive.display().to_string();
                let mut argv = args.clone();
                argv.push(&archive);
                let import = c.ctr(&argv);
                assert!(import.status.success(), "import: {}", stderr(&import));
            }
        }
        c
    }

    /// Stops containerd alone (SIGTERM; its shims keep running, as when a
    /// node's containerd is restarted) and starts it again on the same
    /// directory and configuration.
    pub fn restart(&self) {
        let pid_file = self.dir.join("containerd.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .expect("containerd.pid");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !matches!(s.rsplit(')').next().map(str::trim_start), Some(r) if r.starts_with('Z')))
        };
        while alive() {
            assert!(
                Instant::now() < deadline,
                "containerd {pid} did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let address = env_start(&self.dir, &self.start_env);
        assert_eq!(address, self.address, "containerd came back on its socket");
    }

    /// containerd's CRI socket (the same gRPC socket as its own API).
    pub fn cri_socket(&self) -> &Path {
        &self.address
    }

    /// `ctr --address A ARGS`, bounded by CTR_TIMEOUT.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args).output().expect("running ctr")
    }

    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        self.ctr_cmd_within(CTR_TIMEOUT, args)
    }

    /// `ctr_cmd` for a ctr that lives through the test (LASTING_CTR_TIMEOUT).
    pub fn lasting_ctr_cmd(&self, args: &[&str]) -> Command {
        self.ctr_cmd_within(LASTING_CTR_TIMEOUT, args)
    }

    fn ctr_cmd_within(&self, limit: Duration, args: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "10", &limit.as_secs().to_string(), "ctr", "--address"])
            .arg(&self.address)
            .args(args);
        cmd
    }

    /// `ctr run --rm --runtime husk [extra...] IMAGE ID ARGS...`.
    pub fn run_args<'a>(&self, extra: &[&'a str], id: &'a str, args: &[&'a str]) -> Vec<String> {
        let mut v: Vec<String> = ["run", "--rm", "--runtime", RUNTIME]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push(IMAGE.into());
        v.push(id.into());
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// The bundle containerd made for task `id` (namespace default).
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir
            .join("state/io.containerd.runtime.v2.task/default")
            .join(id)
    }

    /// Waits until `ctr task ls` shows `id` with `status`.
    pub fn wait_task_status(&self, id: &str, status: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.ctr(&["task", "ls"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let found = text.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&id) && f.get(2) == Some(&status)
            });
            if found {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never became {status}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// husk shim processes serving this containerd.
    pub fn shim_pids(&self) -> Vec<u32> {
        let address = self.address.display().to_string();
        husk_runtime::procfs::live_processes()
            .into_iter()
            .filter(|p| {
                let is_shim = p
                    .args
                    .first()
                    .is_some_and(|a| a.ends_with("containerd-shim-husk-v2"));
                is_shim && p.args.contains(&address)
            })
            .map(|p| p.pid)
            .collect()
    }

    /// Everything husk could leave behind for this containerd, described;
    /// empty when clean.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let pids = self.shim_pids();
        if !pids.is_empty() {
            left.push(format!("husk shim processes {pids:?}"));
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for l in mounts.lines() {
            let point = l.split(' ').nth(4).unwrap_or("");
            if point.starts_with(&self.state_dir.display().to_string()) {
                left.push(format!("mount {point}"));
            }
        }
        let sandboxes = self.state_dir.join("sandboxes");
        if let Ok(rd) = std::fs::read_dir(&sandboxes) {
            for e in rd.flatten() {
                left.push(format!("sandbox directory {}", e.path().display()));
            }
        }
        let tasks = self.dir.join("state/io.containerd.runtime.v2.task/default");
        if let Ok(rd) = std::fs::read_dir(&tasks) {
            for e in rd.flatten() {
                if e.path().join("husk.json").exists() {
                    left.push(format!("bundle state {}", e.path().display()));
                }
            }
        }
        left
    }

    /// Shim sockets of this containerd's sandboxes that still exist.
    pub fn socket_of(&self, sandbox: &str) -> PathBuf {
        husk_runtime::shim::socket_path(&self.address.display().to_string(), "default", sandbox)
    }
}

impl Containerd {
    /// What a failed test needs to see: the end of containerd's log (which
    /// holds the shims' logs) and of every sandbox's guest console.
    pub fn dump_logs(&self) {
        let tail = |path: &Path, n: usize| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        eprintln!(
            "--- last lines of containerd.log ---\n{}",
            tail(&self.dir.join("containerd.log"), 80)
        );
        if let Ok(rd) = std::fs::read_dir(self.state_dir.join("sandboxes")) {
            for e in rd.flatten() {
                eprintln!(
                    "--- last lines of {}/console.log ---\n{}",
                    e.path().display(),
                    tail(&e.path().join("console.log"), 40)
                );
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let _ = Command::new(root.join("ci/containerd-env.sh"))
            .arg("stop")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `ci/containerd-env.sh start DIR` with `env`; returns containerd's socket.
fn env_start(dir: &Path, env: &[(String, String)]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(root.join("ci/containerd-env.sh"))
        .arg("start")
        .arg(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(Stdio::inherit())
        .output()
        .expect("running ci/containerd-env.sh start");
    assert!(out.status.success(), "containerd did not start");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("CONTAINERD_ADDRESS="))
        .expect("containerd-env printed its address")
        .into()
}

/// A husk config for the test's sandboxes: the test kernel and agent image,
/// state under the test's directory, sandboxes of the default size started
/// from a template kept in the asset cache (made once, by the first test
/// that needs it, for these very assets).
pub fn husk_config(state_dir: &Path) -> String {
    let a = guest_assets();
    format!(
        "[guest]\nkernel = \"{}\"\nimage = \"{}\"\ninitrd = \"{}\"\nmax_vcpus = 2\nmax_memory = \"1G\"\n\n[runtime]\nstate_dir = \"{}\"\ntemplate = \"auto\"\ntemplate_dir = \"{}\"\n",
        a.kernel.display(),
        a.agent_image.display(),
        a.agent_initrd.display(),
        state_dir.display(),
        template_cache().display()
    )
}

/// `${HUSK_CACHE:-~/.cache/husk}/templates`.
pub fn template_cache() -> PathBuf {
    std::env::var_os("HUSK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/husk")
        })
        .join("templates")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The host cgroups (`/<namespace>/<id>`, ctr's default path) husk made
/// for the test's containers are gone.
pub fn assert_no_host_cgroups(ids: &[&str]) {
    let left: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .flat_map(|h| ids.iter().map(move |id| h.path().join("default").join(id)))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(left, Vec::<PathBuf>::new(), "host cgroups left behind");
}
