//! OTLP transport: delivers export requests to an OpenTelemetry collector over gRPC or
//! HTTP/protobuf, with one bounded queue and one sender task per signal.
//!
//! The agent runs a current-thread runtime shared with the collection loop, so nothing
//! here blocks it: `try_send_*` only encodes and queues (or drops and counts when the
//! queue is full) and spawned tasks do the network work. A collector that is down costs
//! at most `queue_size` encoded batches per signal, and export resumes by itself when it
//! is back.

use std::{
    collections::BTreeMap,
    fmt,
    io::Write,
    ops::RangeInclusive,
    path::Path,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{BufMut, Bytes};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    HeaderMap, Method, Request, StatusCode, Uri,
    header::{self, HeaderName, HeaderValue},
};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest,
    metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse},
    trace::v1::ExportTraceServiceRequest,
};
use prost::Message;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use thiserror::Error;
use tokio::{
    sync::{Notify, mpsc},
    task::JoinHandle,
    time::Instant,
};
use tonic::{
    Code, Status,
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::{Service, http::uri::PathAndQuery},
    metadata::MetadataMap,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use url::Url;

pub use config::{Compression, OtlpConfig, OtlpProtocol, RetryConfig, Temporality, TlsConfig};

use crate::{
    settings::ConfigError,
    util::{
        error::{error_chain, with_causes},
        random::XorShift,
        tls,
    },
};

const QUEUE_SIZE: RangeInclusive<usize> = 1..=10_000;
const TIMEOUT: RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(300);
/// A zero backoff with full jitter would retry in a busy loop on the agent's only thread.
const MIN_BACKOFF: Duration = Duration::from_millis(1);
/// One warning per signal per minute is enough to notice; the rest are counted.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// How much of a response body is read: error texts and partial-success answers are small.
const RESPONSE_LIMIT: usize = 64 * 1024;
/// How much of an error text is kept for the log and the stats.
const ERROR_TEXT_CHARS: usize = 300;
const USER_AGENT: &str = concat!("nodepulse/", env!("CARGO_PKG_VERSION"));
const PROTOBUF: &str = "application/x-protobuf";
const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// The three OTLP signals; each has its own queue, sender task and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    Metrics,
    Traces,
    Logs,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Metrics, Signal::Traces, Signal::Logs];

    pub fn name(self) -> &'static str {
        match self {
            Signal::Metrics => "metrics",
            Signal::Traces => "traces",
            Signal::Logs => "logs",
        }
    }

    /// The path OTLP/HTTP appends to the endpoint.
    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Metrics => "/v1/metrics",
            Signal::Traces => "/v1/traces",
            Signal::Logs => "/v1/logs",
        }
    }

    /// The collector service method, as in the generated tonic clients.
    fn grpc_path(self) -> &'static str {
        match self {
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Error)]
pub enum TransportError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the OTLP sender must be started inside a tokio runtime")]
    NoRuntime,
    #[error("cannot set up the connection to OTLP endpoint {endpoint}: {problem}")]
    Setup { endpoint: String, problem: String },
}

/// Counters of one signal since start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignalStats {
    /// Batches the collector accepted (possibly in part, see `items_rejected`).
    pub batches_sent: u64,
    /// Batches given up on: a non-retryable answer, or still failing after
    /// `retry.max_elapsed`.
    pub batches_failed: u64,
    /// Batches never queued because the queue was full.
    pub batches_dropped: u64,
    /// Attempts repeated after a retryable failure.
    pub retries: u64,
    /// Data points, spans or log records the collector refused in an accepted batch
    /// (OTLP partial success; these are not retried).
    pub items_rejected: u64,
    /// Request bodies sent, after compression, over every attempt that reached the
    /// collector.
    pub bytes_sent: u64,
    /// Batches queued or being sent now.
    pub pending: usize,
    /// The latest failure, kept after recovery (the counters tell whether it is stale).
    pub last_error: Option<String>,
    /// How long the latest request took, successful or not (backoff waits excluded).
    pub last_export_duration: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    pub metrics: SignalStats,
    pub traces: SignalStats,
    pub logs: SignalStats,
}

