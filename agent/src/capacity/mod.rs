//! Capacity: how close each resource is to saturation and when it gets there. Each
//! interval derives utilisation and saturation signals from the report (block
//! devices, run queues per CPU and host, vCPU wait per VM) and the kernel's pressure
//! stall accounting (host and cgroups), learns each device's latency knee (headroom),
//! and forecasts when fractions reach saturation.

mod config;
pub mod forecast;
pub mod knee;
pub mod psi;
pub mod signals;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

pub use config::CapacityConfig;
pub use signals::Signal;

use crate::{detect::Alarm, report::Report};

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
    /// CPUs beyond `capacity.max_cpus` (the least saturated), without a signal of
    /// their own; the host-wide signal still counts them.
    pub cpus_dropped: usize,
}

/// Whether a signal is forecast: fractions with a natural saturation level, for the
/// whole resource (a device, not one operation; the host's run queues, not each CPU,
/// which the scheduler balances and the per-CPU budget picks anew each interval).
fn forecast_input(s: &Signal) -> bool {
    match s.name {
        "busy" => !s.labels.contains_key("op"),
        "pressure_some" | "vcpu_wait_share" => true,
        "runqueue_saturation" => !s.labels.contains_key("cpu"),
        _ => false,
    }
}

/// The capacity state the pipeline keeps between intervals.
pub struct Capacity {
    config: CapacityConfig,
    pressure: psi::Pressure,
    knees: HashMap<String, knee::KneeLearner>,
    forecasters: HashMap<(String, &'static str), forecast::Forecaster>,
    forecasts: BTreeMap<(String, &'static str), forecast::Forecast>,
    /// Open alarms, as the detector's, and those of this interval for the pipeline.
    open: BTreeMap<(String, &'static str), Alarm>,
    pending: Vec<Alarm>,
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
            pending: Vec::new(),
        }
    }

    /// The interval's signals, headroom, forecasts and alarms at `unix_s`.
    pub fn update(&mut self, report: &Report, unix_s: u64) -> CapacityReport {
        let (mut signals, loads) = signals::block(report);
        let (runq, cpus_dropped) = signals::runqueue(report, self.config.max_cpus);
        signals.extend(runq);
        signals.extend(signals::vcpu_wait(report));
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
            .filter(|s| forecast_input(s))
            .map(|s| (s.resource.clone(), s.name))
            .collect();
        self.forecasters.retain(|k, _| live.contains(k));
        self.forecasts.retain(|k, _| live.contains(k));
        let level = self.config.interval_percent / 100.0;
        for s in signals.iter().filter(|s| forecast_input(s)) {
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
        let alarms = self.alarms(&forecasts, &report.node, unix_s * 1_000_000_000);
        CapacityReport {
            signals,
            headroom,
            forecasts,
            alarms,
            cgroups_dropped: self.pressure.cgroups_dropped,
            cpus_dropped,
        }
    }

    /// Opens an alarm for a signal whose interval lies wholly within the alarm
    /// horizon (the late end too: few false alarms), resolves it once not. Each is also
    /// kept as a detector alarm (same ids, trace and actions), taken by the pipeline.
    fn alarms(
        &mut self,
        forecasts: &[SignalForecast],
        node: &str,
        now_ns: u64,
    ) -> Vec<CapacityAlarm> {
        let within = self.config.alarm_within_h;
        let mut out = Vec::new();
        let mut still = BTreeMap::new();
        for f in forecasts {
            let key = (f.resource.clone(), f.signal);
            let due = f.forecast.upper_h.is_some_and(|h| h <= within);
            let summary = summary(f, self.config.interval_percent);
            let alarm = match (due, self.open.remove(&key)) {
                (false, None) => continue,
                (true, None) => {
                    let labels = BTreeMap::from([
                        ("resource".to_owned(), f.resource.clone()),
                        ("signal".to_owned(), f.signal.to_owned()),
                    ]);
                    let series = format!(
                        "{ALARM_FAMILY}{{resource={},signal={}}}",
                        f.resource, f.signal
                    );
                    Alarm::open_capacity(
                        node,
                        ALARM_FAMILY,
                        &labels,
                        &series,
                        now_ns,
                        summary.clone(),
                    )
                }
                (true, Some(mut a)) => {
                    a.update_capacity(summary.clone(), a.regressed_windows + 1);
                    a
                }
                (false, Some(mut a)) => {
                    a.resolve(now_ns);
                    a
                }
            };
            out.push(CapacityAlarm {
                resource: f.resource.clone(),
                signal: f.signal,
                state: alarm.state.as_str(),
                summary,
                forecast: f.forecast,
            });
            if due {
                still.insert(key, alarm.clone());
            }
            self.pending.push(alarm);
        }
        // A signal no longer forecast (no longer reported) resolves its alarm too.
        for (_, mut a) in std::mem::take(&mut self.open) {
            a.resolve(now_ns);
            self.pending.push(a);
        }
        self.open = still;
        out
    }

    /// This interval's capacity alarms in the detector's form, for actions and export.
    pub fn take_alarms(&mut self) -> Vec<Alarm> {
        std::mem::take(&mut self.pending)
    }
}

/// The family capacity alarms are raised on.
pub const ALARM_FAMILY: &str = "capacity.time_to_saturation";

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
    use crate::detect::AlarmState;

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
        let a = c.alarms(&[forecast(4.0, 6.0, Some(9.0))], "node-a", 1_000);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].state, "open");
        assert_eq!(
            a[0].summary,
            "io:sdb busy predicted to reach 0.9 within 6 h, 90 % interval 4-9 h"
        );
        let opened = c.take_alarms();
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].state, AlarmState::Open);
        assert_eq!(opened[0].family, ALARM_FAMILY);
        assert_eq!(
            opened[0].series,
            "capacity.time_to_saturation{resource=io:sdb,signal=busy}"
        );
        assert!(
            opened[0]
                .summary
                .starts_with("io:sdb busy predicted to reach 0.9")
        );
        assert_eq!(
            c.alarms(&[forecast(4.0, 6.0, Some(9.0))], "node-a", 2_000)[0].state,
            "ongoing"
        );
        let ongoing = c.take_alarms();
        assert_eq!(ongoing[0].state, AlarmState::Ongoing);
        assert_eq!(ongoing[0].regressed_windows, 2);
        // One alarm throughout: the same id and trace, so actions and the incident
        // trace follow it as they follow a latency alarm.
        assert_eq!(
            (&ongoing[0].id, &ongoing[0].trace_id),
            (&opened[0].id, &opened[0].trace_id)
        );
        // The late end beyond the horizon (or never): not sure enough, resolved.
        assert_eq!(
            c.alarms(&[forecast(4.0, 10.0, None)], "node-a", 3_000)[0].state,
            "resolved"
        );
        let resolved = c.take_alarms();
        assert_eq!(resolved[0].state, AlarmState::Resolved);
        assert_eq!(resolved[0].id, opened[0].id);
        assert_eq!(resolved[0].end_unix_nano, Some(3_000));
        assert!(
            resolved[0]
                .summary
                .contains("no longer forecast to saturate"),
            "{}",
            resolved[0].summary
        );
        assert!(
            c.alarms(&[forecast(4.0, 10.0, None)], "node-a", 4_000)
                .is_empty()
        );
        assert!(
            c.alarms(&[forecast(20.0, 30.0, Some(40.0))], "node-a", 5_000)
                .is_empty()
        );
        assert!(c.take_alarms().is_empty());
    }

    #[test]
    fn forecasts_take_the_hosts_run_queues_and_each_vm_not_each_cpu() {
        let signal = |resource: &str, name, labels: &[(&'static str, &str)]| Signal {
            resource: resource.into(),
            name,
            labels: labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            value: 0.5,
            unit: "1",
        };
        assert!(forecast_input(&signal("cpu", "runqueue_saturation", &[])));
        assert!(!forecast_input(&signal(
            "cpu:1",
            "runqueue_saturation",
            &[("cpu", "1")]
        )));
        assert!(forecast_input(&signal(
            "vm:web",
            "vcpu_wait_share",
            &[("vm", "web")]
        )));
        assert!(forecast_input(&signal(
            "io:sdb",
            "busy",
            &[("device", "sdb")]
        )));
        assert!(!forecast_input(&signal(
            "io:sdb",
            "iops",
            &[("op", "read")]
        )));
    }

    #[test]
    fn an_alarm_whose_signal_is_no_longer_forecast_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let config = CapacityConfig {
            proc_root: dir.path().to_path_buf(),
            alarm_within_h: 12.0,
            ..Default::default()
        };
        let mut c = Capacity::new(&config);
        c.alarms(&[forecast(4.0, 6.0, Some(9.0))], "node-a", 1_000);
        let id = c.take_alarms()[0].id.clone();
        assert!(c.alarms(&[], "node-a", 2_000).is_empty());
        let gone = c.take_alarms();
        assert_eq!(gone.len(), 1);
        assert_eq!(
            (gone[0].id.as_str(), gone[0].state),
            (id.as_str(), AlarmState::Resolved)
        );
    }
}
