//! Userspace form of the kernel's exponential histograms: merged across CPUs, trimmed to
//! the populated buckets, subtracted between intervals, and summarised as quantiles.

use agent_common::hist::{self, MIN_INDEX};
use serde::Serialize;

/// An OTLP-style exponential histogram at the kernel's fixed [`SCALE`], values in ns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ExpHistogram {
    pub sum: u64,
    pub zero_count: u64,
    /// OTLP index of `counts[0]`.
    pub offset: i32,
    /// Counts of consecutive buckets from `offset`; no leading or trailing zeros.
    pub counts: Vec<u64>,
}

impl ExpHistogram {
    /// Merges one series' per-CPU kernel histograms.
    pub fn from_per_cpu<'a>(per_cpu: impl IntoIterator<Item = &'a hist::Histogram>) -> Self {
        let mut dense = [0u64; hist::NUM_BUCKETS];
        let (mut sum, mut zero_count) = (0u64, 0u64);
        for h in per_cpu {
            sum = sum.wrapping_add(h.sum);
            zero_count += h.zero_count;
            for (d, c) in dense.iter_mut().zip(h.buckets.iter()) {
                *d += c;
            }
        }
        Self::from_dense(sum, zero_count, &dense)
    }

    /// `dense[k]` is the count of OTLP bucket `k + MIN_INDEX`.
    pub fn from_dense(sum: u64, zero_count: u64, dense: &[u64]) -> Self {
        Self::from_dense_at(MIN_INDEX, sum, zero_count, dense)
    }

    /// From (OTLP index, count) pairs in any order.
    /// Sum of windowed kernel histograms (per CPU, or one shared).
    pub fn from_windows<'a, const FIRST: i32, const N: usize>(
        windows: impl IntoIterator<Item = &'a hist::Window<FIRST, N>>,
    ) -> Self {
        let mut dense = [0u64; N];
        let (mut sum, mut zero_count) = (0u64, 0u64);
        for w in windows {
            sum = sum.wrapping_add(w.sum);
            zero_count += w.zero_count;
            for (d, c) in dense.iter_mut().zip(w.buckets.iter()) {
                *d += c;
            }
        }
        Self::from_buckets(
            sum,
            zero_count,
            dense
                .iter()
                .enumerate()
                .filter(|&(_, &c)| c > 0)
                .map(|(k, &c)| (FIRST + k as i32, c)),
        )
    }

    pub fn from_buckets(
        sum: u64,
        zero_count: u64,
        buckets: impl IntoIterator<Item = (i32, u64)>,
    ) -> Self {
        let buckets: Vec<(i32, u64)> = buckets.into_iter().filter(|&(_, c)| c != 0).collect();
        let Some(lo) = buckets.iter().map(|&(i, _)| i).min() else {
            return Self::from_dense(sum, zero_count, &[]);
        };
        let hi = buckets.iter().map(|&(i, _)| i).max().unwrap_or(lo);
        let mut dense = vec![0u64; (hi - lo + 1) as usize];
        for (i, c) in buckets {
            dense[(i - lo) as usize] += c;
        }
        Self::from_dense_at(lo, sum, zero_count, &dense)
    }

    /// `dense[k]` is the count of OTLP bucket `k + lowest`.
    fn from_dense_at(lowest: i32, sum: u64, zero_count: u64, dense: &[u64]) -> Self {
        let first = dense.iter().position(|&c| c != 0);
        let (offset, counts) = match first {
            None => (0, Vec::new()),
            Some(first) => {
                let last = dense.iter().rposition(|&c| c != 0).expect("non-empty");
                (first as i32 + lowest, dense[first..=last].to_vec())
            }
        };
        Self {
            sum,
            zero_count,
            offset,
            counts,
        }
    }

    pub fn count(&self) -> u64 {
        self.zero_count + self.counts.iter().sum::<u64>()
    }

    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Count of the bucket with OTLP index `index`.
    pub fn bucket(&self, index: i32) -> u64 {
        usize::try_from(index - self.offset)
            .ok()
            .and_then(|i| self.counts.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// Populated (index, count) pairs in ascending order.
    pub fn buckets(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c != 0)
            .map(|(i, &c)| (self.offset + i as i32, c))
    }

    /// What happened since `earlier`, a previous reading of the same cumulative series.
    /// A series that went backwards was reset (the map entry was recreated): then the
    /// whole current reading is new.
    pub fn since(&self, earlier: &Self) -> Self {
        let reset = self.count() < earlier.count()
            || self.zero_count < earlier.zero_count
            || self.buckets().any(|(i, c)| c < earlier.bucket(i))
            || earlier.buckets().any(|(i, c)| c > self.bucket(i));
        if reset {
            return self.clone();
        }
        let (lo, hi) = self.span_with(earlier);
        let dense: Vec<u64> = (lo..=hi)
            .map(|i| self.bucket(i) - earlier.bucket(i))
            .collect();
        Self::from_dense_at(
            lo,
            self.sum.wrapping_sub(earlier.sum),
            self.zero_count - earlier.zero_count,
            &dense,
        )
    }

    /// Lowest and highest bucket index populated in either histogram (an empty range
    /// when both are empty).
    fn span_with(&self, other: &Self) -> (i32, i32) {
        let range = |h: &Self| {
            (!h.counts.is_empty()).then(|| (h.offset, h.offset + h.counts.len() as i32 - 1))
        };
        match (range(self), range(other)) {
            (Some((a, b)), Some((c, d))) => (a.min(c), b.max(d)),
            (Some(r), None) | (None, Some(r)) => r,
            (None, None) => (0, -1),
        }
    }

    /// The same samples at a scale `by` steps lower: bucket `i` becomes `i >> by` (an
    /// arithmetic shift floors, for negative indexes too). Exact: at scale s − by,
    /// bucket j is (base'^j, base'^(j+1)] with base' = base^(2^by), the union of the
    /// buckets j·2^by … (j+1)·2^by − 1 at scale s.
    pub fn downscaled(&self, by: u32) -> Self {
        if by == 0 {
            return self.clone();
        }
        Self::from_buckets(
            self.sum,
            self.zero_count,
            self.buckets().map(|(i, c)| (i >> by.min(31), c)),
        )
    }

    /// Adds another histogram's counts into this one (same scale).
    /// [`Self::merge`] of an owned histogram: moved in, with no copy, when `self`
    /// holds nothing yet (the first of the parts a series is read in).
    pub fn merge_owned(&mut self, other: Self) {
        if self.counts.is_empty() && self.sum == 0 && self.zero_count == 0 {
            *self = other;
        } else {
            self.merge(&other);
        }
    }

    pub fn merge(&mut self, other: &Self) {
        let (lo, hi) = self.span_with(other);
        let dense: Vec<u64> = (lo..=hi)
            .map(|i| self.bucket(i) + other.bucket(i))
            .collect();
        *self = Self::from_dense_at(
            lo,
            self.sum.wrapping_add(other.sum),
            self.zero_count + other.zero_count,
            &dense,
        );
    }

    /// Estimated value at quantile `q` (0..=1), in ns: the bucket holding that rank is
    /// found exactly, and the value inside it is interpolated on the log scale (the
    /// buckets are exponential), as Prometheus does for native histograms.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        Some(match self.rank_position(q)? {
            RankPosition::Zero => 0.0,
            RankPosition::Bucket { index, fraction } => bucket_lower_f(index as f64 + fraction),
        })
    }

    /// Upper bound of the bucket holding quantile `q`: for values that are exact
    /// bucket bounds (request sizes are powers of two, queue depths small integers),
    /// where interpolating inside the bucket would report 3.8 KiB for 4 KiB requests.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        Some(match self.rank_position(q)? {
            RankPosition::Zero => 0.0,
            RankPosition::Bucket { index, .. } => bucket_upper(index),
        })
    }

    /// Where the sample of rank `q × count` lies; `None` for an empty histogram.
    fn rank_position(&self, q: f64) -> Option<RankPosition> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(f64::MIN_POSITIVE);
        if rank <= self.zero_count as f64 {
            return Some(RankPosition::Zero);
        }
        let mut seen = self.zero_count as f64;
        for (index, count) in self.buckets() {
            let c = count as f64;
            if seen + c >= rank {
                let fraction = (rank - seen) / c;
                return Some(RankPosition::Bucket { index, fraction });
            }
            seen += c;
        }
        // Rounding left the rank above the last bucket: it is the maximum.
        self.buckets()
            .last()
            .map(|(index, _)| RankPosition::Bucket {
                index,
                fraction: 1.0,
            })
    }

    /// Mean in ns.
    pub fn mean(&self) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| self.sum as f64 / n as f64)
    }
}

