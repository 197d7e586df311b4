//! The shim's state: its sandbox (booted by the first Create), and the
//! containers in it with their processes.
//!
//! Locks are short: nothing holds the container map while the VM boots or
//! an agent call blocks, so State (which containerd gives 2 s) always
//! answers from memory, even during a minute-long first boot.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use containerd_shim_protos::events::task::{TaskCreate, TaskOOM};
use husk_agent_protocol::agent;

use super::convert::{config_path_option, TaskError};
use super::events::{Publisher, TaskEvent};
use super::process::{ExecTable, IoPaths, ProcessTask};
use super::state::BundleState;
use crate::config::HuskConfig;
use crate::sandbox::mounts::{check_rootfs, RootfsMount};
use crate::sandbox::spec::{BundleSpec, SandboxRole};
use crate::sandbox::{blocking_ctx, NewContainer, Sandbox, SandboxSettings};

pub struct ContainerTask {
    pub id: String,
    pub bundle: PathBuf,
    pub mounted_rootfs: bool,
    pub init: Arc<ProcessTask>,
    pub execs: ExecTable,
    pub paused: AtomicBool,
}

impl ContainerTask {
    pub fn execs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ProcessTask>>> {
        self.execs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The init ("") or an exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<ProcessTask>, TaskError> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| TaskError::not_found(format!("exec {exec_id} in container {}", self.id)))
    }
}

/// The shim's threads were confined (or not) by the config it read at
/// start; a Create's own config (ConfigPath) decides only for its VM.
fn warn_if_seccomp_differs(config: &HuskConfig) {
    let shim = crate::seccomp::runtime_confined();
    if shim == config.runtime.seccomp {
        return;
    }
    let (vm, threads) = if config.runtime.seccomp {
        ("confined", "are not")
    } else {
        ("unconfined", "stay confined")
    };
    tracing::warn!(
        "runtime.seccomp = {} in {}: the VM's threads run {vm}, but the shim's own threads \
         {threads} (they follow the config the shim read at start: HUSK_CONFIG or {})",
        config.runtime.seccomp,
        config.origin,
        crate::config::DEFAULT_CONFIG_PATH
    );
}

/// What Create needs from containerd's request.
pub struct CreateRequest {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<RootfsMount>,
    pub io: IoPaths,
    pub options: Option<containerd_shim_protos::protobuf::well_known_types::any::Any>,
}

pub struct Shim {
    /// The sandbox this shim serves (its socket is named after it).
    pub sandbox_id: String,
    pub events: Publisher,
    sandbox: RwLock<Option<Arc<Sandbox>>>,
    boot_lock: Mutex<()>,
    containers: Mutex<HashMap<String, Arc<ContainerTask>>>,
    /// The husk config the sandbox was booted with.
    config: Mutex<Option<HuskConfig>>,
    pub exiting: AtomicBool,
    /// A Shutdown came while containers remained: the process ends once
    /// the last is removed (containerd sends it once per deleted task, and
    /// one racing a slow Delete it gave up on must not be lost).
    exit_when_empty: AtomicBool,
    /// Held across a container's removal, so a Delete containerd retries
    /// waits for the one still running and then finds nothing to remove.
    removal_lock: Mutex<()>,
    /// The thread that waits for `exiting`.
    main_thread: Mutex<Option<std::thread::Thread>>,
}

impl Shim {
    pub fn new(sandbox_id: String, events: Publisher) -> Self {
        Self {
            sandbox_id,
            events,
            sandbox: RwLock::new(None),
            boot_lock: Mutex::new(()),
            containers: Mutex::new(HashMap::new()),
            config: Mutex::new(None),
            exiting: AtomicBool::new(false),
            exit_when_empty: AtomicBool::new(false),
            removal_lock: Mutex::new(()),
            main_thread: Mutex::new(None),
        }
    }

    pub fn set_main_thread(&self, t: std::thread::Thread) {
        *self.main_thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
    }

    /// Shutdown: the process ends now, or when no container is left.
    pub fn shutdown(&self, now: bool) {
        self.exit_when_empty.store(true, Ordering::Release);
        if now || self.container_count() == 0 {
            self.request_exit();
        }
    }

    /// Serializes container removals (see `removal_lock`).
    pub fn removal(&self) -> std::sync::MutexGuard<'_, ()> {
        self.removal_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The process ends (after the current reply).
    pub fn request_exit(&self) {
        self.exiting.store(true, Ordering::Release);
        if let Some(t) = self
            .main_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            t.unpark();
        }
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ContainerTask>>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn container(&self, id: &str) -> Result<Arc<ContainerTask>, TaskError> {
        self.containers()
            .get(id)
            .cloned()
            .ok_or_else(|| TaskError::not_found(format!("container {id}")))
    }

    pub fn container_count(&self) -> usize {
        self.containers().len()
    }

