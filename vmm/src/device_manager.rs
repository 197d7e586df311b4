//! The VM's virtio devices: where each sits, how the guest learns of it, and
//! the one thread that runs all their event handling.
//!
//! Each device gets a 4 KiB virtio-mmio window in the MMIO gap and one legacy
//! IRQ from the VM's `GuestResources`, announced with
//! `virtio_mmio.device=4K@<base>:<irq>` on the kernel command line. Queue notifications arrive by ioeventfd and
//! interrupts leave by irqfd, so the vCPU threads never run device code for
//! them; the device thread runs event-manager, one `process()` per device.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use husk_devices::bus::Bus;
use husk_devices::fs::{FsConfig, FsDevice};
use husk_devices::net::{NetConfig, NetDevice};
use husk_devices::pmem::PmemDevice;
use husk_devices::virtio::{
    IrqFdInterrupt, MmioTransport, VirtioDevice, MMIO_LEN, QUEUE_NOTIFY_OFFSET,
};
use husk_devices::vsock::{VsockConfig, VsockDevice};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::boot::cmdline::{CmdlineBuildError, KernelCmdline};
use crate::device_memory::{DeviceMemory, DeviceMemoryError, SlotAccess};
use crate::metrics::DeviceMetrics;
use crate::net::NetSpec;
use crate::pmem::{ImageFs, PmemImage, PmemImageError, PmemSpec};
use crate::resources::{GuestResources, ResourceError};
use crate::seccomp::ThreadFilter;

/// Open guest connections one vsock device allows.
const VSOCK_MAX_CONNECTIONS: usize = 1024;

