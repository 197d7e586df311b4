//! `ContainerManager`: the table of containers and their processes, and the
//! operations the RPC layer calls. Spec checking happens here, before any
//! state exists, and every failure path undoes what was made (cgroup,
//! processes), so a failed call leaves nothing behind.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use oci_spec::runtime::{LinuxResources, Process, Spec};

use super::cgroup::{Cgroup, CgroupVersion, ContainerStats};
use super::handle::ProcessHandle;
use super::namespaces::{exec_namespaces, init_namespaces};
use super::oom::{self, OomEvents, OomWatch};
use super::process::ProcessPlan;
use super::rootfs::RootfsPlan;
use super::spawn::{self, InitPlan, NamespacePlan, SpawnPlan};
use super::stdio::Stream;
use super::ContainerError;
use crate::reaper::Reaper;

/// Where a process is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessStatus {
    /// The init is set up and waits for `start`.
    Created,
    Running,
    /// Frozen by `pause`.
    Paused,
    Stopped,
}

/// What `state` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessState {
    pub pid: u32,
    pub status: ProcessStatus,
    /// Set once the process has exited (and been reaped).
    pub exit_code: Option<i32>,
}

/// How the engine is set up.
pub struct EngineConfig {
    /// Container cgroups go to `<cgroup mount>/<cgroup_parent>/<id>`.
    pub cgroup_parent: String,
    /// The process-wide reaper (`Reaper::start()`).
    pub reaper: Arc<Reaper>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Created,
    Running,
    Paused,
    StartFailed,
}

struct Container {
    spec: Spec,
    cgroup: Cgroup,
    init: Arc<ProcessHandle>,
    execs: Mutex<HashMap<String, Arc<ProcessHandle>>>,
    /// Exec ids being spawned (reserved, not yet in `execs`).
    pending_execs: Mutex<HashSet<String>>,
    state: Mutex<State>,
    /// Ends the (v2) OOM watcher's thread when the container goes.
    _oom_watch: Option<OomWatch>,
}

/// The engine. Send + Sync; share it behind an Arc.
pub struct ContainerManager {
    cgroup_version: CgroupVersion,
    cgroup_parent: String,
    reaper: Arc<Reaper>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids whose create is in progress (reserved, not yet in `containers`).
    creating: Mutex<HashSet<String>>,
    oom: Arc<OomEvents>,
}

