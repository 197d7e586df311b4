//! A whole VM: KVM setup, guest memory, boot, devices, vCPU threads, lifecycle.
//!
//! `Vm::new` does everything up to the first instruction; `Vm::run` starts one
//! thread per vCPU and blocks on the control loop until the guest resets,
//! powers off or fails. Stopping is explicit: a `stop` flag plus a signal that
//! kicks each vCPU thread out of KVM_RUN, repeated until every thread is gone.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_devices::bus::Bus;
use husk_devices::fs::FsConfig;
use husk_devices::legacy::i8042::{I8042_BASE, I8042_LEN};
use husk_devices::legacy::serial::{COM1_BASE, COM1_IRQ, COM1_LEN};
use husk_devices::legacy::{ConsoleLog, ConsoleWriter, SerialConsole, I8042};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::Killable;

use crate::boot::cmdline::{CmdlineBuildError, KernelCmdline, DEFAULT_CMDLINE};
use crate::boot::kernel::{self, KernelEntry, LoadedKernel};
use crate::boot::{cpu_state, mptable, params};
use crate::compat::{CompatMode, CompatProfile, HostKvm};
use crate::console_watch::ConsoleWatch;
use crate::device_manager::{DeviceContext, DeviceError, DeviceManager, DeviceThread, VsockSpec};
use crate::device_memory::DeviceMemory;
use crate::handle::VmEvent;
use crate::kvm_setup::{self, KvmSetupError};
use crate::memory::{self, MemoryError};
use crate::pmem::PmemSpec;
use crate::resources::GuestResources;
use crate::vcpu::{kick_signal, Vcpu, VcpuEvent};

const PANIC_CONTEXT_LINES: usize = 12;

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
}

/// How a guest that ran to its end ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest rebooted (i8042 reset, triple fault): husk treats it as the end.
    Reset,
    PowerOff,
    /// The host stopped it (`VmStopper::stop`).
    Stopped,
}

#[derive(Debug, Clone, Copy)]
pub struct RunReport {
    pub outcome: VmOutcome,
    /// When vCPU 0 entered the guest for the first time.
    pub first_entry: Option<Instant>,
}

pub struct Vm {
    _kvm: Kvm,
    _fd: VmFd,
    /// Host mappings behind device memory (pmem images), unmapped after the VM fd closes.
    _device_memory: DeviceMemory,
    /// Guest RAM stays mapped as long as the VM fd that has it as memory slots.
    _mem: GuestMemoryMmap,
    vcpus: Vec<Vcpu>,
    console_log: ConsoleLog,
    reset_evt: EventFd,
    /// Written by the console tap when the guest kernel announces power-off.
    power_off_evt: EventFd,
    device_thread: Option<DeviceThread>,
    /// Written by a vCPU after it sends a `VcpuEvent`.
    vcpu_wake: EventFd,
    /// Written by a `VmStopper` to end the VM from the host.
    stop_evt: EventFd,
    stop: Arc<AtomicBool>,
    events: Receiver<VcpuEvent>,
    cmdline: String,
}

impl Vm {
    pub fn new(config: &VmConfig) -> Result<Self, VmError> {
        if config.cpus == 0 || config.cpus > mptable::MAX_CPUS {
            return Err(VmError::CpuCount(config.cpus));
        }
        // Mapping validates the size first, so a bad --mem is reported before KVM is touched.
        let mem = memory::create_guest_memory(config.mem_bytes)?;
        let profile = CompatProfile::select(config.compat, HostKvm::detect());
        let (kvm, fd) = kvm_setup::create_vm()?;
        kvm_setup::register_memory(&fd, &mem)?;
        let mut res = GuestResources::new(&mem);
        let mut cmdline = KernelCmdline::new(config.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE))?;

        let loaded = kernel::load_kernel(&mem, &config.kernel)?;
        let mut mmio = Bus::new();
        let mut device_memory = DeviceMemory::new();
        let mut devices = DeviceManager::new();
        let mut ctx = DeviceContext {
            vm: &fd,
            mem: &mem,
            mmio: &mut mmio,
            res: &mut res,
            dev_mem: &mut device_memory,
            cmdline: &mut cmdline,
        };
        add_virtio_devices(config, &kvm, &mut devices, &mut ctx)?;
        if let Some(p) = &profile {
            tracing::info!("host compatibility profile: {p}");
            cmdline.push(p.cmdline)?;
        }
        let boot_info = write_boot_state(config, &mem, &loaded, &cmdline)?;

