//! A latency histogram that any thread can feed without a lock.
//!
//! Fixed upper bounds (seconds), one atomic count per bucket plus one for
//! everything above the last bound, and the sum kept in nanoseconds so it
//! is exact. A snapshot turns the counts cumulative, as Prometheus wants
//! them (`le` buckets ending in `+Inf`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bounds for agent round trips on any host: a hardware-KVM guest answers
/// in well under a millisecond, a software-KVM guest (every guest system
/// call emulated) in tens of milliseconds to seconds.
pub const RPC_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// counts[i]: observations in (bounds[i-1], bounds[i]]; the last one
    /// is above every bound.
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// `bounds` ascending, in seconds.
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.partition_point(|&b| b < secs);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(self.counts.len());
        for c in &self.counts {
            running += c.load(Ordering::Relaxed);
            cumulative.push(running);
        }
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            count: running,
            sum: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A histogram's state at one read.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    bounds: &'static [f64],
    /// Cumulative counts, one per bound and one for `+Inf`.
    cumulative: Vec<u64>,
    pub count: u64,
    /// Seconds.
    pub sum: f64,
}

impl HistogramSnapshot {
    /// (upper bound, cumulative count), ending with (+Inf, count).
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.cumulative.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::new(&[0.01, 0.1, 1.0]);
        for ms in [1, 10, 11, 100, 5000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        let b: Vec<(f64, u64)> = s.buckets().collect();
        assert_eq!(
            b,
            vec![(0.01, 2), (0.1, 4), (1.0, 4), (f64::INFINITY, 5)],
            "10 ms falls in le=0.01, 100 ms in le=0.1"
        );
        assert_eq!(s.count, 5);
        assert!((s.sum - 5.122).abs() < 1e-9, "{}", s.sum);
    }

    #[test]
    fn threads_feed_it_concurrently() {
        let h = std::sync::Arc::new(Histogram::new(RPC_BOUNDS));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        h.observe(Duration::from_micros(700));
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let s = h.snapshot();
        assert_eq!(s.count, 4000);
        assert_eq!(s.buckets().nth(1), Some((0.001, 4000)));
        assert_eq!(s.buckets().next(), Some((0.0005, 0)));
    }
}
