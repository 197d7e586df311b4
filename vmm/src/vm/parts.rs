//! What a booted and a restored VM are both made of: the KVM VM with its
//! guest RAM, the virtio devices (added in one fixed order, so a restored
//! VM gets the resources its template had), the legacy devices and the
//! vCPUs' shared plumbing; and the final assembly into a `Vm`.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use husk_devices::bus::Bus;
use husk_devices::legacy::i8042::{I8042_BASE, I8042_LEN};
use husk_devices::legacy::serial::{COM1_BASE, COM1_IRQ, COM1_LEN};
use husk_devices::legacy::{ConsoleLog, ConsoleWriter, SerialConsole, SerialSnapshot, I8042};
use kvm_bindings::CpuId;
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ConsoleTarget, Vm, VmConfig, VmError};
use crate::boot::cmdline::KernelCmdline;
use crate::compat::{cpuid, CompatProfile, HostKvm};
use crate::device_manager::{DeviceContext, DeviceManager};
use crate::device_memory::DeviceMemory;
use crate::kvm_setup::{self, KvmSetupError};
use crate::metrics::VmMetrics;
use crate::resources::GuestResources;
use crate::seccomp::VmFilters;
use crate::snapshot::format::{sha256_hex, TemplateHeader};
use crate::vcpu::{Vcpu, VcpuEvent};

/// A VM with RAM and virtio devices, before legacy devices and vCPUs.
pub(super) struct Machine {
    pub kvm: Kvm,
    pub fd: VmFd,
    pub mem: GuestMemoryMmap,
    pub profile: Option<CompatProfile>,
    pub mmio: Bus,
    pub device_memory: DeviceMemory,
    pub devices: DeviceManager,
    pub cmdline: KernelCmdline,
    pub supported_cpuid: CpuId,
    /// The VM's threads' seccomp filters, when seccomp is on.
    pub filters: Option<VmFilters>,
}

impl Machine {
    /// Creates the KVM VM over `mem` and adds the virtio devices; the
    /// compat profile's words end the command line.
    pub fn new(
        config: &VmConfig,
        mem: GuestMemoryMmap,
        base_cmdline: &str,
    ) -> Result<Self, VmError> {
        // Compiled first: a problem with them is reported before KVM is touched.
        let filters = config.seccomp.then(VmFilters::compile).transpose()?;
        let profile = CompatProfile::select(config.compat, HostKvm::detect());
        let (kvm, fd) = kvm_setup::create_vm()?;
        kvm_setup::register_memory(&fd, &mem)?;
        let supported_cpuid = kvm_setup::supported_cpuid(&kvm)?;
        let mut res = GuestResources::new(&mem);
        let mut cmdline = KernelCmdline::new(base_cmdline)?;
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
        Ok(Self {
            kvm,
            fd,
            mem,
            profile,
            mmio,
            device_memory,
            devices,
            cmdline,
            supported_cpuid,
            filters,
        })
    }

    /// The CPUID vCPU `id` of `count` gets (the host's, filtered).
    pub fn cpuid(&self, id: u8, count: u8) -> CpuId {
        let mut c = self.supported_cpuid.clone();
        cpuid::filter(&mut c, id, count, self.profile.as_ref());
        c
    }

