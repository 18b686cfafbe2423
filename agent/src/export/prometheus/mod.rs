//! The Prometheus scrape endpoint: `GET /metrics` serves the latest report, as text
//! format 0.0.4 with classic histograms, or, when the scraper asks for it, as
//! length-delimited `io.prometheus.client.MetricFamily` protobuf messages that carry
//! native histograms (and the same classic buckets).
//!
//! Histograms are exported from the cumulative (since agent start) histograms, because
//! Prometheus histograms are counters. Durations are in seconds, as Prometheus users
//! expect (`_seconds`): a classic bucket's `le` is the kernel's nanosecond bucket edge
//! divided by 1e9, an exact relabelling (same buckets, same counts). Native histograms
//! cannot relabel exactly, see [`NATIVE_SECONDS_SHIFT`].

use std::{
    fmt::Write as _,
    io,
    net::SocketAddr,
    sync::{
        Arc, Condvar, Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{HeaderMap, Method, Response, StatusCode, header};
use prost::Message as _;

use super::{Exporter, http};
use crate::{
    aggregate::ExpHistogram,
    catalog::{self, SelfMetric},
    report::{CounterReport, ProbeState, Report, SeriesReport},
};
use serde::Deserialize;

/// The only path served.
pub const METRICS_PATH: &str = "/metrics";

/// Content type of the text exposition format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Content type of the delimited protobuf exposition format.
pub const PROTOBUF_CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

const PROTOBUF_MEDIA_TYPE: &str = "application/vnd.google.protobuf";
const PROTOBUF_MESSAGE: &str = "io.prometheus.client.MetricFamily";

// ---------------------------------------------------------------------------------------
// What is exported: one model, rendered as text or as protobuf, so both carry the same
// series.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

enum Value<'a> {
    /// Exact integer, printed as such in the text format.
    Int(u64),
    Float(f64),
    Histogram(&'a ExpHistogram, Unit),
}

/// What a histogram's recorded values are, hence how they are exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    /// Nanoseconds, exported in seconds.
    Nanoseconds,
    /// Bytes, exported as recorded.
    Bytes,
    /// Counts of things (requests in flight), exported as recorded.
    Count,
}

impl Unit {
    fn of(family: &str) -> Self {
        match catalog::unit(family) {
            "ns" => Unit::Nanoseconds,
            "By" => Unit::Bytes,
            _ => Unit::Count,
        }
    }

    /// Recorded value `v` in the exported unit.
    fn export(self, v: f64) -> f64 {
        match self {
            Unit::Nanoseconds => v / NS_PER_SECOND,
            Unit::Bytes | Unit::Count => v,
        }
    }

    /// Native schema-3 bucket index of recorded bucket `k` in the exported unit.
    fn native_index(self, k: i32) -> i32 {
        match self {
            Unit::Nanoseconds => k - NATIVE_SECONDS_SHIFT,
            Unit::Bytes | Unit::Count => k,
        }
    }

    /// The classic buckets' `le`, as powers of two of the recorded unit: from 256 ns
    /// to 68.7 s, 512 B to 64 MiB, 1 to 4,096 requests (see [`classic_buckets`]).
    fn classic_powers(self) -> std::ops::RangeInclusive<i32> {
        match self {
            Unit::Nanoseconds => 8..=36,
            Unit::Bytes => 9..=26,
            Unit::Count => 0..=12,
        }
    }
}

const NS_PER_SECOND: f64 = 1e9;

/// Native histograms in seconds: nanosecond bucket `k` (upper bound `2^(k/8)` ns) is
/// exported as bucket `k - 239` (upper bound `2^((k-239)/8)` s). Schema-3 edges are
/// powers of `2^(1/8)` and 1 ns is `2^(-29.897…)` s, not a multiple of 1/8, so no shift
/// maps nanosecond edges onto second edges; 239 is the nearest (`2^(239/8)` =
/// 0.9846e9), so every native edge reads 1.56 % above the true one, a sixth of a
/// bucket's own 9.05 % width. One family name with one unit was preferred to an exact
/// nanosecond native family beside the classic seconds one (two names for one
/// quantity, and queries that must divide by 1e9 on one of them). Classic buckets,
/// sums and OTLP stay exact.
const NATIVE_SECONDS_SHIFT: i32 = 239;

impl Value<'_> {
    /// The number a counter or gauge carries in the protobuf format.
    fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(v) => Some(*v as f64),
            Value::Float(v) => Some(*v),
            Value::Histogram(..) => None,
        }
    }
}

