//! The container RPCs on top of the engine (`crate::container`): each checks
//! its request, calls one `ContainerManager` method and shapes the reply.
//!
//! Beyond the engine this layer owns one thing: the rootfs mount a
//! CreateContainer may ask for. It mounts before the engine creates the
//! container and unmounts when creation fails or the container is removed,
//! and it remembers which containers it created so DestroySandbox can remove
//! them all.

use std::collections::HashMap;
use std::sync::Mutex;

use husk_agent_protocol::agent;

use super::requests::{checked_id, CreateContainer, ProcessRef};
use super::rootfs_mount::{mount_rootfs, MountedRootfs};
use super::status::RpcError;
use crate::container::ContainerManager;

/// A read returns at most this much when the caller asks for "any" (0).
const DEFAULT_READ_LEN: usize = 64 * 1024;
/// And never more than this (ttrpc messages are capped at 4 MiB).
const MAX_READ_LEN: usize = 1024 * 1024;
/// Highest signal number Linux has (SIGRTMAX).
const MAX_SIGNAL: u32 = 64;

/// Where a container id stands in this layer.
enum Slot {
    /// CreateContainer is running for it; a second one gets ALREADY_EXISTS.
    Creating,
    /// Created, with the rootfs mount made for it, if any.
    Created(Option<MountedRootfs>),
}

pub struct Containers {
    engine: ContainerManager,
    slots: Mutex<HashMap<String, Slot>>,
}

