//! Regression detection: every watched latency series is compared, window by window,
//! with a baseline learned from its own history; regressions that persist become
//! alarms, and the alarms of series that shift together become one incident. See
//! `rules` for the test, `series` for windows and hysteresis, `incident` for the
//! grouping, `alarm` for what leaves the detector.

pub mod alarm;
pub mod baseline;
pub mod config;
pub mod corpus;
pub mod drift;
pub mod envelope;
pub mod eval;
pub mod incident;
pub mod replay;
pub mod rules;
pub mod scalar;
pub mod series;
pub mod snapshot;
pub mod soak;
pub mod stats;
#[cfg(test)]
mod storm_tests;

use std::collections::{BTreeMap, HashMap};

pub use alarm::{Alarm, AlarmState, Severity};
pub use config::DetectConfig;
use incident::Incidents;
pub use incident::Topology;
pub use scalar::inputs::ScalarInput;
use scalar::series::ScalarSeries;
use series::{Identity, SeriesState};

use crate::aggregate::ExpHistogram;

/// Series not seen for this many intervals are forgotten (a removed device, a VM gone).
const FORGET_AFTER_INTERVALS: u64 = 10_000;

/// The detector of one agent: the state of every watched series.
pub struct Detector {
    config: DetectConfig,
    node: String,
    series: HashMap<String, SeriesState>,
    incidents: Incidents,
    intervals: u64,
    /// End of the latest interval (unix ns): what "still learning" is judged at.
    now: u64,
    /// Scalar series (rates, means), up to `[detect.scalar] max_series`; saved across
    /// restarts with the rest (`snapshot`).
    scalars: HashMap<String, ScalarSeries>,
    /// Scalar series seen this interval but not watched: over the budget.
    pub scalars_unwatched: u64,
    /// What each stacked device (loop, device-mapper) was last backed by.
    backing: HashMap<String, String>,
    /// Alarms of series that ended since the last interval (their device re-backed),
    /// resolved: they leave with the next update.
    ended: Vec<Alarm>,
}

/// What the detector made of one interval.
#[derive(Debug, Default)]
pub struct DetectOutput {
    /// Incidents opened, updated or resolved this interval (one alarm each).
    pub alarms: Vec<Alarm>,
    /// Incidents open after it.
    pub open: u64,
    /// Series seen with data that are still learning their baseline (not judged).
    pub learning: Vec<String>,
    /// When the last of them ends its learning period (unix ns); a quiet series short
    /// of `baseline_windows` windows by then learns on.
    pub learning_until: Option<u64>,
    /// Windows closed (judged or not) this interval.
    pub windows: u64,
    /// Of those, windows judged (their series past learning).
    pub judged: u64,
}

/// What `nodepulse check` says about the detector: how long a series learns before it
/// is judged (a running agent lists the series still learning in every report).
pub fn learning_statement(config: &DetectConfig) -> String {
    if !config.enabled {
        return "regression detection is off ([detect] enabled = false)".into();
    }
    format!(
        "each series learns its baseline for {} from its first samples, at any interval \
         (and from at least {} normal windows: longer for a quiet series) before it is \
         judged; until then it is listed as learning in every report, with the time its \
         learning ends (`learning` and `learning_until` in JSON, \"detector learning\" in \
         the table)",
        humantime::format_duration(config.learning_period),
        config.baseline_windows
    )
}

/// `family{k=v,…}` with labels in key order.
pub fn series_name(family: &str, labels: &BTreeMap<String, String>) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{family}{{{}}}", labels.join(","))
}

impl Detector {
    /// A detector that groups by time alone (offline replay, tests); see
    /// [`Detector::with_topology`].
    pub fn new(config: DetectConfig, node: &str) -> Self {
        Self::with_topology(config, node, Topology::default())
    }

    /// A detector that also knows which block devices are stacked on which.
    pub fn with_topology(config: DetectConfig, node: &str, topology: Topology) -> Self {
        Self {
            config,
            node: node.to_owned(),
            series: HashMap::new(),
            incidents: Incidents::new(topology),
            intervals: 0,
            now: 0,
            scalars: HashMap::new(),
            scalars_unwatched: 0,
            backing: HashMap::new(),
            ended: Vec::new(),
        }
    }

