//! Booting a sandbox's VM and waiting for its agent.
//!
//! The VM gets the vsock device (bridged to `<dir>/vsock.sock`), one
//! virtio-fs device serving `<dir>/shared`, and the guest image: by default
//! the erofs image on read-only virtio-pmem with DAX, so the agent starts
//! without an initramfs to unpack. Before the VM starts, the runtime listens
//! on the agent's ready port; the agent connects there once it serves, so
//! the wait is for that one event (or the VM's end, or the timeout), not a
//! loop of CONNECT attempts. Then CreateSandbox mounts the shared directory.
//! The sandbox's metrics endpoint (`<dir>/metrics.sock`) serves from the
//! moment the directory exists, so the start phases can be watched as they
//! are reached; a socket that cannot be bound is logged, not fatal.

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use husk_agent_protocol::agent;
use husk_vmm::{ConsoleTarget, PmemSpec, VmConfig, VmHandle};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::dir::{SandboxDir, SHARED_FS_TAG};
use super::host::{release_recorded, HostResources};
use super::size::{vm_size, VmSize};
use super::spec::{BundleSpec, SandboxNetwork};
use super::{ctx, Sandbox, SandboxError};
use crate::agent::Agent;
use crate::agent_client::{connect_agent, AGENT_VSOCK_PORT};
use crate::config::{GuestBoot, HuskConfig};
use crate::metrics::{MetricsServer, Phase, SandboxMetrics};

/// The guest's CID; every sandbox has its own vsock device, so all can use 3.
const GUEST_CID: u64 = 3;
/// Kernel parameters of a sandbox guest: its console is a log, so `quiet`
/// keeps the kernel's boot chatter (slow on an emulated serial port) out.
/// kvm-clock as the clocksource: a VM restored from a template keeps
/// kvmclock continuous (KVM_SET_CLOCK), while its TSC jumps by the
/// template's age on hosts that cannot set it.
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet clocksource=kvm-clock";

pub struct SandboxSettings {
    pub id: String,
    pub config: HuskConfig,
    pub size: VmSize,
    pub hostname: Option<String>,
    /// How long the agent may take to be ready.
    pub boot_timeout: Duration,
    /// The pod's network namespace, or none.
    pub network: SandboxNetwork,
    /// The host cgroup the husk process joins (`linux.cgroupsPath`).
    pub cgroups_path: Option<String>,
}

impl SandboxSettings {
    /// The settings a bundle's spec asks for: its size (annotations and
    /// memory limit, within the config's maximums), hostname, network and
    /// host cgroup.
    pub fn for_bundle(
        id: &str,
        config: &HuskConfig,
        spec: &BundleSpec,
    ) -> Result<Self, SandboxError> {
        Ok(Self {
            id: id.to_string(),
            config: config.clone(),
            size: vm_size(config, &spec.annotations(), spec.memory_limit())?,
            hostname: spec.spec.hostname().clone(),
            boot_timeout: Duration::from_secs(config.runtime.boot_timeout_secs),
            network: spec.network()?,
            cgroups_path: spec.cgroups_path(),
        })
    }
}

/// When each start-up phase was reached.
#[derive(Debug, Clone, Copy)]
pub struct BootTimings {
    pub started: Instant,
    pub agent_ready: Instant,
}

impl Sandbox {
    /// Boots the sandbox's VM (from a template when the config has one for
    /// this size) and returns once its agent serves and the sandbox exists
    /// in the guest. On failure nothing is left behind.
    pub fn boot(s: &SandboxSettings) -> Result<Sandbox, SandboxError> {
        let started = Instant::now();
        let metrics = Arc::new(SandboxMetrics::new(guest_image(&s.config)));
        s.config.check_guest_files()?;
        let template = crate::template::resolve(&s.config, s.size, s.boot_timeout)?;
        let dir = SandboxDir::new(&s.config.runtime.state_dir, &s.id);
        // What a crashed runtime left for this id goes first.
        release_recorded(&dir);
        dir.remove()?;
        dir.create()?;
        let observed = Observed {
            server: serve_metrics(&s.id, &dir, &metrics),
            metrics,
        };
        let result = HostResources::acquire(&dir, s.cgroups_path.as_deref(), &s.network)
            .map_err(|e| SandboxError::Host {
                id: s.id.clone(),
                source: e,
            })
            .and_then(|host| boot_in(s, &dir, started, template.as_deref(), host, observed));
        if result.is_err() {
            if let Err(e) = dir.remove() {
                tracing::warn!(sandbox = %s.id, "removing the directory of a failed boot: {e}");
            }
        }
        result
    }
}

