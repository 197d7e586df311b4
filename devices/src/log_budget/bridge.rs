//! The `log` crate's records, rate-limited, into `tracing`.
//!
//! Dependencies that sit on the guest's path log through `log`, not
//! `tracing`: fuse-backend-rs logs an error for a FUSE name without its NUL
//! or a GETATTR of an unknown node, virtio-queue one for each bad queue size
//! or ring address a driver writes. tracing-subscriber's default bridge
//! (`LogTracer`) forwards all of them; `LogBridge` forwards them through
//! the same per-call-site budget as `warn_limited!` (a call site is a
//! record's file and line), and says how many it held back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use tracing_log::{AsLog, LogTracer};

use super::{BudgetState, LINES_PER_WINDOW, WINDOW};

/// A `log::Log` that rate-limits each call site, then hands the record to
/// tracing's current subscriber.
pub struct LogBridge {
    tracer: LogTracer,
    /// Keyed by the record's source file and line; records without a static
    /// file share one budget.
    sites: Mutex<HashMap<(&'static str, u32), BudgetState>>,
}

impl Default for LogBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl LogBridge {
    pub fn new() -> Self {
        Self {
            tracer: LogTracer::new(),
            sites: Mutex::new(HashMap::new()),
        }
    }

    fn allow(&self, record: &log::Record<'_>) -> Option<u64> {
        let key = (
            record.file_static().unwrap_or(""),
            record.line().unwrap_or(0),
        );
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let site = sites.entry(key).or_default();
        site.allow(LINES_PER_WINDOW, WINDOW, Instant::now())
    }
}

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.tracer.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.tracer.enabled(record.metadata()) {
            return;
        }
        match self.allow(record) {
            None => return,
            Some(0) => {}
            Some(suppressed) => tracing::warn!(
                suppressed,
                target = record.target(),
                file = record.file().unwrap_or("?"),
                line = record.line().unwrap_or(0),
                "similar log records were suppressed"
            ),
        }
        self.tracer.log(record);
    }

    fn flush(&self) {}
}

/// The most verbose `log` level ever enabled: fuse-backend-rs 0.14 builds a
/// trace record of every request from `Opcode::from(u32)`, an unchecked
/// transmute of the guest's opcode (undefined behaviour for the numbers the
/// enum skips; a panic in debug builds), so its arguments must never be
/// evaluated. The `log` macros skip them above this level.
pub const MAX_LEVEL: log::LevelFilter = log::LevelFilter::Debug;

/// Installs `LogBridge` as the process's `log` logger, passing the levels the
/// current tracing subscriber wants, up to `MAX_LEVEL`. Call it after setting
/// the subscriber, instead of `LogTracer::init` (which tracing-subscriber's
/// `init` runs, with no such cap).
pub fn install() -> Result<(), log::SetLoggerError> {
    log::set_boxed_logger(Box::new(LogBridge::new()))?;
    log::set_max_level(capped(
        tracing::level_filters::LevelFilter::current().as_log(),
    ));
    Ok(())
}

/// The `log` level to enable when tracing wants `wanted`.
fn capped(wanted: log::LevelFilter) -> log::LevelFilter {
    wanted.min(MAX_LEVEL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_records_of_dependencies_are_never_enabled() {
        assert_eq!(capped(log::LevelFilter::Trace), log::LevelFilter::Debug);
        assert_eq!(capped(log::LevelFilter::Info), log::LevelFilter::Info);
        assert_eq!(capped(log::LevelFilter::Off), log::LevelFilter::Off);
    }
}
