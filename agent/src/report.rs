//! What one interval produced, in the shape exporters consume: series with their delta
//! buckets and quantiles, each probe's state and cost, and the agent's own usage.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    actions::ActionRun,
    aggregate::{ExpHistogram, IntervalCounter, IntervalSeries},
    detect::Alarm,
    probes::{AttachKind, ProbeStatus, outliers::Outlier},
    selfmon::Usage,
};

/// Quantiles reported for every latency series.
pub const QUANTILES: [(f64, &str); 4] =
    [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9")];

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// End of the interval, RFC 3339.
    pub time: String,
    /// Measured length of the interval in seconds.
    pub interval_s: f64,
    pub node: String,
    pub series: Vec<SeriesReport>,
    /// Counts (I/O errors, retransmissions), as interval deltas and running totals.
    pub counters: Vec<CounterReport>,
    /// Exceptional events of the interval (spans for OTLP, exemplars on their series).
    pub outliers: Vec<Outlier>,
    pub probes: Vec<ProbeReport>,
    pub agent: AgentReport,
    /// Alarms that opened, continued or resolved this interval.
    pub alarms: Vec<Alarm>,
    /// Alarms (incidents) open after this interval.
    pub alarms_open: u64,
    /// Series the detector has seen with data but is still learning (not judged yet).
    pub learning: Vec<String>,
    /// When the last of them ends its learning period (RFC 3339; absent when none is
    /// learning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_until: Option<String>,
    /// Action runs that finished (or were skipped) since the previous report.
    pub actions: Vec<ActionRun>,
    /// Utilisation and saturation signals, when `capacity.enabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<crate::capacity::CapacityReport>,
    /// What each loop and device-mapper device with series is backed by (a loop
    /// device's file, inode and offset): when it changes, the detector starts the
    /// device's series anew (see `attribution::backing`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub backing: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SeriesReport {
    pub family: &'static str,
    pub labels: BTreeMap<&'static str, String>,
    /// The values' unit (UCUM, as in `catalog`): `ns` for latencies, `By` for sizes.
    pub unit: &'static str,
    /// Samples in this interval, and per second.
    pub count: u64,
    pub rate_per_s: f64,
    /// Sum and mean of the samples, in `unit`.
    pub sum: u64,
    pub mean: Option<f64>,
    /// p50, p90, p99, p99.9 in `unit` (null when the interval had no samples).
    pub quantiles: BTreeMap<&'static str, Option<f64>>,
    /// The interval's histogram: OTLP exponential buckets at `scale`.
    pub histogram: HistogramReport,
    /// Samples since the agent started.
    pub cumulative_count: u64,
    /// Everything since the agent started (or since the series was first seen), for
    /// exporters with cumulative temporality. Not in the console's JSON: the interval
    /// histogram is what a person or script reading it wants.
    #[serde(skip)]
    pub cumulative: ExpHistogram,
}

#[derive(Clone, Debug, Serialize)]
pub struct HistogramReport {
    pub scale: i32,
    pub zero_count: u64,
    /// OTLP index of `counts[0]`; bucket i holds values in (base^i, base^(i+1)] ns.
    pub offset: i32,
    pub counts: Vec<u64>,
}

impl SeriesReport {
    pub fn new(s: &IntervalSeries, interval_s: f64) -> Self {
        Self::from_owned(s.clone(), interval_s)
    }

    /// As [`Self::new`], taking the series' labels and histograms over instead of
    /// copying them (the collection path: a dozen strings and two bucket arrays per
    /// series every interval).
    pub fn from_owned(s: IntervalSeries, interval_s: f64) -> Self {
        let d: &ExpHistogram = &s.delta;
        let count = d.count();
        let unit = crate::catalog::unit(s.key.family);
        Self {
            family: s.key.family,
            labels: s.key.labels.into_iter().collect(),
            unit,
            count,
            rate_per_s: if interval_s > 0.0 {
                count as f64 / interval_s
            } else {
                0.0
            },
            sum: d.sum,
            mean: d.mean(),
            // Durations are continuous; sizes and depths sit on bucket bounds.
            quantiles: QUANTILES
                .iter()
                .map(|&(q, name)| match unit {
                    "ns" => (name, d.quantile(q)),
                    _ => (name, d.quantile_bound(q)),
                })
                .collect(),
            histogram: HistogramReport {
                scale: agent_common::hist::SCALE,
                zero_count: d.zero_count,
                offset: d.offset,
                counts: s.delta.counts,
            },
            cumulative_count: s.cumulative.count(),
            cumulative: s.cumulative,
        }
    }

    pub fn delta_histogram(&self) -> ExpHistogram {
        ExpHistogram {
            sum: self.sum,
            zero_count: self.histogram.zero_count,
            offset: self.histogram.offset,
            counts: self.histogram.counts.clone(),
        }
    }
}

/// One counter series over one interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CounterReport {
    pub family: &'static str,
    pub labels: BTreeMap<&'static str, String>,
    pub unit: &'static str,
    /// Increase in this interval, and per second.
    pub delta: u64,
    pub rate_per_s: f64,
    /// Since the agent started.
    pub total: u64,
}

