//! The detector's state as saved in the state directory: every series' window in
//! progress, baseline and alarm, and the open incidents. A restarted agent goes on
//! judging against the baselines it had learned (instead of learning again for
//! `baseline_windows` windows) and keeps its open alarms open under the same ids.
//! The scalar series (`super::scalar`) are saved too, a few KB each, up to
//! `[detect.scalar] max_series`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Detector, incident::Incident, scalar::series::ScalarSeries, series::SeriesState};

/// Bumped when a saved detector state can no longer be read as it was written.
pub const FORMAT: u32 = 1;

#[derive(Serialize)]
struct SnapshotRef<'a> {
    format: u32,
    intervals: u64,
    now: u64,
    series: &'a HashMap<String, SeriesState>,
    incidents: &'a [Incident],
    scalars: &'a HashMap<String, ScalarSeries>,
}

#[derive(Deserialize)]
struct Snapshot {
    format: u32,
    intervals: u64,
    /// End of the last interval before the save (absent in older states).
    #[serde(default)]
    now: u64,
    series: HashMap<String, SeriesState>,
    incidents: Vec<Incident>,
    /// Absent in states saved before scalar series were.
    #[serde(default)]
    scalars: HashMap<String, ScalarSeries>,
}

/// What a restore brought back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub series: usize,
    /// Series whose baseline had learned enough to be judged.
    pub judged: usize,
    pub open_alarms: Vec<String>,
    /// Scalar series, and how many of them had learned enough to be scored.
    pub scalars: usize,
    pub scalars_judged: usize,
}

/// The series a saved detector state lists as still learning, by name, and when the
/// last of them ends its learning period (unix ns), as of the save.
pub fn learning_in(
    saved: serde_json::Value,
    config: &super::DetectConfig,
) -> Result<(Vec<String>, Option<u64>), String> {
    let mut detector = Detector::new(config.clone(), "");
    detector.restore(saved)?;
    let mut names: Vec<String> = detector.learning().map(str::to_owned).collect();
    names.sort();
    Ok((names, detector.learning_until()))
}

