//! The long-lived shim: one per sandbox, serving the Task API on the socket
//! `start` bound, with the sandbox's VM inside this process once the first
//! container is created. It logs to the bundle's `log` FIFO (containerd
//! copies that into its own log) and exits after Shutdown once no
//! container is left, removing its socket. Before it serves anything it
//! confines itself with the runtime's seccomp list (`crate::seccomp`), so
//! every thread it starts inherits it; a violation's report goes to that
//! log too.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use containerd_shim_protos::{create_task, ttrpc};

use super::args::ShimArgs;
use super::events::Publisher;
use super::service::TaskService;
use super::start::{inherited_listener, sandbox_of, socket_path};
use super::tasks::Shim;
use crate::config::{ConfigError, HuskConfig};

/// The Task API's service names: containerd 1.6/1.7 (and 2.x, for shims
/// that print a plain address) call v2; the generated code registers v3.
const V3: &str = "/containerd.task.v3.Task/";
const V2: &str = "/containerd.task.v2.Task/";

pub fn run(args: &ShimArgs) -> anyhow::Result<()> {
    // HUSK_CONFIG or the default file. A Create may name another
    // (containerd's ConfigPath option): that one decides for its VM, but
    // comes after these threads are confined (`Shim::boot_sandbox` says so).
    let config = HuskConfig::load(None, None);
    init_logging(args.debug, config.as_ref().ok());
    confine(&config)?;
    let bundle = std::env::current_dir().context("finding the bundle")?;
    let sandbox_id = sandbox_of(&args.id, &bundle)?;
    let span = tracing::info_span!("sandbox", id = %sandbox_id);
    let _g = span.enter();
    let listener = inherited_listener()?;
    let events = Publisher::start(std::env::var("TTRPC_ADDRESS").ok(), args.namespace.clone());
    let shim = Arc::new(Shim::new(sandbox_id.clone(), events));
    shim.set_main_thread(std::thread::current());
    let service = Arc::new(TaskService { shim: shim.clone() });
    let v3 = create_task(service.clone());
    let v2 = create_task(service)
        .into_iter()
        .map(|(path, m)| (path.replacen(V3, V2, 1), m))
        .collect();
    let mut server = ttrpc::Server::new()
        .add_listener(listener.into_raw_fd())
        .context("serving the inherited shim socket")?
        .register_service(v2)
        .register_service(v3);
    server.start().context("starting the Task API server")?;
    tracing::info!(pid = std::process::id(), "shim serving");
    while !shim.exiting.load(Ordering::Acquire) {
        std::thread::park();
    }
    tracing::info!("shim shutting down");
    shim.end_sandbox();
    let _ = std::fs::remove_file(socket_path(&args.address, &args.namespace, &sandbox_id));
    // Let the Shutdown reply reach containerd before the process goes.
    std::thread::sleep(std::time::Duration::from_millis(50));
    server.shutdown();
    Ok(())
}

/// The runtime's seccomp list on this thread, before any other starts.
fn confine(config: &Result<HuskConfig, ConfigError>) -> anyhow::Result<()> {
    let (on, origin) = match config {
        Ok(c) => (
            c.runtime.seccomp,
            format!("runtime.seccomp in {}", c.origin),
        ),
        Err(e) => (
            true,
            format!("the default, as the config did not load: {e}"),
        ),
    };
    crate::seccomp::confine_runtime(on, &origin).context("confining the shim's threads")
}

/// Logs go to the bundle's `log` FIFO, which containerd reads; without it
/// they go nowhere (stderr is /dev/null for the daemon). The level is
/// HUSK_LOG, else `debug` when containerd runs with -debug, else the
/// config's `runtime.log_level`. Seccomp violations are reported there.
fn init_logging(debug: bool, config: Option<&HuskConfig>) {
    let level = if debug {
        "debug".to_string()
    } else {
        config.map_or_else(|| "info".into(), |c| c.runtime.log_level.clone())
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HUSK_LOG")
        .unwrap_or_else(|_| format!("{level},fuse_backend_rs=warn").into());
    let log = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log")
        .ok()
        .and_then(|f| {
            // Blocking from here: the reader is there, and a full FIFO
            // should slow logging, not drop it.
            let flags = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETFL).ok()?;
            let mut flags = nix::fcntl::OFlag::from_bits_truncate(flags);
            flags.remove(nix::fcntl::OFlag::O_NONBLOCK);
            nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETFL(flags)).ok()?;
            Some(f)
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let installed = match log {
        Some(f) => {
            let fd = f.as_raw_fd();
            // The subscriber keeps the FIFO open for the life of the process.
            let installed = tracing::subscriber::set_global_default(
                builder.with_writer(std::sync::Mutex::new(f)).finish(),
            );
            if installed.is_ok() {
                husk_vmm::seccomp::set_report_fd(fd);
            }
            installed
        }
        None => {
            tracing::subscriber::set_global_default(builder.with_writer(std::io::sink).finish())
        }
    };
    // `log` records (fuse-backend-rs, virtio-queue) under the same rate
    // limits as husk's own lines: a guest must not flood containerd's log.
    if installed.is_ok() {
        let _ = husk_vmm::log_budget::bridge::install();
    }
}
