//! A process the engine started, followed until it exits.
//!
//! Each one gets a small thread that blocks in `Reaper::wait` for its pid and
//! then records the exit code, so any number of callers can wait, poll or
//! signal without racing the reaper.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};

use super::stdio::Stdio;
use super::ContainerError;
use crate::reaper::Reaper;

/// One process of a container (its init or an exec).
pub struct ProcessHandle {
    pub pid: i32,
    pub stdio: Stdio,
    /// The control channel while the init waits for `start`.
    pub control: Mutex<Option<OwnedFd>>,
    exit: Mutex<Option<i32>>,
    exited: Condvar,
}

impl ProcessHandle {
    /// Starts following `pid`. If no thread can be made, the process is
    /// killed and reaped here and the error returned.
    pub fn track(
        reaper: &Arc<Reaper>,
        pid: i32,
        stdio: Stdio,
        control: Option<OwnedFd>,
    ) -> Result<Arc<ProcessHandle>, ContainerError> {
        let handle = Arc::new(ProcessHandle {
            pid,
            stdio,
            control: Mutex::new(control),
            exit: Mutex::new(None),
            exited: Condvar::new(),
        });
        let watcher = Arc::clone(&handle);
        let thread_reaper = Arc::clone(reaper);
        let spawned = std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .spawn(move || {
                let code = thread_reaper.wait(watcher.pid).code();
                *watcher.exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(code);
                watcher.exited.notify_all();
            });
        if let Err(source) = spawned {
            super::spawn::kill_and_reap(pid, reaper);
            return Err(ContainerError::Io {
                what: "spawning a process waiter thread".into(),
                source,
            });
        }
        Ok(handle)
    }

    /// The exit code once the process has exited.
    pub fn exit_code(&self) -> Option<i32> {
        *self.exit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until the process exits; the code as runc reports it.
    pub fn wait(&self) -> i32 {
        let mut exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(code) = *exit {
                return code;
            }
            exit = self.exited.wait(exit).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// SIGKILLs the process unless it has exited (its waiter reaps it).
    pub fn kill(&self) {
        if self.exit_code().is_none() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
