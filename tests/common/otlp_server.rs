//! A real OTLP receiver on loopback for the export tests: gRPC (the generated
//! `opentelemetry-proto` services, served by tonic over HTTP/2) or HTTP/protobuf
//! (`POST /v1/{metrics,traces,logs}`), each on a thread of its own with its own tokio
//! runtime, so plain `#[test]` functions can run the agent against it.
//!
//! It records every request it accepts ([`Received`]), and can be told to fail them
//! ([`Mode`]) to exercise retries. [`OtlpServer::stop`] (or dropping it) closes the
//! listener and every connection at once, like a collector that died; starting a new
//! receiver on the same address then works (the listener sets `SO_REUSEADDR`, so the
//! connections the old one closed, left in TIME_WAIT, do not block the port).
//!
//! ```ignore
//! let collector = OtlpServer::start_grpc("127.0.0.1:0".parse().unwrap());
//! // ... run the agent with `collector.endpoint()` ...
//! assert!(collector.wait_for(|r| !r.metrics.is_empty(), Duration::from_secs(10)));
//! let addr = collector.addr();
//! collector.stop(); // the collector goes away ...
//! let collector = OtlpServer::start_grpc(addr); // ... and comes back
//! ```

use std::{
    convert::Infallible,
    io::Read as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Request, Response, StatusCode,
    body::{Frame, Incoming},
    header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use opentelemetry_proto::tonic::collector::{
    logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
};
use prost::Message as _;
use tokio::{net::TcpSocket, sync::oneshot};
use tonic::{codec::CompressionEncoding, codegen::Service as _, server::NamedService};

/// How the receiver answers export requests; settable while it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Records the request and answers success.
    #[default]
    Accept,
    /// gRPC `UNAVAILABLE` / HTTP 503: the exporter should retry.
    RetryableError,
    /// gRPC `INVALID_ARGUMENT` / HTTP 400: the exporter should drop the data.
    PermanentError,
}

/// Everything the receiver accepted, in arrival order. Requests answered with an
/// error (see [`Mode`]) are not here.
#[derive(Clone, Debug, Default)]
pub struct Received {
    pub metrics: Vec<ExportMetricsServiceRequest>,
    pub traces: Vec<ExportTraceServiceRequest>,
    pub logs: Vec<ExportLogsServiceRequest>,
    /// Headers of each accepted request (all signals, in arrival order), names in
    /// lowercase. For gRPC these include `content-type`, `grpc-encoding`, `te` and any
    /// metadata the client set.
    pub headers: Vec<Vec<(String, String)>>,
    /// Body length of each accepted request as sent on the wire (compressed when the
    /// client compressed it; for gRPC including the 5-byte message prefix), parallel
    /// to `headers`.
    pub bytes: Vec<u64>,
}

impl Received {
    /// The value of header `name` (lowercase) in the `index`th accepted request.
    pub fn header(&self, index: usize, name: &str) -> Option<&str> {
        self.headers
            .get(index)?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Accepted requests of all signals.
    pub fn requests(&self) -> usize {
        self.headers.len()
    }
}

/// A running receiver; shuts down (freeing its port) on [`stop`](Self::stop) or drop.
pub struct OtlpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Grpc,
    Http,
}

impl OtlpServer {
    /// An OTLP/gRPC receiver (metrics, traces, logs; gzip accepted) on `addr`
    /// (port 0 picks a free port). Panics if it cannot bind.
    pub fn start_grpc(addr: SocketAddr) -> Self {
        Self::start(Protocol::Grpc, addr)
    }

    /// An OTLP/HTTP receiver (binary protobuf, gzip accepted) on `addr`
    /// (port 0 picks a free port). Panics if it cannot bind.
    pub fn start_http(addr: SocketAddr) -> Self {
        Self::start(Protocol::Http, addr)
    }

