//! The detector's evaluation: a labelled scenario generator (log-normal bodies, heavy
//! Pareto tails, one-interval bursts, diurnal load swings, idle nights) with injected
//! changes, run through the same `SeriesState` the agent uses, summarised per scenario
//! as detection rate, delay in windows and false alarms per simulated day. Fixed seeds:
//! the same arguments give the same table. Run by `cargo xtask eval-detect`; a short
//! version runs in the test suite and asserts the targets.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::{
    DetectConfig,
    series::{Identity, SeriesState},
};
use crate::aggregate::ExpHistogram;

/// A small, fast, reproducible generator (SplitMix64); no dependency for a harness.
pub struct Rng(u64, Option<f64>);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15, None)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller, both values used).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.1.take() {
            return z;
        }
        let (u, v) = (self.uniform(), self.uniform());
        let r = (-2.0 * u.ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * v).sin_cos();
        self.1 = Some(r * sin);
        r * cos
    }

    /// Poisson-ish count with mean `mean` (normal approximation above 30).
    fn count(&mut self, mean: f64) -> u64 {
        if mean <= 0.0 {
            return 0;
        }
        if mean > 30.0 {
            return (mean + mean.sqrt() * self.normal()).round().max(0.0) as u64;
        }
        let limit = (-mean).exp();
        let (mut k, mut p) = (0u64, 1.0);
        loop {
            p *= self.uniform();
            if p <= limit {
                return k;
            }
            k += 1;
        }
    }
}

/// What is injected at the change point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    /// No change: a control.
    None,
    /// The p99 moves by this factor, the median stays (the tail above p90 stretches).
    P99(f64),
    /// Every sample scaled: the median (and everything else) moves by this factor.
    Median(f64),
    /// The log-normal's sigma multiplied by this factor (median unchanged).
    Variance(f64),
    /// A new mode: this share of samples at 8× the median.
    TailMode(f64),
    /// Every sample scaled by a factor growing linearly to this over six hours.
    Drift(f64),
}

#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub change: Change,
    /// Whether an alarm after the change is the right answer.
    pub regression: bool,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "p99 +10%",
        change: Change::P99(1.1),
        regression: true,
    },
    Scenario {
        name: "p99 +20%",
        change: Change::P99(1.2),
        regression: true,
    },
    Scenario {
        name: "p99 +50%",
        change: Change::P99(1.5),
        regression: true,
    },
    Scenario {
        name: "p99 +100%",
        change: Change::P99(2.0),
        regression: true,
    },
    Scenario {
        name: "median +30%",
        change: Change::Median(1.3),
        regression: true,
    },
    Scenario {
        name: "median +100%",
        change: Change::Median(2.0),
        regression: true,
    },
    Scenario {
        name: "variance ×1.5",
        change: Change::Variance(1.5),
        regression: true,
    },
    Scenario {
        name: "new tail mode 3%",
        change: Change::TailMode(0.03),
        regression: true,
    },
    Scenario {
        name: "slow drift to 2× in 6h",
        change: Change::Drift(2.0),
        regression: true,
    },
    Scenario {
        name: "improvement: median -30%",
        change: Change::Median(0.7),
        regression: false,
    },
    Scenario {
        name: "improvement: p99 -40%",
        change: Change::P99(0.6),
        regression: false,
    },
];

/// A series' character, drawn per seed.
#[derive(Clone, Debug)]
struct Profile {
    median_ns: f64,
    sigma: f64,
    /// Events per second at the daily mean.
    rate: f64,
    /// Share of samples from a Pareto tail starting at the body's p95.
    pareto_share: f64,
    pareto_alpha: f64,
    diurnal: f64,
    /// Probability that an interval is a burst (20 % of its samples 4× slower).
    burst: f64,
    /// Quiet hours at the end of each day at 1 % of the rate (a VM that sleeps at
    /// night; the change scenarios happen in daytime, the controls see the nights).
    idle_hours: f64,
}

