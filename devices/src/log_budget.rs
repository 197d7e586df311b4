//! Rate limits for log lines a guest can trigger.
//!
//! A hostile guest can make a device complain as fast as it can post
//! descriptors; without a limit it fills the host's disk and drowns every
//! other pod's lines. Each call site of `warn_limited!` gets its own
//! `LogBudget`: a few lines per window, then silence, and the next line that
//! gets through says how many were suppressed (as Firecracker does).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines per window each call site may log. Unit tests run in parallel and
/// assert on warnings, so there the budget is too large to be reached.
#[cfg(not(test))]
pub const LINES_PER_WINDOW: u32 = 10;
#[cfg(test)]
pub const LINES_PER_WINDOW: u32 = 100_000;
/// Length of a window.
pub const WINDOW: Duration = Duration::from_secs(5);

pub struct LogBudget {
    lines: u32,
    window: Duration,
    state: Mutex<BudgetState>,
}

struct BudgetState {
    since: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    pub const fn new(lines: u32, window: Duration) -> Self {
        Self {
            lines,
            window,
            state: Mutex::new(BudgetState {
                since: None,
                used: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may go out now; if so, how many were held back
    /// since the last one that did.
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if s.since.is_none_or(|t| now.duration_since(t) >= self.window) {
            s.since = Some(now);
            s.used = 0;
        }
        if s.used >= self.lines {
            s.suppressed += 1;
            return None;
        }
        s.used += 1;
        Some(std::mem::take(&mut s.suppressed))
    }
}

/// `tracing::warn!` with a per-call-site budget of `LINES_PER_WINDOW` lines
/// per `WINDOW`; a line after a silence carries `suppressed = N`.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static BUDGET: $crate::log_budget::LogBudget = $crate::log_budget::LogBudget::new(
            $crate::log_budget::LINES_PER_WINDOW,
            $crate::log_budget::WINDOW,
        );
        if let Some(suppressed) = BUDGET.allow() {
            tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_to_the_budget_and_the_next_window_reports_the_rest() {
        let budget = LogBudget::new(3, Duration::from_millis(200));
        let allowed: Vec<_> = (0..10).map(|_| budget.allow()).collect();
        assert_eq!(allowed[..3], [Some(0), Some(0), Some(0)]);
        assert!(allowed[3..].iter().all(Option::is_none));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(budget.allow(), Some(7));
        assert_eq!(budget.allow(), Some(0));
    }
}
