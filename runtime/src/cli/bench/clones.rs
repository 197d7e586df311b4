//! `husk bench start`'s VM part: sandbox VMs cold-booted against VMs
//! restored from the template, as real husk processes (`husk sandbox-vm`,
//! the runtime's own VM set-up).
//!
//! Start: process spawn to agent-ready, the cold boot's being the agent's
//! ready call, the restore's the agent answering Check over vsock. Memory:
//! N idle VMs of each kind running at once, PSS per husk process from
//! smaps, split into guest RAM (the mapping of the guest's size) and
//! husk's own.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use husk_agent_protocol::agent;
use husk_runtime::agent_client::{connect_agent, AGENT_VSOCK_PORT};
use husk_runtime::config::HuskConfig;
use husk_runtime::sandbox::SandboxDir;

use husk_runtime::procfs::{memory_split, MemFigures};

/// A `husk sandbox-vm` process; killed when dropped.
pub struct BenchVm {
    child: Child,
    pub dir: SandboxDir,
}

impl Drop for BenchVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.dir.remove();
    }
}

fn spawn(
    config_path: &Path,
    state: &Path,
    id: &str,
    template: Option<&Path>,
) -> anyhow::Result<BenchVm> {
    let dir = SandboxDir::new(state, id);
    dir.create()?;
    let exe = std::env::current_exe().context("locating husk")?;
    let mut cmd = Command::new(exe);
    cmd.args(["sandbox-vm", "--id", id, "--config"])
        .arg(config_path)
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(t) = template {
        cmd.arg("--template").arg(t);
    }
    let child = cmd.spawn().context("starting husk sandbox-vm")?;
    Ok(BenchVm { child, dir })
}

/// Cold boot: spawn to the agent's ready call.
pub fn cold(
    config_path: &Path,
    state: &Path,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<(BenchVm, Duration)> {
    let dir = SandboxDir::new(state, id);
    dir.create()?;
    let ready = UnixListener::bind(dir.ready_socket()).context("binding the ready socket")?;
    ready.set_nonblocking(true)?;
    let t = Instant::now();
    let mut vm = spawn(config_path, state, id, None)?;
    loop {
        if ready.accept().is_ok() {
            return Ok((vm, t.elapsed()));
        }
        if vm.child.try_wait()?.is_some() {
            bail!("the cold-booted VM {id} ended before its agent was ready");
        }
        if t.elapsed() > timeout {
            bail!(
                "the cold-booted VM {id} was not ready after {} s",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Restore: spawn to the agent answering Check.
pub fn restored(
    config_path: &Path,
    state: &Path,
    id: &str,
    template: &Path,
) -> anyhow::Result<(BenchVm, Duration)> {
    let t = Instant::now();
    let mut vm = spawn(config_path, state, id, Some(template))?;
    let uds = vm.dir.vsock_socket();
    loop {
        if let Ok(client) = connect_agent(&uds, AGENT_VSOCK_PORT, Duration::from_secs(30)) {
            let ctx = husk_agent_protocol::ttrpc::context::with_timeout(30_000_000_000);
            client
                .check(ctx, &agent::CheckRequest::new())
                .context("Check")?;
            return Ok((vm, t.elapsed()));
        }
        if vm.child.try_wait()?.is_some() {
            bail!("the restored VM {id} ended before its agent answered");
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the restored VM {id} did not answer within 60 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// PSS of a set of idle VMs: (total, guest RAM part), summed.
pub fn memory(vms: &[BenchVm], guest_bytes: u64) -> anyhow::Result<(MemFigures, MemFigures)> {
    let (mut total, mut guest) = (MemFigures::default(), MemFigures::default());
    for vm in vms {
        let split = memory_split(vm.child.id(), guest_bytes >> 10, None)?;
        total += split.total;
        guest += split.guest_ram;
    }
    Ok((total, guest))
}

/// The template the config's sandboxes of the default size start from.
pub fn template_of(config: &HuskConfig) -> anyhow::Result<PathBuf> {
    let size = husk_runtime::sandbox::size::VmSize {
        vcpus: config.guest.vcpus,
        mem_bytes: config.guest.memory,
    };
    husk_runtime::template::resolve(
        config,
        size,
        Duration::from_secs(config.runtime.boot_timeout_secs),
    )?
    .context("the config's runtime.template is \"off\"; the bench compares against a template")
}
