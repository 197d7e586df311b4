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

use std::sync::{Mutex, PoisonError};

use tokio::runtime::{Builder, Handle};

static AGENT_IO: StartedOnce = StartedOnce::new();

/// The agent I/O runtime's handle, starting its thread on first use.
pub fn handle() -> std::io::Result<Handle> {
    AGENT_IO
        .get_or_start(start)
        .map_err(|e| std::io::Error::other(format!("starting the agent I/O thread: {e}")))
}

/// A handle kept once a start succeeds. A failed start (no descriptor for
/// epoll, no thread) is not kept: it may be passing, and keeping it would
/// fail every later agent connection of the pod.
struct StartedOnce(Mutex<Option<Handle>>);

impl StartedOnce {
    const fn new() -> Self {
        Self(Mutex::new(None))
    }

    fn get_or_start(
        &self,
        start: impl FnOnce() -> std::io::Result<Handle>,
    ) -> std::io::Result<Handle> {
        // Held across the start, so two first callers start one thread.
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(handle) = &*slot {
            return Ok(handle.clone());
        }
        let handle = start()?;
        *slot = Some(handle.clone());
        Ok(handle)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_start_is_retried_and_a_started_runtime_is_kept() {
        let once = StartedOnce::new();
        let err = once
            .get_or_start(|| Err(std::io::Error::from_raw_os_error(libc::EMFILE)))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EMFILE));

        let mut starts = 0;
        for _ in 0..3 {
            let handle = once
                .get_or_start(|| {
                    starts += 1;
                    start()
                })
                .expect("the second start works");
            // The kept runtime runs tasks.
            assert_eq!(handle.block_on(async { 7 }), 7);
        }
        assert_eq!(starts, 1, "a started runtime is started again");
    }
}
