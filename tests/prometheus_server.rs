//! A real Prometheus server (Debian's `prometheus`) on loopback scrapes a real agent
//! while a loop device does known reads; `histogram_quantile` over what the server
//! stored must land in the bucket of the agent's own p99 of those reads. Needs root.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    common::{
        LoopDevice,
        deploy::{repo, require_debian_tool},
    },
    prometheus::{agent_with_endpoint, samples, scrape},
};

const FAMILY: &str = "nodepulse_block_io_latency_seconds";

/// The Prometheus server, killed (by its pid) when dropped.
pub(crate) struct Server {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

/// A scrape configuration with one job scraping `target` every second.
fn one_job(target: &str) -> String {
    format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: nodepulse\n    static_configs:\n      - targets: [\"{target}\"]\n"
    )
}

impl Server {
    /// Scrapes `target` every second, storing in a fresh directory.
    fn start(target: &str) -> Self {
        Self::with(&one_job(target), &[])
    }

    /// Runs with `config` (prometheus.yml) and extra command-line `flags`, storing in
    /// a fresh directory.
    pub(crate) fn with(config: &str, flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        // A free loopback port: bound, read, released for the server.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .args(flags)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run prometheus");
        Self { child, addr, dir }
    }

    /// The result vector of an instant query (empty when the server is not up yet).
    pub(crate) fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        self.query_at(promql, None)
    }

