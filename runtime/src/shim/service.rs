//! The Task API (containerd's `containerd.task.v2.Task`, served under its
//! v3 name too): each method converts its request, acts on the shim's
//! state or the sandbox's agent, and turns failures into ttrpc statuses in
//! one place (`reply`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim_protos::api::*;
use containerd_shim_protos::events::task::{
    TaskDelete, TaskExecAdded, TaskExecStarted, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::shim::shim::{
    CheckpointTaskRequest, ExecProcessRequest, PauseRequest, ResumeRequest,
};
use containerd_shim_protos::ttrpc::{self, Code, TtrpcContext};
use containerd_shim_protos::Task;
use husk_agent_protocol::agent;

use super::convert::{check_id, metrics, timestamp, TaskError};
use super::events::TaskEvent;
use super::process::{IoPaths, ProcessTask, Status as ProcStatus};
use super::tasks::{CreateRequest, Shim};
use crate::metrics::Phase;
use crate::sandbox::mounts::RootfsMount;
use crate::sandbox::{ctx, SandboxError, GUEST_WORK_TIMEOUT, RPC_TIMEOUT};

pub struct TaskService {
    pub shim: Arc<Shim>,
}

type Reply<T> = ttrpc::Result<T>;

/// Logs a failure with the method's name and maps it to its status.
/// Errors go to containerd; they are logged too, at debug for NOT_FOUND:
/// containerd asks for what is not there yet or any more as a matter of
/// course (State while a Create runs, Kill of an exec that has ended).
fn reply<T>(method: &str, id: &str, r: Result<T, TaskError>) -> Reply<T> {
    r.map_err(|e| {
        if e.code == Code::NOT_FOUND {
            tracing::debug!(container = id, "{method}: {}", e.message);
        } else {
            tracing::warn!(container = id, "{method}: {}", e.message);
        }
        e.into()
    })
}

fn agent_err(what: String) -> impl FnOnce(ttrpc::Error) -> TaskError {
    move |e| SandboxError::rpc(what, e).into()
}

/// Create's request as `Shim::create` takes it. Refused here, before the
/// bundle is read: a checkpoint to restore, and an id that cannot name a
/// directory (see `check_id`).
pub fn create_request(req: CreateTaskRequest) -> Result<CreateRequest, TaskError> {
    if !req.checkpoint.is_empty() {
        return Err(TaskError::new(
            Code::UNIMPLEMENTED,
            "husk cannot restore checkpoints",
        ));
    }
    check_id("container", &req.id)?;
    let rootfs = req
        .rootfs
        .iter()
        .map(|m| RootfsMount {
            typ: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        })
        .collect();
    Ok(CreateRequest {
        bundle: req.bundle.clone().into(),
        rootfs,
        io: IoPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        },
        options: req.options.into_option(),
        id: req.id,
    })
}

/// Exec's process spec (the OCI process as JSON, passed to the agent as
/// is when the exec starts) and stdio; the exec id is checked as Create's
/// container id is.
pub fn exec_request(req: &ExecProcessRequest) -> Result<(Vec<u8>, IoPaths), TaskError> {
    check_id("exec", &req.exec_id)?;
    let spec = req
        .spec
        .as_ref()
        .map(|a| a.value.clone())
        .unwrap_or_default();
    if spec.is_empty() {
        return Err(TaskError::invalid("exec without a process spec"));
    }
    let io = IoPaths {
        stdin: req.stdin.clone(),
        stdout: req.stdout.clone(),
        stderr: req.stderr.clone(),
        terminal: req.terminal,
    };
    Ok((spec, io))
}

impl TaskService {
    fn state(&self, req: &StateRequest) -> Result<StateResponse, TaskError> {
        let c = self.shim.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let mut r = StateResponse::new();
        r.id = req.id.clone();
        r.exec_id = req.exec_id.clone();
        r.bundle = c.bundle.display().to_string();
        r.pid = p.pid();
        r.stdin = p.io.stdin.clone();
        r.stdout = p.io.stdout.clone();
        r.stderr = p.io.stderr.clone();
        r.terminal = p.io.terminal;
        let paused = req.exec_id.is_empty() && c.paused.load(Ordering::Acquire);
        r.status = match p.status() {
            ProcStatus::Stopped => Status::STOPPED,
            _ if paused => Status::PAUSED,
            ProcStatus::Created => Status::CREATED,
            ProcStatus::Running => Status::RUNNING,
        }
        .into();
        if let Some(exit) = p.exit() {
            r.exit_status = exit.status;
            r.exited_at = Some(timestamp(exit.at)).into();
        }
        Ok(r)
    }

