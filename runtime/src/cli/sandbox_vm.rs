//! `husk sandbox-vm` (hidden): a sandbox's VM alone, as the runtime would
//! start it (same config, devices and command line), in a directory the
//! caller made; it runs until killed. For benchmarks that measure real
//! husk processes starting and idling, cold or from a template.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use husk_runtime::config::HuskConfig;
use husk_runtime::sandbox::size::VmSize;
use husk_runtime::sandbox::{guest_vm_config, SandboxDir};

#[derive(Args)]
pub struct SandboxVmArgs {
    #[arg(long)]
    config: PathBuf,
    /// `<state_dir>` whose `sandboxes/<id>` the caller created.
    #[arg(long)]
    state_dir: PathBuf,
    #[arg(long)]
    id: String,
    /// Restore this template instead of booting.
    #[arg(long)]
    template: Option<PathBuf>,
}

pub fn run(args: SandboxVmArgs) -> anyhow::Result<ExitCode> {
    let config = HuskConfig::load(Some(&args.config), None)?;
    let origin = format!("runtime.seccomp in {}", config.origin);
    husk_runtime::seccomp::confine_runtime(config.runtime.seccomp, &origin)?;
    let size = VmSize {
        vcpus: config.guest.vcpus,
        mem_bytes: config.guest.memory,
    };
    let dir = SandboxDir::new(&args.state_dir, &args.id);
    let vm = husk_vmm::VmHandle::start(&guest_vm_config(
        &config,
        size,
        &dir,
        args.template.as_deref(),
    ))
    .context("starting the sandbox VM")?;
    let report = vm.wait()?;
    tracing::info!(outcome = ?report.outcome, "sandbox VM ended");
    Ok(ExitCode::SUCCESS)
}
