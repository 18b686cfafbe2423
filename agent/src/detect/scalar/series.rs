//! One scalar series through time: its detector and the alarm lifecycle of the
//! latency detector (raise after `raise_after` anomalous points in a row, clear after
//! `clear_after` normal ones, severity from how many times off the value is,
//! evidence, the alarm's trace ids). Unlike a latency baseline, the detector keeps
//! learning while an alarm is open: a shift that persists becomes the new normal
//! and the alarm clears.

use serde::{Deserialize, Serialize};

use super::{Point, ScalarConfig, ScalarDetector, window::PointWindow};
use crate::detect::{
    DetectConfig,
    alarm::{Alarm, AlarmState, ScalarFigures},
    series::Identity,
};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScalarSeries {
    pub detector: ScalarDetector,
    bad_streak: u32,
    good_streak: u32,
    streak_start: u64,
    alarm: Option<Alarm>,
    /// Interval counter value when the series was last seen (to forget dead series).
    pub last_seen: u64,
    /// The agent's point being gathered (see `window`; a CSV row is a point itself).
    #[serde(default)]
    pub window: PointWindow,
}

/// One point to score: its value, unit and whether only a rise is an anomaly (see
/// `ScalarInput::rises_only`).
#[derive(Clone, Copy, Debug)]
pub struct Reading<'a> {
    pub unit: &'a str,
    pub value: f64,
    pub rises_only: bool,
}

impl ScalarSeries {
    pub fn open_alarm(&self) -> Option<&Alarm> {
        self.alarm.as_ref()
    }

    /// Scores `value` observed at `now` (unix ns; `time_s` is the same in seconds
    /// when it is a clock time); returns the point and the alarm it opened, updated or
    /// resolved.
    pub fn observe(
        &mut self,
        who: &Identity<'_>,
        Reading {
            unit,
            value,
            rises_only,
        }: Reading<'_>,
        now: u64,
        time_s: Option<f64>,
        config: &DetectConfig,
        scalar: &ScalarConfig,
    ) -> (Point, Option<Alarm>) {
        let point = self.detector.observe(value, time_s, scalar);
        let figures = || ScalarFigures {
            value,
            expected: point.expected,
            typical_deviation: point.scale,
            z: point.z,
            score: point.undamped,
            peak_score: point.undamped,
            unit: unit.to_owned(),
        };
        let anomalous =
            point.undamped >= scalar.alarm_score && (!rises_only || point.value > point.expected);
        let alarm = if anomalous {
            self.good_streak = 0;
            if self.bad_streak == 0 {
                self.streak_start = now;
            }
            self.bad_streak += 1;
            match &mut self.alarm {
                Some(alarm) => {
                    alarm.update_scalar(figures(), self.bad_streak, config);
                    Some(alarm.clone())
                }
                None if self.bad_streak >= config.raise_after => {
                    let alarm = Alarm::open_scalar(
                        who.node,
                        who.family,
                        who.labels,
                        who.series,
                        self.streak_start,
                        figures(),
                        self.bad_streak,
                        config,
                    );
                    self.alarm = Some(alarm.clone());
                    Some(alarm)
                }
                None => None,
            }
        } else {
            self.bad_streak = 0;
            self.good_streak += 1;
            match &mut self.alarm {
                Some(alarm) if self.good_streak >= config.clear_after => {
                    alarm.resolve(now);
                    let resolved = alarm.clone();
                    self.alarm = None;
                    Some(resolved)
                }
                _ => None,
            }
        };
        debug_assert!(
            self.alarm
                .as_ref()
                .is_none_or(|a| a.state != AlarmState::Resolved)
        );
        (point, alarm)
    }
}