    /// Like [`Self::query`], evaluated at `at` (Unix seconds) when given: queries at one
    /// past instant see the same rule evaluation, where queries at "now" may straddle one.
    pub(crate) fn query_at(&self, promql: &str, at: Option<f64>) -> Vec<serde_json::Value> {
        let query: String = promql
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let time = at.map(|t| format!("&time={t:.3}")).unwrap_or_default();
        self.get(&format!("/api/v1/query?query={query}{time}"))["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The JSON answer of an API path (null when the server is not up yet). Asked in
    /// HTTP/1.0, so a large answer comes whole, not in chunks.
    pub(crate) fn get(&self, path: &str) -> serde_json::Value {
        let Ok(mut stream) = TcpStream::connect(&self.addr) else {
            return serde_json::Value::Null;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let Some((_, body)) = response.split_once("\r\n\r\n") else {
            return serde_json::Value::Null;
        };
        serde_json::from_str(body).unwrap_or_default()
    }

    /// The first number of a query's result (an instant vector's first sample).
    pub(crate) fn scalar(&self, promql: &str) -> Option<f64> {
        self.scalar_at(promql, None)
    }

    pub(crate) fn scalar_at(&self, promql: &str, at: Option<f64>) -> Option<f64> {
        self.query_at(promql, at)
            .first()
            .and_then(|r| r["value"][1].as_str())
            .and_then(|v| v.parse().ok())
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's classic buckets of one series, `le` → cumulative count (`+Inf` as ∞).
fn buckets(addr: &str, dev: &str) -> BTreeMap<u64, (f64, f64)> {
    let (_, body) = scrape(addr, "text/plain");
    let text = String::from_utf8(body).unwrap();
    samples(&text, &format!("{FAMILY}_bucket"))
        .into_iter()
        .filter(|(l, _)| l.get("dev").map(String::as_str) == Some(dev) && l["op"] == "read")
        .map(|(l, v)| {
            let le: f64 = match l["le"].as_str() {
                "+Inf" => f64::INFINITY,
                le => le.parse().unwrap(),
            };
            (le.to_bits(), (le, v))
        })
        .collect()
}

/// Requests on `dev` the agent counted as unrecorded (completions the kernel made
/// without running the probe's program, released by the sweep): not in the histogram.
fn unrecorded(addr: &str, dev: &str) -> f64 {
    let (_, body) = scrape(addr, "text/plain");
    let text = String::from_utf8(body).unwrap();
    samples(&text, "nodepulse_block_io_unrecorded_total")
        .into_iter()
        .filter(|(l, _)| l.get("dev").map(String::as_str) == Some(dev))
        .map(|(_, v)| v)
        .sum()
}

/// Cumulative count at `le`: the count at the largest listed `le` not above it (every
/// series lists the same powers of two, so this is normally `le` itself).
fn cumulative_at(buckets: &BTreeMap<u64, (f64, f64)>, le: f64) -> f64 {
    buckets
        .values()
        .filter(|b| b.0 <= le)
        .map(|b| b.1)
        .fold(0.0, f64::max)
}

#[test]
fn server_quantile_lands_in_the_agents_p99_bucket() {
    require_root!();
    require_debian_tool("prometheus", "prometheus");
    let (agent, agent_addr, _config) = agent_with_endpoint();
    let lo = LoopDevice::new(64);
    // The same reads first, so the series exists (and is the server's first sample)
    // before the measured ones: a series that first appears mid-window has no earlier
    // sample, so `increase` misses what it counted before its first scrape.
    lo.dd_read(3000, "4k");
    let server = Server::start(&agent_addr);
    let count = format!("{FAMILY}_count{{dev=\"{}\",op=\"read\"}}", lo.number);
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.query(&count).is_empty() {
        assert!(
            Instant::now() < deadline,
            "prometheus stored no {count} in 60 s:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let before = buckets(&agent_addr, &lo.number);
    lo.dd_read(3000, "4k");
    // One agent interval and one scrape interval, with margin.
    std::thread::sleep(Duration::from_secs(4));
    let after = buckets(&agent_addr, &lo.number);

    let selector = format!("{FAMILY}_bucket{{dev=\"{}\",op=\"read\"}}", lo.number);
    let server_p99 = |expr: String| -> f64 {
        let promql = format!("histogram_quantile(0.99, sum by (le) ({expr}))");
        let result = server.query(&promql);
        let Some(v) = result.first().and_then(|r| r["value"][1].as_str()) else {
            panic!("{promql}: no result\n{}", server.log());
        };
        v.parse().unwrap()
    };
    agent.terminate();
    let step = 2f64.powf(1.0 / 8.0);

    // Everything the agent counted for the device (attached after it started): the
    // server's p99 over the stored cumulative buckets lies in the exported p99 bucket
    // (a power of two), give or take a schema-3 step at its edges.
    let (lower, upper) = p99_bucket(after.values().copied().collect());
    let q = server_p99(selector.clone());
    assert!(
        lower / step <= q && q <= upper * step,
        "server p99 {q} s, agent's p99 bucket ({lower}, {upper}] s"
    );

    // The measured reads alone, as a dashboard asks: sane against the workload, i.e.
    // between the reads' median bucket and their slowest bucket. Not held to one
    // bucket: `rate` extrapolates each `le` series on its own (by how far its first
    // sample is from zero), so over a few scrapes the ratios between buckets move.
    let delta: Vec<(f64, f64)> = after
        .values()
        .map(|&(le, n)| (le, n - cumulative_at(&before, le)))
        .collect();
    let total = delta.last().unwrap().1;
    assert!(total >= 3000.0, "{total} reads counted, 3000 done");
    let median = delta.iter().position(|&(_, n)| n >= total / 2.0).unwrap();
    let median_lower = if median == 0 {
        0.0
    } else {
        delta[median - 1].0
    };
    let slowest = delta[delta.len() - 2].0;
    let (rlower, rupper) = p99_bucket(delta);
    let r = server_p99(format!("rate({selector}[1h])"));
    assert!(
        median_lower <= r && r <= slowest,
        "rate p99 {r} s outside ({median_lower}, {slowest}] s"
    );
    // Sane for 4 KiB direct reads of a loop device in the page cache.
    assert!((1e-7..0.5).contains(&r), "p99 {r} s");
    eprintln!(
        "server p99 {q} s in the agent's ({lower}, {upper}] s; over rate: {r} s, agent's \
         ({rlower}, {rupper}] s; {total} reads; le values {} then {}",
        before.len(),
        after.len()
    );
}

/// Prometheus' native bucket edges in seconds sit this much above the kernel's
/// nanosecond edges: the export shifts bucket indexes by 239, and 2^(239/8) ns is
/// 0.9846 s (the agent's `NATIVE_SECONDS_SHIFT`).
fn native_shift() -> f64 {
    1e9 / 2f64.powf(239.0 / 8.0)
}

/// With `--enable-feature=native-histograms` the server negotiates protobuf and must
/// store every nodepulse histogram family as a native histogram (Prometheus 2.42
/// decided per family from its first series, and took an empty one for classic);
/// `histogram_quantile` over the rate of the native series lands in the agent's own
/// p99 bucket of the measured reads, read 1.56 % high as documented.
#[test]
fn native_quantile_lands_in_the_agents_p99_bucket() {
    require_root!();
    require_debian_tool("prometheus", "prometheus");
    let (agent, agent_addr, _config) = agent_with_endpoint();
    let lo = LoopDevice::new(64);
    // Reads before the server's first sample, so that the series' first stored
    // sample already counts them (and the agent has reported them: 1 s interval).
    lo.dd_read(3000, "4k");
    std::thread::sleep(Duration::from_secs(2));
    let server = Server::with(
        &one_job(&agent_addr),
        &["--enable-feature=native-histograms"],
    );
    let selector = format!("{FAMILY}{{dev=\"{}\",op=\"read\"}}", lo.number);
    let stored = || server.scalar(&format!("histogram_count({selector})"));
    let agent_count = || buckets(&agent_addr, &lo.number).values().last().unwrap().1;
    let wait_stored = |want: f64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while stored() != Some(want) {
            assert!(
                Instant::now() < deadline,
                "prometheus stored no native {selector} with {want} reads in 60 s (has \
                 {:?}):\n{}",
                stored(),
                server.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let before = buckets(&agent_addr, &lo.number);
    wait_stored(before.values().last().unwrap().1);

    // Every histogram family the agent serves is stored native, none as classic
    // `_bucket`/`_count` series.
    let (_, body) = scrape(&agent_addr, "text/plain");
    let text = String::from_utf8(body).unwrap();
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
        .collect();
    let first_empty: Vec<&str> = families
        .iter()
        .filter(|f| {
            let count = format!("{f}_count");
            text.lines()
                .find(|l| l.starts_with(&count))
                .is_some_and(|l| l.ends_with(" 0"))
        })
        .copied()
        .collect();
    let names = server.get("/api/v1/label/__name__/values");
    let names: Vec<&str> = names["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
        .unwrap_or_default();
    for family in &families {
        assert!(
            names.contains(family),
            "{family} not stored native: {names:?}"
        );
        for classic in ["_bucket", "_count", "_sum"] {
            let name = format!("{family}{classic}");
            assert!(!names.contains(&name.as_str()), "{name} stored (classic)");
        }
    }

    let lost_before = unrecorded(&agent_addr, &lo.number);
    lo.dd_read(3000, "4k");
    let mut after = buckets(&agent_addr, &lo.number);
    let deadline = Instant::now() + Duration::from_secs(10);
    // Every read is in the histogram or counted as unrecorded on the device.
    while after.values().last().unwrap().1 + unrecorded(&agent_addr, &lo.number) - lost_before
        < before.values().last().unwrap().1 + 3000.0
    {
        assert!(
            Instant::now() < deadline,
            "the agent counted {} reads and {} unrecorded",
            agent_count(),
            unrecorded(&agent_addr, &lo.number)
        );
        std::thread::sleep(Duration::from_millis(200));
        after = buckets(&agent_addr, &lo.number);
    }
    wait_stored(after.values().last().unwrap().1);
    let promql = format!("histogram_quantile(0.99, rate({selector}[1m]))");
    let q = server
        .scalar(&promql)
        .unwrap_or_else(|| panic!("{promql}: no result\n{}", server.log()));
    let panels = dashboard_answers(&server, &lo.name);
    agent.terminate();

    // The measured reads alone: the window's first sample already had `before`.
    let delta: Vec<(f64, f64)> = after
        .values()
        .map(|&(le, n)| (le, n - cumulative_at(&before, le)))
        .collect();
    let (lower, upper) = p99_bucket(delta);
    let (nlower, nupper) = (lower * native_shift(), upper * native_shift());
    assert!(
        nlower * (1.0 - 1e-9) <= q && q <= nupper * (1.0 + 1e-9),
        "native p99 {q} s outside the agent's p99 bucket ({lower}, {upper}] s, shifted \
         to ({nlower}, {nupper}] s"
    );
    eprintln!(
        "native p99 {q} s in the agent's ({lower}, {upper}] s shifted to ({nlower}, \
         {nupper}] s; {} histogram families stored native, first series empty in {:?}; \
         {panels} dashboard queries of the device answered",
        families.len(),
        first_empty
    );
}

/// The dashboard's queries of the block latency family, for this node and `device`,
/// each answered by the server (the heatmap with a histogram); how many there were.
fn dashboard_answers(server: &Server, device: &str) -> usize {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/nodepulse.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut answered = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            if !expr.contains(&format!("{FAMILY}{{")) {
                continue;
            }
            let promql = expr
                .replace("$node", ".*")
                .replace("$device", device)
                .replace("$__rate_interval", "1m");
            let result = server.query(&promql);
            assert!(!result.is_empty(), "{}: {promql}: no answer", p["title"]);
            if p["type"] == "heatmap" {
                assert!(
                    result[0]["histogram"].is_array(),
                    "{}: {result:?}",
                    p["title"]
                );
            }
            answered += 1;
        }
    }
    assert!(answered >= 4, "{answered} dashboard queries of {FAMILY}");
    answered
}

/// The bucket `(lower, upper]` holding rank 0.99 n of `(le, cumulative)` pairs.
fn p99_bucket(cumulative: Vec<(f64, f64)>) -> (f64, f64) {
    let total = cumulative.last().unwrap().1;
    let at = cumulative
        .iter()
        .position(|&(_, n)| n >= 0.99 * total)
        .unwrap();
    let lower = if at == 0 { 0.0 } else { cumulative[at - 1].0 };
    (lower, cumulative[at].0)
}
