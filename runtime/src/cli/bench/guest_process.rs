//! A `husk vm` child process running a benchmark guest, watched from outside.
//!
//! Benchmarks measure real husk processes, so they start `husk vm` (this
//! binary) as a child with the console going to a file, and poll that file
//! for the marker the guest prints once it is up. The child is killed and its
//! console file removed when the `GuestProcess` is dropped, so an early error
//! leaves no guest running.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct GuestProcess {
    child: Child,
    console: PathBuf,
    started: Instant,
}

impl GuestProcess {
    /// Starts `husk vm ARGS --console <tmp file>`; `name` keeps console files apart.
    pub fn spawn(name: &str, args: &[OsString], stderr: Stdio) -> anyhow::Result<Self> {
        let console =
            std::env::temp_dir().join(format!("husk-bench-{name}-{}.console", std::process::id()));
        let _ = std::fs::remove_file(&console);
        let exe = std::env::current_exe().context("locating the husk binary")?;
        let started = Instant::now();
        let child = Command::new(exe)
            .arg("vm")
            .args(args)
            .arg("--console")
            .arg(&console)
            .env("HUSK_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting husk vm")?;
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

    /// Polls the console every 50 ms until `found` extracts something from
    /// it (`what` names it in errors); returns that and the time since spawn.
    pub fn wait_until<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut found: impl FnMut(&str) -> Option<T>,
    ) -> anyhow::Result<(T, Duration)> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.console).unwrap_or_default();
            if let Some(value) = found(&text) {
                return Ok((value, self.started.elapsed()));
            }
            if let Some(status) = self.child.try_wait()? {
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(8)..].join("\n");
                bail!("the guest ended ({status}) before printing {what}; last console lines:\n{tail}");
            }
            if Instant::now() > deadline {
                bail!(
                    "the guest did not print {what} within {} s",
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for GuestProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.console);
    }
}
