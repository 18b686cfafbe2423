//! One series through time: intervals gathered into windows big enough to judge (in
//! time and samples, so that the interval does not change the verdicts), each window
//! judged against the baseline, and the verdicts turned into an alarm with hysteresis
//! (raise after `raise_after` regressed windows in a row, clear after `clear_after`
//! normal ones). A window only counts as regressed when it still is without its worst
//! third: one burst (a 10-second stall) is not a regression, however slow it was.
//!
//! Windows close on the wall clock's grid of `min_window` (every :00 and :30 by
//! default), never at an offset set by when the series first appeared: an agent at 1 s
//! and one at 10 s then cut a minute-long slowdown at the same instants, judge the same
//! stretches and raise the same alarms (with windows cut where each series began, the
//! 10 s agent's window ended 13 s into the slowdown, which the burst check waved
//! through, and it saw one regressed window where the 1 s agent saw two).

use std::collections::BTreeMap;

use super::{
    alarm::{Alarm, AlarmState},
    baseline::{Baseline, count_above},
    config::DetectConfig,
    drift::DriftReference,
    envelope::{Levels, levels_of},
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

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SeriesState {
    window: ExpHistogram,
    /// The window's intervals with their end times, for the burst check.
    parts: Vec<(u64, ExpHistogram)>,
    intervals: u32,
    window_start: u64,
    pub baseline: Baseline,
    bad_streak: u32,
    good_streak: u32,
    streak_start: u64,
    alarm: Option<Alarm>,
    /// Levels of the windows of the current episode (regressed, or while an alarm is
    /// open): they join the envelope once it is over, not while it is being judged.
    #[serde(default)]
    episode: Vec<Levels>,
    /// Interval counter value when the series was last seen (to forget dead series).
    pub last_seen: u64,
    /// The grid cell, end (unix ns) and length of the window's latest interval: a
    /// boundary it did not foresee closes the window as of then.
    #[serde(default)]
    last_cell: u64,
    #[serde(default)]
    last_end: u64,
    #[serde(default)]
    last_interval: u64,
    /// Start (unix ns) of the series' first interval with samples: its learning period
    /// runs from here. `None` until it has had samples; 0 for a series restored from a
    /// state saved before this was kept with a baseline already learned (it is not
    /// made to learn again).
    #[serde(default)]
    learning_since: Option<u64>,
    /// The baseline's quantiles over the last `drift_horizon`, for slow drifts.
    #[serde(default)]
    drift: DriftReference,
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

    /// Whether any interval brought samples (an idle series is not "learning").
    pub fn has_data(&self) -> bool {
        !self.baseline.is_empty() || !self.window.is_empty()
    }

    /// Still learning its baseline at `now` (unix ns): not judged yet.
    pub fn learning(&self, now: u64, config: &DetectConfig) -> bool {
        self.baseline.windows < config.baseline_windows
            || self.learned_at(config).is_none_or(|at| now < at)
    }

    /// When its learning period ends (unix ns; `None` before its first samples). A
    /// quiet series that has not learned `baseline_windows` windows by then learns on.
    pub fn learned_at(&self, config: &DetectConfig) -> Option<u64> {
        let period = config.learning_period.as_nanos() as u64;
        self.learning_since
            .map(|since| since.saturating_add(period))
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
        if !config.align_windows {
            return self.observe_unaligned(who, delta, now, interval_ns, config);
        }
        let cell = grid_cell(config);
        let this_cell = now.saturating_sub(interval_ns / 2) / cell;
        // A boundary the previous interval did not foresee (intervals vary, a report
        // comes late): the window closes as of that interval, before this one opens
        // the next.
        let missed = if self.intervals > 0 && this_cell > self.last_cell {
            self.close_if_ready(who, self.last_end, self.last_interval, config)
        } else {
            None
        };
        self.add_interval(delta, now, interval_ns);
        self.last_cell = this_cell;
        self.last_end = now;
        self.last_interval = interval_ns;
        if missed.is_some() {
            return missed;
        }
        let next_cell = (now + interval_ns / 2) / cell;
        if next_cell == this_cell && interval_ns > 0 && self.intervals < config.max_intervals {
            return None;
        }
        self.close_if_ready(who, now, interval_ns, config)
    }

    /// Adds the interval ending at `now` to the open window, opening one if none is.
    fn add_interval(&mut self, delta: &ExpHistogram, now: u64, interval_ns: u64) {
        if self.intervals == 0 {
            self.window_start = now.saturating_sub(interval_ns);
            self.window = ExpHistogram::default();
            self.parts.clear();
        }
        if !delta.is_empty() {
            self.window.merge(delta);
            self.parts.push((now, delta.clone()));
            if self.learning_since.is_none() {
                let restored = !self.baseline.is_empty();
                self.learning_since = Some(if restored {
                    0
                } else {
                    now.saturating_sub(interval_ns)
                });
            }
        }
        self.intervals += 1;
    }

    /// Windows cut `min_window` after each series' first interval (the default until
    /// the grid's extra alarms on the held-out recordings are understood).
    fn observe_unaligned(
        &mut self,
        who: &Identity<'_>,
        delta: &ExpHistogram,
        now: u64,
        interval_ns: u64,
        config: &DetectConfig,
    ) -> Option<WindowOutcome> {
        self.add_interval(delta, now, interval_ns);
        let elapsed = now.saturating_sub(self.window_start);
        if elapsed < config.min_window.as_nanos() as u64 && self.intervals < config.max_intervals {
            return None;
        }
        self.close_if_ready(who, now, 0, config)
    }

    /// Closes and judges the window at a grid boundary (the interval ending at `now`
    /// its last) when it holds enough (or has grown too long, or shows a decisive
    /// regression early); else it grows on into the next cell.
    fn close_if_ready(
        &mut self,
        who: &Identity<'_>,
        now: u64,
        interval_ns: u64,
        config: &DetectConfig,
    ) -> Option<WindowOutcome> {
        let elapsed = now.saturating_sub(self.window_start);
        // A window spans whole grid cells; the first of a series (begun mid-cell) at
        // least half a cell. Unaligned, at least `min_window`.
        let min = config.min_window.as_nanos() as u64;
        let long_enough = elapsed >= if config.align_windows { min / 2 } else { min }
            && self.intervals >= config.min_intervals;
        let enough = self.window.count() >= config.min_samples && long_enough;
        let too_long = self.intervals >= config.max_intervals
            || elapsed + interval_ns / 2 >= config.max_window.as_nanos() as u64;
        let early = if enough || too_long {
            None
        } else if long_enough {
            Some(self.decisive_early(who, now, config)?)
        } else {
            return None;
        };
        self.intervals = 0;
        let window = std::mem::take(&mut self.window);
        Some(self.judge(who, &window, now, early.as_ref().unwrap_or(config)))
    }

    fn judge(
        &mut self,
        who: &Identity<'_>,
        window: &ExpHistogram,
        now: u64,
        config: &DetectConfig,
    ) -> WindowOutcome {
        let floor_ns = config.min_shift_ns(who.family);
        let learning = self.learning(now, config);
        if learning {
            if window.count() >= config.min_samples {
                // The scatter is learned along, once the baseline is no longer a handful
                // of windows: judging starts with it settled, not from the first
                // windows after learning (a step there met a φ from two windows).
                if self.baseline.windows >= SPREAD_AFTER_WINDOWS {
                    self.baseline.note_spread(window, config.baseline_half_life);
                }
                self.baseline.learn(window, config.baseline_half_life);
                (self.baseline.envelope).note(&levels_of(window), config.baseline_half_life);
            }
            return WindowOutcome {
                evaluation: Evaluation::not_enough_data(),
                learning,
                alarm: None,
            };
        }
        let mut evaluation = evaluate(&self.baseline, window, config, floor_ns);
        // How much windows scatter around the baseline beyond sampling noise: learned,
        // after the window is judged, from every window while no alarm is open (a
        // regression's first window included, robustly, so that ordinary variability
        // is never left out). Only once the baseline has learned: against a baseline of
        // a few windows, whose quantile buckets were picked from those very windows,
        // every window looks scattered.
        if self.alarm.is_none() && evaluation.verdict != Verdict::NotEnoughData {
            self.baseline.note_spread(window, config.baseline_half_life);
        }
        let burst = evaluation.verdict == Verdict::Regressed
            && self.is_burst(window, now, &evaluation, floor_ns, config);
        if burst {
            evaluation.verdict = Verdict::Normal;
        }
        self.judge_drift(&mut evaluation, window, now, floor_ns, config);
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
                    None if self.bad_streak >= config.raise_after
                        && (evaluation.factor >= config.major_factor
                            || self.bad_streak >= config.minor_raise_after) =>
                    {
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
        self.note_levels(window, &evaluation, config);
        if self.alarm.is_none() {
            (self.drift).note(&self.baseline, now, config.drift_horizon.as_nanos() as u64);
        }
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

/// A window is split into this many equal stretches of time for the burst check, so
/// that a burst is the same thing at any interval: a third of a 30 s window is 10 s
/// whether it holds ten 1 s intervals or one 10 s interval.
const BURST_STRETCHES: u64 = 3;

/// A thin series' window may close before `min_samples` when it already holds this
/// share of them and its regression is decisive (see `decisive_early`).
const EARLY_SAMPLES_DIVISOR: u64 = 10;
/// ... decisive meaning significant at this fraction of `significance`.
const EARLY_SIGNIFICANCE_FACTOR: f64 = 0.01;

/// Learned windows after which a learning series also learns its dispersion.
const SPREAD_AFTER_WINDOWS: u32 = 10;

/// Windows of one episode kept for the envelope (a day of 30 s windows).
const MAX_EPISODE: usize = 2_880;

impl SeriesState {
    /// A window normal against the baseline is regressed when the series has drifted
    /// far above its baseline of hours ago (see `drift`). While a drift's alarm is open
    /// its windows stay drifts (not steps against the frozen baseline), so the alarm
    /// tells one story from open to resolved.
    fn judge_drift(
        &self,
        evaluation: &mut Evaluation,
        window: &ExpHistogram,
        now: u64,
        floor_ns: f64,
        config: &DetectConfig,
    ) {
        let drifting = self
            .alarm
            .as_ref()
            .is_some_and(|a| a.evidence.drift.is_some());
        let judged = match evaluation.verdict {
            Verdict::Normal => true,
            Verdict::Regressed => drifting,
            Verdict::NotEnoughData => false,
        };
        if !judged || config.drift_horizon.is_zero() {
            return;
        }
        let drift = (self.drift).judge(&self.baseline, window, now, config, floor_ns);
        if let Some(drift) = drift {
            evaluation.drifted(drift);
        }
    }

    /// Notes a judged window's levels in the envelope: at once when it was normal and
    /// no alarm is open, else when its episode is over (the streak ended short of an
    /// alarm, or the alarm resolved). A regression's own windows must not excuse its
    /// next ones while it is judged; once over, it is something this node has done,
    /// and its recurrence within the horizon (the baseline's half-life, about an hour)
    /// is its normal: a neighbour's build every twenty minutes alarms once, not thrice.
    fn note_levels(
        &mut self,
        window: &ExpHistogram,
        evaluation: &Evaluation,
        config: &DetectConfig,
    ) {
        if evaluation.verdict == Verdict::NotEnoughData {
            return;
        }
        let levels = levels_of(window);
        if self.alarm.is_some() || evaluation.verdict == Verdict::Regressed {
            if self.episode.len() < MAX_EPISODE {
                self.episode.push(levels);
            }
            return;
        }
        for l in self.episode.drain(..) {
            self.baseline.envelope.note(&l, config.baseline_half_life);
        }
        self.baseline
            .envelope
            .note(&levels, config.baseline_half_life);
    }

    /// Whether the window gathering now, short of `min_samples` but a grid cell long,
    /// already shows a regression beyond doubt: then it closes now. A squeezed
    /// cgroup's run queue yields a few samples a second, and a window that waits for
    /// `min_samples` would outlast the squeeze; a large shift is clear from far fewer.
    /// Judged at a hundredth of the significance level, so that deciding early
    /// (repeatedly, as samples arrive) does not add false alarms.
    /// Returns the stricter settings the window is then judged with.
    fn decisive_early(
        &self,
        who: &Identity<'_>,
        now: u64,
        config: &DetectConfig,
    ) -> Option<DetectConfig> {
        let early_samples = (config.min_samples / EARLY_SAMPLES_DIVISOR).max(10);
        if self.learning(now, config) || self.window.count() < early_samples {
            return None;
        }
        let strict = DetectConfig {
            min_samples: early_samples,
            significance: config.significance * EARLY_SIGNIFICANCE_FACTOR,
            ..config.clone()
        };
        let floor_ns = config.min_shift_ns(who.family);
        let evaluation = evaluate(&self.baseline, &self.window, &strict, floor_ns);
        // A window straddling the start of a step holds it in its last stretch only,
        // which the burst check would wave through: such a window grows on instead.
        let decisive = evaluation.verdict == Verdict::Regressed
            && !self.is_burst(&self.window, now, &evaluation, floor_ns, &strict);
        decisive.then_some(strict)
    }

    /// The window's samples in `BURST_STRETCHES` stretches of equal time (fewer when
    /// it has fewer intervals).
    fn stretches(&self, window_end: u64) -> Vec<ExpHistogram> {
        let span = window_end.saturating_sub(self.window_start).max(1);
        let mut out = vec![ExpHistogram::default(); BURST_STRETCHES as usize];
        for (end, h) in &self.parts {
            let offset = end.saturating_sub(self.window_start).saturating_sub(1);
            let i = (offset * BURST_STRETCHES / span).min(BURST_STRETCHES - 1);
            out[i as usize].merge(h);
        }
        out.retain(|h| !h.is_empty());
        out
    }

    /// Whether the window's regression is all in one stretch of it: without the
    /// stretch with the largest share above the driving quantile's boundary, not even
    /// half the shift is left at a far looser significance. (Removing the slowest
    /// stretch biases the rest downwards, so the rest is held to a lower bar: a real
    /// step spread over the whole window clears it easily.)
    fn is_burst(
        &self,
        window: &ExpHistogram,
        window_end: u64,
        evaluation: &Evaluation,
        floor_ns: f64,
        config: &DetectConfig,
    ) -> bool {
        let stretches = self.stretches(window_end);
        if stretches.len() < 2 {
            return false;
        }
        let q = super::rules::RULES
            .iter()
            .find(|(_, name)| *name == evaluation.quantile)
            .map_or(0.99, |(q, _)| *q);
        let boundary = self.baseline.bucket_of(q);
        let share = |h: &ExpHistogram| count_above(h, boundary) as f64 / h.count().max(1) as f64;
        let Some(worst) = stretches
            .iter()
            .max_by(|a, b| share(a).total_cmp(&share(b)))
        else {
            return false;
        };
        let rest = window.since(worst);
        let parts = stretches.len() as u64;
        let half = |ratio: f64| 1.0 + (ratio - 1.0) / 2.0;
        let relaxed = DetectConfig {
            // Scaled to the window (one closed early holds fewer than min_samples).
            min_samples: (window.count().min(config.min_samples) * (parts - 1) / parts).max(10),
            significance: (config.significance * 100.0).min(0.05),
            p50_ratio: half(config.p50_ratio),
            p90_ratio: half(config.p90_ratio),
            p99_ratio: half(config.p99_ratio),
            ..config.clone()
        };
        evaluate(&self.baseline, &rest, &relaxed, floor_ns / 2.0).verdict == Verdict::Normal
    }
}

/// The wall clock's grid windows close on: `min_window` (ns). Each interval belongs to
/// the cell holding its middle, and a window closes after the last interval of a cell,
/// so windows at any interval cover the same cells, off by at most half an interval.
fn grid_cell(config: &DetectConfig) -> u64 {
    (config.min_window.as_nanos() as u64).max(1)
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;

    const S: u64 = 1_000_000_000;

    /// Windows of one to five 10 s intervals, no absolute floor (the shifts here are
    /// tens of µs).
    pub(in crate::detect) fn config() -> DetectConfig {
        DetectConfig {
            min_window: Duration::from_secs(10),
            max_window: Duration::from_secs(50),
            min_shift: BTreeMap::new(),
            default_min_shift: Duration::ZERO,
            min_samples: 500,
            baseline_windows: 5,
            learning_period: Duration::ZERO,
            raise_after: 2,
            clear_after: 3,
            ..DetectConfig::default()
        }
    }

    /// 1000 samples around bucket `center`, with a tail to `center + 12`.
    pub(in crate::detect) fn window(center: i32) -> ExpHistogram {
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
        config: DetectConfig,
    }

    impl Run {
        fn new() -> Self {
            Self {
                state: SeriesState::default(),
                labels: BTreeMap::from([("device".into(), "sdx".into())]),
                t: 1_000 * S,
                config: config(),
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
            self.state.observe(&who, h, self.t, 10 * S, &self.config)
        }

        /// Feeds `windows` windows, the i-th centred on `center(i)` buckets (fractions
        /// mix the two buckets around it); returns the alarms that opened.
        fn feed(&mut self, windows: usize, center: impl Fn(usize) -> f64) -> Vec<Alarm> {
            let mut opened = Vec::new();
            for i in 0..windows {
                let c = center(i);
                let (low, high) = (window(c.floor() as i32), window(c.floor() as i32 + 1));
                let share = c - c.floor();
                let h = ExpHistogram::from_buckets(
                    0,
                    0,
                    low.buckets()
                        .map(|(b, n)| (b, (n as f64 * (1.0 - share)).round() as u64))
                        .chain(
                            high.buckets()
                                .map(|(b, n)| (b, (n as f64 * share).round() as u64)),
                        )
                        .filter(|&(_, n)| n > 0)
                        .fold(BTreeMap::<i32, u64>::new(), |mut m, (b, n)| {
                            *m.entry(b).or_default() += n;
                            m
                        }),
                );
                let outcome = self.step(&h).expect("one interval per window");
                opened.extend(outcome.alarm.filter(|a| a.state == AlarmState::Open));
            }
            opened
        }
    }

    /// 10 s windows in six hours.
    const SIX_HOURS: usize = 6 * 360;
    /// Eight buckets at scale 3: ×2.
    const DOUBLE: f64 = 8.0;

    #[test]
    fn a_slow_drift_to_twice_in_six_hours_alarms_once_against_hours_ago() {
        let drift = |i: usize| 130.0 + DOUBLE * (i as f64 / SIX_HOURS as f64).min(1.0);
        let mut run = Run::new();
        run.feed(60, |_| 130.0);
        let opened = run.feed(8 * 360, drift);
        assert_eq!(opened.len(), 1, "{opened:#?}");
        let alarm = &opened[0];
        let d = alarm.evidence.drift.as_ref().expect("told as a drift");
        assert!(
            d.ratio >= 1.25 && d.baseline_ns / d.reference_ns >= 1.5,
            "{d:?}"
        );
        assert!(
            alarm.summary.contains("has drifted slowly") && alarm.summary.contains("h before"),
            "{}",
            alarm.summary
        );
        // Still open at the end: the drift has not gone away.
        assert!(run.state.open_alarm().is_some());
        // Without the drift check the baseline follows it and nothing alarms.
        let mut run = Run::new();
        run.config.drift_horizon = Duration::ZERO;
        run.feed(60, |_| 130.0);
        assert!(run.feed(8 * 360, drift).is_empty());
    }

    #[test]
    fn a_daily_swing_is_not_a_drift() {
        // ±15 % over a day (the evaluation's series swing by ±4 %), two days.
        let day = 24.0 * 360.0;
        let swing = 1.15f64.log2() * 8.0;
        let mut run = Run::new();
        let opened = run.feed(2 * day as usize, |i| {
            130.0 + swing * (std::f64::consts::TAU * i as f64 / day).sin()
        });
        assert!(opened.is_empty(), "{opened:#?}");
    }

    #[test]
    fn a_step_already_alarmed_is_not_alarmed_again_as_a_drift() {
        let mut run = Run::new();
        run.feed(60, |_| 130.0);
        // A step to ×2 that lasts eight hours: one alarm, a step's, open throughout.
        let opened = run.feed(8 * 360, |_| 130.0 + DOUBLE);
        assert_eq!(opened.len(), 1, "{opened:#?}");
        assert!(
            opened[0].evidence.drift.is_none(),
            "{:?}",
            opened[0].summary
        );
        // One that lasts ten minutes, then eight hours as before: one alarm.
        let mut run = Run::new();
        run.feed(4 * 360, |_| 130.0);
        let opened = run.feed(8 * 360, |i| if i < 60 { 130.0 + DOUBLE } else { 130.0 });
        assert_eq!(opened.len(), 1, "{opened:#?}");
        assert!(run.state.open_alarm().is_none());
    }

    #[test]
    fn a_state_saved_before_drifts_were_kept_restores() {
        let mut run = Run::new();
        run.feed(60, |_| 130.0);
        let mut saved = serde_json::to_value(&run.state).unwrap();
        saved
            .as_object_mut()
            .unwrap()
            .remove("drift")
            .expect("kept");
        let restored: SeriesState = serde_json::from_value(saved).unwrap();
        assert_eq!(restored.baseline.windows, run.state.baseline.windows);
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
    fn a_shift_the_node_has_shown_alarms_once_and_its_recurrence_is_its_normal() {
        let mut run = Run::new();
        // Windows that scatter beyond sampling noise, as a busy node's do.
        for i in 0..30 {
            run.step(&window(128 + 4 * (i % 2)));
        }
        // A neighbour's job: four windows ×1.7, alarmed; its own windows do not excuse
        // its later ones while it lasts.
        let mut opened = 0;
        for _ in 0..4 {
            let o = run.step(&window(136)).unwrap();
            assert_eq!(
                o.evaluation.verdict,
                Verdict::Regressed,
                "{:?}",
                o.evaluation
            );
            opened += o
                .alarm
                .filter(|a| a.state == AlarmState::Open)
                .iter()
                .count();
        }
        assert_eq!(opened, 1);
        while run.state.open_alarm().is_some() {
            run.step(&window(130));
        }
        // The same job again: within the envelope, normal, no alarm; the evidence says
        // how high the node's normal goes.
        for _ in 0..4 {
            let o = run.step(&window(136)).unwrap();
            assert_eq!(o.evaluation.verdict, Verdict::Normal, "{:?}", o.evaluation);
            assert!(o.alarm.is_none());
            let p50 = &o.evaluation.rules[0];
            assert!(p50.normal_ns >= p50.current_ns, "{p50:?}");
        }
        // A larger shift is beyond anything the node has done: alarmed.
        run.step(&window(144));
        let o = run.step(&window(144)).unwrap();
        assert_eq!(o.alarm.expect("alarmed").state, AlarmState::Open);
    }

    #[test]
    fn a_single_slow_interval_is_a_burst_not_a_regression() {
        let config = DetectConfig {
            min_window: Duration::from_secs(30),
            max_window: Duration::from_secs(50),
            default_min_shift: Duration::ZERO,
            min_samples: 1500,
            baseline_windows: 5,
            learning_period: Duration::ZERO,
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
    fn a_thin_series_with_a_large_shift_is_judged_before_its_window_fills() {
        let mut run = Run::new();
        // Learned, and its spread too.
        for _ in 0..25 {
            run.step(&window(130));
        }
        // 90 samples per interval, 500 needed: a thin window of a normal series waits
        // for max_window, one far slower closes at min_window, and two raise the alarm.
        let thin = |center: i32| ExpHistogram::from_buckets(0, 0, [(center, 80), (center + 4, 10)]);
        for _ in 0..4 {
            assert!(run.step(&thin(130)).is_none());
        }
        run.step(&thin(130)).unwrap();
        let first = run.step(&thin(150)).expect("closed at min_window");
        assert_eq!(
            first.evaluation.verdict,
            Verdict::Regressed,
            "{:?}",
            first.evaluation
        );
        let opened = run.step(&thin(150)).unwrap().alarm.unwrap();
        assert_eq!(opened.state, AlarmState::Open);
        // A small shift is no reason to decide early.
        let mut run = Run::new();
        for _ in 0..6 {
            run.step(&window(130));
        }
        assert!(run.step(&thin(131)).is_none());
    }

    /// A 30 s grid, no floors, two regressed windows raise an alarm.
    fn grid_config() -> DetectConfig {
        DetectConfig {
            align_windows: true,
            min_window: Duration::from_secs(30),
            max_window: Duration::from_secs(300),
            min_shift: BTreeMap::new(),
            default_min_shift: Duration::ZERO,
            min_samples: 500,
            baseline_windows: 5,
            learning_period: Duration::ZERO,
            raise_after: 2,
            clear_after: 3,
            ..DetectConfig::default()
        }
    }

    /// Feeds one series from `start_s` to `end_s` (seconds past a grid boundary) at
    /// `interval_s`, 1000 samples a second centred on `center(t)`; returns the ends
    /// (s) of the windows that closed and the times the alarms opened.
    fn feed(
        start_s: u64,
        end_s: u64,
        interval_s: impl Fn(usize) -> u64,
        center: impl Fn(u64) -> i32,
    ) -> (Vec<u64>, Vec<u64>) {
        let t0 = 1_800_000_000 * S / (30 * S) * (30 * S);
        let labels = BTreeMap::from([("device".to_owned(), "sdx".to_owned())]);
        let who = Identity {
            node: "n",
            family: "block.io.latency",
            labels: &labels,
            series: "block.io.latency{device=sdx}",
        };
        let (mut state, config) = (SeriesState::default(), grid_config());
        let (mut closed, mut opened) = (Vec::new(), Vec::new());
        let mut t = start_s;
        for i in 0.. {
            let interval_s = interval_s(i);
            if t + interval_s > end_s {
                break;
            }
            let mut h = ExpHistogram::default();
            for s in t..t + interval_s {
                h.merge(&window(center(s)));
            }
            t += interval_s;
            if let Some(o) = state.observe(&who, &h, t0 + t * S, interval_s * S, &config) {
                closed.push(t);
                if o.alarm.is_some_and(|a| a.state == AlarmState::Open) {
                    opened.push(t);
                }
            }
        }
        (closed, opened)
    }

    #[test]
    fn windows_close_on_the_wall_clocks_grid_whatever_the_interval_and_start() {
        let steady = |_| 130;
        // Agents started 7 s and 23 s into a cell, at 1 s and at 10 s: after the first
        // window, every window ends on the same 30 s boundaries (the 10 s agent's
        // intervals end 3 s past them).
        let (one, _) = feed(7, 307, |_| 1, steady);
        let (ten, _) = feed(23, 323, |_| 10, steady);
        assert_eq!(one[1..5], [60, 90, 120, 150]);
        assert_eq!(ten[1..5], [93, 123, 153, 183]);
        // Intervals of 1 s and 2 s in turn: a boundary the interval ending at 29 s did
        // not foresee closes the window as of 29 s when the next one (ending at 31 s)
        // arrives, not a cell later.
        let (uneven, _) = feed(1, 301, |i| 1 + (i % 2) as u64, steady);
        assert_eq!(uneven[..4], [31, 61, 91, 121], "{uneven:?}");
    }

    #[test]
    fn a_minute_long_slowdown_raises_one_alarm_at_1s_and_at_10s() {
        // Learned, then a slowdown from 613 s to 680 s (mid-cell to mid-cell), as the
        // held-out soak's minute of CPU contention on fio-a's reads.
        let center = |t: u64| if (613..680).contains(&t) { 140 } else { 130 };
        let (_, one) = feed(4, 1200, |_| 1, center);
        let (_, ten) = feed(17, 1207, |_| 10, center);
        assert_eq!(one.len(), 1, "1 s: {one:?}");
        assert_eq!(ten.len(), 1, "10 s: {ten:?}");
        assert!(one[0].abs_diff(ten[0]) <= 10, "{one:?} {ten:?}");
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
