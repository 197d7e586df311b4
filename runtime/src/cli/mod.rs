//! Command-line interface: `husk run`, `husk vm`, `husk bench` (and, by
//! its other name, the containerd shim: see `husk_runtime::shim`).

mod bench;
mod fs_share;
mod run;
mod terminal;
mod vm;

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "husk",
    version,
    about = "husk: a secure container runtime with an in-process KVM VMM"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an OCI bundle in a fresh sandbox, attached to this terminal.
    Run(run::RunArgs),
    /// Boot a kernel in a VM and stream its console.
    Vm(vm::VmArgs),
    /// Measure husk.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

pub fn run(cli: Cli, started: Instant) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Vm(args) => vm::run(args, started),
        Command::Bench(cmd) => bench::run(cmd),
    }
}
