//! Capacity: how close each resource is to saturation and when it gets there. Each
//! interval derives utilisation and saturation signals from the report (block
//! devices) and the kernel's pressure stall accounting (host and cgroups), learns each
//! device's latency knee (headroom), and forecasts when fractions reach saturation.

mod config;
pub mod forecast;
pub mod knee;
pub mod psi;
pub mod signals;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

pub use config::CapacityConfig;
pub use signals::Signal;

use crate::report::Report;

/// Headroom of one device: the share of its knee load still unused.
#[derive(Clone, Debug, Serialize)]
pub struct Headroom {
    pub resource: String,
    pub device: String,
    /// 1 − load / knee (0 at or beyond the knee).
    pub headroom: f64,
    /// false: no knee seen yet; `headroom` is then a lower bound, against the
    /// highest load seen.
    pub knee_known: bool,
    pub load_iops: f64,
    pub knee: knee::Knee,
}

/// A signal's forecast, with what it is about.
#[derive(Clone, Debug, Serialize)]
pub struct SignalForecast {
    pub resource: String,
    pub signal: &'static str,
    pub limit: f64,
    #[serde(flatten)]
    pub forecast: forecast::Forecast,
}

/// A predicted saturation within `capacity.alarm_within_h`.
#[derive(Clone, Debug, Serialize)]
pub struct CapacityAlarm {
    pub resource: String,
    pub signal: &'static str,
    /// `open` the first interval, `ongoing` while it holds, `resolved` once not.
    pub state: &'static str,
    pub summary: String,
    pub forecast: forecast::Forecast,
}

/// The capacity part of one report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CapacityReport {
    pub signals: Vec<Signal>,
    pub headroom: Vec<Headroom>,
    pub forecasts: Vec<SignalForecast>,
    pub alarms: Vec<CapacityAlarm>,
    /// Cgroups with pressure beyond `capacity.max_cgroups`, not reported.
    pub cgroups_dropped: usize,
}

/// Signals forecast: fractions with a natural saturation level.
const FORECAST: [&str; 2] = ["busy", "pressure_some"];

