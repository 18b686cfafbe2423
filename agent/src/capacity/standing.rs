//! A node's capacity standing (`nodepulse capacity`): per resource its utilisation
//! in the last interval, headroom to its latency knee with the knee's evidence, and
//! forecast time to saturation, worst first.
//!
//! Worst first: resources forecast to saturate come first, soonest (the interval's
//! late end, then the point) first; then by how close they are now: the higher of
//! their largest saturation fraction (busy, run-queue saturation, pressure, vCPU wait)
//! and 1 − headroom to a known knee.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use super::{CapacityReport, Signal, forecast::BUCKET_S, replay::Replayed};
use crate::export::console::format_ns;

#[derive(Debug, Serialize)]
pub struct Standing {
    pub node: String,
    /// Reports replayed and the (stretched) hours they cover.
    pub reports: u64,
    pub hours: f64,
    pub stretch: f64,
    /// The forecast's saturation level and the knee's multiple of unloaded p99.
    pub saturation: f64,
    pub knee_multiple: f64,
    /// The forecast interval's level, %.
    pub interval_percent: f64,
    pub resources: Vec<Resource>,
}

#[derive(Debug, Serialize)]
pub struct Resource {
    pub resource: String,
    /// `device`, `cpu` (host run queues and CPU pressure), `vm`, `pressure` (host io
    /// or memory) or `cgroup`.
    pub kind: &'static str,
    /// The largest saturation fraction now, of the signals that are forecast.
    pub saturation_now: Option<f64>,
    /// Every signal of the last interval.
    pub now: Vec<Signal>,
    pub headroom: Option<Headroom>,
    pub forecast: Forecast,
}

/// A device's headroom to its knee, or why it is not known.
#[derive(Debug, Serialize)]
pub struct Headroom {
    /// 1 − load / knee load; `None` while no knee is known.
    pub headroom: Option<f64>,
    pub load_iops: f64,
    pub knee_iops: Option<f64>,
    pub unloaded_p99_ns: Option<f64>,
    /// p99 at the knee: `knee_multiple` × unloaded.
    pub knee_p99_ns: Option<f64>,
    pub max_load_seen: f64,
    /// Why no knee is known yet, when not.
    pub unknown: Option<String>,
    /// The evidence: the learned curve, p99 per bin of load.
    pub curve: Vec<super::knee::CurvePoint>,
}

/// The soonest forecast of a resource's signals.
#[derive(Debug, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Forecast {
    /// Reaches the saturation level within the horizon (14 days).
    Saturating {
        signal: &'static str,
        hours: f64,
        lower_h: Option<f64>,
        /// `None`: possibly never.
        upper_h: Option<f64>,
        /// A device's busy fraction: the share of its growth its load explains (no
        /// alarm below `DEMAND_SHARE_MIN`).
        #[serde(skip_serializing_if = "Option::is_none")]
        demand_share: Option<f64>,
    },
    /// Forecast, but not growing towards saturation within the horizon.
    NoTrend { slope_per_day: f64 },
    /// Not enough history yet.
    Learning { needs_h: f64 },
    /// None of its signals is forecast (e.g. a host's io or memory `full` pressure).
    None,
}

impl Standing {
    pub fn of(r: &Replayed) -> Self {
        let config = r.capacity.config();
        let learning = r.capacity.learning();
        let mut resources: BTreeMap<String, Resource> = BTreeMap::new();
        let c: &CapacityReport = &r.last;
        for s in &c.signals {
            // A CPU's own run queue is part of the host's CPU row.
            let key = if s.labels.contains_key("cpu") {
                "cpu".to_owned()
            } else {
                s.resource.clone()
            };
            let row = resources.entry(key.clone()).or_insert_with(|| Resource {
                kind: kind(s),
                resource: key,
                saturation_now: None,
                now: Vec::new(),
                headroom: None,
                forecast: Forecast::None,
            });
            if super::forecast_input(s) {
                row.saturation_now = Some(row.saturation_now.unwrap_or(0.0).max(s.value));
            }
            row.now.push(s.clone());
        }
        for row in resources.values_mut() {
            // Devices only: `io:<cgroup>` is a cgroup's io pressure.
            if let Some(device) = row.resource.strip_prefix("io:")
                && row.kind == "device"
            {
                row.headroom = Some(headroom(c, device, &row.resource, config));
            }
            row.forecast = forecast(c, &learning, &row.resource);
        }
        let mut resources: Vec<Resource> = resources.into_values().collect();
        resources.sort_by(|a, b| {
            let soon = |r: &Resource| match r.forecast {
                Forecast::Saturating { hours, upper_h, .. } => {
                    (0, upper_h.unwrap_or(f64::MAX), hours)
                }
                _ => (1, 0.0, 0.0),
            };
            let (sa, sb) = (soon(a), soon(b));
            sa.0.cmp(&sb.0)
                .then(sa.1.total_cmp(&sb.1))
                .then(sa.2.total_cmp(&sb.2))
                .then(closeness(b).total_cmp(&closeness(a)))
                .then(a.resource.cmp(&b.resource))
        });
        Self {
            node: r.node.clone(),
            reports: r.reports,
            hours: r.hours,
            stretch: r.stretch,
            saturation: config.saturation,
            knee_multiple: config.knee_multiple,
            interval_percent: config.interval_percent,
            resources,
        }
    }

