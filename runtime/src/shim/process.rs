//! One process containerd knows about: a container's init (exec id "") or
//! an exec. Created, then started, then stopped with an exit status; a
//! watcher thread per started process waits in the agent, lets the output
//! drain, records the exit, tells containerd (TaskExit) and wakes Wait.
//! An init's exit is told after its execs' (as runc's shim does): a client
//! that deletes the container on the init's exit (`ctr run --rm`) must not
//! take the shim down while an exec's exit is still on its way.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use containerd_shim_protos::events::task::TaskExit;
use husk_agent_protocol::agent;

use super::convert::timestamp;
use super::events::{Publisher, TaskEvent};
use crate::agent::Agent;
use crate::sandbox::{blocking_ctx, Sandbox, VM_END_GRACE};
use crate::stdio::{Endpoint, ProcessId, ProcessStdio, StdioCopiers};

/// How long output may trail an exit: a process's children can hold its
/// stdout open after it exits (the init's cannot: its PID namespace dies).
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// Exit status when the agent cannot tell (the VM is gone).
const LOST: u32 = 255;
/// How long an init's exit waits for its execs' exits: they die with its
/// PID namespace (or with the VM), so theirs follow within the drain.
const EXECS_GRACE: Duration = Duration::from_secs(10);

/// A container's execs by id, shared by the container and its init's
/// watcher.
pub type ExecTable = Arc<Mutex<HashMap<String, Arc<ProcessTask>>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

/// containerd's stdio for the process: FIFO paths ("" for none).
#[derive(Debug, Clone, Default)]
pub struct IoPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

struct ProcState {
    status: Status,
    pid: u32,
    exit: Option<Exit>,
    copiers: Option<StdioCopiers>,
}

pub struct ProcessTask {
    pub container: String,
    /// "" for the container's init.
    pub exec: String,
    pub io: IoPaths,
    /// An exec's OCI process (JSON), run when it is started.
    pub exec_spec: Option<Vec<u8>>,
    state: Mutex<ProcState>,
    exited: Condvar,
}

