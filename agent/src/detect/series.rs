//! One series through time: intervals gathered into windows big enough to judge, each
//! window judged against the baseline, and the verdicts turned into an alarm with
//! hysteresis (raise after `raise_after` regressed windows in a row, clear after
//! `clear_after` normal ones). A window only counts as regressed when it still is
//! without its worst interval: one burst (a 10-second stall) is not a regression,
//! however slow it was.

use std::collections::BTreeMap;

use super::{
    alarm::{Alarm, AlarmState},
    baseline::{Baseline, count_above},
    config::DetectConfig,
    rules::{Evaluation, Verdict, evaluate},
};
use crate::aggregate::ExpHistogram;

/// What one closed window produced.
#[derive(Debug)]
pub struct WindowOutcome {
    pub evaluation: Evaluation,
    /// When the window closed, whether the series was still learning its baseline.
    pub learning: bool,
    /// Opened, updated or resolved by this window.
    pub alarm: Option<Alarm>,
}

#[derive(Debug, Default)]
pub struct SeriesState {
    window: ExpHistogram,
    /// The window's intervals, for the burst check.
    parts: Vec<ExpHistogram>,
    intervals: u32,
    window_start: u64,
    pub baseline: Baseline,
    bad_streak: u32,
    good_streak: u32,
    streak_start: u64,
    alarm: Option<Alarm>,
    /// Interval counter value when the series was last seen (to forget dead series).
    pub last_seen: u64,
}

/// Who the series is, for its alarms.
pub struct Identity<'a> {
    pub node: &'a str,
    pub family: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub series: &'a str,
}

impl SeriesState {
    pub fn open_alarm(&self) -> Option<&Alarm> {
        self.alarm.as_ref()
    }

    /// Adds one interval ending at `now` (unix ns, `interval_ns` long); returns the
    /// outcome when this closed a window.
    pub fn observe(
        &mut self,
        who: &Identity<'_>,
        delta: &ExpHistogram,
        now: u64,
        interval_ns: u64,
        config: &DetectConfig,
    ) -> Option<WindowOutcome> {
        if self.intervals == 0 {
            self.window_start = now.saturating_sub(interval_ns);
            self.window = ExpHistogram::default();
            self.parts.clear();
        }
        if !delta.is_empty() {
            self.window.merge(delta);
            self.parts.push(delta.clone());
        }
        self.intervals += 1;
        let enough = self.window.count() >= config.min_samples;
        if !(enough && self.intervals >= config.min_intervals)
            && self.intervals < config.max_intervals
        {
            return None;
        }
        self.intervals = 0;
        let window = std::mem::take(&mut self.window);
        Some(self.judge(who, &window, now, config))
    }

    fn judge(
        &mut self,
        who: &Identity<'_>,
        window: &ExpHistogram,
        now: u64,
        config: &DetectConfig,
    ) -> WindowOutcome {
        let learning = self.baseline.windows < config.baseline_windows;
        if learning {
            if window.count() >= config.min_samples {
                self.baseline.learn(window, config.baseline_half_life);
            }
            return WindowOutcome {
                evaluation: Evaluation::not_enough_data(),
                learning,
                alarm: None,
            };
        }
        let mut evaluation = evaluate(&self.baseline, window, config);
        let burst =
            evaluation.verdict == Verdict::Regressed && self.is_burst(window, &evaluation, config);
        if burst {
            evaluation.verdict = Verdict::Normal;
        }
        let alarm = match evaluation.verdict {
            Verdict::NotEnoughData => None,
            Verdict::Regressed => {
                self.good_streak = 0;
                if self.bad_streak == 0 {
                    self.streak_start = self.window_start;
                }
                self.bad_streak += 1;
                match &mut self.alarm {
                    Some(alarm) => {
                        alarm.update(&evaluation, window, self.bad_streak, config);
                        Some(alarm.clone())
                    }
                    None if self.bad_streak >= config.raise_after => {
                        let alarm = Alarm::open(
                            who.node,
                            who.family,
                            who.labels,
                            who.series,
                            self.streak_start,
                            &evaluation,
                            &self.baseline,
                            window,
                            self.bad_streak,
                            config,
                        );
                        self.alarm = Some(alarm.clone());
                        Some(alarm)
                    }
                    None => None,
                }
            }
            Verdict::Normal => {
                self.bad_streak = 0;
                self.good_streak += 1;
                match &mut self.alarm {
                    Some(alarm) if self.good_streak >= config.clear_after => {
                        alarm.resolve(now);
                        let resolved = alarm.clone();
                        self.alarm = None;
                        Some(resolved)
                    }
                    // The baseline stays frozen while an alarm is open, and never
                    // learns a burst.
                    Some(_) => None,
                    None if burst => None,
                    None => {
                        self.baseline.learn(window, config.baseline_half_life);
                        None
                    }
                }
            }
        };
        debug_assert!(
            self.alarm
                .as_ref()
                .is_none_or(|a| a.state != AlarmState::Resolved)
        );
        WindowOutcome {
            evaluation,
            learning,
            alarm,
        }
    }
}