/// The sandbox's metrics and their endpoint.
struct Observed {
    metrics: Arc<SandboxMetrics>,
    server: Option<MetricsServer>,
}

/// Serves `metrics` on `<dir>/metrics.sock`; a failure is logged.
fn serve_metrics(
    id: &str,
    dir: &SandboxDir,
    metrics: &Arc<SandboxMetrics>,
) -> Option<MetricsServer> {
    let m = metrics.clone();
    match MetricsServer::start(&dir.metrics_socket(), Arc::new(move || m.render())) {
        Ok(server) => Some(server),
        Err(e) => {
            tracing::warn!(sandbox = %id, "no metrics endpoint: {e}");
            None
        }
    }
}

/// The guest image's path as smaps shows it, when the guest boots from one.
fn guest_image(config: &HuskConfig) -> Option<PathBuf> {
    let image = &config.guest.image;
    (config.guest.boot == GuestBoot::Image)
        .then(|| std::fs::canonicalize(image).unwrap_or_else(|_| image.clone()))
}

/// Boots the VM with `host`'s resources; they are released if it fails.
fn boot_in(
    s: &SandboxSettings,
    dir: &SandboxDir,
    started: Instant,
    template: Option<&Path>,
    mut host: HostResources,
    observed: Observed,
) -> Result<Sandbox, SandboxError> {
    let result = boot_with(s, dir, started, template, &host, &observed.metrics);
    match result {
        Ok((vm, agent, timings)) => Ok(Sandbox {
            id: s.id.clone(),
            dir: dir.clone(),
            vm: Mutex::new(Some(vm)),
            agent,
            timings,
            host: Mutex::new(host),
            metrics: observed.metrics,
            metrics_server: Mutex::new(observed.server),
        }),
        Err(e) => {
            drop(observed.server);
            host.release();
            Err(e)
        }
    }
}

fn boot_with(
    s: &SandboxSettings,
    dir: &SandboxDir,
    started: Instant,
    template: Option<&Path>,
    host: &HostResources,
    metrics: &SandboxMetrics,
) -> Result<(VmHandle, Agent, BootTimings), SandboxError> {
    let mut config = guest_vm_config(&s.config, s.size, dir, template);
    config.net = vec![host.nic()];
    // The boot's waits and calls share its one budget: on a loaded host
    // (software KVM) a guest may take minutes to answer even a trivial call.
    let budget = BootBudget::new(started, s.boot_timeout);
    let vm = match template {
        None => {
            let ready = bind_ready(&s.id, dir)?;
            let vm = start_vm(&s.id, &config)?;
            metrics.set_vm(vm.metrics());
            wait_ready(&s.id, &budget, dir, &ready, &vm)?;
            vm
        }
        Some(_) => {
            let vm = start_vm(&s.id, &config)?;
            metrics.set_vm(vm.metrics());
            vm
        }
    };
    let agent_ready = Instant::now();
    let client =
        connect_agent(&dir.vsock_socket(), AGENT_VSOCK_PORT, budget.left()).map_err(|source| {
            SandboxError::Agent {
                id: s.id.clone(),
                source,
            }
        })?;
    let agent = Agent::new(client, metrics.agent.clone());
    // A clone's connection may be one the template left parked, ready on
    // the host before the guest runs: its agent is ready once it answered.
    if template.is_some() {
        make_clone_its_own(&s.id, &agent, &budget)?;
    }
    metrics.mark(Phase::AgentReady);
    let req = agent::CreateSandboxRequest {
        sandbox_id: s.id.clone(),
        hostname: s.hostname.clone().unwrap_or_default(),
        shared_fs_tag: SHARED_FS_TAG.into(),
        ..Default::default()
    };
    agent
        .create_sandbox(ctx(budget.left()), &req)
        .map_err(|e| SandboxError::rpc(format!("sandbox {}: CreateSandbox", s.id), e))?;
    if let Some(net) = host.network() {
        configure_guest_network(&s.id, &agent, net, &budget)?;
    }
    metrics.mark(Phase::SandboxReady);
    tracing::info!(
        sandbox = %s.id,
        from_template = template.is_some(),
        ready_ms = agent_ready.duration_since(started).as_millis() as u64,
        "agent ready"
    );
    let timings = BootTimings {
        started,
        agent_ready,
    };
    Ok((vm, agent, timings))
}

