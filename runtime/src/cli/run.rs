//! `husk run --bundle DIR`: an OCI bundle in a fresh sandbox, attached to
//! this terminal, exiting with the container's exit code.
//!
//! The VM boots in this process (the same sandbox code the shim uses), the
//! bundle's root is shared into it, and the container's stdio is this
//! process's. SIGINT and SIGTERM go to the container; a second SIGINT stops
//! the sandbox. With `-t` the terminal is put in raw mode and its size
//! follows SIGWINCH (Ctrl-C then reaches the container as a key). With
//! `-d` the process detaches once the container runs and the sandbox lives
//! until the container exits; its output goes to the sandbox's `output.log`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use husk_agent_protocol::agent;
use husk_runtime::config::HuskConfig;
use husk_runtime::metrics::Phase;
use husk_runtime::sandbox::spec::BundleSpec;
use husk_runtime::sandbox::{
    blocking_ctx, ctx, NewContainer, Sandbox, SandboxSettings, GUEST_WORK_TIMEOUT, RPC_TIMEOUT,
};
use husk_runtime::stdio::{Endpoint, ProcessId, ProcessStdio, StdioCopiers};
use nix::sys::signal::{SigSet, Signal};

use super::terminal::RawTerminal;

#[derive(Args)]
pub struct RunArgs {
    /// The OCI bundle: a directory with config.json and the root it names.
    #[arg(long)]
    bundle: PathBuf,
    /// Container (and sandbox) id; default: the bundle directory's name.
    #[arg(long)]
    id: Option<String>,
    /// Give the container a terminal (this one, in raw mode).
    #[arg(short = 't', long)]
    tty: bool,
    /// Detach once the container runs; its output goes to the sandbox's output.log.
    #[arg(short = 'd', long)]
    detach: bool,
    /// husk's config file (default: $HUSK_CONFIG, then /etc/husk/config.toml).
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let bundle = std::fs::canonicalize(&args.bundle)
        .with_context(|| format!("the bundle {}", args.bundle.display()))?;
    let id = match &args.id {
        Some(id) => id.clone(),
        None => bundle
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("the bundle path has no name to use as the id; give --id")?,
    };
    let config = HuskConfig::load(args.config.as_deref(), None)?;
    let spec = BundleSpec::load(&bundle)?;
    let settings = SandboxSettings::for_bundle(&id, &config, &spec)?;
    let size = settings.size;
    if args.detach {
        detach(&config, &id)?;
    }
    // Before any thread exists, so every one inherits the list.
    let origin = format!("runtime.seccomp in {}", config.origin);
    husk_runtime::seccomp::confine_runtime(config.runtime.seccomp, &origin)
        .context("confining husk's threads")?;
    // Signals are taken by one thread (sigwait); block them before any
    // thread exists so none of them gets one.
    let signals = handled_signals();
    signals.thread_block().context("blocking signals")?;
    eprintln!(
        "husk: booting sandbox {id} ({} vCPU, {} MiB)...",
        size.vcpus,
        size.mem_bytes >> 20
    );
    let sandbox = Sandbox::boot(&settings)?;
    let t = sandbox.timings();
    eprintln!(
        "husk: agent ready after {:.1} s",
        t.agent_ready.duration_since(t.started).as_secs_f64()
    );
    let code = run_container(&sandbox, &id, &bundle, args.tty && !args.detach, signals);
    let removed = sandbox.remove_container(&id, None);
    sandbox.shutdown()?;
    let code = code?;
    removed?;
    Ok(ExitCode::from(code.min(255) as u8))
}

