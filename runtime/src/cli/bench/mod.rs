//! `husk bench`: measurements that report against a baseline from the same run.

mod boot;
mod procfs;

pub use procfs::monotonic_ns;

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Boot an idle guest; report the husk process's memory, threads and start latency.
    Boot(boot::BootBenchArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Boot(args) => boot::run(args),
    }
}
