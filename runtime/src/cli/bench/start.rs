//! `husk bench start`: what a container start costs through containerd.
//!
//! Against a running containerd (`--address`, with husk's shim on its PATH
//! and the image imported; `ci/bench-start.sh` sets one up): `ctr run --rm
//! IMAGE ID /bin/true` timed with husk and with runc, alternating, in the
//! same run (p50/p90 and the ratio); then one idle husk pod (`sleep`) and
//! the PSS of its husk process from smaps, split into guest memory (the
//! guest-RAM mapping) and husk's own (shim + VMM + devices).

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use super::procfs::{mappings_of_size, process_memory, thread_count};

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
    /// The husk pod's guest memory, as the husk config gives it (to find
    /// the guest-RAM mapping).
    #[arg(long, default_value = "256M", value_parser = husk_runtime::size::parse_mem_size)]
    guest_mem: u64,
}

const HUSK: &str = "io.containerd.husk.v2";
const RUNC: &str = "io.containerd.runc.v2";

pub fn run(args: StartBenchArgs) -> anyhow::Result<ExitCode> {
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
    idle_pod_memory(&args)?;
    Ok(ExitCode::SUCCESS)
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
fn idle_pod_memory(args: &StartBenchArgs) -> anyhow::Result<()> {
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
    let result = measure_pod(args, id);
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

fn measure_pod(args: &StartBenchArgs, id: &str) -> anyhow::Result<()> {
    let pid = shim_pid(id).context("finding the idle pod's husk process")?;
    let total = process_memory(pid)?;
    let guest = mappings_of_size(pid, args.guest_mem >> 10)?;
    let own = total.pss_kib.saturating_sub(guest.pss_kib);
    println!(
        "  idle pod (1 vCPU, {} MiB guest), husk process {pid}:",
        args.guest_mem >> 20
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
