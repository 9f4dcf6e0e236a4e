//! Latency histograms: hdrhistogram's, in nanoseconds with two significant digits (at most 1 %
//! relative error per value) up to an hour, plus the exact count and maximum. Constant memory
//! however long a run lasts: about 36 KiB each.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Significant decimal digits kept per value: 2 bounds the relative error by 1 %.
const SIGNIFICANT_DIGITS: u8 = 2;
/// The largest latency the buckets tell apart; a longer one is counted as this (the maximum
/// stays exact).
const LATENCY_NANOS_MAX: u64 = 3_600 * 1_000_000_000;

/// Latencies of one run (or of many, after [`LatencyHistogram::merge`]).
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    /// Tracks 1 ns ..= [`LATENCY_NANOS_MAX`].
    histogram: Histogram<u64>,
    /// hdrhistogram reports the top of the maximum's bucket; the benchmarks report the value.
    nanos_max: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        let histogram = Histogram::new_with_max(LATENCY_NANOS_MAX, SIGNIFICANT_DIGITS)
            .expect("an hour in nanoseconds with 2 significant digits is a valid histogram");
        Self { histogram, nanos_max: 0 }
    }
}

impl LatencyHistogram {
    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(nanos);
        self.nanos_max = self.nanos_max.max(nanos);
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        self.histogram.add(&other.histogram).expect("histograms of one shape add up");
        self.nanos_max = self.nanos_max.max(other.nanos_max);
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The largest recorded value (exact); zero when empty.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.nanos_max)
    }

    /// The value at quantile `q` (0.5 for the median): the smallest value with at least
    /// `q × count` values at or below it (nearest rank), as the middle of its histogram bucket
    /// and never above the maximum; zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        assert!((0.0..=1.0).contains(&q), "quantile {q} outside 0..=1");
        if self.histogram.is_empty() {
            return Duration::ZERO;
        }
        let value = self.histogram.value_at_quantile(q);
        Duration::from_nanos(self.histogram.median_equivalent(value).min(self.nanos_max))
    }
}

/// A duration in milliseconds, for printing.
pub fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_is_at_most_one_percent() {
        for nanos in [200u64, 1_000, 123_456, 987_654_321, 5_000_000_000] {
            let mut histogram = LatencyHistogram::default();
            // Push the maximum far above so the clamp to the maximum does not hide the error.
            histogram.record(Duration::from_nanos(nanos));
            histogram.record(Duration::from_secs(1_000));
            let median = histogram.quantile(0.5).as_nanos() as f64;
            let error = (median - nanos as f64).abs() / nanos as f64;
            assert!(error <= 0.01, "{nanos}: median {median}, error {error}");
        }
    }

    #[test]
    fn quantiles_follow_the_nearest_rank_method() {
        let mut histogram = LatencyHistogram::default();
        for micros in 1..=1000u64 {
            histogram.record(Duration::from_micros(micros));
        }
        let close = |q: f64, micros: f64| {
            let got = histogram.quantile(q).as_secs_f64() * 1e6;
            assert!((got - micros).abs() / micros <= 0.01, "q{q}: {got} µs, expected {micros} µs");
        };
        close(0.5, 500.0);
        close(0.99, 990.0);
        close(0.0, 1.0);
        assert_eq!(histogram.quantile(1.0), Duration::from_micros(1000));
        assert_eq!(histogram.max(), Duration::from_micros(1000));
        assert_eq!(histogram.count(), 1000);
    }

    #[test]
    fn values_past_the_limit_are_counted_and_the_maximum_stays_exact() {
        let mut histogram = LatencyHistogram::default();
        histogram.record(Duration::MAX);
        histogram.record(Duration::from_nanos(1_234_567));
        assert_eq!(histogram.count(), 2);
        assert_eq!(histogram.max(), Duration::from_nanos(u64::MAX));
        let top = histogram.quantile(1.0).as_nanos() as f64;
        assert!((top / LATENCY_NANOS_MAX as f64 - 1.0).abs() <= 0.01, "counted as the limit, got {top} ns");
    }

    #[test]
    fn merge_adds_counts_and_keeps_the_larger_maximum() {
        let mut a = LatencyHistogram::default();
        let mut b = LatencyHistogram::default();
        a.record(Duration::from_micros(10));
        b.record(Duration::from_micros(30));
        b.record(Duration::from_micros(20));
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.max(), Duration::from_micros(30));
        assert!(a.quantile(0.5) > Duration::from_micros(19) && a.quantile(0.5) < Duration::from_micros(21));
        assert_eq!(LatencyHistogram::default().quantile(0.99), Duration::ZERO);
    }
}
