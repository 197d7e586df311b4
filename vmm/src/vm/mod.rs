//! A whole VM: KVM setup, guest memory, boot or restore, devices, vCPU
//! threads, lifecycle.
//!
//! `Vm::new` does everything up to the first instruction, either booting a
//! kernel (`boot`) or restoring a template (`restore`); both share the
//! machine's assembly (`parts`). `Vm::run` starts one thread per vCPU and
//! blocks on the control loop (`control`) until the guest resets, powers
//! off or fails, the host stops it, or a snapshot is asked for
//! (`snapshot`). Stopping is explicit: a `stop` flag plus a signal that
//! kicks each vCPU thread out of KVM_RUN, repeated until every thread is gone.

mod boot;
mod control;
mod parts;
mod restore;
mod snapshot;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_devices::fs::FsConfig;
use husk_devices::legacy::{ConsoleLog, SerialConsole};
use husk_devices::virtio::MmioTransport;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::boot::cmdline::CmdlineBuildError;
use crate::boot::{kernel, mptable, params};
use crate::compat::CompatMode;
use crate::console_watch::ConsoleWatch;
use crate::device_manager::{DeviceError, DeviceThread, VsockSpec};
use crate::device_memory::DeviceMemory;
use crate::handle::VmEvent;
use crate::kvm_setup::{self, KvmSetupError};
use crate::memory::MemoryError;
use crate::metrics::VmMetrics;
use crate::net::NetSpec;
use crate::pmem::PmemSpec;
use crate::seccomp::{self, ThreadFilter};
use crate::snapshot::format::TemplateHeader;
use crate::vcpu::{kick_signal, Vcpu, VcpuEvent};

