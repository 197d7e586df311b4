//! `husk bench density`: host memory per idle guest, pmem image vs initramfs.
//!
//! Boots N idle guests whose root is the same read-only pmem image (DAX: the
//! guest runs its files straight from the host page cache, one copy for all),
//! then N guests from an initramfs (each guest holds its own copy in its
//! RAM), and reports the sum of the husk processes' PSS per guest for both,
//! measured in the same run. Guests boot one after another: on a host with
//! emulated guest kernels, parallel boots starve each other.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::boot::{IDLE_CMDLINE, IDLE_MARKER};
use super::guest_process::GuestProcess;
use husk_runtime::procfs::{process_memory, MemFigures};
use husk_runtime::size::parse_mem_size;

#[derive(Args)]
pub struct DensityBenchArgs {
    #[arg(long)]
    kernel: PathBuf,
    /// Guest image whose /sbin/init is the guest self-test (booted read-only with DAX).
    #[arg(long)]
    pmem: PathBuf,
    /// Initramfs whose /init is the guest self-test.
    #[arg(long)]
    initrd: PathBuf,
    /// Guests per set.
    #[arg(long, default_value_t = 10)]
    guests: usize,
    #[arg(long, default_value = "256M", value_parser = parse_mem_size)]
    mem: u64,
    /// Give up when one guest is not idle after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// What one set of guests cost, all of them up and idle at once.
struct SetFigures {
    total: MemFigures,
    min_pss_kib: u64,
    max_pss_kib: u64,
    boot_secs: Vec<f64>,
}

pub fn run(args: DensityBenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.guests > 0, "--guests must be at least 1");
    let mut pmem_arg = OsString::from(&args.pmem);
    pmem_arg.push(",ro");
    let pmem = measure_set(&args, "pmem", &[OsString::from("--pmem"), pmem_arg])?;
    let initrd = measure_set(
        &args,
        "initrd",
        &[OsString::from("--initrd"), args.initrd.clone().into()],
    )?;

    let n = args.guests as u64;
    println!(
        "husk bench density: {} idle guests per set, 1 vCPU, {} MiB guest memory each",
        args.guests,
        args.mem >> 20
    );
    println!("  host: {}", super::host_description());
    println!(
        "  {:<10} {:>14} {:>14} {:>16} {:>16} {:>12}",
        "root", "PSS/guest KiB", "RSS/guest KiB", "min..max PSS", "sum PSS MiB", "boot s (med)"
    );
    for (name, set) in [("pmem+DAX", &pmem), ("initramfs", &initrd)] {
        println!(
            "  {name:<10} {:>14} {:>14} {:>16} {:>16.1} {:>12.1}",
            set.total.pss_kib / n,
            set.total.rss_kib / n,
            format!("{}..{}", set.min_pss_kib, set.max_pss_kib),
            set.total.pss_kib as f64 / 1024.0,
            median(&set.boot_secs)
        );
    }
    println!(
        "  pmem / initramfs PSS per guest: {:.2}",
        pmem.total.pss_kib as f64 / initrd.total.pss_kib.max(1) as f64
    );
    Ok(ExitCode::SUCCESS)
}

/// Boots the set one guest at a time, then reads every process's PSS while
/// all are idle; dropping the guests stops them.
fn measure_set(
    args: &DensityBenchArgs,
    name: &str,
    root: &[OsString],
) -> anyhow::Result<SetFigures> {
    let mut guests = Vec::with_capacity(args.guests);
    let mut boot_secs = Vec::with_capacity(args.guests);
    for i in 0..args.guests {
        let mut vm_args: Vec<OsString> = vec![
            "--mem".into(),
            format!("{}K", args.mem >> 10).into(),
            "--kernel".into(),
            args.kernel.clone().into(),
            "--cmdline".into(),
            IDLE_CMDLINE.into(),
        ];
        vm_args.extend_from_slice(root);
        eprintln!(
            "bench density: booting {name} guest {}/{}",
            i + 1,
            args.guests
        );
        let mut guest = GuestProcess::spawn(&vm_args, Stdio::null())?;
        let took = guest
            .wait_for(IDLE_MARKER, Duration::from_secs(args.timeout_secs))
            .with_context(|| format!("{name} guest {}", i + 1))?;
        boot_secs.push(took.as_secs_f64());
        guests.push(guest);
    }
    let mut set = SetFigures {
        total: MemFigures::default(),
        min_pss_kib: u64::MAX,
        max_pss_kib: 0,
        boot_secs,
    };
    for g in &guests {
        let m = process_memory(g.pid())?;
        set.total.rss_kib += m.rss_kib;
        set.total.pss_kib += m.pss_kib;
        set.min_pss_kib = set.min_pss_kib.min(m.pss_kib);
        set.max_pss_kib = set.max_pss_kib.max(m.pss_kib);
    }
    Ok(set)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}