        let console_log = ConsoleLog::new();
        let power_off_evt = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
        console_log.notify_power_off(power_off_evt.try_clone().map_err(VmError::EventFd)?);
        let reset_evt = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
        let pio = Arc::new(legacy_devices(&fd, config, &console_log, &reset_evt)?);
        let device_thread = devices.start()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, events) = channel();
        let vcpu_wake = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
        let shared = VcpuShared {
            pio,
            mmio: Arc::new(mmio),
            mem: mem.clone(),
            emulate_missing: profile.as_ref().is_some_and(|p| p.emulate_missing),
            stop: stop.clone(),
            events: tx,
            wake: &vcpu_wake,
        };
        let vcpus = create_vcpus(
            &kvm,
            &fd,
            config,
            profile.as_ref(),
            &loaded.entry,
            boot_info,
            &shared,
        )?;
        Ok(Self {
            _kvm: kvm,
            _fd: fd,
            _device_memory: device_memory,
            _mem: mem,
            vcpus,
            console_log,
            reset_evt,
            power_off_evt,
            vcpu_wake,
            stop_evt: EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?,
            device_thread,
            stop,
            events,
            cmdline: cmdline.render(),
        })
    }

    /// Something another thread can use to end this VM.
    pub fn stopper(&self) -> Result<VmStopper, VmError> {
        Ok(VmStopper(
            self.stop_evt.try_clone().map_err(VmError::EventFd)?,
        ))
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
    pub fn run_reporting(mut self, events: Option<Sender<VmEvent>>) -> Result<RunReport, VmError> {
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
        let result = self.control_loop(events.as_ref());
        self.stop_vcpus(threads);
        if let Some(devices) = self.device_thread.take() {
            devices.stop();
        }
        result
    }

    fn control_loop(&self, listener: Option<&Sender<VmEvent>>) -> Result<RunReport, VmError> {
        const RESET: u64 = 0;
        const VCPU: u64 = 1;
        const POWER_OFF: u64 = 2;
        const STOP: u64 = 3;
        let epoll = Epoll::new().map_err(VmError::EventLoop)?;
        for (fd, token) in [
            (self.reset_evt.as_raw_fd(), RESET),
            (self.vcpu_wake.as_raw_fd(), VCPU),
            (self.power_off_evt.as_raw_fd(), POWER_OFF),
            (self.stop_evt.as_raw_fd(), STOP),
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
        let mut ready = [EpollEvent::default(); 4];
        loop {
            let n = match epoll.wait(-1, &mut ready) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(VmError::EventLoop(e)),
            };
            for event in &ready[..n] {
                match event.data() {
                    RESET => return self.ended(VmOutcome::Reset, first_entry),
                    POWER_OFF => return self.ended(VmOutcome::PowerOff, first_entry),
                    STOP => {
                        return Ok(RunReport {
                            outcome: VmOutcome::Stopped,
                            first_entry,
                        })
                    }
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
                            return self.ended(VmOutcome::Reset, first_entry)
                        }
                        VcpuEvent::PowerOff { .. } => {
                            return self.ended(VmOutcome::PowerOff, first_entry)
                        }
                        VcpuEvent::Failed { cpu, reason } => {
                            return Err(VmError::VcpuFailed {
                                cpu,
                                reason,
                                context: self.console_context(),
                            })
                        }
                    }
                }
            }
        }
    }

    /// A guest that ended after printing a kernel panic failed, however it ended.
    fn ended(
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

    fn console_context(&self) -> String {
        self.console_log.last_lines(PANIC_CONTEXT_LINES).join("\n")
    }

    fn stop_vcpus(&self, mut threads: Vec<JoinHandle<()>>) {
        self.stop.store(true, Ordering::Release);
        while !threads.is_empty() {
            for t in &threads {
                // A thread that already left KVM_RUN ignores the signal.
                let _ = t.kill(kick_signal());
            }
            std::thread::sleep(Duration::from_millis(1));
            let (done, running): (Vec<_>, Vec<_>) =
                threads.into_iter().partition(|t| t.is_finished());
            done.into_iter().for_each(|t| {
                let _ = t.join();
            });
            threads = running;
        }
    }
}

/// Handles to another thread's way of ending a VM: the VM's control loop
/// sees the write, stops every vCPU and the devices, and `run` returns
/// `VmOutcome::Stopped`.
pub struct VmStopper(EventFd);

impl VmStopper {
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self(self.0.try_clone()?))
    }

    pub fn stop(&self) {
        if let Err(e) = self.0.write(1) {
            tracing::error!("cannot ask the VM to stop: {e}");
        }
    }
}

/// What every vCPU shares.
struct VcpuShared<'a> {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    mem: GuestMemoryMmap,
    emulate_missing: bool,
    stop: Arc<AtomicBool>,
    events: Sender<VcpuEvent>,
    wake: &'a EventFd,
}