struct Sample<'a> {
    labels: Vec<(String, String)>,
    value: Value<'a>,
}

struct Family<'a> {
    name: String,
    help: String,
    kind: Kind,
    samples: Vec<Sample<'a>>,
}

/// Every metric family of a report: the latency histograms in the order their families
/// first appear, then the agent's own metrics.
fn families(report: &Report) -> Vec<Family<'_>> {
    let mut out = histogram_families(&report.series);
    out.extend(counter_families(&report.counters));
    out.extend(self_families(report));
    out
}

/// Appends `sample` to its catalogue family's, creating that at its first sample.
fn push_sample<'a>(out: &mut Vec<Family<'a>>, family: &str, sample: Sample<'a>) {
    let name = catalog::prometheus_name(family);
    match out.iter_mut().find(|f| f.name == name) {
        Some(f) => f.samples.push(sample),
        None => out.push(Family {
            name,
            help: family_help(family),
            kind: catalog::family(family).map_or(Kind::Histogram, |f| f.kind.into()),
            samples: vec![sample],
        }),
    }
}

impl From<catalog::Kind> for Kind {
    fn from(k: catalog::Kind) -> Self {
        match k {
            catalog::Kind::Histogram => Kind::Histogram,
            catalog::Kind::Counter => Kind::Counter,
            catalog::Kind::Gauge => Kind::Gauge,
        }
    }
}

/// One of the agent's own families, named and described by the catalogue.
fn self_family<'a>(m: &SelfMetric, samples: Vec<Sample<'a>>) -> Family<'a> {
    Family {
        name: m.prometheus.to_owned(),
        help: format!("{}.", m.description),
        kind: m.kind.into(),
        samples,
    }
}

fn series_labels(
    labels: &std::collections::BTreeMap<&'static str, String>,
) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(k, v)| (catalog::prometheus_label(k), v.clone()))
        .collect()
}

fn counter_families(counters: &[CounterReport]) -> Vec<Family<'_>> {
    let mut out = Vec::new();
    for c in counters {
        let sample = Sample {
            labels: series_labels(&c.labels),
            value: Value::Int(c.total),
        };
        push_sample(&mut out, c.family, sample);
    }
    out
}

/// One histogram family per series family; the samples of a family must be contiguous
/// in the text format, so series are grouped here whatever their order in the report.
fn histogram_families(series: &[SeriesReport]) -> Vec<Family<'_>> {
    let mut out: Vec<Family<'_>> = Vec::new();
    for s in series {
        let sample = Sample {
            labels: series_labels(&s.labels),
            value: Value::Histogram(&s.cumulative, Unit::of(s.family)),
        };
        push_sample(&mut out, s.family, sample);
    }
    out
}

