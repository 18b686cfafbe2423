//! HTTP requests to the agent's real endpoints (Prometheus with a report, health), over
//! real sockets, served on a current-thread runtime of their own as the agent runs them.

use std::{
    net::SocketAddr,
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

/// The thread serving the endpoints. A panic in a connection's task would only close
/// that connection (tokio catches it), so a panic hook counts them.
const ENDPOINTS_THREAD: &str = "fuzz-endpoints";
static ENDPOINT_PANICS: AtomicUsize = AtomicUsize::new(0);

pub(super) fn seeds() -> Vec<Vec<u8>> {
    super::seeds(&[
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain;version=0.0.4\r\n\r\n",
        b"GET /healthz HTTP/1.0\r\n\r\n",
        b"HEAD /readyz?verbose=1 HTTP/1.1\r\nhost: x\r\n\r\nGET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
        b"GET /healthz HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nhost: x\r\naccept: application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited\r\n\r\n",
    ])
}

/// The endpoints' addresses, started at the first call and serving until the process
/// ends.
fn endpoints() -> &'static [SocketAddr] {
    static ADDRS: OnceLock<Vec<SocketAddr>> = OnceLock::new();
    ADDRS.get_or_init(|| {
        use crate::export::{Exporter, prometheus::PrometheusExporter};
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(ENDPOINTS_THREAD) {
                ENDPOINT_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
        let (addrs_tx, addrs_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(ENDPOINTS_THREAD.into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let _entered = rt.enter();
                let any = "127.0.0.1:0".parse().unwrap();
                let (mut prom, prom_addr) = PrometheusExporter::start(any).unwrap();
                prom.export(&crate::report::sample()).unwrap();
                let (health, health_addr) =
                    crate::health::Health::start(any, std::time::Duration::from_secs(10)).unwrap();
                addrs_tx.send(vec![prom_addr, health_addr]).unwrap();
                rt.block_on(std::future::pending::<()>());
                drop((prom, health));
            })
            .unwrap();
        addrs_rx.recv().unwrap()
    })
}

/// Sends `request` to one of the endpoints (taking turns) on a fresh connection, closes
/// the writing half (so a server waiting for the rest of a request sees its end) and
/// reads the answer to its end.
pub fn exchange(request: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    static TURN: AtomicUsize = AtomicUsize::new(0);
    let addrs = endpoints();
    let addr = addrs[TURN.fetch_add(1, Ordering::Relaxed) % addrs.len()];
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // The server may answer and close before reading it all (headers too large).
    let _ = s.write_all(request);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Nothing (the request never completed) or an HTTP answer: a malformed request gets a
/// 4xx from the parser, never a dropped or garbled server; no handler panicked.
pub(super) fn http_requests(request: &[u8]) {
    let answer = exchange(request);
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1."),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        ENDPOINT_PANICS.load(Ordering::SeqCst),
        0,
        "the endpoints panicked (see above)"
    );
}
