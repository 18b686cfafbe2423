//! The expected value of a series: a slowly following level plus a time-of-day
//! profile, and the typical size of its deviations. Updates are clipped, so that a
//! spike barely moves them; a deviation that persists on one side is adopted as the
//! new level (a deploy that doubled a rate is news once, not for ever).

use serde::{Deserialize, Serialize};

use super::ScalarConfig;

/// Clip residuals at this many scales when learning from them.
const CLIP: f64 = 4.0;
/// A run of deviations beyond this many scales, all on one side, is a candidate shift.
const SHIFT_Z: f64 = 3.0;
const DAY_S: f64 = 86_400.0;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Level {
    n: u64,
    level: f64,
    /// Mean absolute deviation of the residuals (exponentially weighted).
    scale: f64,
    /// Time-of-day profile: deviation of each bin from the level, and visits.
    profile: Vec<f64>,
    visits: Vec<u32>,
    first_time: Option<f64>,
    /// The current one-sided run of large deviations: length, sign and the sum of values.
    run: u32,
    run_sign: i8,
    run_sum: f64,
}

/// What the level says of one point.
#[derive(Clone, Copy, Debug, Default)]
pub struct Expectation {
    pub expected: f64,
    pub scale: f64,
    /// Deviation in scales.
    pub z: f64,
}

impl Level {
    /// Judges `x` at `time` (unix seconds, when the series has real times), then learns it.
    pub fn observe(&mut self, x: f64, time: Option<f64>, c: &ScalarConfig) -> Expectation {
        if self.n == 0 {
            self.level = x;
            self.scale = 0.0;
        }
        // New, or restored (or reloaded) under another `season_bins`: the profile
        // starts again, the level goes on (indexing the old profile would panic).
        if self.profile.len() != c.season_bins as usize {
            self.profile = vec![0.0; c.season_bins as usize];
            self.visits = vec![0; c.season_bins as usize];
        }
        self.n += 1;
        let bin = self.bin(time, c);
        let seasonal = match bin {
            Some(b) if self.season_ready(time, b) => self.profile[b],
            _ => 0.0,
        };
        let expected = self.level + seasonal;
        // A floor keeps a flat series from calling every wiggle infinite.
        let floor = 1e-3 * self.level.abs().max(x.abs()) + 1e-9;
        let scale = self.scale.max(floor);
        let residual = x - expected;
        let z = residual / scale;
        let warm = self.n as f64 <= c.learn_points as f64;
        let alpha = if warm {
            1.0 / self.n as f64
        } else {
            (2f64.ln() / c.level_half_life).min(1.0)
        };
        let clipped = if warm || self.scale == 0.0 {
            residual
        } else {
            residual.clamp(-CLIP * scale, CLIP * scale)
        };
        self.level += alpha * clipped;
        self.scale += alpha
            .max(1.0 / 64.0)
            .min(if warm { 1.0 } else { alpha * 4.0 })
            * (clipped.abs() - self.scale);
        if let Some(b) = bin {
            self.visits[b] = self.visits[b].saturating_add(1);
            let beta = (1.0 / self.visits[b] as f64).max(c.season_rate);
            let dev = (x - self.level).clamp(-CLIP * scale * 3.0, CLIP * scale * 3.0);
            self.profile[b] += beta * (dev - self.profile[b]);
        }
        self.adopt_shift(x, z, warm, c);
        Expectation { expected, scale, z }
    }

    fn bin(&mut self, time: Option<f64>, c: &ScalarConfig) -> Option<usize> {
        let t = time?;
        if c.season_bins == 0 {
            return None;
        }
        self.first_time.get_or_insert(t);
        let of_day = t.rem_euclid(DAY_S) / DAY_S;
        Some(((of_day * c.season_bins as f64) as usize).min(c.season_bins as usize - 1))
    }

    /// The profile is used once two days have been seen, and the bin has been visited.
    fn season_ready(&self, time: Option<f64>, bin: usize) -> bool {
        match (time, self.first_time) {
            (Some(t), Some(first)) => t - first >= 2.0 * DAY_S && self.visits[bin] >= 2,
            _ => false,
        }
    }

    fn adopt_shift(&mut self, x: f64, z: f64, warm: bool, c: &ScalarConfig) {
        if warm || c.shift_after == 0 {
            return;
        }
        let sign = if z > SHIFT_Z {
            1
        } else if z < -SHIFT_Z {
            -1
        } else {
            0
        };
        if sign == 0 || sign != self.run_sign {
            self.run = 0;
            self.run_sum = 0.0;
        }
        self.run_sign = sign;
        if sign == 0 {
            return;
        }
        self.run += 1;
        self.run_sum += x;
        if self.run >= c.shift_after {
            self.level = self.run_sum / self.run as f64;
            self.run = 0;
            self.run_sum = 0.0;
            self.run_sign = 0;
        }
    }
}
