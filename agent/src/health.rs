//! Health endpoint for orchestrators: `GET /healthz` (liveness: the collection loop is
//! still producing reports) and `GET /readyz` (readiness: an interval has completed and
//! every enabled probe that applies here is attached). It is fed like an exporter, with
//! each report, so it sees exactly what the exporters see.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};

use crate::{
    export::{Exporter, http},
    report::{ProbeState, Report},
};
use serde::Deserialize;

pub const LIVENESS_PATH: &str = "/healthz";
pub const READINESS_PATH: &str = "/readyz";

/// What the endpoint knows: when the loop last made progress, and why the agent is not
/// ready (`None` once it is).
#[derive(Clone, Debug)]
struct State {
    /// Start, then the time of each report.
    last_progress: Instant,
    reports: u64,
    not_ready: Option<String>,
}

type Shared = Arc<Mutex<State>>;

/// Serves the health paths; dropping it stops the server.
pub struct Health {
    state: Shared,
    _server: http::Server,
}

impl Health {
    /// Binds `listen` on the current tokio runtime. The loop counts as stalled when no
    /// report came for three intervals (plus slack for a slow first collection).
    pub fn start(listen: SocketAddr, interval: Duration) -> io::Result<(Self, SocketAddr)> {
        let state = Arc::new(Mutex::new(State {
            last_progress: Instant::now(),
            reports: 0,
            not_ready: Some(FIRST_INTERVAL.into()),
        }));
        let stall_after = stall_limit(interval);
        let reader = state.clone();
        let handler: http::Handler = Arc::new(move |method, path, _headers| {
            let state = reader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            respond(method, path, &state, Instant::now(), stall_after)
        });
        let (server, bound) = http::serve("health", listen, handler)?;
        Ok((
            Self {
                state,
                _server: server,
            },
            bound,
        ))
    }
}

impl Exporter for Health {
    fn name(&self) -> &'static str {
        "health"
    }

    fn export(&mut self, report: &Report) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.last_progress = Instant::now();
        state.reports += 1;
        state.not_ready = not_ready(report);
        Ok(())
    }
}

const FIRST_INTERVAL: &str = "the first interval has not completed yet";

/// Three intervals without a report, plus 30 s for a collection that is slow once.
fn stall_limit(interval: Duration) -> Duration {
    interval * 3 + Duration::from_secs(30)
}

/// Why a report does not make the agent ready: an enabled probe that applies here is
/// down, or no probe is up at all.
pub fn not_ready(report: &Report) -> Option<String> {
    let down: Vec<String> = report
        .probes
        .iter()
        .filter(|p| p.state == ProbeState::Down)
        .map(|p| match p.errors.first() {
            Some(e) => format!("probe {} is not attached ({e})", p.probe),
            None => format!("probe {} is not attached", p.probe),
        })
        .collect();
    if !down.is_empty() {
        return Some(down.join("; "));
    }
    if !report.probes.iter().any(|p| p.state == ProbeState::Up) {
        return Some("no probe is attached (all disabled or not applicable)".into());
    }
    None
}

fn respond(
    method: &Method,
    path: &str,
    state: &State,
    now: Instant,
    stall_after: Duration,
) -> Response<Full<Bytes>> {
    if path != LIVENESS_PATH && path != READINESS_PATH {
        return http::plain(
            StatusCode::NOT_FOUND,
            "not found: nodepulse serves /healthz and /readyz here\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        return http::method_not_allowed("use GET /healthz or GET /readyz\n");
    }
    let since = now.saturating_duration_since(state.last_progress);
    if since > stall_after {
        return http::plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stalled: no report for {}s (limit {}s)\n",
                since.as_secs(),
                stall_after.as_secs()
            ),
        );
    }
    if path == LIVENESS_PATH {
        return http::plain(StatusCode::OK, "ok\n");
    }
    match &state.not_ready {
        None => http::plain(
            StatusCode::OK,
            format!("ready: {} reports\n", state.reports),
        ),
        Some(why) => http::plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Liveness and readiness over HTTP, for Kubernetes probes and monitoring.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub enabled: bool,
    pub listen: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "127.0.0.1:9465".into(),
        }
    }
}

#[cfg(test)]
mod tests;
