//! `husk bench net`: TCP throughput between the host and a pod, through
//! husk's pod network (veth -> tc redirect -> tap -> virtio-net -> guest),
//! against the same transfer through the veth alone, in one run.
//!
//! The bench plays the CNI: a network namespace with a veth pair to the
//! host (198.19.254.0/30), the pod's end named eth0 with a default route.
//! Baseline: a socket inside that namespace (created on a thread that
//! entered it; a socket stays in its namespace) exchanges the bytes with
//! the host. Then a sandbox boots in this process with that namespace as
//! its pod network, and a busybox container in the guest does the same
//! with `nc`: host to pod (the guest receives) and pod to host (the guest
//! sends `dd` output). Each figure is the host's view from the first byte
//! to the peer's close; the ratio is husk's time over the veth's. vCPU
//! exits per MiB moved come from the VMM's exit counters.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use husk_agent_protocol::agent;
use husk_runtime::config::HuskConfig;
use husk_runtime::network::in_netns;
use husk_runtime::sandbox::spec::{BundleSpec, SandboxNetwork};
use husk_runtime::sandbox::{
    blocking_ctx, ctx, NewContainer, Sandbox, SandboxSettings, GUEST_WORK_TIMEOUT,
};
use nix::sys::signal::{SigSet, Signal};

const HOST_IP: &str = "198.19.254.1";
const POD_IP: &str = "198.19.254.2";
const PORT: u16 = 5001;

#[derive(Args)]
pub struct NetBenchArgs {
    /// husk's config (kernel, image, state_dir, template).
    #[arg(long)]
    config: PathBuf,
    /// A busybox OCI bundle (rootfs/busybox-bundle.sh); its spec is the
    /// containers', with the bench's commands.
    #[arg(long)]
    bundle: PathBuf,
    /// MiB moved each way.
    #[arg(long, default_value_t = 4)]
    mib: u64,
}

/// The bench's pod network namespace and veth; removed on drop.
struct PodNetns {
    name: String,
    host_link: String,
}

