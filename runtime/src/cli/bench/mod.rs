//! `husk bench`: measurements that report against a baseline from the same run.

mod boot;
mod clones;
mod density;
mod guest_process;
mod net;
mod start;
mod syscalls;

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Boot an idle guest; report the husk process's memory, threads and start latency.
    Boot(boot::BootBenchArgs),
    /// Guest system calls and fork against the host, with the same binary.
    Syscalls(syscalls::SyscallBenchArgs),
    /// Start N idle pods (one husk process each), C at a time; memory, CPU and start latency per pod.
    Density(density::DensityArgs),
    /// `ctr run --rm ... /bin/true` with husk and with runc; an idle pod's memory.
    Start(start::StartBenchArgs),
    /// TCP throughput host <-> pod through husk's pod network, against the veth alone.
    Net(net::NetBenchArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Boot(args) => boot::run(args),
        BenchCommand::Syscalls(args) => syscalls::run(args),
        BenchCommand::Density(args) => density::run(args),
        BenchCommand::Start(args) => start::run(args),
        BenchCommand::Net(args) => net::run(args),
    }
}

/// One line naming the machine a figure came from.
pub fn host_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpu}, {cpus} CPUs, /dev/kvm: {:?}",
        husk_vmm::HostKvm::detect()
    )
}

/// Median time to spawn `program` with `args` and reap it, in microseconds
/// (11 runs): the host baseline for start-up figures.
pub fn median_spawn_us(program: &std::path::Path, args: &[&str]) -> anyhow::Result<u64> {
    use anyhow::Context;
    let mut samples = Vec::new();
    for _ in 0..11 {
        let t = std::time::Instant::now();
        std::process::Command::new(program)
            .args(args)
            .status()
            .with_context(|| format!("running {} for the baseline", program.display()))?;
        samples.push(t.elapsed().as_micros() as u64);
    }
    samples.sort_unstable();
    Ok(samples[samples.len() / 2])
}
