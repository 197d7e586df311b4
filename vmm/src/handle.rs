//! A VM you can hold: the embedded VMM's API for the runtime, the CLI, the
//! benches and the tests.
//!
//! `VmHandle::start` builds the VM on the caller's thread (so every setup
//! error comes back at once, before anything runs), then runs it on its own
//! named thread. The holder waits on explicit events (the guest is running;
//! the VM ended) instead of polling console files, and can stop it. No child
//! process: the VMM lives in the caller's process, as husk's shim needs.

use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::metrics::VmMetrics;
use crate::vm::{RunReport, Vm, VmConfig, VmError, VmStopper};

/// What a running VM tells its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEvent {
    /// vCPU 0 entered the guest for the first time.
    Running { at: Instant },
    /// The VM is over (guest reset or power-off, a failure, or a stop);
    /// `VmHandle::wait` says how.
    Ended,
}

pub struct VmHandle {
    events: Receiver<VmEvent>,
    stopper: VmStopper,
    thread: Option<JoinHandle<Result<RunReport, VmError>>>,
    cmdline: String,
    metrics: Arc<VmMetrics>,
}

impl VmHandle {
    /// Builds the VM described by `config` and starts it on a thread named
    /// `husk-vmm` (the VM's control thread, confined once its vCPU threads
    /// run when `config.seccomp` is on).
    pub fn start(config: &VmConfig) -> Result<Self, VmError> {
        let vm = Vm::new(config)?;
        let stopper = vm.stopper()?;
        let cmdline = vm.cmdline().to_string();
        let metrics = vm.metrics();
        let (tx, events) = channel();
        let thread = std::thread::Builder::new()
            .name("husk-vmm".into())
            .spawn(move || {
                let result = vm.run_as_control_thread(Some(tx.clone()));
                let _ = tx.send(VmEvent::Ended);
                result
            })
            .map_err(VmError::Thread)?;
        Ok(Self {
            events,
            stopper,
            thread: Some(thread),
            cmdline,
            metrics,
        })
    }

    /// What the VM counts: exits by reason, device counters, first entry.
    pub fn metrics(&self) -> Arc<VmMetrics> {
        self.metrics.clone()
    }

    /// The command line the guest was given.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// The next event, waiting at most `timeout`; None on timeout (or when
    /// every event has been taken).
    pub fn next_event(&self, timeout: Duration) -> Option<VmEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    /// Whether the VM has ended (without waiting).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Something another thread can stop this VM with.
    pub fn stopper(&self) -> std::io::Result<VmStopper> {
        self.stopper.try_clone()
    }

    /// Asks the VM to stop; `wait` then returns `VmOutcome::Stopped` (or how
    /// it ended, if it ended first).
    pub fn stop(&self) {
        self.stopper.stop();
    }

    /// Waits for the VM to end and says how.
    pub fn wait(mut self) -> Result<RunReport, VmError> {
        self.join()
    }

    /// Snapshots the VM into the (existing, empty) directory `dir`, making
    /// it a template; the VM ends with it.
    pub fn snapshot(self, dir: &std::path::Path) -> Result<RunReport, VmError> {
        self.stopper.snapshot(dir.to_path_buf());
        self.wait()
    }

    fn join(&mut self) -> Result<RunReport, VmError> {
        let thread = self.thread.take().expect("joined once");
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for VmHandle {
    /// A dropped handle stops its VM: no guest outlives its holder.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
            if let Err(e) = self.join() {
                tracing::debug!("VM ended while its handle was dropped: {e}");
            }
        }
    }
}
