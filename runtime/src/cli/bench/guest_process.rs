//! A `husk vm` child process running a benchmark guest, watched from outside.
//!
//! Benchmarks measure real husk processes, so they start `husk vm` (this
//! binary) as a child with the console on its stdout, which a reader thread
//! feeds into a `ConsoleWatch`: waiting for the guest's marker is a wait on
//! that watch, woken by each console line, not a poll. The child is killed
//! when the `GuestProcess` is dropped, so an early error leaves no guest
//! running.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use husk_vmm::{ConsoleWaitError, ConsoleWatch};

pub struct GuestProcess {
    child: Child,
    console: ConsoleWatch,
    started: Instant,
}

impl GuestProcess {
    /// Starts `husk vm ARGS` with its console on a pipe.
    pub fn spawn(args: &[OsString], stderr: Stdio) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the husk binary")?;
        let started = Instant::now();
        let mut child = Command::new(exe)
            .arg("vm")
            .args(args)
            .env("HUSK_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("starting husk vm")?;
        let console = ConsoleWatch::new();
        let mut stdout = child.stdout.take().context("no stdout pipe")?;
        let mut writer = console.writer();
        std::thread::Builder::new()
            .name("bench-console".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stdout.read(&mut buf) {
                    let _ = writer.write_all(&buf[..n]);
                }
            })
            .context("starting the console reader")?;
        Ok(Self {
            child,
            console,
            started,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits until the console shows `marker`; returns the time since spawn.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> anyhow::Result<Duration> {
        let (_, took) =
            self.wait_until(marker, timeout, |text| text.contains(marker).then_some(()))?;
        Ok(took)
    }

    /// Waits until `found` extracts something from the console (`what`
    /// names it in errors); returns that and the time since spawn.
    pub fn wait_until<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        found: impl FnMut(&str) -> Option<T>,
    ) -> anyhow::Result<(T, Duration)> {
        match self.console.wait_until(what, timeout, found) {
            Ok((value, _)) => Ok((value, self.started.elapsed())),
            Err(ConsoleWaitError::Ended { console, .. }) => {
                let status = self.child.wait()?;
                let lines: Vec<&str> = console.lines().collect();
                let tail = lines[lines.len().saturating_sub(8)..].join("\n");
                bail!("the guest ended ({status}) before printing {what}; last console lines:\n{tail}")
            }
            Err(ConsoleWaitError::Timeout { .. }) => bail!(
                "the guest did not print {what} within {} s",
                timeout.as_secs()
            ),
        }
    }
}

impl Drop for GuestProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
