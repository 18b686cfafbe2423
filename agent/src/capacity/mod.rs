//! Capacity: how close each resource is to saturation and when it gets there. Each
//! interval derives utilisation and saturation signals from the report (block
//! devices, run queues per CPU and host, vCPU wait per VM) and the kernel's pressure
//! stall accounting (host and cgroups), learns each device's latency knee (headroom),
//! and forecasts when fractions reach saturation.

mod config;
pub mod forecast;
pub mod knee;
pub mod psi;
pub mod replay;
pub mod signals;
pub mod standing;

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
    /// A device's busy fraction only: how much of its growth its load explains (the
    /// relative growth of IO/s or bytes/s over that of busy; 1: all of it). Below
    /// [`DEMAND_SHARE_MIN`] no alarm is raised: the device got slower at the same load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demand_share: Option<f64>,
}

/// A device's busy fraction is forecast to saturate as an alarm only when its load
/// grows at least half as fast (relatively) as its busy time. A busy fraction that
/// grows at a steady load is a device whose service time grew: for a loop device
/// (or anything whose service time is a CPU's work), the host's CPU load, which the
/// `cpu` signals forecast on their own. Measured: soak-steady4's loop0 (800 IO/s
/// offered throughout) went from busy 0.6 to 0.75 as host load rose, and was alarmed
/// at 52 of 63 refits before this rule.
pub const DEMAND_SHARE_MIN: f64 = 0.5;

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
pub(crate) fn forecast_input(s: &Signal) -> bool {
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
    /// `None` offline (a replay reads the pressure recorded, not this host's).
    pressure: Option<psi::Pressure>,
    knees: HashMap<String, knee::KneeLearner>,
    forecasters: HashMap<(String, &'static str), forecast::Forecaster>,
    forecasts: BTreeMap<(String, &'static str), forecast::Forecast>,
    /// Per device, its IO/s and bytes/s (all operations) in the same buckets, and at
    /// each refit of its busy forecast the share of that growth its load explains.
    demand: HashMap<String, [forecast::Forecaster; 2]>,
    demand_share: HashMap<String, f64>,
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
            pressure: Some(pressure),
            ..Self::offline(config)
        }
    }

    /// Capacity state fed only through `learn` (a replay): reads nothing of this host.
    pub fn offline(config: &CapacityConfig) -> Self {
        Self {
            config: config.clone(),
            pressure: None,
            knees: HashMap::new(),
            forecasters: HashMap::new(),
            forecasts: BTreeMap::new(),
            demand: HashMap::new(),
            demand_share: HashMap::new(),
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
        if let Some(p) = &mut self.pressure {
            signals.extend(signals::pressure(&p.update(report.interval_s * 1e6)));
        }
        self.learn(signals, &loads, cpus_dropped, &report.node, unix_s)
    }

    /// Headroom, forecasts and alarms from one interval's signals and device loads at
    /// `unix_s`: what `update` does once it has derived them, and what a replay feeds
    /// from a recording.
    pub fn learn(
        &mut self,
        signals: Vec<Signal>,
        loads: &BTreeMap<String, signals::DeviceLoad>,
        cpus_dropped: usize,
        node: &str,
        unix_s: u64,
    ) -> CapacityReport {
        let mut headroom = Vec::new();
        for (device, load) in loads {
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
        let live: std::collections::HashSet<(String, &'static str)> = signals
            .iter()
            .filter(|s| forecast_input(s))
            .map(|s| (s.resource.clone(), s.name))
            .collect();
        self.forecasters.retain(|k, _| live.contains(k));
        self.forecasts.retain(|k, _| live.contains(k));
        self.observe_demand(&signals, unix_s);
        let level = self.config.interval_percent / 100.0;
        for s in signals.iter().filter(|s| forecast_input(s)) {
            let key = (s.resource.clone(), s.name);
            let f = self.forecasters.entry(key.clone()).or_default();
            if f.observe(unix_s, s.value)
                && let Some(fc) = f.forecast(unix_s, self.config.saturation, level)
            {
                if s.name == "busy" {
                    let share = demand_share(f, self.demand.get(&s.resource));
                    self.demand_share.insert(s.resource.clone(), share);
                }
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
                demand_share: (*signal == "busy")
                    .then(|| self.demand_share.get(resource).copied())
                    .flatten(),
            })
            .collect();
        let alarms = self.alarms(&forecasts, node, unix_s * 1_000_000_000);
        CapacityReport {
            signals,
            headroom,
            forecasts,
            alarms,
            cgroups_dropped: self.pressure.as_ref().map_or(0, |p| p.cgroups_dropped),
            cpus_dropped,
        }
    }

    /// Each device's load (IO/s and bytes/s summed over its operations) into its
    /// demand forecasters; devices no longer reported are forgotten.
    fn observe_demand(&mut self, signals: &[Signal], unix_s: u64) {
        let mut load: BTreeMap<&str, [f64; 2]> = BTreeMap::new();
        for s in signals {
            let i = match s.name {
                "iops" => 0,
                "bytes_per_s" => 1,
                _ => continue,
            };
            if s.resource.starts_with("io:") {
                load.entry(&s.resource).or_default()[i] += s.value;
            }
        }
        self.demand.retain(|d, _| load.contains_key(d.as_str()));
        self.demand_share
            .retain(|d, _| load.contains_key(d.as_str()));
        for (device, values) in load {
            let f = self.demand.entry(device.to_owned()).or_default();
            for (f, v) in f.iter_mut().zip(values) {
                f.observe(unix_s, v);
            }
        }
    }

    /// Signals still learning their trend (no forecast yet): resource, signal and the
    /// buckets the forecaster still needs.
    pub fn learning(&self) -> Vec<(String, &'static str, usize)> {
        self.forecasters
            .iter()
            .filter(|(k, _)| !self.forecasts.contains_key(*k))
            .map(|((r, s), f)| (r.clone(), *s, f.buckets_needed()))
            .collect()
    }

    /// The closed 10-minute buckets a signal's forecast is fitted to: (start, unix
    /// seconds; mean).
    pub fn history(&self, resource: &str, signal: &str) -> Vec<(u64, f64)> {
        self.forecasters
            .iter()
            .find(|((r, s), _)| r == resource && *s == signal)
            .map(|(_, f)| f.buckets().collect())
            .unwrap_or_default()
    }

    pub fn config(&self) -> &CapacityConfig {
        &self.config
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
            let due = f.forecast.upper_h.is_some_and(|h| h <= within)
                && f.demand_share.is_none_or(|d| d >= DEMAND_SHARE_MIN);
            // The usual interval: nothing due, nothing open (no key, no summary made).
            if !due && self.open.is_empty() {
                continue;
            }
            let key = (f.resource.clone(), f.signal);
            let open = self.open.remove(&key);
            if !due && open.is_none() {
                continue;
            }
            let summary = summary(f, self.config.interval_percent);
            let alarm = match (due, open) {
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

/// The share of a busy fraction's relative growth that its device's load explains:
/// the faster relative growth of IO/s and bytes/s over that of busy. 1 when busy does
/// not grow (nothing to explain), 0 without load.
fn demand_share(busy: &forecast::Forecaster, demand: Option<&[forecast::Forecaster; 2]>) -> f64 {
    let growth = |f: &forecast::Forecaster| {
        f.trend().map_or(
            0.0,
            |(mean, slope)| if mean > 0.0 { slope / mean } else { 0.0 },
        )
    };
    let busy = growth(busy);
    if busy <= 0.0 {
        return 1.0;
    }
    let load = demand.map_or(0.0, |d| growth(&d[0]).max(growth(&d[1])));
    (load / busy).max(0.0)
}

/// The family capacity alarms are raised on.
pub const ALARM_FAMILY: &str = "capacity.time_to_saturation";

/// "io:sdb busy predicted to saturate within 6 h, 90 % interval 4-9 h"; or, when the
/// whole interval is at the limit already, that it is saturated now (a host whose CPU
/// pressure sat at 0.98 read "within 0 h, interval 0-0 h" at every refit).
pub fn summary(f: &SignalForecast, percent: f64) -> String {
    if f.forecast.upper_h == Some(0.0) {
        return format!(
            "{} {} at or above {} now ({percent:.0} % interval of its trend wholly above)",
            f.resource, f.signal, f.limit
        );
    }
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
            demand_share: None,
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
        // Saturated already: said so, not as a forecast of "0 h".
        assert_eq!(
            summary(&forecast(0.0, 0.0, Some(0.0)), 90.0),
            "io:sdb busy at or above 0.9 now (90 % interval of its trend wholly above)"
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

    /// Two devices whose busy fraction grows alike over four hours: one because its
    /// load grows, one at a steady load (a loop device whose worker waits longer for a
    /// CPU). Both are forecast; only the first raises an alarm.
    #[test]
    fn busy_growth_at_a_steady_load_is_forecast_but_not_alarmed() {
        let config = CapacityConfig {
            alarm_within_h: 24.0,
            ..Default::default()
        };
        let mut c = Capacity::offline(&config);
        let signal = Signal::device;
        let mut last = CapacityReport::default();
        let mut alarmed = BTreeMap::<String, usize>::new();
        for i in 0..240u64 {
            let busy = 0.3 + 0.4 * i as f64 / 240.0;
            let signals = vec![
                signal("ramp", "busy", None, busy, "1"),
                signal("ramp", "iops", Some("read"), 2_000.0 * busy, "{request}/s"),
                signal("steady", "busy", None, busy, "1"),
                signal("steady", "iops", Some("read"), 800.0, "{request}/s"),
                signal(
                    "steady",
                    "bytes_per_s",
                    Some("read"),
                    800.0 * 4096.0,
                    "By/s",
                ),
            ];
            last = c.learn(signals, &BTreeMap::new(), 0, "n", 1_800_000_000 + i * 60);
            for a in &last.alarms {
                if a.state != "resolved" {
                    *alarmed.entry(a.resource.clone()).or_default() += 1;
                }
            }
        }
        let share = |r: &str| {
            let f = last.forecasts.iter().find(|f| f.resource == r).unwrap();
            assert!(f.forecast.hours.is_some(), "{f:?}");
            f.demand_share.unwrap()
        };
        assert!(share("io:ramp") > 0.8, "{}", share("io:ramp"));
        assert!(share("io:steady") < 0.05, "{}", share("io:steady"));
        assert!(
            alarmed.get("io:ramp").is_some_and(|n| *n > 0),
            "{alarmed:?}"
        );
        assert_eq!(alarmed.get("io:steady"), None, "{alarmed:?}");
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