impl Detector {
    /// The state to save.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::to_value(SnapshotRef {
            format: FORMAT,
            intervals: self.intervals,
            now: self.now,
            series: &self.series,
            incidents: self.incidents.snapshot(),
            scalars: &self.scalars,
        })
        .unwrap_or(serde_json::Value::Null)
    }

    /// A new configuration (SIGHUP) for the series already known: their windows,
    /// baselines and alarms go on under it.
    pub fn set_config(&mut self, config: super::DetectConfig) {
        self.config = config;
    }

    /// Takes up a saved state in place of this detector's (a fresh one's).
    pub fn restore(&mut self, saved: serde_json::Value) -> Result<Restored, String> {
        let snapshot: Snapshot = serde_json::from_value(saved).map_err(|e| e.to_string())?;
        if snapshot.format != FORMAT {
            return Err(format!(
                "saved in format {}, this version reads {FORMAT}",
                snapshot.format
            ));
        }
        self.intervals = snapshot.intervals;
        self.now = snapshot.now;
        self.series = snapshot.series;
        self.incidents.restore(snapshot.incidents);
        // A budget lowered since: the series seen last are kept.
        let mut scalars: Vec<_> = snapshot.scalars.into_iter().collect();
        scalars.sort_by_key(|(name, s)| (std::cmp::Reverse(s.last_seen), name.clone()));
        scalars.truncate(self.config.scalar.max_series);
        self.scalars = scalars.into_iter().collect();
        let scalars_judged = self
            .scalars
            .values()
            .filter(|s| !s.detector.learning(&self.config.scalar))
            .count();
        let judged = self
            .series
            .values()
            .filter(|s| !s.learning(self.now, &self.config))
            .count();
        Ok(Restored {
            series: self.series.len(),
            judged,
            open_alarms: self.open_alarms().map(|a| a.id.clone()).collect(),
            scalars: self.scalars.len(),
            scalars_judged,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        aggregate::ExpHistogram,
        detect::{
            AlarmState,
            series::tests::{config, window},
        },
    };

    const S: u64 = 1_000_000_000;

    fn feed(d: &mut Detector, t: &mut u64, h: &ExpHistogram) -> Vec<crate::detect::Alarm> {
        *t += 10 * S;
        let labels = BTreeMap::from([("device".to_owned(), "sdx".to_owned())]);
        d.update(*t, 10 * S, [("block.io.latency", labels, h)])
            .alarms
    }

    /// Learning is a time from a series' first samples, whatever the interval; the
    /// detector, and a saved state read back (`nodepulse check`), say until when.
    #[test]
    fn a_series_learns_for_the_learning_period_and_says_until_when() {
        let config = crate::detect::DetectConfig {
            learning_period: std::time::Duration::from_secs(300),
            ..config()
        };
        for interval_s in [1, 10] {
            let mut d = Detector::new(config.clone(), "n");
            let labels = BTreeMap::from([("device".to_owned(), "sdx".to_owned())]);
            let start = 1_000 * S;
            let mut t = start;
            let mut judged_at = None;
            while judged_at.is_none() && t < start + 600 * S {
                t += interval_s * S;
                let h = ExpHistogram::from_buckets(0, 0, [(130, 100 * interval_s)]);
                let out = d.update(
                    t,
                    interval_s * S,
                    [("block.io.latency", labels.clone(), &h)],
                );
                if out.judged > 0 {
                    judged_at = Some(t);
                } else {
                    assert_eq!(out.learning, ["block.io.latency{device=sdx}"], "{t}");
                    assert_eq!(out.learning_until, Some(start + 300 * S));
                    let (names, until) = learning_in(d.snapshot(), &config).unwrap();
                    assert_eq!((names.len(), until), (1, Some(start + 300 * S)));
                }
            }
            // The first window closing after the 5 minutes is judged (windows of 10 s).
            let judged_at = judged_at.expect("judged");
            assert!(
                (start + 300 * S..=start + 310 * S).contains(&judged_at),
                "{interval_s} s: judged {} s in",
                (judged_at - start) / S
            );
            assert!(d.learning_until().is_none());
            assert!(learning_in(d.snapshot(), &config).unwrap().0.is_empty());
        }
    }

    #[test]
    fn a_restored_detector_keeps_its_baseline_and_its_open_alarm() {
        let mut t = 1_000 * S;
        let mut before = Detector::new(config(), "n");
        for _ in 0..6 {
            feed(&mut before, &mut t, &window(130));
        }
        feed(&mut before, &mut t, &window(138));
        let opened = feed(&mut before, &mut t, &window(138));
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].state, AlarmState::Open);

        // Through text, as the state file holds it.
        let text = serde_json::to_string(&before.snapshot()).unwrap();
        let mut after = Detector::new(config(), "n");
        let restored = after.restore(serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(restored.series, 1);
        assert_eq!(restored.judged, 1, "no learning again");
        assert_eq!(restored.open_alarms, vec![opened[0].id.clone()]);
        assert!(after.learning().next().is_none());

        // Still regressed: the same alarm goes on, none is opened anew.
        let next = feed(&mut after, &mut t, &window(138));
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].state, AlarmState::Ongoing);
        assert_eq!(next[0].id, opened[0].id);
        // Back to normal: it resolves under the same id.
        let mut resolved = Vec::new();
        for _ in 0..3 {
            resolved.extend(feed(&mut after, &mut t, &window(130)));
        }
        let last = resolved.last().expect("resolved");
        assert_eq!(last.state, AlarmState::Resolved);
        assert_eq!(last.id, opened[0].id);
    }

    /// A scalar series' open alarm goes on under its id after a restart, and the
    /// series, learned before, is scored at once instead of learning again.
    #[test]
    fn a_restored_detector_keeps_its_scalar_series_and_their_open_alarm() {
        use crate::detect::{ScalarInput, scalar::ScalarConfig};
        let config = crate::detect::DetectConfig {
            scalar: ScalarConfig {
                max_series: 1,
                ..ScalarConfig::default()
            },
            ..crate::detect::DetectConfig::default()
        };
        let mut rng = crate::detect::eval::Rng::new(3);
        let mut feed = |d: &mut Detector, i: u64, level: f64| {
            let input = ScalarInput {
                family: "net.tcp.retransmits".into(),
                labels: BTreeMap::new(),
                unit: "/s",
                value: level * (1.0 + 0.02 * rng.normal()),
                rises_only: true,
            };
            d.update_with_scalars(1_800_000_000 * S + i * 10 * S, 10 * S, [], [input])
                .alarms
        };
        let mut before = Detector::new(config.clone(), "n");
        let mut opened = Vec::new();
        let mut i = 0;
        while opened.is_empty() {
            assert!(i < 2000, "no alarm opened");
            let level = if i < 1000 { 50.0 } else { 150.0 };
            opened.extend(feed(&mut before, i, level));
            i += 1;
        }
        assert_eq!(opened[0].state, AlarmState::Open);

        let text = serde_json::to_string(&before.snapshot()).unwrap();
        let mut after = Detector::new(config.clone(), "n");
        let restored = after.restore(serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!((restored.scalars, restored.scalars_judged), (1, 1));
        assert_eq!(restored.open_alarms, vec![opened[0].id.clone()]);
        // Still off: the same alarm goes on (at the next point: three intervals make
        // one); back to normal, it resolves under its id.
        let mut next = Vec::new();
        for _ in 0..3 {
            next.extend(feed(&mut after, i, 150.0));
            i += 1;
        }
        assert_eq!(next.len(), 1, "{next:?}");
        assert_eq!(
            (next[0].state, &next[0].id),
            (AlarmState::Ongoing, &opened[0].id)
        );
        let mut later = Vec::new();
        for j in 1..200 {
            later.extend(feed(&mut after, i + j, 50.0));
        }
        let last = later.last().expect("resolved");
        assert_eq!(
            (last.state, &last.id),
            (AlarmState::Resolved, &opened[0].id)
        );

        // Not learning again: a fresh detector does not score the same step at all.
        let mut fresh = Detector::new(config, "n");
        let mut fresh_alarms = Vec::new();
        for j in 0..20 {
            fresh_alarms.extend(feed(&mut fresh, j, if j < 10 { 50.0 } else { 150.0 }));
        }
        assert!(fresh_alarms.is_empty(), "{fresh_alarms:?}");
        let mut again = Detector::new(crate::detect::DetectConfig::default(), "n");
        let r = again.restore(serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(r.scalars_judged, 1, "the learned series is judged at once");
    }

    /// A state saved before scalar series were (no `scalars`) is read: its
    /// baselines and alarms come back, the scalar series start learning.
    #[test]
    fn a_state_saved_before_scalar_series_is_read() {
        let mut t = 1_000 * S;
        let mut before = Detector::new(config(), "n");
        for _ in 0..6 {
            feed(&mut before, &mut t, &window(130));
        }
        let mut saved = before.snapshot();
        assert!(saved.as_object_mut().unwrap().remove("scalars").is_some());
        let mut after = Detector::new(config(), "n");
        let restored = after.restore(saved).unwrap();
        assert_eq!((restored.series, restored.judged), (1, 1));
        assert_eq!((restored.scalars, restored.scalars_judged), (0, 0));
    }

    #[test]
    fn another_format_is_refused() {
        let mut d = Detector::new(config(), "n");
        let mut saved = d.snapshot();
        saved["format"] = serde_json::json!(FORMAT + 1);
        assert!(d.restore(saved).unwrap_err().contains("format"));
    }
}
