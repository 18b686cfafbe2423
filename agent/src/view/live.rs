//! The live page: with `[view]` enabled the agent keeps its last `minutes` of reports
//! (as the recording's JSON lines, so the page is built by the same reader) and serves
//! `GET /view` (the page, which polls) and `GET /view.json` (its data) on a listener
//! of its own, with the Prometheus endpoint's rules and limits (export/http). Its
//! capacity part is learned from the kept reports only (knees and trends of the last
//! `minutes`); the agent's own headroom and forecasts, learned since it started, are
//! its capacity.* metrics.

use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Deserialize;

use super::{DEFAULT_COLUMNS, capacity, data, html};
use crate::{
    capacity::CapacityConfig,
    export::{Exporter, Prepared, http},
    report::Report,
};

pub const PAGE_PATH: &str = "/view";
pub const DATA_PATH: &str = "/view.json";

/// What `[view]` configures.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ViewConfig {
    pub enabled: bool,
    pub listen: String,
    /// Reports kept, as minutes of the agent's interval.
    pub minutes: u32,
    /// Memory bound of what is kept (the reports' JSON), MiB; the oldest go first.
    pub max_mib: u32,
}

impl Default for ViewConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "127.0.0.1:9466".into(),
            minutes: 60,
            max_mib: 64,
        }
    }
}

/// The last reports, as JSON lines, with their time (unix ns).
#[derive(Default)]
struct Recent {
    lines: VecDeque<(u64, Arc<str>)>,
    bytes: usize,
}

type Shared = Arc<Mutex<Recent>>;

/// Keeps the recent reports and serves them; dropping it stops the server.
pub struct LiveView {
    recent: Shared,
    keep_ns: u64,
    max_bytes: usize,
    _server: http::Server,
    prepared: Prepared<Arc<str>>,
}

impl LiveView {
    /// Binds `listen` on the current tokio runtime.
    /// `capacity`: the agent's `[capacity]`, when enabled.
    pub fn start(
        config: &ViewConfig,
        capacity: Option<CapacityConfig>,
        listen: SocketAddr,
    ) -> io::Result<(Self, SocketAddr)> {
        let recent: Shared = Arc::default();
        let reader = recent.clone();
        let handler: http::Handler = Arc::new(move |method, path, _headers| {
            if path != PAGE_PATH && path != DATA_PATH {
                return http::plain(
                    StatusCode::NOT_FOUND,
                    "not found: nodepulse serves /view and /view.json here\n",
                );
            }
            if method != Method::GET && method != Method::HEAD {
                return http::method_not_allowed("use GET /view or GET /view.json\n");
            }
            // Copied under the lock (reference counts only), read without it.
            let lines: Vec<Arc<str>> = reader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .lines
                .iter()
                .map(|(_, l)| l.clone())
                .collect();
            respond(path, &lines, capacity.as_ref())
        });
        let (server, bound) = http::serve("view", listen, handler)?;
        Ok((
            Self {
                recent,
                keep_ns: u64::from(config.minutes) * 60_000_000_000,
                max_bytes: config.max_mib as usize * (1 << 20),
                _server: server,
                prepared: Prepared::default(),
            },
            bound,
        ))
    }
}

fn respond(
    path: &str,
    lines: &[Arc<str>],
    capacity: Option<&CapacityConfig>,
) -> hyper::Response<http_body_util::Full<Bytes>> {
    if lines.is_empty() {
        return http::plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "no report yet: the first interval has not completed\n",
        );
    }
    let text = lines.join("\n");
    let options = data::Options {
        max_columns: DEFAULT_COLUMNS,
        replayed: None,
    };
    let read = data::read("live", text.as_bytes(), lines.len(), options)
        .map_err(|e| e.to_string())
        .and_then(|mut v| {
            if let Some(config) = capacity {
                v.capacity = capacity::read("live", text.as_bytes(), config, 1.0)
                    .map_err(|e| e.to_string())?;
            }
            Ok(v)
        });
    let view = match read {
        Ok(v) => v,
        Err(e) => {
            return http::plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the agent's own reports: {e}\n"),
            );
        }
    };
    if path == DATA_PATH {
        let json = serde_json::to_vec(&view).expect("the view serializes");
        return http::response(StatusCode::OK, "application/json", json.into());
    }
    http::response(
        StatusCode::OK,
        "text/html; charset=utf-8",
        html::page(&view, Some(DATA_PATH)).into(),
    )
}

impl Exporter for LiveView {
    fn name(&self) -> &'static str {
        "view"
    }

    fn prepare(&mut self, report: &Report) {
        if let Ok(line) = serde_json::to_string(report) {
            self.prepared.put(report, line.into());
        }
    }

    fn export(&mut self, report: &Report) -> io::Result<()> {
        let line: Arc<str> = match self.prepared.take(report) {
            Some(line) => line,
            None => serde_json::to_string(report)?.into(),
        };
        let now = crate::detect::replay::parse_time(&report.time).unwrap_or(0);
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.bytes += line.len();
        recent.lines.push_back((now, line));
        while let Some((time, line)) = recent.lines.front() {
            let old = time.saturating_add(self.keep_ns) < now;
            if !(old || recent.bytes > self.max_bytes) || recent.lines.len() == 1 {
                break;
            }
            recent.bytes -= line.len();
            recent.lines.pop_front();
        }
        Ok(())
    }
}
