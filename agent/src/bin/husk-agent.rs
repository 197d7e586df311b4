//! husk-agent: PID 1 in the guest. Sets the guest up (mounts, cgroups),
//! then serves `husk.agent.v1.AgentService` over ttrpc on vsock port 1024.
//! Run as any other pid (on a host, for tests) it skips the guest setup and
//! serves on the address given by `--listen`, e.g. `unix:///tmp/agent.sock`.
//!
//! As PID 1 a fatal error powers the guest off (after logging it to the
//! console) instead of exiting, which the kernel would turn into a panic.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use husk_agent::container::{ContainerManager, EngineConfig};
use husk_agent::init;
use husk_agent::reaper::Reaper;
use husk_agent::rpc::{self, AgentRpc, GuestScope};

#[derive(Parser, Debug)]
#[command(
    name = "husk-agent",
    version,
    about = "husk's agent: PID 1 in the guest"
)]
struct Args {
    /// Where to serve ttrpc: vsock://CID:PORT (-1 = any CID) or unix:///PATH.
    #[arg(long, default_value_t = rpc::default_listen_address())]
    listen: String,
    /// Container cgroups go under <cgroup root>/<this>/<container id>.
    #[arg(long, default_value = "husk")]
    cgroup_parent: String,
}

fn main() {
    init_logging();
    let pid1 = init::is_pid1();
    let argv: Vec<String> = std::env::args().collect();
    let argv = if pid1 { own_flags(argv) } else { argv };
    let result = Args::try_parse_from(argv)
        .map_err(anyhow::Error::from)
        .and_then(|args| run(&args, pid1));
    if let Err(e) = result {
        if pid1 {
            init::power_off(&format!("{e:#}"));
        }
        eprintln!("husk-agent: {e:#}");
        std::process::exit(1);
    }
}

/// As PID 1 the kernel hands /init every boot word it did not take itself
/// (husk's compat profile adds some, e.g. `noxsave`), so only the agent's own
/// flags are kept; the rest is logged and ignored.
fn own_flags(argv: Vec<String>) -> Vec<String> {
    let mut words = argv.into_iter();
    let mut kept: Vec<String> = words.next().into_iter().collect();
    while let Some(word) = words.next() {
        if word == "--listen" || word == "--cgroup-parent" {
            kept.push(word);
            kept.extend(words.next());
        } else if word.starts_with("--listen=") || word.starts_with("--cgroup-parent=") {
            kept.push(word);
        } else {
            tracing::info!("ignoring /init argument {word:?} from the kernel command line");
        }
    }
    kept
}

/// The scheduler slice the kernel command line asks for (see
/// `sched_slice`); without it the kernel's default stays.
fn set_requested_slice() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    match husk_agent::sched_slice::requested(&cmdline) {
        Ok(None) => {}
        Ok(Some(slice)) => match husk_agent::sched_slice::set(slice) {
            Ok(()) => tracing::info!(?slice, "scheduler slice set"),
            Err(e) => tracing::warn!("cannot set the scheduler slice to {slice:?}: {e}"),
        },
        Err(e) => tracing::warn!("ignoring the scheduler slice: {e}"),
    }
}

/// Logs go to stderr, which for PID 1 is the guest console. Without the
/// module path: every byte on the serial console costs a VM exit. So at
/// info only the boot and rare events are logged; the lines a pod's or a
/// container's life makes are at debug (the host's log has each
/// container's creation and exit).
/// On software KVM one line cost about 45,000 emulated kernel
/// instructions, some 0.1 s. `HUSK_AGENT_LOG=debug` in the agent's
/// environment (a word on the kernel command line: `husk vm --cmdline`)
/// brings them back.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HUSK_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
}

fn run(args: &Args, pid1: bool) -> anyhow::Result<()> {
    let scope = if pid1 {
        init::setup_guest().context("setting up the guest")?;
        // Before any thread exists: they inherit it.
        set_requested_slice();
        GuestScope::OwnsTheGuest
    } else {
        GuestScope::HostTest
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pid1,
        "husk-agent starting"
    );
    match husk_agent::fd_limit::raise() {
        Ok((soft, _)) => tracing::debug!(limit = soft, "open-file limit raised"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    // The one reaper of the process: every child's exit status goes through it.
    let reaper = Reaper::start();
    let engine = ContainerManager::new(EngineConfig {
        cgroup_parent: args.cgroup_parent.clone(),
        reaper,
    })
    .context("starting the container engine")?;
    let service = Arc::new(AgentRpc::new(scope, engine));
    let _server = rpc::serve(&args.listen, service)?;
    if pid1 {
        husk_agent::ready::notify_host();
    }
    // ttrpc's threads do the work; this thread only keeps the process alive.
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn kernel_words_are_dropped_and_listen_kept() {
        assert_eq!(
            own_flags(words(
                "/init noxsave nopti --listen vsock://-1:7 mitigations=off"
            )),
            words("/init --listen vsock://-1:7")
        );
        assert_eq!(
            own_flags(words("/init --listen=unix:///a noxsave")),
            words("/init --listen=unix:///a")
        );
        let args = Args::try_parse_from(own_flags(words("/init noxsave"))).unwrap();
        assert_eq!(args.listen, "vsock://-1:1024");
    }
}