impl Profile {
    fn draw(rng: &mut Rng) -> Self {
        Self {
            median_ns: 20_000.0 * (rng.uniform() * 250f64.ln()).exp(), // 20 µs .. 5 ms
            sigma: 0.3 + 0.4 * rng.uniform(),
            rate: 20.0 * (rng.uniform() * 10f64.ln()).exp(), // 20 .. 200 /s
            pareto_share: if rng.uniform() < 0.5 {
                0.01 * rng.uniform()
            } else {
                0.0
            },
            pareto_alpha: 1.5 + rng.uniform(),
            diurnal: 0.8 * rng.uniform(),
            burst: 1.0 / 360.0,
            idle_hours: if rng.uniform() < 0.3 { 6.0 } else { 0.0 },
        }
    }
}

const DAY_S: f64 = 86_400.0;

pub struct Generator {
    profile: Profile,
    change: Change,
    change_at_s: f64,
    /// The unchanged body's p90 and p99, for the tail stretch.
    q90: f64,
    q99: f64,
    rng: Rng,
}

impl Generator {
    fn new(seed: u64, change: Change, change_at_s: f64) -> Self {
        let mut rng = Rng::new(seed);
        let profile = Profile::draw(&mut rng);
        let mut g = Self {
            profile,
            change: Change::None,
            change_at_s,
            q90: 0.0,
            q99: 0.0,
            rng,
        };
        let mut sample: Vec<f64> = (0..20_000).map(|_| g.base_sample()).collect();
        sample.sort_by(f64::total_cmp);
        g.q90 = sample[18_000];
        g.q99 = sample[19_800];
        g.change = change;
        g
    }

    fn base_sample(&mut self) -> f64 {
        let p = &self.profile;
        let body = p.median_ns * (p.sigma * self.rng.normal()).exp();
        if p.pareto_share > 0.0 && self.rng.uniform() < p.pareto_share {
            let q95 = p.median_ns * (1.645 * p.sigma).exp();
            return q95 * self.rng.uniform().powf(-1.0 / p.pareto_alpha);
        }
        body
    }

    fn sample(&mut self, t: f64, burst: bool) -> f64 {
        let changed = t >= self.change_at_s;
        let mut x = match (changed, self.change) {
            (true, Change::Variance(f)) => {
                let p = &self.profile;
                p.median_ns * (p.sigma * f * self.rng.normal()).exp()
            }
            (true, Change::TailMode(share)) if self.rng.uniform() < share => {
                self.profile.median_ns * 8.0 * (0.2 * self.rng.normal()).exp()
            }
            _ => self.base_sample(),
        };
        if changed {
            match self.change {
                Change::P99(f) if x > self.q90 => {
                    // Stretch the tail: ×1 at p90 growing to ×f at p99 and beyond.
                    let w = ((x / self.q90).ln() / (self.q99 / self.q90).ln()).min(1.0);
                    x *= f.powf(w);
                }
                Change::Median(f) => x *= f,
                Change::Drift(f) => {
                    let progress = ((t - self.change_at_s) / (6.0 * 3600.0)).min(1.0);
                    x *= 1.0 + (f - 1.0) * progress;
                }
                _ => {}
            }
        }
        // Load swings move latency a little with them.
        let day = (std::f64::consts::TAU * t / DAY_S).sin();
        x *= 1.0 + 0.05 * self.profile.diurnal * day;
        if burst && self.rng.uniform() < 0.2 {
            x *= 4.0;
        }
        x
    }