    fn start(protocol: Protocol, addr: SocketAddr) -> Self {
        let shared = Arc::new(Shared::default());
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let (shutdown, shutdown_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("otlp-{protocol:?}-receiver").to_lowercase())
            .spawn({
                let shared = shared.clone();
                move || serve(protocol, addr, shared, bound_tx, shutdown_rx)
            })
            .expect("spawn the OTLP receiver thread");
        let addr = match bound_rx.recv() {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => panic!("OTLP {protocol:?} receiver cannot listen on {addr}: {e}"),
            Err(_) => panic!("OTLP {protocol:?} receiver thread died while starting"),
        };
        Self {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// The address it listens on (the real port when started with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, for the agent's OTLP endpoint setting.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A snapshot of what it accepted so far.
    pub fn received(&self) -> Received {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until `what` holds for what was received, or `timeout` passes; returns
    /// whether it held.
    pub fn wait_for(&self, what: impl Fn(&Received) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if what(&self.shared.received.lock().unwrap()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How the following requests are answered.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Requests answered with an injected error (see [`Mode`]).
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Ordering::Relaxed)
    }

    /// Closes the listener and every connection; returns once the port is free.
    pub fn stop(self) {
        // Drop does it.
    }
}

impl Drop for OtlpServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Received>,
    mode: Mutex<Mode>,
    rejected: AtomicU64,
}

impl Shared {
    /// The injected error to answer with, if any (and counts it).
    fn fault(&self) -> Option<Mode> {
        let mode = *self.mode.lock().unwrap();
        if mode == Mode::Accept {
            return None;
        }
        self.rejected.fetch_add(1, Ordering::Relaxed);
        Some(mode)
    }

    fn record(&self, meta: &RequestMeta, add: impl FnOnce(&mut Received)) {
        let mut received = self.received.lock().unwrap();
        add(&mut received);
        received.headers.push(meta.headers.clone());
        received.bytes.push(meta.bytes.load(Ordering::Relaxed));
    }
}

/// What the connection layer saw of a request, passed to the gRPC handlers in the
/// request's extensions.
#[derive(Clone)]
struct RequestMeta {
    headers: Vec<(String, String)>,
    /// Body bytes read so far; complete once the request message is decoded.
    bytes: Arc<AtomicU64>,
}

fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// The receiver thread: binds, reports the bound address, serves until shut down,
/// then drops the runtime, which closes every connection.
fn serve(
    protocol: Protocol,
    addr: SocketAddr,
    shared: Arc<Shared>,
    bound: std::sync::mpsc::Sender<std::io::Result<SocketAddr>>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let listener = match listen(addr) {
            Ok(l) => l,
            Err(e) => {
                let _ = bound.send(Err(e));
                return;
            }
        };
        let _ = bound.send(listener.local_addr());
        let grpc = GrpcServices::new(shared.clone());
        loop {
            let stream = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        eprintln!("OTLP receiver on {addr}: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let (shared, grpc) = (shared.clone(), grpc.clone());
            tokio::spawn(async move {
                let io = TokioIo::new(stream);
                let builder = auto::Builder::new(TokioExecutor::new());
                // Errors here are clients going away; nothing to record.
                let _ = match protocol {
                    Protocol::Grpc => {
                        builder
                            .serve_connection(io, service_fn(move |req| grpc.clone().call(req)))
                            .await
                    }
                    Protocol::Http => {
                        builder
                            .serve_connection(
                                io,
                                service_fn(move |req| handle_http(shared.clone(), req)),
                            )
                            .await
                    }
                };
            });
        }
    });
    // Cancels the connection tasks, closing their sockets (the listener is closed
    // already).
    drop(rt);
}

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

// --- gRPC -------------------------------------------------------------------------

/// The handler behind the three generated gRPC services.
struct Collector(Arc<Shared>);

impl Collector {
    fn export<T>(
        &self,
        request: tonic::Request<T>,
        add: impl FnOnce(&mut Received, T),
    ) -> Result<(), tonic::Status> {
        match self.0.fault() {
            Some(Mode::RetryableError) => {
                return Err(tonic::Status::unavailable("injected retryable error"));
            }
            Some(_) => {
                return Err(tonic::Status::invalid_argument("injected permanent error"));
            }
            None => {}
        }
        let meta = request
            .extensions()
            .get::<RequestMeta>()
            .cloned()
            .expect("request metadata from the connection layer");
        let message = request.into_inner();
        self.0.record(&meta, |r| add(r, message));
        Ok(())
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        Collector::export(self, request, |r, m| r.metrics.push(m))?;
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        Collector::export(self, request, |r, m| r.traces.push(m))?;
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        Collector::export(self, request, |r, m| r.logs.push(m))?;
        Ok(tonic::Response::new(Default::default()))
    }
}

/// The generated services, routed by path. Served directly on hyper (rather than
/// through `tonic::transport::Server`) so the request body can be counted as it
/// arrives, still compressed.
#[derive(Clone)]
struct GrpcServices {
    metrics: MetricsServiceServer<Collector>,
    traces: TraceServiceServer<Collector>,
    logs: LogsServiceServer<Collector>,
}

impl GrpcServices {
    fn new(shared: Arc<Shared>) -> Self {
        let collector = Arc::new(Collector(shared));
        Self {
            metrics: MetricsServiceServer::from_arc(collector.clone())
                .accept_compressed(CompressionEncoding::Gzip),
            traces: TraceServiceServer::from_arc(collector.clone())
                .accept_compressed(CompressionEncoding::Gzip),
            logs: LogsServiceServer::from_arc(collector)
                .accept_compressed(CompressionEncoding::Gzip),
        }
    }

