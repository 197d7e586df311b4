//! `husk bench boot`: one idle guest, measured from outside.
//!
//! Starts `husk vm` as a child (so the figures are those of a real husk
//! process), waits for the guest's idle marker on the console, then reads the
//! child's memory and threads from /proc. Start latency is measured from just
//! before the spawn to vCPU 0's first KVM_RUN, both on CLOCK_MONOTONIC.
//! Baselines from the same run: spawning and reaping `/bin/true`, and the
//! guest's configured memory size.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::guest_process::GuestProcess;
use husk_runtime::procfs::{memory_split, process_memory, thread_count};
use husk_runtime::size::parse_mem_size;
use husk_vmm::metrics::monotonic_ns;

/// What the guest self-test prints once it is up and idle.
pub const IDLE_MARKER: &str = "HUSK-IDLE";
/// Kernel command line for an idle benchmark guest; `idle` is the self-test's mode.
pub const IDLE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 -- idle";

#[derive(Args)]
pub struct BootBenchArgs {
    #[arg(long)]
    kernel: PathBuf,
    /// An initramfs whose /init prints HUSK-IDLE and then idles (the guest self-test in idle mode).
    #[arg(long)]
    initrd: PathBuf,
    #[arg(long, default_value = "256M", value_parser = parse_mem_size)]
    mem: u64,
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Give up when the guest is not idle after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

pub fn run(args: BootBenchArgs) -> anyhow::Result<ExitCode> {
    let baseline_us = super::median_spawn_us(std::path::Path::new("/bin/true"), &[])?;
    let vm_args: Vec<OsString> = vec![
        "--report-timing".into(),
        "--mem".into(),
        format!("{}K", args.mem >> 10).into(),
        "--cpus".into(),
        args.cpus.to_string().into(),
        "--kernel".into(),
        args.kernel.clone().into(),
        "--initrd".into(),
        args.initrd.clone().into(),
        "--cmdline".into(),
        IDLE_CMDLINE.into(),
    ];
    let spawned_ns = monotonic_ns();
    let mut guest = GuestProcess::spawn(&vm_args, Stdio::piped())?;
    let pid = guest.pid();
    let stderr = guest.child_mut().stderr.take().context("no stderr pipe")?;
    let first_entry = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.split("first_guest_entry_monotonic_ns=")
                    .nth(1)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
    });
    guest.wait_for(IDLE_MARKER, Duration::from_secs(args.timeout_secs))?;
    let total = process_memory(pid)?;
    let guest_mem = memory_split(pid, args.mem >> 10, None)?.guest_ram;
    let threads = thread_count(pid)?;
    drop(guest);
    let entry_ns = first_entry
        .join()
        .ok()
        .flatten()
        .context("husk vm did not report its first guest entry")?;
    let start_us = (entry_ns.saturating_sub(spawned_ns)) / 1000;

    println!(
        "husk bench boot: idle guest, {} vCPU(s), {} MiB guest memory",
        args.cpus,
        args.mem >> 20
    );
    println!("  host: {}", super::host_description());
    println!("  RSS                         {:>8} KiB", total.rss_kib);
    println!("  PSS                         {:>8} KiB", total.pss_kib);
    println!(
        "  guest memory in RSS         {:>8} KiB ({:.1}% of RSS, {:.1}% of the guest's {} MiB)",
        guest_mem.rss_kib,
        pct(guest_mem.rss_kib, total.rss_kib),
        pct(guest_mem.rss_kib, args.mem >> 10),
        args.mem >> 20
    );
    println!(
        "  VMM overhead (RSS - guest)  {:>8} KiB",
        total.rss_kib.saturating_sub(guest_mem.rss_kib)
    );
    println!("  threads                     {:>8}", threads);
    println!(
        "  process start -> first guest instruction {start_us} us ({:.1}x the {baseline_us} us to spawn and reap /bin/true)",
        start_us as f64 / baseline_us.max(1) as f64
    );
    Ok(ExitCode::SUCCESS)
}

fn pct(part: u64, whole: u64) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}
