//! `husk bench start`: what starting a sandbox costs, cold and from a
//! template, and what a container start costs through containerd.
//!
//! With the husk config the runtime uses (`--config`): cold boot to
//! agent-ready against restore to agent-ready, and N idle VMs of each kind
//! with their PSS per VM split into guest memory and husk's own (`clones`).
//! Against a running containerd (`--address`, with husk's shim on its PATH
//! and the image imported; `ci/bench-start.sh` sets one up): `ctr run --rm
//! IMAGE ID /bin/true` with husk and with runc, alternating, in the same
//! run (p50/p90 and the ratio), after one untimed husk run; then one idle
//! husk pod (`sleep`) and its husk process's PSS, split the same way.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use super::clones;
use husk_runtime::procfs::{memory_split, thread_count, MemFigures};

#[derive(Args)]
pub struct StartBenchArgs {
    /// containerd's socket.
    #[arg(long)]
    address: PathBuf,
    #[arg(long, default_value = "docker.io/husk/busybox:latest")]
    image: String,
    /// Runs per runtime.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The husk config containerd's shims use.
    #[arg(long)]
    config: PathBuf,
    /// Idle VMs of each kind (cold, from the template) for the memory figures.
    #[arg(long, default_value_t = 10)]
    vms: usize,
}

const HUSK: &str = "io.containerd.husk.v2";
const RUNC: &str = "io.containerd.runc.v2";

pub fn run(args: StartBenchArgs) -> anyhow::Result<ExitCode> {
    let config = husk_runtime::config::HuskConfig::load(Some(&args.config), None)?;
    println!("husk bench start, on {}", super::host_description());
    vm_figures(&args, &config)?;
    eprintln!("bench start: one untimed husk run (the template is warm now)");
    time_true(&args, HUSK, "bench-warm")?;
    let mut husk = Vec::new();
    let mut runc = Vec::new();
    for i in 0..args.runs {
        eprintln!("bench start: run {}/{}", i + 1, args.runs);
        runc.push(time_true(&args, RUNC, &format!("bench-runc-{i}"))?);
        husk.push(time_true(&args, HUSK, &format!("bench-husk-{i}"))?);
    }
    let (hp50, hp90) = (percentile(&husk, 50), percentile(&husk, 90));
    let (rp50, rp90) = (percentile(&runc, 50), percentile(&runc, 90));
    println!(
        "husk bench start: `ctr run --rm IMAGE ID /bin/true`, {} runs each",
        args.runs
    );
    println!("  host: {}", super::host_description());
    println!("  {:<6} {:>10} {:>10}", "", "p50 s", "p90 s");
    println!("  {:<6} {:>10.3} {:>10.3}", "husk", hp50, hp90);
    println!("  {:<6} {:>10.3} {:>10.3}", "runc", rp50, rp90);
    println!(
        "  husk / runc: p50 {:.1}x, p90 {:.1}x",
        hp50 / rp50,
        hp90 / rp90
    );
    idle_pod_memory(&args, config.guest.memory)?;
    Ok(ExitCode::SUCCESS)
}

/// Cold boot vs restore to agent-ready, then N idle VMs of each kind. The
/// VMs' state directory goes when the bench ends, however it ends.
fn vm_figures(
    args: &StartBenchArgs,
    config: &husk_runtime::config::HuskConfig,
) -> anyhow::Result<()> {
    let state = std::env::temp_dir().join(format!("husk-bench-vms-{}", std::process::id()));
    // The VMs are the inner function's, so they are gone when it returns.
    let figures = vm_figures_in(args, config, &state);
    let _ = std::fs::remove_dir_all(&state);
    figures
}