    /// One interval's histogram, ending at `t` seconds.
    fn interval(&mut self, t: f64, interval_s: f64) -> ExpHistogram {
        let p = &self.profile;
        let day = (std::f64::consts::TAU * t / DAY_S).sin();
        let hour_of_day = (t % DAY_S) / 3600.0;
        let idle = if hour_of_day >= 24.0 - p.idle_hours {
            0.01
        } else {
            1.0
        };
        let mean = p.rate * (1.0 + p.diurnal * day) * idle * interval_s;
        let burst = self.rng.uniform() < p.burst;
        let n = self.rng.count(mean);
        let mut dense: BTreeMap<i32, u64> = BTreeMap::new();
        let mut sum = 0u64;
        for _ in 0..n {
            let v = self.sample(t, burst).max(1.0) as u64;
            sum += v;
            *dense
                .entry(agent_common::hist::bucket_index(v))
                .or_default() += 1;
        }
        ExpHistogram::from_buckets(sum, 0, dense)
    }
}

/// How one run went.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    /// Alarms opened before the change (false alarms).
    pub false_alarms: u32,
    /// Windows closed after the change up to the alarm (1 = the first window that
    /// ended after the change point).
    pub delay_windows: Option<u32>,
    pub windows: u64,
    pub intervals: u64,
    pub detect_time: Duration,
}

/// Plan of one run, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub interval_s: f64,
    pub change_at_s: f64,
    pub end_s: f64,
}

/// `explain`: print each false alarm with the series' profile (for tuning).
pub fn run(
    seed: u64,
    change: Change,
    plan: Plan,
    config: &DetectConfig,
    explain: bool,
) -> RunResult {
    let mut generator = Generator::new(seed, change, plan.change_at_s);
    let mut state = SeriesState::default();
    let labels = BTreeMap::from([("seed".to_owned(), seed.to_string())]);
    let who = Identity {
        node: "eval",
        family: "eval",
        labels: &labels,
        series: "eval",
    };
    let mut result = RunResult::default();
    let mut windows_after_change = 0u32;
    let interval_ns = (plan.interval_s * 1e9) as u64;
    let mut t = 0.0;
    while t < plan.end_s {
        t += plan.interval_s;
        let h = generator.interval(t, plan.interval_s);
        let started = Instant::now();
        let outcome = state.observe(&who, &h, (t * 1e9) as u64, interval_ns, config);
        result.detect_time += started.elapsed();
        result.intervals += 1;
        let Some(outcome) = outcome else { continue };
        result.windows += 1;
        let after = t > plan.change_at_s;
        if after {
            windows_after_change += 1;
        }
        if let Some(alarm) = outcome.alarm
            && alarm.state == super::AlarmState::Open
        {
            if !after || change == Change::None {
                result.false_alarms += 1;
                if explain {
                    eprintln!(
                        "false alarm, seed {seed} at {:.1} h: {}\n  profile {:?}",
                        t / 3600.0,
                        alarm.summary,
                        generator.profile
                    );
                }
            } else if result.delay_windows.is_none() {
                result.delay_windows = Some(windows_after_change);
            }
        }
    }
    result
}

/// Aggregate over seeds, one table row.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub regression: bool,
    pub runs: u32,
    pub detected: u32,
    pub within_3: u32,
    pub delays: Vec<u32>,
    pub false_alarms: u32,
    /// Simulated series-days before the change (or in total, for controls).
    pub clean_days: f64,
}

impl Row {
    fn new(name: &str, regression: bool) -> Self {
        Self {
            name: name.into(),
            regression,
            runs: 0,
            detected: 0,
            within_3: 0,
            delays: Vec::new(),
            false_alarms: 0,
            clean_days: 0.0,
        }
    }

    pub fn detection_rate(&self) -> f64 {
        f64::from(self.detected) / f64::from(self.runs.max(1))
    }
    pub fn within_3_rate(&self) -> f64 {
        f64::from(self.within_3) / f64::from(self.runs.max(1))
    }
    pub fn false_alarms_per_day(&self) -> f64 {
        f64::from(self.false_alarms) / self.clean_days.max(1e-9)
    }
    pub fn median_delay(&self) -> Option<u32> {
        let mut d = self.delays.clone();
        d.sort_unstable();
        d.get(d.len() / 2).copied()
    }
}

