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
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::{BufMut, Bytes};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    HeaderMap, Method, Request, StatusCode, Uri,
    header::{self, HeaderName, HeaderValue},
};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
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
    ClientConfig, ConfigBuilder, RootCertStore, WantsVerifier,
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

use crate::config::{Compression, ConfigError, OtlpConfig, OtlpProtocol, RetryConfig, TlsConfig};

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
// Configuration checks
// ---------------------------------------------------------------------------------------

/// Checks the `[otlp]` table; every problem names its key and says what to do.
pub fn validate(config: &OtlpConfig) -> Result<(), ConfigError> {
    check(config).map(drop)
}

/// What the checks produced, so `start` reads and parses nothing twice.
struct Checked {
    endpoint: Url,
    headers: HeaderMap,
    tls: TlsFiles,
}

fn check(config: &OtlpConfig) -> Result<Checked, ConfigError> {
    let endpoint = check_endpoint(&config.endpoint, config.protocol)?;
    check_limits(config)?;
    let headers = check_headers(&config.headers, config.protocol)?;
    let tls = check_tls(&config.tls, &config.endpoint, &endpoint)?;
    Ok(Checked {
        endpoint,
        headers,
        tls,
    })
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

fn check_endpoint(text: &str, protocol: OtlpProtocol) -> Result<Url, ConfigError> {
    let example = match protocol {
        OtlpProtocol::Grpc => "http://collector:4317",
        OtlpProtocol::HttpProtobuf => "http://collector:4318",
    };
    let bad = |problem: String| {
        invalid(
            "otlp.endpoint",
            format!("{problem}; write it like \"{example}\""),
        )
    };
    let url = Url::parse(text).map_err(|e| bad(format!("\"{text}\" is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "\"{text}\" must start with http:// or https:// (https turns TLS on)"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad(format!("\"{text}\" has no host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(format!("\"{text}\" must not have a query or fragment")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "otlp.endpoint",
            format!(
                "\"{text}\" has credentials, which are not sent from the URL; put them in \
                 otlp.headers (e.g. authorization = \"Basic ...\")"
            ),
        ));
    }
    check_endpoint_path(text, &url, protocol)?;
    Ok(url)
}

/// gRPC has no base path, and OTLP/HTTP appends the signal path itself: both mistakes
/// would otherwise show up only as 404s or UNIMPLEMENTED at run time.
fn check_endpoint_path(text: &str, url: &Url, protocol: OtlpProtocol) -> Result<(), ConfigError> {
    let path = url.path().trim_end_matches('/');
    match protocol {
        OtlpProtocol::Grpc if !path.is_empty() => Err(invalid(
            "otlp.endpoint",
            format!(
                "\"{text}\" has a path ({path}), which gRPC does not use; remove it, or set \
                 otlp.protocol = \"http/protobuf\" for an OTLP/HTTP endpoint"
            ),
        )),
        OtlpProtocol::HttpProtobuf => {
            match Signal::ALL.iter().find(|s| path.ends_with(s.http_path())) {
                Some(signal) => Err(invalid(
                    "otlp.endpoint",
                    format!(
                        "\"{text}\" ends in {}, but /v1/metrics, /v1/traces and /v1/logs are \
                     appended; give the base URL without it",
                        signal.http_path()
                    ),
                )),
                None => Ok(()),
            }
        }
        OtlpProtocol::Grpc => Ok(()),
    }
}

fn check_limits(config: &OtlpConfig) -> Result<(), ConfigError> {
    if !QUEUE_SIZE.contains(&config.queue_size) {
        return Err(invalid(
            "otlp.queue_size",
            format!(
                "must be between 1 and 10000 (batches waiting per signal), got {}",
                config.queue_size
            ),
        ));
    }
    if !TIMEOUT.contains(&config.timeout) {
        return Err(invalid(
            "otlp.timeout",
            format!(
                "must be between 100ms and 5m, got {}",
                humantime::format_duration(config.timeout)
            ),
        ));
    }
    let retry = &config.retry;
    if retry.initial_backoff < MIN_BACKOFF {
        return Err(invalid(
            "otlp.retry.initial_backoff",
            format!(
                "must be at least 1ms, got {}",
                humantime::format_duration(retry.initial_backoff)
            ),
        ));
    }
    if retry.max_backoff < retry.initial_backoff {
        return Err(invalid(
            "otlp.retry.max_backoff",
            format!(
                "must be at least otlp.retry.initial_backoff ({}), got {}",
                humantime::format_duration(retry.initial_backoff),
                humantime::format_duration(retry.max_backoff)
            ),
        ));
    }
    Ok(())
}

fn check_headers(
    headers: &BTreeMap<String, String>,
    protocol: OtlpProtocol,
) -> Result<HeaderMap, ConfigError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let bad = |problem: String| invalid("otlp.headers", problem);
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            bad(format!(
                "\"{name}\" is not a valid header name; use ASCII letters, digits and '-', \
                 like \"x-api-key\""
            ))
        })?;
        if is_reserved(&header) {
            return Err(bad(format!(
                "\"{name}\" is set by the OTLP transport itself; remove it"
            )));
        }
        if protocol == OtlpProtocol::Grpc && header.as_str().ends_with("-bin") {
            return Err(bad(format!(
                "\"{name}\" would be binary gRPC metadata (names ending in -bin), which is not \
                 supported; rename it"
            )));
        }
        // gRPC's ASCII metadata is stricter than HTTP (no tab, no obs-text). The value
        // may be a secret: the message names the header, not the value.
        let printable = value.bytes().all(|b| (b' '..=b'~').contains(&b));
        let value = HeaderValue::from_str(value).ok().filter(|_| printable);
        let Some(value) = value else {
            return Err(bad(format!(
                "the value of \"{name}\" must be printable ASCII (no line breaks, control or \
                 non-ASCII characters)"
            )));
        };
        map.insert(header, value);
    }
    Ok(map)
}

fn is_reserved(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "content-type"
            | "content-encoding"
            | "content-length"
            | "transfer-encoding"
            | "host"
            | "te"
    ) || name.starts_with("grpc-")
}

/// CA and client certificate, read and parsed once.
#[derive(Default)]
struct TlsFiles {
    ca: Option<CaFile>,
    identity: Option<ClientIdentity>,
}

struct CaFile {
    /// For tonic, which takes PEM.
    pem: Vec<u8>,
    /// For the rustls connector of the HTTP path.
    roots: RootCertStore,
}