/// The agent gives the guest's NIC the CNI interface's name, MAC, MTU and
/// addresses, then its routes.
fn configure_guest_network(
    id: &str,
    agent: &Agent,
    net: &crate::network::PodNetwork,
    budget: &BootBudget,
) -> Result<(), SandboxError> {
    agent
        .update_interface(ctx(budget.left()), &net.guest.update_interface_request())
        .map_err(|e| SandboxError::rpc(format!("sandbox {id}: UpdateInterface"), e))?;
    agent
        .update_routes(ctx(budget.left()), &net.guest.update_routes_request())
        .map_err(|e| SandboxError::rpc(format!("sandbox {id}: UpdateRoutes"), e))?;
    tracing::info!(
        sandbox = %id,
        iface = %net.guest.iface_name,
        mac = %net.guest.mac_string(),
        addresses = net.guest.addresses.len(),
        routes = net.guest.routes.len(),
        "guest network configured"
    );
    Ok(())
}

fn start_vm(id: &str, config: &VmConfig) -> Result<VmHandle, SandboxError> {
    let vm = VmHandle::start(config).map_err(|source| SandboxError::Vm {
        id: id.to_string(),
        source,
    })?;
    tracing::info!(
        sandbox = %id,
        vcpus = config.cpus,
        mem_mib = config.mem_bytes >> 20,
        from_template = config.template.is_some(),
        "VM started"
    );
    Ok(vm)
}

/// Cold-boots a sandbox VM (`config`, in `dir`) and waits for the agent's
/// ready call.
pub fn start_and_wait_ready(
    id: &str,
    config: &VmConfig,
    dir: &SandboxDir,
    timeout: Duration,
) -> Result<VmHandle, SandboxError> {
    let ready = bind_ready(id, dir)?;
    let vm = start_vm(id, config)?;
    wait_ready(
        id,
        &BootBudget::new(Instant::now(), timeout),
        dir,
        &ready,
        &vm,
    )?;
    Ok(vm)
}

/// When the boot (`boot_timeout_secs` from the launch) must be over.
struct BootBudget {
    deadline: Instant,
    total: Duration,
}

impl BootBudget {
    fn new(started: Instant, total: Duration) -> Self {
        Self {
            deadline: started + total,
            total,
        }
    }

    /// What a call may still take; a call made past the deadline gets one
    /// second, so its error (a timeout) names the call.
    fn left(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1))
    }
}

/// Listens where the agent's ready call arrives (before the VM starts).
fn bind_ready(id: &str, dir: &SandboxDir) -> Result<UnixListener, SandboxError> {
    UnixListener::bind(dir.ready_socket()).map_err(|source| SandboxError::Ready {
        id: id.to_string(),
        source,
    })
}

/// A clone of a template gets the host's wall clock and host entropy.
fn make_clone_its_own(id: &str, agent: &Agent, budget: &BootBudget) -> Result<(), SandboxError> {
    let mut entropy = vec![0u8; 64];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut entropy))
        .map_err(|source| SandboxError::Ready {
            id: id.to_string(),
            source,
        })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let req = agent::RestoredRequest {
        wall_clock_ns: now.as_nanos() as i64,
        entropy,
        ..Default::default()
    };
    agent
        .restored(ctx(budget.left()), &req)
        .map_err(|e| SandboxError::rpc(format!("sandbox {id}: Restored"), e))?;
    Ok(())
}

