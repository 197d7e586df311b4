//! The thread that carries the process's agent connections.
//!
//! ttrpc's sync client polls its connection with a 10 ms timeout for as
//! long as it is open: 100 wakeups a second per pod, a quarter of an idle
//! pod's CPU here. Its async client waits on epoll instead. husk's runtime
//! code is synchronous, so one current-thread tokio runtime, driven by a
//! thread of its own, runs every async client's reader and writer tasks,
//! and the runtime's threads block on their calls (`Handle::block_on`).
//!
//! Started on first use, from the thread that first connects to an agent
//! (a runtime thread): it inherits that thread's seccomp filter, whose list
//! covers epoll and eventfds. Never before a `fork` (`husk run -d` forks
//! before it boots anything).

use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle};

static AGENT_IO: OnceLock<Result<Handle, String>> = OnceLock::new();

/// The agent I/O runtime's handle, starting its thread on first use.
pub fn handle() -> std::io::Result<Handle> {
    AGENT_IO
        .get_or_init(|| start().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| std::io::Error::other(format!("starting the agent I/O thread: {e}")))
}

fn start() -> std::io::Result<Handle> {
    let runtime = Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("husk-agent-io".into())
        // block_on here is what drives the reactor and timers for every
        // Handle::block_on elsewhere (a current-thread runtime's rule).
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}