struct ClientIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn check_tls(tls: &TlsConfig, text: &str, endpoint: &Url) -> Result<TlsFiles, ConfigError> {
    let is_set = |path: &Path| !path.as_os_str().is_empty();
    let files = [
        ("otlp.tls.ca_file", &tls.ca_file),
        ("otlp.tls.cert_file", &tls.cert_file),
        ("otlp.tls.key_file", &tls.key_file),
    ];
    for (key, path) in files {
        if is_set(path) && endpoint.scheme() != "https" {
            return Err(invalid(
                key,
                format!(
                    "is set but otlp.endpoint \"{text}\" is plain http, so no TLS would be used; \
                     use an https:// endpoint, or remove the setting"
                ),
            ));
        }
    }
    let identity = match (is_set(&tls.cert_file), is_set(&tls.key_file)) {
        (true, true) => Some(read_identity(&tls.cert_file, &tls.key_file)?),
        (false, false) => None,
        (true, false) => {
            return Err(invalid(
                "otlp.tls.key_file",
                "must be set when otlp.tls.cert_file is: a client certificate needs its private \
                 key (set both, or neither)",
            ));
        }
        (false, true) => {
            return Err(invalid(
                "otlp.tls.cert_file",
                "must be set when otlp.tls.key_file is: a private key needs its client \
                 certificate (set both, or neither)",
            ));
        }
    };
    let ca = match is_set(&tls.ca_file) {
        true => Some(read_ca(&tls.ca_file)?),
        false => None,
    };
    Ok(TlsFiles { ca, identity })
}

fn read_file(key: &'static str, path: &Path, what: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| {
        invalid(
            key,
            format!(
                "cannot read \"{}\" ({e}); it should be {what}",
                path.display()
            ),
        )
    })
}

fn read_certificates(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            invalid(
                key,
                format!("\"{}\" is not valid PEM ({e})", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!(
                "\"{}\" contains no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block)",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

fn read_ca(path: &Path) -> Result<CaFile, ConfigError> {
    const KEY: &str = "otlp.tls.ca_file";
    let pem = read_file(KEY, path, "a PEM bundle of CA certificates")?;
    let mut roots = RootCertStore::empty();
    let (valid, _) = roots.add_parsable_certificates(read_certificates(KEY, path, &pem)?);
    if valid == 0 {
        return Err(invalid(
            KEY,
            format!(
                "\"{}\" holds PEM blocks but no valid X.509 CA certificate",
                path.display()
            ),
        ));
    }
    Ok(CaFile { pem, roots })
}

fn read_identity(cert_path: &Path, key_path: &Path) -> Result<ClientIdentity, ConfigError> {
    const CERT: &str = "otlp.tls.cert_file";
    const KEY: &str = "otlp.tls.key_file";
    let cert_pem = read_file(CERT, cert_path, "a PEM client certificate")?;
    let certs = read_certificates(CERT, cert_path, &cert_pem)?;
    let key_pem = read_file(KEY, key_path, "a PEM private key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        invalid(
            KEY,
            format!(
                "\"{}\" contains no usable PEM private key ({e}); expected a \"-----BEGIN \
                 PRIVATE KEY-----\" (or RSA/EC PRIVATE KEY) block",
                key_path.display()
            ),
        )
    })?;
    // rustls checks that the key parses and belongs to the certificate.
    rustls_builder()
        .with_root_certificates(RootCertStore::empty())
        .with_client_auth_cert(certs.clone(), key.clone_key())
        .map_err(|e| {
            invalid(
                KEY,
                format!(
                    "\"{}\" does not fit the certificate in \"{}\" ({e})",
                    key_path.display(),
                    cert_path.display()
                ),
            )
        })?;
    Ok(ClientIdentity {
        cert_pem,
        key_pem,
        certs,
        key,
    })
}

/// Explicitly ring, the provider tonic uses too, so no process-wide default is needed.
fn rustls_builder() -> ConfigBuilder<ClientConfig, WantsVerifier> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls's default protocol versions")
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
            rng: XorShift::from_clock(signal.index() as u64),
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
        let mut backoff = Backoff::new(&self.retry, self.rng.next());
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
            rng: XorShift(seed | 1),
        }
    }

    fn next(&mut self) -> Duration {
        let cap = self.cap;
        self.cap = self.cap.saturating_mul(2).min(self.max);
        full_jitter(cap, self.rng.next())
    }
}

/// A uniform pick in `[0, cap]` from 53 random bits.
fn full_jitter(cap: Duration, random: u64) -> Duration {
    let unit = (random >> 11) as f64 / (1u64 << 53) as f64;
    cap.mul_f64(unit)
}

/// xorshift64*: plenty for spreading retries, without another dependency.
struct XorShift(u64);

impl XorShift {
    fn from_clock(salt: u64) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let salt = (salt << 32 | u64::from(std::process::id())).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self((nanos ^ salt) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
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

/// "outer: cause: root cause", since transport errors say little on their own ("client
/// error (Connect)").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    with_causes(error.to_string(), error.source())
}

/// Appends each cause that the text does not already say (wrappers repeat their
/// source's message).
fn with_causes(mut text: String, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

fn truncate(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(ERROR_TEXT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

// --- gRPC ------------------------------------------------------------------------------

struct GrpcLink {
    /// The channel in use, replaced by a fresh one after a connection-level failure:
    /// a channel whose connection failed can stay failed (its buffer worker keeps the
    /// first error), so a collector that comes back would never be reached again.
    channel: std::sync::Mutex<Channel>,
    endpoint: Endpoint,
    path: PathAndQuery,
    gzip: bool,
    metadata: MetadataMap,
    timeout: Duration,
}

impl GrpcLink {
    async fn attempt(&self, body: Bytes, state: &Arc<SignalState>) -> Outcome {
        let (outcome, connection_failed) = self.try_once(body, state).await;
        if connection_failed {
            *self.channel.lock().unwrap_or_else(|e| e.into_inner()) = self.endpoint.connect_lazy();
        }
        outcome
    }

    /// One attempt, and whether it failed at the connection level (not an answer from
    /// the collector).
    async fn try_once(&self, body: Bytes, state: &Arc<SignalState>) -> (Outcome, bool) {
        let inner = self
            .channel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let channel = CountingChannel {
            inner,
            state: state.clone(),
        };
        let mut grpc = tonic::client::Grpc::new(channel);
        if self.gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        if let Err(e) = grpc.ready().await {
            let outcome = Outcome::Retry {
                error: format!("gRPC channel not ready: {}", error_chain(&e)),
                after: None,
            };
            return (outcome, true);
        }
        let mut request = tonic::Request::new(body);
        *request.metadata_mut() = self.metadata.clone();
        // Tells the collector the deadline too (grpc-timeout).
        request.set_timeout(self.timeout);
        match grpc.unary(request, self.path.clone(), EncodedCodec).await {
            Ok(response) => (Outcome::Sent(response.into_inner()), false),
            Err(status) => {
                let local = std::error::Error::source(&status).is_some();
                (grpc_outcome(&status), local)
            }
        }
    }
}

/// A status that tonic made from a local transport error carries that error as its
/// source (a reset connection, a failed TLS handshake, often as UNKNOWN): those are
/// connection errors and retried, as on the HTTP path. Statuses the collector sent have
/// no source and follow the code table.
fn grpc_outcome(status: &Status) -> Outcome {
    let source = std::error::Error::source(status);
    let text = format!("gRPC {:?}: {}", status.code(), status.message());
    let error = truncate(&with_causes(text, source));
    if grpc_retryable(status.code()) || source.is_some() {
        Outcome::Retry {
            error,
            after: retry_info_delay(status.details()),
        }
    } else {
        Outcome::Fail(error)
    }
}

fn grpc_endpoint(
    config: &OtlpConfig,
    url: &Url,
    tls: TlsFiles,
) -> Result<Endpoint, Box<dyn std::error::Error>> {
    let mut endpoint = Endpoint::from_shared(url.as_str().to_owned())?
        .user_agent(USER_AGENT)?
        .connect_timeout(config.timeout)
        .tcp_nodelay(true);
    if url.scheme() == "https" {
        endpoint = endpoint.tls_config(grpc_tls(tls))?;
    }
    Ok(endpoint)
}

fn grpc_tls(tls: TlsFiles) -> ClientTlsConfig {
    let config = ClientTlsConfig::new();
    let config = match tls.ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(ca.pem)),
        None => config.with_native_roots(),
    };
    match tls.identity {
        Some(id) => config.identity(Identity::from_pem(id.cert_pem, id.key_pem)),
        None => config,
    }
}

type GrpcRequest = hyper::Request<tonic::body::Body>;

/// A `Channel` that counts the request body bytes it sends: the gRPC frames after
/// compression, i.e. what goes on the wire.
#[derive(Clone)]
struct CountingChannel {
    inner: Channel,
    state: Arc<SignalState>,
}

impl Service<GrpcRequest> for CountingChannel {
    type Response = <Channel as Service<GrpcRequest>>::Response;
    type Error = <Channel as Service<GrpcRequest>>::Error;
    type Future = <Channel as Service<GrpcRequest>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: GrpcRequest) -> Self::Future {
        let state = self.state.clone();
        let request = request.map(|body| {
            tonic::body::Body::new(body.map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    SignalState::add(&state.bytes_sent, data.len() as u64);
                }
                frame
            }))
        });
        self.inner.call(request)
    }
}

