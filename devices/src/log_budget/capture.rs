//! Test helpers: what `tracing` prints on this thread while a closure runs,
//! with `log` records bridged as in the husk binary.

use std::io::Write;
use std::sync::{Arc, Mutex, Once};

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs `bridge::LogBridge` once per test process, every level up to
/// the bridge's `MAX_LEVEL` enabled.
pub(crate) fn bridge_log_records() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_boxed_logger(Box::new(super::bridge::LogBridge::new()))
            .expect("no other log logger in the tests");
        log::set_max_level(super::bridge::MAX_LEVEL);
    });
}

/// Captures what `tracing` (and, bridged, `log`) prints at `level` and above
/// while `f` runs on this thread.
pub(crate) fn logged_at(level: tracing::Level, f: impl FnOnce()) -> String {
    bridge_log_records();
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(level)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let text = sink.0.lock().unwrap().clone();
    String::from_utf8(text).unwrap()
}

/// As `logged_at`, at tracing-subscriber's default level (INFO).
pub(crate) fn logged(f: impl FnOnce()) -> String {
    logged_at(tracing::Level::INFO, f)
}