/// A rank's place in a histogram: the zero bucket, or a fraction of the way through a
/// bucket.
enum RankPosition {
    Zero,
    Bucket { index: i32, fraction: f64 },
}

/// base^x for a fractional bucket position x.
fn bucket_lower_f(x: f64) -> f64 {
    2f64.powf(x / f64::from(hist::SUB_BUCKETS))
}

/// Exclusive lower bound of OTLP bucket `index`: base^index.
pub fn bucket_lower(index: i32) -> f64 {
    bucket_lower_f(index as f64)
}

/// Inclusive upper bound of OTLP bucket `index`: base^(index+1).
pub fn bucket_upper(index: i32) -> f64 {
    bucket_lower(index + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ⌈log2 x⌉ for x ≥ 1, exact.
    fn ceil_log2(x: u128) -> i32 {
        if x <= 1 {
            0
        } else {
            128 - (x - 1).leading_zeros() as i32
        }
    }

    /// OTLP's index of `v` at `scale`, from the definition (v in (base^j, base^(j+1)],
    /// base = 2^(2^-scale)) in integers: v^(2^scale) in (2^j, 2^(j+1)] for scale ≥ 0,
    /// ⌈log2 v⌉ − 1 = e in (j·2^k, (j+1)·2^k] … floored for scale −k.
    fn otlp_index(v: u64, scale: i32) -> i32 {
        if scale >= 0 {
            ceil_log2((v as u128).pow(1 << scale)) - 1
        } else {
            (ceil_log2(v as u128) - 1).div_euclid(1 << -scale)
        }
    }

    #[test]
    fn downscaling_keeps_every_sample_in_its_bucket() {
        // Edges: powers of two and their neighbours, and a spread between them.
        let mut values: Vec<u64> = (0..64)
            .flat_map(|e| {
                let p = 1u64 << e;
                [p - 1, p, p.saturating_add(1)]
            })
            .chain((1..2000).map(|k| k * 7919))
            .filter(|&v| v > 0)
            .collect();
        values.sort();
        values.dedup();
        let h = ExpHistogram::from_buckets(
            0,
            3,
            values
                .iter()
                .map(|&v| (agent_common::hist::bucket_index(v), 1)),
        );
        for scale in -4..=agent_common::hist::SCALE {
            let by = (agent_common::hist::SCALE - scale) as u32;
            let low = h.downscaled(by);
            assert_eq!(low.count(), h.count(), "scale {scale}");
            assert_eq!(low.zero_count, 3);
            // Where the definition puts each value at this scale; v^(2^scale) must fit
            // a u128, so positive scales compare the values small enough.
            let fits = |v: u64| scale <= 1 || v < 1 << (128 >> scale);
            let at = |index: &dyn Fn(u64) -> i32| {
                ExpHistogram::from_buckets(
                    0,
                    3,
                    values.iter().filter(|&&v| fits(v)).map(|&v| (index(v), 1)),
                )
            };
            let kernel = at(&agent_common::hist::bucket_index);
            assert_eq!(
                kernel.downscaled(by),
                at(&|v| otlp_index(v, scale)),
                "scale {scale}"
            );
        }
    }

    #[test]
    fn quantile_bounds_report_exact_sizes() {
        let mut dense = [0u64; 200];
        let slot = |v: u64| agent_common::hist::bucket_slot(v);
        dense[slot(4096)] = 90;
        dense[slot(65536)] = 10;
        let h = ExpHistogram::from_dense(0, 0, &dense);
        assert_eq!(h.quantile_bound(0.5), Some(4096.0));
        assert_eq!(h.quantile_bound(0.99), Some(65536.0));
        assert!(h.quantile(0.5).unwrap() < 4096.0);
        assert_eq!(ExpHistogram::default().quantile_bound(0.5), None);
    }
    use agent_common::hist::{Histogram, bucket_index, bucket_slot};

    fn from_values(values: &[u64]) -> ExpHistogram {
        let mut h = Histogram::ZERO;
        for &v in values {
            h.sum += v;
            if v == 0 {
                h.zero_count += 1;
            } else {
                h.buckets[bucket_slot(v)] += 1;
            }
        }
        ExpHistogram::from_per_cpu([&h])
    }

    #[test]
    fn merges_cpus_and_trims() {
        let mut a = Histogram::ZERO;
        let mut b = Histogram::ZERO;
        a.buckets[bucket_slot(1000)] += 2;
        b.buckets[bucket_slot(1000)] += 1;
        b.buckets[bucket_slot(4000)] += 5;
        b.zero_count = 1;
        a.sum = 2000;
        b.sum = 21_000;
        let h = ExpHistogram::from_per_cpu([&a, &b]);
        assert_eq!(h.count(), 9);
        assert_eq!(h.sum, 23_000);
        assert_eq!(h.offset, bucket_index(1000));
        assert_eq!(h.bucket(bucket_index(1000)), 3);
        assert_eq!(h.bucket(bucket_index(4000)), 5);
        assert_eq!(*h.counts.first().unwrap(), 3);
        assert_eq!(*h.counts.last().unwrap(), 5);
    }

    #[test]
    fn merging_an_owned_histogram_equals_merging_a_borrowed_one() {
        let a = ExpHistogram::from_buckets(2000, 1, [(3, 2), (7, 1)]);
        let b = ExpHistogram::from_buckets(900, 0, [(-2, 4), (5, 1)]);
        let only_zeros = ExpHistogram::from_buckets(0, 3, []);
        for (x, y) in [(&a, &b), (&b, &a), (&only_zeros, &a), (&a, &only_zeros)] {
            for start in [ExpHistogram::default(), x.clone()] {
                let mut borrowed = start.clone();
                borrowed.merge(y);
                let mut owned = start;
                owned.merge_owned(y.clone());
                assert_eq!(owned, borrowed);
            }
        }
    }

    #[test]
    fn quantile_lands_in_the_right_bucket() {
        // 90 fast samples at 10 µs, 9 at 1 ms, 1 at 100 ms.
        let mut values = vec![10_000; 90];
        values.extend([1_000_000; 9]);
        values.push(100_000_000);
        let h = from_values(&values);
        let within = |q: f64, v: u64| {
            let got = h.quantile(q).unwrap();
            let i = bucket_index(v);
            assert!(
                got > bucket_lower(i) && got <= bucket_upper(i),
                "q{q}: {got} not in bucket of {v}"
            );
        };
        within(0.5, 10_000);
        within(0.9, 10_000);
        within(0.95, 1_000_000);
        within(0.99, 1_000_000);
        within(0.999, 100_000_000);
        within(1.0, 100_000_000);
        assert_eq!(h.quantile(0.0).map(|v| v > 0.0), Some(true));
    }

    #[test]
    fn quantile_error_is_within_one_bucket() {
        // A uniform spread: the estimate must be within the bucket width (≤ 9 %).
        let values: Vec<u64> = (1..=10_000).map(|i| i * 1000).collect();
        let h = from_values(&values);
        for q in [0.5, 0.9, 0.99, 0.999] {
            let exact = values[((q * values.len() as f64).ceil() as usize) - 1] as f64;
            let got = h.quantile(q).unwrap();
            assert!((got / exact - 1.0).abs() < 0.0905, "q{q}: {got} vs {exact}");
        }
    }

    #[test]
    fn zeros_and_empty() {
        assert_eq!(ExpHistogram::default().quantile(0.5), None);
        let h = from_values(&[0, 0, 0, 5]);
        assert_eq!(h.quantile(0.5), Some(0.0));
        assert!(h.quantile(1.0).unwrap() > 4.0);
    }

    #[test]
    fn delta_between_readings() {
        let before = from_values(&[1000, 1000, 5000]);
        let after = from_values(&[1000, 1000, 5000, 1000, 90_000, 0]);
        let d = after.since(&before);
        assert_eq!(d.count(), 3);
        assert_eq!(d.sum, 91_000);
        assert_eq!(d.zero_count, 1);
        assert_eq!(d.bucket(bucket_index(1000)), 1);
        assert_eq!(d.bucket(bucket_index(5000)), 0);
        assert_eq!(d.bucket(bucket_index(90_000)), 1);
        assert_eq!(d.offset, bucket_index(1000));
        // No change: empty delta.
        assert!(after.since(&after).is_empty());
    }

    #[test]
    fn delta_after_reset_is_the_new_reading() {
        let before = from_values(&[1000; 10]);
        let after = from_values(&[2000; 3]);
        assert_eq!(after.since(&before), after);
    }

    #[test]
    fn from_buckets_matches_from_values() {
        let h = from_values(&[0, 900, 900, 70_000, 5]);
        let reversed: Vec<(i32, u64)> = h.buckets().collect::<Vec<_>>().into_iter().rev().collect();
        let rebuilt = ExpHistogram::from_buckets(h.sum, h.zero_count, reversed);
        assert_eq!(rebuilt, h);
        assert!(ExpHistogram::from_buckets(0, 0, []).is_empty());
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = from_values(&[1000, 8000]);
        a.merge(&from_values(&[10, 8000, 0]));
        assert_eq!(a, from_values(&[1000, 8000, 10, 8000, 0]));
        let mut e = ExpHistogram::default();
        e.merge(&from_values(&[7]));
        assert_eq!(e, from_values(&[7]));
    }
}
