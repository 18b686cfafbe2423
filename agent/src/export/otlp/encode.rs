//! Reports as OTLP messages: every latency distribution as an exponential histogram
//! with exactly the kernel's buckets (same scale, same indexes: no re-bucketing), the
//! interval's outliers as spans and as exemplars on the bucket they fell in, and log
//! records for events (probe failures now, alarms later).

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    },
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    metrics::v1::{
        AggregationTemporality, Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint,
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, exemplar,
        exponential_histogram_data_point::Buckets, metric, number_data_point,
    },
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, span, status},
};

use crate::{
    catalog::{self, Kind, SelfMetric},
    export::otlp::transport::Temporality,
    probes::outliers::Outlier,
    report::{CounterReport, ProbeState, Report, SeriesReport},
};

pub const SCOPE: &str = "nodepulse";

pub fn kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

pub fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// Resource attributes after the OpenTelemetry semantic conventions.
pub fn resource(host_name: &str) -> Resource {
    let mut attributes = vec![
        kv("service.name", "nodepulse"),
        kv("service.version", env!("CARGO_PKG_VERSION")),
        kv("host.name", host_name),
        kv("os.type", "linux"),
    ];
    if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
        attributes.push(kv("host.id", id.trim()));
    }
    // Set by the DaemonSet through the downward API.
    if let Some(node) = ["K8S_NODE_NAME", "NODE_NAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
    {
        attributes.push(kv("k8s.node.name", node));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

pub fn attributes(
    labels: impl IntoIterator<Item = (impl AsRef<str>, impl AsRef<str>)>,
) -> Vec<KeyValue> {
    labels
        .into_iter()
        .map(|(k, v)| kv(k.as_ref(), v.as_ref()))
        .collect()
}

/// Times of one export: when the agent started (start of cumulative series; a
/// restart that continues the kernel's counts keeps the previous run's), the end of
/// the previous interval (start of delta series), and now.
#[derive(Clone, Copy, Debug)]
pub struct Times {
    pub agent_start: u64,
    /// When this process started: the start of what it counts itself.
    pub process_start: u64,
    pub interval_start: u64,
    pub now: u64,
}

impl Times {
    /// For totals this process counts itself (its CPU time, its transport's batches),
    /// which start from zero at every start whatever the kernel's counts do.
    pub fn of_process(self) -> Self {
        Self {
            agent_start: self.process_start,
            ..self
        }
    }
}

/// `scale`: of the exported histograms, at most the kernel's (lower merges buckets).
pub fn metrics_request(
    report: &Report,
    resource: &Resource,
    temporality: Temporality,
    scale: i32,
    times: Times,
    extra: Vec<Metric>,
) -> ExportMetricsServiceRequest {
    let mut by_family: BTreeMap<&str, Vec<&SeriesReport>> = BTreeMap::new();
    for s in &report.series {
        by_family.entry(s.family).or_default().push(s);
    }
    let mut metrics: Vec<Metric> = by_family
        .into_iter()
        .map(|(family, series)| {
            histogram_metric(family, &series, report, temporality, scale, times)
        })
        .collect();
    metrics.extend(counter_metrics(&report.counters, temporality, times));
    metrics.extend(self_metrics(report, times));
    if let Some(c) = &report.capacity {
        metrics.extend(capacity_metrics(c, times));
    }
    metrics.extend(extra);
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn histogram_metric(
    family: &str,
    series: &[&SeriesReport],
    report: &Report,
    temporality: Temporality,
    scale: i32,
    times: Times,
) -> Metric {
    let data_points = series
        .iter()
        .filter(|s| temporality == Temporality::Cumulative || s.count > 0)
        .map(|s| {
            let (h, start) = match temporality {
                Temporality::Cumulative => (s.cumulative.clone(), times.agent_start),
                Temporality::Delta => (s.delta_histogram(), times.interval_start),
            };
            let scale = scale.min(s.histogram.scale);
            let h = h.downscaled((s.histogram.scale - scale) as u32);
            ExponentialHistogramDataPoint {
                attributes: attributes(&s.labels),
                start_time_unix_nano: start,
                time_unix_nano: times.now,
                count: h.count(),
                sum: Some(h.sum as f64),
                scale,
                zero_count: h.zero_count,
                positive: Some(Buckets {
                    offset: h.offset,
                    bucket_counts: h.counts.clone(),
                }),
                exemplars: exemplars(s, &report.outliers),
                ..Default::default()
            }
        })
        .collect();
    Metric {
        name: catalog::otlp_name(family),
        description: catalog::description(family).into(),
        unit: catalog::unit(family).into(),
        data: Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
            data_points,
            aggregation_temporality: match temporality {
                Temporality::Cumulative => AggregationTemporality::Cumulative,
                Temporality::Delta => AggregationTemporality::Delta,
            } as i32,
        })),
        ..Default::default()
    }
}