/// The capacity state the pipeline keeps between intervals.
pub struct Capacity {
    config: CapacityConfig,
    pressure: psi::Pressure,
    knees: HashMap<String, knee::KneeLearner>,
    forecasters: HashMap<(String, &'static str), forecast::Forecaster>,
    forecasts: BTreeMap<(String, &'static str), forecast::Forecast>,
    open: BTreeMap<(String, &'static str), ()>,
}

impl Capacity {
    pub fn new(config: &CapacityConfig) -> Self {
        let cgroup_root = if config.cgroup_root.as_os_str().is_empty() {
            std::fs::read_to_string(config.proc_root.join("mounts"))
                .ok()
                .and_then(|m| psi::cgroup2_root(&m))
        } else {
            Some(config.cgroup_root.clone())
        };
        let mut pressure = psi::Pressure::new(&config.proc_root, cgroup_root, config.max_cgroups);
        // The first totals, so that the first report already has shares.
        pressure.update(0.0);
        Self {
            config: config.clone(),
            pressure,
            knees: HashMap::new(),
            forecasters: HashMap::new(),
            forecasts: BTreeMap::new(),
            open: BTreeMap::new(),
        }
    }

    /// The interval's signals, headroom, forecasts and alarms at `unix_s`.
    pub fn update(&mut self, report: &Report, unix_s: u64) -> CapacityReport {
        let (mut signals, loads) = signals::block(report);
        let shares = self.pressure.update(report.interval_s * 1e6);
        signals.extend(signals::pressure(&shares));

        let mut headroom = Vec::new();
        for (device, load) in &loads {
            let learner = self
                .knees
                .entry(device.clone())
                .or_insert_with(|| knee::KneeLearner::new(self.config.knee_multiple, 1));
            if let (Some(p99), true) = (load.p99_ns, load.requests >= self.config.knee_min_requests)
            {
                learner.observe(load.iops, p99);
            }
            if let Some(k) = learner.knee() {
                let (h, known) = k.headroom(load.iops);
                headroom.push(Headroom {
                    resource: format!("io:{device}"),
                    device: device.clone(),
                    headroom: h,
                    knee_known: known,
                    load_iops: load.iops,
                    knee: k,
                });
            }
        }
        // Only signals still reported keep a forecaster: memory follows the budget.
        let live: Vec<(String, &'static str)> = signals
            .iter()
            .filter(|s| FORECAST.contains(&s.name) && !s.labels.contains_key("op"))
            .map(|s| (s.resource.clone(), s.name))
            .collect();
        self.forecasters.retain(|k, _| live.contains(k));
        self.forecasts.retain(|k, _| live.contains(k));
        let level = self.config.interval_percent / 100.0;
        for s in signals.iter().filter(|s| FORECAST.contains(&s.name)) {
            let key = (s.resource.clone(), s.name);
            let f = self.forecasters.entry(key.clone()).or_default();
            if f.observe(unix_s, s.value)
                && let Some(fc) = f.forecast(unix_s, self.config.saturation, level)
            {
                self.forecasts.insert(key, fc);
            }
        }
        let forecasts: Vec<SignalForecast> = self
            .forecasts
            .iter()
            .map(|((resource, signal), f)| SignalForecast {
                resource: resource.clone(),
                signal,
                limit: self.config.saturation,
                forecast: *f,
            })
            .collect();
        let alarms = self.alarms(&forecasts);
        CapacityReport {
            signals,
            headroom,
            forecasts,
            alarms,
            cgroups_dropped: self.pressure.cgroups_dropped,
        }
    }

    /// Opens an alarm for a signal whose interval lies wholly within the alarm
    /// horizon (the late end too: few false alarms), resolves it once not.
    fn alarms(&mut self, forecasts: &[SignalForecast]) -> Vec<CapacityAlarm> {
        let within = self.config.alarm_within_h;
        let mut out = Vec::new();
        let mut still = BTreeMap::new();
        for f in forecasts {
            let key = (f.resource.clone(), f.signal);
            let due = f.forecast.upper_h.is_some_and(|h| h <= within);
            let was = self.open.contains_key(&key);
            if due || was {
                let state = match (due, was) {
                    (true, false) => "open",
                    (true, true) => "ongoing",
                    _ => "resolved",
                };
                if due {
                    still.insert(key, ());
                }
                out.push(CapacityAlarm {
                    resource: f.resource.clone(),
                    signal: f.signal,
                    state,
                    summary: summary(f, self.config.interval_percent),
                    forecast: f.forecast,
                });
            }
        }
        self.open = still;
        out
    }
}

/// "io:sdb busy predicted to saturate within 6 h, 90 % interval 4-9 h".
pub fn summary(f: &SignalForecast, percent: f64) -> String {
    let h = |v: Option<f64>| v.map_or("never".into(), |v| format!("{v:.0}"));
    format!(
        "{} {} predicted to reach {} within {} h, {percent:.0} % interval {}-{} h",
        f.resource,
        f.signal,
        f.limit,
        h(f.forecast.hours),
        h(f.forecast.lower_h),
        h(f.forecast.upper_h),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forecast(lower: f64, point: f64, upper: Option<f64>) -> SignalForecast {
        SignalForecast {
            resource: "io:sdb".into(),
            signal: "busy",
            limit: 0.9,
            forecast: forecast::Forecast {
                hours: Some(point),
                lower_h: Some(lower),
                upper_h: upper,
                slope_per_day: 0.1,
                sigma: 0.01,
                buckets: 100,
            },
        }
    }

    #[test]
    fn a_predicted_saturation_opens_holds_and_resolves_an_alarm() {
        let dir = tempfile::tempdir().unwrap();
        let config = CapacityConfig {
            proc_root: dir.path().to_path_buf(),
            alarm_within_h: 12.0,
            ..Default::default()
        };
        let mut c = Capacity::new(&config);
        let a = c.alarms(&[forecast(4.0, 6.0, Some(9.0))]);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].state, "open");
        assert_eq!(
            a[0].summary,
            "io:sdb busy predicted to reach 0.9 within 6 h, 90 % interval 4-9 h"
        );
        assert_eq!(
            c.alarms(&[forecast(4.0, 6.0, Some(9.0))])[0].state,
            "ongoing"
        );
        // The late end beyond the horizon (or never): not sure enough, resolved.
        assert_eq!(c.alarms(&[forecast(4.0, 10.0, None)])[0].state, "resolved");
        assert!(c.alarms(&[forecast(4.0, 10.0, None)]).is_empty());
        assert!(c.alarms(&[forecast(20.0, 30.0, Some(40.0))]).is_empty());
    }
}
