//! `containerd-shim-husk-v2`: the containerd shim v2, the same binary as
//! `husk` (dispatched on argv[0]).
//!
//! - `args`: containerd's command line for a shim.
//! - `start`: find or start the sandbox's shim, print its address.
//! - `serve`: the long-lived shim process, with the VM in it.
//! - `delete`: clean up after a shim that died.
//! - `service`: the Task API methods; `tasks` and `process`: the state
//!   behind them; `events`: TaskCreate, TaskExit, ... to containerd;
//!   `convert`: errors, timestamps, metrics; `state`: what a bundle
//!   remembers for `delete`.
//!
//! Why this Task API binding: containerd-shim 0.12 speaks only task v3
//! (containerd 2.0+) and 0.11 needs ttrpc 0.9 while the agent protocol is
//! on ttrpc 0.10. husk uses containerd-shim-protos 0.12's generated service
//! and messages (ttrpc 0.10, one ttrpc in the tree) and serves them under
//! the v2 name as well; the messages are the same on the wire, so Debian's
//! containerd 1.6, 1.7 and 2.x all work. The process plumbing (start,
//! delete, daemonising) is husk's own, since that crate's is v3-only.

mod args;
mod convert;
mod delete;
mod events;
mod process;
mod serve;
mod service;
mod start;
mod state;
mod tasks;

use std::ffi::OsString;
use std::process::ExitCode;

pub use args::{Action, ShimArgs};
pub use start::{address_of, socket_path};

// Public for the fuzz targets: the checks and conversions a Task API
// request goes through before the shim acts on it.
pub use convert::{check_id, config_path_option, TaskError};
pub use process::IoPaths;
pub use service::{create_request, exec_request};
pub use tasks::CreateRequest;

/// The name containerd looks for (`io.containerd.husk.v2`).
pub const SHIM_BINARY: &str = "containerd-shim-husk-v2";

/// Runs the shim with containerd's arguments (without argv[0]).
pub fn main(args: &[OsString]) -> ExitCode {
    let args = match ShimArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{SHIM_BINARY}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.action {
        Action::Version => {
            println!("{SHIM_BINARY} (husk) {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Action::Start => start::run(&args),
        Action::Delete => delete::run(&args),
        Action::Serve => serve::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // For start and delete this reaches containerd (and ctr).
            eprintln!("{SHIM_BINARY}: {e:#}");
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
