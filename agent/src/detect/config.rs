//! `[detect]`: windows, baselines and thresholds of the regression detector.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Deserializer};

use crate::settings::ConfigError;

/// A duration family that is not a latency: how long guests ran before exiting.
const NOT_A_WAIT: &str = "kvm.run.duration";

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    pub enabled: bool,
    /// Families to watch; empty watches every latency family (unit ns) but
    /// `kvm.run.duration`, which measures guest execution, not waiting.
    pub families: Vec<String>,
    /// A window spans at least `min_window` of time and `min_intervals` intervals ...
    #[serde(deserialize_with = "crate::settings::duration")]
    pub min_window: Duration,
    pub min_intervals: u32,
    /// ... and grows until it holds `min_samples`, up to `max_window` (or
    /// `max_intervals`); a window that ends short is "not enough data" (an idle
    /// series is never judged). Windows are defined in time, so a series is judged
    /// the same way at a 1 s and at a 10 s interval.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub max_window: Duration,
    pub max_intervals: u32,
    /// Close windows on the wall clock's grid of `min_window` (:00, :30), so that
    /// agents at any interval cut the same stretches of time. Off by default: on the
    /// held-out soak recordings it made both intervals raise `fio-a`'s minute-long
    /// slowdown alike, but still raises 1–3 more steady alarms per recording (an
    /// episode's CPU side as its own incident, borderline episodes cut twice, episodes
    /// at the end of learning: docs/architecture.md, "Regression detection").
    pub align_windows: bool,
    pub min_samples: u64,
    /// How long a series learns its baseline before it is judged, from its first
    /// samples: a time, not a count of windows or intervals, so that agents at 1 s and
    /// at 10 s start judging together (counted in windows, a 10 s agent whose jittered
    /// intervals often needed a fourth per window learned 23 minutes against 20).
    #[serde(deserialize_with = "crate::settings::duration")]
    pub learning_period: Duration,
    /// ... and it has learned at least this many normal windows (a quiet series, whose
    /// windows grow towards `max_window`, learns longer).
    pub baseline_windows: u32,
    /// Half-life of the baseline, in windows: how slowly it follows the series.
    pub baseline_half_life: f64,
    /// Slow drifts: a window is regressed when the baseline's quantile has grown to
    /// `drift_ratio` times what it was up to `drift_horizon` ago (and the window is
    /// halfway there), by at least the family's `min_shift`. The baseline follows a
    /// drift of hours (half-life ~1 h), the envelope excuses each level it creeps to;
    /// against hours ago it shows. `drift_horizon = "0s"` turns the check off.
    pub drift_ratio: f64,
    #[serde(deserialize_with = "crate::settings::duration")]
    pub drift_horizon: Duration,
    /// One-sided significance level of each quantile's exceedance test.
    pub significance: f64,
    /// Effect-size floors: current / baseline quantile ratio needed to call a shift.
    pub p50_ratio: f64,
    pub p90_ratio: f64,
    pub p99_ratio: f64,
    /// Smallest absolute shift of a quantile (current minus baseline) that counts as a
    /// regression, per family; families not listed use `default_min_shift`. A
    /// baseline quantile below the floor is judged as if it were the floor, so a
    /// shift from (near) zero is never an infinite factor.
    #[serde(deserialize_with = "shift_table")]
    pub min_shift: BTreeMap<String, Duration>,
    #[serde(deserialize_with = "crate::settings::duration")]
    pub default_min_shift: Duration,
    /// Series alarms whose regressions start within this time of an open incident's
    /// are part of it (one alarm per incident); related series (a device and the
    /// devices under it, the cgroups and VMs issuing its I/O) join it while it lasts.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub group_within: Duration,
    /// A cgroup's or VM's run-queue regression and a block regression whose starts lie
    /// within this of each other are one incident (0: only when the node's own run
    /// queue regressed too). CPU contention slows loop and device-mapper devices, whose
    /// work runs in kernel threads, and the cgroups waiting for a CPU in the same minute;
    /// a loop device's I/O burns CPU in its worker, which other cgroups then wait for.
    /// 2 min by default: on the soak recordings it made one incident of such pairs
    /// (2026-12-07: a competing reader's loop device and the CPU-bound cgroup it
    /// delayed, p50 ×7, at both intervals; steady4 5 → 4, steady5 3 → 2 alarms) and
    /// neither lost an injection nor added an alarm (docs/architecture.md).
    #[serde(deserialize_with = "crate::settings::duration")]
    pub group_cpu_and_io_within: Duration,
    /// Consecutive regressed windows that open an alarm, and normal ones that clear it.
    pub raise_after: u32,
    /// Regressed windows in a row that open an alarm for a minor shift (its latest
    /// window below `major_factor`): a shift of ×1.3–2 that lasts a minute is the
    /// ordinary weather of a shared node, one that lasts longer is news. Larger shifts
    /// open after `raise_after`.
    pub minor_raise_after: u32,
    pub clear_after: u32,
    /// Shift factors from which an alarm is `major` and `critical` (below: `minor`).
    pub major_factor: f64,
    pub critical_factor: f64,
    /// Operations (the `op` label) whose latency is recorded and exported but not
    /// judged: by default discards, whose time follows the size of the range freed
    /// (a deleted build tree against one file) and which no request waits for.
    pub ignore_ops: Vec<String>,
    /// `[detect.scalar]`: anomalies in numbers per interval (rates, gauges).
    pub scalar: super::scalar::ScalarConfig,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            families: Vec::new(),
            min_window: Duration::from_secs(30),
            min_intervals: 1,
            max_window: Duration::from_secs(300),
            max_intervals: 10_000,
            align_windows: false,
            min_samples: 1000,
            learning_period: Duration::from_secs(20 * 60),
            baseline_windows: 20,
            baseline_half_life: 120.0,
            drift_ratio: DEFAULT_DRIFT_RATIO,
            drift_horizon: Duration::from_secs(DEFAULT_DRIFT_HORIZON_H * 3_600),
            significance: 1e-3,
            p50_ratio: 1.2,
            p90_ratio: 1.25,
            p99_ratio: 1.25,
            min_shift: default_min_shifts(),
            default_min_shift: Duration::from_micros(DEFAULT_MIN_SHIFT_US),
            group_within: Duration::from_secs(120),
            group_cpu_and_io_within: Duration::from_secs(120),
            raise_after: 2,
            minor_raise_after: 2,
            clear_after: 3,
            major_factor: 2.0,
            critical_factor: 4.0,
            ignore_ops: vec!["discard".to_owned()],
            scalar: super::scalar::ScalarConfig::default(),
        }
    }
}