    /// What the stacked devices are backed by now (`device` → identity, see
    /// `attribution::backing`). A device backed by something else than before is
    /// another device: its series end (an open alarm resolves) and start anew,
    /// learning again. A device missing here (detached, not stacked) keeps what it had.
    pub fn note_backing(&mut self, backing: &BTreeMap<String, String>, now: u64) {
        for (device, identity) in backing {
            let before = self.backing.insert(device.clone(), identity.clone());
            if before.is_none_or(|b| b == *identity) {
                continue;
            }
            // The device's series, and its partitions' (`device.disk`).
            let on = |name: &str| {
                ["device", "device.disk"].iter().any(|key| {
                    [",", "}"]
                        .iter()
                        .any(|end| name.contains(&format!("{key}={device}{end}")))
                })
            };
            let mut ended = Vec::new();
            self.series.retain(|name, s| {
                if !on(name) {
                    return true;
                }
                ended.extend(s.open_alarm().cloned());
                false
            });
            self.scalars.retain(|name, s| {
                if !on(name) {
                    return true;
                }
                ended.extend(s.open_alarm().cloned());
                false
            });
            for mut alarm in ended {
                alarm.resolve(now);
                self.ended.push(alarm);
            }
            self.incidents.forget_device(device);
            tracing::info!(
                device,
                backing = identity,
                "device re-backed: its series start anew"
            );
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
        self.update_with_scalars(now, interval_ns, series, [])
    }

    /// As [`Detector::update`], with the interval's scalar values too: their alarms
    /// join the same incidents.
    pub fn update_with_scalars<'a>(
        &mut self,
        now: u64,
        interval_ns: u64,
        series: impl IntoIterator<Item = (&'a str, BTreeMap<String, String>, &'a ExpHistogram)>,
        scalars: impl IntoIterator<Item = ScalarInput>,
    ) -> DetectOutput {
        self.intervals += 1;
        self.now = now;
        let mut out = DetectOutput::default();
        let mut series_alarms = Vec::new();
        for (family, labels, delta) in series {
            if !self.config.watches(family) || !self.config.judges(&labels) {
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
                out.judged += u64::from(!outcome.learning);
                series_alarms.extend(outcome.alarm);
            }
        }
        self.scalars_unwatched = 0;
        // A scalar point is a cell of `min_window` (see `scalar::window`).
        let cell = self.config.min_window.as_nanos() as u64;
        for input in scalars {
            if !self.config.enabled || !input.value.is_finite() {
                continue;
            }
            let name = series_name(&input.family, &input.labels);
            let budget = self.config.scalar.max_series;
            if !self.scalars.contains_key(&name) && self.scalars.len() >= budget {
                self.scalars_unwatched += 1;
                continue;
            }
            let state = self.scalars.entry(name.clone()).or_default();
            state.last_seen = self.intervals;
            let Some(value) = state.window.add(input.value, now, interval_ns, cell) else {
                continue;
            };
            let who = Identity {
                node: &self.node,
                family: &input.family,
                labels: &input.labels,
                series: &name,
            };
            let time_s = now as f64 / 1e9;
            let (_, alarm) = state.observe(
                &who,
                scalar::series::Reading {
                    unit: input.unit,
                    value,
                    rises_only: input.rises_only,
                },
                now,
                Some(time_s),
                &self.config,
                &self.config.scalar,
            );
            series_alarms.extend(alarm);
        }
        series_alarms.append(&mut self.ended);
        let now_interval = self.intervals;
        let mut forgotten = Vec::new();
        self.scalars.retain(|_, s| {
            let keep = now_interval - s.last_seen < FORGET_AFTER_INTERVALS;
            if !keep && let Some(alarm) = s.open_alarm() {
                let mut gone = alarm.clone();
                gone.resolve(now);
                forgotten.push((String::new(), gone));
            }
            keep
        });
        self.series.retain(|name, s| {
            let keep = now_interval - s.last_seen < FORGET_AFTER_INTERVALS;
            if !keep && let Some(alarm) = s.open_alarm() {
                let mut gone = alarm.clone();
                gone.resolve(now);
                forgotten.push((name.clone(), gone));
            }
            keep
        });
        // A series gone with its alarm open (a removed device) no longer holds its
        // incident open.
        series_alarms.extend(forgotten.into_iter().map(|(_, a)| a));
        out.alarms = self.incidents.absorb(series_alarms, now, &self.config);
        out.open = self.incidents.open_count();
        out.learning = self.learning().map(str::to_owned).collect();
        out.learning.sort();
        out.learning_until = self.learning_until();
        out
    }

    /// Incidents open right now (one alarm each).
    pub fn open_alarms(&self) -> impl Iterator<Item = &Alarm> {
        self.incidents.open()
    }

    /// Series that have had data but are still learning their baseline, scalar
    /// series included.
    pub fn learning(&self) -> impl Iterator<Item = &str> {
        let scalars = self
            .scalars
            .iter()
            .filter(|(_, s)| s.detector.learning(&self.config.scalar))
            .map(|(name, _)| name.as_str());
        self.series
            .iter()
            .filter(|(_, s)| s.has_data() && s.learning(self.now, &self.config))
            .map(|(name, _)| name.as_str())
            .chain(scalars)
    }