    /// The operator's table.
    pub fn render(&self) -> String {
        let mut t = String::new();
        let stretched = if self.stretch > 1.0 {
            format!(
                " (stretched {}×: hours below are stretched hours)",
                self.stretch
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            t,
            "capacity of {}: {} reports over {:.2} h{stretched}; worst first",
            if self.node.is_empty() {
                "?"
            } else {
                &self.node
            },
            self.reports,
            self.hours
        );
        for r in &self.resources {
            let _ = writeln!(t, "{} ({})  {}", r.resource, r.kind, now(r));
            if let Some(h) = &r.headroom {
                let _ = writeln!(t, "    headroom  {}", show_headroom(h, self.knee_multiple));
            }
            let _ = writeln!(
                t,
                "    forecast  {}",
                show_forecast(&r.forecast, self.saturation, self.interval_percent)
            );
        }
        if self.resources.is_empty() {
            let _ = writeln!(t, "no capacity signals in the last report");
        }
        t
    }
}

fn kind(s: &Signal) -> &'static str {
    if s.labels.contains_key("cgroup") {
        "cgroup"
    } else if s.labels.contains_key("device") {
        "device"
    } else if s.labels.contains_key("vm") {
        "vm"
    } else if s.resource == "cpu" || s.labels.contains_key("cpu") {
        "cpu"
    } else {
        "pressure"
    }
}

fn closeness(r: &Resource) -> f64 {
    let knee = r
        .headroom
        .as_ref()
        .and_then(|h| h.headroom)
        .map_or(0.0, |h| 1.0 - h);
    r.saturation_now.unwrap_or(0.0).max(knee)
}

fn headroom(
    c: &CapacityReport,
    device: &str,
    resource: &str,
    config: &super::CapacityConfig,
) -> Headroom {
    let load = |name| {
        c.signals
            .iter()
            .filter(|s| s.resource == resource && s.name == name)
            .map(|s| s.value)
            .sum::<f64>()
    };
    let Some(h) = c.headroom.iter().find(|h| h.device == device) else {
        return Headroom {
            headroom: None,
            load_iops: load("iops"),
            knee_iops: None,
            unloaded_p99_ns: None,
            knee_p99_ns: None,
            max_load_seen: 0.0,
            unknown: Some(format!(
                "no interval with at least {} completions yet",
                config.knee_min_requests
            )),
            curve: Vec::new(),
        };
    };
    let k = &h.knee;
    Headroom {
        headroom: h.knee_known.then_some(h.headroom),
        load_iops: h.load_iops,
        knee_iops: k.knee_load,
        unloaded_p99_ns: Some(k.unloaded_p99_ns),
        knee_p99_ns: Some(k.unloaded_p99_ns * config.knee_multiple),
        max_load_seen: k.max_load_seen,
        unknown: (!h.knee_known).then(|| {
            format!(
                "not enough spread of load yet: p99 stayed below {}× its unloaded {} up \
                 to {:.0} IO/s (headroom at least {:.0} %, against that load)",
                config.knee_multiple,
                format_ns(k.unloaded_p99_ns),
                k.max_load_seen,
                h.headroom * 100.0
            )
        }),
        curve: k.curve.clone(),
    }
}