/// Passes the already-encoded request through, so a batch is encoded once when queued
/// and resent as is on retries. Every signal's response has the same wire shape
/// (`partial_success { rejected count = 1; error_message = 2 }`), so one decoder serves
/// all three.
#[derive(Clone, Copy)]
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = Option<Rejected>;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        *self
    }

    fn decoder(&mut self) -> Self {
        *self
    }
}

impl Encoder for EncodedCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for EncodedCodec {
    type Item = Option<Rejected>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let response = ExportMetricsServiceResponse::decode(src)
            .map_err(|e| Status::internal(format!("cannot decode the export response: {e}")))?;
        Ok(Some(rejected(response)))
    }
}

fn rejected(response: ExportMetricsServiceResponse) -> Option<Rejected> {
    let partial = response.partial_success?;
    let refused = partial.rejected_data_points > 0 || !partial.error_message.is_empty();
    refused.then(|| Rejected {
        items: u64::try_from(partial.rejected_data_points).unwrap_or(0),
        message: truncate(&partial.error_message),
    })
}

/// `google.rpc.Status`: in `grpc-status-details-bin`, and the body of OTLP/HTTP errors.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
}

/// `google.rpc.RetryInfo`: how long a throttling collector wants us to wait.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

fn retry_info_delay(details: &[u8]) -> Option<Duration> {
    let status = RpcStatus::decode(details).ok()?;
    let info = status
        .details
        .iter()
        .find(|d| d.type_url == RETRY_INFO_TYPE)?;
    let delay = RetryInfo::decode(info.value.clone()).ok()?.retry_delay?;
    let seconds = u64::try_from(delay.seconds).ok()?;
    let nanos = u32::try_from(delay.nanos).ok()?.min(999_999_999);
    Some(Duration::new(seconds, nanos))
}

// --- HTTP/protobuf ---------------------------------------------------------------------

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

struct HttpLink {
    client: HttpsClient,
    uri: Uri,
    headers: HeaderMap,
    gzip: bool,
}

impl HttpLink {
    async fn attempt(&self, body: Bytes, state: &SignalState) -> Outcome {
        let size = body.len() as u64;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(e) => {
                return Outcome::Retry {
                    error: format!("POST {}: {}", self.uri, error_chain(&e)),
                    after: None,
                };
            }
        };
        SignalState::add(&state.bytes_sent, size);
        let status = response.status();
        let after = retry_after(response.headers());
        let protobuf = is_protobuf(response.headers());
        // Read even on success, so the connection goes back to the pool.
        let body = Limited::new(response.into_body(), RESPONSE_LIMIT)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        http_outcome(status, after, protobuf, &body, &self.uri)
    }
}

fn http_outcome(
    status: StatusCode,
    after: Option<Duration>,
    protobuf: bool,
    body: &[u8],
    uri: &Uri,
) -> Outcome {
    if status.is_success() {
        let response = protobuf
            .then(|| ExportMetricsServiceResponse::decode(body).ok())
            .flatten();
        return Outcome::Sent(response.and_then(rejected));
    }
    let error = format!(
        "HTTP {status} from {uri}: {}",
        http_error_text(body, protobuf)
    );
    if http_retryable(status) {
        Outcome::Retry { error, after }
    } else {
        Outcome::Fail(error)
    }
}

/// OTLP/HTTP errors carry a protobuf `google.rpc.Status`; proxies send text or HTML.
fn http_error_text(body: &[u8], protobuf: bool) -> String {
    let text = match protobuf.then(|| RpcStatus::decode(body).ok()).flatten() {
        Some(status) => status.message,
        None => String::from_utf8_lossy(body).into_owned(),
    };
    match truncate(&text) {
        text if text.is_empty() => "(no response text)".to_owned(),
        text => text,
    }
}

/// Retry-After in seconds (the HTTP-date form is not used by collectors).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

fn is_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROTOBUF))
}

fn http_headers(mut headers: HeaderMap, gzip: bool) -> HeaderMap {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    headers
        .entry(header::USER_AGENT)
        .or_insert(HeaderValue::from_static(USER_AGENT));
    headers
}

fn http_client(config: &OtlpConfig, url: &Url, tls: TlsFiles) -> Result<HttpsClient, String> {
    let tls = rustls_client(tls, url.scheme() == "https")?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.timeout));
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build(connector))
}

