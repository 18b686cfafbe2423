//! The `[capacity]` section: which saturation signals are derived, how the knee is
//! found, and when a forecast raises an alarm.

use std::path::PathBuf;

use serde::Deserialize;

use crate::settings::ConfigError;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// Derive utilisation and saturation signals, headroom and forecasts.
    pub enabled: bool,
    /// Where procfs is (`<proc_root>/pressure/{cpu,io,memory}`); a container reads the
    /// host's through a mount.
    pub proc_root: PathBuf,
    /// The cgroup2 hierarchy whose `*.pressure` files are read; empty: found in
    /// `/proc/mounts`.
    pub cgroup_root: PathBuf,
    /// At most this many cgroups get pressure signals each interval: those that
    /// stalled most (the rest are counted, not reported). 0: host pressure only.
    pub max_cgroups: usize,
    /// At most this many CPUs get a run-queue saturation signal of their own each
    /// interval: the most saturated (the host-wide signal covers every CPU).
    pub max_cpus: usize,
    /// The knee is the load at which a device's p99 latency exceeds this multiple of
    /// its unloaded p99.
    pub knee_multiple: f64,
    /// Intervals with at least this many completions count as evidence for the curve.
    pub knee_min_requests: u64,
    /// The level (busy fraction, pressure share) at which a resource counts as
    /// saturated, for forecasts.
    pub saturation: f64,
    /// Raise an alarm when a signal is forecast to saturate within this many hours
    /// (at the interval's upper confidence bound: the later end).
    pub alarm_within_h: f64,
    /// Width of the forecast's prediction interval, in percent.
    pub interval_percent: f64,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            proc_root: PathBuf::from("/proc"),
            cgroup_root: PathBuf::new(),
            max_cgroups: 20,
            max_cpus: 16,
            knee_multiple: 2.0,
            knee_min_requests: 50,
            saturation: 0.9,
            alarm_within_h: 24.0,
            interval_percent: 90.0,
        }
    }
}

impl CapacityConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.knee_multiple.is_finite() && self.knee_multiple > 1.0) {
            return Err(ConfigError::Invalid {
                key: "capacity.knee_multiple",
                problem: format!(
                    "must be a number above 1 (the knee is where p99 exceeds this multiple \
                     of its unloaded value), got {}",
                    self.knee_multiple
                ),
            });
        }
        if !(self.saturation > 0.0 && self.saturation <= 1.0) {
            return Err(ConfigError::Invalid {
                key: "capacity.saturation",
                problem: format!(
                    "must be a fraction in (0, 1], e.g. 0.9, got {}",
                    self.saturation
                ),
            });
        }
        if !(self.alarm_within_h.is_finite() && self.alarm_within_h > 0.0) {
            return Err(ConfigError::Invalid {
                key: "capacity.alarm_within_h",
                problem: format!(
                    "must be a positive number of hours, got {}",
                    self.alarm_within_h
                ),
            });
        }
        if !(self.interval_percent > 50.0 && self.interval_percent < 100.0) {
            return Err(ConfigError::Invalid {
                key: "capacity.interval_percent",
                problem: format!(
                    "must be between 50 and 100 (exclusive), e.g. 90, got {}",
                    self.interval_percent
                ),
            });
        }
        if self.max_cpus > 10_000 {
            return Err(ConfigError::Invalid {
                key: "capacity.max_cpus",
                problem: format!("must be at most 10000, got {}", self.max_cpus),
            });
        }
        if self.max_cgroups > 10_000 {
            return Err(ConfigError::Invalid {
                key: "capacity.max_cgroups",
                problem: format!("must be at most 10000, got {}", self.max_cgroups),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn err(text: &str) -> String {
        Config::parse(text, "test.toml").unwrap_err().to_string()
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, needle) in [
            (
                "knee_multiple = 1.0",
                "capacity.knee_multiple` must be a number above 1",
            ),
            (
                "saturation = 1.5",
                "capacity.saturation` must be a fraction",
            ),
            (
                "alarm_within_h = 0.0",
                "capacity.alarm_within_h` must be a positive",
            ),
            (
                "interval_percent = 100.0",
                "capacity.interval_percent` must be between",
            ),
            (
                "max_cgroups = 20000",
                "capacity.max_cgroups` must be at most",
            ),
            ("max_cpus = 20000", "capacity.max_cpus` must be at most"),
            ("bogus = 1", "unknown field `bogus`"),
        ] {
            let e = err(&format!("[capacity]\n{text}\n"));
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