/// A slow drift alarms once the baseline has grown by half in `drift_horizon`.
const DEFAULT_DRIFT_RATIO: f64 = 1.5;
const DEFAULT_DRIFT_HORIZON_H: u64 = 6;

/// Absolute shift floors: practical significance, the smallest move of a quantile an
/// operator would act on, not a noise level (ordinary scatter is the dispersion's, the
/// envelope's and the hysteresis' job). Block: 200 µs, so that an NVMe device whose
/// p99 doubles from 250 µs is caught while the tens of microseconds a loop device's
/// p50 wanders by on a shared node are not (a new user's steady fio saw 27 of 71
/// alarms below 50 µs), nor the 110–180 µs by which the VM disk's write p90 moved
/// under neighbours' builds in the held-out soak hour (its last alarms at 100 µs).
/// Run queues 2 ms, TCP RTT 1 ms, KVM exits 50–200 µs. See docs/architecture.md
/// ("Regression detection") for what the soak recordings showed.
const DEFAULT_MIN_SHIFTS_US: &[(&str, u64)] = &[
    ("block.io.latency", 200),
    ("block.io.queue.latency", 200),
    ("block.io.device.latency", 200),
    ("block.cgroup.io.latency", 200),
    ("sched.runqueue.latency", 2_000),
    ("cgroup.runqueue.latency", 2_000),
    ("vm.vcpu.wait", 2_000),
    ("kvm.exit.userspace.latency", 200),
    ("kvm.exit.latency", 50),
    ("net.tcp.rtt", 1_000),
];
/// For families not in the table above (their own or a configured one).
const DEFAULT_MIN_SHIFT_US: u64 = 10;

fn default_min_shifts() -> BTreeMap<String, Duration> {
    DEFAULT_MIN_SHIFTS_US
        .iter()
        .map(|&(family, us)| (family.to_owned(), Duration::from_micros(us)))
        .collect()
}

