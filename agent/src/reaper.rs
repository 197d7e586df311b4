//! The process-wide child reaper.
//!
//! As PID 1 the agent inherits every orphan in the guest, and container
//! processes are its direct children (see `container::spawn`). Exactly one
//! thread may call `waitpid(-1)`: two reapers would steal each other's exit
//! statuses. So the reaper thread reaps everything and keeps each status until
//! someone claims it with [`Reaper::wait`]; statuses nobody claims (orphans)
//! are logged and kept in a bounded table so a late claim still finds them.
//!
//! Consequence for the rest of the process: once the reaper runs, nothing else
//! may wait for children (e.g. `std::process::Child::wait` would get ECHILD).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Statuses kept for pids nobody has claimed yet; the oldest go first.
const MAX_UNCLAIMED: usize = 4096;
/// How long the reaper sleeps when it has no children and nobody said a new
/// one exists (orphans re-parented to us do not announce themselves).
const IDLE_RECHECK: Duration = Duration::from_millis(500);

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// Called exit() with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

impl ExitStatus {
    /// The status as runc and containerd report it: the exit code, or 128+N
    /// when killed by signal N.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(signal) => 128 + signal,
        }
    }
}

#[derive(Default)]
struct Table {
    exited: HashMap<i32, ExitStatus>,
    order: VecDeque<i32>,
    spawned: bool,
    /// Who waits for which pid: a reaped pid wakes its own waiters only.
    /// One condition variable for all made every exit wake every waiter
    /// (one per live process), and with 100 execs in flight in the
    /// emulated guest kernel those wake-ups took most of the time.
    waiting: HashMap<i32, Waiters>,
}

struct Waiters {
    reaped: Arc<Condvar>,
    count: usize,
}

/// Handle to the one reaper thread of this process.
pub struct Reaper {
    table: Mutex<Table>,
    /// Wakes the reaper thread itself when a child was spawned.
    spawned: Condvar,
}

static REAPER: OnceLock<Arc<Reaper>> = OnceLock::new();

impl Reaper {
    /// Starts the reaper thread once per process and returns its handle;
    /// later calls return the same handle. When this process is not PID 1 it
    /// becomes a child subreaper so orphaned container processes come to it.
    pub fn start() -> Arc<Reaper> {
        REAPER
            .get_or_init(|| {
                if std::process::id() != 1 {
                    // SAFETY: prctl with integer arguments only.
                    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
                    if rc != 0 {
                        tracing::warn!(error = %std::io::Error::last_os_error(),
                            "cannot become a child subreaper; orphans go to the real init");
                    }
                }
                let reaper = Arc::new(Reaper {
                    table: Mutex::new(Table::default()),
                    spawned: Condvar::new(),
                });
                let worker = Arc::clone(&reaper);
                std::thread::Builder::new()
                    .name("reaper".into())
                    .spawn(move || worker.run())
                    .expect("spawning the reaper thread");
                reaper
            })
            .clone()
    }

    /// Tells the reaper a child was just created, so an idle reaper looks again.
    pub fn note_spawned(&self) {
        self.lock().spawned = true;
        self.spawned.notify_all();
    }

    /// Blocks until `pid` has been reaped and returns how it ended. Each
    /// status is handed out once.
    pub fn wait(&self, pid: i32) -> ExitStatus {
        let mut table = self.lock();
        if let Some(status) = table.claim(pid) {
            return status;
        }
        let waiters = table.waiting.entry(pid).or_insert_with(|| Waiters {
            reaped: Arc::new(Condvar::new()),
            count: 0,
        });
        waiters.count += 1;
        let reaped = Arc::clone(&waiters.reaped);
        let status = loop {
            table = reaped.wait(table).unwrap_or_else(|e| e.into_inner());
            if let Some(status) = table.claim(pid) {
                break status;
            }
        };
        if let Some(waiters) = table.waiting.get_mut(&pid) {
            waiters.count -= 1;
            if waiters.count == 0 {
                table.waiting.remove(&pid);
            }
        }
        status
    }

    /// Returns the status of `pid` if it has been reaped, without claiming it.
    pub fn peek(&self, pid: i32) -> Option<ExitStatus> {
        self.lock().exited.get(&pid).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::__WALL)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.record(pid.as_raw(), ExitStatus::Exited(code))
                }
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    self.record(pid.as_raw(), ExitStatus::Signaled(signal as i32))
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => self.idle(),
                Err(error) => {
                    tracing::error!(%error, "waitpid failed");
                    self.idle();
                }
            }
        }
    }

    fn idle(&self) {
        let mut table = self.lock();
        if !table.spawned {
            table = self
                .spawned
                .wait_timeout(table, IDLE_RECHECK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        table.spawned = false;
    }

    fn record(&self, pid: i32, status: ExitStatus) {
        tracing::debug!(pid, ?status, "reaped");
        let mut table = self.lock();
        if table.exited.insert(pid, status).is_none() {
            table.order.push_back(pid);
        }
        while table.order.len() > MAX_UNCLAIMED {
            if let Some(old) = table.order.pop_front() {
                table.exited.remove(&old);
                tracing::info!(pid = old, "dropping the unclaimed exit status of a process");
            }
        }
        if let Some(waiters) = table.waiting.get(&pid) {
            waiters.reaped.notify_all();
        }
    }
}

impl Table {
    /// Takes `pid`'s status out of the table, if it was reaped.
    fn claim(&mut self, pid: i32) -> Option<ExitStatus> {
        let status = self.exited.remove(&pid)?;
        self.order.retain(|p| *p != pid);
        Some(status)
    }
}
