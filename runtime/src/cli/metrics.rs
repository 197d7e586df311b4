//! `husk metrics --sandbox ID`: a running sandbox's Prometheus metrics.
//!
//! Scrapes `<state_dir>/sandboxes/<id>/metrics.sock` (the state dir from
//! `--state-dir`, else the config) and prints the exposition as served,
//! after checking it parses, so a script can feed it to anything that
//! reads the Prometheus text format.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use husk_runtime::config::HuskConfig;
use husk_runtime::metrics;
use husk_runtime::sandbox::SandboxDir;

#[derive(Args)]
pub struct MetricsArgs {
    /// The sandbox's id (for a containerd pod: the sandbox container's id).
    #[arg(long)]
    sandbox: String,
    /// husk's state directory (default: the config's runtime.state_dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// husk's config file (default: $HUSK_CONFIG, then /etc/husk/config.toml).
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: MetricsArgs) -> anyhow::Result<ExitCode> {
    let state_dir = match args.state_dir {
        Some(d) => d,
        None => {
            HuskConfig::load(args.config.as_deref(), None)?
                .runtime
                .state_dir
        }
    };
    let socket = SandboxDir::new(&state_dir, &args.sandbox).metrics_socket();
    let text = metrics::scrape(&socket).with_context(|| {
        format!(
            "sandbox {} (is it running, with its state under {}?)",
            args.sandbox,
            state_dir.display()
        )
    })?;
    metrics::parse(&text).context("the sandbox served metrics that do not parse")?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
