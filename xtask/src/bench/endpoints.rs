//! The agent's endpoints under abuse, as anyone who can reach the port could do it:
//! the release agent with `[prometheus]` and `[health]` on loopback, 1,000 idle
//! connections and 50 slowloris clients (one header byte every 500 ms) held open on the
//! metrics port, then rounds of 200 concurrent scrapes of `/metrics` and 200 of
//! `/healthz`, each on a fresh connection. Reports each request's latency (median,
//! p99, slowest) per round and the agent's RSS before and under the abuse.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

use super::{process_rss_bytes, spawn_agent};

const IDLE: usize = 1000;
const SLOWLORIS: usize = 50;
const CONCURRENT: usize = 200;
const METRICS: &str = "127.0.0.1:19464";
const HEALTH: &str = "127.0.0.1:19465";

/// One request on a fresh connection, timed from connect to the end of the answer;
/// `None` unless the answer is a 200.
fn timed_get(addr: SocketAddr, path: &str) -> Option<Duration> {
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    answer
        .starts_with(b"HTTP/1.1 200")
        .then(|| started.elapsed())
}

/// `CONCURRENT` requests of `path` released at once; their latencies, sorted.
fn burst(addr: SocketAddr, path: &'static str) -> Result<Vec<Duration>> {
    let gate = Arc::new(Barrier::new(CONCURRENT));
    let threads: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let gate = gate.clone();
            std::thread::spawn(move || {
                gate.wait();
                timed_get(addr, path)
            })
        })
        .collect();
    let mut times = Vec::new();
    for t in threads {
        times.push(
            t.join()
                .expect("request thread")
                .context(format!("a {path} request got no 200 answer under abuse"))?,
        );
    }
    times.sort();
    Ok(times)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn run(agent: &Path, dir: &Path, rounds: usize) -> Result<()> {
    raise_fd_limit()?;
    let config = dir.join("endpoints.toml");
    std::fs::write(
        &config,
        format!(
            "[prometheus]\nenabled = true\nlisten = \"{METRICS}\"\n\
             [health]\nenabled = true\nlisten = \"{HEALTH}\"\n"
        ),
    )?;
    println!(
        "\n== endpoints: {IDLE} idle + {SLOWLORIS} slowloris connections held on /metrics's \
         port, then {rounds} rounds of {CONCURRENT} concurrent /metrics and {CONCURRENT} \
         /healthz requests"
    );
    let mut child = spawn_agent(agent, 1, &config)?;
    // Its reports are not read: drain them so a full pipe never stalls it.
    let mut reports = child.stdout.take().context("agent stdout")?;
    std::thread::spawn(move || std::io::copy(&mut reports, &mut std::io::sink()));
    let result = abuse(child.id(), rounds, &mut child);
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn abuse(pid: u32, rounds: usize, child: &mut std::process::Child) -> Result<()> {
    let (metrics, health): (SocketAddr, SocketAddr) = (METRICS.parse()?, HEALTH.parse()?);
    let rss_quiet = process_rss_bytes(pid);
    print!("opening {IDLE} idle connections… ");
    let mut held = Vec::new();
    for _ in 0..IDLE {
        held.push(TcpStream::connect(metrics).context("an idle connection")?);
    }
    // Slowloris: a request line and headers that never end, one byte at a time.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut conns: Vec<TcpStream> = (0..SLOWLORIS)
                .filter_map(|_| TcpStream::connect(metrics).ok())
                .collect();
            let header = b"GET /metrics HTTP/1.1\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            let mut at = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for c in &mut conns {
                    let _ = c.write_all(&header[at % header.len()..at % header.len() + 1]);
                }
                at += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    println!("done; RSS {:.1} MiB quiet", rss_quiet as f64 / 1048576.0);
    println!(
        "{:>6} {:>9} {:>12} {:>12} {:>12} {:>10}",
        "round", "endpoint", "median ms", "p99 ms", "slowest ms", "RSS MiB"
    );
    let mut medians = (Vec::new(), Vec::new());
    let mut slowest = Duration::ZERO;
    for round in 1..=rounds {
        for (name, addr, path) in [
            ("metrics", metrics, "/metrics"),
            ("healthz", health, "/healthz"),
        ] {
            let times = burst(addr, path)?;
            let (median, p99, max) = (
                times[times.len() / 2],
                times[times.len() * 99 / 100],
                times[times.len() - 1],
            );
            slowest = slowest.max(max);
            if name == "metrics" {
                medians.0.push(median);
            } else {
                medians.1.push(median);
            }
            println!(
                "{round:>6} {name:>9} {:>12.1} {:>12.1} {:>12.1} {:>10.1}",
                ms(median),
                ms(p99),
                ms(max),
                process_rss_bytes(pid) as f64 / 1048576.0
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = trickle.join();
    drop(held);
    medians.0.sort();
    medians.1.sort();
    println!(
        "median of round medians: /metrics {:.1} ms, /healthz {:.1} ms; slowest request \
         {:.1} ms (target: each within 100 ms); RSS {:.1} → {:.1} MiB",
        ms(medians.0[medians.0.len() / 2]),
        ms(medians.1[medians.1.len() / 2]),
        ms(slowest),
        rss_quiet as f64 / 1048576.0,
        process_rss_bytes(pid) as f64 / 1048576.0
    );
    ensure!(
        child.try_wait()?.is_none(),
        "the agent exited during the abuse"
    );
    Ok(())
}

/// The bench itself holds over a thousand sockets: lift the soft limit to the hard one.
fn raise_fd_limit() -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read only `limit`.
    unsafe {
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0,
            "getrlimit failed"
        );
        limit.rlim_cur = limit.rlim_max;
        ensure!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0,
            "cannot raise the open-file limit to {}: the bench needs {} sockets",
            limit.rlim_max,
            IDLE + SLOWLORIS + 2 * CONCURRENT
        );
    }
    Ok(())
}
