//! The small HTTP/1 server behind the agent's endpoints (Prometheus `/metrics`, health
//! `/healthz` and `/readyz`): each connection on a task of its own, answered by a
//! synchronous handler that renders from shared state.
//!
//! Built to stay up under abuse from anyone who can reach the port. Idle and slow
//! clients cannot hold a slot: a connection must deliver a complete request within
//! [`REQUEST_TIMEOUT`] of opening or of its previous response (a slowloris trickle
//! counts as idle); and when all [`MAX_CONNECTIONS`] slots are taken, a new
//! connection evicts the one idle the longest, so idle sockets can never starve a
//! scraper. Only when every slot served a request in the last [`MIN_IDLE_TO_EVICT`]
//! (real load, not idle sockets) is a new connection refused, with a 503 that says so.
//! Request headers are bounded by [`MAX_HEADER_BYTES`]; bodies are never read.

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpSocket, TcpStream},
    sync::Notify,
};

/// Connections held at once per endpoint. Far above what scrapers and probes use (one
/// each); what bounds memory (each idle connection costs a task and a small buffer).
pub const MAX_CONNECTIONS: usize = 1024;

/// A connection that has not delivered a complete request this long after opening (or
/// after its previous response) is closed: it is idle, or trickling its headers
/// (slowloris). Scrapers and kubelets that keep connections between probes reconnect
/// at no cost.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// At the connection cap, only a connection idle at least this long may be evicted to
/// make room; if none is, the newcomer is refused with a 503.
pub const MIN_IDLE_TO_EVICT: Duration = Duration::from_secs(1);

/// Request line plus headers; hyper's smallest allowed read buffer, plenty for a scrape.
pub const MAX_HEADER_BYTES: usize = 8192;

/// How long the backstop waits past [`REQUEST_TIMEOUT`] for hyper's own timer.
const WATCHDOG_SLACK: Duration = Duration::from_millis(500);

/// How long a refused connection is given to take its 503.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop doesn't spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

mod fd_limit;
#[cfg(test)]
mod tests;

pub const PLAIN_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Answers one request from its method, path and headers.
pub type Handler =
    Arc<dyn Fn(&Method, &str, &HeaderMap) -> Response<Full<Bytes>> + Send + Sync + 'static>;

/// The bounds a server enforces; [`Limits::default`] is what the agent uses.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub request_timeout: Duration,
    pub min_idle_to_evict: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            request_timeout: REQUEST_TIMEOUT,
            min_idle_to_evict: MIN_IDLE_TO_EVICT,
        }
    }
}

/// What the server did to protect itself, counted since it started.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections closed for sending no complete request in time.
    pub timed_out: AtomicU64,
    /// Idle connections closed to make room for a new one at the cap.
    pub evicted: AtomicU64,
    /// New connections refused with a 503 because every slot was busy.
    pub refused: AtomicU64,
    /// The most connections held at once: what bounds the server's memory.
    pub peak_open: AtomicU64,
}

/// A running server; dropping it stops accepting connections.
pub struct Server {
    task: tokio::task::JoinHandle<()>,
    stats: Arc<Stats>,
}

impl Server {
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `listen` and serves `handler` on the current tokio runtime (which must have
/// I/O and time enabled). Returns the bound address, which tells the port when `listen`
/// has port 0. `what` names the endpoint in errors and logs.
pub fn serve(
    what: &'static str,
    listen: SocketAddr,
    handler: Handler,
) -> io::Result<(Server, SocketAddr)> {
    serve_with(what, listen, handler, Limits::default())
}

/// [`serve`] with other bounds (tests use small ones).
pub fn serve_with(
    what: &'static str,
    listen: SocketAddr,
    handler: Handler,
    limits: Limits,
) -> io::Result<(Server, SocketAddr)> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| io::Error::other(format!("the {what} endpoint needs a tokio runtime: {e}")))?;
    fd_limit::raise();
    let _entered = runtime.enter();
    let socket = if listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    // A backlog as deep as the connection cap: a burst of scrapers is queued, not dropped
    // into SYN retransmits (std's default is 128).
    let listener = socket.listen(MAX_CONNECTIONS as u32)?;
    let bound = listener.local_addr()?;
    let stats = Arc::new(Stats::default());
    let task = runtime.spawn(accept_loop(what, listener, handler, limits, stats.clone()));
    Ok((Server { task, stats }, bound))
}

/// One open connection, as the accept loop and its own task see it.
struct Connection {
    activity: Mutex<Activity>,
    /// Notified to close the connection (eviction).
    kick: Notify,
}