fn self_families(report: &Report) -> Vec<Family<'_>> {
    let programs = || {
        report.probes.iter().flat_map(|p| {
            p.programs
                .iter()
                .map(move |c| (labels([("probe", p.probe), ("program", c.program)]), c))
        })
    };
    let probe_up = report.probes.iter().map(|p| Sample {
        labels: labels([
            ("probe", p.probe),
            ("attach", p.attach.map_or("none", |a| a.as_str())),
            // Tells a probe that failed from one disabled or not applicable here.
            ("state", p.state.as_str()),
        ]),
        value: Value::Int(u64::from(p.state == ProbeState::Up)),
    });
    let dropped = report
        .agent
        .dropped_total
        .iter()
        .map(|(&reason, &n)| Sample {
            labels: labels([("reason", reason)]),
            value: Value::Int(n),
        });
    vec![
        self_family(
            &catalog::RUN_COUNT,
            programs()
                .map(|(labels, c)| Sample {
                    labels,
                    value: Value::Int(c.events_total),
                })
                .collect(),
        ),
        self_family(
            &catalog::RUN_TIME,
            programs()
                .map(|(labels, c)| Sample {
                    labels,
                    value: Value::Float(c.run_time_ns_total as f64 / NS_PER_SECOND),
                })
                .collect(),
        ),
        self_family(&catalog::PROBE_UP, probe_up.collect()),
        self_family(&catalog::DROPPED, dropped.collect()),
        self_family(
            &catalog::ALARMS_OPEN,
            vec![Sample {
                labels: Vec::new(),
                value: Value::Int(report.alarms_open),
            }],
        ),
        self_family(
            &catalog::AUDIT_FAILURES,
            vec![Sample {
                labels: Vec::new(),
                value: Value::Int(report.agent.audit_failures_total),
            }],
        ),
        self_family(
            &catalog::MEMORY,
            vec![Sample {
                labels: Vec::new(),
                value: Value::Int(report.agent.rss_bytes),
            }],
        ),
        self_family(
            &catalog::CPU_TIME,
            vec![Sample {
                labels: Vec::new(),
                value: Value::Float(report.agent.cpu_seconds_total),
            }],
        ),
    ]
}

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Help text of a family: the catalogue's description, with its unit.
fn family_help(family: &str) -> String {
    let unit = match catalog::unit(family) {
        "ns" => ", in seconds",
        "By" => ", in bytes",
        _ => "",
    };
    format!(
        "{}{unit}, since the agent started.",
        catalog::description(family)
    )
}

// ---------------------------------------------------------------------------------------
// Bucket bounds.
// ---------------------------------------------------------------------------------------

/// Prometheus native bucket index of OTLP bucket `otlp_index`.
///
/// Prometheus bucket `k` covers `(2^((k-1)/8), 2^(k/8)]`, OTLP bucket `i` covers
/// `(2^(i/8), 2^((i+1)/8)]`, so the same bucket has index `k = i + 1`. Verified against
/// the native histograms specification, "OpenTelemetry interoperability" ("a Prom
/// bucket with index n has index n-1 for OTel", prometheus/docs
/// content/docs/specs/native_histograms.md), and client_golang's key computation
/// (`key = sort.SearchFloat64s(bounds, frac) + (exp-1)*len(bounds)` puts 1.0 in key 0,
/// i.e. 1 is the inclusive upper bound of bucket 0; in OTLP, 1 is in bucket -1).
fn prometheus_index(otlp_index: i32) -> i32 {
    otlp_index + 1
}

/// `2^e`, exact.
fn pow2(e: i32) -> f64 {
    if (-1022..=1023).contains(&e) {
        f64::from_bits(((e + 1023) as u64) << 52)
    } else {
        2f64.powi(e)
    }
}

/// Classic buckets of a cumulative histogram: `(le, cumulative count)` in increasing
/// `le`, without `+Inf`, at the same powers of two of the recorded unit for every series
/// of a unit, from the one just below the first sample up. `sum by (le)` across devices
/// or nodes needs that: an `le` a series lacks adds nothing for it, so with each
/// series' own populated edges the sum dipped there and the fleet's quantile landed far
/// above every node's own (seen in the fleet rules' test). Edges below a series' first
/// sample may be left out, since its count there is 0 (an empty series has none: idle
/// devices cost one `+Inf` line), and one zero edge is kept so a quantile in the lowest
/// bucket interpolates from its lower edge, not from 0. A power of two is the upper edge
/// of every eighth schema-3 bucket, so each count is exact; within a factor of two,
/// `histogram_quantile` interpolates, and native histograms carry the full resolution.
fn classic_buckets(h: &ExpHistogram, unit: Unit) -> Vec<(f64, u64)> {
    let mut buckets = h.buckets().peekable();
    let mut cumulative = h.zero_count;
    let all: Vec<(f64, u64)> = unit
        .classic_powers()
        .map(|power| {
            // Native bucket k ends at 2^(k/8): bucket 8·power ends at 2^power.
            while let Some((_, count)) =
                buckets.next_if(|(otlp, _)| prometheus_index(*otlp) <= 8 * power)
            {
                cumulative += count;
            }
            (pow2(power), cumulative)
        })
        .collect();
    match all.iter().position(|&(_, count)| count > 0) {
        Some(first) => all[first.saturating_sub(1)..].to_vec(),
        None => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------
// Text format 0.0.4.
// ---------------------------------------------------------------------------------------

/// The report in the Prometheus text exposition format 0.0.4.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    for family in families(report) {
        write_family_text(&mut out, &family);
    }
    out
}

