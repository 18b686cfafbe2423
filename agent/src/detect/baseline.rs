//! A series' reference distribution: an exponentially weighted average of the bucket
//! fractions of its normal windows. Each window weighs the same whatever its sample
//! count (a busy minute does not drown a quiet hour), windows judged regressed never
//! enter it, and it learns nothing while an alarm is open: the regression it is there
//! to catch cannot become its own reference.

use serde::Serialize;

use crate::aggregate::{ExpHistogram, histogram::bucket_lower};

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Baseline {
    pub zero: f64,
    /// OTLP index of `mass[0]`.
    pub offset: i32,
    /// Fraction of samples per bucket (with `zero`, sums to 1).
    pub mass: Vec<f64>,
    /// Normal windows learned so far.
    pub windows: u32,
    /// Effective number of samples behind the fractions, for the tests' uncertainty.
    pub effective_samples: f64,
    /// Per rule (p50, p90, p99): how much more windows scatter around the baseline
    /// than independent samples would (mean squared z-score of the count above the
    /// rule's boundary; 1 = sampling noise only). A real node's windows are not
    /// independent draws: a shared disk, a neighbour, the page cache move whole
    /// windows together. The tests divide their sample counts by it.
    pub dispersion: [f64; 3],
    /// Windows behind `dispersion`.
    pub spread_windows: u32,
    /// Per rule: the weighted mean |z-score| behind `dispersion`.
    #[serde(default)]
    mean_abs_z: [f64; 3],
    #[serde(default)]
    mean_window_samples: f64,
    /// Mean sample count of the windows behind `dispersion`.
    #[serde(default)]
    spread_samples: f64,
    /// How high each rule's quantile has gone in the windows of the horizon: the
    /// node's ordinary excursions, which a window must leave to be a regression.
    #[serde(default)]
    pub envelope: super::envelope::Envelope,
}

impl Baseline {
    pub fn is_empty(&self) -> bool {
        self.windows == 0
    }

    /// Blends one normal window in; `half_life` in windows. The first windows are
    /// averaged with equal weight, so the start does not hang on the very first one.
    pub fn learn(&mut self, window: &ExpHistogram, half_life: f64) {
        let n = window.count();
        if n == 0 {
            return;
        }
        let decay = 0.5f64.powf(1.0 / half_life);
        let weight = (1.0 - decay).max(1.0 / f64::from(self.windows + 1));
        let lo = if self.mass.is_empty() {
            window.offset
        } else {
            self.offset.min(window.offset)
        };
        let hi =
            (self.offset + self.mass.len() as i32).max(window.offset + window.counts.len() as i32);
        let mut mass = vec![0.0; (hi - lo).max(0) as usize];
        for (i, m) in self.mass.iter().enumerate() {
            mass[(self.offset - lo) as usize + i] = m * (1.0 - weight);
        }
        for (i, c) in window.buckets() {
            mass[(i - lo) as usize] += weight * c as f64 / n as f64;
        }
        self.zero = self.zero * (1.0 - weight) + weight * window.zero_count as f64 / n as f64;
        self.offset = lo;
        self.mass = mass;
        self.trim();
        self.windows += 1;
        self.mean_window_samples = self.mean_window_samples * (1.0 - weight) + weight * n as f64;
        // An EWMA averages about (1 + d) / (1 - d) windows once warmed up.
        let windows = f64::from(self.windows).min((1.0 + decay) / (1.0 - decay));
        self.effective_samples = self.mean_window_samples * windows;
    }

    /// Notes how far one judged window lies from the baseline, for `dispersion`. The
    /// expected variance counts both the window's sampling noise and the baseline's
    /// own. The scale is estimated from the mean |z| (for normal scatter, E|z| =
    /// sqrt(2/pi) sd), which one extreme window moves linearly, not quadratically: a
    /// regression's first window, not yet known to be one, enters it too, and must not
    /// teach the baseline that anything goes.
    pub fn note_spread(&mut self, window: &ExpHistogram, half_life: f64) {
        const MAX_ABS_Z: f64 = 10.0;
        let n = window.count() as f64;
        if self.is_empty() || n == 0.0 {
            return;
        }
        let decay = 0.5f64.powf(1.0 / half_life);
        let weight = (1.0 - decay).max(1.0 / f64::from(self.spread_windows + 1));
        for (slot, (q, _)) in super::rules::RULES.iter().enumerate() {
            let boundary = self.bucket_of(*q);
            let share = match boundary {
                Some(b) => self.mass_above(b),
                None => 1.0 - self.zero,
            };
            let variance = n * share * (1.0 - share) * (1.0 + n / self.effective_samples.max(1.0));
            if n * share < 5.0 || variance <= 0.0 {
                continue;
            }
            let k = count_above(window, boundary) as f64;
            let abs_z = ((k - n * share).abs() / variance.sqrt()).min(MAX_ABS_Z);
            let old = if self.spread_windows == 0 {
                (2.0 / std::f64::consts::PI).sqrt()
            } else {
                self.mean_abs_z[slot]
            };
            self.mean_abs_z[slot] = old * (1.0 - weight) + weight * abs_z;
            self.dispersion[slot] =
                (self.mean_abs_z[slot] * (std::f64::consts::PI / 2.0).sqrt()).powi(2);
        }
        // Zero in a baseline saved before windows' sizes were kept: started from the
        // first window, not averaged up from zero (which would inflate φ a hundredfold
        // for a half-life after an upgrade).
        self.spread_samples = if self.spread_samples > 0.0 {
            self.spread_samples * (1.0 - weight) + weight * n
        } else {
            n
        };
        self.spread_windows += 1;
    }

