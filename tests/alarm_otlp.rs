//! Alarms and action runs through the real OTLP exporter to the real OTLP receiver on
//! loopback (no root): the alarm's log records, its span over its lifetime, the action
//! run as a child span in the same trace, and the open-alarms gauge.

use crate::common;

use std::{collections::BTreeMap, time::Duration};

use common::otlp_server::OtlpServer;
use nodepulse::{
    actions::{ActionRule, Actions, ActionsConfig, Trigger, WebhookFormat},
    aggregate::ExpHistogram,
    detect::{
        Alarm, AlarmState, DetectConfig, Severity,
        series::{Identity, SeriesState},
    },
    export::{
        Exporter,
        otlp::{OtlpExporter, transport::OtlpConfig},
    },
    report::{AgentReport, Report},
    selfmon::Usage,
    util::hex,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

/// A series that learns, regresses (alarm opens) and recovers (alarm resolves).
fn alarm_lifecycle() -> (Alarm, Alarm) {
    // One 10 s interval per window; no absolute floor (the shift here is ~100 µs).
    let config = DetectConfig {
        min_window: std::time::Duration::from_secs(10),
        min_intervals: 1,
        baseline_windows: 5,
        learning_period: std::time::Duration::ZERO,
        min_shift: BTreeMap::new(),
        default_min_shift: std::time::Duration::ZERO,
        ..DetectConfig::default()
    };
    let labels = BTreeMap::from([("device".to_owned(), "sdq".to_owned())]);
    let who = Identity {
        node: "test",
        family: "block.io.latency",
        labels: &labels,
        series: "block.io.latency{device=sdq}",
    };
    let body = |center: i32| {
        ExpHistogram::from_buckets(
            0,
            0,
            (-4..=4).map(|d: i32| (center + d, 400 - 80 * d.unsigned_abs() as u64)),
        )
    };
    let mut state = SeriesState::default();
    let mut events = Vec::new();
    let mut t = 1_800_000_000_000_000_000u64;
    for center in [130; 8].into_iter().chain([140; 3]).chain([130; 4]) {
        t += 10_000_000_000;
        if let Some(o) = state.observe(&who, &body(center), t, 10_000_000_000, &config) {
            events.extend(o.alarm);
        }
    }
    let opened = events
        .iter()
        .find(|a| a.state == AlarmState::Open)
        .unwrap()
        .clone();
    let resolved = events
        .iter()
        .find(|a| a.state == AlarmState::Resolved)
        .unwrap()
        .clone();
    (opened, resolved)
}

fn report(alarms: Vec<Alarm>, open: u64, actions: Vec<nodepulse::actions::ActionRun>) -> Report {
    Report {
        time: "2027-01-15T08:00:00Z".into(),
        interval_s: 10.0,
        node: "test".into(),
        series: vec![],
        counters: vec![],
        outliers: vec![],
        probes: vec![],
        agent: AgentReport::new(
            Usage {
                cpu_percent: 0.1,
                rss_bytes: 1 << 20,
                cpu_seconds_total: 1.0,
            },
            BTreeMap::new(),
            BTreeMap::new(),
            None,
        ),
        alarms,
        alarms_open: open,
        learning: vec![],
        learning_until: None,
        capacity: None,
        actions,
        backing: BTreeMap::new(),
    }
}

#[test]
fn alarm_logs_spans_action_child_span_and_gauge_reach_the_collector() {
    one_subject_at_a_time!();
    let (opened, resolved) = alarm_lifecycle();
    assert_eq!(opened.id, resolved.id);

    // A real action run for the opening.
    let dir = tempfile::tempdir().unwrap();
    let actions_config = ActionsConfig {
        audit_log: dir.path().join("audit.jsonl"),
        rules: vec![ActionRule {
            name: "noop".into(),
            family: String::new(),
            labels: BTreeMap::new(),
            min_severity: Severity::Minor,
            on: vec![Trigger::Open],
            cooldown: Duration::ZERO,
            timeout: Duration::from_secs(5),
            program: vec!["/bin/true".into()],
            webhook: String::new(),
            format: WebhookFormat::Nodepulse,
        }],
        ..ActionsConfig::default()
    };
    let mut actions = Actions::start(&actions_config, "test").unwrap().unwrap();
    actions.dispatch(&opened);
    assert!(actions.wait(Duration::from_secs(10)));
    let runs = actions.completed();
    assert_eq!(runs.len(), 1);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = OtlpServer::start_grpc("127.0.0.1:0".parse().unwrap());
    runtime.block_on(async {
        let config = OtlpConfig {
            enabled: true,
            endpoint: server.endpoint(),
            ..OtlpConfig::default()
        };
        let (mut exporter, sender) = OtlpExporter::start(&config, "test").unwrap();
        exporter
            .export(&report(vec![opened.clone()], 1, vec![]))
            .unwrap();
        exporter
            .export(&report(vec![resolved.clone()], 0, runs.clone()))
            .unwrap();
        assert!(sender.flush(Duration::from_secs(10)).await);
    });
    let got = server.received();

    // Log records: the opening, the resolution and the action run, in the alarm's trace.
    let records: Vec<_> = got
        .logs
        .iter()
        .flat_map(|r| &r.resource_logs)
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
        .collect();
    let by_event = |name: &str| {
        records
            .iter()
            .find(|r| attr(&r.attributes, "event.name") == Some(name))
            .unwrap_or_else(|| panic!("no {name} record in {records:#?}"))
    };
    let open_rec = by_event("nodepulse.alarm.open");
    assert_eq!(
        attr(&open_rec.attributes, "nodepulse.alarm.id"),
        Some(opened.id.as_str())
    );
    assert_eq!(attr(&open_rec.attributes, "nodepulse.device"), Some("sdq"));
    assert!(
        attr(&open_rec.attributes, "nodepulse.alarm.evidence")
            .unwrap()
            .contains("fractions")
    );
    assert_eq!(hex::encode(&open_rec.trace_id), opened.trace_id);
    assert_eq!(hex::encode(&open_rec.span_id), opened.span_id);
    let resolved_rec = by_event("nodepulse.alarm.resolved");
    assert_eq!(hex::encode(&resolved_rec.trace_id), opened.trace_id);
    let run_rec = by_event("nodepulse.action.run");
    assert_eq!(
        attr(&run_rec.attributes, "nodepulse.action.outcome"),
        Some("ok")
    );
    assert_eq!(
        attr(&run_rec.attributes, "nodepulse.action.exit_code"),
        Some("0")
    );
    assert_eq!(hex::encode(&run_rec.trace_id), opened.trace_id);

    // Spans: the alarm's lifetime, and the action as its child.
    let spans: Vec<_> = got
        .traces
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    let alarm_span = spans
        .iter()
        .find(|s| hex::encode(&s.span_id) == opened.span_id)
        .expect("the alarm's span");
    assert_eq!(hex::encode(&alarm_span.trace_id), opened.trace_id);
    assert_eq!(alarm_span.start_time_unix_nano, opened.start_unix_nano);
    assert_eq!(Some(alarm_span.end_time_unix_nano), resolved.end_unix_nano);
    let action_span = spans
        .iter()
        .find(|s| s.name == "nodepulse.action noop")
        .expect("the action's span");
    assert_eq!(hex::encode(&action_span.trace_id), opened.trace_id);
    assert_eq!(hex::encode(&action_span.parent_span_id), opened.span_id);
    assert_eq!(hex::encode(&action_span.span_id), runs[0].span_id);

    // The gauge: 1 open after the first report, 0 after the second.
    let gauge: Vec<i64> = got
        .metrics
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .filter(|m| m.name == "nodepulse.alarms.open")
        .filter_map(|m| match m.data.as_ref()? {
            opentelemetry_proto::tonic::metrics::v1::metric::Data::Gauge(g) => {
                match g.data_points.first()?.value? {
                    opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(v) => {
                        Some(v)
                    }
                    _ => None,
                }
            }
            _ => None,
        })
        .collect();
    assert_eq!(gauge, vec![1, 0]);
    server.stop();
}
