//! `[detect.scalar]`: the scalar detector's settings. The defaults were tuned on half
//! of the Numenta Anomaly Benchmark's files and checked on the other half (README:
//! "Anomalies in scalar series").

use serde::Deserialize;

use crate::settings::ConfigError;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalarConfig {
    /// Which families are watched as numbers per interval, by family name: the rate
    /// (events per second) of histogram families, the rate of counters, and the
    /// interval mean of histogram families (queue depth, I/O size). `"*"` watches
    /// every family of that kind (for means: every family that is not a latency,
    /// whose distribution the latency detector already judges); empty, none.
    pub rate_families: Vec<String>,
    pub counter_families: Vec<String>,
    pub mean_families: Vec<String>,
    /// Most scalar series watched at once; series beyond it are not watched (and
    /// counted as such in the report), so memory stays bounded.
    pub max_series: usize,
    /// Points a series learns from before it is scored. In the agent a point is a
    /// window of `[detect] min_window` (30 s: 150 points are 75 minutes); in a CSV
    /// replay, a row.
    pub learn_points: u32,
    /// Half-life of the level, in points.
    pub level_half_life: f64,
    /// Bins of the time-of-day profile (0: none) and how fast each learns.
    pub season_bins: u32,
    pub season_rate: f64,
    /// Points on one side beyond 3 typical deviations after which a shift is adopted
    /// as the new level (0: never).
    pub shift_after: u32,
    /// Deviation (in typical deviations beyond the first) that counts half.
    pub deviation_half: f64,
    /// Contexts: values per context, levels of the range, contexts remembered, and how
    /// fast the range shrinks back after an outlier (share per point).
    pub context_len: usize,
    pub levels: u32,
    pub context_capacity: usize,
    pub range_decay: f64,
    /// Weight of novelty against deviation in the raw surprise.
    pub context_weight: f64,
    /// Points in the short-term mean of surprise, half-life of its long-run
    /// distribution (points) and the least spread assumed of it.
    pub short_window: usize,
    pub surprise_half_life: f64,
    pub min_spread: f64,
    /// A single point is judged against the raw surprise's distribution this many
    /// standard deviations less strictly than the mean is (a point is noisier).
    pub point_margin: f64,
    /// A point scoring `fire` or more damps the next `refractory` points' scores by
    /// `damping`: one anomaly is reported once.
    pub fire: f64,
    pub refractory: u32,
    pub damping: f64,
    /// Score from which a point is anomalous for alarms; `raise_after` and
    /// `clear_after` of [detect] count points.
    pub alarm_score: f64,
    /// Parts switched off for the ablation.
    pub use_level: bool,
    pub use_context: bool,
    pub use_likelihood: bool,
}

impl Default for ScalarConfig {
    fn default() -> Self {
        Self {
            // Faults only: I/O errors and retransmits. Rates, means, busy time and the
            // agent's own accounting move with the workload on a shared node (on a
            // steady soak recording they raised 16 alarms in 40 minutes), so they are
            // watched where the operator names them (README: "Anomalies in numbers
            // per interval").
            rate_families: Vec::new(),
            counter_families: vec!["block.io.errors".into(), "net.tcp.retransmits".into()],
            mean_families: Vec::new(),
            max_series: 256,
            learn_points: 150,
            level_half_life: 1000.0,
            season_bins: 48,
            season_rate: 0.1,
            shift_after: 30,
            deviation_half: 4.0,
            context_len: 6,
            levels: 12,
            context_capacity: 3000,
            range_decay: 2e-4,
            context_weight: 0.1,
            short_window: 10,
            surprise_half_life: 1000.0,
            min_spread: 0.02,
            point_margin: 3.0,
            fire: 0.35,
            refractory: 150,
            damping: 0.3,
            alarm_score: 0.5,
            use_level: true,
            use_context: true,
            use_likelihood: true,
        }
    }
}

fn invalid(key: &'static str, problem: String) -> ConfigError {
    ConfigError::Invalid { key, problem }
}

impl ScalarConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let unit = [
            ("detect.scalar.season_rate", self.season_rate),
            ("detect.scalar.range_decay", self.range_decay),
            ("detect.scalar.context_weight", self.context_weight),
            ("detect.scalar.fire", self.fire),
            ("detect.scalar.damping", self.damping),
            ("detect.scalar.alarm_score", self.alarm_score),
            ("detect.scalar.min_spread", self.min_spread),
        ];
        for (key, v) in unit {
            if !(0.0..=1.0).contains(&v) {
                return Err(invalid(key, format!("must be between 0 and 1, got {v}")));
            }
        }
        let positive = [
            ("detect.scalar.level_half_life", self.level_half_life),
            ("detect.scalar.surprise_half_life", self.surprise_half_life),
            ("detect.scalar.deviation_half", self.deviation_half),
        ];
        for (key, v) in positive {
            if !(v > 0.0 && v <= 1e7) {
                return Err(invalid(key, format!("must be above 0 (points), got {v}")));
            }
        }
        let sizes = [
            ("detect.scalar.context_len", self.context_len, 1, 16),
            ("detect.scalar.levels", self.levels as usize, 2, 255),
            (
                "detect.scalar.context_capacity",
                self.context_capacity,
                16,
                1_000_000,
            ),
            ("detect.scalar.short_window", self.short_window, 1, 10_000),
            ("detect.scalar.max_series", self.max_series, 0, 1_000_000),
            (
                "detect.scalar.season_bins",
                self.season_bins as usize,
                0,
                1440,
            ),
        ];
        for (key, v, lo, hi) in sizes {
            if !(lo..=hi).contains(&v) {
                return Err(invalid(
                    key,
                    format!("must be between {lo} and {hi}, got {v}"),
                ));
            }
        }
        Ok(())
    }

    /// Whether `family` (a histogram's rate, a counter or a gauge) is watched.
    pub fn watches(list: &[String], family: &str) -> bool {
        list.iter().any(|f| f == "*" || f == family)
    }

    /// Whether the interval mean of histogram family `family` (of `unit`) is watched.
    pub fn watches_mean(&self, family: &str, unit: &str) -> bool {
        self.mean_families
            .iter()
            .any(|f| f == family || (f == "*" && unit != "ns"))
    }
}
