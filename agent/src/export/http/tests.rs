//! The server under abuse, over real sockets on loopback: idle and trickling clients
//! time out, are evicted at the cap, and never delay a scrape; a real overload is
//! refused with a 503 that says why.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{Arc, Barrier, mpsc},
    thread,
    time::{Duration, Instant},
};

use std::sync::atomic::AtomicU64;

use super::*;
use crate::{
    export::{Exporter, prometheus::PrometheusExporter},
    health::Health,
    report::sample,
};

/// Runs `start` on a current-thread runtime of its own (as the agent does) until the
/// returned guard is dropped.
struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

fn run_servers<T: 'static, F>(start: F) -> (Running, Vec<SocketAddr>)
where
    F: FnOnce() -> (T, Vec<SocketAddr>) + Send + 'static,
{
    let (addrs_tx, addrs_rx) = mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = rt.enter();
        let (servers, addrs) = start();
        addrs_tx.send(addrs).unwrap();
        let _ = rt.block_on(stopped);
        drop(servers);
    });
    let addrs = addrs_rx.recv().unwrap();
    (
        Running {
            stop: Some(stop),
            thread: Some(thread),
        },
        addrs,
    )
}

fn ok_handler() -> Handler {
    Arc::new(|_, _, _| plain(StatusCode::OK, "ok\n"))
}

/// One server with `limits` answering "ok"; the stats stay readable from the test.
fn small_server(limits: Limits) -> (Running, SocketAddr, Arc<Stats>) {
    let (tx, rx) = mpsc::channel();
    let (running, addrs) = run_servers(move || {
        let (server, bound) =
            serve_with("test", "127.0.0.1:0".parse().unwrap(), ok_handler(), limits).unwrap();
        tx.send(server.stats()).unwrap();
        (server, vec![bound])
    });
    (running, addrs[0], rx.recv().unwrap())
}

/// GET `path` on a fresh connection; the status line and body, and how long it took.
fn get(addr: SocketAddr, path: &str) -> (String, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    (out, start.elapsed())
}

/// Blocks until the server closes `s`; how long that took.
fn closed_after(mut s: TcpStream) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => {}
        }
    }
}

/// The server counts just after closing; give it a moment.
fn wait_for_count(counter: &AtomicU64, want: u64) {
    let start = Instant::now();
    while counter.load(Ordering::Relaxed) != want && start.elapsed() < Duration::from_secs(2) {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(counter.load(Ordering::Relaxed), want);
}

fn fast_limits() -> Limits {
    Limits {
        max_connections: 1024,
        request_timeout: Duration::from_millis(300),
        min_idle_to_evict: Duration::from_secs(1),
    }
}

#[test]
fn an_idle_connection_is_closed_after_the_request_timeout() {
    let (_running, addr, stats) = small_server(fast_limits());
    let took = closed_after(TcpStream::connect(addr).unwrap());
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    wait_for_count(&stats.timed_out, 1);
}

#[test]
fn trickling_headers_does_not_keep_a_connection_open() {
    let (_running, addr, stats) = small_server(fast_limits());
    let mut s = TcpStream::connect(addr).unwrap();
    let start = Instant::now();
    // One byte every 50 ms, never finishing the headers (slowloris).
    let mut closed = false;
    for b in b"GET /metrics HTTP/1.1\r\nx-slow: "
        .iter()
        .cycle()
        .take(200)
    {
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(closed, "still open after {:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(3));
    wait_for_count(&stats.timed_out, 1);
}

#[test]
fn a_kept_alive_connection_is_closed_when_idle() {
    let (_running, addr, _stats) = small_server(fast_limits());
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let took = closed_after(s);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}

#[test]
fn at_the_cap_the_idlest_connection_makes_room() {
    let limits = Limits {
        max_connections: 4,
        request_timeout: Duration::from_secs(30),
        min_idle_to_evict: Duration::ZERO,
    };
    let (_running, addr, stats) = small_server(limits);
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    thread::sleep(Duration::from_millis(100));
    let (reply, _) = get(addr, "/");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(stats.evicted.load(Ordering::Relaxed), 1);
    // The oldest idle connection was the one closed.
    assert!(closed_after(idle.into_iter().next().unwrap()) < Duration::from_secs(1));
}

#[test]
fn when_every_slot_is_busy_a_newcomer_is_told_why() {
    let limits = Limits {
        max_connections: 2,
        min_idle_to_evict: Duration::from_secs(30),
        request_timeout: Duration::from_secs(30),
    };
    let (_running, addr, stats) = small_server(limits);
    // Two clients that just made a request and keep their connections.
    let _busy: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            s
        })
        .collect();
    let (reply, _) = get(addr, "/");
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("retry-after: 1"), "{reply}");
    assert!(
        reply.ends_with(
            "busy: all 2 connections of this endpoint served a request within the last \
             second; retry shortly\n"
        ),
        "{reply}"
    );
    assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
}