fn write_family_text(out: &mut String, family: &Family<'_>) {
    let kind = match family.kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    };
    let name = &family.name;
    let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for sample in &family.samples {
        match &sample.value {
            Value::Int(v) => write_sample(out, name, &sample.labels, None, &v.to_string()),
            Value::Float(v) => write_sample(out, name, &sample.labels, None, &format_float(*v)),
            Value::Histogram(h, unit) => {
                write_histogram_text(out, name, &sample.labels, h, *unit);
            }
        }
    }
}

fn write_histogram_text(
    out: &mut String,
    name: &str,
    labels: &[(String, String)],
    h: &ExpHistogram,
    unit: Unit,
) {
    let bucket = format!("{name}_bucket");
    for (le, count) in classic_buckets(h, unit) {
        let le = format_float(unit.export(le));
        write_sample(out, &bucket, labels, Some(&le), &count.to_string());
    }
    let count = h.count().to_string();
    write_sample(out, &bucket, labels, Some("+Inf"), &count);
    write_sample(
        out,
        &format!("{name}_sum"),
        labels,
        None,
        &match unit {
            Unit::Nanoseconds => format_float(unit.export(h.sum as f64)),
            Unit::Bytes | Unit::Count => h.sum.to_string(),
        },
    );
    write_sample(out, &format!("{name}_count"), labels, None, &count);
}