    /// Digest of what the guest's CPU looks like here (vCPU 0's CPUID): a
    /// template only restores where this is the same.
    pub fn cpuid_digest(&self, count: u8) -> String {
        let c = self.cpuid(0, count);
        let mut bytes = Vec::new();
        for e in c.as_slice() {
            for v in [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx] {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        sha256_hex(&bytes)
    }
}

/// Adds vsock, virtio-fs, pmem and net devices, in that order (a template
/// restores only into a VM whose devices land where its own did; new kinds
/// of device go last).
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
    add_pmem_devices(config, kvm, devices, ctx)?;
    for spec in &config.net {
        devices.add_net(ctx, spec)?;
    }
    Ok(())
}

/// The pmem devices; without an initrd (and with no `root=` from the user)
/// the guest boots from the first image.
fn add_pmem_devices(
    config: &VmConfig,
    kvm: &Kvm,
    devices: &mut DeviceManager,
    ctx: &mut DeviceContext,
) -> Result<(), VmError> {
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

/// The legacy devices and what every vCPU shares.
pub(super) struct Wired {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub serial: Arc<Mutex<SerialConsole>>,
    pub console_log: ConsoleLog,
    pub reset_evt: EventFd,
    pub power_off_evt: EventFd,
    pub vcpu_wake: EventFd,
    pub stop: Arc<AtomicBool>,
    pub pause: Arc<AtomicBool>,
    pub msr_index: Arc<Vec<u32>>,
    pub events_tx: Sender<VcpuEvent>,
    pub events: Receiver<VcpuEvent>,
    pub metrics: Arc<VmMetrics>,
}

impl Machine {
    /// The console (fresh, or as a snapshot left it) and the i8042.
    pub fn wire(
        &mut self,
        config: &VmConfig,
        serial: Option<&SerialSnapshot>,
    ) -> Result<Wired, VmError> {
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd);
        let console_log = ConsoleLog::new();
        let power_off_evt = evt()?;
        console_log.notify_power_off(power_off_evt.try_clone().map_err(VmError::EventFd)?);
        let reset_evt = evt()?;
        let serial_irq = evt()?;
        self.fd
            .register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(KvmSetupError::Irqfd)?;
        let out = Box::new(ConsoleWriter::new(
            console_sink(config)?,
            console_log.clone(),
        ));
        let serial = match serial {
            None => SerialConsole::new(serial_irq, out),
            Some(s) => {
                SerialConsole::from_snapshot(serial_irq, out, s).map_err(VmError::Restore)?
            }
        };
        let serial = Arc::new(Mutex::new(serial));
        let mut pio = Bus::new();
        pio.insert(serial.clone(), COM1_BASE as u64, COM1_LEN)?;
        let reset = reset_evt.try_clone().map_err(VmError::EventFd)?;
        pio.insert(
            Arc::new(Mutex::new(I8042::new(reset))),
            I8042_BASE as u64,
            I8042_LEN,
        )?;
        let msr_index = self
            .kvm
            .get_msr_index_list()
            .map(|l| l.as_slice().to_vec())
            .unwrap_or_default();
        let (events_tx, events) = channel();
        Ok(Wired {
            pio: Arc::new(pio),
            mmio: Arc::new(std::mem::take(&mut self.mmio)),
            serial,
            console_log,
            reset_evt,
            power_off_evt,
            vcpu_wake: evt()?,
            stop: Arc::new(AtomicBool::new(false)),
            pause: Arc::new(AtomicBool::new(false)),
            msr_index: Arc::new(msr_index),
            events_tx,
            events,
            metrics: Arc::new(VmMetrics::new(
                config.cpus,
                config.mem_bytes,
                self.devices.metrics.clone(),
            )),
        })
    }

    /// A vCPU thread's state for vCPU `id`, its fd created but not configured.
    pub fn vcpu(&self, wired: &Wired, config: &VmConfig, id: u8) -> Result<Vcpu, VmError> {
        let fd = self
            .fd
            .create_vcpu(id as u64)
            .map_err(KvmSetupError::CreateVcpu)?;
        Ok(Vcpu {
            id,
            fd,
            pio: wired.pio.clone(),
            mmio: wired.mmio.clone(),
            mem: self.mem.clone(),
            emulate_missing: self.profile.as_ref().is_some_and(|p| p.emulate_missing),
            on_first_entry: if id == 0 { config.on_first_entry } else { None },
            stop: wired.stop.clone(),
            pause: wired.pause.clone(),
            msr_index: wired.msr_index.clone(),
            events: wired.events_tx.clone(),
            wake: wired.vcpu_wake.try_clone().map_err(VmError::EventFd)?,
            metrics: wired.metrics.clone(),
            seccomp: self.filters.as_ref().map(|f| f.vcpu.clone()),
        })
    }

    /// Starts the device thread and makes the `Vm`.
    pub fn into_vm(
        self,
        wired: Wired,
        vcpus: Vec<Vcpu>,
        identity: TemplateHeader,
    ) -> Result<Vm, VmError> {
        let transports = self.devices.transports();
        let (devices_filter, control_filter) = match self.filters {
            Some(f) => (Some(f.devices), Some(f.control)),
            None => (None, None),
        };
        let device_thread = self.devices.start(devices_filter)?;
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd);
        Ok(Vm {
            _kvm: self.kvm,
            fd: self.fd,
            _device_memory: self.device_memory,
            mem: self.mem,
            vcpus,
            console_log: wired.console_log,
            reset_evt: wired.reset_evt,
            power_off_evt: wired.power_off_evt,
            device_thread,
            control_filter,
            transports,
            serial: wired.serial,
            vcpu_wake: wired.vcpu_wake,
            stop_evt: evt()?,
            snapshot_evt: evt()?,
            snapshot_to: Arc::new(Mutex::new(None)),
            stop: wired.stop,
            pause: wired.pause,
            events: wired.events,
            metrics: wired.metrics,
            cmdline: self.cmdline.render(),
            identity,
        })
    }
}

fn console_sink(config: &VmConfig) -> Result<Box<dyn Write + Send>, VmError> {
    Ok(match &config.console {
        ConsoleTarget::Stdout => Box::new(std::io::stdout()),
        ConsoleTarget::File(path) => {
            Box::new(File::create(path).map_err(|source| VmError::ConsoleFile {
                path: path.display().to_string(),
                source,
            })?)
        }
        ConsoleTarget::Watch(watch) => Box::new(watch.writer()),
    })
}