fn run_container(
    sandbox: &Sandbox,
    id: &str,
    bundle: &std::path::Path,
    tty: bool,
    signals: SigSet,
) -> anyhow::Result<u32> {
    sandbox.create_container(&NewContainer {
        id,
        bundle,
        rootfs: &[],
        terminal: tty,
    })?;
    let agent = sandbox.agent();
    let _raw = if tty && std::io::stdin().is_terminal() {
        Some(RawTerminal::enter()?)
    } else {
        None
    };
    let process = ProcessId {
        container: id.to_string(),
        exec: String::new(),
    };
    let mut copiers = StdioCopiers::start(
        agent,
        &process,
        ProcessStdio {
            stdin: Endpoint::Reader(Box::new(std::io::stdin())),
            stdout: Endpoint::Writer(Box::new(std::io::stdout())),
            stderr: Endpoint::Writer(Box::new(std::io::stderr())),
            terminal: tty,
        },
    );
    let start = agent::StartContainerRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    agent
        .start_container(ctx(GUEST_WORK_TIMEOUT), &start)
        .context("starting the container")?;
    sandbox.metrics().mark(Phase::ContainerRunning);
    if tty {
        super::terminal::send_size(agent, id);
    }
    spawn_signal_thread(sandbox, id, tty, signals);
    let wait = agent::WaitProcessRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    let status = match agent.wait_process(blocking_ctx(), &wait) {
        Ok(r) => u32::try_from(r.exit_status).unwrap_or(255),
        Err(e) if sandbox.vm_ended() => bail!(
            "the sandbox's VM ended while the container ran ({e}); last console lines:\n{}",
            sandbox.console_tail(20)
        ),
        Err(e) => bail!("waiting for the container: {e}"),
    };
    copiers.wait_output(Duration::from_secs(5));
    Ok(status)
}

fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    set
}

/// Forwards SIGINT/SIGTERM/SIGHUP to the container; a second SIGINT ends
/// the sandbox (the wait then fails and `run` cleans up). SIGWINCH resizes.
fn spawn_signal_thread(sandbox: &Sandbox, id: &str, tty: bool, signals: SigSet) {
    let agent = sandbox.agent().clone();
    let id = id.to_string();
    let stop = sandbox.stopper();
    let _ = std::thread::Builder::new()
        .name("husk-signals".into())
        .spawn(move || {
            let mut interrupts = 0;
            while let Ok(sig) = signals.wait() {
                if sig == Signal::SIGWINCH {
                    if tty {
                        super::terminal::send_size(&agent, &id);
                    }
                    continue;
                }
                if sig == Signal::SIGINT {
                    interrupts += 1;
                    if interrupts > 1 {
                        eprintln!("husk: second interrupt: stopping the sandbox");
                        stop.stop();
                        return;
                    }
                }
                let req = agent::SignalProcessRequest {
                    container_id: id.clone(),
                    signal: sig as u32,
                    ..Default::default()
                };
                if let Err(e) = agent.signal_process(ctx(RPC_TIMEOUT), &req) {
                    tracing::debug!("forwarding {sig}: {e}");
                }
            }
        });
}

/// Runs the rest of `husk run` in a child that left the terminal; the
/// parent prints the sandbox id and returns.
fn detach(config: &HuskConfig, id: &str) -> anyhow::Result<()> {
    let log = config.runtime.state_dir.join(format!("{id}.output.log"));
    std::fs::create_dir_all(&config.runtime.state_dir)
        .with_context(|| format!("creating {}", config.runtime.state_dir.display()))?;
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    // SAFETY: no other thread exists yet (signals are blocked after this).
    match unsafe { nix::unistd::fork() }.context("detaching")? {
        nix::unistd::ForkResult::Parent { child } => {
            println!("{id} {child} (output: {})", log.display());
            std::process::exit(0);
        }
        nix::unistd::ForkResult::Child => {
            nix::unistd::setsid().context("leaving the terminal's session")?;
            use std::os::fd::AsRawFd;
            let null = std::fs::File::open("/dev/null").context("opening /dev/null")?;
            for (from, to) in [
                (null.as_raw_fd(), 0),
                (out.as_raw_fd(), 1),
                (out.as_raw_fd(), 2),
            ] {
                // SAFETY: dup2 onto the standard fds of this single-threaded child.
                if unsafe { libc::dup2(from, to) } < 0 {
                    bail!("redirecting stdio: {}", std::io::Error::last_os_error());
                }
            }
            Ok(())
        }
    }
}
