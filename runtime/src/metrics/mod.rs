//! Prometheus metrics of a husk process: each sandbox's husk process
//! serves them on `<sandbox dir>/metrics.sock` (beside `vsock.sock`), and
//! `husk metrics --sandbox ID` prints them.
//!
//! - `sandbox`: what a sandbox exposes (start phases, agent calls, the
//!   VM's counters through `vm`, host RSS/PSS) and `Phase`.
//! - `agent`: the agent round-trip histogram and call counts.
//! - `vm`: vCPU exits by reason and the virtio devices' counters.
//! - `histogram`: a lock-free latency histogram.
//! - `text` / `parse`: writing and (strictly) reading the text format.
//! - `server` / `client`: the endpoint (HTTP/1.x GET on a Unix socket, one
//!   thread, bounded requests) and a scraper.
//!
//! Why hand-written: the text format is a few lines of rules, and the
//! endpoint needs no registry, no async runtime and no extra thread beyond
//! its own; the `prometheus` crate would bring all three into every pod's
//! process. The shim's Stats call to containerd is separate: it stays the
//! guest cgroup's figures.

pub mod agent;
pub mod client;
pub mod histogram;
pub mod parse;
pub mod sandbox;
pub mod server;
pub mod text;
mod vm;

use std::path::PathBuf;

pub use client::{scrape, scrape_from, Scraped};
pub use parse::{parse, Exposition};
pub use sandbox::{note_process_start, Phase, SandboxMetrics};
pub use server::MetricsServer;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("serving metrics on {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("connecting to the metrics socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading metrics from {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metrics from {path}: {status}")]
    Http { path: PathBuf, status: String },
}