    fn create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse, TaskError> {
        let pid = self.shim.create(create_request(req)?)?;
        let mut r = CreateTaskResponse::new();
        r.pid = pid;
        Ok(r)
    }

    fn start(&self, req: &StartRequest) -> Result<StartResponse, TaskError> {
        let c = self.shim.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if p.status() != ProcStatus::Created {
            return Err(TaskError::precondition(format!(
                "process {} was already started",
                req.id
            )));
        }
        let sandbox = self.shim.sandbox()?;
        let agent = sandbox.agent();
        if req.exec_id.is_empty() {
            let start = agent::StartContainerRequest {
                container_id: req.id.clone(),
                ..Default::default()
            };
            agent
                .start_container(ctx(GUEST_WORK_TIMEOUT), &start)
                .map_err(|e| {
                    sandbox.rpc_error(format!("container {}: StartContainer", req.id), e)
                })?;
            sandbox.metrics().mark(Phase::ContainerRunning);
            p.set_running();
            let mut e = TaskStart::new();
            e.container_id = req.id.clone();
            e.pid = p.pid();
            self.shim.events.publish(TaskEvent::Start(e));
        } else {
            self.start_exec(&req.id, &p)?;
        }
        let mut r = StartResponse::new();
        r.pid = p.pid();
        Ok(r)
    }

    fn start_exec(&self, id: &str, p: &Arc<ProcessTask>) -> Result<(), TaskError> {
        let sandbox = self.shim.sandbox()?;
        let agent = sandbox.agent();
        let exec = agent::ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: p.exec.clone(),
            process: p.exec_spec.clone().unwrap_or_default(),
            terminal: p.io.terminal,
            ..Default::default()
        };
        let resp = agent
            .exec_process(ctx(GUEST_WORK_TIMEOUT), &exec)
            .map_err(|e| sandbox.rpc_error(format!("exec {} in {id}: ExecProcess", p.exec), e))?;
        p.set_pid(resp.pid);
        p.set_running();
        p.attach_io(agent);
        p.watch(sandbox.clone(), self.shim.events.clone(), None);
        let mut e = TaskExecStarted::new();
        e.container_id = id.to_string();
        e.exec_id = p.exec.clone();
        e.pid = resp.pid;
        self.shim.events.publish(TaskEvent::ExecStarted(e));
        Ok(())
    }

    fn delete(&self, req: &DeleteRequest) -> Result<DeleteResponse, TaskError> {
        // A retried Delete (containerd gave up waiting on a slow one) waits
        // for the first, then finds the container gone: NotFound, which
        // containerd takes as deleted.
        let _removal = req.exec_id.is_empty().then(|| self.shim.removal());
        let c = self.shim.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if p.status() == ProcStatus::Running {
            return Err(TaskError::precondition(format!(
                "process {} is still running",
                req.id
            )));
        }
        let exit = p.exit();
        if req.exec_id.is_empty() {
            self.shim.remove_container(&c)?;
            let mut e = TaskDelete::new();
            e.container_id = req.id.clone();
            e.pid = p.pid();
            e.exit_status = exit.map_or(0, |x| x.status);
            e.exited_at = exit.map(|x| timestamp(x.at)).into();
            self.shim.events.publish(TaskEvent::Delete(e));
        } else {
            if let (Ok(sandbox), Some(_)) = (self.shim.sandbox(), exit) {
                let del = agent::DeleteProcessRequest {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                };
                if let Err(e) = sandbox.agent().delete_process(ctx(RPC_TIMEOUT), &del) {
                    tracing::debug!(container = %req.id, exec = %req.exec_id, "DeleteProcess: {e}");
                }
            }
            c.execs().remove(&req.exec_id);
        }
        let mut r = DeleteResponse::new();
        r.pid = p.pid();
        r.exit_status = exit.map_or(0, |x| x.status);
        r.exited_at = Some(timestamp(exit.map_or_else(SystemTime::now, |x| x.at))).into();
        Ok(r)
    }

    fn kill(&self, req: &KillRequest) -> Result<(), TaskError> {
        let c = self.shim.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if p.status() == ProcStatus::Stopped {
            return Err(TaskError::not_found(format!(
                "process {} (already finished)",
                req.id
            )));
        }
        let sandbox = self.shim.sandbox()?;
        let signal = agent::SignalProcessRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            signal: req.signal,
            all: req.all && req.exec_id.is_empty(),
            ..Default::default()
        };
        sandbox
            .agent()
            .signal_process(ctx(RPC_TIMEOUT), &signal)
            .map_err(agent_err(format!("container {}: SignalProcess", req.id)))?;
        Ok(())
    }

    fn exec(&self, req: ExecProcessRequest) -> Result<(), TaskError> {
        let c = self.shim.container(&req.id)?;
        if c.init.status() == ProcStatus::Stopped {
            return Err(TaskError::precondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        let (spec, io) = exec_request(&req)?;
        {
            let mut execs = c.execs();
            if execs.contains_key(&req.exec_id) {
                return Err(TaskError::new(
                    Code::ALREADY_EXISTS,
                    format!("exec {} already exists in {}", req.exec_id, req.id),
                ));
            }
            let p = ProcessTask::new(&req.id, &req.exec_id, io, Some(spec));
            execs.insert(req.exec_id.clone(), Arc::new(p));
        }
        let mut e = TaskExecAdded::new();
        e.container_id = req.id.clone();
        e.exec_id = req.exec_id.clone();
        self.shim.events.publish(TaskEvent::ExecAdded(e));
        Ok(())
    }

    fn resize_pty(&self, req: &ResizePtyRequest) -> Result<(), TaskError> {
        let c = self.shim.container(&req.id)?;
        c.process(&req.exec_id)?;
        let resize = agent::TtyWinResizeRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            rows: req.height,
            cols: req.width,
            ..Default::default()
        };
        self.shim
            .sandbox()?
            .agent()
            .tty_win_resize(ctx(RPC_TIMEOUT), &resize)
            .map_err(agent_err(format!("container {}: TtyWinResize", req.id)))?;
        Ok(())
    }

    fn set_paused(&self, id: &str, paused: bool) -> Result<(), TaskError> {
        let c = self.shim.container(id)?;
        let sandbox = self.shim.sandbox()?;
        let agent = sandbox.agent();
        if paused {
            let req = agent::PauseContainerRequest {
                container_id: id.to_string(),
                ..Default::default()
            };
            agent.pause_container(ctx(RPC_TIMEOUT), &req)
        } else {
            let req = agent::ResumeContainerRequest {
                container_id: id.to_string(),
                ..Default::default()
            };
            agent.resume_container(ctx(RPC_TIMEOUT), &req)
        }
        .map_err(agent_err(format!("container {id}: pause/resume")))?;
        c.paused.store(paused, Ordering::Release);
        if paused {
            let mut e = TaskPaused::new();
            e.container_id = id.to_string();
            self.shim.events.publish(TaskEvent::Paused(e));
        } else {
            let mut e = TaskResumed::new();
            e.container_id = id.to_string();
            self.shim.events.publish(TaskEvent::Resumed(e));
        }
        Ok(())
    }
}

