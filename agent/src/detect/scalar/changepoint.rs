//! Change points, one pass: where a series moved to a new mean or spread, located
//! after the fact. The points since the last change (at most `max_segment` of them)
//! are the current segment; at each point the best split of it into two Gaussian
//! segments is found (mean and variance each; prefix sums make it one sweep), and
//! when the split saves more than `penalty × ln(length)` of cost, a change is
//! reported at the split and the segment restarts there. This is binary
//! segmentation run as the data arrive: a change is reported a few points late
//! (`min_segment` at least), but at the row where it happened, which is what a
//! change-point benchmark scores.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Settings of the change-point mode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChangeConfig {
    /// Cost a split must save, per unit of ln(segment length).
    pub penalty: f64,
    /// Fewest points on each side of a split.
    pub min_segment: usize,
    /// Most points kept of the current segment (memory bound).
    pub max_segment: usize,
    /// Whether a change of spread alone counts (else the mean only, with the
    /// segment's pooled variance).
    pub variance: bool,
    /// Mean only, against the noise seen between neighbours (not the segment's
    /// spread, which a trend or a step inflates).
    pub noise: bool,
    /// Segment the steps between neighbours instead of the values: a change of
    /// slope in a trending series (a level step is then a single outlier).
    pub slope: bool,
}

/// The defaults were chosen on half of the Turing Change Point Dataset (README).
impl Default for ChangeConfig {
    fn default() -> Self {
        Self {
            penalty: 48.0,
            min_segment: 3,
            max_segment: 500,
            variance: true,
            noise: false,
            slope: false,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChangePoints {
    /// Index of the next point.
    n: u64,
    /// Index of the current segment's first kept point.
    start: u64,
    segment: VecDeque<f64>,
    /// Typical step between neighbours (a floor for variances: a flat run is not
    /// infinitely certain).
    step: f64,
    prev: Option<f64>,
    /// The last raw value, when segmenting steps.
    #[serde(default)]
    last_raw: Option<f64>,
}

impl ChangePoints {
    /// Learns `x`; returns the index of a change found (a new segment starts there).
    pub fn observe(&mut self, x: f64, c: &ChangeConfig) -> Option<u64> {
        let x = if c.slope {
            let step = x - self.last_raw.unwrap_or(x);
            self.last_raw = Some(x);
            step
        } else {
            x
        };
        if let Some(p) = self.prev {
            let d = (x - p).abs();
            let a = 1.0 / (self.n as f64).clamp(1.0, 200.0);
            self.step += a * (d - self.step);
        }
        self.prev = Some(x);
        self.n += 1;
        self.segment.push_back(x);
        if self.segment.len() > c.max_segment {
            self.segment.pop_front();
            self.start += 1;
        }
        let k = self.best_split(c)?;
        self.segment.drain(..k);
        self.start += k as u64;
        Some(self.start)
    }

    /// The split (count of points before it) whose saving beats the penalty.
    fn best_split(&self, c: &ChangeConfig) -> Option<usize> {
        let n = self.segment.len();
        let m = c.min_segment.max(2);
        if n < 2 * m {
            return None;
        }
        let floor = (self.step * self.step * 0.01).max(1e-12);
        let (mut s1, mut s2) = (0.0, 0.0);
        for &v in &self.segment {
            s1 += v;
            s2 += v * v;
        }
        let var = |k: f64, a: f64, b: f64| ((b - a * a / k) / k).max(floor);
        let whole_var = var(n as f64, s1, s2);
        let whole = n as f64 * whole_var.ln();
        let (mut l1, mut l2) = (0.0, 0.0);
        let mut best = (0.0, 0);
        for (i, &v) in self.segment.iter().enumerate() {
            l1 += v;
            l2 += v * v;
            let k = i + 1;
            if k < m || n - k < m {
                continue;
            }
            let (kl, kr) = (k as f64, (n - k) as f64);
            let saving = if c.noise {
                // Between-segment sum of squares over the neighbours' noise
                // (E|x_i − x_i−1| = 2σ/√π for Gaussian noise).
                let sigma2 = (self.step * std::f64::consts::PI.sqrt() / 2.0)
                    .powi(2)
                    .max(floor);
                let between = l1 * l1 / kl + (s1 - l1).powi(2) / kr - s1 * s1 / n as f64;
                between / sigma2
            } else if c.variance {
                whole - kl * var(kl, l1, l2).ln() - kr * var(kr, s1 - l1, s2 - l2).ln()
            } else {
                // Mean only: between-segment sum of squares over the pooled variance.
                let within = (l2 - l1 * l1 / kl) + ((s2 - l2) - (s1 - l1).powi(2) / kr);
                let pooled = (within / n as f64).max(floor);
                n as f64 * (whole_var / pooled).ln()
            };
            if saving > best.0 {
                best = (saving, k);
            }
        }
        (best.0 > c.penalty * (n as f64).ln()).then_some(best.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::eval::Rng;

    fn changes(values: &[f64], c: &ChangeConfig) -> Vec<u64> {
        let mut d = ChangePoints::default();
        values.iter().filter_map(|&v| d.observe(v, c)).collect()
    }

    #[test]
    fn a_mean_step_is_found_where_it_happened() {
        let mut rng = Rng::new(7);
        let values: Vec<f64> = (0..300)
            .map(|i| if i < 180 { 10.0 } else { 14.0 } + rng.normal())
            .collect();
        let found = changes(&values, &ChangeConfig::default());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].abs_diff(180) <= 2, "{found:?}");
    }

    #[test]
    fn noise_alone_has_no_change_and_memory_is_bounded() {
        let mut rng = Rng::new(3);
        let c = ChangeConfig::default();
        let mut d = ChangePoints::default();
        let mut found = 0;
        for _ in 0..5000 {
            found += d.observe(100.0 + 5.0 * rng.normal(), &c).is_some() as u32;
        }
        assert!(found <= 1, "{found} changes in noise");
        assert!(d.segment.len() <= c.max_segment);
    }

    #[test]
    fn a_change_of_spread_is_found_only_when_asked() {
        let mut rng = Rng::new(11);
        let values: Vec<f64> = (0..400)
            .map(|i| 50.0 + if i < 200 { 1.0 } else { 6.0 } * rng.normal())
            .collect();
        let with = changes(&values, &ChangeConfig::default());
        assert!(with.iter().any(|&p| p.abs_diff(200) <= 5), "{with:?}");
        let without = changes(
            &values,
            &ChangeConfig {
                variance: false,
                ..Default::default()
            },
        );
        assert!(
            !without.iter().any(|&p| p.abs_diff(200) <= 5),
            "{without:?}"
        );
    }
}