impl ProcessTask {
    pub fn new(container: &str, exec: &str, io: IoPaths, exec_spec: Option<Vec<u8>>) -> Self {
        Self {
            container: container.to_string(),
            exec: exec.to_string(),
            io,
            exec_spec,
            state: Mutex::new(ProcState {
                status: Status::Created,
                pid: 0,
                exit: None,
                copiers: None,
            }),
            exited: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProcState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pid(&self) -> u32 {
        self.lock().pid
    }

    pub fn status(&self) -> Status {
        self.lock().status
    }

    pub fn exit(&self) -> Option<Exit> {
        self.lock().exit
    }

    pub fn set_pid(&self, pid: u32) {
        self.lock().pid = pid;
    }

    pub fn set_running(&self) {
        let mut s = self.lock();
        if s.status == Status::Created {
            s.status = Status::Running;
        }
    }

    /// Connects containerd's FIFOs to the process's streams in the guest.
    pub fn attach_io(&self, agent: &Agent) {
        let io = ProcessStdio {
            stdin: Endpoint::fifo(&self.io.stdin),
            stdout: Endpoint::fifo(&self.io.stdout),
            stderr: Endpoint::fifo(&self.io.stderr),
            terminal: self.io.terminal,
        };
        let id = ProcessId {
            container: self.container.clone(),
            exec: self.exec.clone(),
        };
        self.lock().copiers = Some(StdioCopiers::start(agent, &id, io));
    }

    /// CloseIO: the process's stdin ends.
    pub fn close_stdin(&self) {
        if let Some(c) = self.lock().copiers.as_ref() {
            c.close_stdin();
        }
    }

    /// Waits for the exit in a thread of its own; an init's watcher is
    /// given its container's `execs`, whose exits it tells first.
    pub fn watch(
        self: &Arc<Self>,
        sandbox: Arc<Sandbox>,
        events: Publisher,
        execs: Option<ExecTable>,
    ) {
        let me = self.clone();
        let span = tracing::info_span!("container", id = %self.container, exec = %self.exec);
        let spawned = std::thread::Builder::new()
            .name("husk-wait".into())
            .spawn(move || {
                let _g = span.enter();
                me.wait_in_guest(&sandbox, &events, execs.as_ref());
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the exit watcher: {e}");
            self.record_exit(LOST, None);
        }
    }

    fn wait_in_guest(&self, sandbox: &Sandbox, events: &Publisher, execs: Option<&ExecTable>) {
        let req = agent::WaitProcessRequest {
            container_id: self.container.clone(),
            exec_id: self.exec.clone(),
            ..Default::default()
        };
        let status = match sandbox.agent().wait_process(blocking_ctx(), &req) {
            Ok(r) => u32::try_from(r.exit_status).unwrap_or(LOST),
            Err(e) => {
                match sandbox.end_reason(VM_END_GRACE) {
                    Some(why) => tracing::error!(
                        "the sandbox's VM ended ({why}): the process's exit status is lost, \
                         reported as {LOST}"
                    ),
                    None => tracing::error!(
                        "waiting for the process in the guest failed ({e}): its exit status \
                         is lost, reported as {LOST}"
                    ),
                }
                LOST
            }
        };
        let copiers = self.lock().copiers.take();
        if let Some(mut c) = copiers {
            if !c.wait_output(OUTPUT_DRAIN) {
                tracing::info!(
                    "output still open {OUTPUT_DRAIN:?} after the exit; reporting it anyway"
                );
            }
            c.release_stdin();
            self.lock().copiers = Some(c);
        }
        if let Some(execs) = execs {
            wait_for_execs(execs, EXECS_GRACE);
        }
        let exit = self.record_exit(status, Some(events));
        tracing::info!(status = exit.status, "process exited");
    }

    /// Stopped with `status` (if not already); returns the exit.
    pub fn record_exit(&self, status: u32, events: Option<&Publisher>) -> Exit {
        let mut s = self.lock();
        if let Some(exit) = s.exit {
            return exit;
        }
        let exit = Exit {
            status,
            at: SystemTime::now(),
        };
        s.exit = Some(exit);
        s.status = Status::Stopped;
        let pid = s.pid;
        drop(s);
        self.exited.notify_all();
        if let Some(events) = events {
            let mut e = TaskExit::new();
            e.container_id = self.container.clone();
            e.id = if self.exec.is_empty() {
                self.container.clone()
            } else {
                self.exec.clone()
            };
            e.pid = pid;
            e.exit_status = exit.status;
            e.exited_at = Some(timestamp(exit.at)).into();
            events.publish(TaskEvent::Exit(e));
        }
        exit
    }

    /// Blocks until the process has exited.
    pub fn wait(&self) -> Exit {
        let mut s = self.lock();
        loop {
            if let Some(exit) = s.exit {
                return exit;
            }
            s = self.exited.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Blocks until a started process has exited, or `deadline`; whether
    /// it is still running then.
    fn still_running_at(&self, deadline: Instant) -> bool {
        let mut s = self.lock();
        while s.status == Status::Running {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return true;
            };
            s = self
                .exited
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        false
    }
}

/// Waits up to `grace` for every started exec in `execs` to record its exit.
fn wait_for_execs(execs: &ExecTable, grace: Duration) {
    let deadline = Instant::now() + grace;
    let started: Vec<Arc<ProcessTask>> = execs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    for p in started {
        if p.still_running_at(deadline) {
            tracing::warn!(
                exec = %p.exec,
                "the exec has not ended {grace:?} after its container's init; telling the \
                 init's exit first"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(id: &str, table: &ExecTable) -> Arc<ProcessTask> {
        let p = Arc::new(ProcessTask::new("c", id, IoPaths::default(), None));
        table.lock().unwrap().insert(id.to_string(), p.clone());
        p
    }

    #[test]
    fn an_init_exit_waits_for_its_running_execs_and_not_for_unstarted_ones() {
        let table = ExecTable::default();
        let running = exec("e1", &table);
        running.set_running();
        exec("never-started", &table);
        let finisher = {
            let running = running.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                running.record_exit(7, None)
            })
        };
        let start = Instant::now();
        wait_for_execs(&table, Duration::from_secs(30));
        let waited = start.elapsed();
        assert_eq!(running.exit().map(|e| e.status), Some(7));
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(30), "{waited:?}");
        finisher.join().unwrap();
    }

    #[test]
    fn an_exec_that_never_ends_holds_the_init_exit_only_for_the_grace() {
        let table = ExecTable::default();
        exec("stuck", &table).set_running();
        let start = Instant::now();
        wait_for_execs(&table, Duration::from_millis(200));
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(10), "{waited:?}");
    }
}