impl PodNetns {
    fn create() -> anyhow::Result<Self> {
        let me = Self {
            name: format!("husk-bnet-{}", std::process::id()),
            host_link: format!("hbn{}", std::process::id()),
        };
        let (ns, host) = (me.name.as_str(), me.host_link.as_str());
        let pod_addr = format!("{POD_IP}/30");
        let host_addr = format!("{HOST_IP}/30");
        let steps: [&[&str]; 9] = [
            &["netns", "add", ns],
            &[
                "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
            &["addr", "add", &host_addr, "dev", host],
            &["link", "set", host, "up"],
            &["-n", ns, "addr", "add", &pod_addr, "dev", "eth0"],
            &["-n", ns, "link", "set", "eth0", "up"],
            &["-n", ns, "link", "set", "lo", "up"],
            &["-n", ns, "route", "add", "default", "via", HOST_IP],
            &["-n", ns, "link", "show", "eth0"],
        ];
        for args in steps {
            let out = Command::new("ip")
                .args(args)
                .output()
                .context("running ip")?;
            if !out.status.success() {
                bail!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(me)
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// One transfer's figures; `vm` only for husk's.
struct Transfer {
    secs: f64,
    vm: Option<VmCounters>,
}

/// The VM's counters that a transfer moves (a difference once `since`).
#[derive(Clone, Copy, Default)]
struct VmCounters {
    exits: u64,
    /// Frames the guest's NIC was given and sent, and their bytes.
    frames_in: u64,
    bytes_in: u64,
    frames_out: u64,
    bytes_out: u64,
}

impl VmCounters {
    fn read(sandbox: &Sandbox) -> Option<Self> {
        let vm = sandbox.metrics().vm()?;
        let mut c = Self {
            exits: vm.vcpus.iter().map(|v| v.total()).sum(),
            ..Self::default()
        };
        for n in &vm.devices.net {
            c.frames_in += n.rx_packets.load(Ordering::Relaxed);
            c.bytes_in += n.rx_bytes.load(Ordering::Relaxed);
            c.frames_out += n.tx_packets.load(Ordering::Relaxed);
            c.bytes_out += n.tx_bytes.load(Ordering::Relaxed);
        }
        Some(c)
    }

    fn since(self, before: Option<Self>) -> Option<Self> {
        let b = before?;
        Some(Self {
            exits: self.exits.saturating_sub(b.exits),
            frames_in: self.frames_in.saturating_sub(b.frames_in),
            bytes_in: self.bytes_in.saturating_sub(b.bytes_in),
            frames_out: self.frames_out.saturating_sub(b.frames_out),
            bytes_out: self.bytes_out.saturating_sub(b.bytes_out),
        })
    }

    /// Mean bytes of the frames carrying the data (`into` the guest or out).
    fn mean_frame(&self, into: bool) -> u64 {
        let (frames, bytes) = if into {
            (self.frames_in, self.bytes_in)
        } else {
            (self.frames_out, self.bytes_out)
        };
        bytes.checked_div(frames).unwrap_or(0)
    }
}

fn counters_since(sandbox: &Sandbox, before: Option<VmCounters>) -> Option<VmCounters> {
    VmCounters::read(sandbox)?.since(before)
}

impl Transfer {
    fn mib_per_s(&self, mib: u64) -> f64 {
        mib as f64 / self.secs
    }
}

/// What the bench made and must remove, on success, failure or a stop
/// signal: the sandbox (once booted) and the pod network namespace.
#[derive(Default)]
struct Teardown {
    made: Mutex<(Option<Arc<Sandbox>>, Option<PodNetns>)>,
}

impl Teardown {
    /// Removes whatever is still there; the lock is held throughout, so a
    /// signal arriving meanwhile finds nothing left to do.
    fn run(&self) -> anyhow::Result<()> {
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        let result = match made.0.take() {
            Some(sandbox) => sandbox.shutdown().context("stopping the sandbox"),
            None => Ok(()),
        };
        made.1.take();
        result
    }
}

/// SIGINT, SIGTERM and SIGHUP are taken by one thread, which tears down
/// and exits: the transfers block in system calls that a stopped VM
/// would leave hanging. Call before any other thread starts.
fn teardown_on_signals(teardown: Arc<Teardown>) -> anyhow::Result<()> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()
        .context("blocking SIGINT/SIGTERM/SIGHUP")?;
    std::thread::Builder::new()
        .name("bench-signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                eprintln!("bench net: {sig}: stopping the sandbox and removing its network");
                if let Err(e) = teardown.run() {
                    eprintln!("bench net: {e:#}");
                }
                std::process::exit(130);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

pub fn run(args: NetBenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.mib > 0, "--mib must be at least 1");
    let config = HuskConfig::load(Some(&args.config), None)?;
    let bundle = std::fs::canonicalize(&args.bundle)
        .with_context(|| format!("the bundle {}", args.bundle.display()))?;
    let teardown = Arc::new(Teardown::default());
    teardown_on_signals(teardown.clone())?;
    let result = measure(&args, &config, &bundle, &teardown);
    let cleaned = teardown.run();
    let (veth_in, veth_out, husk_in, husk_out) = result?;
    cleaned?;

    println!("husk bench net, on {}", super::host_description());
    println!(
        "  {} MiB each way, TCP, one connection, MiB/s (host's view)",
        args.mib
    );
    println!(
        "  {:<14} {:>10} {:>10} {:>12} {:>16} {:>18}",
        "direction", "veth", "husk", "husk/veth", "vCPU exits/MiB", "mean data frame B"
    );
    for (name, into, veth, husk) in [
        ("host -> pod", true, &veth_in, &husk_in),
        ("pod -> host", false, &veth_out, &husk_out),
    ] {
        let (exits, frame) = husk.vm.map_or(("n/a".into(), "n/a".into()), |c| {
            (
                format!("{:.0}", c.exits as f64 / args.mib as f64),
                c.mean_frame(into).to_string(),
            )
        });
        println!(
            "  {name:<14} {:>10.2} {:>10.3} {:>12.2e} {exits:>16} {frame:>18}",
            veth.mib_per_s(args.mib),
            husk.mib_per_s(args.mib),
            husk.mib_per_s(args.mib) / veth.mib_per_s(args.mib),
        );
    }
    if matches!(husk_vmm::HostKvm::detect(), husk_vmm::HostKvm::SoftwarePvm) {
        println!("  (software KVM: the guest kernel's TCP stack runs emulated, which bounds husk's figures here)");
    }
    Ok(ExitCode::SUCCESS)
}

/// The four transfers: through the veth alone, then through husk.
fn measure(
    args: &NetBenchArgs,
    config: &HuskConfig,
    bundle: &Path,
    teardown: &Teardown,
) -> anyhow::Result<(Transfer, Transfer, Transfer, Transfer)> {
    let bytes = args.mib << 20;
    let netns = PodNetns::create().context("making the bench's pod network")?;
    let path = netns.path();
    teardown.made.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(netns);
    eprintln!(
        "bench net: baseline through the veth ({} MiB each way)",
        args.mib
    );
    let veth_in = veth_host_to_pod(&path, bytes)?;
    let veth_out = veth_pod_to_host(&path, bytes)?;

    let spec = BundleSpec::load(bundle)?;
    let mut settings = SandboxSettings::for_bundle("bench-net", config, &spec)?;
    settings.network = SandboxNetwork::Pod(path);
    settings.cgroups_path = None;
    eprintln!("bench net: starting the sandbox");
    let sandbox = Arc::new(Sandbox::boot(&settings)?);
    teardown.made.lock().unwrap_or_else(|e| e.into_inner()).0 = Some(sandbox.clone());
    let (husk_in, husk_out) = husk_transfers(&sandbox, bundle, bytes)?;
    Ok((veth_in, veth_out, husk_in, husk_out))
}

/// Writes `bytes` zeros to `s`, closes the sending side and waits for the
/// peer to close; the time from the start.
fn send_all(mut s: TcpStream, bytes: u64) -> anyhow::Result<f64> {
    let t = Instant::now();
    let buf = vec![0u8; 1 << 16];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n]).context("sending")?;
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write)
        .context("closing the sending side")?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .context("waiting for the receiver to close")?;
    Ok(t.elapsed().as_secs_f64())
}

/// Reads until EOF; the count and the time from the first byte.
fn receive_all(mut s: TcpStream) -> anyhow::Result<(u64, f64)> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    let mut start = None;
    loop {
        let n = s.read(&mut buf).context("receiving")?;
        if n == 0 {
            break;
        }
        start.get_or_insert_with(Instant::now);
        total += n as u64;
    }
    Ok((total, start.map_or(0.0, |t| t.elapsed().as_secs_f64())))
}

fn veth_host_to_pod(netns: &Path, bytes: u64) -> anyhow::Result<Transfer> {
    let listener = in_netns(netns, || TcpListener::bind((POD_IP, PORT)))??;
    let receiver = std::thread::spawn(move || -> anyhow::Result<u64> {
        let (s, _) = listener.accept()?;
        Ok(receive_all(s)?.0)
    });
    let s = TcpStream::connect((POD_IP, PORT)).context("connecting into the pod netns")?;
    let secs = send_all(s, bytes)?;
    let got = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    anyhow::ensure!(
        got == bytes,
        "the pod netns received {got} of {bytes} bytes"
    );
    Ok(Transfer { secs, vm: None })
}

fn veth_pod_to_host(netns: &Path, bytes: u64) -> anyhow::Result<Transfer> {
    let listener = TcpListener::bind((HOST_IP, PORT)).context("listening on the host")?;
    let stream = in_netns(netns, || TcpStream::connect((HOST_IP, PORT)))??;
    let sender = std::thread::spawn(move || send_all(stream, bytes));
    let (s, _) = listener.accept()?;
    let (got, secs) = receive_all(s)?;
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    anyhow::ensure!(got == bytes, "the host received {got} of {bytes} bytes");
    Ok(Transfer { secs, vm: None })
}

/// Host to pod, then pod to host, each with a container in the guest.
fn husk_transfers(
    sandbox: &Sandbox,
    bundle: &Path,
    bytes: u64,
) -> anyhow::Result<(Transfer, Transfer)> {
    let mib = bytes >> 20;
    eprintln!("bench net: host -> pod through husk");
    let rx = start_container(
        sandbox,
        bundle,
        "net-rx",
        &format!("nc -l -p {PORT} > /dev/null"),
    )?;
    let s = connect_retrying(POD_IP, PORT, Duration::from_secs(300))?;
    let before = VmCounters::read(sandbox);
    let secs = send_all(s, bytes)?;
    let into = Transfer {
        secs,
        vm: counters_since(sandbox, before),
    };
    wait_container(sandbox, &rx)?;

    eprintln!("bench net: pod -> host through husk");
    let listener = TcpListener::bind((HOST_IP, PORT)).context("listening on the host")?;
    let script = format!(
        "dd if=/dev/zero bs=65536 count={} 2>/dev/null | nc {HOST_IP} {PORT}",
        mib * 16
    );
    let tx = start_container(sandbox, bundle, "net-tx", &script)?;
    let (s, _) = listener.accept()?;
    let before = VmCounters::read(sandbox);
    let (got, secs) = receive_all(s)?;
    let out = Transfer {
        secs,
        vm: counters_since(sandbox, before),
    };
    wait_container(sandbox, &tx)?;
    anyhow::ensure!(
        got == bytes,
        "the host received {got} of {bytes} bytes from the guest"
    );
    Ok((into, out))
}

/// A container of the bench's bundle running `sh -c script`, started.
fn start_container(
    sandbox: &Sandbox,
    bundle: &Path,
    id: &str,
    script: &str,
) -> anyhow::Result<String> {
    let dir = bundle.join(format!("bench-{id}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)
            .context("the bundle's config.json")?;
    spec["process"]["args"] = serde_json::json!(["sh", "-c", script]);
    spec["root"]["path"] = serde_json::json!(bundle.join("rootfs"));
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&spec)?)?;
    sandbox.create_container(&NewContainer {
        id,
        bundle: &dir,
        rootfs: &[],
        terminal: false,
    })?;
    let req = agent::StartContainerRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    sandbox
        .agent()
        .start_container(ctx(GUEST_WORK_TIMEOUT), &req)
        .with_context(|| format!("starting {id}"))?;
    Ok(id.to_string())
}

fn wait_container(sandbox: &Sandbox, id: &str) -> anyhow::Result<()> {
    let req = agent::WaitProcessRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    let status = sandbox
        .agent()
        .wait_process(blocking_ctx(), &req)?
        .exit_status;
    sandbox.remove_container(id, None)?;
    anyhow::ensure!(status == 0, "container {id} exited with {status}");
    Ok(())
}

/// The guest's listener comes up after the container starts.
fn connect_retrying(ip: &str, port: u16, within: Duration) -> anyhow::Result<TcpStream> {
    let deadline = Instant::now() + within;
    loop {
        match TcpStream::connect((ip, port)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => bail!("connecting to {ip}:{port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