    /// The dispersion of rule `slot` for a window of `n` samples. What scatters real
    /// windows is their share above the boundary moving from window to window (a
    /// neighbour, the page cache), which adds a variance that grows with n² where
    /// sampling noise grows with n: the factor grows in proportion to the window's
    /// size (1 + (φ − 1)·n/n̄, n̄ the windows it was learned on). Applied at a learned
    /// window's size to a thin one (a squeezed cgroup's run queue: 450 samples in 30 s
    /// against 2000 before), φ hid a tenfold tail.
    pub fn dispersion_at(&self, slot: usize, n: f64) -> f64 {
        let phi = self.dispersion_of(slot);
        if phi <= 1.0 || self.spread_samples <= 0.0 {
            return phi;
        }
        (1.0 + (phi - 1.0) * n / self.spread_samples).clamp(1.0, MAX_DISPERSION)
    }

    /// The dispersion factor of rule `slot`: 1 until it clearly exceeds sampling
    /// noise. Independent samples keep the estimate below 2 (the chi-square noise of
    /// its average, and the bias of a boundary chosen from the baseline itself); a
    /// busy shared node's p50 rule runs into the tens.
    pub fn dispersion_of(&self, slot: usize) -> f64 {
        const NOISE: f64 = 2.0;
        if self.spread_windows == 0 || self.dispersion[slot] < NOISE {
            1.0
        } else {
            self.dispersion[slot]
        }
    }

    /// Drops buckets whose mass has decayed to nothing, so the vector stays short.
    fn trim(&mut self) {
        const NEGLIGIBLE: f64 = 1e-9;
        let first = self.mass.iter().position(|&m| m > NEGLIGIBLE);
        let Some(first) = first else {
            self.mass.clear();
            return;
        };
        let last = self
            .mass
            .iter()
            .rposition(|&m| m > NEGLIGIBLE)
            .unwrap_or(first);
        self.mass.truncate(last + 1);
        self.mass.drain(..first);
        self.offset += first as i32;
    }

    /// OTLP index of the bucket holding quantile `q` (`None`: it is in the zero bucket).
    pub fn bucket_of(&self, q: f64) -> Option<i32> {
        let mut seen = self.zero;
        if seen >= q {
            return None;
        }
        for (i, m) in self.mass.iter().enumerate() {
            seen += m;
            if seen >= q - 1e-12 {
                return Some(self.offset + i as i32);
            }
        }
        self.mass
            .len()
            .checked_sub(1)
            .map(|i| self.offset + i as i32)
    }

    /// Fraction of the baseline strictly above bucket `index`.
    pub fn mass_above(&self, index: i32) -> f64 {
        let from = (index + 1 - self.offset).max(0) as usize;
        self.mass.iter().skip(from).sum()
    }

    /// Quantile `q` in ns, interpolated on the log scale inside its bucket (as
    /// `ExpHistogram::quantile` does for counts).
    pub fn quantile(&self, q: f64) -> f64 {
        let mut seen = self.zero;
        if seen >= q {
            return 0.0;
        }
        for (i, &m) in self.mass.iter().enumerate() {
            if m > 0.0 && seen + m >= q {
                let fraction = ((q - seen) / m).clamp(0.0, 1.0);
                let index = self.offset + i as i32;
                let lo = bucket_lower(index);
                return lo * (bucket_lower(index + 1) / lo).powf(fraction);
            }
            seen += m;
        }
        bucket_lower(self.offset + self.mass.len() as i32)
    }
}

/// The largest dispersion factor applied (the z-scores behind it are capped too).
const MAX_DISPERSION: f64 = 100.0;