impl SeriesState {
    /// Whether the window's regression is all in one interval: without the interval
    /// with the largest share above the driving quantile's boundary, not even half the
    /// shift is left at a far looser significance. (Removing the slowest interval
    /// biases the rest downwards, so the rest is held to a lower bar: a real step
    /// spread over every interval clears it easily.)
    fn is_burst(
        &self,
        window: &ExpHistogram,
        evaluation: &Evaluation,
        config: &DetectConfig,
    ) -> bool {
        if self.parts.len() < 2 {
            return false;
        }
        let q = super::rules::RULES
            .iter()
            .find(|(_, name)| *name == evaluation.quantile)
            .map_or(0.99, |(q, _)| *q);
        let boundary = self.baseline.bucket_of(q);
        let share = |h: &ExpHistogram| count_above(h, boundary) as f64 / h.count().max(1) as f64;
        let Some(worst) = self
            .parts
            .iter()
            .max_by(|a, b| share(a).total_cmp(&share(b)))
        else {
            return false;
        };
        let rest = window.since(worst);
        let parts = self.parts.len() as u64;
        let half = |ratio: f64| 1.0 + (ratio - 1.0) / 2.0;
        let relaxed = DetectConfig {
            min_samples: (config.min_samples * (parts - 1) / parts).max(10),
            significance: (config.significance * 100.0).min(0.05),
            p50_ratio: half(config.p50_ratio),
            p90_ratio: half(config.p90_ratio),
            p99_ratio: half(config.p99_ratio),
            ..config.clone()
        };
        evaluate(&self.baseline, &rest, &relaxed).verdict == Verdict::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn config() -> DetectConfig {
        DetectConfig {
            min_intervals: 1,
            max_intervals: 5,
            min_samples: 500,
            baseline_windows: 5,
            raise_after: 2,
            clear_after: 3,
            ..DetectConfig::default()
        }
    }

    /// 1000 samples around bucket `center`, with a tail to `center + 12`.
    fn window(center: i32) -> ExpHistogram {
        let mut b: Vec<(i32, u64)> = (-3..=3)
            .map(|d| (center + d, 130 - 20 * d.unsigned_abs() as u64))
            .collect();
        b.extend((4..=12).map(|d| (center + d, 5)));
        ExpHistogram::from_buckets(0, 0, b)
    }

    struct Run {
        state: SeriesState,
        labels: BTreeMap<String, String>,
        t: u64,
    }

    impl Run {
        fn new() -> Self {
            Self {
                state: SeriesState::default(),
                labels: BTreeMap::from([("device".into(), "sdx".into())]),
                t: 1_000 * S,
            }
        }
        fn step(&mut self, h: &ExpHistogram) -> Option<WindowOutcome> {
            self.t += 10 * S;
            let who = Identity {
                node: "n",
                family: "block.io.latency",
                labels: &self.labels,
                series: "block.io.latency{device=sdx}",
            };
            self.state.observe(&who, h, self.t, 10 * S, &config())
        }
    }

    #[test]
    fn learns_then_judges_three_states() {
        let mut run = Run::new();
        for _ in 0..5 {
            let o = run.step(&window(130)).unwrap();
            assert!(o.learning);
            assert_eq!(o.evaluation.verdict, Verdict::NotEnoughData);
        }
        assert_eq!(
            run.step(&window(130)).unwrap().evaluation.verdict,
            Verdict::Normal
        );
        assert_eq!(
            run.step(&window(136)).unwrap().evaluation.verdict,
            Verdict::Regressed
        );
        // 90 samples per interval: the window grows to max_intervals, then is short.
        let thin = ExpHistogram::from_buckets(0, 0, [(130, 90)]);
        for _ in 0..4 {
            assert!(run.step(&thin).is_none());
        }
        assert_eq!(
            run.step(&thin).unwrap().evaluation.verdict,
            Verdict::NotEnoughData
        );
    }

    #[test]
    fn hysteresis_raises_after_k_and_clears_after_m() {
        let mut run = Run::new();
        for _ in 0..6 {
            run.step(&window(130));
        }
        // One bad window alone: no alarm.
        assert!(run.step(&window(138)).unwrap().alarm.is_none());
        assert!(run.step(&window(130)).unwrap().alarm.is_none());
        // Two in a row: open, dated from the first of them.
        let first_bad_end = run.t + 10 * S;
        assert!(run.step(&window(138)).unwrap().alarm.is_none());
        let opened = run.step(&window(138)).unwrap().alarm.unwrap();
        assert_eq!(opened.state, AlarmState::Open);
        assert_eq!(opened.start_unix_nano, first_bad_end - 10 * S);
        assert!(opened.factor > 1.5, "{opened:?}");
        assert!(
            opened
                .summary
                .starts_with("latency on sdx (block.io.latency) has regressed: p"),
            "{}",
            opened.summary
        );
        let ongoing = run.step(&window(138)).unwrap().alarm.unwrap();
        assert_eq!(ongoing.state, AlarmState::Ongoing);
        assert_eq!(ongoing.id, opened.id);
        // The baseline did not learn the regression: still judged regressed later.
        let windows_before = run.state.baseline.windows;
        // Two normal windows do not clear; the third does.
        assert!(run.step(&window(130)).unwrap().alarm.is_none());
        assert!(run.step(&window(130)).unwrap().alarm.is_none());
        assert_eq!(
            run.state.baseline.windows, windows_before,
            "frozen while open"
        );
        let resolved = run.step(&window(130)).unwrap().alarm.unwrap();
        assert_eq!(resolved.state, AlarmState::Resolved);
        assert_eq!(resolved.id, opened.id);
        assert_eq!(resolved.end_unix_nano, Some(run.t));
        assert!(
            resolved.summary.contains("has recovered at"),
            "{}",
            resolved.summary
        );
        assert!(run.state.open_alarm().is_none());
    }

    #[test]
    fn a_single_slow_interval_is_a_burst_not_a_regression() {
        let config = DetectConfig {
            min_intervals: 3,
            max_intervals: 5,
            min_samples: 1500,
            baseline_windows: 5,
            ..DetectConfig::default()
        };
        let labels = BTreeMap::new();
        let who = Identity {
            node: "n",
            family: "f",
            labels: &labels,
            series: "f{}",
        };
        let mut state = SeriesState::default();
        let mut t = 0;
        let mut step = |state: &mut SeriesState, h: &ExpHistogram| {
            t += 10 * S;
            state.observe(&who, h, t, 10 * S, &config)
        };
        for _ in 0..(6 * 3) {
            step(&mut state, &window(130));
        }
        // Every window: two normal intervals and one very slow one.
        for _ in 0..4 {
            step(&mut state, &window(130));
            step(&mut state, &window(150));
            let o = step(&mut state, &window(130)).unwrap();
            assert_eq!(o.evaluation.verdict, Verdict::Normal, "{:?}", o.evaluation);
            assert!(o.alarm.is_none());
        }
        // All three intervals slow: regressed.
        step(&mut state, &window(138));
        step(&mut state, &window(138));
        let o = step(&mut state, &window(138)).unwrap();
        assert_eq!(
            o.evaluation.verdict,
            Verdict::Regressed,
            "{:?}",
            o.evaluation
        );
    }

    #[test]
    fn severity_grows_with_the_factor() {
        let mut run = Run::new();
        for _ in 0..6 {
            run.step(&window(130));
        }
        run.step(&window(134));
        let a = run.step(&window(134)).unwrap().alarm.unwrap();
        assert_eq!(a.severity, super::super::alarm::Severity::Minor, "{a:?}");
        let a = run.step(&window(150)).unwrap().alarm.unwrap();
        assert_eq!(a.severity, super::super::alarm::Severity::Critical, "{a:?}");
    }
}
