//! POSTing an alarm to a webhook, as nodepulse JSON or as an Alertmanager alert. Runs
//! on the action's own thread with a small runtime of its own, so a slow receiver
//! never touches the collection loop.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, header};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::{Value, json};

use super::config::WebhookFormat;
use crate::{
    detect::{Alarm, AlarmState},
    util::{error::error_chain, tls},
};

/// Body kept from the response for the audit log.
const RESPONSE_LIMIT: usize = 2048;

/// The request body for `alarm` in `format`.
pub fn payload(format: WebhookFormat, alarm: &Alarm, node: &str, rule: &str) -> Value {
    match format {
        WebhookFormat::Nodepulse => json!({
            "event": alarm.state.as_str(),
            "node": node,
            "rule": rule,
            "alarm": alarm,
        }),
        WebhookFormat::Alertmanager => {
            let mut labels = serde_json::Map::new();
            labels.insert("alertname".into(), "NodepulseLatencyRegression".into());
            labels.insert("severity".into(), alarm.severity.as_str().into());
            labels.insert("family".into(), alarm.family.clone().into());
            labels.insert("instance".into(), node.into());
            for (k, v) in &alarm.labels {
                // Alertmanager label names follow Prometheus': [a-zA-Z_][a-zA-Z0-9_]*.
                labels
                    .entry(crate::catalog::prometheus_label(k))
                    .or_insert_with(|| v.clone().into());
            }
            let mut alert = json!({
                "labels": labels,
                "annotations": {
                    "summary": alarm.summary,
                    "alarm_id": alarm.id,
                    "quantile": alarm.quantile,
                    "factor": format!("{:.2}", alarm.factor),
                    "trace_id": alarm.trace_id,
                },
                "startsAt": alarm.started,
                "generatorURL": format!("nodepulse://{node}/alarms/{}", alarm.id),
            });
            if alarm.state == AlarmState::Resolved
                && let Some(ended) = &alarm.ended
            {
                alert["endsAt"] = ended.clone().into();
            }
            json!([alert])
        }
    }
}

#[derive(Debug)]
pub struct WebhookResult {
    pub status: Option<u16>,
    pub body: String,
    pub error: Option<String>,
    pub timed_out: bool,
}

/// POSTs `body` as JSON; a non-2xx status is an error.
pub fn post(url: &str, body: Vec<u8>, timeout: Duration, traceparent: &str) -> WebhookResult {
    let failed = |error: String, timed_out| WebhookResult {
        status: None,
        body: String::new(),
        error: Some(error),
        timed_out,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return failed(
                format!("cannot start a runtime for the webhook: {e}"),
                false,
            );
        }
    };
    let https = url.starts_with("https://");
    let tls = match tls::default_client(https) {
        Ok(t) => t,
        Err(e) => return failed(e.to_string(), false),
    };
    runtime.block_on(async move {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        let request = match Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("nodepulse/", env!("CARGO_PKG_VERSION")),
            )
            .header("traceparent", traceparent)
            .body(Full::new(Bytes::from(body)))
        {
            Ok(r) => r,
            Err(e) => return failed(format!("invalid webhook request to {url}: {e}"), false),
        };
        let exchange = async {
            let response = client.request(request).await.map_err(|e| {
                format!(
                    "webhook {url} unreachable: {}; check the rule's `webhook` and that \
                     the receiver is up",
                    error_chain(&e)
                )
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), 1 << 20)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let text =
                String::from_utf8_lossy(&body[..body.len().min(RESPONSE_LIMIT)]).into_owned();
            Ok::<_, String>((status, text))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => failed(
                format!(
                    "webhook {url} did not answer within {}",
                    humantime::format_duration(timeout)
                ),
                true,
            ),
            Ok(Err(e)) => failed(e, false),
            Ok(Ok((status, text))) => WebhookResult {
                status: Some(status.as_u16()),
                error: (!status.is_success())
                    .then(|| format!("webhook {url} answered HTTP {status}")),
                body: text,
                timed_out: false,
            },
        }
    })
}