/// Samples of `h` strictly above bucket `index` (`None`: above the zero bucket).
pub fn count_above(h: &ExpHistogram, index: Option<i32>) -> u64 {
    match index {
        None => h.count() - h.zero_count,
        Some(index) => h
            .buckets()
            .filter(|&(i, _)| i > index)
            .map(|(_, c)| c)
            .sum(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn hist(buckets: &[(i32, u64)]) -> ExpHistogram {
        ExpHistogram::from_buckets(0, 0, buckets.iter().copied())
    }

    #[test]
    fn first_windows_are_averaged_then_it_decays() {
        let mut b = Baseline::default();
        b.learn(&hist(&[(100, 10)]), 100.0);
        b.learn(&hist(&[(110, 30)]), 100.0);
        assert_eq!(b.windows, 2);
        assert!((b.mass_above(100) - 0.5).abs() < 1e-12, "{b:?}");
        assert_eq!(b.bucket_of(0.4), Some(100));
        assert_eq!(b.bucket_of(0.6), Some(110));
        // Quantile inside bucket 100 stays within its bounds.
        let q = b.quantile(0.25);
        assert!(q > bucket_lower(100) && q <= bucket_lower(101), "{q}");
    }

    /// Windows of `n` samples whose share above bucket 100 alternates between 5 % and
    /// 15 %: a node whose windows scatter far beyond sampling noise.
    pub(in crate::detect) fn scattered(n: u64) -> Baseline {
        let mut b = Baseline::default();
        for i in 0..40 {
            let above = if i % 2 == 0 { n / 20 } else { n * 3 / 20 };
            let w = hist(&[(100, n - above), (130, above)]);
            b.note_spread(&w, 120.0);
            b.learn(&w, 120.0);
        }
        b
    }

    #[test]
    fn dispersion_grows_with_the_window_it_is_applied_to() {
        let b = scattered(2_000);
        let phi = b.dispersion_of(1);
        assert!(phi > 20.0, "{b:?}");
        // At the size it was learned on, the learned factor; at a fifth of it, about a
        // fifth of the excess; never below 1.
        assert!(
            (b.dispersion_at(1, 2_000.0) - phi).abs() < 0.05 * phi,
            "{phi}"
        );
        let thin = b.dispersion_at(1, 400.0);
        assert!(
            (thin - (1.0 + (phi - 1.0) / 5.0)).abs() < 0.05 * phi,
            "{thin} {phi}"
        );
        assert_eq!(b.dispersion_at(1, 0.0), 1.0);
        assert!(b.dispersion_at(1, 1e9) <= MAX_DISPERSION);
    }

    #[test]
    fn a_baseline_saved_without_window_sizes_keeps_its_dispersion_after_a_restore() {
        let learned = scattered(400);
        let phi = learned.dispersion_of(1);
        // As restored from a state file written before window sizes were kept.
        let mut restored = learned.clone();
        restored.spread_samples = 0.0;
        let w = hist(&[(100, 380), (130, 20)]);
        restored.note_spread(&w, 120.0);
        // At the size it was learned on, the learned factor (not up to 100).
        let (now, at_full) = (restored.dispersion_of(1), restored.dispersion_at(1, 400.0));
        assert!(
            (at_full - now).abs() < 0.1 * now,
            "φ at a full window {at_full}, learned {phi} then {now}: inflated by the missing size"
        );
    }

    #[test]
    fn effective_samples_grow_with_windows_up_to_the_half_life() {
        let mut b = Baseline::default();
        for _ in 0..1000 {
            b.learn(&hist(&[(100, 100)]), 10.0);
        }
        // d = 0.5^(1/10) ≈ 0.933; (1+d)/(1-d) ≈ 29 windows of 100 samples.
        assert!(
            (b.effective_samples - 2_900.0).abs() < 100.0,
            "{}",
            b.effective_samples
        );
    }

    #[test]
    fn old_buckets_decay_away() {
        let mut b = Baseline::default();
        b.learn(&hist(&[(50, 100)]), 2.0);
        for _ in 0..200 {
            b.learn(&hist(&[(120, 100)]), 2.0);
        }
        assert_eq!(b.offset, 120);
        assert_eq!(b.mass.len(), 1);
    }

    #[test]
    fn count_above_a_boundary() {
        let h = ExpHistogram::from_buckets(0, 3, [(10, 5), (11, 7), (12, 1)]);
        assert_eq!(count_above(&h, Some(10)), 8);
        assert_eq!(count_above(&h, Some(12)), 0);
        assert_eq!(count_above(&h, None), 13);
    }
}
