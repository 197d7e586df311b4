//! Rate limits for log lines a guest can trigger.
//!
//! A hostile guest can make a device complain as fast as it can post
//! descriptors or write registers; without a limit it fills the host's disk,
//! drowns every other pod's lines and, when the log is a FIFO (the shim's),
//! stalls the device thread on a full pipe. So every line a guest action can
//! reach goes through a budget: a few lines per window and call site, then
//! silence, and the next line that gets through carries `suppressed = N`
//! (as Firecracker does). husk's own call sites use `warn_limited!` and its
//! siblings, one `LogBudget` per call site; the `log` records of dependencies
//! (fuse-backend-rs, virtio-queue) are limited the same way by `bridge`.
//! Every suppressed line is counted in `suppressed_total`.

pub mod bridge;
#[cfg(test)]
pub(crate) mod capture;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[doc(hidden)]
pub use tracing as __tracing;

/// Lines per window each call site may log.
pub const LINES_PER_WINDOW: u32 = 10;
/// Length of a window.
pub const WINDOW: Duration = Duration::from_secs(5);

static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Lines held back so far by every budget in the process.
pub fn suppressed_total() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

pub struct LogBudget {
    lines: u32,
    window: Duration,
    state: Mutex<BudgetState>,
}

/// One call site's window: when it started, lines used, lines held back.
#[derive(Debug, Default)]
pub(crate) struct BudgetState {
    since: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl BudgetState {
    pub(crate) const fn new() -> Self {
        Self {
            since: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may go out at `now`; if so, how many were held back
    /// since the last one that did.
    pub(crate) fn allow(&mut self, lines: u32, window: Duration, now: Instant) -> Option<u64> {
        if !enforced() {
            return Some(0);
        }
        if self.since.is_none_or(|t| now.duration_since(t) >= window) {
            self.since = Some(now);
            self.used = 0;
        }
        if self.used >= lines {
            self.suppressed += 1;
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl LogBudget {
    pub const fn new(lines: u32, window: Duration) -> Self {
        Self {
            lines,
            window,
            state: Mutex::new(BudgetState::new()),
        }
    }

    /// The budget of one `*_limited!` call site.
    pub const fn per_call_site() -> Self {
        Self::new(LINES_PER_WINDOW, WINDOW)
    }

    /// Whether a line may go out now; if so, how many were held back
    /// since the last one that did.
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.allow(self.lines, self.window, Instant::now())
    }
}

/// Unit tests run in parallel, share the per-call-site budgets and assert on
/// warnings, so there budgets apply only on threads that ask for them
/// (`enforce_on_this_thread`); elsewhere every line goes out, uncounted.
#[cfg(test)]
mod test_mode {
    use std::cell::Cell;

    thread_local! {
        static ENFORCED: Cell<bool> = const { Cell::new(false) };
    }

    pub(crate) fn enforced() -> bool {
        ENFORCED.with(Cell::get)
    }

    /// Budgets apply to this thread's lines until the guard is dropped.
    pub struct Enforced(());

    pub fn enforce_on_this_thread() -> Enforced {
        ENFORCED.with(|e| e.set(true));
        Enforced(())
    }

    impl Drop for Enforced {
        fn drop(&mut self) {
            ENFORCED.with(|e| e.set(false));
        }
    }
}

#[cfg(test)]
use test_mode::enforced;
#[cfg(test)]
pub use test_mode::{enforce_on_this_thread, Enforced};

#[cfg(not(test))]
const fn enforced() -> bool {
    true
}

/// `tracing::event!` at `$level` with a per-call-site budget of
/// `LINES_PER_WINDOW` lines per `WINDOW`; the first line after a silence
/// carries `suppressed = N`. Nothing is counted while `$level` is disabled.
#[macro_export]
macro_rules! log_limited {
    ($level:expr, $($arg:tt)+) => {{
        static BUDGET: $crate::log_budget::LogBudget =
            $crate::log_budget::LogBudget::per_call_site();
        if $crate::log_budget::__tracing::enabled!($level) {
            match BUDGET.allow() {
                None => {}
                Some(0) => $crate::log_budget::__tracing::event!($level, $($arg)+),
                Some(suppressed) => {
                    $crate::log_budget::__tracing::event!($level, suppressed, $($arg)+)
                }
            }
        }
    }};
}

/// `tracing::error!` under a per-call-site budget (see `log_limited!`).
#[macro_export]
macro_rules! error_limited {
    ($($arg:tt)+) => {
        $crate::log_limited!($crate::log_budget::__tracing::Level::ERROR, $($arg)+)
    };
}

/// `tracing::warn!` under a per-call-site budget (see `log_limited!`).
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {
        $crate::log_limited!($crate::log_budget::__tracing::Level::WARN, $($arg)+)
    };
}

/// `tracing::info!` under a per-call-site budget (see `log_limited!`).
#[macro_export]
macro_rules! info_limited {
    ($($arg:tt)+) => {
        $crate::log_limited!($crate::log_budget::__tracing::Level::INFO, $($arg)+)
    };
}

/// `tracing::debug!` under a per-call-site budget (see `log_limited!`).
#[macro_export]
macro_rules! debug_limited {
    ($($arg:tt)+) => {
        $crate::log_limited!($crate::log_budget::__tracing::Level::DEBUG, $($arg)+)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_to_the_budget_and_the_next_window_reports_the_rest() {
        let _enforced = enforce_on_this_thread();
        let before = suppressed_total();
        let budget = LogBudget::new(3, Duration::from_millis(200));
        let allowed: Vec<_> = (0..10).map(|_| budget.allow()).collect();
        assert_eq!(allowed[..3], [Some(0), Some(0), Some(0)]);
        assert!(allowed[3..].iter().all(Option::is_none));
        assert!(suppressed_total() >= before + 7);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(budget.allow(), Some(7));
        assert_eq!(budget.allow(), Some(0));
    }

    #[test]
    fn log_records_of_one_call_site_are_cut_to_the_budget() {
        let _enforced = enforce_on_this_thread();
        let text = capture::logged(|| {
            for i in 0..100 {
                log::error!(target: "fuse_backend_rs", "fuse: record {i}");
            }
        });
        let lines: Vec<_> = text
            .lines()
            .filter(|l| l.contains("fuse: record"))
            .collect();
        assert_eq!(lines.len(), LINES_PER_WINDOW as usize, "{text}");
        assert!(lines[0].contains("ERROR"), "{text}");
    }

    #[test]
    fn limited_macros_print_at_their_level_and_cut_each_call_site() {
        let _enforced = enforce_on_this_thread();
        let text = capture::logged_at(tracing::Level::DEBUG, || {
            for _ in 0..50 {
                crate::error_limited!(n = 1, "limited error");
                crate::debug_limited!("limited debug");
            }
        });
        let count = |s: &str| text.lines().filter(|l| l.contains(s)).count();
        assert_eq!(
            count("ERROR") + count("DEBUG"),
            2 * LINES_PER_WINDOW as usize
        );
        assert_eq!(count("limited error"), LINES_PER_WINDOW as usize, "{text}");
        // A disabled level prints nothing.
        let text = capture::logged(|| (0..20).for_each(|_| crate::debug_limited!("quiet")));
        assert!(text.is_empty(), "{text}");
    }

    #[test]
    fn without_enforcement_test_threads_are_never_cut() {
        let budget = LogBudget::new(1, Duration::from_secs(60));
        assert!((0..100).all(|_| budget.allow() == Some(0)));
    }
}
