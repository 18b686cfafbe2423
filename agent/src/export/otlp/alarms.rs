//! Alarms and action runs in OTLP: a log record for each alarm that opens or resolves
//! and for each action run, a span covering each resolved alarm's lifetime, and a span
//! per action run as that alarm span's child (same trace, parent span id), so a trace
//! view shows the regression and everything done about it together.

use opentelemetry_proto::tonic::{
    logs::v1::SeverityNumber,
    trace::v1::{Span, Status, span, status},
};

use super::encode::{Event, kv, kv_int};
use crate::{
    actions::{ActionRun, Outcome},
    detect::{Alarm, AlarmState, Severity},
    util::hex,
};

fn alarm_attributes(a: &Alarm) -> Vec<(String, String)> {
    let mut attrs = vec![
        ("nodepulse.alarm.id".into(), a.id.clone()),
        ("nodepulse.alarm.state".into(), a.state.as_str().into()),
        ("nodepulse.alarm.series".into(), a.series.clone()),
        ("nodepulse.alarm.family".into(), a.family.clone()),
        (
            "nodepulse.alarm.severity".into(),
            a.severity.as_str().into(),
        ),
        ("nodepulse.alarm.confidence".into(), a.confidence.into()),
        ("nodepulse.alarm.quantile".into(), a.quantile.into()),
        ("nodepulse.alarm.factor".into(), format!("{:.3}", a.factor)),
        (
            "nodepulse.alarm.peak_factor".into(),
            format!("{:.3}", a.peak_factor),
        ),
        ("nodepulse.alarm.started".into(), a.started.clone()),
    ];
    for (q, v) in &a.baseline_ns {
        attrs.push((
            format!("nodepulse.alarm.baseline.{q}_ns"),
            format!("{v:.0}"),
        ));
    }
    for (q, v) in &a.current_ns {
        attrs.push((format!("nodepulse.alarm.current.{q}_ns"), format!("{v:.0}")));
    }
    for (k, v) in &a.labels {
        attrs.push((format!("nodepulse.{k}"), v.clone()));
    }
    attrs
}

/// Log records of the alarms that opened or resolved (ongoing ones stay quiet).
pub fn alarm_events(alarms: &[Alarm], now: u64) -> Vec<Event> {
    alarms
        .iter()
        .filter(|a| a.state != AlarmState::Ongoing)
        .map(|a| {
            let mut attributes = alarm_attributes(a);
            attributes.push((
                "event.name".into(),
                format!("nodepulse.alarm.{}", a.state.as_str()),
            ));
            attributes.push((
                "nodepulse.alarm.evidence".into(),
                serde_json::to_string(&a.evidence).unwrap_or_default(),
            ));
            Event {
                severity: match (a.state, a.severity) {
                    (AlarmState::Resolved, _) => SeverityNumber::Info,
                    (_, Severity::Critical) => SeverityNumber::Error,
                    _ => SeverityNumber::Warn,
                },
                body: a.summary.clone(),
                attributes,
                time_unix_nano: now,
                trace_id: hex::decode(&a.trace_id),
                span_id: hex::decode(&a.span_id),
            }
        })
        .collect()
}

/// Log records of action runs, in the run's own span.
pub fn action_events(runs: &[ActionRun]) -> Vec<Event> {
    runs.iter()
        .map(|r| {
            let mut attributes = vec![
                ("event.name".into(), "nodepulse.action.run".into()),
                ("nodepulse.alarm.id".into(), r.alarm_id.clone()),
                ("nodepulse.action.rule".into(), r.rule.clone()),
                ("nodepulse.action.kind".into(), r.kind.into()),
                ("nodepulse.action.target".into(), r.target.clone()),
                ("nodepulse.action.outcome".into(), r.outcome.as_str().into()),
                (
                    "nodepulse.action.duration_ms".into(),
                    format!("{:.1}", r.duration_ms),
                ),
            ];
            if let Some(code) = r.exit_code {
                attributes.push(("nodepulse.action.exit_code".into(), code.to_string()));
            }
            if let Some(status) = r.http_status {
                attributes.push(("http.response.status_code".into(), status.to_string()));
            }
            let body = format!(
                "action {} ({} {}) for alarm {}: {}{}",
                r.rule,
                r.kind,
                r.target,
                r.alarm_id,
                r.outcome.as_str(),
                r.error
                    .as_deref()
                    .map(|e| format!(" — {e}"))
                    .unwrap_or_default()
            );
            Event {
                severity: match r.outcome {
                    Outcome::Ok | Outcome::DryRun => SeverityNumber::Info,
                    Outcome::Failed | Outcome::TimedOut => SeverityNumber::Error,
                    _ => SeverityNumber::Warn,
                },
                body,
                attributes,
                time_unix_nano: r.end_unix_nano,
                trace_id: hex::decode(&r.trace_id),
                span_id: hex::decode(&r.span_id),
            }
        })
        .collect()
}

fn string_attributes(
    pairs: Vec<(String, String)>,
) -> Vec<opentelemetry_proto::tonic::common::v1::KeyValue> {
    pairs.into_iter().map(|(k, v)| kv(&k, v)).collect()
}

/// A span over each resolved alarm's lifetime (a span is sent once, when it ends).
pub fn alarm_spans(alarms: &[Alarm]) -> Vec<Span> {
    alarms
        .iter()
        .filter_map(|a| {
            let end = a.end_unix_nano?;
            Some(Span {
                trace_id: hex::decode(&a.trace_id),
                span_id: hex::decode(&a.span_id),
                name: format!("nodepulse.alarm {}", a.series),
                kind: span::SpanKind::Internal as i32,
                start_time_unix_nano: a.start_unix_nano,
                end_time_unix_nano: end,
                attributes: string_attributes(alarm_attributes(a)),
                status: Some(Status {
                    code: status::StatusCode::Error as i32,
                    message: a.summary.clone(),
                }),
                ..Default::default()
            })
        })
        .collect()
}

/// One span per action run, a child of its alarm's span.
pub fn action_spans(runs: &[ActionRun]) -> Vec<Span> {
    runs.iter()
        .map(|r| {
            let mut attributes = vec![
                kv("nodepulse.alarm.id", r.alarm_id.clone()),
                kv("nodepulse.action.rule", r.rule.clone()),
                kv("nodepulse.action.kind", r.kind),
                kv("nodepulse.action.target", r.target.clone()),
                kv("nodepulse.action.outcome", r.outcome.as_str()),
            ];
            if let Some(code) = r.exit_code {
                attributes.push(kv_int("process.exit.code", i64::from(code)));
            }
            if let Some(status) = r.http_status {
                attributes.push(kv_int("http.response.status_code", i64::from(status)));
            }
            let failed = matches!(r.outcome, Outcome::Failed | Outcome::TimedOut);
            Span {
                trace_id: hex::decode(&r.trace_id),
                span_id: hex::decode(&r.span_id),
                parent_span_id: hex::decode(&r.parent_span_id),
                name: format!("nodepulse.action {}", r.rule),
                kind: span::SpanKind::Internal as i32,
                start_time_unix_nano: r.start_unix_nano,
                end_time_unix_nano: r.end_unix_nano,
                attributes,
                status: Some(Status {
                    code: if failed {
                        status::StatusCode::Error
                    } else {
                        status::StatusCode::Ok
                    } as i32,
                    message: r.error.clone().unwrap_or_default(),
                }),
                ..Default::default()
            }
        })
        .collect()
}