fn write_sample(
    out: &mut String,
    name: &str,
    labels: &[(String, String)],
    le: Option<&str>,
    value: &str,
) {
    out.push_str(name);
    let pairs = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(le.map(|le| ("le", le)));
    for (i, (k, v)) in pairs.enumerate() {
        out.push(if i == 0 { '{' } else { ',' });
        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
    }
    if !labels.is_empty() || le.is_some() {
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Label values escape backslash, double quote and line feed.
fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help text escapes backslash and line feed (not double quotes).
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Go-compatible spelling of the special values; finite values in Rust's shortest
/// round-trip form.
fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

// ---------------------------------------------------------------------------------------
// Protobuf format.
// ---------------------------------------------------------------------------------------

/// `io.prometheus.client` messages, hand-written with the field numbers of
/// prometheus/client_model io/prometheus/client/metrics.proto (proto2):
///
/// - `LabelPair`: name = 1, value = 2
/// - `MetricType`: COUNTER = 0, GAUGE = 1, SUMMARY = 2, UNTYPED = 3, HISTOGRAM = 4,
///   GAUGE_HISTOGRAM = 5
/// - `Gauge`: value = 1; `Counter`: value = 1 (exemplar = 2, created_timestamp = 3 unused)
/// - `Histogram`: sample_count = 1, sample_sum = 2, bucket = 3, sample_count_float = 4,
///   schema = 5 (sint32), zero_threshold = 6, zero_count = 7, zero_count_float = 8,
///   negative_span = 9, negative_delta = 10, negative_count = 11, positive_span = 12,
///   positive_delta = 13 (sint64), positive_count = 14 (created_timestamp = 15 and
///   exemplars = 16 unused)
/// - `Bucket`: cumulative_count = 1, upper_bound = 2 (exemplar = 3,
///   cumulative_count_float = 4 unused)
/// - `BucketSpan`: offset = 1 (sint32), length = 2 (uint32)
/// - `Metric`: label = 1, gauge = 2, counter = 3, summary = 4, untyped = 5,
///   timestamp_ms = 6, histogram = 7
/// - `MetricFamily`: name = 1, help = 2, type = 3, metric = 4, unit = 5
///
/// Repeated scalars are unpacked, as proto2 declares them (parsers accept both).
pub mod proto {
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum MetricType {
        Counter = 0,
        Gauge = 1,
        Summary = 2,
        Untyped = 3,
        Histogram = 4,
        GaugeHistogram = 5,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPair {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub value: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Gauge {
        #[prost(double, optional, tag = "1")]
        pub value: Option<f64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Counter {
        #[prost(double, optional, tag = "1")]
        pub value: Option<f64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Bucket {
        #[prost(uint64, optional, tag = "1")]
        pub cumulative_count: Option<u64>,
        #[prost(double, optional, tag = "2")]
        pub upper_bound: Option<f64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BucketSpan {
        #[prost(sint32, optional, tag = "1")]
        pub offset: Option<i32>,
        #[prost(uint32, optional, tag = "2")]
        pub length: Option<u32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Histogram {
        #[prost(uint64, optional, tag = "1")]
        pub sample_count: Option<u64>,
        #[prost(double, optional, tag = "2")]
        pub sample_sum: Option<f64>,
        #[prost(message, repeated, tag = "3")]
        pub bucket: Vec<Bucket>,
        #[prost(sint32, optional, tag = "5")]
        pub schema: Option<i32>,
        #[prost(double, optional, tag = "6")]
        pub zero_threshold: Option<f64>,
        #[prost(uint64, optional, tag = "7")]
        pub zero_count: Option<u64>,
        #[prost(message, repeated, tag = "9")]
        pub negative_span: Vec<BucketSpan>,
        #[prost(sint64, repeated, packed = "false", tag = "10")]
        pub negative_delta: Vec<i64>,
        #[prost(message, repeated, tag = "12")]
        pub positive_span: Vec<BucketSpan>,
        #[prost(sint64, repeated, packed = "false", tag = "13")]
        pub positive_delta: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metric {
        #[prost(message, repeated, tag = "1")]
        pub label: Vec<LabelPair>,
        #[prost(message, optional, tag = "2")]
        pub gauge: Option<Gauge>,
        #[prost(message, optional, tag = "3")]
        pub counter: Option<Counter>,
        #[prost(message, optional, tag = "7")]
        pub histogram: Option<Histogram>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MetricFamily {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub help: Option<String>,
        #[prost(enumeration = "MetricType", optional, tag = "3")]
        pub r#type: Option<i32>,
        #[prost(message, repeated, tag = "4")]
        pub metric: Vec<Metric>,
    }
}

/// The report as length-delimited `io.prometheus.client.MetricFamily` messages, the
/// format Prometheus needs to scrape native histograms.
pub fn render_protobuf(report: &Report) -> Vec<u8> {
    let mut out = Vec::new();
    for family in families(report) {
        // Writing into a Vec only fails when it cannot grow, which aborts anyway.
        let _ = family_proto(&family).encode_length_delimited(&mut out);
    }
    out
}

fn family_proto(family: &Family<'_>) -> proto::MetricFamily {
    let kind = match family.kind {
        Kind::Counter => proto::MetricType::Counter,
        Kind::Gauge => proto::MetricType::Gauge,
        Kind::Histogram => proto::MetricType::Histogram,
    };
    proto::MetricFamily {
        name: Some(family.name.clone()),
        help: Some(family.help.clone()),
        r#type: Some(kind as i32),
        metric: family
            .samples
            .iter()
            .map(|s| metric_proto(family.kind, s))
            .collect(),
    }
}

fn metric_proto(kind: Kind, sample: &Sample<'_>) -> proto::Metric {
    let mut m = proto::Metric {
        label: sample
            .labels
            .iter()
            .map(|(k, v)| proto::LabelPair {
                name: Some(k.clone()),
                value: Some(v.clone()),
            })
            .collect(),
        ..Default::default()
    };
    match (&sample.value, kind) {
        (Value::Histogram(h, unit), _) => m.histogram = Some(histogram_proto(h, *unit)),
        (v, Kind::Counter) => m.counter = Some(proto::Counter { value: v.as_f64() }),
        (v, _) => m.gauge = Some(proto::Gauge { value: v.as_f64() }),
    }
    m
}

/// A native histogram at our scale with the classic buckets alongside, so scrapers
/// with and without native histograms enabled both get a histogram.
fn histogram_proto(h: &ExpHistogram, unit: Unit) -> proto::Histogram {
    let (positive_span, positive_delta) = native_positive_buckets(h, unit);
    proto::Histogram {
        sample_count: Some(h.count()),
        sample_sum: Some(unit.export(h.sum as f64)),
        bucket: classic_buckets(h, unit)
            .into_iter()
            .map(|(le, count)| proto::Bucket {
                cumulative_count: Some(count),
                upper_bound: Some(unit.export(le)),
            })
            .collect(),
        // OTLP scale and Prometheus schema are the same number.
        schema: Some(agent_common::hist::SCALE),
        zero_threshold: Some(NATIVE_ZERO_THRESHOLD),
        zero_count: Some(h.zero_count),
        negative_span: Vec::new(),
        negative_delta: Vec::new(),
        positive_span,
        positive_delta,
    }
}

/// The native zero bucket's threshold, client_golang's default (2^-128): far below
/// the smallest value recorded (values are integers; 1 ns is 1e-9 s), so the zero
/// bucket still holds exact zeros only. It is not 0 because a threshold above 0 is
/// what marks an empty histogram as native for Prometheus 2.42 to 2.46: they take a
/// histogram as native only when it has bucket deltas, a zero count or a threshold
/// above 0 (the empty span below counts from 2.47), and decide for a whole family from
/// its first series, so one idle device served first made every series of its family
/// classic (docs/architecture.md, Prometheus names).
const NATIVE_ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39; // 2^-128

/// Spans of consecutive populated buckets (the first span's offset is its starting
/// index, the others' the number of empty buckets skipped) and each bucket's count as
/// a delta to the previous bucket's. A histogram with no populated buckets gets one
/// empty span: without any span, a native histogram with zero threshold 0 would be
/// taken for a classic one (metrics.proto, `positive_span`).
fn native_positive_buckets(h: &ExpHistogram, unit: Unit) -> (Vec<proto::BucketSpan>, Vec<i64>) {
    let mut spans: Vec<proto::BucketSpan> = Vec::new();
    let mut deltas = Vec::new();
    let mut next: Option<i32> = None;
    let mut previous_count = 0u64;
    for (otlp, count) in h.buckets() {
        let k = unit.native_index(prometheus_index(otlp));
        match (next, spans.last_mut()) {
            (Some(n), Some(span)) if n == k => span.length = Some(span.length.unwrap_or(0) + 1),
            _ => spans.push(proto::BucketSpan {
                offset: Some(next.map_or(k, |n| k - n)),
                length: Some(1),
            }),
        }
        deltas.push((count as i64).wrapping_sub(previous_count as i64));
        previous_count = count;
        next = Some(k + 1);
    }
    if spans.is_empty() {
        spans.push(proto::BucketSpan {
            offset: Some(0),
            length: Some(0),
        });
    }
    (spans, deltas)
}

// ---------------------------------------------------------------------------------------
// Content negotiation and responses.
// ---------------------------------------------------------------------------------------

/// Whether the `Accept` header prefers the delimited protobuf format to the text format:
/// protobuf must be listed with `proto=io.prometheus.client.MetricFamily` and
/// `encoding=delimited`, and its quality must be at least that of any range matching
/// `text/plain`. Other formats (OpenMetrics) are not served, so they don't count.
fn wants_protobuf(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let (mut protobuf_q, mut text_q) = (0.0f64, 0.0f64);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let (mut q, mut message, mut encoding) = (1.0f64, "", "");
        for param in parts {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match key.trim().to_ascii_lowercase().as_str() {
                "q" => q = value.parse().unwrap_or(0.0),
                "proto" => message = value,
                "encoding" => encoding = value,
                _ => {}
            }
        }
        if media.eq_ignore_ascii_case(PROTOBUF_MEDIA_TYPE)
            && message == PROTOBUF_MESSAGE
            && encoding == "delimited"
        {
            protobuf_q = protobuf_q.max(q);
        } else if ["text/plain", "text/*", "*/*"]
            .iter()
            .any(|t| media.eq_ignore_ascii_case(t))
        {
            text_q = text_q.max(q);
        }
    }
    protobuf_q > 0.0 && protobuf_q >= text_q
}

/// The latest report and its renderings, each made once: text (and protobuf, once a
/// scraper asked for it) by the [`Renderer`] before the report is served, protobuf
/// otherwise by the first scrape that asks. A crowd of scrapers in one interval costs
/// one rendering, not one each.
struct Rendered {
    report: Arc<Report>,
    text: OnceLock<Bytes>,
    protobuf: OnceLock<Bytes>,
}

impl Rendered {
    fn new(report: Report) -> Self {
        Self {
            report: Arc::new(report),
            text: OnceLock::new(),
            protobuf: OnceLock::new(),
        }
    }

    fn text(&self) -> Bytes {
        self.text
            .get_or_init(|| render_text(&self.report).into())
            .clone()
    }

    fn protobuf(&self) -> Bytes {
        self.protobuf
            .get_or_init(|| render_protobuf(&self.report).into())
            .clone()
    }
}

/// The response to one request, given the latest report (none before the first).
fn respond(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    latest: Option<&Rendered>,
) -> Response<Full<Bytes>> {
    if path != METRICS_PATH {
        return http::plain(
            StatusCode::NOT_FOUND,
            "not found: nodepulse serves its metrics at /metrics\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        return http::method_not_allowed("use GET /metrics\n");
    }
    let Some(latest) = latest else {
        return http::plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "no metrics yet: nodepulse has not finished its first interval\n",
        );
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if wants_protobuf(accept) {
        http::response(StatusCode::OK, PROTOBUF_CONTENT_TYPE, latest.protobuf())
    } else {
        http::response(StatusCode::OK, TEXT_CONTENT_TYPE, latest.text())
    }
}

// ---------------------------------------------------------------------------------------
// The exporter and its server.
// ---------------------------------------------------------------------------------------

/// The latest rendered report, shared between the renderer and the server. The lock is
/// only held to swap or clone an `Arc`, never while rendering or doing I/O.
type Latest = Arc<Mutex<Option<Arc<Rendered>>>>;

fn latest(shared: &Latest) -> Option<Arc<Rendered>> {
    shared
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Renders each exported report on a thread of its own and only then publishes it, so
/// no scrape waits for a rendering (the first after a report would otherwise render it
/// on the server's thread while a crowd of scrapes queues behind it) and the collection
/// loop does not render either. Until a report is rendered, scrapes get the previous one.
struct Renderer {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Set once any scrape asked for protobuf: from then on each report is rendered in
    /// that format too, ahead of the scrapes.
    protobuf_wanted: AtomicBool,
    /// Reports handed over and reports published (a skipped one counts as published).
    submitted: AtomicU64,
    published: AtomicU64,
}

#[derive(Default)]
struct Pending {
    /// The newest report not yet rendered, with its number; a newer one replaces it
    /// unrendered.
    report: Option<(u64, Report)>,
    stop: bool,
}

impl Renderer {
    fn start(latest: Latest) -> Arc<Self> {
        let renderer = Arc::new(Self {
            pending: Mutex::default(),
            wake: Condvar::new(),
            protobuf_wanted: Default::default(),
            submitted: AtomicU64::new(0),
            published: AtomicU64::new(0),
        });
        let worker = renderer.clone();
        // A thread, not a task: rendering is CPU work that must not hold the runtime
        // thread the endpoints answer on.
        std::thread::Builder::new()
            .name("prometheus-render".into())
            .spawn(move || worker.run(&latest))
            .expect("a thread for rendering Prometheus metrics");
        renderer
    }

    fn run(&self, latest: &Latest) {
        loop {
            let (number, report) = {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    if pending.stop {
                        return;
                    }
                    if let Some(report) = pending.report.take() {
                        break report;
                    }
                    pending = self
                        .wake
                        .wait(pending)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            };
            let rendered = Rendered::new(report);
            rendered.text();
            if self.protobuf_wanted.load(Ordering::Relaxed) {
                rendered.protobuf();
            }
            *latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(rendered));
            self.published.store(number, Ordering::Release);
        }
    }

    fn submit(&self, report: Report) {
        let number = self.submitted.fetch_add(1, Ordering::Relaxed) + 1;
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .report = Some((number, report));
        self.wake.notify_one();
    }

    /// Waits until the last submitted report is published.
    #[cfg(test)]
    fn wait_published(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.published.load(Ordering::Acquire) < self.submitted.load(Ordering::Relaxed) {
            assert!(std::time::Instant::now() < deadline, "no rendering in 10 s");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn stop(&self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.wake.notify_one();
    }
}

/// Serves `/metrics` from the last exported report. Dropping it stops accepting
/// connections and rendering.
pub struct PrometheusExporter {
    renderer: Arc<Renderer>,
    server: http::Server,
    /// What scrapes are served, for the first report (see `export`).
    served: Latest,
}

impl PrometheusExporter {
    /// Binds `listen` and starts serving on the current tokio runtime (which must have
    /// I/O enabled). Returns the bound address, which tells the port when `listen` has
    /// port 0. Errors when called outside a runtime or when the address cannot be bound.
    pub fn start(listen: SocketAddr) -> io::Result<(Self, SocketAddr)> {
        let shared = Latest::default();
        let reader = shared.clone();
        let served = shared.clone();
        let renderer = Renderer::start(shared);
        let asked = renderer.clone();
        let handler: http::Handler = Arc::new(move |method, path, headers| {
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
            if wants_protobuf(accept) {
                asked.protobuf_wanted.store(true, Ordering::Relaxed);
            }
            respond(method, path, headers, latest(&reader).as_deref())
        });
        let (server, bound) = match http::serve("Prometheus", listen, handler) {
            Ok(served) => served,
            Err(e) => {
                renderer.stop();
                return Err(e);
            }
        };
        Ok((
            Self {
                renderer,
                server,
                served,
            },
            bound,
        ))
    }

    /// What the endpoint did against abusive clients.
    pub fn server_stats(&self) -> Arc<http::Stats> {
        self.server.stats()
    }

    /// Waits until the last exported report is the one served (tests export, then
    /// scrape at once).
    #[cfg(test)]
    pub(crate) fn wait_rendered(&self) {
        self.renderer.wait_published();
    }
}

impl Drop for PrometheusExporter {
    fn drop(&mut self) {
        self.renderer.stop();
    }
}

impl Exporter for PrometheusExporter {
    fn name(&self) -> &'static str {
        "prometheus"
    }

    /// Hands the report to the renderer, which publishes it once rendered. The first
    /// report is also published at once, unrendered (a scrape renders it), so an endpoint
    /// that was handed a report never answers 503: a new endpoint at a reload is fed the
    /// last report and scraped straight away.
    fn export(&mut self, report: &Report) -> io::Result<()> {
        {
            let mut served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
            if served.is_none() {
                *served = Some(Arc::new(Rendered::new(report.clone())));
            }
        }
        self.renderer.submit(report.clone());
        Ok(())
    }
}

/// A Prometheus scrape endpoint serving the same series.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    pub enabled: bool,
    pub listen: String,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "127.0.0.1:9464".into(),
        }
    }
}

#[cfg(test)]
mod tests;
