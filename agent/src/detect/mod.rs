//! Regression detection: every watched latency series is compared, window by window,
//! with a baseline learned from its own history; regressions that persist become
//! alarms. See `rules` for the test, `series` for windows and hysteresis, `alarm` for
//! what leaves the detector.

pub mod alarm;
pub mod baseline;
pub mod config;
pub mod eval;
pub mod replay;
pub mod rules;
pub mod series;
pub mod stats;

use std::collections::{BTreeMap, HashMap};

pub use alarm::{Alarm, AlarmState, Severity};
pub use config::DetectConfig;
use series::{Identity, SeriesState};

use crate::aggregate::ExpHistogram;

/// Series not seen for this many intervals are forgotten (a removed device, a VM gone).
const FORGET_AFTER_INTERVALS: u64 = 10_000;

/// The detector of one agent: the state of every watched series.
pub struct Detector {
    config: DetectConfig,
    node: String,
    series: HashMap<String, SeriesState>,
    intervals: u64,
}

/// What the detector made of one interval.
#[derive(Debug, Default)]
pub struct DetectOutput {
    /// Alarms opened, updated or resolved this interval.
    pub alarms: Vec<Alarm>,
    /// Alarms open after it.
    pub open: u64,
    /// Windows closed (judged or not) this interval.
    pub windows: u64,
}

/// `family{k=v,…}` with labels in key order.
pub fn series_name(family: &str, labels: &BTreeMap<String, String>) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{family}{{{}}}", labels.join(","))
}

impl Detector {
    pub fn new(config: DetectConfig, node: &str) -> Self {
        Self {
            config,
            node: node.to_owned(),
            series: HashMap::new(),
            intervals: 0,
        }
    }

    pub fn config(&self) -> &DetectConfig {
        &self.config
    }

    /// Feeds one interval ending at `now` (unix ns): `(family, labels, delta)` per series.
    pub fn update<'a>(
        &mut self,
        now: u64,
        interval_ns: u64,
        series: impl IntoIterator<Item = (&'a str, BTreeMap<String, String>, &'a ExpHistogram)>,
    ) -> DetectOutput {
        self.intervals += 1;
        let mut out = DetectOutput::default();
        for (family, labels, delta) in series {
            if !self.config.watches(family) {
                continue;
            }
            let name = series_name(family, &labels);
            let state = self.series.entry(name.clone()).or_default();
            state.last_seen = self.intervals;
            let who = Identity {
                node: &self.node,
                family,
                labels: &labels,
                series: &name,
            };
            if let Some(outcome) = state.observe(&who, delta, now, interval_ns, &self.config) {
                out.windows += 1;
                out.alarms.extend(outcome.alarm);
            }
        }
        let now_interval = self.intervals;
        self.series
            .retain(|_, s| now_interval - s.last_seen < FORGET_AFTER_INTERVALS);
        out.open = self
            .series
            .values()
            .filter(|s| s.open_alarm().is_some())
            .count() as u64;
        out
    }

    /// Alarms open right now.
    pub fn open_alarms(&self) -> impl Iterator<Item = &Alarm> {
        self.series.values().filter_map(|s| s.open_alarm())
    }
}
