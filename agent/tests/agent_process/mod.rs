//! Runs the built husk-agent binary on a host (not PID 1) on a Unix socket in
//! a temp dir and connects the generated ttrpc client to it. The agent is
//! killed when the handle drops, so a failing test leaves no process behind.

#![allow(dead_code)] // each test binary uses part of this

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use husk_agent_protocol::agent;
use husk_agent_protocol::agent_ttrpc::AgentServiceClient;
use husk_agent_protocol::ttrpc;

pub struct AgentProcess {
    child: Child,
    pub cgroup_parent: String,
    pub dir: PathBuf,
    pub client: AgentServiceClient,
}

/// Generous: a test machine shared by several builds can be slow to start.
const STARTUP: Duration = Duration::from_secs(120);

impl AgentProcess {
    pub fn start(name: &str) -> AgentProcess {
        AgentProcess::start_with(name, None)
    }

    /// Runs the agent in network namespace NETNS (`/var/run/netns/NETNS`),
    /// as `ip netns exec` would but without its new mount namespace and
    /// /sys, which would hide the cgroup hierarchies. The Unix socket is a
    /// path, reachable from any network namespace.
    pub fn start_in_netns(name: &str, netns: &str) -> AgentProcess {
        AgentProcess::start_with(name, Some(netns))
    }

    fn start_with(name: &str, netns: Option<&str>) -> AgentProcess {
        let dir = std::env::temp_dir().join(format!("husk-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("agent.sock");
        let address = format!("unix://{}", socket.display());
        let cgroup_parent = format!("husk-rpc-test-{}-{name}", std::process::id());
        let mut command = Command::new(env!("CARGO_BIN_EXE_husk-agent"));
        // Kept open until the child is spawned.
        let netns_file = netns.map(|ns| {
            std::fs::File::open(Path::new("/var/run/netns").join(ns))
                .unwrap_or_else(|e| panic!("network namespace {ns}: {e}"))
        });
        if let Some(file) = &netns_file {
            let fd = std::os::fd::AsRawFd::as_raw_fd(file);
            // SAFETY: the closure runs in the forked child before exec and
            // only makes the setns system call, which is async-signal-safe;
            // `fd` is open in the child until exec closes it (O_CLOEXEC).
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command
            .args(["--listen", &address, "--cgroup-parent", &cgroup_parent])
            .env("HUSK_AGENT_LOG", "debug")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning husk-agent");
        drop(netns_file);
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("agent: {line}");
                // Keep draining after the reader is gone so the agent never blocks.
                let _ = tx.send(line);
            }
        });
        if let Err(e) = wait_for_line(&log, "serving ttrpc on") {
            let _ = child.kill();
            panic!("husk-agent did not start: {e}; status {:?}", child.wait());
        }
        let client = ttrpc::Client::connect(&address).expect("connecting to husk-agent");
        AgentProcess {
            child,
            cgroup_parent,
            dir,
            client: AgentServiceClient::new(client),
        }
    }
}

/// Waits for a line containing `text`; the error says the stream ended or
/// nothing came in time.
fn wait_for_line(log: &mpsc::Receiver<String>, text: &str) -> Result<String, String> {
    loop {
        match log.recv_timeout(STARTUP) {
            Ok(line) if line.contains(text) => return Ok(line),
            Ok(_) => {}
            Err(e) => return Err(format!("no line with {text:?}: {e}")),
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_cgroups(&self.cgroup_parent);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A ttrpc context whose deadline is far enough for any single RPC here.
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(120).as_nanos() as i64)
}

/// The ttrpc status code of a failed call (panics on success or transport errors).
pub fn status_of<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (ttrpc::Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an RPC status error, got {other:?}"),
    }
}

/// After a failed test the killed agent may leave containers behind: kill
/// what is in its cgroups and remove them (v1 controllers or the v2 root).
fn remove_cgroups(parent: &str) {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let hierarchies = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain([root.to_path_buf()]);
    for parent_dir in hierarchies.map(|h| h.join(parent)).filter(|p| p.is_dir()) {
        let children = std::fs::read_dir(&parent_dir)
            .into_iter()
            .flatten()
            .flatten();
        for child in children.map(|e| e.path()).filter(|p| p.is_dir()) {
            let procs = std::fs::read_to_string(child.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = std::fs::remove_dir(&child);
        }
        let _ = std::fs::remove_dir(&parent_dir);
    }
}

pub fn create_req(
    id: &str,
    spec: &serde_json::Value,
    rootfs: &Path,
) -> agent::CreateContainerRequest {
    agent::CreateContainerRequest {
        container_id: id.into(),
        oci_spec: serde_json::to_vec(spec).expect("spec serialises"),
        rootfs: Some(agent::Rootfs {
            path: rootfs.display().to_string(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

pub fn start_req(id: &str) -> agent::StartContainerRequest {
    agent::StartContainerRequest {
        container_id: id.into(),
        ..Default::default()
    }
}

/// Reads a stream of the container's init until EOF.
pub fn read_all(client: &AgentServiceClient, id: &str, stderr: bool) -> Vec<u8> {
    let req = agent::ReadStreamRequest {
        container_id: id.into(),
        ..Default::default()
    };
    let mut out = Vec::new();
    loop {
        let r = if stderr {
            client.read_stderr(ctx(), &req)
        } else {
            client.read_stdout(ctx(), &req)
        };
        let data = r.unwrap().data;
        if data.is_empty() {
            return out;
        }
        out.extend(data);
    }
}

pub fn wait(client: &AgentServiceClient, id: &str) -> i32 {
    let req = agent::WaitProcessRequest {
        container_id: id.into(),
        ..Default::default()
    };
    client.wait_process(ctx(), &req).unwrap().exit_status
}

pub fn create_sandbox(client: &AgentServiceClient) {
    let req = agent::CreateSandboxRequest {
        sandbox_id: "pod".into(),
        ..Default::default()
    };
    client.create_sandbox(ctx(), &req).unwrap();
}