/// The interval's outliers of this series, linking its slow buckets to their spans.
fn exemplars(s: &SeriesReport, outliers: &[Outlier]) -> Vec<Exemplar> {
    outliers
        .iter()
        .filter(|o| {
            o.family == s.family && o.labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
        })
        .map(|o| Exemplar {
            filtered_attributes: attributes(
                o.attributes
                    .iter()
                    .filter(|(k, _)| k.starts_with("process."))
                    .map(|(k, v)| (*k, v.as_str())),
            ),
            time_unix_nano: o.end_unix_nano,
            span_id: o.span_id.to_vec(),
            trace_id: o.trace_id.to_vec(),
            value: Some(exemplar::Value::AsInt(o.latency_ns as i64)),
        })
        .collect()
}

/// Counter families as monotonic sums: running totals, or the interval's increase.
fn counter_metrics(
    counters: &[CounterReport],
    temporality: Temporality,
    times: Times,
) -> Vec<Metric> {
    let mut by_family: BTreeMap<&str, Vec<&CounterReport>> = BTreeMap::new();
    for c in counters {
        by_family.entry(c.family).or_default().push(c);
    }
    by_family
        .into_iter()
        .map(|(family, series)| {
            let points = series
                .iter()
                .filter(|c| temporality == Temporality::Cumulative || c.delta > 0)
                .map(|c| {
                    let attrs = attributes(&c.labels);
                    match temporality {
                        Temporality::Cumulative => int_point(c.total, attrs, times),
                        Temporality::Delta => NumberDataPoint {
                            start_time_unix_nano: times.interval_start,
                            ..int_point(c.delta, attrs, times)
                        },
                    }
                })
                .collect();
            let mut metric = counter(
                &catalog::otlp_name(family),
                catalog::unit(family),
                catalog::description(family),
                points,
            );
            if temporality == Temporality::Delta
                && let Some(metric::Data::Sum(sum)) = &mut metric.data
            {
                sum.aggregation_temporality = AggregationTemporality::Delta as i32;
            }
            metric
        })
        .collect()
}

fn number(value: number_data_point::Value, attrs: Vec<KeyValue>, times: Times) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        start_time_unix_nano: times.agent_start,
        time_unix_nano: times.now,
        value: Some(value),
        ..Default::default()
    }
}

/// A cumulative monotonic sum.
pub fn counter(name: &str, unit: &str, description: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

pub fn gauge(name: &str, unit: &str, description: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: points,
        })),
        ..Default::default()
    }
}

/// One of the agent's own metrics, named and described by the catalogue.
pub fn self_metric(m: &SelfMetric, points: Vec<NumberDataPoint>) -> Metric {
    match m.kind {
        Kind::Gauge => gauge(m.otlp, m.unit, m.description, points),
        Kind::Counter | Kind::Histogram => counter(m.otlp, m.unit, m.description, points),
    }
}

pub fn int_point(value: u64, attrs: Vec<KeyValue>, times: Times) -> NumberDataPoint {
    number(number_data_point::Value::AsInt(value as i64), attrs, times)
}

fn double_point(value: f64, attrs: Vec<KeyValue>, times: Times) -> NumberDataPoint {
    number(number_data_point::Value::AsDouble(value), attrs, times)
}