fn forecast(
    c: &CapacityReport,
    learning: &[(String, &'static str, usize)],
    resource: &str,
) -> Forecast {
    let mut best = Forecast::None;
    for f in c.forecasts.iter().filter(|f| f.resource == resource) {
        let this = match f.forecast.hours {
            Some(hours) => Forecast::Saturating {
                signal: f.signal,
                hours,
                lower_h: f.forecast.lower_h,
                upper_h: f.forecast.upper_h,
                demand_share: f.demand_share,
            },
            None => Forecast::NoTrend {
                slope_per_day: f.forecast.slope_per_day,
            },
        };
        best = match (best, this) {
            (Forecast::Saturating { hours: a, .. }, b @ Forecast::Saturating { hours: h, .. })
                if h < a =>
            {
                b
            }
            (a @ Forecast::Saturating { .. }, _) => a,
            (_, b) => b,
        };
    }
    if matches!(best, Forecast::None) {
        let needs = learning
            .iter()
            .filter(|(r, _, _)| r == resource)
            .map(|(_, _, n)| *n)
            .min();
        if let Some(n) = needs {
            best = Forecast::Learning {
                needs_h: n as f64 * BUCKET_S as f64 / 3600.0,
            };
        }
    }
    best
}

/// The resource's figures now, in one line.
pub(crate) fn now(r: &Resource) -> String {
    let get = |name: &str| {
        r.now.iter().find(|s| {
            s.name == name && !s.labels.contains_key("cpu") && !s.labels.contains_key("op")
        })
    };
    let sum = |name: &str| -> f64 {
        r.now
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    };
    let pct = |v: f64| format!("{:.1} %", v * 100.0);
    let mut parts = Vec::new();
    if let Some(s) = get("busy") {
        parts.push(format!("busy {}", pct(s.value)));
    }
    if r.now.iter().any(|s| s.name == "iops") {
        let (iops, bps) = (sum("iops"), sum("bytes_per_s"));
        let sized = r.now.iter().any(|s| s.name == "bytes_per_s");
        let per_op = if iops > 0.0 && sized {
            format!(", {:.1} KiB/op", bps / iops / 1024.0)
        } else {
            String::new()
        };
        parts.push(format!("{iops:.0} IO/s{per_op}"));
    }
    if let (Some(m), Some(p)) = (get("depth_mean"), get("depth_p99")) {
        parts.push(format!("in flight {:.1} (p99 {:.0})", m.value, p.value));
    }
    if let Some(s) = get("runqueue_saturation") {
        parts.push(format!("run queue saturated {}", pct(s.value)));
        if let Some(c) = r
            .now
            .iter()
            .filter(|s| s.labels.contains_key("cpu"))
            .max_by(|a, b| a.value.total_cmp(&b.value))
        {
            parts.push(format!("busiest {} {}", c.resource, pct(c.value)));
        }
    }
    if let Some(s) = get("vcpu_wait_share") {
        parts.push(format!("vCPU wait {} of run time", pct(s.value)));
    }
    if let Some(s) = get("pressure_some") {
        parts.push(format!("pressure some {}", pct(s.value)));
    }
    if let Some(s) = get("pressure_full") {
        parts.push(format!("full {}", pct(s.value)));
    }
    parts.join(", ")
}

pub(crate) fn show_headroom(h: &Headroom, multiple: f64) -> String {
    match (h.headroom, h.knee_iops, &h.unknown) {
        (Some(room), Some(knee), _) => format!(
            "{:.1} % at {:.0} IO/s: knee at {knee:.0} IO/s, where p99 reaches {multiple}× \
             its unloaded {} ({} at the knee)",
            room * 100.0,
            h.load_iops,
            format_ns(h.unloaded_p99_ns.unwrap_or(0.0)),
            format_ns(h.knee_p99_ns.unwrap_or(0.0)),
        ),
        (_, _, Some(why)) => format!("unknown: {why}"),
        _ => "unknown".into(),
    }
}

pub(crate) fn show_forecast(f: &Forecast, limit: f64, percent: f64) -> String {
    let h = |v: Option<f64>| v.map_or("never".to_owned(), |v| format!("{v:.1}"));
    match f {
        Forecast::Saturating {
            signal, upper_h, ..
        } if *upper_h == Some(0.0) => {
            format!("{signal} at or above {limit} now ({percent:.0} % interval wholly above)")
        }
        Forecast::Saturating {
            signal,
            hours,
            lower_h,
            upper_h,
            demand_share,
        } => {
            let mut t = format!(
                "{signal} reaches {limit} in {hours:.1} h ({percent:.0} % interval {}-{} h)",
                h(*lower_h),
                h(*upper_h)
            );
            if let Some(d) = demand_share.filter(|d| *d < super::DEMAND_SHARE_MIN) {
                let _ = write!(
                    t,
                    "; no alarm: its load grew {:.0} % as fast as its busy time, so its \
                     service time grew, not its demand",
                    d * 100.0
                );
            }
            t
        }
        Forecast::NoTrend { slope_per_day } => {
            format!("no trend towards saturation within 14 days ({slope_per_day:+.3}/day)")
        }
        Forecast::Learning { needs_h } => format!("learning (needs {needs_h:.1} more h)"),
        Forecast::None => "not forecast".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::{
        aggregate::{ExpHistogram, IntervalCounter, IntervalSeries, SeriesKey},
        capacity::{Capacity, CapacityConfig, replay::replay},
        export::console::{ConsoleFormat, render},
        probes::block::{FAMILY_BUSY, FAMILY_DEVICE},
        report::{CounterReport, SeriesReport},
    };

    const INTERVAL_S: u64 = 60;

    /// One device's interval: `iops` reads all at `p99_ns`, busy for `busy` of it.
    fn device(report: &mut crate::report::Report, name: &str, iops: f64, p99_ns: f64, busy: f64) {
        let count = (iops * INTERVAL_S as f64) as u64;
        let mut dense = vec![0u64; 200];
        // Scale 3: 8 buckets per doubling.
        dense[(8.0 * p99_ns.log2()).round() as usize] = count;
        let h = ExpHistogram::from_dense((p99_ns as u64) * count, 0, &dense);
        let key = SeriesKey::new(
            FAMILY_DEVICE,
            [("device", name.to_owned()), ("op", "read".to_owned())],
        );
        report.series.push(SeriesReport::new(
            &IntervalSeries {
                key,
                delta: h.clone(),
                cumulative: h,
            },
            INTERVAL_S as f64,
        ));
        let delta = (busy * INTERVAL_S as f64 * 1e9) as u64;
        report.counters.push(CounterReport::new(
            &IntervalCounter {
                key: SeriesKey::new(FAMILY_BUSY, [("device", name.to_owned())]),
                delta,
                total: delta,
            },
            INTERVAL_S as f64,
        ));
    }

    /// Six hours of one-minute reports, written as `nodepulse record` writes them (the
    /// agent's capacity over the report, rendered as console JSON):
    /// - `grow`: busy rising 0.2 → 0.7 with its load (500 → 1,750 IO/s), latency flat
    ///   (no knee: no spread of p99);
    /// - `knee`: load sweeping 100 → 3,600 IO/s every 16 minutes on an M/M/1-like
    ///   curve, p99 = 100 µs / (1 − load / 4,000), so p99 doubles near 2,050 IO/s;
    /// - `idle`: 50 IO/s, busy 5 %, flat.
    fn recording() -> String {
        let mut live = Capacity::offline(&CapacityConfig::default());
        let t0 = 1_800_000_000u64;
        let mut text = String::new();
        for i in 0..360u64 {
            let t = t0 + i * INTERVAL_S;
            let mut r = crate::report::sample();
            r.time =
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t)).to_string();
            r.interval_s = INTERVAL_S as f64;
            r.series.clear();
            r.counters.clear();
            let growth = i as f64 / 360.0;
            // Its load grows with it (a steady load's busy growth raises no alarm).
            let busy = 0.2 + 0.5 * growth;
            device(&mut r, "grow", 2_500.0 * busy, 200_000.0, busy);
            let load = 100.0 * 1.25f64.powi((i % 16) as i32);
            device(
                &mut r,
                "knee",
                load,
                100_000.0 / (1.0 - load / 4_000.0),
                load / 8_000.0,
            );
            device(&mut r, "idle", 50.0, 150_000.0, 0.05);
            r.capacity = Some(live.update(&r, t));
            text.push_str(render(&r, ConsoleFormat::Json).trim_end());
            text.push('\n');
        }
        text
    }

    #[test]
    fn a_recording_replays_worst_first_with_headroom_and_forecasts() {
        let text = recording();
        let config = CapacityConfig::default();
        let r = replay("test.jsonl", text.as_bytes(), &config, 1.0, |_, _| {}).unwrap();
        let s = Standing::of(&r);
        assert_eq!((s.reports, s.node.as_str()), (360, "vm"));
        assert!((s.hours - 359.0 / 60.0).abs() < 1e-9, "{}", s.hours);
        let order: Vec<&str> = s.resources.iter().map(|r| r.resource.as_str()).collect();
        // Forecast to saturate first; then the closest now: `knee` (477/s in the last
        // interval, a quarter of the way to its knee) before the idle device.
        assert_eq!(order, ["io:grow", "io:knee", "io:idle"], "{}", s.render());

        let grow = &s.resources[0];
        assert_eq!(grow.kind, "device");
        assert!((grow.saturation_now.unwrap() - (0.2 + 0.5 * 359.0 / 360.0)).abs() < 1e-6);
        let Forecast::Saturating {
            signal,
            hours,
            lower_h: Some(lower),
            upper_h: Some(upper),
            ..
        } = grow.forecast
        else {
            panic!("{:?}", grow.forecast);
        };
        // 0.7 → 0.9 at 0.5 per 6 h: 2.4 h from the end.
        assert_eq!(signal, "busy");
        assert!(lower <= hours && hours <= upper, "{lower} {hours} {upper}");
        assert!((hours - 2.4).abs() < 0.5, "{hours}");
        let h = grow.headroom.as_ref().unwrap();
        assert_eq!((h.headroom, h.knee_iops), (None, None));
        assert!(
            h.unknown
                .as_ref()
                .unwrap()
                .contains("not enough spread of load"),
            "{:?}",
            h.unknown
        );

        let knee = &s.resources[1];
        let h = knee.headroom.as_ref().unwrap();
        let at = h.knee_iops.unwrap();
        assert!((at - 2_050.0).abs() < 0.2 * 2_050.0, "knee at {at}");
        let room = h.headroom.unwrap();
        assert!((room - (1.0 - h.load_iops / at)).abs() < 1e-9, "{h:?}");
        assert!((h.load_iops - 477.0).abs() < 1.0, "{h:?}");
        assert_eq!(h.knee_p99_ns, h.unloaded_p99_ns.map(|u| u * 2.0));
        assert!(h.unknown.is_none());

        let idle = &s.resources[2];
        assert!(
            matches!(idle.forecast, Forecast::NoTrend { .. }),
            "{:?}",
            idle.forecast
        );
        assert!(idle.headroom.as_ref().unwrap().unknown.is_some());

        let table = s.render();
        assert!(table.contains("busy reaches 0.9 in"), "{table}");
        assert!(table.contains("knee at "), "{table}");
        let json: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(json["resources"][0]["forecast"]["state"], "saturating");
        assert_eq!(json["resources"][2]["forecast"]["state"], "no_trend");

        // The first two hours: still learning, and how much longer it needs.
        let early: String = text.lines().take(30).map(|l| format!("{l}\n")).collect();
        let r = replay("early.jsonl", early.as_bytes(), &config, 1.0, |_, _| {}).unwrap();
        let s = Standing::of(&r);
        let Forecast::Learning { needs_h } = s.resources[0].forecast else {
            panic!("{:?}", s.resources[0].forecast);
        };
        assert!((needs_h - 12.0 / 6.0 + 2.0 / 6.0).abs() < 1e-9, "{needs_h}");
    }

    #[test]
    fn bad_recordings_are_refused_with_what_to_do() {
        let config = CapacityConfig::default();
        let err = |text: &str| {
            replay("x.jsonl", text.as_bytes(), &config, 1.0, |_, _| {})
                .err()
                .unwrap()
                .to_string()
        };
        let e = err("not json\n");
        assert!(
            e.contains("x.jsonl line 1: not a nodepulse recording line"),
            "{e}"
        );
        assert!(e.contains("nodepulse record --output FILE"), "{e}");
        assert!(err("").contains("holds no data"));
        let mut r = crate::report::sample();
        r.capacity = None;
        let e = err(&render(&r, ConsoleFormat::Json));
        assert!(e.contains("has no capacity signals"), "{e}");
    }
}
