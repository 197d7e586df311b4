//! `husk vm`: boot a kernel with an initrd or a pmem root image (or start
//! from a template) and stream the console. The main thread takes the
//! runtime's seccomp list before it opens anything, the VM's threads their
//! own (`--seccomp off` for neither).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use husk_vmm::{CompatMode, ConsoleTarget, VmConfig, VmHandle};

use husk_runtime::seccomp::{confine_runtime, Switch};
use husk_runtime::size::parse_mem_size;

#[derive(Args)]
pub struct VmArgs {
    /// Guest kernel: an ELF vmlinux (booted through PVH) or a bzImage.
    #[arg(long, required_unless_present = "from_template")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (newc cpio, optionally compressed).
    #[arg(long, conflicts_with = "from_template")]
    initrd: Option<PathBuf>,
    /// Guest memory, e.g. 128M or 1G (default 128M; a template's own).
    #[arg(long, value_parser = parse_mem_size)]
    mem: Option<u64>,
    /// Number of vCPUs (default 1; a template's own).
    #[arg(long)]
    cpus: Option<u8>,
    /// Start from a template (`husk template create`) instead of booting.
    #[arg(long, value_name = "DIR")]
    from_template: Option<PathBuf>,
    /// Kernel command line (replaces the default; compatibility flags are still appended).
    #[arg(long)]
    cmdline: Option<String>,
    /// Write the guest console to this file instead of stdout.
    #[arg(long)]
    console: Option<PathBuf>,
    /// Host compatibility profile for software-KVM hosts: auto, on or off.
    #[arg(long, default_value = "auto")]
    compat: CompatMode,
    /// Add a virtio-vsock device: cid=N (default 3), uds=PATH (the host Unix socket bridge).
    #[arg(long, value_name = "cid=N,uds=PATH")]
    vsock: Option<husk_vmm::VsockSpec>,
    /// Add a virtio-pmem device backed by an image FILE (repeatable); `,ro` maps it read-only.
    /// Without --initrd the guest boots from the first image (/dev/pmem0, erofs or ext4, DAX).
    #[arg(long, value_name = "FILE[,ro]")]
    pmem: Vec<husk_vmm::PmemSpec>,
    /// Share a host directory over virtio-fs (repeatable); the guest mounts it with
    /// `mount -t virtiofs TAG DIR`. dax=SIZE adds a DAX window of that size (e.g. 256M);
    /// size=SIZE caps what the guest may add to DIR (ENOSPC beyond).
    #[arg(
        long = "fs",
        value_name = "TAG=DIR[,cache=none|auto|always][,dax=SIZE][,xattr][,size=SIZE]",
        value_parser = super::fs_share::parse_fs_share
    )]
    fs: Vec<husk_vmm::FsConfig>,
    /// Add a virtio-net device (repeatable) behind tap NAME, opened or created in husk's own
    /// network namespace; without tap= (or with `none`) the device has no backend and drops
    /// what the guest sends. mac= defaults to a random local address (a template's own when
    /// starting from one), mtu= to 1500.
    #[arg(
        long = "net",
        value_name = "tap=NAME[,mac=MAC][,mtu=N]",
        value_parser = super::net_arg::parse_net
    )]
    net: Vec<super::net_arg::NetArg>,
    /// Per-thread seccomp allowlists: on (the default) or off. A thread calling outside its
    /// list kills husk with a line on stderr naming the call.
    #[arg(long, default_value = "on", value_name = "on|off")]
    seccomp: Switch,
    /// Print a machine-readable line on stderr when vCPU 0 first enters the guest (for `husk bench`).
    #[arg(long, hide = true)]
    report_timing: bool,
}

impl VmArgs {
    fn config(&self) -> anyhow::Result<VmConfig> {
        let (mem, cpus, pmem, net) = match &self.from_template {
            None => (
                self.mem.unwrap_or(128 << 20),
                self.cpus.unwrap_or(1),
                self.pmem.clone(),
                self.net
                    .iter()
                    .map(|n| n.open(husk_vmm::net::DEFAULT_MTU))
                    .collect::<anyhow::Result<_>>()?,
            ),
            Some(dir) => from_template(dir, self)?,
        };
        Ok(VmConfig {
            kernel: self.kernel.clone().unwrap_or_default(),
            initrd: self.initrd.clone(),
            mem_bytes: mem,
            cpus,
            cmdline: self.cmdline.clone(),
            console: self
                .console
                .clone()
                .map_or(ConsoleTarget::Stdout, ConsoleTarget::File),
            compat: self.compat,
            on_first_entry: None,
            vsock: self.vsock.clone(),
            pmem,
            fs: self.fs.clone(),
            net,
            template: self.from_template.clone(),
            seccomp: self.seccomp.0,
        })
    }
}

/// A template's memory, vCPUs and (unless given) pmem images and net
/// devices (then without taps); asking for another size is an error.
fn from_template(
    dir: &std::path::Path,
    args: &VmArgs,
) -> anyhow::Result<(u64, u8, Vec<husk_vmm::PmemSpec>, Vec<husk_vmm::NetSpec>)> {
    let t = husk_vmm::snapshot::Template::open(dir)?;
    let h = &t.header;
    if let Some(mem) = args.mem.filter(|&m| m != h.mem_bytes) {
        anyhow::bail!(
            "--mem {} MiB: the template {} has {} MiB (a template's size is its own)",
            mem >> 20,
            dir.display(),
            h.mem_bytes >> 20
        );
    }
    if let Some(cpus) = args.cpus.filter(|&c| c != h.vcpus) {
        anyhow::bail!(
            "--cpus {cpus}: the template {} has {} vCPUs (a template's size is its own)",
            dir.display(),
            h.vcpus
        );
    }
    let pmem = if args.pmem.is_empty() {
        h.devices
            .pmem
            .iter()
            .map(|(image, _)| husk_vmm::PmemSpec {
                path: image.path.clone(),
                read_only: true,
            })
            .collect()
    } else {
        args.pmem.clone()
    };
    let saved = &h.devices.net;
    let net: anyhow::Result<Vec<_>> = if args.net.is_empty() {
        let none = super::net_arg::NetArg::default();
        saved.iter().map(|n| none.open(n.mtu)).collect()
    } else {
        let mtu = |i: usize| saved.get(i).map_or(husk_vmm::net::DEFAULT_MTU, |n| n.mtu);
        args.net
            .iter()
            .enumerate()
            .map(|(i, n)| n.open(mtu(i)))
            .collect()
    };
    Ok((h.mem_bytes, h.vcpus, pmem, net?))
}

pub fn run(args: VmArgs, started: Instant) -> anyhow::Result<ExitCode> {
    // First: opening taps and images, and building the VM, run confined.
    confine_runtime(args.seccomp.0, "--seccomp").context("confining husk's threads")?;
    let mut config = args.config()?;
    if args.report_timing {
        config.on_first_entry = Some(print_first_entry);
    }
    let vm = VmHandle::start(&config).context("cannot build the VM")?;
    tracing::debug!(cmdline = vm.cmdline(), "booting");
    let report = vm.wait()?;
    if let Some(first) = report.first_entry {
        tracing::info!(
            "first guest instruction {} us after husk started",
            first.duration_since(started).as_micros()
        );
    }
    tracing::info!(outcome = ?report.outcome, "guest ended");
    Ok(ExitCode::SUCCESS)
}

/// Runs on vCPU 0's thread just before its first KVM_RUN.
fn print_first_entry() {
    eprintln!(
        "husk-timing: first_guest_entry_monotonic_ns={}",
        husk_vmm::metrics::monotonic_ns()
    );
}