    async fn call(
        mut self,
        req: Request<Incoming>,
    ) -> Result<Response<tonic::body::Body>, Infallible> {
        let meta = RequestMeta {
            headers: header_list(req.headers()),
            bytes: Arc::new(AtomicU64::new(0)),
        };
        let counter = meta.bytes.clone();
        let mut req = req.map(|body| {
            body.map_frame(move |frame: Frame<Bytes>| {
                if let Some(data) = frame.data_ref() {
                    counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                frame
            })
        });
        req.extensions_mut().insert(meta);
        let service = req
            .uri()
            .path()
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        if service == MetricsServiceServer::<Collector>::NAME {
            self.metrics.call(req).await
        } else if service == TraceServiceServer::<Collector>::NAME {
            self.traces.call(req).await
        } else if service == LogsServiceServer::<Collector>::NAME {
            self.logs.call(req).await
        } else {
            Ok(tonic::Status::unimplemented(format!("no service {service}")).into_http())
        }
    }
}

// --- HTTP/protobuf ------------------------------------------------------------------

const PROTOBUF: &str = "application/x-protobuf";

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn http_reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, PROTOBUF)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn http_error(status: StatusCode, code: tonic::Code, message: &str) -> Response<Full<Bytes>> {
    let body = RpcStatus {
        code: code as i32,
        message: message.to_owned(),
    };
    http_reply(status, body.encode_to_vec())
}

/// A request that is not valid OTLP/HTTP: answered with an error, not counted as
/// rejected, and logged (the test shows it when it fails).
fn http_malformed(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    eprintln!("OTLP/HTTP receiver: {status}: {message}");
    http_error(status, tonic::Code::InvalidArgument, &message)
}

enum Export {
    Metrics(ExportMetricsServiceRequest),
    Traces(ExportTraceServiceRequest),
    Logs(ExportLogsServiceRequest),
}

async fn handle_http(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    if !matches!(path.as_str(), "/v1/metrics" | "/v1/traces" | "/v1/logs") {
        return Ok(http_malformed(
            StatusCode::NOT_FOUND,
            format!("no OTLP path {path}"),
        ));
    }
    if req.method() != hyper::Method::POST {
        return Ok(http_malformed(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} {path}", req.method()),
        ));
    }
    let headers = header_list(req.headers());
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.split(';').next().map(str::trim) != Some(PROTOBUF) {
        return Ok(http_malformed(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content-type {content_type:?}, only {PROTOBUF} is supported"),
        ));
    }
    let encoding = req
        .headers()
        .get(CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .to_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(http_malformed(
                StatusCode::BAD_REQUEST,
                format!("reading the body: {e}"),
            ));
        }
    };
    let sent = body.len() as u64;
    let body = match encoding.as_str() {
        "identity" => body,
        "gzip" => {
            let mut out = Vec::new();
            if let Err(e) = flate2::read::MultiGzDecoder::new(&body[..]).read_to_end(&mut out) {
                return Ok(http_malformed(
                    StatusCode::BAD_REQUEST,
                    format!("bad gzip body: {e}"),
                ));
            }
            Bytes::from(out)
        }
        other => {
            return Ok(http_malformed(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content-encoding {other:?}"),
            ));
        }
    };
    let decoded = match path.as_str() {
        "/v1/metrics" => ExportMetricsServiceRequest::decode(body).map(Export::Metrics),
        "/v1/traces" => ExportTraceServiceRequest::decode(body).map(Export::Traces),
        _ => ExportLogsServiceRequest::decode(body).map(Export::Logs),
    };
    let export = match decoded {
        Ok(export) => export,
        Err(e) => {
            return Ok(http_malformed(
                StatusCode::BAD_REQUEST,
                format!("bad protobuf for {path}: {e}"),
            ));
        }
    };
    match shared.fault() {
        Some(Mode::RetryableError) => {
            return Ok(http_error(
                StatusCode::SERVICE_UNAVAILABLE,
                tonic::Code::Unavailable,
                "injected retryable error",
            ));
        }
        Some(_) => {
            return Ok(http_error(
                StatusCode::BAD_REQUEST,
                tonic::Code::InvalidArgument,
                "injected permanent error",
            ));
        }
        None => {}
    }
    let meta = RequestMeta {
        headers,
        bytes: Arc::new(AtomicU64::new(sent)),
    };
    let response = match &export {
        Export::Metrics(_) => ExportMetricsServiceResponse::default().encode_to_vec(),
        Export::Traces(_) => ExportTraceServiceResponse::default().encode_to_vec(),
        Export::Logs(_) => ExportLogsServiceResponse::default().encode_to_vec(),
    };
    shared.record(&meta, |r| match export {
        Export::Metrics(m) => r.metrics.push(m),
        Export::Traces(t) => r.traces.push(t),
        Export::Logs(l) => r.logs.push(l),
    });
    Ok(http_reply(StatusCode::OK, response))
}