impl TransportStats {
    pub fn signal(&self, signal: Signal) -> &SignalStats {
        match signal {
            Signal::Metrics => &self.metrics,
            Signal::Traces => &self.traces,
            Signal::Logs => &self.logs,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The sender
// ---------------------------------------------------------------------------------------

/// Queues export requests and sends them from spawned tasks. Dropping it stops the
/// tasks; call [`OtlpSender::flush`] first to deliver what is queued.
pub struct OtlpSender {
    queues: [Queue; 3],
    /// Signalled each time a sender task finishes a batch, for `flush`.
    progress: Arc<Notify>,
}

struct Queue {
    tx: mpsc::Sender<Bytes>,
    state: Arc<SignalState>,
    task: JoinHandle<()>,
}

/// Counters shared by the queue side and the sender task of one signal.
#[derive(Default)]
struct SignalState {
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
    rejected: AtomicU64,
    bytes_sent: AtomicU64,
    /// Accepted into the queue and not finished yet.
    pending: AtomicUsize,
    last: Mutex<LastExport>,
}

#[derive(Default)]
struct LastExport {
    error: Option<String>,
    duration: Option<Duration>,
}

impl SignalState {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn last(&self) -> std::sync::MutexGuard<'_, LastExport> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn snapshot(&self) -> SignalStats {
        let last = self.last();
        SignalStats {
            batches_sent: self.sent.load(Ordering::Relaxed),
            batches_failed: self.failed.load(Ordering::Relaxed),
            batches_dropped: self.dropped.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            items_rejected: self.rejected.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::SeqCst),
            last_error: last.error.clone(),
            last_export_duration: last.duration,
        }
    }
}

/// Starts one sender task per signal. Must run inside a tokio runtime; the collector
/// need not be up (connections are made lazily, and retried).
pub fn start(config: &OtlpConfig) -> Result<OtlpSender, TransportError> {
    tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
    let checked = check(config)?;
    let links = links(config, checked)?;
    let progress = Arc::new(Notify::new());
    let queues = links.map(|(signal, link)| {
        let state = Arc::new(SignalState::default());
        let (tx, rx) = mpsc::channel(config.queue_size);
        let worker = Worker {
            signal,
            link,
            state: state.clone(),
            timeout: config.timeout,
            retry: config.retry.clone(),
            rng: XorShift::random(),
            warnings: WarnLimiter::default(),
            failing: false,
            progress: progress.clone(),
        };
        let task = tokio::spawn(worker.run(rx));
        Queue { tx, state, task }
    });
    Ok(OtlpSender { queues, progress })
}

impl OtlpSender {
    /// Queues a batch; false when the queue is full (the batch is dropped and counted).
    pub fn try_send_metrics(&self, request: ExportMetricsServiceRequest) -> bool {
        self.try_send(Signal::Metrics, &request)
    }

    /// Queues a batch; false when the queue is full (the batch is dropped and counted).
    pub fn try_send_traces(&self, request: ExportTraceServiceRequest) -> bool {
        self.try_send(Signal::Traces, &request)
    }

    /// Queues a batch; false when the queue is full (the batch is dropped and counted).
    pub fn try_send_logs(&self, request: ExportLogsServiceRequest) -> bool {
        self.try_send(Signal::Logs, &request)
    }

    /// Encodes only once there is room: the queue holds compact protobuf bytes, which
    /// are also what every retry resends.
    fn try_send(&self, signal: Signal, request: &impl Message) -> bool {
        let queue = &self.queues[signal.index()];
        let Ok(permit) = queue.tx.try_reserve() else {
            SignalState::add(&queue.state.dropped, 1);
            return false;
        };
        queue.state.pending.fetch_add(1, Ordering::SeqCst);
        permit.send(Bytes::from(request.encode_to_vec()));
        true
    }

    pub fn stats(&self) -> TransportStats {
        let [metrics, traces, logs] = &self.queues;
        TransportStats {
            metrics: metrics.state.snapshot(),
            traces: traces.state.snapshot(),
            logs: logs.state.snapshot(),
        }
    }