/// A vsock device as the user asks for it (`--vsock cid=3,uds=PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockSpec {
    pub cid: u64,
    pub uds: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Resource(#[from] ResourceError),
    #[error(transparent)]
    Cmdline(#[from] CmdlineBuildError),
    #[error("cannot create the vsock device: {0}")]
    Vsock(#[from] husk_devices::vsock::VsockError),
    #[error("cannot create the virtio-fs device: {0}")]
    Fs(#[from] husk_devices::fs::FsError),
    #[error(transparent)]
    PmemImage(#[from] PmemImageError),
    #[error("cannot create the pmem device: {0}")]
    Pmem(#[from] husk_devices::pmem::PmemError),
    #[error("cannot create the net device: {0}")]
    Net(#[from] husk_devices::net::NetError),
    #[error(transparent)]
    DeviceMemory(#[from] DeviceMemoryError),
    #[error("cannot create the virtio-mmio transport: {0}")]
    Transport(#[from] husk_devices::virtio::MmioError),
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot register {what} with KVM: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot place the device on the MMIO bus: {0}")]
    Bus(#[from] husk_devices::bus::BusError),
    #[error("cannot start the device event loop: {0}")]
    EventManager(String),
    #[error("cannot start the device thread: {0}")]
    Thread(std::io::Error),
}

/// What adding a device touches: the VM, its memory and MMIO bus, the
/// resources devices take, device memory, and the command line that
/// announces each device to the guest.
pub struct DeviceContext<'a> {
    pub vm: &'a VmFd,
    pub mem: &'a GuestMemoryMmap,
    pub mmio: &'a mut Bus,
    pub res: &'a mut GuestResources,
    pub dev_mem: &'a mut DeviceMemory,
    pub cmdline: &'a mut KernelCmdline,
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Virtio devices being set up for one VM.
#[derive(Default)]
pub struct DeviceManager {
    subscribers: Vec<Subscriber>,
    /// Every device's transport, in the order added (a snapshot's order).
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// Guest-physical base of each pmem image, in the order added.
    pub pmem_bases: Vec<u64>,
    /// What each net device shows its guest, in the order added.
    pub nets: Vec<NetConfig>,
    /// Every device's counters.
    pub metrics: DeviceMetrics,
}

impl DeviceManager {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a vsock device bridged to host Unix sockets at `spec.uds`.
    pub fn add_vsock(
        &mut self,
        ctx: &mut DeviceContext,
        spec: &VsockSpec,
    ) -> Result<(), DeviceError> {
        let config = VsockConfig {
            guest_cid: spec.cid,
            uds_path: spec.uds.clone(),
            max_connections: VSOCK_MAX_CONNECTIONS,
            handshake_timeout: husk_devices::vsock::DEFAULT_HANDSHAKE_TIMEOUT,
        };
        let device = VsockDevice::new(&config)?;
        self.metrics.vsock = Some(device.metrics());
        let device = Arc::new(Mutex::new(device));
        self.add_mmio(ctx, device.clone())?;
        self.subscribers.push(device);
        Ok(())
    }

    /// Adds a virtio-pmem device for the image in `spec`, mapped into device
    /// memory; returns the filesystem the image holds.
    pub fn add_pmem(
        &mut self,
        ctx: &mut DeviceContext,
        spec: &PmemSpec,
        kvm_readonly_mem: bool,
    ) -> Result<ImageFs, DeviceError> {
        let image = PmemImage::open(spec, kvm_readonly_mem)?;
        let size = image.mapping.size() as u64;
        let fs = image.fs;
        let base = ctx
            .dev_mem
            .add_mapping(ctx.vm, ctx.res, image.mapping, image.plan.access)?;
        tracing::info!(
            path = %spec.path.display(),
            base = format_args!("{:#x}", base.0),
            size,
            access = ?image.plan.access,
            ?fs,
            "pmem image mapped"
        );
        let device = PmemDevice::new(image.file, base.0, size)?;
        self.metrics.pmem.push(device.metrics());
        let device = Arc::new(Mutex::new(device));
        self.pmem_bases.push(base.0);
        self.add_mmio(ctx, device.clone())?;
        self.subscribers.push(device);
        Ok(fs)
    }

    /// Adds a virtio-net device behind `spec.tap` (or none).
    pub fn add_net(&mut self, ctx: &mut DeviceContext, spec: &NetSpec) -> Result<(), DeviceError> {
        let config = spec.device_config();
        let device = NetDevice::new(config, spec.tap.clone())?;
        self.metrics.net.push(device.metrics());
        let device = Arc::new(Mutex::new(device));
        self.add_mmio(ctx, device.clone())?;
        self.subscribers.push(device);
        self.nets.push(config);
        Ok(())
    }

    /// Adds a virtio-fs device sharing `config.shared_dir`; its DAX window,
    /// if any, becomes device memory the guest reaches without exits.
    pub fn add_fs(
        &mut self,
        ctx: &mut DeviceContext,
        config: &FsConfig,
    ) -> Result<(), DeviceError> {
        let mut device = FsDevice::new(config)?;
        for region in device.shm_regions() {
            let base = ctx.res.device_memory(region.len)?;
            // SAFETY: the device owns the window's mapping and lives on the
            // device thread, which `Vm::run` stops only after every vCPU.
            unsafe {
                ctx.dev_mem.register(
                    ctx.vm,
                    ctx.res,
                    base,
                    region.host_addr,
                    region.len,
                    SlotAccess::ReadWrite,
                )?
            };
            device.set_shm_base(region.id, base);
            tracing::info!(
                tag = config.tag,
                base = format_args!("{:#x}", base.0),
                len = region.len,
                "virtio-fs DAX window mapped"
            );
        }
        self.metrics.fs.push((config.tag.clone(), device.metrics()));
        let device = Arc::new(Mutex::new(device));
        self.add_mmio(ctx, device.clone())?;
        self.subscribers.push(device);
        Ok(())
    }

    fn add_mmio<D>(
        &mut self,
        ctx: &mut DeviceContext,
        device: Arc<Mutex<D>>,
    ) -> Result<(), DeviceError>
    where
        D: VirtioDevice + 'static,
    {
        let base = ctx.res.mmio_window()?;
        let irq = ctx.res.irq()?;
        debug_assert_eq!(MMIO_LEN, crate::resources::MMIO_WINDOW);
        let interrupt = Arc::new(IrqFdInterrupt::new(
            EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?,
        ));
        ctx.vm
            .register_irqfd(interrupt.irqfd(), irq)
            .map_err(|source| DeviceError::Kvm {
                what: "the device irqfd",
                source,
            })?;
        let transport = MmioTransport::new(ctx.mem.clone(), device, interrupt)?;
        for (queue, evt) in transport.queue_evts().iter().enumerate() {
            ctx.vm
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base.0 + QUEUE_NOTIFY_OFFSET),
                    queue as u32,
                )
                .map_err(|source| DeviceError::Kvm {
                    what: "a queue ioeventfd",
                    source,
                })?;
        }
        let transport = Arc::new(Mutex::new(transport));
        ctx.mmio.insert(transport.clone(), base.0, MMIO_LEN)?;
        self.transports.push(transport);
        ctx.cmdline.add_virtio_mmio(base, irq)?;
        Ok(())
    }

    /// The transports of the devices added so far, in order.
    pub fn transports(&self) -> Vec<Arc<Mutex<MmioTransport>>> {
        self.transports.clone()
    }

    /// Starts the device thread, which confines itself with `filter` (when
    /// seccomp is on) before its first event; `None` when there are no
    /// virtio devices.
    pub fn start(self, filter: Option<ThreadFilter>) -> Result<Option<DeviceThread>, DeviceError> {
        if self.subscribers.is_empty() {
            return Ok(None);
        }
        let mut manager = EventManager::<Subscriber>::new()
            .map_err(|e| DeviceError::EventManager(format!("{e:?}")))?;
        for s in self.subscribers {
            manager.add_subscriber(s);
        }
        let stop_evt = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        let stopped = Arc::new(AtomicBool::new(false));
        let stopper = StopSubscriber {
            evt: stop_evt.try_clone().map_err(DeviceError::EventFd)?,
            stopped: stopped.clone(),
        };
        manager.add_subscriber(Arc::new(Mutex::new(stopper)));
        let handle = std::thread::Builder::new()
            .name("husk-devices".into())
            .spawn(move || {
                crate::seccomp::confine_or_abort(filter.as_ref());
                while !stopped.load(Ordering::Acquire) {
                    if let Err(e) = manager.run() {
                        tracing::error!("device event loop failed: {e:?}");
                        break;
                    }
                }
            })
            .map_err(DeviceError::Thread)?;
        Ok(Some(DeviceThread { stop_evt, handle }))
    }
}

/// The running device thread; stopping it drops every device (and so closes
/// every host connection they hold).
pub struct DeviceThread {
    stop_evt: EventFd,
    handle: JoinHandle<()>,
}

impl DeviceThread {
    pub fn stop(self) {
        if self.stop_evt.write(1).is_ok() {
            let _ = self.handle.join();
        }
    }
}

/// Ends the device loop when its eventfd is written.
struct StopSubscriber {
    evt: EventFd,
    stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopSubscriber {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stopped.store(true, Ordering::Release);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            tracing::error!("cannot register the device-thread stop event: {e:?}");
        }
    }
}

impl std::str::FromStr for VsockSpec {
    type Err = String;

    /// Parses `cid=3,uds=PATH` (cid optional, default 3).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut cid = 3u64;
        let mut uds = None;
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("cid", v)) => {
                    cid = v.parse().map_err(|_| format!("invalid vsock cid {v:?}"))?
                }
                Some(("uds", v)) if !v.is_empty() => uds = Some(PathBuf::from(v)),
                _ => {
                    return Err(format!(
                        "invalid vsock option {part:?}: expected cid=N,uds=PATH"
                    ))
                }
            }
        }
        let uds = uds.ok_or("the vsock device needs uds=PATH")?;
        Ok(Self { cid, uds })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vsock_specs() {
        assert_eq!(
            "cid=7,uds=/tmp/v.sock".parse(),
            Ok(VsockSpec {
                cid: 7,
                uds: "/tmp/v.sock".into()
            })
        );
        assert_eq!(
            "uds=/tmp/v.sock".parse(),
            Ok(VsockSpec {
                cid: 3,
                uds: "/tmp/v.sock".into()
            })
        );
        assert!("cid=x,uds=/a".parse::<VsockSpec>().is_err());
        assert!("cid=3".parse::<VsockSpec>().is_err());
        assert!("path=/a".parse::<VsockSpec>().is_err());
    }
}
