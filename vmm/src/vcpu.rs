//! One vCPU: its KVM fd, its run loop on its own thread, and exit handling.
//!
//! Port and MMIO exits go to the shared buses. Anything that ends the VM
//! (triple fault, a system event, an instruction KVM cannot emulate) is sent
//! to the VM's control thread as a `VcpuEvent`; the control thread then stops
//! every vCPU by setting `stop` and kicking the threads out of KVM_RUN.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use husk_devices::bus::Bus;
use kvm_bindings::{kvm_vcpu_events, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::compat::guest_walk;
use crate::compat::insn_fallback::{self, Fallback};
use crate::compat::xsave_fallback::{self, XsaveInsn, XsaveLayout, XsaveOp};
use crate::metrics::{ExitReason, VmMetrics};
use crate::seccomp::ThreadFilter;
use crate::snapshot::kvm_state::VcpuState;

const GP_VECTOR: u8 = 13;

/// Signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

/// Why a vCPU stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEvent {
    /// The guest asked for a reset (triple fault or system event).
    Reset { cpu: u8 },
    /// The guest powered off.
    PowerOff { cpu: u8 },
    /// The vCPU hit something the VMM cannot continue from.
    Failed { cpu: u8, reason: String },
    /// vCPU 0 is about to run its first guest instruction.
    FirstEntry { at: Instant },
    /// The vCPU paused for a snapshot and saved its state; its thread ends.
    Saved { cpu: u8, state: Box<VcpuState> },
}

pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub mem: GuestMemoryMmap,
    /// Complete instructions the host's KVM cannot emulate (compat profile).
    pub emulate_missing: bool,
    pub on_first_entry: Option<fn()>,
    pub stop: Arc<AtomicBool>,
    /// Set for a snapshot: save the state at the top of the run loop and end.
    pub pause: Arc<AtomicBool>,
    /// The MSRs a snapshot saves (KVM's index list).
    pub msr_index: Arc<Vec<u32>>,
    pub events: Sender<VcpuEvent>,
    /// Written after each event so the control thread wakes up.
    pub wake: EventFd,
    /// Where this vCPU counts its exits.
    pub metrics: Arc<VmMetrics>,
    /// This thread's seccomp filter, installed before the first KVM_RUN.
    pub seccomp: Option<Arc<ThreadFilter>>,
}

enum Step {
    Continue,
    Exit(VcpuEvent),
}

impl Vcpu {
    /// Runs the guest until the VM stops or this vCPU hits a fatal exit.
    pub fn run(mut self) {
        crate::seccomp::confine_or_abort(self.seccomp.as_deref());
        if self.id == 0 {
            self.metrics.mark_first_entry();
            self.report(VcpuEvent::FirstEntry { at: Instant::now() });
        }
        if let Some(hook) = self.on_first_entry {
            hook();
        }
        while !self.stop.load(Ordering::Acquire) {
            // The top of the loop: no instruction is half-completed here.
            if self.pause.load(Ordering::Acquire) {
                return self.save_for_snapshot();
            }
            match self.step() {
                Step::Continue => {}
                Step::Exit(event) => {
                    self.report(event);
                    break;
                }
            }
        }
    }

    /// One KVM_RUN under immediate_exit lets KVM finish a pending port or
    /// MMIO access without running the guest; then the state is complete.
    fn save_for_snapshot(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
        let cpu = self.id;
        let event = match VcpuState::save(&self.fd, cpu, &self.msr_index) {
            Ok(state) => VcpuEvent::Saved {
                cpu,
                state: Box::new(state),
            },
            Err(e) => VcpuEvent::Failed {
                cpu,
                reason: format!("saving its state: {e}"),
            },
        };
        self.report(event);
    }

    fn report(&self, event: VcpuEvent) {
        // The control thread may already be gone (VM stopping): nothing to tell.
        if self.events.send(event).is_ok() {
            let _ = self.wake.write(1);
        }
    }

