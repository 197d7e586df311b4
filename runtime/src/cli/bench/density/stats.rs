//! Summaries of per-pod figures: nearest-rank percentiles and the mean.

/// p50, p90, p99 and the mean of a set of figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
}

impl Summary {
    /// None for an empty set.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            p50: percentile(&sorted, 50),
            p90: percentile(&sorted, 90),
            p99: percentile(&sorted, 99),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        })
    }
}

/// Nearest rank: the smallest value with at least p% of the set at or
/// below it (`sorted` ascending, not empty).
fn percentile(sorted: &[f64], p: usize) -> f64 {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!((s.p50, s.p90, s.p99, s.mean), (10.0, 18.0, 20.0, 10.5));
        let s = Summary::of(&[3.0]).unwrap();
        assert_eq!((s.p50, s.p99), (3.0, 3.0));
        let s = Summary::of(&[5.0, 1.0]).unwrap();
        assert_eq!((s.p50, s.p90), (1.0, 5.0));
        assert_eq!(Summary::of(&[]), None);
    }
}