#[test]
fn oversized_headers_are_refused() {
    let (_running, addr, _stats) = small_server(fast_limits());
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let huge = "a".repeat(64 * 1024);
    // The server may close before reading it all.
    let _ = write!(s, "GET / HTTP/1.1\r\nhost: x\r\nx-big: {huge}\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 431"), "{out}");
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// 200 concurrent scrapes and 200 concurrent `/healthz`, all released at once; each
/// must answer 200. Their durations, sorted.
fn scrape_round(metrics: SocketAddr, health: SocketAddr) -> Vec<Duration> {
    let barrier = Arc::new(Barrier::new(400));
    let clients: Vec<_> = (0..400)
        .map(|i| {
            let barrier = barrier.clone();
            let (addr, path) = if i % 2 == 0 {
                (metrics, "/metrics")
            } else {
                (health, "/healthz")
            };
            thread::spawn(move || {
                barrier.wait();
                let (reply, took) = get(addr, path);
                (path, reply, took)
            })
        })
        .collect();
    let mut took: Vec<Duration> = clients
        .into_iter()
        .map(|c| {
            let (path, reply, took) = c.join().unwrap();
            assert!(reply.starts_with("HTTP/1.1 200"), "{path}: {reply}");
            if path == "/metrics" {
                assert!(reply.contains("nodepulse_"), "{reply}");
            }
            took
        })
        .collect();
    took.sort();
    took
}

fn summary(took: &[Duration]) -> String {
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
    format!(
        "median {:?}, p99 {:?}, slowest {:?}",
        at(0.5),
        at(0.99),
        took[took.len() - 1]
    )
}

/// The scenario with the agent's own limits and its real endpoints: 1,000 idle
/// connections and 50 slowloris tricklers on the metrics port (together more than the
/// cap, so the scrapes must evict idle ones), 200 idle and 50 trickling on the health
/// port; then 200 concurrent scrapes and 200 concurrent `/healthz` each answer 200
/// promptly (the output compares them with the same round unabused), and the
/// connections held, which bound memory, never exceed the cap.
#[test]
fn a_thousand_idle_connections_and_slowloris_do_not_delay_scrapes() {
    fd_limit::raise();
    let (stats_tx, stats_rx) = mpsc::channel();
    let (_running, addrs) = run_servers(move || {
        let (mut prom, prom_addr) =
            PrometheusExporter::start("127.0.0.1:0".parse().unwrap()).unwrap();
        prom.export(&sample()).unwrap();
        prom.wait_rendered();
        stats_tx.send(prom.server_stats()).unwrap();
        let (health, health_addr) =
            Health::start("127.0.0.1:0".parse().unwrap(), Duration::from_secs(10)).unwrap();
        ((prom, health), vec![prom_addr, health_addr])
    });
    let (metrics, health) = (addrs[0], addrs[1]);
    let stats = stats_rx.recv().unwrap();
    let quiet = scrape_round(metrics, health);

    let rss_before = rss_kib();
    let mut idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(metrics).unwrap())
        .collect();
    idle.extend((0..200).map(|_| TcpStream::connect(health).unwrap()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickler = {
        let stop = stop.clone();
        let mut slow: Vec<TcpStream> = (0..50)
            .flat_map(|_| [metrics, health])
            .map(|a| TcpStream::connect(a).unwrap())
            .collect();
        thread::spawn(move || {
            let text = b"GET /metrics HTTP/1.1\r\nx-slow: ";
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                for s in &mut slow {
                    let _ = s.write_all(&[text[i % text.len()]]);
                }
                i += 1;
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // Past the cap's eviction age, so the scrapes can take idle slots.
    thread::sleep(MIN_IDLE_TO_EVICT + Duration::from_millis(200));
    let rss_loaded = rss_kib();
    let evicted = || stats.evicted.load(Ordering::Relaxed);
    let abused = scrape_round(metrics, health);
    let evicted_abused = evicted();
    // Again after the idle ones' request timeout: they reconnect, as an attacker would,
    // filling every slot (those past the cap are refused; they never read the answer).
    thread::sleep(REQUEST_TIMEOUT);
    drop(idle);
    let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(metrics).unwrap())
        .collect();
    thread::sleep(MIN_IDLE_TO_EVICT + Duration::from_millis(200));
    let again = scrape_round(metrics, health);
    let evicted_again = evicted() - evicted_abused;
    stop.store(true, Ordering::Relaxed);
    trickler.join().unwrap();
    eprintln!(
        "400 requests with no abuse: {}\n  with 1,300 idle and 100 trickling connections: \
         {} ({evicted_abused} idle evicted)\n  after the idle ones reconnected: {} \
         ({evicted_again} evicted)\nRSS {rss_before} KiB, {rss_loaded} KiB while abused",
        summary(&quiet),
        summary(&abused),
        summary(&again)
    );
    // Starvation shows as requests waiting out the 5 s request timeout. Half of it is
    // far below that, yet above what 400 client threads cost on a runner shared with
    // builds (slowest 1.03 s at load 14, when the round unabused took 0.24 s).
    for took in [&abused, &again] {
        assert!(
            took[took.len() - 1] < REQUEST_TIMEOUT / 2,
            "{}",
            summary(took)
        );
    }
    // Memory is bounded by the connections held, which never exceed the cap (alone,
    // RSS grows ~12 KiB per idle connection in a debug build: 13 MiB for these 1,300).
    // Both rounds met a full table, so scrapes got in by eviction; how many evictions
    // depends on how many scrapes overlapped (a finished one frees its slot).
    assert!(stats.peak_open.load(Ordering::Relaxed) <= MAX_CONNECTIONS as u64);
    assert!(evicted_abused >= 1 && evicted_again >= 1);
    drop(idle);
}
