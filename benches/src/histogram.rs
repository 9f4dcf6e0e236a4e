//! A fixed-size latency histogram: constant memory however long a run lasts, at most 1/64
//! (1.6 %) relative error per recorded value, exact count and maximum.

use std::time::Duration;

/// Sub-buckets per power of two; the relative error of a bucket is at most `1 / SUB_BUCKETS`.
const SUB_BUCKETS: u64 = 64;
/// `log2(SUB_BUCKETS)`.
const SUB_BUCKET_BITS: u32 = 6;
/// Values below this many nanoseconds get one bucket each (they are exact).
const EXACT_NANOS_MAX: u64 = 2 * SUB_BUCKETS;
/// Buckets needed to cover every `u64` nanosecond value: the exact ones, then `SUB_BUCKETS`
/// for each power of two from `EXACT_NANOS_MAX` up to `2^63`.
const BUCKET_COUNT: usize = EXACT_NANOS_MAX as usize + (64 - SUB_BUCKET_BITS as usize - 1) * SUB_BUCKETS as usize;

/// Latencies of one run (or of many, after [`LatencyHistogram::merge`]).
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    count: u64,
    nanos_max: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self { counts: vec![0; BUCKET_COUNT], count: 0, nanos_max: 0 }
    }
}

/// The bucket holding `nanos`.
fn bucket_of(nanos: u64) -> usize {
    if nanos < EXACT_NANOS_MAX {
        return nanos as usize;
    }
    let magnitude = 63 - nanos.leading_zeros();
    let shift = magnitude - SUB_BUCKET_BITS;
    let top = nanos >> shift;
    debug_assert!((SUB_BUCKETS..2 * SUB_BUCKETS).contains(&top));
    let power = (magnitude - SUB_BUCKET_BITS - 1) as usize;
    EXACT_NANOS_MAX as usize + power * SUB_BUCKETS as usize + (top - SUB_BUCKETS) as usize
}

/// The smallest value of `bucket` and the bucket's width, in nanoseconds.
fn bucket_range(bucket: usize) -> (u64, u64) {
    if bucket < EXACT_NANOS_MAX as usize {
        return (bucket as u64, 1);
    }
    let offset = (bucket - EXACT_NANOS_MAX as usize) as u64;
    let shift = (offset / SUB_BUCKETS) as u32 + 1;
    let top = offset % SUB_BUCKETS + SUB_BUCKETS;
    (top << shift, 1 << shift)
}

impl LatencyHistogram {
    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket_of(nanos)] += 1;
        self.count += 1;
        self.nanos_max = self.nanos_max.max(nanos);
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.count += other.count;
        self.nanos_max = self.nanos_max.max(other.nanos_max);
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The largest recorded value (exact); zero when empty.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.nanos_max)
    }

    /// The value at quantile `q` (0.5 for the median), as the middle of its bucket and never
    /// above the maximum; zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        assert!((0.0..=1.0).contains(&q), "quantile {q} outside 0..=1");
        if self.count == 0 {
            return Duration::ZERO;
        }
        // The smallest value with at least `rank` values at or below it (nearest-rank method).
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, width) = bucket_range(bucket);
                return Duration::from_nanos((low + width / 2).min(self.nanos_max));
            }
        }
        unreachable!("rank {rank} is at most count {}", self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut previous = 0;
        for nanos in (0..100_000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let bucket = bucket_of(nanos);
            assert!(bucket < BUCKET_COUNT, "{nanos} -> {bucket}");
            assert!(bucket >= previous, "buckets must not go backwards at {nanos}");
            previous = bucket;
            let (low, width) = bucket_range(bucket);
            assert!(low <= nanos && nanos - low < width, "{nanos} outside bucket {bucket} = [{low}, +{width})");
        }
        assert_eq!(bucket_of(u64::MAX), BUCKET_COUNT - 1);
    }

    #[test]
    fn relative_error_is_at_most_one_in_sixty_four() {
        for nanos in [200u64, 1_000, 123_456, 987_654_321, 5_000_000_000] {
            let mut histogram = LatencyHistogram::default();
            // Push the maximum far above so the clamp to the maximum does not hide the error.
            histogram.record(Duration::from_nanos(nanos));
            histogram.record(Duration::from_secs(1_000));
            let median = histogram.quantile(0.5).as_nanos() as f64;
            let error = (median - nanos as f64).abs() / nanos as f64;
            assert!(error <= 1.0 / 64.0, "{nanos}: median {median}, error {error}");
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
            assert!((got - micros).abs() / micros <= 1.0 / 64.0, "q{q}: {got} µs, expected {micros} µs");
        };
        close(0.5, 500.0);
        close(0.99, 990.0);
        close(0.0, 1.0);
        assert_eq!(histogram.quantile(1.0), Duration::from_micros(1000));
        assert_eq!(histogram.max(), Duration::from_micros(1000));
        assert_eq!(histogram.count(), 1000);
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