    pub fn sandbox(&self) -> Result<Arc<Sandbox>, TaskError> {
        self.sandbox
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                TaskError::precondition(format!("sandbox {} is not running", self.sandbox_id))
            })
    }

    /// Create: boots the sandbox for its first container, then creates the
    /// container in it (not started); returns the init's guest pid.
    pub fn create(&self, req: CreateRequest) -> Result<u32, TaskError> {
        if self.containers().contains_key(&req.id) {
            return Err(TaskError::new(
                containerd_shim_protos::ttrpc::Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let spec = BundleSpec::load(&req.bundle).map_err(|e| TaskError::invalid(e.to_string()))?;
        let role = spec
            .sandbox_role()
            .map_err(|e| TaskError::invalid(e.to_string()))?;
        // What can be refused without a VM is refused before one boots.
        check_rootfs(&req.rootfs).map_err(|e| TaskError::invalid(e.to_string()))?;
        let sandbox = match role {
            SandboxRole::Own if req.id == self.sandbox_id => self.boot_sandbox(&req, &spec)?,
            SandboxRole::Join(s) if s == self.sandbox_id => self.sandbox()?,
            _ => {
                return Err(TaskError::invalid(format!(
                    "container {} does not belong to sandbox {}",
                    req.id, self.sandbox_id
                )))
            }
        };
        let state_dir = self.config_state_dir();
        let state = BundleState {
            sandbox_id: self.sandbox_id.clone(),
            state_dir,
            mounted_rootfs: !req.rootfs.is_empty(),
        };
        state.write(&req.bundle).map_err(|e| {
            TaskError::internal(format!("writing {}/husk.json: {e}", req.bundle.display()))
        })?;
        let created = sandbox.create_container(&NewContainer {
            id: &req.id,
            bundle: &req.bundle,
            rootfs: &req.rootfs,
            terminal: req.io.terminal,
        });
        let pid = match created {
            Ok(pid) => pid,
            Err(e) => {
                BundleState::remove(&req.bundle);
                if req.id == self.sandbox_id {
                    self.end_sandbox();
                }
                return Err(e.into());
            }
        };
        let init = Arc::new(ProcessTask::new(&req.id, "", req.io.clone(), None));
        init.set_pid(pid);
        init.attach_io(sandbox.agent());
        let execs = ExecTable::default();
        init.watch(sandbox.clone(), self.events.clone(), Some(execs.clone()));
        let task = Arc::new(ContainerTask {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            mounted_rootfs: state.mounted_rootfs,
            init,
            execs,
            paused: AtomicBool::new(false),
        });
        self.containers().insert(req.id.clone(), task);
        let mut e = TaskCreate::new();
        e.container_id = req.id.clone();
        e.bundle = req.bundle.display().to_string();
        e.pid = pid;
        self.events.publish(TaskEvent::Create(e));
        Ok(pid)
    }

    fn config_state_dir(&self) -> PathBuf {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| c.runtime.state_dir.clone())
            .unwrap_or_else(|| PathBuf::from("/run/husk"))
    }

    fn boot_sandbox(
        &self,
        req: &CreateRequest,
        spec: &BundleSpec,
    ) -> Result<Arc<Sandbox>, TaskError> {
        let _boot = self.boot_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(s) = self.sandbox() {
            return Ok(s);
        }
        let option_path = config_path_option(req.options.as_ref());
        let config = HuskConfig::load(None, option_path.as_deref())
            .map_err(|e| TaskError::invalid(e.to_string()))?;
        let settings = SandboxSettings::for_bundle(&self.sandbox_id, &config, spec)
            .map_err(|e| TaskError::invalid(e.to_string()))?;
        warn_if_seccomp_differs(&config);
        // Recorded before the boot: if this process dies while the sandbox
        // boots (killed, or a thread breaking its seccomp list), `delete`
        // still finds the sandbox's directory and host resources.
        let state = BundleState {
            sandbox_id: self.sandbox_id.clone(),
            state_dir: config.runtime.state_dir.clone(),
            mounted_rootfs: !req.rootfs.is_empty(),
        };
        state.write(&req.bundle).map_err(|e| {
            TaskError::internal(format!("writing {}/husk.json: {e}", req.bundle.display()))
        })?;
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = Some(config);
        let sandbox = match Sandbox::boot(&settings) {
            Ok(s) => Arc::new(s),
            // A failed boot leaves nothing behind for `delete` to find.
            Err(e) => {
                BundleState::remove(&req.bundle);
                return Err(e.into());
            }
        };
        self.watch_oom(&sandbox);
        *self.sandbox.write().unwrap_or_else(|e| e.into_inner()) = Some(sandbox.clone());
        Ok(sandbox)
    }

    /// TaskOOM for every OOM kill the agent reports, until the VM is gone.
    fn watch_oom(&self, sandbox: &Arc<Sandbox>) {
        let agent = sandbox.agent().clone();
        let events = self.events.clone();
        let spawned = std::thread::Builder::new()
            .name("husk-oom".into())
            .spawn(move || loop {
                match agent.get_oom_event(blocking_ctx(), &agent::GetOOMEventRequest::new()) {
                    Ok(oom) => {
                        tracing::info!(container = %oom.container_id, "OOM kill in the guest");
                        let mut e = TaskOOM::new();
                        e.container_id = oom.container_id;
                        events.publish(TaskEvent::Oom(e));
                    }
                    Err(_) => return,
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the OOM watcher: {e}");
        }
    }

    /// Removes a stopped (or never started) container: from the guest, its
    /// host mounts, and the map; the last one ends the sandbox.
    pub fn remove_container(&self, c: &ContainerTask) -> Result<(), TaskError> {
        if let Ok(sandbox) = self.sandbox() {
            let mounted = c.mounted_rootfs.then(|| c.bundle.join("rootfs"));
            sandbox.remove_container(&c.id, mounted.as_deref())?;
        }
        BundleState::remove(&c.bundle);
        let left = {
            let mut map = self.containers();
            map.remove(&c.id);
            map.len()
        };
        if left == 0 {
            self.end_sandbox();
            if self.exit_when_empty.load(Ordering::Acquire) {
                self.request_exit();
            }
        }
        Ok(())
    }

    /// Stops the VM and removes the sandbox's directory.
    pub fn end_sandbox(&self) {
        let sandbox = self
            .sandbox
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(s) = sandbox {
            if let Err(e) = s.shutdown() {
                tracing::warn!(sandbox = %self.sandbox_id, "ending the sandbox: {e}");
            }
        }
    }
}
