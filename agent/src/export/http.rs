//! The small HTTP/1 server behind the agent's endpoints (Prometheus `/metrics`, health
//! `/healthz` and `/readyz`): a bounded number of connections, each on a task of its
//! own, answered by a synchronous handler that renders from shared state.

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, time::Duration};

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
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

/// Connections served at once. Prometheus and the kubelet keep one connection per
/// target; the cap bounds what a misbehaving client can make the agent hold.
const MAX_CONNECTIONS: usize = 32;

/// A client that does not send its request headers within this time is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop doesn't spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub const PLAIN_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Answers one request from its method, path and headers.
pub type Handler =
    Arc<dyn Fn(&Method, &str, &HeaderMap) -> Response<Full<Bytes>> + Send + Sync + 'static>;

/// A running server; dropping it stops accepting connections.
pub struct Server {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `listen` and serves `handler` on the current tokio runtime (which must have
/// I/O enabled). Returns the bound address, which tells the port when `listen` has
/// port 0. `what` names the endpoint in errors and logs.
pub fn serve(
    what: &'static str,
    listen: SocketAddr,
    handler: Handler,
) -> io::Result<(Server, SocketAddr)> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| io::Error::other(format!("the {what} endpoint needs a tokio runtime: {e}")))?;
    // Bound with std so that starting stays synchronous; tokio takes it over.
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let listener = TcpListener::from_std(listener)?;
    let task = runtime.spawn(accept_loop(what, listener, handler));
    Ok((Server { task }, bound))
}

/// Accepts connections and serves each on a task of its own, so that a slow or stuck
/// client only ever holds its own task (and one of [`MAX_CONNECTIONS`] slots).
async fn accept_loop(what: &'static str, listener: TcpListener, handler: Handler) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let handler = handler.clone();
                tokio::spawn(async move {
                    serve_connection(what, stream, handler).await;
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!("{what} endpoint: accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn serve_connection(what: &'static str, stream: TcpStream, handler: Handler) {
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let response = handler(req.method(), req.uri().path(), req.headers());
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!("{what} endpoint: connection ended: {e}");
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
