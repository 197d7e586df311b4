//! Command-line interface: `husk run`, `husk vm`, `husk metrics`, `husk
//! bench` (and, by its other name, the containerd shim: see
//! `husk_runtime::shim`).

mod bench;
mod check;
mod fs_share;
mod install;
mod metrics;
mod net_arg;
mod run;
mod sandbox_vm;
mod template;
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
    /// Say whether this host can run husk.
    Check(check::CheckArgs),
    /// Install husk, its containerd shim, the guest kernel and images, and a config.
    Install(install::InstallArgs),
    /// Print a running sandbox's Prometheus metrics.
    Metrics(metrics::MetricsArgs),
    /// Make VM templates (snapshots of a booted agent VM).
    #[command(subcommand)]
    Template(template::TemplateCommand),
    /// A sandbox's VM alone, as the runtime starts it (for benchmarks).
    #[command(hide = true)]
    SandboxVm(sandbox_vm::SandboxVmArgs),
    /// Boot a kernel in a VM and stream its console.
    Vm(vm::VmArgs),
    /// Measure husk.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

impl Cli {
    /// husk's own log level unless HUSK_LOG says otherwise: `husk run`
    /// speaks for itself on stderr and logs only warnings.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Run(_) => "warn,fuse_backend_rs=warn",
            _ => "info,fuse_backend_rs=warn",
        }
    }
}

pub fn run(cli: Cli, started: Instant) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Check(args) => check::run(args),
        Command::Install(args) => install::run(args),
        Command::Metrics(args) => metrics::run(args),
        Command::Template(cmd) => template::run(cmd),
        Command::SandboxVm(args) => sandbox_vm::run(args),
        Command::Vm(args) => vm::run(args, started),
        Command::Bench(cmd) => bench::run(cmd),
    }
}