/// `[detect.min_shift]`: `family = "500us"` entries, merged over the defaults.
fn shift_table<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Duration>, D::Error> {
    let given = BTreeMap::<String, String>::deserialize(d)?;
    let mut table = default_min_shifts();
    for (family, text) in given {
        let shift = crate::settings::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("min_shift.{family}: {e}")))?;
        table.insert(family, shift);
    }
    Ok(table)
}

fn invalid(key: &'static str, problem: String) -> ConfigError {
    ConfigError::Invalid { key, problem }
}

impl DetectConfig {
    /// The absolute shift floor of `family`, in ns.
    pub fn min_shift_ns(&self, family: &str) -> f64 {
        self.min_shift
            .get(family)
            .unwrap_or(&self.default_min_shift)
            .as_nanos() as f64
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.scalar.validate()?;
        if self.min_window.is_zero() || self.max_window < self.min_window {
            return Err(invalid(
                "detect.max_window",
                format!(
                    "windows need min_window > 0 and max_window >= min_window, got {} and {}",
                    humantime::format_duration(self.min_window),
                    humantime::format_duration(self.max_window)
                ),
            ));
        }
        if self.learning_period > Duration::from_secs(7 * 86_400) {
            return Err(invalid(
                "detect.learning_period",
                format!(
                    "at most 7 days, got {}; 20m learns a busy series, a few hours a node's \
                     periodic jobs",
                    humantime::format_duration(self.learning_period)
                ),
            ));
        }
        const OPS: [&str; 5] = ["read", "write", "flush", "discard", "other"];
        if let Some(op) = self
            .ignore_ops
            .iter()
            .find(|op| !OPS.contains(&op.as_str()))
        {
            return Err(invalid(
                "detect.ignore_ops",
                format!(
                    "`{op}` is not an operation nodepulse labels block I/O with; use any of \
                     read, write, flush, discard, other (or [] to judge them all)"
                ),
            ));
        }
        for (family, shift) in &self.min_shift {
            if crate::catalog::unit(family) != "ns" && !self.families.contains(family) {
                return Err(invalid(
                    "detect.min_shift",
                    format!(
                        "`{family}` is not a latency family nodepulse watches; use a family \
                         name such as block.io.latency (README: Metrics)"
                    ),
                ));
            }
            if *shift > Duration::from_secs(60) {
                return Err(invalid(
                    "detect.min_shift",
                    format!(
                        "{family}: at most 60s, got {}",
                        humantime::format_duration(*shift)
                    ),
                ));
            }
        }
        let counts = [
            ("detect.min_intervals", self.min_intervals, 1, 1000),
            ("detect.max_intervals", self.max_intervals, 1, 10_000),
            ("detect.baseline_windows", self.baseline_windows, 1, 10_000),
            ("detect.raise_after", self.raise_after, 1, 100),
            ("detect.minor_raise_after", self.minor_raise_after, 1, 100),
            ("detect.clear_after", self.clear_after, 1, 100),
        ];
        for (key, value, lo, hi) in counts {
            if !(lo..=hi).contains(&value) {
                return Err(invalid(
                    key,
                    format!("must be between {lo} and {hi}, got {value}"),
                ));
            }
        }
        if self.max_intervals < self.min_intervals {
            return Err(invalid(
                "detect.max_intervals",
                format!(
                    "must be at least detect.min_intervals ({}), got {}",
                    self.min_intervals, self.max_intervals
                ),
            ));
        }
        if !(10..=100_000_000).contains(&self.min_samples) {
            return Err(invalid(
                "detect.min_samples",
                format!("must be between 10 and 100000000, got {}", self.min_samples),
            ));
        }
        if !(self.baseline_half_life >= 1.0 && self.baseline_half_life <= 1e6) {
            return Err(invalid(
                "detect.baseline_half_life",
                format!(
                    "must be between 1 and 1000000 windows, got {}",
                    self.baseline_half_life
                ),
            ));
        }
        let horizon = self.drift_horizon;
        if !horizon.is_zero()
            && !(Duration::from_secs(3_600)..=Duration::from_secs(7 * 86_400)).contains(&horizon)
        {
            return Err(invalid(
                "detect.drift_horizon",
                format!(
                    "between 1h and 7 days (or \"0s\" for no drift check), got {}",
                    humantime::format_duration(horizon)
                ),
            ));
        }
        if !(self.significance > 0.0 && self.significance <= 0.1) {
            return Err(invalid(
                "detect.significance",
                format!("must be in (0, 0.1], e.g. 1e-4, got {}", self.significance),
            ));
        }
        let ratios = [
            ("detect.p50_ratio", self.p50_ratio),
            ("detect.p90_ratio", self.p90_ratio),
            ("detect.p99_ratio", self.p99_ratio),
            ("detect.drift_ratio", self.drift_ratio),
            ("detect.major_factor", self.major_factor),
            ("detect.critical_factor", self.critical_factor),
        ];
        for (key, value) in ratios {
            if !(value > 1.0 && value <= 1000.0) {
                return Err(invalid(
                    key,
                    format!("must be a ratio above 1 (1.3 means +30 %), got {value}"),
                ));
            }
        }
        if self.critical_factor < self.major_factor {
            return Err(invalid(
                "detect.critical_factor",
                format!(
                    "must be at least detect.major_factor ({}), got {}",
                    self.major_factor, self.critical_factor
                ),
            ));
        }
        Ok(())
    }