fn check_id(id: &str) -> Result<(), ContainerError> {
    if husk_agent_protocol::is_valid_id(id) {
        Ok(())
    } else {
        Err(ContainerError::InvalidId(id.to_string()))
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, ContainerError> {
    serde_json::from_slice(bytes).map_err(|e| ContainerError::InvalidSpec(format!("{what}: {e}")))
}

impl ContainerManager {
    /// Detects the cgroup layout; creates nothing yet.
    pub fn new(cfg: EngineConfig) -> Result<Self, ContainerError> {
        Self::with_cgroup_version(cfg, CgroupVersion::detect()?)
    }

    fn check_parent(parent: &str) -> Result<(), ContainerError> {
        if parent.is_empty() || parent.split('/').any(|p| p.is_empty() || p == "..") {
            return Err(ContainerError::InvalidSpec(format!(
                "cgroup parent {parent:?}"
            )));
        }
        Ok(())
    }

    /// Like `new`, with the cgroup layout given instead of detected (tests
    /// use it to drive a cgroup2 hierarchy on a v1 host).
    pub fn with_cgroup_version(
        cfg: EngineConfig,
        cgroup_version: CgroupVersion,
    ) -> Result<Self, ContainerError> {
        Self::check_parent(&cfg.cgroup_parent)?;
        tracing::info!(?cgroup_version, "container engine ready");
        Ok(ContainerManager {
            cgroup_version,
            cgroup_parent: cfg.cgroup_parent,
            reaper: cfg.reaper,
            containers: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            oom: Arc::new(OomEvents::default()),
        })
    }

    /// The cgroup layout in use.
    pub fn cgroup_version(&self) -> &CgroupVersion {
        &self.cgroup_version
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, ContainerError> {
        let map = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))
    }

    fn process(
        &self,
        id: &str,
        exec_id: Option<&str>,
    ) -> Result<Arc<ProcessHandle>, ContainerError> {
        let container = self.container(id)?;
        let Some(exec_id) = exec_id else {
            return Ok(Arc::clone(&container.init));
        };
        let execs = container.execs.lock().unwrap_or_else(|e| e.into_inner());
        execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ContainerError::ExecNotFound {
                id: id.to_string(),
                exec_id: exec_id.to_string(),
            })
    }

    fn reserve(&self, id: &str) -> Result<(), ContainerError> {
        check_id(id)?;
        let map = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        let mut creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(id) || !creating.insert(id.to_string()) {
            return Err(ContainerError::AlreadyExists(id.to_string()));
        }
        Ok(())
    }

    fn unreserve(&self, id: &str) {
        self.creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Creates the container: its cgroup and its init process, set up and
    /// waiting for `start`. Returns the init's pid.
    pub fn create(
        &self,
        id: &str,
        spec_json: &[u8],
        rootfs: &Path,
        terminal: bool,
    ) -> Result<u32, ContainerError> {
        let spec: Spec = parse_json(spec_json, "spec")?;
        if !rootfs.is_dir() {
            return Err(ContainerError::MissingRootfs(rootfs.to_path_buf()));
        }
        self.reserve(id)?;
        let result = self.create_reserved(id, spec, rootfs, terminal);
        if let Ok(container) = &result {
            let mut map = self.containers.lock().unwrap_or_else(|e| e.into_inner());
            map.insert(id.to_string(), Arc::clone(container));
        }
        self.unreserve(id);
        result.map(|c| c.init.pid as u32)
    }

    fn create_reserved(
        &self,
        id: &str,
        spec: Spec,
        rootfs: &Path,
        terminal: bool,
    ) -> Result<Arc<Container>, ContainerError> {
        if spec.hooks().is_some() {
            tracing::warn!(
                container = id,
                "the spec's hooks are not run inside the guest"
            );
        }
        let process = spec
            .process()
            .clone()
            .ok_or_else(|| ContainerError::InvalidSpec("no process".into()))?;
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        let process = ProcessPlan::from_oci(&process, seccomp.as_ref(), terminal)?;
        let namespaces = init_namespaces(&spec)?;
        let cgroup = Cgroup::create(&self.cgroup_version, &self.cgroup_parent, id)?;
        let created = self.start_init(id, &spec, rootfs, &cgroup, namespaces, process);
        match created {
            Ok((init, oom_watch)) => Ok(Arc::new(Container {
                spec,
                cgroup,
                init,
                execs: Mutex::new(HashMap::new()),
                pending_execs: Mutex::new(HashSet::new()),
                state: Mutex::new(State::Created),
                _oom_watch: oom_watch,
            })),
            Err(e) => {
                if let Err(cleanup) = cgroup.destroy() {
                    tracing::error!(container = id, error = %cleanup, "removing the cgroup of a failed create");
                }
                Err(e)
            }
        }
    }

    fn start_init(
        &self,
        id: &str,
        spec: &Spec,
        rootfs: &Path,
        cgroup: &Cgroup,
        namespaces: NamespacePlan,
        process: ProcessPlan,
    ) -> Result<(Arc<ProcessHandle>, Option<OomWatch>), ContainerError> {
        if let Some(resources) = spec.linux().as_ref().and_then(|l| l.resources().clone()) {
            cgroup.apply(&resources)?;
        }
        let rootfs = RootfsPlan::from_spec(spec, rootfs, cgroup)?;
        let init = Some(InitPlan {
            rootfs,
            hostname: spec.hostname().clone(),
        });
        let plan = SpawnPlan {
            namespaces,
            init,
            process,
        };
        let spawned = spawn::spawn(plan, cgroup, &self.reaper)?;
        let handle = ProcessHandle::track(
            &self.reaper,
            spawned.pid,
            spawned.stdio,
            Some(spawned.control),
        )?;
        let watched = cgroup
            .memory_dir()
            .map(|dir| oom::watch(Arc::clone(&self.oom), id, dir, cgroup.is_v2()))
            .transpose();
        let oom_watch = match watched {
            Ok(watch) => watch.flatten(),
            Err(e) => {
                handle.kill();
                handle.wait();
                return Err(e);
            }
        };
        tracing::debug!(container = id, pid = handle.pid, "container created");
        Ok((handle, oom_watch))
    }

    /// Lets the container's init exec its program.
    pub fn start(&self, id: &str) -> Result<(), ContainerError> {
        let container = self.container(id)?;
        let mut state = container.state.lock().unwrap_or_else(|e| e.into_inner());
        if *state != State::Created {
            return Err(ContainerError::AlreadyStarted(id.to_string()));
        }
        if container.init.exit_code().is_some() {
            return Err(ContainerError::NotRunning(format!(
                "the init of container {id:?}"
            )));
        }
        let control = container
            .init
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let control = control.ok_or_else(|| ContainerError::AlreadyStarted(id.to_string()))?;
        let sent = super::channel::send(
            std::os::fd::AsRawFd::as_raw_fd(&control),
            &super::channel::Message::Start,
            None,
        );
        let result = sent
            .map_err(|e| ContainerError::SpawnFailed(format!("control channel: {e}")))
            .and_then(|()| spawn::await_exec(&control));
        *state = if result.is_ok() {
            State::Running
        } else {
            State::StartFailed
        };
        tracing::debug!(container = id, ok = result.is_ok(), "container started");
        result
    }

    /// Runs another process in the running container's namespaces and cgroup.
    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
        terminal: bool,
    ) -> Result<u32, ContainerError> {
        check_id(exec_id)?;
        let process: Process = parse_json(process_json, "process")?;
        let container = self.container(id)?;
        let seccomp = container
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().clone());
        let process = ProcessPlan::from_oci(&process, seccomp.as_ref(), terminal)?;
        if *container.state.lock().unwrap_or_else(|e| e.into_inner()) != State::Running
            || container.init.exit_code().is_some()
        {
            return Err(ContainerError::NotRunning(format!("container {id:?}")));
        }
        {
            let execs = container.execs.lock().unwrap_or_else(|e| e.into_inner());
            let mut pending = container
                .pending_execs
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if execs.contains_key(exec_id) || !pending.insert(exec_id.to_string()) {
                return Err(ContainerError::ExecAlreadyExists {
                    id: id.into(),
                    exec_id: exec_id.into(),
                });
            }
        }
        // Spawning can take a while; other calls on this container go on.
        let result = self.spawn_exec(&container, process);
        let mut execs = container.execs.lock().unwrap_or_else(|e| e.into_inner());
        container
            .pending_execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(exec_id);
        let handle = result?;
        execs.insert(exec_id.to_string(), Arc::clone(&handle));
        tracing::debug!(container = id, exec_id, pid = handle.pid, "exec started");
        Ok(handle.pid as u32)
    }

    fn spawn_exec(
        &self,
        container: &Container,
        process: ProcessPlan,
    ) -> Result<Arc<ProcessHandle>, ContainerError> {
        let namespaces = exec_namespaces(&container.spec, container.init.pid)?;
        let plan = SpawnPlan {
            namespaces,
            init: None,
            process,
        };
        let spawned = spawn::spawn(plan, &container.cgroup, &self.reaper)?;
        let handle = ProcessHandle::track(&self.reaper, spawned.pid, spawned.stdio, None)?;
        spawn::await_exec(&spawned.control)?;
        Ok(handle)
    }

    /// Sends `signal` to the init (exec_id None) or to one exec.
    pub fn signal(
        &self,
        id: &str,
        exec_id: Option<&str>,
        signal: i32,
    ) -> Result<(), ContainerError> {
        let signal = Signal::try_from(signal).map_err(|_| ContainerError::InvalidSignal(signal))?;
        let process = self.process(id, exec_id)?;
        if process.exit_code().is_some() {
            return Err(ContainerError::NotRunning(format!(
                "process {} of {id:?}",
                process.pid
            )));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(process.pid), signal).map_err(|e| {
            ContainerError::Io {
                what: format!("sending {signal} to {}", process.pid),
                source: e.into(),
            }
        })
    }

    /// Sends `signal` to every process in the container's cgroup (`kill --all`).
    pub fn signal_all(&self, id: &str, signal: i32) -> Result<(), ContainerError> {
        let signal = Signal::try_from(signal).map_err(|_| ContainerError::InvalidSignal(signal))?;
        for pid in self.container(id)?.cgroup.pids()? {
            // A process may exit between the listing and the kill.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
        Ok(())
    }

    /// Blocks until the process exits; returns its status as runc reports it.
    pub fn wait(&self, id: &str, exec_id: Option<&str>) -> Result<i32, ContainerError> {
        Ok(self.process(id, exec_id)?.wait())
    }

    pub fn write_stdin(
        &self,
        id: &str,
        exec_id: Option<&str>,
        data: &[u8],
    ) -> Result<usize, ContainerError> {
        self.process(id, exec_id)?.stdio.write_stdin(data)
    }

    pub fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<(), ContainerError> {
        self.process(id, exec_id)?.stdio.close_stdin()
    }

    pub fn read_stdout(
        &self,
        id: &str,
        exec_id: Option<&str>,
        max: usize,
    ) -> Result<Vec<u8>, ContainerError> {
        self.process(id, exec_id)?.stdio.read(Stream::Stdout, max)
    }

    pub fn read_stderr(
        &self,
        id: &str,
        exec_id: Option<&str>,
        max: usize,
    ) -> Result<Vec<u8>, ContainerError> {
        self.process(id, exec_id)?.stdio.read(Stream::Stderr, max)
    }

    pub fn resize_tty(
        &self,
        id: &str,
        exec_id: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> Result<(), ContainerError> {
        self.process(id, exec_id)?.stdio.resize(rows, cols)
    }

    pub fn stats(&self, id: &str) -> Result<ContainerStats, ContainerError> {
        self.container(id)?.cgroup.stats()
    }

    /// Applies new resource limits (an OCI `linux.resources` object).
    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), ContainerError> {
        let resources: LinuxResources = parse_json(resources_json, "resources")?;
        self.container(id)?.cgroup.apply(&resources)
    }

    /// Ids of all containers, in no particular order.
    pub fn list(&self) -> Vec<String> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Pids (agent's view) of every process in the container's cgroup.
    pub fn list_processes(&self, id: &str) -> Result<Vec<u32>, ContainerError> {
        self.container(id)?.cgroup.pids()
    }

    /// Where the init (exec_id None) or an exec is in its life.
    pub fn state(&self, id: &str, exec_id: Option<&str>) -> Result<ProcessState, ContainerError> {
        let container = self.container(id)?;
        let process = self.process(id, exec_id)?;
        let exit_code = process.exit_code();
        let state = *container.state.lock().unwrap_or_else(|e| e.into_inner());
        let status = match (exit_code, state) {
            (Some(_), _) | (None, State::StartFailed) => ProcessStatus::Stopped,
            (None, State::Paused) => ProcessStatus::Paused,
            (None, State::Created) if exec_id.is_none() => ProcessStatus::Created,
            (None, _) => ProcessStatus::Running,
        };
        Ok(ProcessState {
            pid: process.pid as u32,
            status,
            exit_code,
        })
    }

    /// Forgets an exec that has exited; returns its exit code.
    pub fn delete_exec(&self, id: &str, exec_id: &str) -> Result<i32, ContainerError> {
        let container = self.container(id)?;
        let mut execs = container.execs.lock().unwrap_or_else(|e| e.into_inner());
        let process = execs
            .get(exec_id)
            .ok_or_else(|| ContainerError::ExecNotFound {
                id: id.into(),
                exec_id: exec_id.into(),
            })?;
        let code = process.exit_code().ok_or_else(|| {
            ContainerError::Busy(format!("exec {exec_id:?} of {id:?} is still running"))
        })?;
        execs.remove(exec_id);
        Ok(code)
    }

    /// Freezes every process of a running container.
    pub fn pause(&self, id: &str) -> Result<(), ContainerError> {
        self.set_paused(id, State::Running, State::Paused)
    }

    /// Thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<(), ContainerError> {
        self.set_paused(id, State::Paused, State::Running)
    }

    fn set_paused(&self, id: &str, from: State, to: State) -> Result<(), ContainerError> {
        let container = self.container(id)?;
        let mut state = container.state.lock().unwrap_or_else(|e| e.into_inner());
        if *state != from || container.init.exit_code().is_some() {
            return Err(ContainerError::NotRunning(format!(
                "container {id:?} ({:?})",
                *state
            )));
        }
        container.cgroup.freeze(to == State::Paused)?;
        *state = to;
        Ok(())
    }

    /// Kills whatever still runs, waits for the processes, removes the
    /// cgroup and forgets the container. The container's mounts live only in
    /// its mount namespace, which goes away with its last process.
    pub fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let container = self.container(id)?;
        if *container.state.lock().unwrap_or_else(|e| e.into_inner()) == State::Paused {
            // v1 frozen tasks do not even die of SIGKILL.
            container.cgroup.freeze(false)?;
        }
        container.cgroup.kill_all()?;
        container.init.kill();
        container.init.wait();
        let execs: Vec<_> = container
            .execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for exec in execs {
            exec.wait();
        }
        container.cgroup.destroy()?;
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        tracing::debug!(container = id, "container removed");
        Ok(())
    }

    /// Blocks until some container's memory cgroup OOM-kills; returns its id.
    pub fn next_oom_event(&self) -> Result<String, ContainerError> {
        Ok(self.oom.next(None).unwrap_or_default())
    }

    /// Like `next_oom_event`, giving up after `timeout` (None = no event).
    pub fn next_oom_event_timeout(
        &self,
        timeout: Duration,
    ) -> Result<Option<String>, ContainerError> {
        Ok(self.oom.next(Some(timeout)))
    }
}