/// The VM of a sandbox: the guest image, the vsock device, the one
/// virtio-fs device for the shared directory, a NIC with nothing behind
/// it; from `template` if given.
pub fn guest_vm_config(
    config: &HuskConfig,
    size: VmSize,
    dir: &SandboxDir,
    template: Option<&Path>,
) -> VmConfig {
    let g = &config.guest;
    let (initrd, pmem) = match g.boot {
        GuestBoot::Image => (
            None,
            vec![PmemSpec {
                path: g.image.clone(),
                read_only: true,
            }],
        ),
        GuestBoot::Initrd => (Some(g.initrd.clone()), Vec::new()),
    };
    VmConfig {
        kernel: g.kernel.clone(),
        initrd: if template.is_some() { None } else { initrd },
        mem_bytes: size.mem_bytes,
        cpus: size.vcpus,
        cmdline: Some(CMDLINE.into()),
        console: ConsoleTarget::File(dir.console()),
        compat: g.compat,
        on_first_entry: None,
        vsock: Some(husk_vmm::VsockSpec {
            cid: GUEST_CID,
            uds: dir.vsock_socket(),
        }),
        pmem,
        fs: vec![husk_vmm::FsConfig {
            size_limit: g.shared_fs_size_limit,
            ..husk_vmm::FsConfig::new(SHARED_FS_TAG, &dir.shared())
        }],
        // One card, as every sandbox has (`HostResources::nic`).
        net: vec![HostResources::unconnected_nic()],
        template: template.map(Path::to_path_buf),
        seccomp: config.runtime.seccomp,
    }
}

/// What a template of a sandbox VM depends on beyond its kernel, image and
/// size: the command line and the devices (kinds, order, the NIC's MTU), so
/// a husk whose sandbox VMs differ never restores another's template.
pub fn sandbox_vm_signature(config: &HuskConfig, size: VmSize) -> String {
    let c = guest_vm_config(config, size, &SandboxDir::new(Path::new("/"), "-"), None);
    let fs: Vec<&str> = c.fs.iter().map(|f| f.tag.as_str()).collect();
    let net: Vec<u16> = c.net.iter().map(|n| n.mtu).collect();
    format!(
        "cmdline={:?} vsock={} fs={fs:?} pmem={} net={net:?}",
        c.cmdline,
        c.vsock.is_some(),
        c.pmem.len()
    )
}

/// Waits for the agent's `READY` line, the VM's end or the timeout.
fn wait_ready(
    id: &str,
    budget: &BootBudget,
    dir: &SandboxDir,
    ready: &UnixListener,
    vm: &VmHandle,
) -> Result<(), SandboxError> {
    let io = |source| SandboxError::Ready {
        id: id.to_string(),
        source,
    };
    loop {
        // Wake up now and then to notice the VM ending before the agent.
        let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) | Err(nix::Error::EINTR) => {}
            Ok(_) => break,
            Err(e) => return Err(io(e.into())),
        }
        if vm.is_finished() {
            return Err(SandboxError::GuestEnded {
                id: id.to_string(),
                how: super::ended::end_reason(&console_tail(dir, 40)),
                console: console_tail(dir, 20),
            });
        }
        if Instant::now() > budget.deadline {
            return Err(SandboxError::AgentTimeout {
                id: id.to_string(),
                secs: budget.total.as_secs(),
                console: console_tail(dir, 20),
            });
        }
    }
    let (stream, _) = ready.accept().map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let mut line = String::new();
    // At most 256 bytes: the guest decides what comes.
    BufReader::new(std::io::Read::take(stream, 256))
        .read_line(&mut line)
        .map_err(io)?;
    tracing::debug!(sandbox = %id, line = line.trim(), "agent ready call");
    Ok(())
}

/// The last `n` lines of the sandbox's console log.
pub fn console_tail(dir: &SandboxDir, n: usize) -> String {
    let text = std::fs::read_to_string(dir.console()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
