//! `husk bench syscalls`: guest user space against the host, same binary.
//!
//! Boots the guest self-test in `bench` mode under `husk vm` and runs the
//! same static binary on the host: 10,000 getpid() calls and 100 fork+wait,
//! each reported for both and as a guest/host ratio. Also the time from
//! starting husk to the guest kernel starting /init (the first guest user
//! instruction), against the time to start the same program on the host.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::guest_process::GuestProcess;

#[derive(Args)]
pub struct SyscallBenchArgs {
    #[arg(long)]
    kernel: PathBuf,
    /// An initramfs with the guest self-test as /init.
    #[arg(long)]
    initrd: PathBuf,
    /// The same self-test binary, run on the host for the baseline.
    #[arg(long)]
    selftest: PathBuf,
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// (getpid x10000 us, fork+wait x100 us) from a `selftest-bench:` line.
fn parse_bench(line: &str) -> Option<(u64, u64)> {
    let rest = line.split("selftest-bench:").nth(1)?;
    let mut numbers = rest
        .split(" = ")
        .skip(1)
        .map(|p| p.split_whitespace().next().and_then(|n| n.parse().ok()));
    Some((numbers.next()??, numbers.next()??))
}

pub fn run(args: SyscallBenchArgs) -> anyhow::Result<ExitCode> {
    let host = Command::new(&args.selftest)
        .arg("bench")
        .stdout(Stdio::piped())
        .spawn()
        .context("running the self-test on the host")?;
    let host_figures = BufReader::new(host.stdout.context("no stdout")?)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| parse_bench(&l))
        .context("the host run printed no selftest-bench line")?;
    let host_start_us = super::median_spawn_us(&args.selftest, &["exit"])?;

    let vm_args: Vec<OsString> = vec![
        "--mem".into(),
        "256M".into(),
        "--cpus".into(),
        "1".into(),
        "--cmdline".into(),
        "console=ttyS0 reboot=k panic=-1 -- bench".into(),
        "--kernel".into(),
        args.kernel.clone().into(),
        "--initrd".into(),
        args.initrd.clone().into(),
    ];
    let mut guest = GuestProcess::spawn(&vm_args, Stdio::null())?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let init_started = guest.wait_for("Run /init as init process", timeout)?;
    let (guest_figures, _) = guest.wait_until("a selftest-bench line", timeout, |text| {
        text.lines().find_map(parse_bench)
    })?;
    drop(guest);

    println!(
        "husk bench syscalls: the same static binary in a husk guest (1 vCPU) and on the host"
    );
    println!("  host: {}", super::host_description());
    row("getpid() x 10,000", guest_figures.0, host_figures.0);
    row("fork+wait x 100", guest_figures.1, host_figures.1);
    row(
        "start -> first user instruction",
        init_started.as_micros() as u64,
        host_start_us,
    );
    println!("  (guest start: husk spawned -> kernel runs /init, polled every 50 ms; host start: median spawn -> exit of the self-test in its `exit` mode)");
    Ok(ExitCode::SUCCESS)
}

fn row(what: &str, guest_us: u64, host_us: u64) {
    println!(
        "  {what:<34} guest {guest_us:>10} us   host {host_us:>8} us   guest/host {:>8.1}x",
        guest_us as f64 / host_us.max(1) as f64
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_selftest_bench_line() {
        assert_eq!(
            parse_bench(
                "[ 1.0] selftest-bench: getpid x10000 = 1234 us, fork+wait x100 = 56789 us"
            ),
            Some((1234, 56789))
        );
        assert_eq!(parse_bench("selftest: clock ok"), None);
    }
}
