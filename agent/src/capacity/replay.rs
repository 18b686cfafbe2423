//! Capacity over a recording (`nodepulse record`, capacity enabled): each report's
//! recorded signals, and its devices' loads from the recorded latency series, go
//! through the same `Capacity::learn` the agent runs, so headroom and forecasts are
//! what the agent would have concluded. Pressure is the recorded one (this host's is
//! not read).

use std::{collections::BTreeMap, io::BufRead};

use serde::Deserialize;
use thiserror::Error;

use super::{Capacity, CapacityConfig, CapacityReport, Signal, signals::Loads};
use crate::{
    detect::replay::{RecordedSeries, ReplayError, for_each_line, parse_time},
    probes::block::FAMILY_DEVICE,
};

#[derive(Debug, Error)]
pub enum CapacityReplayError {
    #[error(transparent)]
    Read(ReplayError),
    #[error(
        "{path} line {line}: not a nodepulse recording line ({message}); record one with \
         `nodepulse record --output FILE`"
    )]
    Recording {
        path: String,
        line: usize,
        message: String,
    },
    #[error(
        "{path} has no capacity signals: it was recorded with [capacity] enabled = false \
         or by a nodepulse without capacity; record again with capacity enabled (the default)"
    )]
    NoCapacity { path: String },
}

#[derive(Deserialize)]
struct Recorded {
    time: String,
    #[serde(default)]
    node: String,
    #[serde(default)]
    series: Vec<RecordedSeries>,
    capacity: Option<RecordedCapacity>,
}

#[derive(Deserialize)]
struct RecordedCapacity {
    signals: Vec<RecordedSignal>,
    #[serde(default)]
    cpus_dropped: usize,
}

#[derive(Deserialize)]
struct RecordedSignal {
    resource: String,
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    value: f64,
    unit: String,
}

/// The names `Signal` uses (it holds them as `&'static str`).
const NAMES: &[&str] = &[
    "busy",
    "iops",
    "bytes_per_s",
    "depth_mean",
    "depth_p99",
    "runqueue_saturation",
    "vcpu_wait_share",
    "pressure_some",
    "pressure_full",
];
const LABELS: &[&str] = &["device", "op", "cpu", "vm", "vm.uuid", "resource", "cgroup"];
const UNITS: &[&str] = &["1", "{request}/s", "By/s", "{request}"];

fn known(list: &[&'static str], s: &str) -> Option<&'static str> {
    list.iter().copied().find(|k| *k == s)
}

impl RecordedSignal {
    /// `None` for a signal this nodepulse does not know (a newer recorder's).
    fn signal(self) -> Option<Signal> {
        Some(Signal {
            resource: self.resource,
            name: known(NAMES, &self.name)?,
            labels: self
                .labels
                .into_iter()
                .filter_map(|(k, v)| Some((known(LABELS, &k)?, v)))
                .collect(),
            value: self.value,
            unit: known(UNITS, &self.unit)?,
        })
    }
}

/// What a replay ends with.
pub struct Replayed {
    pub capacity: Capacity,
    /// The last report's capacity (signals now, headroom, forecasts).
    pub last: CapacityReport,
    pub node: String,
    /// Reports with a capacity section.
    pub reports: u64,
    /// Time covered, in (stretched) hours.
    pub hours: f64,
    pub stretch: f64,
    /// Unix seconds of the first report: stretched time starts there.
    pub start_s: f64,
    /// Time spent in `Capacity::learn` (knees, forecasts, alarms) and the signals it
    /// was given, over all reports: the learning's cost per signal per interval.
    pub learn_ns: u64,
    pub signals: u64,
}

/// Replays `reader` (a recording) through `Capacity::learn`. `stretch` ≥ 1 replays
/// each recorded second as that many (the forecaster needs two hours of buckets;
/// a stretched short recording keeps its values and noise but compresses their time
/// structure). `each` sees every report's capacity with its (stretched) hour.
pub fn replay(
    path: &str,
    reader: impl BufRead,
    config: &CapacityConfig,
    stretch: f64,
    mut each: impl FnMut(f64, &CapacityReport),
) -> Result<Replayed, CapacityReplayError> {
    let mut capacity = Capacity::offline(config);
    let (mut start, mut hours, mut reports) = (None::<f64>, 0.0, 0);
    let (mut learn_ns, mut signals_seen) = (0u64, 0u64);
    let (mut last, mut node) = (None, String::new());
    for_each_line(path, reader, |r: Recorded, bad| {
        let Some(recorded) = r.capacity else {
            return Ok(());
        };
        let t = parse_time(&r.time).map_err(bad)? as f64 / 1e9;
        let t0 = *start.get_or_insert(t);
        let now = t0 + (t - t0) * stretch;
        hours = (now - t0) / 3600.0;
        let mut loads = Loads::default();
        for mut s in r.series.into_iter().filter(|s| s.family == FAMILY_DEVICE) {
            let device = s.labels.remove("device").unwrap_or_default();
            let (rate, count) = (s.rate_per_s, s.count);
            loads.add(&device, rate, count, &s.into_histogram());
        }
        let signals: Vec<Signal> = recorded
            .signals
            .into_iter()
            .filter_map(RecordedSignal::signal)
            .collect();
        for s in signals
            .iter()
            .filter(|s| s.name == "busy" && !s.labels.contains_key("op"))
        {
            loads.busy(
                s.resource.strip_prefix("io:").unwrap_or(&s.resource),
                s.value,
            );
        }
        let loads = loads.finish();
        signals_seen += signals.len() as u64;
        let t = std::time::Instant::now();
        let report = capacity.learn(signals, &loads, recorded.cpus_dropped, &r.node, now as u64);
        learn_ns += t.elapsed().as_nanos() as u64;
        each(hours, &report);
        last = Some(report);
        node = r.node;
        reports += 1;
        Ok(())
    })
    .map_err(|e| match e {
        ReplayError::Recording {
            path,
            line,
            message,
        } => CapacityReplayError::Recording {
            path,
            line,
            message,
        },
        e => CapacityReplayError::Read(e),
    })?;
    let last = last.ok_or_else(|| CapacityReplayError::NoCapacity { path: path.into() })?;
    Ok(Replayed {
        capacity,
        last,
        node,
        reports,
        hours,
        stretch,
        start_s: start.unwrap_or(0.0),
        learn_ns,
        signals: signals_seen,
    })
}
