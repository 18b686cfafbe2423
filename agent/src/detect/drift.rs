//! Slow drifts. The baseline follows a series over about an hour and the envelope
//! excuses levels the series has reached in the last hour, so latency that creeps up
//! over hours is never a regression window by window: every new level is a little
//! above the last and already seen. Against the baseline as it was hours ago it is.
//! Per rule, the baseline's quantile is noted every `drift_horizon / SNAPSHOTS`; the
//! oldest note (up to `drift_horizon` old) is the reference, once it is at least half
//! the horizon old: a drift is a change over hours, and what moves the baseline faster
//! is a step, the windows' business. (On the 55-minute soak recording, a reference
//! taken at the end of learning made two alarms of run queues whose baseline had
//! learned, within 30 minutes, the CPU the injected reader and writer took.) A window
//! has drifted when
//! the baseline has moved to `drift_ratio` times the reference and the window itself
//! lies above it (halfway to the ratio), both by at least the family's `min_shift`.
//! No notes are taken while an alarm is open, like the baseline, so a regression never
//! becomes its own reference.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{baseline::Baseline, config::DetectConfig, rules::RULES};
use crate::aggregate::ExpHistogram;

/// Notes per horizon (every 30 min at the default 6 h).
const SNAPSHOTS: u64 = 12;

/// The baseline's quantiles at one time.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Snapshot {
    at: u64,
    quantiles: [f64; 3],
}

/// The baseline's quantiles over the last `drift_horizon`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DriftReference {
    snapshots: VecDeque<Snapshot>,
}

/// A slow drift of one rule, as evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    #[serde(deserialize_with = "crate::util::intern::de_str")]
    pub quantile: crate::util::intern::Static,
    /// The baseline's quantile at `reference_unix_nano`, its quantile now, and the
    /// window's.
    pub reference_ns: f64,
    pub baseline_ns: f64,
    pub current_ns: f64,
    /// The window's quantile over the reference (a reference below the family's floor
    /// counts as the floor).
    pub ratio: f64,
    pub reference_unix_nano: u64,
}

impl DriftReference {
    /// Notes the baseline's quantiles at `now` (unix ns) when the last note is a step
    /// old; keeps the notes of one horizon.
    pub fn note(&mut self, baseline: &Baseline, now: u64, horizon_ns: u64) {
        let step = horizon_ns / SNAPSHOTS;
        if horizon_ns == 0 || self.snapshots.back().is_some_and(|s| now < s.at + step) {
            return;
        }
        let quantiles = RULES.map(|(q, _)| baseline.quantile(q));
        self.snapshots.push_back(Snapshot { at: now, quantiles });
        while self.snapshots.len() > SNAPSHOTS as usize + 1 {
            self.snapshots.pop_front();
        }
    }

    /// The oldest note, once it is half a horizon old at `now`.
    fn reference(&self, now: u64, horizon_ns: u64) -> Option<&Snapshot> {
        let oldest = self.snapshots.front()?;
        (now.saturating_sub(oldest.at) >= horizon_ns / 2).then_some(oldest)
    }

    /// The rule that drifted most, if any did: the baseline at least `ratio` times the
    /// reference and the window at least halfway there, each by `floor_ns` or more.
    pub fn judge(
        &self,
        baseline: &Baseline,
        window: &ExpHistogram,
        now: u64,
        config: &DetectConfig,
        floor_ns: f64,
    ) -> Option<Drift> {
        let ratio = config.drift_ratio;
        let reference = self.reference(now, config.drift_horizon.as_nanos() as u64)?;
        let halfway = 1.0 + (ratio - 1.0) / 2.0;
        RULES
            .iter()
            .enumerate()
            .filter_map(|(slot, &(q, name))| {
                let reference_ns = reference.quantiles[slot];
                let against = reference_ns.max(floor_ns).max(1.0);
                let baseline_ns = baseline.quantile(q);
                let current_ns = window.quantile(q)?;
                let moved = |ns: f64, by: f64| ns / against >= by && ns - reference_ns >= floor_ns;
                (moved(baseline_ns, ratio) && moved(current_ns, halfway)).then(|| Drift {
                    quantile: name,
                    reference_ns,
                    baseline_ns,
                    current_ns,
                    ratio: current_ns / against,
                    reference_unix_nano: reference.at,
                })
            })
            .max_by(|a, b| a.ratio.total_cmp(&b.ratio))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000_000_000;

    fn baseline_at(center: i32) -> Baseline {
        let mut b = Baseline::default();
        b.learn(&super::super::series::tests::window(center), 10.0);
        b
    }

    #[test]
    fn the_reference_is_the_baseline_a_horizon_ago() {
        let mut r = DriftReference::default();
        for i in 0..40 {
            // The baseline one bucket higher every half hour.
            r.note(&baseline_at(100 + i), i as u64 * H / 2, 6 * H);
        }
        assert_eq!(r.snapshots.len(), 13);
        assert_eq!(r.snapshots.front().unwrap().at, 27 * H / 2);
        // Notes closer than a step are not taken.
        let mut r = DriftReference::default();
        r.note(&baseline_at(100), 0, 6 * H);
        r.note(&baseline_at(120), H / 4, 6 * H);
        assert_eq!(r.snapshots.len(), 1);
    }

    #[test]
    fn a_drift_needs_the_baseline_and_the_window_above_the_reference_by_the_floor() {
        let config = DetectConfig::default();
        assert_eq!(
            (config.drift_ratio, config.drift_horizon.as_secs()),
            (1.5, 6 * 3600)
        );
        let mut r = DriftReference::default();
        r.note(&baseline_at(100), 0, 6 * H);
        // Eight buckets at scale 3 are ×2.
        let (drifted, window) = (baseline_at(108), super::super::series::tests::window(108));
        let d = r
            .judge(&drifted, &window, 3 * H, &config, 0.0)
            .expect("drifted");
        assert!(d.ratio > 1.8 && d.ratio < 2.2, "{d:?}");
        assert_eq!(d.reference_unix_nano, 0);
        // Within less than half the horizon it is a step, not a drift.
        assert!(
            r.judge(&drifted, &window, 3 * H - 1, &config, 0.0)
                .is_none()
        );
        // The window back at the reference: not (the baseline is frozen while an
        // alarm is open, so the window is what resolves it).
        let back = super::super::series::tests::window(100);
        assert!(r.judge(&drifted, &back, 3 * H, &config, 0.0).is_none());
        // The baseline only ×1.3: not yet.
        let mild = baseline_at(103);
        assert!(r.judge(&mild, &window, 3 * H, &config, 0.0).is_none());
        // Below the family's floor: not at all.
        let floor = 10.0 * r.snapshots[0].quantiles[2];
        assert!(r.judge(&drifted, &window, 3 * H, &config, floor).is_none());
    }
}