    /// Waits until every queued batch is sent or given up on, or `timeout` passes (for
    /// shutdown). True when nothing is left.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            // Registered before looking, so a batch finishing in between still wakes us.
            let progress = self.progress.notified();
            let mut progress = std::pin::pin!(progress);
            progress.as_mut().enable();
            if self.pending() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, progress).await.is_err() {
                return self.pending() == 0;
            }
        }
    }

    fn pending(&self) -> usize {
        self.queues
            .iter()
            .map(|q| q.state.pending.load(Ordering::SeqCst))
            .sum()
    }
}

impl Drop for OtlpSender {
    fn drop(&mut self) {
        for queue in &self.queues {
            queue.task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sender task and retries
// ---------------------------------------------------------------------------------------

/// What one attempt came to.
#[derive(Debug, PartialEq)]
enum Outcome {
    Sent(Option<Rejected>),
    /// `after`: the delay the collector asked for (Retry-After, RetryInfo).
    Retry {
        error: String,
        after: Option<Duration>,
    },
    Fail(String),
}

/// An OTLP partial success: the batch was accepted, some items were refused.
#[derive(Clone, Debug, Default, PartialEq)]
struct Rejected {
    items: u64,
    message: String,
}

struct Worker {
    signal: Signal,
    link: Link,
    state: Arc<SignalState>,
    timeout: Duration,
    retry: RetryConfig,
    rng: XorShift,
    warnings: WarnLimiter,
    /// Whether the latest batch failed, to log the recovery once.
    failing: bool,
    progress: Arc<Notify>,
}

impl Worker {
    async fn run(mut self, mut queue: mpsc::Receiver<Bytes>) {
        while let Some(batch) = queue.recv().await {
            let body = self.link.prepare(batch);
            self.deliver(body).await;
            self.state.pending.fetch_sub(1, Ordering::SeqCst);
            self.progress.notify_waiters();
        }
    }

    /// Sends one batch, retrying retryable failures until `retry.max_elapsed`. Meanwhile
    /// the queue fills and later batches are dropped: memory stays bounded.
    async fn deliver(&mut self, body: Bytes) {
        let started = Instant::now();
        let mut backoff = Backoff::new(&self.retry, self.rng.next_u64());
        loop {
            match self.attempt(body.clone()).await {
                Outcome::Sent(rejected) => return self.sent(rejected),
                Outcome::Fail(error) => return self.failed(error),
                Outcome::Retry { error, after } => {
                    let wait = after.unwrap_or_else(|| backoff.next());
                    let elapsed = started.elapsed();
                    if elapsed + wait > self.retry.max_elapsed {
                        return self.failed(format!(
                            "{error} (gave up after retrying for {})",
                            humantime::format_duration(round_ms(elapsed))
                        ));
                    }
                    SignalState::add(&self.state.retries, 1);
                    self.state.last().error = Some(error.clone());
                    tracing::debug!(
                        "OTLP {} export failed, retrying in {:?}: {error}",
                        self.signal,
                        wait
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn attempt(&self, body: Bytes) -> Outcome {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, self.link.attempt(body, &self.state))
            .await
            .unwrap_or_else(|_| Outcome::Retry {
                error: format!(
                    "no answer within {} (otlp.timeout)",
                    humantime::format_duration(self.timeout)
                ),
                after: None,
            });
        self.state.last().duration = Some(started.elapsed());
        outcome
    }

    fn sent(&mut self, rejected: Option<Rejected>) {
        SignalState::add(&self.state.sent, 1);
        if std::mem::take(&mut self.failing) {
            tracing::info!("OTLP {} export works again", self.signal);
        }
        if let Some(rejected) = rejected {
            SignalState::add(&self.state.rejected, rejected.items);
            let text = format!(
                "the collector refused {} of the {} in a batch: {}",
                rejected.items, self.signal, rejected.message
            );
            self.warn(&text);
        }
    }

    fn failed(&mut self, error: String) {
        SignalState::add(&self.state.failed, 1);
        self.failing = true;
        self.warn(&format!("OTLP {} batch dropped: {error}", self.signal));
        self.state.last().error = Some(error);
    }

    fn warn(&mut self, text: &str) {
        match self.warnings.allow(Instant::now()) {
            Some(0) => tracing::warn!("{text}"),
            Some(n) => tracing::warn!("{text} ({n} more such warnings in the last minute)"),
            None => tracing::debug!("{text}"),
        }
    }
}

/// At most one warning per `WARN_EVERY`, so a collector that is down for an hour does
/// not fill the log; the suppressed ones are counted into the next.
#[derive(Default)]
struct WarnLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    /// `Some(suppressed since the last one)` when a warning may be logged now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < WARN_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Exponential backoff with full jitter: the n-th wait is uniform in
/// `[0, min(max_backoff, initial_backoff * 2^n)]`, so agents that lost the same
/// collector do not come back in lockstep.
struct Backoff {
    cap: Duration,
    max: Duration,
    rng: XorShift,
}

impl Backoff {
    fn new(retry: &RetryConfig, seed: u64) -> Self {
        let max = retry.max_backoff.max(MIN_BACKOFF);
        Self {
            cap: retry.initial_backoff.clamp(MIN_BACKOFF, max),
            max,
            rng: XorShift::seeded(seed),
        }
    }

    fn next(&mut self) -> Duration {
        let cap = self.cap;
        self.cap = self.cap.saturating_mul(2).min(self.max);
        full_jitter(cap, self.rng.next_u64())
    }
}

/// A uniform pick in `[0, cap]` from 53 random bits.
fn full_jitter(cap: Duration, random: u64) -> Duration {
    let unit = (random >> 11) as f64 / (1u64 << 53) as f64;
    cap.mul_f64(unit)
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// Retryable gRPC codes, per the OTLP specification's table (RESOURCE_EXHAUSTED is
/// retried whether or not the collector sent RetryInfo; `max_elapsed` bounds it).
fn grpc_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// Retryable HTTP answers, per the OTLP specification; every other failure is final.
fn http_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

// ---------------------------------------------------------------------------------------
// Protocols
// ---------------------------------------------------------------------------------------

/// How one signal's batches reach the collector.
enum Link {
    Grpc(Box<GrpcLink>),
    /// Boxed: the hyper client is several times the size of a tonic channel.
    Http(Box<HttpLink>),
}

impl Link {
    /// Once per batch, not per attempt: HTTP bodies are compressed here (tonic
    /// compresses gRPC messages itself).
    fn prepare(&self, batch: Bytes) -> Bytes {
        match self {
            Link::Http(http) if http.gzip => gzip(&batch),
            _ => batch,
        }
    }

    async fn attempt(&self, body: Bytes, state: &Arc<SignalState>) -> Outcome {
        match self {
            Link::Grpc(grpc) => grpc.attempt(body, state).await,
            Link::Http(http) => http.attempt(body, state).await,
        }
    }
}

fn links(config: &OtlpConfig, checked: Checked) -> Result<[(Signal, Link); 3], TransportError> {
    let gzip = config.compression == Compression::Gzip;
    let setup_error = |problem: String| TransportError::Setup {
        endpoint: config.endpoint.clone(),
        problem,
    };
    match config.protocol {
        OtlpProtocol::Grpc => {
            let endpoint = grpc_endpoint(config, &checked.endpoint, checked.tls)
                .map_err(|e| setup_error(error_chain(&*e)))?;
            let metadata = MetadataMap::from_headers(checked.headers);
            Ok(Signal::ALL.map(|signal| {
                let link = GrpcLink {
                    channel: std::sync::Mutex::new(endpoint.connect_lazy()),
                    endpoint: endpoint.clone(),
                    path: PathAndQuery::from_static(signal.grpc_path()),
                    gzip,
                    metadata: metadata.clone(),
                    timeout: config.timeout,
                };
                (signal, Link::Grpc(Box::new(link)))
            }))
        }
        OtlpProtocol::HttpProtobuf => {
            let client =
                http_client(config, &checked.endpoint, checked.tls).map_err(setup_error)?;
            let headers = http_headers(checked.headers, gzip);
            let link = |signal| -> Result<(Signal, Link), ConfigError> {
                let url = signal_url(&checked.endpoint, signal);
                let uri = url.as_str().parse::<Uri>().map_err(|e| {
                    invalid(
                        "otlp.endpoint",
                        format!("\"{url}\" is not a usable URI ({e})"),
                    )
                })?;
                let link = HttpLink {
                    client: client.clone(),
                    uri,
                    headers: headers.clone(),
                    gzip,
                };
                Ok((signal, Link::Http(Box::new(link))))
            };
            let [metrics, traces, logs] = Signal::ALL.map(link);
            Ok([metrics?, traces?, logs?])
        }
    }
}

/// `<endpoint>/v1/<signal>`, keeping a base path (`https://gw/otlp` →
/// `https://gw/otlp/v1/metrics`) with or without a trailing slash.
fn signal_url(endpoint: &Url, signal: Signal) -> Url {
    let mut url = endpoint.clone();
    let base = endpoint.path().trim_end_matches('/');
    url.set_path(&format!("{base}{}", signal.http_path()));
    url
}

fn gzip(data: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::default(),
    );
    // Writing into a Vec cannot fail.
    encoder
        .write_all(data)
        .and_then(|()| encoder.finish())
        .map(Bytes::from)
        .expect("gzip into memory")
}

fn truncate(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(ERROR_TEXT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

pub mod config;
mod grpc;
mod http;
mod validate;

use grpc::*;
use http::*;
pub use validate::validate;
use validate::*;

#[cfg(test)]
mod tests;

/// Valid answers a collector sends: a partial success, an error status with a RetryInfo
/// (gRPC details, and the body of an OTLP/HTTP error), a proxy's text and HTML.
#[cfg(any(test, feature = "fuzzing"))]
pub fn answer_seeds() -> Vec<Vec<u8>> {
    vec![
        partial_success(3, "too old").encode_to_vec(),
        retry_info_status(Duration::from_millis(2_500)).to_vec(),
        b"120".to_vec(),
        b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec(),
    ]
}

/// Every parser of a collector's answer, fed `bytes` as an HTTP body (of a success and
/// of each kind of error, protobuf or not), a Retry-After value, a gRPC status's
/// message and details, and a gRPC export response. The errors they make, for the
/// fuzz tests to judge (a success adds none).
#[cfg(any(test, feature = "fuzzing"))]
pub fn answer_errors(bytes: &[u8]) -> Vec<String> {
    let uri: Uri = "http://collector:4318/v1/metrics".parse().unwrap();
    let mut outcomes = Vec::new();
    for status in [200, 400, 429, 503] {
        let status = StatusCode::from_u16(status).unwrap();
        for protobuf in [true, false] {
            outcomes.push(http_outcome(status, None, protobuf, bytes, &uri));
        }
    }
    if let Ok(value) = hyper::header::HeaderValue::from_bytes(bytes) {
        let mut headers = HeaderMap::new();
        headers.insert(hyper::header::RETRY_AFTER, value);
        let _ = retry_after(&headers);
    }
    let message = String::from_utf8_lossy(bytes).into_owned();
    let status = Status::with_details(Code::Unavailable, message, Bytes::copy_from_slice(bytes));
    outcomes.push(grpc_outcome(&status));
    if let Ok(response) = ExportMetricsServiceResponse::decode(bytes) {
        outcomes.push(Outcome::Sent(rejected(response)));
    }
    outcomes
        .into_iter()
        .filter_map(|o| match o {
            Outcome::Sent(Some(r)) => Some(format!("{} rejected: {}", r.items, r.message)),
            Outcome::Sent(None) => None,
            Outcome::Retry { error, .. } | Outcome::Fail(error) => Some(error),
        })
        .collect()
}

/// A partial success rejecting `items` (a collector's answer).
#[cfg(any(test, feature = "fuzzing"))]
pub(super) fn partial_success(items: i64, message: &str) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: Some(
            opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsPartialSuccess {
                rejected_data_points: items,
                error_message: message.into(),
            },
        ),
    }
}

/// A gRPC status asking to retry after `delay`, encoded.
#[cfg(any(test, feature = "fuzzing"))]
pub(super) fn retry_info_status(delay: Duration) -> Bytes {
    let info = RetryInfo {
        retry_delay: Some(ProtoDuration {
            seconds: delay.as_secs() as i64,
            nanos: delay.subsec_nanos() as i32,
        }),
    };
    let status = RpcStatus {
        code: Code::Unavailable as i32,
        message: "busy".into(),
        details: vec![ProtoAny {
            type_url: RETRY_INFO_TYPE.into(),
            value: info.encode_to_vec().into(),
        }],
    };
    status.encode_to_vec().into()
}