/// Capacity as gauges: each signal as `capacity.<signal>`, device headroom, and the
/// forecast time to saturation with its interval's bounds (attribute `bound`).
fn capacity_metrics(c: &crate::capacity::CapacityReport, times: Times) -> Vec<Metric> {
    let mut by_name: BTreeMap<String, (&str, Vec<NumberDataPoint>)> = BTreeMap::new();
    for s in &c.signals {
        let mut attrs = attributes(s.labels.iter().map(|(k, v)| (*k, v.as_str())));
        attrs.push(kv("resource", s.resource.as_str()));
        by_name
            .entry(format!("capacity.{}", s.name))
            .or_insert((s.unit, Vec::new()))
            .1
            .push(double_point(s.value, attrs, times));
    }
    let mut metrics: Vec<Metric> = by_name
        .into_iter()
        .map(|(name, (unit, points))| {
            gauge(
                &name,
                unit,
                "Capacity signal of the interval (see README: Capacity)",
                points,
            )
        })
        .collect();
    let headroom: Vec<NumberDataPoint> = c
        .headroom
        .iter()
        .map(|h| {
            let known = if h.knee_known { "true" } else { "false" };
            let attrs = attributes([
                ("resource", h.resource.as_str()),
                ("device", h.device.as_str()),
                ("knee_known", known),
            ]);
            double_point(h.headroom, attrs, times)
        })
        .collect();
    if !headroom.is_empty() {
        metrics.push(gauge(
            "capacity.headroom",
            "1",
            "Share of the device's knee load (p99 at knee_multiple x unloaded) still unused",
            headroom,
        ));
    }
    let mut ttl = Vec::new();
    for f in &c.forecasts {
        for (bound, v) in [
            ("point", f.forecast.hours),
            ("lower", f.forecast.lower_h),
            ("upper", f.forecast.upper_h),
        ] {
            if let Some(v) = v {
                let attrs = attributes([
                    ("resource", f.resource.as_str()),
                    ("signal", f.signal),
                    ("bound", bound),
                ]);
                ttl.push(double_point(v, attrs, times));
            }
        }
    }
    if !ttl.is_empty() {
        metrics.push(gauge(
            "capacity.time_to_saturation",
            "h",
            "Hours until the signal is forecast to reach capacity.saturation; lower and \
             upper bound the prediction interval (absent: beyond 14 days or never)",
            ttl,
        ));
    }
    metrics
}

/// The agent's own telemetry: probe state and cost, drops, CPU and memory.
fn self_metrics(report: &Report, times: Times) -> Vec<Metric> {
    let program_points = |f: fn(&crate::report::ProgramCost) -> u64| {
        report
            .probes
            .iter()
            .flat_map(|p| {
                p.programs.iter().map(move |c| {
                    int_point(
                        f(c),
                        attributes([("probe", p.probe), ("program", c.program)]),
                        times,
                    )
                })
            })
            .collect()
    };
    let up = report
        .probes
        .iter()
        .map(|p| {
            let attach = p.attach.map_or("none", |k| k.as_str());
            let value = u64::from(p.state == ProbeState::Up);
            int_point(
                value,
                attributes([
                    ("probe", p.probe),
                    ("attach", attach),
                    ("state", p.state.as_str()),
                ]),
                times,
            )
        })
        .collect();
    let dropped = report
        .agent
        .dropped_total
        .iter()
        .map(|(reason, n)| int_point(*n, attributes([("reason", *reason)]), times))
        .collect();
    vec![
        self_metric(&catalog::RUN_COUNT, program_points(|c| c.events_total)),
        self_metric(&catalog::RUN_TIME, program_points(|c| c.run_time_ns_total)),
        self_metric(&catalog::PROBE_UP, up),
        self_metric(&catalog::DROPPED, dropped),
        self_metric(
            &catalog::CPU_TIME,
            vec![number(
                number_data_point::Value::AsDouble(report.agent.cpu_seconds_total),
                vec![],
                times.of_process(),
            )],
        ),
        self_metric(
            &catalog::ALARMS_OPEN,
            vec![int_point(report.alarms_open, vec![], times)],
        ),
        self_metric(
            &catalog::AUDIT_FAILURES,
            vec![int_point(report.agent.audit_failures_total, vec![], times)],
        ),
        self_metric(
            &catalog::MEMORY,
            vec![int_point(report.agent.rss_bytes, vec![], times)],
        ),
    ]
}

/// One span per outlier, with its real start and end.
pub fn traces_request(outliers: &[Outlier], resource: &Resource) -> ExportTraceServiceRequest {
    spans_request(outlier_spans(outliers), resource)
}

