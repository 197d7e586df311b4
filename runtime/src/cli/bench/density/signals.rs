//! Ctrl-C (and SIGTERM, SIGHUP) during the bench: noted, never fatal.
//!
//! The bench must stop every pod it started whatever happens, so these
//! signals do not kill it: they are blocked in every thread (before any
//! thread exists, so all inherit the mask) and one thread takes them with
//! sigwait and raises a flag. Everything that waits checks the flag, stops
//! starting pods and goes on to the teardown. Children get the default
//! mask back from `Command`; pods run in their own process groups, so a
//! terminal's Ctrl-C reaches only the bench.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use nix::sys::signal::{SigSet, Signal};

/// Set once a stop signal arrived.
#[derive(Clone, Default)]
pub struct Interrupted(Arc<AtomicBool>);

impl Interrupted {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Blocks the stop signals and starts the thread that notes them. Call
/// before any other thread starts.
pub fn watch() -> anyhow::Result<Interrupted> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()
        .context("blocking SIGINT/SIGTERM/SIGHUP")?;
    let flag = Interrupted::default();
    let raised = flag.0.clone();
    std::thread::Builder::new()
        .name("bench-signals".into())
        .spawn(move || {
            while let Ok(sig) = set.wait() {
                if raised.swap(true, Ordering::AcqRel) {
                    eprintln!("bench density: {sig} again: still stopping the pods, please wait");
                } else {
                    eprintln!("bench density: {sig}: stopping every pod the bench started");
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(flag)
}
