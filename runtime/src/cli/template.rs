//! `husk template create`: boot the agent VM once and snapshot it into a
//! template directory that `husk vm --from-template` and the runtime start
//! VMs from.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};
use husk_runtime::config::{GuestBoot, HuskConfig};
use husk_runtime::sandbox::size::VmSize;
use husk_runtime::size::parse_mem_size;
use husk_runtime::template::AgentConnection;
use husk_vmm::CompatMode;

#[derive(Subcommand)]
pub enum TemplateCommand {
    /// Boot the agent VM, wait until it is ready, snapshot it into --out.
    Create(CreateArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    #[arg(long)]
    kernel: PathBuf,
    /// The agent's erofs image (virtio-pmem, DAX).
    #[arg(long, conflicts_with = "initrd", required_unless_present = "initrd")]
    pmem: Option<PathBuf>,
    /// The agent's initramfs instead of an image.
    #[arg(long)]
    initrd: Option<PathBuf>,
    #[arg(long, default_value = "256M", value_parser = parse_mem_size)]
    mem: u64,
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    #[arg(long, default_value = "auto")]
    compat: CompatMode,
    /// The template directory to create (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Do not keep a connection to the agent in the template: clones then
    /// get a vsock transport reset and their first client connects afresh
    /// (seconds on software KVM).
    #[arg(long)]
    no_agent_connection: bool,
    /// Give up when the agent is not ready after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Per-thread seccomp allowlists: on (the default) or off.
    #[arg(long, default_value = "on", value_name = "on|off")]
    seccomp: husk_runtime::seccomp::Switch,
}

pub fn run(cmd: TemplateCommand) -> anyhow::Result<ExitCode> {
    let TemplateCommand::Create(args) = cmd;
    if std::fs::read_dir(&args.out).is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "{} exists and is not empty; give a new directory",
            args.out.display()
        );
    }
    let mut config = HuskConfig {
        origin: "husk template create's options".into(),
        ..HuskConfig::default()
    };
    let g = &mut config.guest;
    g.kernel = args.kernel.clone();
    match (&args.pmem, &args.initrd) {
        (Some(image), _) => (g.image, g.boot) = (image.clone(), GuestBoot::Image),
        (None, Some(initrd)) => (g.initrd, g.boot) = (initrd.clone(), GuestBoot::Initrd),
        (None, None) => unreachable!("clap requires one"),
    }
    g.compat = args.compat;
    config.runtime.seccomp = args.seccomp.0;
    husk_runtime::seccomp::confine_runtime(args.seccomp.0, "--seccomp")?;
    let size = VmSize {
        vcpus: args.cpus,
        mem_bytes: args.mem,
    };
    eprintln!(
        "husk: booting the agent VM for the template ({} vCPU, {} MiB)...",
        args.cpus,
        args.mem >> 20
    );
    let started = Instant::now();
    husk_runtime::template::create(
        &config,
        size,
        &args.out,
        Duration::from_secs(args.timeout_secs),
        if args.no_agent_connection {
            AgentConnection::Dropped
        } else {
            AgentConnection::Kept
        },
    )?;
    eprintln!(
        "husk: template written to {} after {:.1} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