pub fn outlier_spans(outliers: &[Outlier]) -> Vec<Span> {
    outliers
        .iter()
        .map(|o| {
            let op = o
                .labels
                .iter()
                .find(|(k, _)| *k == "op")
                .map_or("", |(_, v)| v.as_str());
            let device = o
                .labels
                .iter()
                .find(|(k, _)| *k == "device")
                .map_or("", |(_, v)| v.as_str());
            let mut attrs = attributes(o.labels.iter().map(|(k, v)| (format!("nodepulse.{k}"), v)));
            attrs.extend(attributes(o.attributes.iter().cloned()));
            attrs.push(kv_int("nodepulse.latency_ns", o.latency_ns as i64));
            Span {
                trace_id: o.trace_id.to_vec(),
                span_id: o.span_id.to_vec(),
                name: format!("{} {op} {device}", o.family).trim().to_owned(),
                kind: span::SpanKind::Internal as i32,
                start_time_unix_nano: o.start_unix_nano,
                end_time_unix_nano: o.end_unix_nano,
                attributes: attrs,
                status: Some(opentelemetry_proto::tonic::trace::v1::Status {
                    code: status::StatusCode::Unset as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect()
}

pub fn spans_request(spans: Vec<Span>, resource: &Resource) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Something worth a log record: a probe that could not attach, an alarm.
#[derive(Clone, Debug)]
pub struct Event {
    pub severity: SeverityNumber,
    pub body: String,
    pub attributes: Vec<(String, String)>,
    pub time_unix_nano: u64,
    /// The span the record belongs to (an alarm's, an action run's); empty when none.
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
}

impl Event {
    /// One record per probe that could not attach by any method.
    pub fn probe_failures(report: &Report, now: u64) -> Vec<Event> {
        report
            .probes
            .iter()
            .filter(|p| p.state == ProbeState::Down)
            .map(|p| Event {
                severity: SeverityNumber::Error,
                body: format!(
                    "probe {} could not attach: {}",
                    p.probe,
                    p.errors.join("; ")
                ),
                attributes: vec![
                    ("event.name".into(), "nodepulse.probe.attach_failed".into()),
                    ("nodepulse.probe".into(), p.probe.into()),
                ],
                time_unix_nano: now,
                trace_id: Vec::new(),
                span_id: Vec::new(),
            })
            .collect()
    }
}

pub fn logs_request(events: &[Event], resource: &Resource) -> ExportLogsServiceRequest {
    let log_records = events
        .iter()
        .map(|e| LogRecord {
            time_unix_nano: e.time_unix_nano,
            observed_time_unix_nano: e.time_unix_nano,
            severity_number: e.severity as i32,
            severity_text: e
                .severity
                .as_str_name()
                .trim_start_matches("SEVERITY_NUMBER_")
                .into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(e.body.clone())),
            }),
            attributes: attributes(e.attributes.iter().map(|(k, v)| (k, v))),
            trace_id: e.trace_id.clone(),
            span_id: e.span_id.clone(),
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report;

    fn times() -> Times {
        Times {
            agent_start: 1_000,
            process_start: 1_000,
            interval_start: 5_000,
            now: 9_000,
        }
    }

    fn outlier() -> Outlier {
        Outlier {
            family: "block.io.latency",
            labels: vec![
                ("device", "loop7".into()),
                ("dev", "7:7".into()),
                ("op", "read".into()),
            ],
            latency_ns: 2_600_000,
            start_unix_nano: 10,
            end_unix_nano: 2_600_010,
            trace_id: [7; 16],
            span_id: [9; 8],
            attributes: vec![("process.pid", "42".into())],
        }
    }

    fn histogram(req: &ExportMetricsServiceRequest, name: &str) -> ExponentialHistogram {
        let m = req.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap();
        match &m.data {
            Some(metric::Data::ExponentialHistogram(h)) => h.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn histograms_keep_the_kernel_buckets() {
        let mut r = report::sample();
        r.outliers.push(outlier());
        let req = metrics_request(
            &r,
            &resource("vm"),
            Temporality::Cumulative,
            3,
            times(),
            vec![],
        );
        let h = histogram(&req, "nodepulse.block.io.latency");
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let p = &h.data_points[0];
        let s = &r.series[0];
        assert_eq!(p.scale, 3);
        assert_eq!(p.count, s.cumulative.count());
        assert_eq!(p.zero_count, s.cumulative.zero_count);
        let b = p.positive.as_ref().unwrap();
        assert_eq!(b.offset, s.cumulative.offset);
        assert_eq!(b.bucket_counts, s.cumulative.counts);
        assert_eq!(b.bucket_counts.iter().sum::<u64>() + p.zero_count, p.count);
        assert_eq!(p.start_time_unix_nano, 1_000);
        // The exemplar points at the span.
        assert_eq!(p.exemplars.len(), 1);
        assert_eq!(p.exemplars[0].span_id, vec![9; 8]);
        assert_eq!(p.exemplars[0].trace_id, vec![7; 16]);
    }

    #[test]
    fn a_lower_scale_merges_buckets_and_keeps_counts() {
        let r = report::sample();
        let s = &r.series[0];
        for scale in [3, 1, 0, -2] {
            let req = metrics_request(
                &r,
                &resource("vm"),
                Temporality::Cumulative,
                scale,
                times(),
                vec![],
            );
            let p = &histogram(&req, "nodepulse.block.io.latency").data_points[0];
            assert_eq!(p.scale, scale);
            let b = p.positive.as_ref().unwrap();
            let by = (s.histogram.scale - scale) as u32;
            assert_eq!(b.offset, s.cumulative.offset >> by);
            let last = s.cumulative.offset + s.cumulative.counts.len() as i32 - 1;
            assert_eq!(b.bucket_counts.len() as i32, (last >> by) - b.offset + 1);
            assert_eq!(b.bucket_counts.iter().sum::<u64>() + p.zero_count, p.count);
            assert_eq!(p.count, s.cumulative.count());
            assert_eq!(p.sum, Some(s.cumulative.sum as f64));
        }
    }

    #[test]
    fn delta_temporality_uses_the_interval() {
        let r = report::sample();
        let req = metrics_request(&r, &resource("vm"), Temporality::Delta, 3, times(), vec![]);
        let h = histogram(&req, "nodepulse.block.io.latency");
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Delta as i32
        );
        assert_eq!(h.data_points[0].start_time_unix_nano, 5_000);
        assert_eq!(h.data_points[0].count, r.series[0].count);
    }

    #[test]
    fn counters_are_monotonic_sums_in_either_temporality() {
        let r = report::sample();
        for (temporality, value, start) in [
            (Temporality::Cumulative, 5, times().agent_start),
            (Temporality::Delta, 2, times().interval_start),
        ] {
            let req = metrics_request(&r, &resource("vm"), temporality, 3, times(), vec![]);
            let m = req.resource_metrics[0].scope_metrics[0]
                .metrics
                .iter()
                .find(|m| m.name == "nodepulse.block.io.errors")
                .unwrap();
            assert_eq!(m.unit, "{request}");
            let Some(metric::Data::Sum(sum)) = &m.data else {
                panic!("{m:?}")
            };
            assert!(sum.is_monotonic);
            let p = &sum.data_points[0];
            assert_eq!(p.value, Some(number_data_point::Value::AsInt(value)));
            assert_eq!(p.start_time_unix_nano, start);
            assert!(p.attributes.iter().any(|kv| kv.key == "error"));
        }
    }

    #[test]
    fn resource_follows_semantic_conventions() {
        let res = resource("node-1");
        let keys: Vec<&str> = res.attributes.iter().map(|a| a.key.as_str()).collect();
        for key in ["service.name", "service.version", "host.name", "os.type"] {
            assert!(keys.contains(&key), "{key} missing in {keys:?}");
        }
    }

    #[test]
    fn spans_carry_their_times_and_context() {
        let req = traces_request(&[outlier()], &resource("vm"));
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.start_time_unix_nano, 10);
        assert_eq!(span.end_time_unix_nano, 2_600_010);
        assert_eq!(span.name, "block.io.latency read loop7");
        assert!(span.attributes.iter().any(|a| a.key == "process.pid"));
    }

    #[test]
    fn probe_failures_become_error_logs() {
        let mut r = report::sample();
        r.probes[0].state = ProbeState::Down;
        r.probes[0].errors = vec!["kprobe: no kprobes".into()];
        let events = Event::probe_failures(&r, 77);
        let req = logs_request(&events, &resource("vm"));
        let rec = &req.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(rec.severity_number, SeverityNumber::Error as i32);
        assert_eq!(rec.severity_text, "ERROR");
        assert_eq!(rec.time_unix_nano, 77);
    }
}