#[derive(Debug, Clone)]
pub enum ConsoleTarget {
    Stdout,
    File(PathBuf),
    /// Kept in memory for whoever waits on it.
    Watch(ConsoleWatch),
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub mem_bytes: u64,
    pub cpus: u8,
    /// Replaces `DEFAULT_CMDLINE`; compatibility flags are appended either way.
    pub cmdline: Option<String>,
    pub console: ConsoleTarget,
    pub compat: CompatMode,
    /// Called on vCPU 0's thread just before its first KVM_RUN.
    pub on_first_entry: Option<fn()>,
    pub vsock: Option<VsockSpec>,
    /// virtio-pmem images; without an initrd the first one is the root filesystem.
    pub pmem: Vec<PmemSpec>,
    /// virtio-fs shares.
    pub fs: Vec<FsConfig>,
    /// virtio-net cards, added after every other device in this order.
    pub net: Vec<NetSpec>,
    /// Start from this template instead of booting `kernel`: memory size and
    /// vCPUs must be the template's; `kernel` and `pmem` images, when given,
    /// must be the files it was made with.
    pub template: Option<PathBuf>,
    /// Confine the VM's own threads (vCPUs, devices, control) with their
    /// seccomp allowlists (`crate::seccomp`); off only when asked.
    pub seccomp: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{0} vCPUs requested: husk supports 1 to {max}", max = mptable::MAX_CPUS)]
    CpuCount(u8),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Kvm(#[from] KvmSetupError),
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    BootParams(#[from] params::BootParamsError),
    #[error(transparent)]
    Cmdline(#[from] CmdlineBuildError),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error("cannot write boot tables to guest memory: {0}")]
    BootTables(vm_memory::GuestMemoryError),
    #[error("cannot open console file {path}: {source}")]
    ConsoleFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot place a device on the bus: {0}")]
    Bus(#[from] husk_devices::bus::BusError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(
        "pmem image {0} holds neither erofs nor ext4, so husk cannot boot from it; \
         give --initrd, or root= in --cmdline"
    )]
    UnknownRootImage(String),
    #[error("VM control loop failed: {0}")]
    EventLoop(std::io::Error),
    #[error("cannot start vCPU thread: {0}")]
    Thread(std::io::Error),
    #[error("guest kernel panicked: {line}\n--- last console lines ---\n{context}")]
    GuestPanic { line: String, context: String },
    #[error("vCPU {cpu}: {reason}\n--- last console lines ---\n{context}")]
    VcpuFailed {
        cpu: u8,
        reason: String,
        context: String,
    },
    #[error(transparent)]
    Template(#[from] crate::snapshot::TemplateError),
    #[error("restoring the template: {0}")]
    Restore(String),
    #[error("taking the snapshot: {0}")]
    Snapshot(String),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// How a guest that ran to its end ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest rebooted (i8042 reset, triple fault): husk treats it as the end.
    Reset,
    PowerOff,
    /// The host stopped it (`VmStopper::stop`).
    Stopped,
    /// Snapshotted into a template (`VmStopper::snapshot`); the VM ended there.
    Snapshotted,
}

#[derive(Debug, Clone, Copy)]
pub struct RunReport {
    pub outcome: VmOutcome,
    /// When vCPU 0 entered the guest for the first time.
    pub first_entry: Option<Instant>,
}

pub struct Vm {
    _kvm: Kvm,
    fd: VmFd,
    /// Host mappings behind device memory (pmem images), unmapped after the VM fd closes.
    _device_memory: DeviceMemory,
    /// Guest RAM stays mapped as long as the VM fd that has it as memory slots.
    mem: GuestMemoryMmap,
    vcpus: Vec<Vcpu>,
    console_log: ConsoleLog,
    reset_evt: EventFd,
    /// Written by the console tap when the guest kernel announces power-off.
    power_off_evt: EventFd,
    device_thread: Option<DeviceThread>,
    /// The control thread's seccomp filter (when seccomp is on).
    control_filter: Option<ThreadFilter>,
    /// Every virtio device's transport, for snapshots.
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    serial: Arc<Mutex<SerialConsole>>,
    /// Written by a vCPU after it sends a `VcpuEvent`.
    vcpu_wake: EventFd,
    /// Written by a `VmStopper` to end the VM from the host.
    stop_evt: EventFd,
    /// Written by a `VmStopper` to snapshot the VM into `snapshot_to`.
    snapshot_evt: EventFd,
    snapshot_to: Arc<Mutex<Option<PathBuf>>>,
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    events: Receiver<VcpuEvent>,
    /// Exit counters, device counters, first entry.
    metrics: Arc<VmMetrics>,
    cmdline: String,
    /// What a template made from this VM says it is (state digests aside).
    identity: TemplateHeader,
}

impl Vm {
    pub fn new(config: &VmConfig) -> Result<Self, VmError> {
        if config.cpus == 0 || config.cpus > mptable::MAX_CPUS {
            return Err(VmError::CpuCount(config.cpus));
        }
        match &config.template {
            Some(dir) => restore::restore(config, dir),
            None => boot::boot(config),
        }
    }

    /// Something another thread can use to end or snapshot this VM.
    pub fn stopper(&self) -> Result<VmStopper, VmError> {
        let clone = |e: &EventFd| e.try_clone().map_err(VmError::EventFd);
        Ok(VmStopper {
            stop: clone(&self.stop_evt)?,
            snapshot: clone(&self.snapshot_evt)?,
            snapshot_to: self.snapshot_to.clone(),
        })
    }

    /// What this VM counts (shared with its vCPU threads and devices).
    pub fn metrics(&self) -> Arc<VmMetrics> {
        self.metrics.clone()
    }

    /// The command line the guest is given.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Runs the guest to its end.
    pub fn run(self) -> Result<RunReport, VmError> {
        self.run_reporting(None)
    }

    /// Runs the guest to its end, telling `events` when it starts running.
    /// The calling thread stays as it is (the vCPU and device threads are
    /// confined, with seccomp on).
    pub fn run_reporting(self, events: Option<Sender<VmEvent>>) -> Result<RunReport, VmError> {
        self.run_on_thread(events, false)
    }

    /// `run_reporting` on a thread of the VM's own (`VmHandle`'s
    /// `husk-vmm`), which takes the control thread's seccomp filter once
    /// the vCPU threads run (they must not inherit it).
    pub(crate) fn run_as_control_thread(
        self,
        events: Option<Sender<VmEvent>>,
    ) -> Result<RunReport, VmError> {
        self.run_on_thread(events, true)
    }

    fn run_on_thread(
        mut self,
        events: Option<Sender<VmEvent>>,
        confine: bool,
    ) -> Result<RunReport, VmError> {
        kvm_setup::install_kick_handler();
        let mut threads = Vec::new();
        for vcpu in self.vcpus.drain(..) {
            let name = format!("husk-vcpu{}", vcpu.id);
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || vcpu.run())
                .map_err(VmError::Thread)?;
            threads.push(handle);
        }
        if confine {
            seccomp::confine_or_abort(self.control_filter.as_ref());
        }
        let result = match self.control_loop(events.as_ref()) {
            control::LoopEnd::Done(result) => {
                stop_vcpus(&self.stop, threads);
                result
            }
            // Stops the vCPUs (each saves its state first) and the devices.
            control::LoopEnd::Snapshot { first_entry } => {
                snapshot::take(&mut self, threads).map(|()| RunReport {
                    outcome: VmOutcome::Snapshotted,
                    first_entry,
                })
            }
        };
        if let Some(devices) = self.device_thread.take() {
            devices.stop();
        }
        result
    }
}

/// Stops vCPU threads: `stop` plus kicks until every thread is gone.
fn stop_vcpus(stop: &AtomicBool, mut threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    kick_until_gone(&mut threads);
}

/// Kicks threads out of KVM_RUN until all have ended; a thread that already
/// left KVM_RUN ignores the signal.
fn kick_until_gone(threads: &mut Vec<JoinHandle<()>>) {
    while !threads.is_empty() {
        for t in threads.iter() {
            let _ = t.kill(kick_signal());
        }
        std::thread::sleep(Duration::from_millis(1));
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(threads)
            .into_iter()
            .partition(|t| t.is_finished());
        done.into_iter().for_each(|t| {
            let _ = t.join();
        });
        *threads = running;
    }
}

/// Another thread's way of ending a VM, or snapshotting it into a template
/// (which ends it too): the VM's control loop sees the write, stops every
/// vCPU and the devices, and `run` returns how it ended.
pub struct VmStopper {
    stop: EventFd,
    snapshot: EventFd,
    snapshot_to: Arc<Mutex<Option<PathBuf>>>,
}

impl VmStopper {
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            stop: self.stop.try_clone()?,
            snapshot: self.snapshot.try_clone()?,
            snapshot_to: self.snapshot_to.clone(),
        })
    }

    pub fn stop(&self) {
        if let Err(e) = self.stop.write(1) {
            tracing::error!("cannot ask the VM to stop: {e}");
        }
    }

    /// Asks for a snapshot into the (existing, empty) directory `dir`;
    /// `run` returns `Snapshotted` once it is written.
    pub fn snapshot(&self, dir: PathBuf) {
        *self.snapshot_to.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir);
        if let Err(e) = self.snapshot.write(1) {
            tracing::error!("cannot ask the VM for a snapshot: {e}");
        }
    }
}
