//! Anomalies in single numbers per interval (rates, utilisation, gauges, counts): a
//! one-pass detector with bounded memory per series that scores every point in
//! [0, 1]. Three parts, each switchable for the ablation:
//! - `level`: the expected value (a robust level plus a time-of-day profile) and the
//!   deviation from it in typical deviations; a shift that persists is adopted;
//! - `context`: novelty of the recent shape against the contexts the series made;
//! - `likelihood`: how unusual the recent surprise is against the series' own
//!   history of surprise, on a log scale.
//!
//! After a point scores past `fire`, the next `refractory` points are damped: one
//! anomaly is reported once, at its start. `series` turns scores into alarms with the
//! same lifecycle as the latency detector's.

pub mod changepoint;
pub mod config;
pub mod context;
pub mod inputs;
pub mod level;
pub mod likelihood;
pub mod series;
pub mod window;

use serde::{Deserialize, Serialize};

pub use config::ScalarConfig;
use context::Context;
use level::Level;
use likelihood::Likelihood;

/// The state of one scalar series.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScalarDetector {
    n: u64,
    level: Level,
    context: Context,
    likelihood: Likelihood,
    since_fire: u64,
}

/// What the detector made of one point.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Point {
    /// The anomaly score in [0, 1] (damped after a reported anomaly).
    pub score: f64,
    /// The score before damping: how anomalous the recent points are.
    pub undamped: f64,
    pub value: f64,
    pub expected: f64,
    /// Typical deviation from `expected`.
    pub scale: f64,
    /// Deviation in typical deviations.
    pub z: f64,
    /// Novelty of the recent shape, in [0, 1].
    pub novelty: f64,
}

impl ScalarDetector {
    /// A detector told the series' bounds in advance (NAB gives every detector its
    /// file's minimum and maximum); the context part quantises against them.
    pub fn with_range(lo: f64, hi: f64) -> Self {
        let mut d = Self::default();
        d.context.set_range(lo, hi);
        d
    }

    /// Whether the series is still learning (scores 0).
    pub fn learning(&self, c: &ScalarConfig) -> bool {
        self.points_to_learn(c) > 0
    }

    /// Points left before the series is scored.
    pub fn points_to_learn(&self, c: &ScalarConfig) -> u64 {
        (c.learn_points as u64 + 1).saturating_sub(self.n)
    }

    /// Scores `value` (at `time`, unix seconds, when the series has clock times: the
    /// time-of-day profile needs them) and learns it.
    pub fn observe(&mut self, value: f64, time: Option<f64>, c: &ScalarConfig) -> Point {
        self.n += 1;
        let e = self.level.observe(value, time, c);
        let novelty = if c.use_context {
            self.context.observe(value, c)
        } else {
            0.0
        };
        let deviation = if c.use_level {
            // 0 within a typical deviation, 0.5 at `deviation_half` of them, toward 1.
            let z = (e.z.abs() - 1.0).max(0.0);
            z / (z + c.deviation_half)
        } else {
            0.0
        };
        let raw = c.context_weight * novelty + (1.0 - c.context_weight) * deviation;
        let raw = if c.use_level && c.use_context {
            raw
        } else {
            deviation.max(novelty)
        };
        let undamped = if c.use_likelihood {
            self.likelihood.observe(raw, c)
        } else {
            raw
        };
        let undamped = if self.learning(c) { 0.0 } else { undamped };
        self.since_fire = self.since_fire.saturating_add(1);
        let score = if c.refractory > 0 && self.since_fire <= c.refractory as u64 {
            undamped * c.damping
        } else {
            if undamped >= c.fire {
                self.since_fire = 0;
            }
            undamped
        };
        Point {
            score,
            undamped,
            value,
            expected: e.expected,
            scale: e.scale,
            z: e.z,
            novelty,
        }
    }
}

#[cfg(test)]
mod tests;