impl CounterReport {
    pub fn new(s: &IntervalCounter, interval_s: f64) -> Self {
        Self {
            family: s.key.family,
            labels: s.key.labels.iter().cloned().collect(),
            unit: crate::catalog::unit(s.key.family),
            delta: s.delta,
            rate_per_s: if interval_s > 0.0 {
                s.delta as f64 / interval_s
            } else {
                0.0
            },
            total: s.total,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeState {
    Up,
    Down,
    Disabled,
    NotApplicable,
}

impl ProbeState {
    /// As serialized, and as the `state` label of the `probe.up` metric.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeState::Up => "up",
            ProbeState::Down => "down",
            ProbeState::Disabled => "disabled",
            ProbeState::NotApplicable => "not_applicable",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    pub probe: &'static str,
    pub state: ProbeState,
    pub attach: Option<AttachKind>,
    /// Why earlier kinds in the chain (or all of them) failed.
    pub errors: Vec<String>,
    pub programs: Vec<ProgramCost>,
}

impl ProbeReport {
    pub fn new(status: &ProbeStatus, programs: Vec<ProgramCost>) -> Self {
        let (state, attach, errors) = match &status.attached {
            None if status.not_applicable.is_some() => (
                ProbeState::NotApplicable,
                None,
                status
                    .not_applicable
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
            None => (ProbeState::Disabled, None, Vec::new()),
            Some(a) => (
                if a.kind.is_some() {
                    ProbeState::Up
                } else {
                    ProbeState::Down
                },
                a.kind,
                a.failures
                    .iter()
                    .map(|f| format!("{}: {}", f.kind, f.error))
                    .collect(),
            ),
        };
        Self {
            probe: status.probe,
            state,
            attach,
            errors,
            programs,
        }
    }
}

/// One kernel program's cost over the interval, from BPF run-time stats.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramCost {
    pub program: &'static str,
    pub events: u64,
    pub run_time_ns: u64,
    /// Since the program was loaded.
    pub events_total: u64,
    pub run_time_ns_total: u64,
    /// Events the kernel did not give the program because it was already running on
    /// that CPU (interval, and since load): lost samples, as the kernel counts them.
    pub recursion_misses: u64,
    pub recursion_misses_total: u64,
    /// Mean kernel time per event (excludes the tracepoint dispatch itself).
    pub ns_per_event: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AgentReport {
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    /// Events the kernel programs could not record this interval, by reason.
    pub dropped: BTreeMap<&'static str, u64>,
    /// The same since the agent started.
    pub dropped_total: BTreeMap<&'static str, u64>,
    /// CPU time the agent used since it started, in seconds.
    pub cpu_seconds_total: f64,
    /// Outliers read this interval beyond `outliers.max_per_interval`, not exported.
    pub outliers_discarded: u64,
    /// Time each exporter took with the previous report (encoding and queueing), ms.
    pub export_ms: BTreeMap<&'static str, f64>,
    /// Set when kernel BPF stats are unavailable (then `programs` carry no cost).
    pub bpf_stats_unavailable: Option<String>,
    /// Action audit records that could not be written since the agent started (a full
    /// disk, an I/O error).
    pub audit_failures_total: u64,
}

impl AgentReport {
    pub fn new(
        usage: Usage,
        dropped: BTreeMap<&'static str, u64>,
        dropped_total: BTreeMap<&'static str, u64>,
        bpf: Option<String>,
    ) -> Self {
        Self {
            cpu_percent: usage.cpu_percent,
            rss_bytes: usage.rss_bytes,
            dropped,
            dropped_total,
            cpu_seconds_total: usage.cpu_seconds_total,
            outliers_discarded: 0,
            audit_failures_total: 0,
            export_ms: BTreeMap::new(),
            bpf_stats_unavailable: bpf,
        }
    }
}

/// A small but complete report for exporters' unit tests: one block series (90
/// samples near 80 µs and 10 near 2.6 ms over 10 s), one program, one drop counter.
#[cfg(any(test, feature = "fuzzing"))]
pub fn sample() -> Report {
    use crate::aggregate::SeriesKey;

    let mut dense = vec![0u64; 200];
    dense[130] = 90; // ~ 80 µs
    dense[170] = 10; // ~ 2.6 ms
    let h = ExpHistogram::from_dense(9_000_000, 0, &dense);
    let key = SeriesKey::new(
        "block.io.latency",
        [
            ("device", "loop7".to_owned()),
            ("dev", "7:7".to_owned()),
            ("op", "read".to_owned()),
        ],
    );
    let s = IntervalSeries {
        key,
        delta: h.clone(),
        cumulative: h,
    };
    Report {
        time: "2026-11-26T23:59:10Z".into(),
        interval_s: 10.0,
        node: "vm".into(),
        series: vec![SeriesReport::new(&s, 10.0)],
        counters: vec![CounterReport::new(
            &IntervalCounter {
                key: SeriesKey::new(
                    "block.io.errors",
                    [
                        ("device", "loop7".to_owned()),
                        ("dev", "7:7".to_owned()),
                        ("op", "write".to_owned()),
                        ("error", "nospc".to_owned()),
                    ],
                ),
                delta: 2,
                total: 5,
            },
            10.0,
        )],
        outliers: vec![],
        probes: vec![ProbeReport {
            probe: "block",
            state: ProbeState::Up,
            attach: Some(AttachKind::TpBtf),
            errors: vec![],
            programs: vec![ProgramCost {
                program: "block_rq_issue_btf",
                events: 100,
                run_time_ns: 4000,
                events_total: 1000,
                run_time_ns_total: 40_000,
                recursion_misses: 0,
                recursion_misses_total: 0,
                ns_per_event: Some(40.0),
            }],
        }],
        agent: AgentReport::new(
            Usage {
                cpu_percent: 0.25,
                rss_bytes: 10 << 20,
                cpu_seconds_total: 1.5,
            },
            BTreeMap::from([("block_unmatched_completions", 3)]),
            BTreeMap::from([("block_unmatched_completions", 7)]),
            None,
        ),
        alarms: vec![],
        alarms_open: 0,
        learning: Vec::new(),
        learning_until: None,
        capacity: None,
        backing: BTreeMap::new(),
        actions: vec![],
    }
}