#[derive(Clone, Copy)]
struct Activity {
    /// When it opened, then when it last delivered a request.
    last: Instant,
}

impl Connection {
    fn activity(&self) -> Activity {
        *self.activity.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The open connections by id; ids grow, so the smallest is the oldest.
#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Arc<Connection>>,
}

type SharedTable = Arc<Mutex<Table>>;

/// Whether a new connection gets a slot, after evicting the longest-idle one if the
/// table is full and that one has been idle long enough.
fn admit(table: &SharedTable, limits: &Limits, stats: &Stats) -> Option<(u64, Arc<Connection>)> {
    let now = Instant::now();
    let mut t = table.lock().unwrap_or_else(PoisonError::into_inner);
    if t.open.len() >= limits.max_connections {
        let idlest = t
            .open
            .iter()
            .map(|(id, c)| (*id, c.activity().last))
            .min_by_key(|(_, last)| *last);
        match idlest {
            Some((id, last)) if now.saturating_duration_since(last) >= limits.min_idle_to_evict => {
                if let Some(c) = t.open.remove(&id) {
                    c.kick.notify_one();
                    stats.evicted.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => return None,
        }
    }
    let id = t.next_id;
    t.next_id += 1;
    let c = Arc::new(Connection {
        activity: Mutex::new(Activity { last: now }),
        kick: Notify::new(),
    });
    t.open.insert(id, c.clone());
    stats
        .peak_open
        .fetch_max(t.open.len() as u64, Ordering::Relaxed);
    Some((id, c))
}

/// Accepts connections and serves each on a task of its own, so that a slow or stuck
/// client only ever holds its own task; never waits for a slot before accepting.
async fn accept_loop(
    what: &'static str,
    listener: TcpListener,
    handler: Handler,
    limits: Limits,
    stats: Arc<Stats>,
) {
    let table = SharedTable::default();
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => match admit(&table, &limits, &stats) {
                Some((id, conn)) => {
                    let (handler, table, stats) = (handler.clone(), table.clone(), stats.clone());
                    tokio::spawn(async move {
                        serve_connection(what, stream, handler, &conn, &limits, &stats).await;
                        let mut t = table.lock().unwrap_or_else(PoisonError::into_inner);
                        t.open.remove(&id);
                    });
                }
                None => {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(refuse(stream, limits.max_connections));
                }
            },
            Err(e) => {
                tracing::warn!("{what} endpoint: accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Tells a client turned away at the cap why, then closes.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = format!(
        "busy: all {max} connections of this endpoint served a request within the last \
         second; retry shortly\n"
    );
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {PLAIN_CONTENT_TYPE}\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn serve_connection(
    what: &'static str,
    stream: TcpStream,
    handler: Handler,
    conn: &Arc<Connection>,
    limits: &Limits,
    stats: &Stats,
) {
    let seen = conn.clone();
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        {
            let mut a = seen.activity.lock().unwrap_or_else(PoisonError::into_inner);
            a.last = Instant::now();
        }
        let response = handler(req.method(), req.uri().path(), req.headers());
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        // A client may send its request and shut down its writing half (probes written
        // in shell often do): without this, hyper can see the end of input before the
        // answer is written and close without one. Still bounded by the timeouts above.
        .half_close(true);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        r = served => {
            if let Err(e) = r {
                if e.is_timeout() {
                    stats.timed_out.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!("{what} endpoint: connection ended: {e}");
            }
        }
        () = conn.kick.notified() => {
            tracing::debug!("{what} endpoint: idle connection evicted to make room");
        }
        () = watchdog(conn, limits) => {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("{what} endpoint: connection closed, no request in time");
        }
    }
}

/// Returns once the connection has gone without a request for too long. Hyper's
/// header timeout does the same; this backstop also covers a response the client never
/// reads (its last request stays the last activity). Counted per request, not per
/// byte, so trickling bytes does not keep a connection alive.
async fn watchdog(conn: &Connection, limits: &Limits) {
    loop {
        // A little later than hyper's own timer, which then closes with a proper error.
        let deadline = conn.activity().last + limits.request_timeout + WATCHDOG_SLACK;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// A plain-text response.
pub fn plain(status: StatusCode, text: impl Into<Bytes>) -> Response<Full<Bytes>> {
    response(status, PLAIN_CONTENT_TYPE, text.into())
}

pub fn response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// 405 with the allowed methods, for a path that only answers GET and HEAD.
pub fn method_not_allowed(hint: &'static str) -> Response<Full<Bytes>> {
    let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, hint);
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    r
}