fn vm_figures_in(
    args: &StartBenchArgs,
    config: &husk_runtime::config::HuskConfig,
    state: &Path,
) -> anyhow::Result<()> {
    eprintln!("bench start: the template (made now if missing: one cold boot)");
    let template = clones::template_of(config)?;
    let timeout = Duration::from_secs(config.runtime.boot_timeout_secs);
    let mut cold_vms = Vec::new();
    let mut cold_secs = Vec::new();
    for i in 0..args.vms {
        eprintln!("bench start: cold-booting VM {}/{}", i + 1, args.vms);
        let (vm, took) = clones::cold(&args.config, state, &format!("cold{i}"), timeout)?;
        cold_secs.push(took.as_secs_f64());
        cold_vms.push(vm);
    }
    let mut clone_vms = Vec::new();
    let mut restore_secs = Vec::new();
    for i in 0..args.vms {
        let (vm, took) = clones::restored(&args.config, state, &format!("clone{i}"), &template)?;
        restore_secs.push(took.as_secs_f64());
        clone_vms.push(vm);
    }
    std::thread::sleep(Duration::from_secs(10));
    let g = config.guest.memory;
    let (cold_total, cold_guest) = clones::memory(&cold_vms, g)?;
    let (clone_total, clone_guest) = clones::memory(&clone_vms, g)?;
    drop(cold_vms);
    drop(clone_vms);
    let (c50, r50) = (percentile(&cold_secs, 50), percentile(&restore_secs, 50));
    println!(
        "sandbox VM start to agent-ready ({} each, 1 vCPU, {} MiB)",
        args.vms,
        g >> 20
    );
    println!(
        "  cold boot     p50 {c50:>9.3} s   p90 {:>9.3} s",
        percentile(&cold_secs, 90)
    );
    println!(
        "  from template p50 {r50:>9.3} s   p90 {:>9.3} s",
        percentile(&restore_secs, 90)
    );
    println!("  restore / cold (p50): 1/{:.0}", c50 / r50.max(1e-9));
    let n = args.vms as u64;
    let row = |name: &str, total: MemFigures, guest: MemFigures| {
        let own = total.pss_kib.saturating_sub(guest.pss_kib);
        println!(
            "  {name:<14} {:>9} {:>9} {:>9}",
            total.pss_kib / n,
            guest.pss_kib / n,
            own / n
        );
    };
    println!(
        "idle VMs, {} of each running at once, PSS per VM in KiB",
        args.vms
    );
    println!("  {:<14} {:>9} {:>9} {:>9}", "", "total", "guest", "husk");
    row("cold-booted", cold_total, cold_guest);
    row("from template", clone_total, clone_guest);
    println!(
        "  from template / cold-booted (PSS): {:.2}",
        clone_total.pss_kib as f64 / cold_total.pss_kib.max(1) as f64
    );
    Ok(())
}

fn ctr(args: &StartBenchArgs) -> Command {
    let mut c = Command::new("ctr");
    c.arg("--address").arg(&args.address);
    c
}

fn time_true(args: &StartBenchArgs, runtime: &str, id: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = ctr(args)
        .args([
            "run",
            "--rm",
            "--runtime",
            runtime,
            &args.image,
            id,
            "/bin/true",
        ])
        .stdin(Stdio::null())
        .output()
        .context("running ctr")?;
    if !out.status.success() {
        bail!(
            "ctr run with {runtime} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(t.elapsed().as_secs_f64())
}

fn percentile(v: &[f64], p: usize) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() * p).div_ceil(100))
        .saturating_sub(1)
        .min(s.len().saturating_sub(1));
    s.get(i).copied().unwrap_or(0.0)
}

/// One idle pod: its husk process's PSS, guest memory and husk's own.
fn idle_pod_memory(args: &StartBenchArgs, guest_mem: u64) -> anyhow::Result<()> {
    let id = "bench-idle";
    let out = ctr(args)
        .args([
            "run",
            "-d",
            "--runtime",
            HUSK,
            &args.image,
            id,
            "sleep",
            "100000",
        ])
        .output()
        .context("starting the idle pod")?;
    if !out.status.success() {
        bail!(
            "starting the idle pod: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Let the guest settle after its boot before reading memory.
    std::thread::sleep(Duration::from_secs(10));
    let result = measure_pod(guest_mem, id);
    let _ = ctr(args)
        .args(["task", "kill", "-s", "SIGKILL", id])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let ok = ctr(args)
            .args(["task", "delete", id])
            .stderr(Stdio::null())
            .status();
        if ok.is_ok_and(|s| s.success()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = ctr(args).args(["containers", "rm", id]).status();
    result
}

fn measure_pod(guest_mem: u64, id: &str) -> anyhow::Result<()> {
    let pid = shim_pid(id).context("finding the idle pod's husk process")?;
    let split = memory_split(pid, guest_mem >> 10, None)?;
    let (total, guest) = (split.total, split.guest_ram);
    let own = total.pss_kib.saturating_sub(guest.pss_kib);
    println!(
        "idle pod through containerd (1 vCPU, {} MiB guest), husk process {pid}:",
        guest_mem >> 20
    );
    println!("    PSS total           {:>8} KiB", total.pss_kib);
    println!("    guest memory (PSS)  {:>8} KiB", guest.pss_kib);
    println!(
        "    husk's own (PSS)    {:>8} KiB  (shim + VMM + devices; target <= 4096 KiB)",
        own
    );
    println!("    threads             {:>8}", thread_count(pid)?);
    Ok(())
}

/// The husk shim serving `id` (its `-id` argument).
fn shim_pid(id: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_shim = args.first()?.ends_with(b"containerd-shim-husk-v2");
        let serves = args
            .windows(2)
            .any(|w| w[0] == b"-id" && w[1] == id.as_bytes())
            && args.iter().any(|a| *a == b"serve");
        (is_shim && serves).then_some(pid)
    })
}