    /// When the learning period of the last series still learning ends (unix ns).
    pub fn learning_until(&self) -> Option<u64> {
        // A scalar series learns a number of points, one per `min_window`.
        let cell = self.config.min_window.as_nanos() as u64;
        let scalars = self.scalars.values().filter_map(|s| {
            let left = s.detector.points_to_learn(&self.config.scalar);
            (left > 0).then(|| self.now + left * cell)
        });
        self.series
            .values()
            .filter(|s| s.has_data() && s.learning(self.now, &self.config))
            .filter_map(|s| s.learned_at(&self.config))
            .chain(scalars)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::{series::tests::window, *};

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_loop_device_backed_by_another_file_learns_anew_and_does_not_alarm() {
        let mut d = Detector::new(series::tests::config(), "n");
        let labels = BTreeMap::from([
            ("device".to_owned(), "loop7".to_owned()),
            ("op".to_owned(), "read".to_owned()),
        ]);
        let mut t = 1_800_000_000 * S;
        let file = |f: &str| BTreeMap::from([("loop7".to_owned(), f.to_owned())]);
        let (file_a, file_b) = (
            file("/a.img (inode 254:0/12)"),
            file("/b.img (inode 254:0/13)"),
        );
        let mut step = |d: &mut Detector, backing: &BTreeMap<String, String>, center: i32| {
            t += 10 * S;
            d.note_backing(backing, t);
            let h = window(center);
            d.update(t, 10 * S, [("block.io.latency", labels.clone(), &h)])
        };
        for _ in 0..10 {
            step(&mut d, &file_a, 130);
        }
        assert!(d.learning().next().is_none(), "learned on file A");
        // Detached (no backing reported), then file A again: the same device.
        step(&mut d, &BTreeMap::new(), 130);
        step(&mut d, &file_a, 130);
        assert!(d.learning().next().is_none());
        // File B, far slower: a new series, learning, never alarmed.
        for i in 0..10 {
            let out = step(&mut d, &file_b, 140);
            assert!(out.alarms.is_empty(), "{:?}", out.alarms);
            assert_eq!(d.learning().count(), usize::from(i < 4), "window {i}");
        }
        // Learned on B: a further slowdown of B alarms as before.
        step(&mut d, &file_b, 150);
        let out = step(&mut d, &file_b, 150);
        assert_eq!(out.alarms.len(), 1, "{:?}", out.alarms);
    }

    /// On the clock's grid every series' window closes in the same report: a CPU storm
    /// that slows a loop device, a cgroup's run queue and the node's run queue at once
    /// opens their alarms together, and they must be one incident, whatever the order
    /// the series come in.
    #[test]
    fn a_storm_whose_windows_close_together_on_the_grid_is_one_incident() {
        let config = DetectConfig {
            align_windows: true,
            min_window: std::time::Duration::from_secs(30),
            ..series::tests::config()
        };
        let mut d = Detector::new(config, "n");
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let series = [
            (
                "block.io.latency",
                labels(&[("device", "loop4"), ("op", "read")]),
            ),
            (
                "cgroup.runqueue.latency",
                labels(&[("cgroup", "/npsoak-fio-a")]),
            ),
            ("sched.runqueue.latency", labels(&[])),
        ];
        let mut t = 1_800_000_000 * S / (30 * S) * (30 * S);
        let mut opened = Vec::new();
        for i in 0..60 {
            t += 10 * S;
            let h = window(if i < 45 { 130 } else { 140 });
            let out = d.update(t, 10 * S, series.iter().map(|(f, l)| (*f, l.clone(), &h)));
            opened.extend(
                out.alarms
                    .into_iter()
                    .filter(|a| a.state == AlarmState::Open),
            );
        }
        assert_eq!(opened.len(), 1, "{opened:#?}");
        assert_eq!(opened[0].family, "sched.runqueue.latency");
        assert_eq!(opened[0].related.len(), 3, "{:?}", opened[0].related);
    }

    #[test]
    fn an_open_alarm_on_a_re_backed_device_resolves() {
        let mut d = Detector::new(series::tests::config(), "n");
        let labels = BTreeMap::from([("device".to_owned(), "loop7".to_owned())]);
        let backing = |f: &str| BTreeMap::from([("loop7".to_owned(), f.to_owned())]);
        let mut t = 1_800_000_000 * S;
        let mut opened = None;
        for i in 0..9 {
            t += 10 * S;
            let h = window(if i < 6 { 130 } else { 145 });
            d.note_backing(&backing("/a.img"), t);
            let out = d.update(t, 10 * S, [("block.io.latency", labels.clone(), &h)]);
            opened = opened.or(out.alarms.into_iter().find(|a| a.state == AlarmState::Open));
        }
        let opened = opened.expect("the slowdown on file A alarmed");
        d.note_backing(&backing("/b.img"), t);
        t += 10 * S;
        let h = window(145);
        let out = d.update(t, 10 * S, [("block.io.latency", labels.clone(), &h)]);
        assert!(
            out.alarms
                .iter()
                .any(|a| a.id == opened.id && a.state == AlarmState::Resolved),
            "{:?}",
            out.alarms
        );
        assert_eq!(out.open, 0);
    }
}