impl Task for TaskService {
    fn state(&self, _: &TtrpcContext, req: StateRequest) -> Reply<StateResponse> {
        reply("State", &req.id, self.state(&req))
    }

    fn create(&self, _: &TtrpcContext, req: CreateTaskRequest) -> Reply<CreateTaskResponse> {
        let id = req.id.clone();
        let span = tracing::info_span!("container", id = %id);
        let _g = span.enter();
        reply("Create", &id, self.create(req))
    }

    fn start(&self, _: &TtrpcContext, req: StartRequest) -> Reply<StartResponse> {
        reply("Start", &req.id, self.start(&req))
    }

    fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> Reply<DeleteResponse> {
        reply("Delete", &req.id, self.delete(&req))
    }

    fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> Reply<PidsResponse> {
        let r = (|| {
            self.shim.container(&req.id)?;
            let list = agent::ListProcessesRequest {
                container_id: req.id.clone(),
                ..Default::default()
            };
            let pids = self
                .shim
                .sandbox()?
                .agent()
                .list_processes(ctx(RPC_TIMEOUT), &list)
                .map_err(agent_err(format!("container {}: ListProcesses", req.id)))?;
            let mut r = PidsResponse::new();
            r.processes = pids
                .pids
                .into_iter()
                .map(|pid| {
                    let mut info = ProcessInfo::new();
                    info.pid = pid;
                    info
                })
                .collect();
            Ok(r)
        })();
        reply("Pids", &req.id, r)
    }

    fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> Reply<Empty> {
        reply(
            "Pause",
            &req.id,
            self.set_paused(&req.id, true).map(|()| Empty::new()),
        )
    }

    fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> Reply<Empty> {
        reply(
            "Resume",
            &req.id,
            self.set_paused(&req.id, false).map(|()| Empty::new()),
        )
    }

