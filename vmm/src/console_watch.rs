//! A guest console you can wait on.
//!
//! Given as `ConsoleTarget::Watch`, it keeps what the guest printed (the last
//! `KEEP` bytes) and wakes waiters whenever a line arrives, so tests, benches
//! and the runtime wait for a marker without polling files or sleeping. When
//! the VM ends its serial device is dropped, which closes the watch: a wait
//! for a marker that never came returns at once with the console so far.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bytes of console text a watch keeps.
const KEEP: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleWaitError {
    #[error("the VM ended before its console showed {marker:?}; console:\n{console}")]
    Ended { marker: String, console: String },
    #[error("the console did not show {marker:?} within {secs} s; console:\n{console}")]
    Timeout {
        marker: String,
        secs: u64,
        console: String,
    },
}

#[derive(Default)]
struct WatchState {
    text: String,
    writers: usize,
    closed: bool,
}

#[derive(Clone, Default)]
pub struct ConsoleWatch {
    shared: Arc<(Mutex<WatchState>, Condvar)>,
}

impl std::fmt::Debug for ConsoleWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsoleWatch")
    }
}

impl ConsoleWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything kept so far.
    pub fn text(&self) -> String {
        self.lock().text.clone()
    }

    /// Waits until the console contains `marker` (anywhere in what is kept);
    /// returns the console at that point.
    pub fn wait_for(&self, marker: &str, timeout: Duration) -> Result<String, ConsoleWaitError> {
        self.wait_until(marker, timeout, |text| text.contains(marker).then_some(()))
            .map(|(_, text)| text)
    }

    /// Waits until `found` extracts something from the console (`what`
    /// names it in errors).
    pub fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut found: impl FnMut(&str) -> Option<T>,
    ) -> Result<(T, String), ConsoleWaitError> {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.shared;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = found(&state.text) {
                return Ok((v, state.text.clone()));
            }
            if state.closed {
                return Err(ConsoleWaitError::Ended {
                    marker: what.to_string(),
                    console: state.text.clone(),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConsoleWaitError::Timeout {
                    marker: what.to_string(),
                    secs: timeout.as_secs(),
                    console: state.text.clone(),
                });
            }
            state = cond
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The writer the serial console gets; the watch closes when every
    /// writer is dropped.
    pub fn writer(&self) -> ConsoleWatchWriter {
        self.lock().writers += 1;
        ConsoleWatchWriter(self.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct ConsoleWatchWriter(ConsoleWatch);

impl Write for ConsoleWatchWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut state = self.0.lock();
        state.text.push_str(&String::from_utf8_lossy(buf));
        if state.text.len() > KEEP {
            let mut cut = state.text.len() - KEEP / 2;
            while !state.text.is_char_boundary(cut) {
                cut += 1;
            }
            state.text.drain(..cut);
        }
        drop(state);
        self.0.shared.1.notify_all();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleWatchWriter {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.writers -= 1;
        state.closed = state.writers == 0;
        drop(state);
        self.0.shared.1.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_wakes_on_the_marker_and_on_the_end() {
        let watch = ConsoleWatch::new();
        let mut w = watch.writer();
        let t = std::thread::spawn(move || {
            w.write_all(b"booting\n").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            w.write_all(b"READY 42\n").unwrap();
            w
        });
        let (n, text) = watch
            .wait_until("READY", Duration::from_secs(10), |t| {
                t.split("READY ")
                    .nth(1)?
                    .split('\n')
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
            .unwrap();
        assert_eq!(n, 42);
        assert!(text.starts_with("booting"));
        drop(t.join().unwrap());
        let err = watch
            .wait_for("NEVER", Duration::from_secs(10))
            .unwrap_err();
        assert!(matches!(err, ConsoleWaitError::Ended { .. }), "{err}");
        assert!(err.to_string().contains("READY 42"));
    }

    #[test]
    fn a_wait_times_out_with_the_console_so_far() {
        let watch = ConsoleWatch::new();
        let mut w = watch.writer();
        w.write_all(b"partial").unwrap();
        let err = watch.wait_for("x", Duration::from_millis(20)).unwrap_err();
        assert!(matches!(err, ConsoleWaitError::Timeout { .. }));
        assert!(err.to_string().contains("partial"));
    }
}