impl Containers {
    pub fn new(engine: ContainerManager) -> Self {
        Containers {
            engine,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn create(
        &self,
        req: agent::CreateContainerRequest,
    ) -> Result<agent::CreateContainerResponse, RpcError> {
        let req = CreateContainer::try_from(req)?;
        let id = req.container_id.clone();
        {
            let mut slots = self.slots();
            if slots.contains_key(&id) {
                return Err(RpcError::AlreadyExists(format!(
                    "container {id:?} already exists"
                )));
            }
            slots.insert(id.clone(), Slot::Creating);
        }
        match self.create_reserved(&req) {
            Ok((pid, mounted)) => {
                self.slots().insert(id.clone(), Slot::Created(mounted));
                Ok(agent::CreateContainerResponse {
                    pid,
                    ..Default::default()
                })
            }
            Err(e) => {
                self.slots().remove(&id);
                Err(e)
            }
        }
    }

    /// Mounts the rootfs if asked, creates the container, and takes the
    /// mount back down if the engine refuses.
    fn create_reserved(
        &self,
        req: &CreateContainer,
    ) -> Result<(u32, Option<MountedRootfs>), RpcError> {
        let mounted = mount_rootfs(&req.rootfs)?;
        let created = self.engine.create(
            &req.container_id,
            &req.oci_spec,
            &req.rootfs.path,
            req.terminal,
        );
        match created {
            Ok(pid) => Ok((pid, mounted)),
            Err(e) => {
                if let Some(Err(u)) = mounted.map(MountedRootfs::unmount) {
                    tracing::warn!(container = %req.container_id, "after a failed create: {u}");
                }
                Err(e.into())
            }
        }
    }

    pub fn start(&self, req: &agent::StartContainerRequest) -> Result<(), RpcError> {
        let id = checked_id("container_id", &req.container_id)?;
        self.engine.start(&id)?;
        Ok(())
    }

    pub fn exec(
        &self,
        req: &agent::ExecProcessRequest,
    ) -> Result<agent::ExecProcessResponse, RpcError> {
        let p = ProcessRef::new(&req.container_id, &req.exec_id)?;
        let exec_id = p.exec_id.ok_or_else(|| {
            RpcError::InvalidArgument("ExecProcess needs an exec_id (empty names the init)".into())
        })?;
        if req.process.is_empty() {
            return Err(RpcError::InvalidArgument(format!(
                "exec {exec_id} in {}: process is empty",
                p.container_id
            )));
        }
        let pid = self
            .engine
            .exec(&p.container_id, &exec_id, &req.process, req.terminal)?;
        Ok(agent::ExecProcessResponse {
            pid,
            ..Default::default()
        })
    }

    pub fn signal(&self, req: &agent::SignalProcessRequest) -> Result<(), RpcError> {
        let p = ProcessRef::new(&req.container_id, &req.exec_id)?;
        if req.signal == 0 || req.signal > MAX_SIGNAL {
            return Err(RpcError::InvalidArgument(format!(
                "signal {} is not in 1..={MAX_SIGNAL}",
                req.signal
            )));
        }
        let signal = req.signal as i32; // <= 64 by the check above
        if req.all {
            if p.exec_id.is_some() {
                return Err(RpcError::InvalidArgument(
                    "SignalProcess with all=true names a container, not an exec".into(),
                ));
            }
            self.engine.signal_all(&p.container_id, signal)?;
            return Ok(());
        }
        self.engine
            .signal(&p.container_id, p.exec_id.as_deref(), signal)?;
        Ok(())
    }

    /// PauseContainer (`paused: true`) and ResumeContainer.
    pub fn set_paused(&self, container_id: &str, paused: bool) -> Result<(), RpcError> {
        let id = checked_id("container_id", container_id)?;
        if paused {
            self.engine.pause(&id)?;
        } else {
            self.engine.resume(&id)?;
        }
        tracing::debug!(container = %id, paused, "container freeze state changed");
        Ok(())
    }

    pub fn delete_process(&self, req: &agent::DeleteProcessRequest) -> Result<(), RpcError> {
        let p = ProcessRef::new(&req.container_id, &req.exec_id)?;
        let exec_id = p.exec_id.ok_or_else(|| {
            RpcError::InvalidArgument(
                "DeleteProcess needs an exec_id (RemoveContainer removes the init)".into(),
            )
        })?;
        self.engine.delete_exec(&p.container_id, &exec_id)?;
        Ok(())
    }

    pub fn wait(
        &self,
        req: &agent::WaitProcessRequest,
    ) -> Result<agent::WaitProcessResponse, RpcError> {
        let p = ProcessRef::new(&req.container_id, &req.exec_id)?;
        let exit_status = self.engine.wait(&p.container_id, p.exec_id.as_deref())?;
        Ok(agent::WaitProcessResponse {
            exit_status,
            ..Default::default()
        })
    }

    pub fn write_stdin(
        &self,
        req: &agent::WriteStreamRequest,
    ) -> Result<agent::WriteStreamResponse, RpcError> {
        let p = ProcessRef::new(&req.container_id, &req.exec_id)?;
        let n = self
            .engine
            .write_stdin(&p.container_id, p.exec_id.as_deref(), &req.data)?;
        Ok(agent::WriteStreamResponse {
            len: u32::try_from(n).unwrap_or(u32::MAX),
            ..Default::default()
        })
    }

    /// ReadStdout (`stderr: false`) and ReadStderr.
    pub fn read(
        &self,
        req: &agent::ReadStreamRequest,
        stderr: bool,
    ) -> Result<agent::ReadStreamResponse, RpcError> {
        let p = ProcessRef::new(&req.container_id, &req.exec_id)?;
        let max = match req.max_len as usize {
            0 => DEFAULT_READ_LEN,
            n => n.min(MAX_READ_LEN),
        };
        let exec_id = p.exec_id.as_deref();
        let data = if stderr {
            self.engine.read_stderr(&p.container_id, exec_id, max)?
        } else {
            self.engine.read_stdout(&p.container_id, exec_id, max)?
        };
        Ok(agent::ReadStreamResponse {
            data,
            ..Default::default()
        })
    }

    pub fn close_stdin(&self, req: &agent::CloseStdinRequest) -> Result<(), RpcError> {
        let p = ProcessRef::new(&req.container_id, &req.exec_id)?;
        self.engine
            .close_stdin(&p.container_id, p.exec_id.as_deref())?;
        Ok(())
    }

    pub fn resize_tty(&self, req: &agent::TtyWinResizeRequest) -> Result<(), RpcError> {
        let p = ProcessRef::new(&req.container_id, &req.exec_id)?;
        let size = |what: &str, v: u32| {
            u16::try_from(v).map_err(|_| {
                RpcError::InvalidArgument(format!("{what} {v} is larger than {}", u16::MAX))
            })
        };
        let (rows, cols) = (size("rows", req.rows)?, size("cols", req.cols)?);
        self.engine
            .resize_tty(&p.container_id, p.exec_id.as_deref(), rows, cols)?;
        Ok(())
    }

    pub fn stats(
        &self,
        req: &agent::StatsContainerRequest,
    ) -> Result<agent::StatsContainerResponse, RpcError> {
        let id = checked_id("container_id", &req.container_id)?;
        let s = self.engine.stats(&id)?;
        let mut r = agent::StatsContainerResponse::new();
        r.cpu.mut_or_insert_default().usage_ns = s.cpu_usage_ns;
        let memory = r.memory.mut_or_insert_default();
        memory.usage_bytes = s.memory_usage_bytes;
        memory.limit_bytes = s.memory_limit_bytes.unwrap_or(0);
        r.pids.mut_or_insert_default().current = s.pids_current;
        let io = r.io.mut_or_insert_default();
        io.read_bytes = s.io_read_bytes;
        io.write_bytes = s.io_write_bytes;
        Ok(r)
    }

    pub fn update(&self, req: &agent::UpdateContainerRequest) -> Result<(), RpcError> {
        let id = checked_id("container_id", &req.container_id)?;
        self.engine.update(&id, &req.resources)?;
        Ok(())
    }

    pub fn list_processes(
        &self,
        req: &agent::ListProcessesRequest,
    ) -> Result<agent::ListProcessesResponse, RpcError> {
        let id = checked_id("container_id", &req.container_id)?;
        Ok(agent::ListProcessesResponse {
            pids: self.engine.list_processes(&id)?,
            ..Default::default()
        })
    }

    pub fn next_oom_event(&self) -> Result<agent::OOMEvent, RpcError> {
        Ok(agent::OOMEvent {
            container_id: self.engine.next_oom_event()?,
            ..Default::default()
        })
    }

    pub fn remove(&self, req: &agent::RemoveContainerRequest) -> Result<(), RpcError> {
        let id = checked_id("container_id", &req.container_id)?;
        self.remove_id(&id)
    }

    fn remove_id(&self, id: &str) -> Result<(), RpcError> {
        if matches!(self.slots().get(id), Some(Slot::Creating)) {
            return Err(RpcError::FailedPrecondition(format!(
                "container {id:?} is still being created"
            )));
        }
        self.engine.remove(id)?;
        let slot = self.slots().remove(id);
        if let Some(Slot::Created(Some(mounted))) = slot {
            mounted.unmount()?;
        }
        Ok(())
    }

    /// Removes every container this layer created (DestroySandbox); returns
    /// the first failure after trying them all.
    pub fn remove_all(&self) -> Result<(), RpcError> {
        let ids: Vec<String> = self
            .slots()
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Created(_)))
            .map(|(id, _)| id.clone())
            .collect();
        let mut first_error = None;
        for id in ids {
            if let Err(e) = self.remove_id(&id) {
                tracing::warn!(container = %id, "removing at sandbox end: {e}");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