    fn checkpoint(&self, _: &TtrpcContext, req: CheckpointTaskRequest) -> Reply<Empty> {
        let e = TaskError::new(Code::UNIMPLEMENTED, "husk does not checkpoint tasks");
        reply("Checkpoint", &req.id, Err(e))
    }

    fn kill(&self, _: &TtrpcContext, req: KillRequest) -> Reply<Empty> {
        reply("Kill", &req.id, self.kill(&req).map(|()| Empty::new()))
    }

    fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> Reply<Empty> {
        let id = req.id.clone();
        reply("Exec", &id, self.exec(req).map(|()| Empty::new()))
    }

    fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> Reply<Empty> {
        reply(
            "ResizePty",
            &req.id,
            self.resize_pty(&req).map(|()| Empty::new()),
        )
    }

    fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> Reply<Empty> {
        let r = self
            .shim
            .container(&req.id)
            .and_then(|c| c.process(&req.exec_id));
        let r = r.map(|p| {
            if req.stdin {
                p.close_stdin();
            }
            Empty::new()
        });
        reply("CloseIO", &req.id, r)
    }

    fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> Reply<Empty> {
        let r = (|| {
            self.shim.container(&req.id)?;
            let resources = req
                .resources
                .as_ref()
                .map(|a| a.value.clone())
                .unwrap_or_default();
            let update = agent::UpdateContainerRequest {
                container_id: req.id.clone(),
                resources,
                ..Default::default()
            };
            self.shim
                .sandbox()?
                .agent()
                .update_container(ctx(RPC_TIMEOUT), &update)
                .map_err(agent_err(format!("container {}: UpdateContainer", req.id)))?;
            Ok(Empty::new())
        })();
        reply("Update", &req.id, r)
    }

    fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> Reply<WaitResponse> {
        let r = self
            .shim
            .container(&req.id)
            .and_then(|c| c.process(&req.exec_id));
        let r = r.map(|p| {
            let exit = p.wait();
            let mut w = WaitResponse::new();
            w.exit_status = exit.status;
            w.exited_at = Some(timestamp(exit.at)).into();
            w
        });
        reply("Wait", &req.id, r)
    }

    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> Reply<StatsResponse> {
        let r = (|| {
            self.shim.container(&req.id)?;
            let stats = agent::StatsContainerRequest {
                container_id: req.id.clone(),
                ..Default::default()
            };
            let s = self
                .shim
                .sandbox()?
                .agent()
                .stats_container(ctx(RPC_TIMEOUT), &stats)
                .map_err(agent_err(format!("container {}: StatsContainer", req.id)))?;
            let mut r = StatsResponse::new();
            r.stats = Some(metrics(&s)).into();
            Ok(r)
        })();
        reply("Stats", &req.id, r)
    }

    fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> Reply<ConnectResponse> {
        let r = self.shim.container(&req.id).map(|c| {
            let mut r = ConnectResponse::new();
            r.shim_pid = std::process::id();
            r.task_pid = c.init.pid();
            r.version = env!("CARGO_PKG_VERSION").to_string();
            r
        });
        reply("Connect", &req.id, r)
    }

    fn shutdown(&self, _: &TtrpcContext, req: ShutdownRequest) -> Reply<Empty> {
        self.shim.shutdown(req.now);
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::well_known_types::any::Any;

    #[test]
    fn create_and_exec_refuse_ids_that_are_not_names() {
        // "/" would make the container's host share `/` itself, which a
        // failed create then unmounts and removes.
        for id in ["/", "../../etc", "a/b", ""] {
            let mut req = CreateTaskRequest::new();
            req.id = id.into();
            req.bundle = "/run/bundle".into();
            let e = create_request(req).err().unwrap();
            assert_eq!(e.code, Code::INVALID_ARGUMENT, "{id:?}");
        }
        let mut req = CreateTaskRequest::new();
        req.id = "c1".into();
        assert_eq!(create_request(req).unwrap().id, "c1");

        let mut any = Any::new();
        any.value = br#"{"args":["sh"],"cwd":"/"}"#.to_vec();
        let mut exec = ExecProcessRequest::new();
        exec.id = "c1".into();
        exec.spec = Some(any).into();
        for id in ["", "../x"] {
            exec.exec_id = id.into();
            let e = exec_request(&exec).err().unwrap();
            assert_eq!(e.code, Code::INVALID_ARGUMENT, "{id:?}");
        }
        exec.exec_id = "e1".into();
        assert!(exec_request(&exec).is_ok());
    }
}