fn create_vcpus(
    kvm: &Kvm,
    fd: &VmFd,
    config: &VmConfig,
    profile: Option<&CompatProfile>,
    entry: &KernelEntry,
    boot_info: GuestAddress,
    shared: &VcpuShared,
) -> Result<Vec<Vcpu>, VmError> {
    let supported = kvm_setup::supported_cpuid(kvm)?;
    let mut vcpus = Vec::with_capacity(config.cpus as usize);
    for id in 0..config.cpus {
        let vcpu_fd = fd
            .create_vcpu(id as u64)
            .map_err(KvmSetupError::CreateVcpu)?;
        let boot = (id == 0).then_some((entry, boot_info));
        kvm_setup::configure_vcpu(&vcpu_fd, id, config.cpus, &supported, profile, boot)?;
        vcpus.push(Vcpu {
            id,
            fd: vcpu_fd,
            pio: shared.pio.clone(),
            mmio: shared.mmio.clone(),
            mem: shared.mem.clone(),
            emulate_missing: shared.emulate_missing,
            on_first_entry: if id == 0 { config.on_first_entry } else { None },
            stop: shared.stop.clone(),
            events: shared.events.clone(),
            wake: shared.wake.try_clone().map_err(VmError::EventFd)?,
        });
    }
    Ok(vcpus)
}

/// The initrd, the MP table, the boot parameters (PVH start info or zero
/// page, with the final command line) and the boot page tables; returns
/// the boot information's address for the boot vCPU.
fn write_boot_state(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
    loaded: &LoadedKernel,
    cmdline: &KernelCmdline,
) -> Result<GuestAddress, VmError> {
    let initrd = match &config.initrd {
        Some(path) => Some(kernel::load_initrd(
            mem,
            path,
            loaded.end,
            config.mem_bytes,
        )?),
        None => None,
    };
    mptable::setup(mem, config.cpus)?;
    let parsed = cmdline.as_cmdline();
    let boot_info = match &loaded.entry {
        KernelEntry::Pvh(_) => params::write_pvh(mem, config.mem_bytes, parsed, initrd)?,
        KernelEntry::Linux64 { header, .. } => {
            params::write_zero_page(mem, config.mem_bytes, parsed, initrd, *header)?
        }
    };
    cpu_state::write_tables(mem, &loaded.entry).map_err(VmError::BootTables)?;
    Ok(boot_info)
}

/// Adds vsock, virtio-fs and pmem devices; without an initrd (and with no
/// `root=` from the user) the guest boots from the first pmem image.
fn add_virtio_devices(
    config: &VmConfig,
    kvm: &Kvm,
    devices: &mut DeviceManager,
    ctx: &mut DeviceContext,
) -> Result<(), VmError> {
    if let Some(spec) = &config.vsock {
        devices.add_vsock(ctx, spec)?;
    }
    for share in &config.fs {
        devices.add_fs(ctx, share)?;
    }
    if config.pmem.is_empty() {
        return Ok(());
    }
    let readonly_mem = kvm.check_extension(Cap::ReadonlyMem);
    tracing::debug!(readonly_mem, "KVM_CAP_READONLY_MEM");
    let mut filesystems = Vec::new();
    for spec in &config.pmem {
        filesystems.push(devices.add_pmem(ctx, spec, readonly_mem)?);
    }
    if config.initrd.is_some() || ctx.cmdline.user_has_param("root") {
        return Ok(());
    }
    let words = filesystems[0]
        .root_words()
        .ok_or_else(|| VmError::UnknownRootImage(config.pmem[0].path.display().to_string()))?;
    ctx.cmdline.push(&words.join(" "))?;
    Ok(())
}

fn legacy_devices(
    fd: &VmFd,
    config: &VmConfig,
    log: &ConsoleLog,
    reset_evt: &EventFd,
) -> Result<Bus, VmError> {
    let sink: Box<dyn Write + Send> = match &config.console {
        ConsoleTarget::Stdout => Box::new(std::io::stdout()),
        ConsoleTarget::File(path) => {
            Box::new(File::create(path).map_err(|source| VmError::ConsoleFile {
                path: path.display().to_string(),
                source,
            })?)
        }
        ConsoleTarget::Watch(watch) => Box::new(watch.writer()),
    };
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
    fd.register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(KvmSetupError::Irqfd)?;
    let serial = SerialConsole::new(serial_irq, Box::new(ConsoleWriter::new(sink, log.clone())));
    let reset = reset_evt.try_clone().map_err(VmError::EventFd)?;
    let mut pio = Bus::new();
    pio.insert(Arc::new(Mutex::new(serial)), COM1_BASE as u64, COM1_LEN)?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(reset))),
        I8042_BASE as u64,
        I8042_LEN,
    )?;
    Ok(pio)
}