pub struct Options {
    pub seeds: u32,
    /// Simulated days per control series.
    pub control_days: f64,
    /// Hours before the change (baseline) and after it.
    pub before_h: f64,
    pub after_h: f64,
    pub interval_s: f64,
    /// Print every false alarm with its series' profile.
    pub explain: bool,
}

pub struct Evaluation {
    pub rows: Vec<Row>,
    pub series_windows: u64,
    pub series_intervals: u64,
    pub detect_time: Duration,
}

impl Evaluation {
    pub fn us_per_window(&self) -> f64 {
        self.detect_time.as_secs_f64() * 1e6 / self.series_windows.max(1) as f64
    }
    pub fn us_per_interval(&self) -> f64 {
        self.detect_time.as_secs_f64() * 1e6 / self.series_intervals.max(1) as f64
    }
}

/// One thread per CPU: the seeds' runs are independent.
fn worker_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// `f(0..n)` on `threads` threads, the results in seed order (so the evaluation adds
/// up the same whatever the thread count).
fn in_parallel<T: Send>(n: u32, threads: usize, f: impl Fn(u32) -> T + Sync) -> Vec<T> {
    let next = std::sync::atomic::AtomicU32::new(0);
    let mut done: Vec<(u32, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if seed >= n {
                            return out;
                        }
                        out.push((seed, f(seed)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("an evaluation thread panicked"))
            .collect()
    });
    done.sort_by_key(|(seed, _)| *seed);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Runs every scenario and the controls; `progress` hears about each finished row.
pub fn evaluate(
    options: &Options,
    config: &DetectConfig,
    mut progress: impl FnMut(&Row),
) -> Evaluation {
    let mut eval = Evaluation {
        rows: Vec::new(),
        series_windows: 0,
        series_intervals: 0,
        detect_time: Duration::ZERO,
    };
    let add = |eval: &mut Evaluation, r: &RunResult| {
        eval.series_windows += r.windows;
        eval.series_intervals += r.intervals;
        eval.detect_time += r.detect_time;
    };
    let control_plan = Plan {
        interval_s: options.interval_s,
        change_at_s: f64::INFINITY,
        end_s: options.control_days * DAY_S,
    };
    let mut controls = Row::new("control (no change)", false);
    let threads = if options.explain { 1 } else { worker_count() };
    let results = in_parallel(options.seeds, threads, |seed| {
        run(
            1_000 + u64::from(seed),
            Change::None,
            control_plan,
            config,
            options.explain,
        )
    });
    for r in results {
        add(&mut eval, &r);
        controls.runs += 1;
        controls.false_alarms += r.false_alarms;
        controls.clean_days += options.control_days;
    }
    progress(&controls);
    eval.rows.push(controls);
    for (index, scenario) in SCENARIOS.iter().enumerate() {
        let mut row = Row::new(scenario.name, scenario.regression);
        let results = in_parallel(options.seeds, threads, |seed| {
            // The change lands anywhere inside a window, not on a boundary.
            let mut rng = Rng::new(u64::from(seed) * 7919 + index as u64);
            let change_at_s = options.before_h * 3600.0 + rng.uniform() * 300.0;
            // A drift needs its six hours to reach its full size.
            let after_h = match scenario.change {
                Change::Drift(_) => options.after_h.max(6.0),
                _ => options.after_h,
            };
            let plan = Plan {
                interval_s: options.interval_s,
                change_at_s,
                end_s: change_at_s + after_h * 3600.0,
            };
            let r = run(
                u64::from(seed),
                scenario.change,
                plan,
                config,
                options.explain,
            );
            (change_at_s, r)
        });
        for (change_at_s, r) in results {
            add(&mut eval, &r);
            row.runs += 1;
            row.false_alarms += r.false_alarms;
            row.clean_days += change_at_s / DAY_S;
            if let Some(d) = r.delay_windows {
                row.detected += 1;
                row.delays.push(d);
                if d <= 3 {
                    row.within_3 += 1;
                }
            }
        }
        progress(&row);
        eval.rows.push(row);
    }
    eval
}

/// The table, for people.
pub fn render(eval: &Evaluation) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<28} {:>5} {:>9} {:>10} {:>9} {:>13}  expected",
        "scenario", "runs", "detected", "≤3 windows", "delay p50", "false/day"
    );
    for r in &eval.rows {
        let delay = r.median_delay().map_or("-".into(), |d| d.to_string());
        let _ = writeln!(
            t,
            "{:<28} {:>5} {:>8.0}% {:>9.0}% {:>9} {:>13.3}  {}",
            r.name,
            r.runs,
            100.0 * r.detection_rate(),
            100.0 * r.within_3_rate(),
            delay,
            r.false_alarms_per_day(),
            if r.regression { "alarm" } else { "no alarm" }
        );
    }
    let _ = writeln!(
        t,
        "detector cost: {:.2} µs per series-window, {:.3} µs per series-interval \
         ({} windows, {} intervals)",
        eval.us_per_window(),
        eval.us_per_interval(),
        eval.series_windows,
        eval.series_intervals
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(eval: &'a Evaluation, name: &str) -> &'a Row {
        eval.rows.iter().find(|r| r.name == name).unwrap()
    }

    /// The short version of `cargo xtask eval-detect`: the targets must hold.
    #[test]
    fn targets_hold_on_a_short_evaluation() {
        let options = Options {
            seeds: 20,
            control_days: 0.5,
            before_h: 1.5,
            after_h: 0.5,
            interval_s: 10.0,
            explain: false,
        };
        let eval = evaluate(&options, &DetectConfig::default(), |_| {});
        let table = render(&eval);
        // Learned dispersion trades some recall on small steps for precision on real,
        // noisy nodes (see docs/architecture.md, "Regression detection"): +50 % p99
        // steps are caught at ~90 %, doubled p99 at >= 95 % (the alarm goal).
        let p99 = row(&eval, "p99 +50%");
        assert!(p99.within_3_rate() >= 0.85, "{table}");
        let controls = row(&eval, "control (no change)");
        assert!(controls.false_alarms_per_day() <= 1.0, "{table}");
        for r in eval
            .rows
            .iter()
            .filter(|r| !r.regression && r.name != controls.name)
        {
            assert_eq!(r.detected, 0, "improvement alarmed: {table}");
        }
        assert!(row(&eval, "p99 +100%").within_3_rate() >= 0.95, "{table}");
        assert!(
            row(&eval, "median +100%").within_3_rate() >= 0.95,
            "{table}"
        );
        // A drift creeps past the baseline and the envelope level by level; against
        // the baseline of hours ago it is caught within its 6 h.
        assert!(
            row(&eval, "slow drift to 2× in 6h").detection_rate() >= 0.9,
            "{table}"
        );
    }

    #[test]
    fn generator_is_reproducible_and_injects_the_p99_step() {
        let mut a = Generator::new(3, Change::P99(2.0), 100.0);
        let mut b = Generator::new(3, Change::P99(2.0), 100.0);
        assert_eq!(a.interval(10.0, 10.0), b.interval(10.0, 10.0));
        let mut g = Generator::new(4, Change::P99(2.0), 0.0);
        let mut values: Vec<f64> = (0..40_000).map(|_| g.sample(1.0, false)).collect();
        values.sort_by(f64::total_cmp);
        let p99 = values[39_600];
        assert!((p99 / g.q99 - 2.0).abs() < 0.25, "p99 {p99} vs {}", g.q99);
        let p50 = values[20_000];
        assert!((p50 / g.profile.median_ns - 1.0).abs() < 0.1);
    }
}