/// For plain http the connector still wants a TLS config; it gets an unused empty one
/// rather than loading the system roots for nothing.
fn rustls_client(tls: TlsFiles, https: bool) -> Result<ClientConfig, String> {
    let builder = rustls_builder();
    let builder = match tls.ca {
        Some(ca) => builder.with_root_certificates(ca.roots),
        None if https => builder.with_native_roots().map_err(|e| {
            format!(
                "cannot load the system CA certificates ({e}); install them, or set \
                 otlp.tls.ca_file"
            )
        })?,
        None => builder.with_root_certificates(RootCertStore::empty()),
    };
    match tls.identity {
        Some(id) => builder
            .with_client_auth_cert(id.certs, id.key)
            .map_err(|e| format!("client certificate: {e}")),
        None => Ok(builder.with_no_client_auth()),
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, io::Read, net::SocketAddr, sync::atomic::AtomicUsize};

    use opentelemetry_proto::tonic::collector::{
        metrics::v1::{
            ExportMetricsPartialSuccess,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    };
    use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;
    use tonic::transport::{Server, ServerTlsConfig, server::TcpIncoming};

    use super::*;

    /// A test CA and a certificate it signed for localhost and 127.0.0.1 (serverAuth and
    /// clientAuth), valid 2000–2100, made with openssl for these tests.
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBazCCARGgAwIBAgIBATAKBggqhkjOPQQDAjAcMRowGAYDVQQDDBFub2RlcHVs
c2UgdGVzdCBDQTAgFw0wMDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAwMDAwMFowHDEa
MBgGA1UEAwwRbm9kZXB1bHNlIHRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMB
BwNCAARLwl+YVeRXF7S9vhO4ZXfPwswWJmiGJ50xTSUsVbfvHW0vohtMTSgkJKM/
ssWZ48hU40OCj+kqTeIIhTjE3bLUo0IwQDAPBgNVHRMBAf8EBTADAQH/MA4GA1Ud
DwEB/wQEAwIBBjAdBgNVHQ4EFgQUqOwfQAaVLcrwa/xfbctt2FKq/pcwCgYIKoZI
zj0EAwIDSAAwRQIhALZdJQqn+MYzAkDjOyKC4jXXqW/TiMJSLWLKkk/IPRSzAiAr
hqK9vTObNqugHv8LZlr3TrCN6ChlpXLGGsbGAYtYmQ==
-----END CERTIFICATE-----
";
    const LEAF_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBvjCCAWSgAwIBAgIBAjAKBggqhkjOPQQDAjAcMRowGAYDVQQDDBFub2RlcHVs
c2UgdGVzdCBDQTAgFw0wMDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAwMDAwMFowFDES
MBAGA1UEAwwJbG9jYWxob3N0MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEvFf9
Pqy+Okau/+7Vo/nqclyjoGnudISVkiuR7N78MlLji6d0OHj+TkOy+UZnRlP8M4nn
rAFyuS6ZKYAdGNcZwaOBnDCBmTAaBgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEw
DAYDVR0TAQH/BAIwADAOBgNVHQ8BAf8EBAMCB4AwHQYDVR0lBBYwFAYIKwYBBQUH
AwEGCCsGAQUFBwMCMB8GA1UdIwQYMBaAFKjsH0AGlS3K8Gv8X23LbdhSqv6XMB0G
A1UdDgQWBBSkx+Tq4pVERRbBPVO/A3yZ0LVvgTAKBggqhkjOPQQDAgNIADBFAiEA
jnKWJTmEOLlVqSsxhq1siGnv2APimUYta05XZ+1hgjYCIFhrIJhoOZFiVXR8O+jm
FLlZ486ZS79sgJk6l526bbiz
-----END CERTIFICATE-----
";
    const LEAF_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgeTXXcGeFZ/SzGBPE
lZ1zfMpl2WGQtNz/hvcQ0PKyyPGhRANCAAS8V/0+rL46Rq7/7tWj+epyXKOgae50
hJWSK5Hs3vwyUuOLp3Q4eP5OQ7L5RmdGU/wzieesAXK5LpkpgB0Y1xnB
-----END PRIVATE KEY-----
";

    fn otlp(endpoint: &str, protocol: OtlpProtocol) -> OtlpConfig {
        OtlpConfig {
            enabled: true,
            endpoint: endpoint.into(),
            protocol,
            ..OtlpConfig::default()
        }
    }

    /// Quick retries that give up after `max_elapsed`.
    fn fast(mut config: OtlpConfig, max_elapsed: Duration) -> OtlpConfig {
        config.timeout = Duration::from_secs(5);
        config.retry = RetryConfig {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(20),
            max_elapsed,
        };
        config
    }

    fn problem(config: &OtlpConfig) -> String {
        validate(config).unwrap_err().to_string()
    }

    /// Writes PEM files into a temporary directory and points the config at them.
    fn with_tls(
        mut config: OtlpConfig,
        files: [(&str, Option<&str>); 3],
    ) -> (OtlpConfig, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = files.map(|(name, content)| {
            let path = dir.path().join(name);
            if let Some(content) = content {
                std::fs::write(&path, content).unwrap();
            }
            path
        });
        let [ca, cert, key] = std::array::from_fn(|i| std::mem::take(&mut paths[i]));
        config.tls = TlsConfig {
            ca_file: if files[0].0.is_empty() {
                Default::default()
            } else {
                ca
            },
            cert_file: if files[1].0.is_empty() {
                Default::default()
            } else {
                cert
            },
            key_file: if files[2].0.is_empty() {
                Default::default()
            } else {
                key
            },
        };
        (config, dir)
    }

    fn metrics_batch(tag: &str) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                schema_url: format!("https://example.com/{tag}"),
                ..Default::default()
            }],
        }
    }

    fn partial_success(items: i64, message: &str) -> ExportMetricsServiceResponse {
        ExportMetricsServiceResponse {
            partial_success: Some(ExportMetricsPartialSuccess {
                rejected_data_points: items,
                error_message: message.into(),
            }),
        }
    }

    fn retry_info_status(delay: Duration) -> Bytes {
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

    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    // --- validate ----------------------------------------------------------------------

    #[test]
    fn defaults_are_valid_for_both_protocols() {
        validate(&OtlpConfig::default()).unwrap();
        validate(&otlp(
            "https://collector.example:4318/otlp/",
            OtlpProtocol::HttpProtobuf,
        ))
        .unwrap();
        validate(&otlp("http://[::1]:4317/", OtlpProtocol::Grpc)).unwrap();
    }

    #[test]
    fn endpoint_must_be_an_http_url_with_a_host() {
        let e = problem(&otlp("not a url", OtlpProtocol::Grpc));
        assert!(
            e.starts_with("config key `otlp.endpoint` \"not a url\" is not a URL"),
            "{e}"
        );
        assert!(
            e.ends_with("write it like \"http://collector:4317\""),
            "{e}"
        );

        let e = problem(&otlp("localhost:4317", OtlpProtocol::Grpc));
        assert!(e.contains("must start with http:// or https://"), "{e}");
        let e = problem(&otlp("ftp://collector", OtlpProtocol::HttpProtobuf));
        assert!(e.contains("must start with http:// or https://"), "{e}");
        assert!(e.ends_with("\"http://collector:4318\""), "{e}");

        let e = problem(&otlp("http://", OtlpProtocol::Grpc));
        assert!(e.contains("empty host"), "{e}");
    }

    #[test]
    fn endpoint_extras_are_rejected_with_their_fix() {
        let e = problem(&otlp("http://c:4318/?a=1", OtlpProtocol::HttpProtobuf));
        assert!(e.contains("must not have a query or fragment"), "{e}");
        let e = problem(&otlp("http://user:secret@c:4317", OtlpProtocol::Grpc));
        assert!(e.contains("has credentials"), "{e}");
        assert!(e.contains("otlp.headers"), "{e}");

        let e = problem(&otlp("http://c:4317/v1/metrics", OtlpProtocol::Grpc));
        assert!(
            e.contains("has a path (/v1/metrics), which gRPC does not use"),
            "{e}"
        );
        assert!(e.contains("otlp.protocol = \"http/protobuf\""), "{e}");

        let e = problem(&otlp(
            "http://c:4318/v1/traces/",
            OtlpProtocol::HttpProtobuf,
        ));
        assert!(e.contains("ends in /v1/traces, but"), "{e}");
    }

    #[test]
    fn queue_size_and_timeout_ranges() {
        let mut c = OtlpConfig {
            queue_size: 0,
            ..OtlpConfig::default()
        };
        assert_eq!(
            problem(&c),
            "config key `otlp.queue_size` must be between 1 and 10000 (batches waiting per \
             signal), got 0"
        );
        c.queue_size = 10_001;
        assert!(problem(&c).ends_with("got 10001"));
        c.queue_size = 10_000;
        validate(&c).unwrap();

        c.timeout = Duration::from_millis(50);
        assert_eq!(
            problem(&c),
            "config key `otlp.timeout` must be between 100ms and 5m, got 50ms"
        );
        c.timeout = Duration::from_secs(301);
        assert!(problem(&c).ends_with("got 5m 1s"), "{}", problem(&c));
        c.timeout = Duration::from_millis(100);
        validate(&c).unwrap();
    }

    #[test]
    fn retry_backoffs_are_checked() {
        let mut c = OtlpConfig::default();
        c.retry.initial_backoff = Duration::ZERO;
        assert_eq!(
            problem(&c),
            "config key `otlp.retry.initial_backoff` must be at least 1ms, got 0s"
        );
        c.retry.initial_backoff = Duration::from_secs(5);
        c.retry.max_backoff = Duration::from_secs(1);
        assert_eq!(
            problem(&c),
            "config key `otlp.retry.max_backoff` must be at least otlp.retry.initial_backoff \
             (5s), got 1s"
        );
    }

    #[test]
    fn headers_must_be_valid_metadata() {
        let with = |protocol, name: &str, value: &str| {
            let mut c = otlp("http://c:4317", protocol);
            c.headers.insert(name.into(), value.into());
            c
        };
        validate(&with(OtlpProtocol::Grpc, "Authorization", "Bearer abc")).unwrap();

        let e = problem(&with(OtlpProtocol::Grpc, "x api key", "v"));
        assert!(
            e.starts_with("config key `otlp.headers` \"x api key\" is not a valid header name"),
            "{e}"
        );
        let e = problem(&with(OtlpProtocol::Grpc, "Content-Type", "text/plain"));
        assert!(
            e.contains("\"Content-Type\" is set by the OTLP transport itself"),
            "{e}"
        );
        let e = problem(&with(OtlpProtocol::Grpc, "grpc-timeout", "1S"));
        assert!(e.contains("set by the OTLP transport"), "{e}");
        let e = problem(&with(OtlpProtocol::Grpc, "trace-bin", "x"));
        assert!(e.contains("binary gRPC metadata"), "{e}");
        validate(&with(OtlpProtocol::HttpProtobuf, "trace-bin", "x")).unwrap();

        let e = problem(&with(OtlpProtocol::Grpc, "x-token", "s3cret\nnext"));
        assert!(
            e.contains("the value of \"x-token\" must be printable ASCII"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "the value must not be echoed: {e}");
        let e = problem(&with(OtlpProtocol::Grpc, "x-token", "naïve"));
        assert!(e.contains("must be printable ASCII"), "{e}");
    }

    #[test]
    fn tls_files_need_an_https_endpoint() {
        let c = otlp("http://c:4317", OtlpProtocol::Grpc);
        let (c, _dir) = with_tls(c, [("ca.pem", Some(CA_PEM)), ("", None), ("", None)]);
        let e = problem(&c);
        assert!(e.starts_with("config key `otlp.tls.ca_file` is set but otlp.endpoint \"http://c:4317\" is plain http"), "{e}");
    }

    #[test]
    fn ca_file_must_hold_a_certificate() {
        let https = otlp("https://c:4317", OtlpProtocol::Grpc);
        let (c, _dir) = with_tls(
            https.clone(),
            [("missing.pem", None), ("", None), ("", None)],
        );
        let e = problem(&c);
        assert!(
            e.starts_with("config key `otlp.tls.ca_file` cannot read"),
            "{e}"
        );
        assert!(
            e.contains("it should be a PEM bundle of CA certificates"),
            "{e}"
        );

        let (c, _dir) = with_tls(
            https.clone(),
            [("ca.pem", Some("hello\n")), ("", None), ("", None)],
        );
        let e = problem(&c);
        assert!(e.contains("contains no PEM certificate"), "{e}");

        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let (c, _dir) = with_tls(
            https.clone(),
            [("ca.pem", Some(garbage)), ("", None), ("", None)],
        );
        let e = problem(&c);
        assert!(e.contains("no valid X.509 CA certificate"), "{e}");

        let (c, _dir) = with_tls(https, [("ca.pem", Some(CA_PEM)), ("", None), ("", None)]);
        validate(&c).unwrap();
    }

    #[test]
    fn client_certificate_and_key_come_together() {
        let https = otlp("https://c:4318", OtlpProtocol::HttpProtobuf);
        let (c, _dir) = with_tls(
            https.clone(),
            [("", None), ("cert.pem", Some(LEAF_PEM)), ("", None)],
        );
        let e = problem(&c);
        assert!(
            e.starts_with("config key `otlp.tls.key_file` must be set when otlp.tls.cert_file is"),
            "{e}"
        );

        let (c, _dir) = with_tls(
            https.clone(),
            [("", None), ("", None), ("key.pem", Some(LEAF_KEY))],
        );
        let e = problem(&c);
        assert!(
            e.starts_with("config key `otlp.tls.cert_file` must be set when otlp.tls.key_file is"),
            "{e}"
        );

        let files = [
            ("", None),
            ("cert.pem", Some(LEAF_PEM)),
            ("key.pem", Some(LEAF_PEM)),
        ];
        let (c, _dir) = with_tls(https.clone(), files);
        let e = problem(&c);
        assert!(e.contains("contains no usable PEM private key"), "{e}");

        let files = [
            ("", None),
            ("cert.pem", Some(CA_PEM)),
            ("key.pem", Some(LEAF_KEY)),
        ];
        let (c, _dir) = with_tls(https.clone(), files);
        let e = problem(&c);
        assert!(e.contains("does not fit the certificate in"), "{e}");

        let files = [
            ("", None),
            ("cert.pem", Some(LEAF_PEM)),
            ("key.pem", Some(LEAF_KEY)),
        ];
        let (c, _dir) = with_tls(https, files);
        validate(&c).unwrap();
    }

    // --- pure helpers ------------------------------------------------------------------

    #[test]
    fn signal_paths_join_onto_the_endpoint() {
        let cases = [
            ("http://c:4318", "http://c:4318/v1/metrics"),
            ("http://c:4318/", "http://c:4318/v1/metrics"),
            (
                "https://gw.example/otlp",
                "https://gw.example/otlp/v1/metrics",
            ),
            (
                "https://gw.example/otlp/",
                "https://gw.example/otlp/v1/metrics",
            ),
            (
                "https://gw.example/a/b//",
                "https://gw.example/a/b/v1/metrics",
            ),
        ];
        for (endpoint, want) in cases {
            let url = Url::parse(endpoint).unwrap();
            assert_eq!(
                signal_url(&url, Signal::Metrics).as_str(),
                want,
                "{endpoint}"
            );
        }
        let url = Url::parse("http://c:4318/base").unwrap();
        assert_eq!(signal_url(&url, Signal::Traces).path(), "/base/v1/traces");
        assert_eq!(signal_url(&url, Signal::Logs).path(), "/base/v1/logs");
    }

    #[test]
    fn grpc_retryable_codes_follow_the_otlp_table() {
        let table = [
            (Code::Ok, false),
            (Code::Cancelled, true),
            (Code::Unknown, false),
            (Code::InvalidArgument, false),
            (Code::DeadlineExceeded, true),
            (Code::NotFound, false),
            (Code::AlreadyExists, false),
            (Code::PermissionDenied, false),
            (Code::ResourceExhausted, true),
            (Code::FailedPrecondition, false),
            (Code::Aborted, true),
            (Code::OutOfRange, true),
            (Code::Unimplemented, false),
            (Code::Internal, false),
            (Code::Unavailable, true),
            (Code::DataLoss, true),
            (Code::Unauthenticated, false),
        ];
        for (code, retryable) in table {
            assert_eq!(grpc_retryable(code), retryable, "{code:?}");
        }
    }

    #[test]
    fn http_retryable_statuses_follow_the_otlp_table() {
        for status in [429, 502, 503, 504] {
            assert!(
                http_retryable(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
        for status in [400, 401, 403, 404, 405, 408, 413, 415, 500, 501, 505] {
            assert!(
                !http_retryable(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
    }

    #[test]
    fn grpc_status_becomes_an_outcome() {
        let status = Status::with_details(
            Code::Unavailable,
            "busy",
            retry_info_status(Duration::from_millis(1500)),
        );
        assert_eq!(
            grpc_outcome(&status),
            Outcome::Retry {
                error: "gRPC Unavailable: busy".into(),
                after: Some(Duration::from_millis(1500)),
            }
        );
        assert_eq!(
            grpc_outcome(&Status::resource_exhausted("slow down")),
            Outcome::Retry {
                error: "gRPC ResourceExhausted: slow down".into(),
                after: None,
            }
        );
        assert_eq!(
            grpc_outcome(&Status::invalid_argument("bad span")),
            Outcome::Fail("gRPC InvalidArgument: bad span".into())
        );
        assert_eq!(retry_info_delay(b"not protobuf \xff"), None);

        // Made by tonic from a broken connection, not sent by the collector.
        let mut status = Status::unknown("transport error");
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset");
        status.set_source(Arc::new(reset));
        assert_eq!(
            grpc_outcome(&status),
            Outcome::Retry {
                error: "gRPC Unknown: transport error: connection reset".into(),
                after: None,
            }
        );
    }

    #[test]
    fn http_answer_becomes_an_outcome() {
        let uri: Uri = "http://c:4318/v1/metrics".parse().unwrap();
        let ok = partial_success(2, "bad points").encode_to_vec();
        assert_eq!(
            http_outcome(StatusCode::OK, None, true, &ok, &uri),
            Outcome::Sent(Some(Rejected {
                items: 2,
                message: "bad points".into()
            }))
        );
        assert_eq!(
            http_outcome(StatusCode::OK, None, false, b"{}", &uri),
            Outcome::Sent(None)
        );
        assert_eq!(
            http_outcome(
                StatusCode::OK,
                None,
                true,
                &ExportMetricsServiceResponse::default().encode_to_vec(),
                &uri
            ),
            Outcome::Sent(None)
        );
        assert_eq!(
            http_outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(Duration::from_secs(7)),
                false,
                b"",
                &uri
            ),
            Outcome::Retry {
                error:
                    "HTTP 503 Service Unavailable from http://c:4318/v1/metrics: (no response text)"
                        .into(),
                after: Some(Duration::from_secs(7)),
            }
        );
        let status = RpcStatus {
            code: Code::InvalidArgument as i32,
            message: "metric name is empty".into(),
            details: vec![],
        };
        assert_eq!(
            http_outcome(
                StatusCode::BAD_REQUEST,
                None,
                true,
                &status.encode_to_vec(),
                &uri
            ),
            Outcome::Fail(
                "HTTP 400 Bad Request from http://c:4318/v1/metrics: metric name is empty".into()
            )
        );
        let Outcome::Fail(error) = http_outcome(
            StatusCode::NOT_FOUND,
            None,
            false,
            "x".repeat(5000).as_bytes(),
            &uri,
        ) else {
            panic!("404 is final");
        };
        assert!(error.ends_with("x…") && error.len() < 500, "{error}");
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static(" 3 "));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_max_with_jitter_under_the_cap() {
        let retry = RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(60),
        };
        let caps = [100, 200, 400, 800, 1000, 1000, 1000].map(Duration::from_millis);
        for seed in 0..200 {
            let mut backoff = Backoff::new(&retry, seed);
            for cap in caps {
                assert_eq!(backoff.cap, cap);
                let wait = backoff.next();
                assert!(
                    wait <= cap && wait <= retry.max_backoff,
                    "{wait:?} over {cap:?}"
                );
            }
        }
        let mut backoff = Backoff::new(&retry, 42);
        let waits: Vec<_> = (0..20).map(|_| backoff.next()).collect();
        assert!(
            waits.iter().any(|w| *w > Duration::from_millis(500)),
            "{waits:?}"
        );
        assert!(waits.windows(2).any(|w| w[0] != w[1]), "{waits:?}");
    }

    #[test]
    fn full_jitter_spans_zero_to_cap() {
        let cap = Duration::from_secs(30);
        assert_eq!(full_jitter(cap, 0), Duration::ZERO);
        assert!(full_jitter(cap, u64::MAX) <= cap);
        assert!(full_jitter(cap, u64::MAX) > Duration::from_millis(29_999));
        assert_eq!(full_jitter(Duration::ZERO, u64::MAX), Duration::ZERO);
        let huge = Duration::from_secs(u64::MAX / 4);
        assert!(full_jitter(huge, u64::MAX) <= huge);
    }

    #[test]
    fn a_tiny_initial_backoff_is_raised_to_the_floor() {
        let retry = RetryConfig {
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            max_elapsed: Duration::from_secs(1),
        };
        assert_eq!(Backoff::new(&retry, 1).cap, MIN_BACKOFF);
    }

    #[test]
    fn warnings_are_limited_to_one_a_minute() {
        let mut limiter = WarnLimiter::default();
        let t0 = Instant::now();
        assert_eq!(limiter.allow(t0), Some(0));
        assert_eq!(limiter.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(limiter.allow(t0 + Duration::from_secs(59)), None);
        assert_eq!(limiter.allow(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(limiter.allow(t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn gzip_round_trips() {
        let data = b"nodepulse ".repeat(1000);
        let packed = gzip(&data);
        assert!(packed.len() < data.len() / 10);
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, data);
    }

    #[test]
    fn start_needs_a_runtime() {
        let e = start(&OtlpConfig::default()).err().unwrap();
        assert!(matches!(e, TransportError::NoRuntime), "{e}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn start_rejects_an_invalid_config() {
        let e = start(&otlp("grpc://c:4317", OtlpProtocol::Grpc))
            .err()
            .unwrap();
        assert!(
            e.to_string().starts_with("config key `otlp.endpoint`"),
            "{e}"
        );
    }

    // --- queues ------------------------------------------------------------------------

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_drops_and_counts() {
        for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
            let mut config = otlp("http://127.0.0.1:9", protocol);
            config.queue_size = 2;
            let sender = start(&config).unwrap();
            // The sender task has not run yet (nothing awaited), so nothing leaves the queue.
            let accepted: Vec<bool> = (0..5)
                .map(|i| sender.try_send_metrics(metrics_batch(&i.to_string())))
                .collect();
            assert_eq!(accepted, [true, true, false, false, false], "{protocol:?}");
            assert!(sender.try_send_traces(ExportTraceServiceRequest::default()));
            assert!(sender.try_send_logs(ExportLogsServiceRequest::default()));

            let stats = sender.stats();
            assert_eq!(stats.metrics.batches_dropped, 3);
            assert_eq!(stats.metrics.pending, 2);
            assert_eq!(stats.traces.batches_dropped, 0);
            assert_eq!(stats.traces.pending, 1);
            assert_eq!(stats.signal(Signal::Logs).pending, 1);
            assert!(!sender.flush(Duration::from_millis(20)).await);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_absent_collector_is_retried_then_given_up() {
        let port = closed_port();
        for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
            let config = fast(
                otlp(&format!("http://127.0.0.1:{port}"), protocol),
                Duration::from_millis(200),
            );
            let sender = start(&config).unwrap();
            assert!(sender.try_send_metrics(metrics_batch("a")));
            assert!(sender.flush(Duration::from_secs(10)).await, "{protocol:?}");
            let stats = sender.stats().metrics;
            assert_eq!(
                (stats.batches_sent, stats.batches_failed),
                (0, 1),
                "{stats:?}"
            );
            assert!(stats.retries >= 1, "{stats:?}");
            assert_eq!(stats.bytes_sent, 0, "{stats:?}");
            let error = stats.last_error.unwrap();
            assert!(error.contains("gave up after retrying"), "{error}");
            assert!(error.to_lowercase().contains("refused"), "{error}");
            assert!(stats.last_export_duration.is_some());
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn flush_of_nothing_returns_at_once() {
        let sender = start(&otlp("http://127.0.0.1:9", OtlpProtocol::Grpc)).unwrap();
        assert!(sender.flush(Duration::ZERO).await);
        assert_eq!(sender.stats(), TransportStats::default());
    }

    // --- against local collectors ------------------------------------------------------

    /// A request a test collector received.
    struct Received {
        path: String,
        headers: HeaderMap,
        body: Bytes,
    }

    /// An OTLP/HTTP collector on loopback that answers with `answer(path, nth request
    /// to that path)`.
    async fn http_collector(
        answer: fn(&str, usize) -> hyper::Response<Full<Bytes>>,
    ) -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let path = parts.uri.path().to_owned();
                            let nth = {
                                let mut log = log.lock().unwrap();
                                let nth = log.iter().filter(|r: &&Received| r.path == path).count();
                                log.push(Received {
                                    path: path.clone(),
                                    headers: parts.headers,
                                    body,
                                });
                                nth
                            };
                            Ok::<_, hyper::Error>(answer(&path, nth))
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(io, service),
                );
            }
        });
        (addr, received)
    }

    fn answer(
        status: u16,
        headers: &[(&'static str, &'static str)],
        body: Vec<u8>,
    ) -> hyper::Response<Full<Bytes>> {
        let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            response
                .headers_mut()
                .insert(*name, HeaderValue::from_static(value));
        }
        response
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_export_retries_then_delivers_gzip_with_headers() {
        let (addr, received) = http_collector(|path, nth| match (path, nth) {
            ("/base/v1/metrics", 0) => answer(503, &[("retry-after", "0")], b"overloaded".to_vec()),
            ("/base/v1/metrics", _) => answer(
                200,
                &[("content-type", PROTOBUF)],
                partial_success(2, "bad points").encode_to_vec(),
            ),
            _ => answer(
                400,
                &[("content-type", "text/plain")],
                b"malformed batch".to_vec(),
            ),
        })
        .await;
        let mut config = fast(
            otlp(&format!("http://{addr}/base/"), OtlpProtocol::HttpProtobuf),
            Duration::from_secs(5),
        );
        config.headers.insert("X-Api-Key".into(), "k1".into());
        let sender = start(&config).unwrap();
        let batch = metrics_batch("http");
        assert!(sender.try_send_metrics(batch.clone()));
        assert!(sender.try_send_traces(ExportTraceServiceRequest::default()));
        assert!(sender.flush(Duration::from_secs(10)).await);

        let received = received.lock().unwrap();
        let metrics: Vec<_> = received
            .iter()
            .filter(|r| r.path == "/base/v1/metrics")
            .collect();
        assert_eq!(metrics.len(), 2);
        let request = metrics[1];
        assert_eq!(request.headers["content-type"], PROTOBUF);
        assert_eq!(request.headers["content-encoding"], "gzip");
        assert_eq!(request.headers["x-api-key"], "k1");
        assert!(
            request.headers["user-agent"]
                .to_str()
                .unwrap()
                .starts_with("nodepulse/")
        );
        let mut body = Vec::new();
        flate2::read::GzDecoder::new(&request.body[..])
            .read_to_end(&mut body)
            .unwrap();
        assert_eq!(
            ExportMetricsServiceRequest::decode(&body[..]).unwrap(),
            batch
        );

        let stats = sender.stats();
        let m = &stats.metrics;
        assert_eq!(
            (
                m.batches_sent,
                m.batches_failed,
                m.retries,
                m.items_rejected
            ),
            (1, 0, 1, 2),
            "{m:?}"
        );
        assert_eq!(
            m.bytes_sent,
            metrics.iter().map(|r| r.body.len() as u64).sum::<u64>()
        );
        assert!(
            m.last_error
                .as_deref()
                .unwrap()
                .contains("HTTP 503 Service Unavailable"),
            "{m:?}"
        );

        let t = &stats.traces;
        assert_eq!(
            (t.batches_sent, t.batches_failed, t.retries),
            (0, 1, 0),
            "{t:?}"
        );
        let error = t.last_error.as_deref().unwrap();
        assert!(
            error.starts_with("HTTP 400 Bad Request from http://127.0.0.1:"),
            "{error}"
        );
        assert!(
            error.ends_with("/base/v1/traces: malformed batch"),
            "{error}"
        );
    }

    /// Answers metrics with UNAVAILABLE (with RetryInfo) once, then a partial success;
    /// traces always with INVALID_ARGUMENT.
    #[derive(Default)]
    struct GrpcCollector {
        metrics_calls: AtomicUsize,
        api_keys: Mutex<Vec<String>>,
        encodings: Mutex<Vec<String>>,
    }

    impl GrpcCollector {
        fn record<T>(&self, request: &tonic::Request<T>) {
            let text = |name| {
                request
                    .metadata()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            self.api_keys.lock().unwrap().push(text("x-api-key"));
            self.encodings.lock().unwrap().push(text("grpc-encoding"));
        }
    }

    #[tonic::async_trait]
    impl MetricsService for GrpcCollector {
        async fn export(
            &self,
            request: tonic::Request<ExportMetricsServiceRequest>,
        ) -> Result<tonic::Response<ExportMetricsServiceResponse>, Status> {
            self.record(&request);
            if self.metrics_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                let details = retry_info_status(Duration::from_millis(5));
                return Err(Status::with_details(
                    Code::Unavailable,
                    "warming up",
                    details,
                ));
            }
            Ok(tonic::Response::new(partial_success(3, "too old")))
        }
    }

    #[tonic::async_trait]
    impl TraceService for GrpcCollector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
            self.record(&request);
            Err(Status::invalid_argument("span without id"))
        }
    }

    /// Routes each request to the signal's generated server (tonic's router feature is
    /// off in this crate).
    #[derive(Clone)]
    struct GrpcRoutes {
        metrics: MetricsServiceServer<GrpcCollector>,
        traces: TraceServiceServer<GrpcCollector>,
    }

    impl Service<GrpcRequest> for GrpcRoutes {
        type Response = hyper::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = tonic::codegen::BoxFuture<Self::Response, Infallible>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: GrpcRequest) -> Self::Future {
            if request.uri().path() == Signal::Traces.grpc_path() {
                Box::pin(self.traces.call(request))
            } else {
                Box::pin(self.metrics.call(request))
            }
        }
    }

    async fn grpc_collector(tls: Option<ServerTlsConfig>) -> (SocketAddr, Arc<GrpcCollector>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Arc::new(GrpcCollector::default());
        let routes = GrpcRoutes {
            metrics: MetricsServiceServer::from_arc(collector.clone())
                .accept_compressed(CompressionEncoding::Gzip),
            traces: TraceServiceServer::from_arc(collector.clone())
                .accept_compressed(CompressionEncoding::Gzip),
        };
        tokio::spawn(serve(routes, listener, tls));
        (addr, collector)
    }

    async fn serve<S>(service: S, listener: tokio::net::TcpListener, tls: Option<ServerTlsConfig>)
    where
        S: Service<GrpcRequest, Response = hyper::Response<tonic::body::Body>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let mut server = Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).unwrap();
        }
        server
            .serve_with_incoming(service, TcpIncoming::from(listener))
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn grpc_export_retries_then_delivers_with_metadata() {
        let (addr, collector) = grpc_collector(None).await;
        let mut config = fast(
            otlp(&format!("http://{addr}"), OtlpProtocol::Grpc),
            Duration::from_secs(5),
        );
        config.headers.insert("x-api-key".into(), "k2".into());
        let sender = start(&config).unwrap();
        assert!(sender.try_send_metrics(metrics_batch("grpc")));
        assert!(sender.try_send_traces(ExportTraceServiceRequest::default()));
        assert!(sender.flush(Duration::from_secs(10)).await);

        assert_eq!(collector.metrics_calls.load(Ordering::SeqCst), 2);
        assert!(collector.api_keys.lock().unwrap().iter().all(|k| k == "k2"));
        assert!(
            collector
                .encodings
                .lock()
                .unwrap()
                .iter()
                .all(|e| e == "gzip")
        );

        let stats = sender.stats();
        let m = &stats.metrics;
        assert_eq!(
            (
                m.batches_sent,
                m.batches_failed,
                m.retries,
                m.items_rejected
            ),
            (1, 0, 1, 3),
            "{m:?}"
        );
        assert!(m.bytes_sent > 0, "{m:?}");
        assert_eq!(
            m.last_error.as_deref(),
            Some("gRPC Unavailable: warming up")
        );

        let t = &stats.traces;
        assert_eq!(
            (t.batches_sent, t.batches_failed, t.retries),
            (0, 1, 0),
            "{t:?}"
        );
        assert_eq!(
            t.last_error.as_deref(),
            Some("gRPC InvalidArgument: span without id")
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn grpc_export_over_mutual_tls() {
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(LEAF_PEM, LEAF_KEY))
            .client_ca_root(Certificate::from_pem(CA_PEM));
        let (addr, collector) = grpc_collector(Some(tls)).await;
        let https = fast(
            otlp(&format!("https://{addr}"), OtlpProtocol::Grpc),
            Duration::from_millis(300),
        );
        let files = [
            ("ca.pem", Some(CA_PEM)),
            ("cert.pem", Some(LEAF_PEM)),
            ("key.pem", Some(LEAF_KEY)),
        ];
        let (config, _dir) = with_tls(https.clone(), files);
        let sender = start(&config).unwrap();
        assert!(sender.try_send_metrics(metrics_batch("tls")));
        assert!(sender.flush(Duration::from_secs(10)).await);
        assert_eq!(
            sender.stats().metrics.batches_sent,
            1,
            "{:?}",
            sender.stats().metrics
        );
        assert_eq!(collector.metrics_calls.load(Ordering::SeqCst), 2);

        // Without a client certificate the collector refuses the handshake: a connection
        // error, retried until otlp.retry.max_elapsed.
        let (config, _dir) = with_tls(https, [("ca.pem", Some(CA_PEM)), ("", None), ("", None)]);
        let sender = start(&config).unwrap();
        assert!(sender.try_send_metrics(metrics_batch("no client cert")));
        assert!(sender.flush(Duration::from_secs(10)).await);
        let stats = sender.stats().metrics;
        assert_eq!(
            (stats.batches_sent, stats.batches_failed),
            (0, 1),
            "{stats:?}"
        );
        assert!(stats.retries >= 1, "{stats:?}");
        let error = stats.last_error.unwrap();
        assert!(error.contains("CertificateRequired"), "{error}");
        assert_eq!(collector.metrics_calls.load(Ordering::SeqCst), 2);
    }

    /// An OTLP/HTTP collector behind tonic's TLS server, which gives an HTTPS (HTTP/2)
    /// endpoint without another dependency.
    #[derive(Clone, Default)]
    struct HttpsCollector {
        paths: Arc<Mutex<Vec<String>>>,
    }

    impl Service<GrpcRequest> for HttpsCollector {
        type Response = hyper::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: GrpcRequest) -> Self::Future {
            self.paths
                .lock()
                .unwrap()
                .push(request.uri().path().to_owned());
            let body = tonic::body::Body::new(Full::new(Bytes::from(
                partial_success(0, "").encode_to_vec(),
            )));
            let mut response = hyper::Response::new(body);
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
            std::future::ready(Ok(response))
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_export_over_mutual_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = HttpsCollector::default();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(LEAF_PEM, LEAF_KEY))
            .client_ca_root(Certificate::from_pem(CA_PEM));
        tokio::spawn(serve(collector.clone(), listener, Some(tls)));

        let https = fast(
            otlp(
                &format!("https://localhost:{}", addr.port()),
                OtlpProtocol::HttpProtobuf,
            ),
            Duration::from_millis(300),
        );
        let files = [
            ("ca.pem", Some(CA_PEM)),
            ("cert.pem", Some(LEAF_PEM)),
            ("key.pem", Some(LEAF_KEY)),
        ];
        let (config, _dir) = with_tls(https, files);
        let sender = start(&config).unwrap();
        assert!(sender.try_send_logs(ExportLogsServiceRequest::default()));
        assert!(sender.flush(Duration::from_secs(10)).await);
        let stats = sender.stats().logs;
        assert_eq!(
            (stats.batches_sent, stats.items_rejected),
            (1, 0),
            "{stats:?}"
        );
        assert_eq!(*collector.paths.lock().unwrap(), ["/v1/logs"]);
    }
}
