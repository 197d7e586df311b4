//! The VM's control loop: one thread waits on the guest's reset and
//! power-off, the vCPUs' events, and the host's stop and snapshot requests.

use std::os::fd::AsRawFd;
use std::sync::mpsc::Sender;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::{RunReport, Vm, VmError, VmOutcome};
use crate::handle::VmEvent;
use crate::vcpu::VcpuEvent;

const PANIC_CONTEXT_LINES: usize = 12;

/// How the control loop ended.
pub(super) enum LoopEnd {
    Done(Result<RunReport, VmError>),
    /// The host asked for a snapshot; the vCPUs still run.
    Snapshot {
        first_entry: Option<Instant>,
    },
}

impl Vm {
    pub(super) fn control_loop(&self, listener: Option<&Sender<VmEvent>>) -> LoopEnd {
        match self.wait_for_end(listener) {
            Ok(end) => end,
            Err(e) => LoopEnd::Done(Err(e)),
        }
    }

    fn wait_for_end(&self, listener: Option<&Sender<VmEvent>>) -> Result<LoopEnd, VmError> {
        const RESET: u64 = 0;
        const VCPU: u64 = 1;
        const POWER_OFF: u64 = 2;
        const STOP: u64 = 3;
        const SNAPSHOT: u64 = 4;
        let epoll = Epoll::new().map_err(VmError::EventLoop)?;
        for (fd, token) in [
            (self.reset_evt.as_raw_fd(), RESET),
            (self.vcpu_wake.as_raw_fd(), VCPU),
            (self.power_off_evt.as_raw_fd(), POWER_OFF),
            (self.stop_evt.as_raw_fd(), STOP),
            (self.snapshot_evt.as_raw_fd(), SNAPSHOT),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(VmError::EventLoop)?;
        }
        let mut first_entry = None;
        let mut ready = [EpollEvent::default(); 5];
        let done = |r| Ok(LoopEnd::Done(r));
        loop {
            let n = match epoll.wait(-1, &mut ready) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(VmError::EventLoop(e)),
            };
            for event in &ready[..n] {
                match event.data() {
                    RESET => return done(self.ended(VmOutcome::Reset, first_entry)),
                    POWER_OFF => return done(self.ended(VmOutcome::PowerOff, first_entry)),
                    STOP => {
                        let outcome = VmOutcome::Stopped;
                        return done(Ok(RunReport {
                            outcome,
                            first_entry,
                        }));
                    }
                    SNAPSHOT => return Ok(LoopEnd::Snapshot { first_entry }),
                    _ => {}
                }
                let _ = self.vcpu_wake.read();
                while let Ok(event) = self.events.try_recv() {
                    match event {
                        VcpuEvent::FirstEntry { at } => {
                            first_entry = Some(at);
                            if let Some(l) = listener {
                                let _ = l.send(VmEvent::Running { at });
                            }
                        }
                        VcpuEvent::Reset { .. } => {
                            return done(self.ended(VmOutcome::Reset, first_entry))
                        }
                        VcpuEvent::PowerOff { .. } => {
                            return done(self.ended(VmOutcome::PowerOff, first_entry))
                        }
                        VcpuEvent::Failed { cpu, reason } => {
                            let context = self.console_context();
                            return done(Err(VmError::VcpuFailed {
                                cpu,
                                reason,
                                context,
                            }));
                        }
                        // Only sent once a snapshot pauses the vCPUs.
                        VcpuEvent::Saved { .. } => {}
                    }
                }
            }
        }
    }

    /// A guest that ended after printing a kernel panic failed, however it ended.
    pub(super) fn ended(
        &self,
        outcome: VmOutcome,
        first_entry: Option<Instant>,
    ) -> Result<RunReport, VmError> {
        if let Some(line) = self.console_log.panic_line() {
            return Err(VmError::GuestPanic {
                line,
                context: self.console_context(),
            });
        }
        Ok(RunReport {
            outcome,
            first_entry,
        })
    }

    pub(super) fn console_context(&self) -> String {
        self.console_log.last_lines(PANIC_CONTEXT_LINES).join("\n")
    }
}
