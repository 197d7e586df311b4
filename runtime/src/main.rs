//! The `husk` binary: one host program for every husk role.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    husk_runtime::metrics::note_process_start();
    raise_open_file_limit();
    // containerd runs this binary as `containerd-shim-husk-v2` (a link).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let name = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned());
    if name.as_deref() == Some(husk_runtime::shim::SHIM_BINARY) {
        return husk_runtime::shim::main(&argv[1..]);
    }
    let args = cli::Cli::parse();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSK_LOG")
                // fuse-backend-rs logs every FUSE INIT's flag lists at info.
                .unwrap_or_else(|_| args.default_log_filter().into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the first tracing subscriber");
    // Dependencies on the guest's path (fuse-backend-rs, virtio-queue) log
    // through `log`: bridged with the same rate limits as husk's own lines.
    let _ = husk_vmm::log_budget::bridge::install();
    match cli::run(args, started) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("husk: error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// A pod holds several descriptors per exec in flight (containerd's FIFOs,
/// vsock streams, copier pipes): the soft limit goes up to the hard one, as
/// Go does for containerd's own shims. Failing leaves the limit as it was.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// The whole cause chain on one line, no backtrace. Library errors often quote
/// their cause already; a cause whose text is already shown is not repeated.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    // Multi-line messages (console context) stay readable as indented lines.
    line.replace('\n', "\n  ")
}