    /// Whether a series of a watched family is judged: not when its operation is one
    /// of `ignore_ops`.
    pub fn judges(&self, labels: &BTreeMap<String, String>) -> bool {
        labels
            .get("op")
            .is_none_or(|op| !self.ignore_ops.iter().any(|i| i == op))
    }

    pub fn watches(&self, family: &str) -> bool {
        if !self.enabled {
            return false;
        }
        if self.families.is_empty() {
            return crate::catalog::unit(family) == "ns" && family != NOT_A_WAIT;
        }
        self.families.iter().any(|f| f == family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_only_latency_families_are_watched() {
        let c = DetectConfig::default();
        assert!(c.watches("block.io.latency"));
        assert!(c.watches("sched.runqueue.latency"));
        assert!(!c.watches("block.io.size"), "bytes are not a latency");
        assert!(!c.watches("block.io.queue_depth"));
        assert!(!c.watches("kvm.run.duration"));
        let only = DetectConfig {
            families: vec!["block.io.size".into()],
            ..DetectConfig::default()
        };
        assert!(only.watches("block.io.size") && !only.watches("block.io.latency"));
        let off = DetectConfig {
            enabled: false,
            ..DetectConfig::default()
        };
        assert!(!off.watches("block.io.latency"));
    }

    #[test]
    fn drift_settings_are_checked() {
        let with = |ratio: f64, hours: u64| DetectConfig {
            drift_ratio: ratio,
            drift_horizon: Duration::from_secs(hours * 3_600),
            ..DetectConfig::default()
        };
        assert!(with(1.5, 6).validate().is_ok() && with(1.5, 0).validate().is_ok());
        let e = with(1.0, 6).validate().unwrap_err().to_string();
        assert!(
            e.contains("detect.drift_ratio") && e.contains("above 1"),
            "{e}"
        );
        let mut short = with(1.5, 0);
        short.drift_horizon = Duration::from_secs(1_800);
        let e = short.validate().unwrap_err().to_string();
        assert!(
            e.contains("detect.drift_horizon") && e.contains("30m"),
            "{e}"
        );
        assert!(with(1.5, 8 * 24).validate().is_err());
    }

    #[test]
    fn discards_are_not_judged_unless_asked_and_unknown_ops_are_refused() {
        let op = |o: &str| BTreeMap::from([("op".to_owned(), o.to_owned())]);
        let c = DetectConfig::default();
        assert!(!c.judges(&op("discard")));
        assert!(c.judges(&op("read")) && c.judges(&op("flush")));
        assert!(
            c.judges(&BTreeMap::new()),
            "series without an op are judged"
        );
        let all = DetectConfig {
            ignore_ops: Vec::new(),
            ..DetectConfig::default()
        };
        assert!(all.judges(&op("discard")));
        let bad = DetectConfig {
            ignore_ops: vec!["trim".into()],
            ..DetectConfig::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("ignore_ops") && e.contains("`trim`"), "{e}");
    }
}