    fn step(&mut self) -> Step {
        let cpu = self.id;
        let exits = &self.metrics.vcpus[usize::from(cpu)];
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            // Kicked by the control thread, or a spurious wake-up: check `stop`.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                exits.count(ExitReason::Interrupted);
                return Step::Continue;
            }
            Err(e) => {
                return Step::Exit(VcpuEvent::Failed {
                    cpu,
                    reason: format!("KVM_RUN failed: {e}"),
                })
            }
        };
        exits.count(exit_reason(&exit));
        match exit {
            VcpuExit::IoIn(port, data) => {
                if !self.pio.read(port as u64, data) {
                    data.fill(0xff);
                }
            }
            VcpuExit::IoOut(port, data) => {
                self.pio.write(port as u64, data);
            }
            VcpuExit::MmioRead(addr, data) => {
                if !self.mmio.read(addr, data) {
                    data.fill(0);
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                self.mmio.write(addr, data);
            }
            VcpuExit::Shutdown => return Step::Exit(VcpuEvent::Reset { cpu }),
            VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _) => {
                return Step::Exit(VcpuEvent::Reset { cpu })
            }
            VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _) => {
                return Step::Exit(VcpuEvent::PowerOff { cpu })
            }
            VcpuExit::Hlt => return Step::Exit(VcpuEvent::PowerOff { cpu }),
            VcpuExit::InternalError => {
                return match self.handle_internal_error() {
                    Ok(()) => Step::Continue,
                    Err(reason) => Step::Exit(VcpuEvent::Failed { cpu, reason }),
                }
            }
            VcpuExit::FailEntry(reason, _) => {
                return Step::Exit(VcpuEvent::Failed {
                    cpu,
                    reason: format!("KVM could not enter the guest (hardware reason {reason:#x})"),
                })
            }
            other => {
                return Step::Exit(VcpuEvent::Failed {
                    cpu,
                    reason: format!("unexpected KVM exit {other:?}"),
                })
            }
        }
        Step::Continue
    }

    /// KVM could not emulate an instruction. With the compatibility profile,
    /// the few instructions `insn_fallback` knows are completed here as the
    /// CPU would; anything else ends the VM with the instruction's address and bytes.
    fn handle_internal_error(&mut self) -> Result<(), String> {
        // SAFETY: KVM filled the `internal` member of the union for this exit.
        let (suberror, ndata) = unsafe {
            let internal = &self.fd.get_kvm_run().__bindgen_anon_1.internal;
            (internal.suberror, internal.ndata)
        };
        let mut regs = self
            .fd
            .get_regs()
            .map_err(|e| format!("KVM_GET_REGS failed: {e}"))?;
        let sregs = self
            .fd
            .get_sregs()
            .map_err(|e| format!("KVM_GET_SREGS failed: {e}"))?;
        let bytes = guest_walk::instruction_bytes(&self.mem, &sregs, regs.rip);
        if suberror == KVM_INTERNAL_ERROR_EMULATION && self.emulate_missing {
            if let Some(insn) = xsave_fallback::decode(&bytes).filter(|_| sregs.cs.dpl == 0) {
                return self.complete_xsave(insn, &mut regs, &sregs);
            }
            let x87 = || self.fd.get_fpu().ok().map(|f| (f.fsw, f.fcw));
            if let Some(fallback) = insn_fallback::decide(&bytes, x87) {
                // A guest can loop on such an instruction: rate-limited.
                husk_devices::debug_limited!(
                    cpu = self.id,
                    rip = format_args!("{:#x}", regs.rip),
                    ?fallback,
                    "instruction completed by the VMM"
                );
                return self.apply(fallback, &mut regs);
            }
        }
        let shown: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Err(format!(
            "KVM could not emulate the instruction at RIP {:#x} (CPL {}): bytes [{}] (internal error suberror {suberror}, {ndata} data words)",
            regs.rip,
            sregs.cs.dpl,
            if shown.is_empty() { "unreadable".to_string() } else { shown.join(" ") },
        ))
    }

    /// Completes a guest kernel's `xsave64`/`xrstor64` against the vCPU's
    /// register state; a bad area (unmapped, read-only, misaligned, invalid
    /// header) gets #GP, which the kernel's exception fixups expect for
    /// user signal frames.
    fn complete_xsave(
        &mut self,
        insn: XsaveInsn,
        regs: &mut kvm_bindings::kvm_regs,
        sregs: &kvm_bindings::kvm_sregs,
    ) -> Result<(), String> {
        static LAYOUT: std::sync::OnceLock<XsaveLayout> = std::sync::OnceLock::new();
        let layout = LAYOUT.get_or_init(XsaveLayout::host);
        let xcrs = self
            .fd
            .get_xcrs()
            .map_err(|e| format!("KVM_GET_XCRS failed: {e}"))?;
        let xcr0 = xcrs.xcrs[..xcrs.nr_xcrs as usize]
            .iter()
            .find(|x| x.xcr == 0)
            .map_or(1, |x| x.value);
        let rfbm = XsaveInsn::rfbm(regs, xcr0);
        let addr = insn.address(regs);
        let mut xsave = self
            .fd
            .get_xsave()
            .map_err(|e| format!("KVM_GET_XSAVE failed: {e}"))?;
        // SAFETY: kvm_xsave's region is 4096 plain bytes.
        let state: &mut [u8; 4096] = unsafe { &mut *xsave.region.as_mut_ptr().cast() };
        let mut area = vec![0u8; layout.area_len(rfbm)];
        if !addr.is_multiple_of(64) || area.len() > state.len() {
            return self.inject(GP_VECTOR, Some(0));
        }
        let mem = &self.mem;
        let done = match insn.op {
            XsaveOp::Save => guest_walk::read_virt(mem, sregs, addr, &mut area).and_then(|()| {
                xsave_fallback::save(state, rfbm, layout, &mut area);
                guest_walk::write_virt(mem, sregs, addr, &area)
            }),
            XsaveOp::Restore => guest_walk::read_virt(mem, sregs, addr, &mut area)
                .and_then(|()| xsave_fallback::restore(state, rfbm, xcr0, layout, &area).ok()),
        };
        tracing::trace!(
            cpu = self.id,
            ?insn,
            addr,
            rfbm,
            ok = done.is_some(),
            "xsave completed by the VMM"
        );
        if done.is_none() {
            return self.inject(GP_VECTOR, Some(0));
        }
        if insn.op == XsaveOp::Restore {
            // SAFETY: `xsave` is a complete KVM_GET_XSAVE buffer, edited in place.
            unsafe { self.fd.set_xsave(&xsave) }
                .map_err(|e| format!("KVM_SET_XSAVE failed: {e}"))?;
        }
        regs.rip = regs.rip.wrapping_add(insn.len);
        self.fd
            .set_regs(regs)
            .map_err(|e| format!("KVM_SET_REGS failed: {e}"))
    }

    fn apply(
        &mut self,
        fallback: Fallback,
        regs: &mut kvm_bindings::kvm_regs,
    ) -> Result<(), String> {
        let vector = match fallback {
            Fallback::Skip { len } | Fallback::TrapAfter { len, .. } => {
                regs.rip = regs.rip.wrapping_add(len);
                self.fd
                    .set_regs(regs)
                    .map_err(|e| format!("KVM_SET_REGS failed: {e}"))?;
                match fallback {
                    Fallback::TrapAfter { vector, .. } => vector,
                    _ => return Ok(()),
                }
            }
            Fallback::Fault { vector } => vector,
        };
        self.inject(vector, None)
    }

    /// Delivers exception `vector` (with `error_code`, if it has one).
    fn inject(&mut self, vector: u8, error_code: Option<u32>) -> Result<(), String> {
        let mut events: kvm_vcpu_events = self
            .fd
            .get_vcpu_events()
            .map_err(|e| format!("KVM_GET_VCPU_EVENTS failed: {e}"))?;
        events.exception.injected = 1;
        events.exception.nr = vector;
        events.exception.has_error_code = u8::from(error_code.is_some());
        events.exception.error_code = error_code.unwrap_or(0);
        self.fd
            .set_vcpu_events(&events)
            .map_err(|e| format!("KVM_SET_VCPU_EVENTS failed: {e}"))
    }
}

/// The metrics' name for an exit.
fn exit_reason(exit: &VcpuExit) -> ExitReason {
    match exit {
        VcpuExit::IoIn(..) => ExitReason::IoIn,
        VcpuExit::IoOut(..) => ExitReason::IoOut,
        VcpuExit::MmioRead(..) => ExitReason::MmioRead,
        VcpuExit::MmioWrite(..) => ExitReason::MmioWrite,
        VcpuExit::Hlt => ExitReason::Hlt,
        VcpuExit::Shutdown => ExitReason::Shutdown,
        VcpuExit::SystemEvent(..) => ExitReason::SystemEvent,
        VcpuExit::InternalError => ExitReason::InternalError,
        VcpuExit::FailEntry(..) => ExitReason::FailEntry,
        _ => ExitReason::Other,
    }
}
