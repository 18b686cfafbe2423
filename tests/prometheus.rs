//! The Prometheus endpoint of a running agent, scraped over real HTTP while a loop
//! device does known I/O: text format well-formed, buckets monotonic, counts equal to
//! the kernel's, names and units as `promtool check metrics` wants them. Needs root.

use crate::common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use common::{LoopDevice, RunningAgent, deploy::require_debian_tool, logged_address};

pub(crate) fn scrape(addr: &str, accept: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect to the endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    (head, response[split + 4..].to_vec())
}

/// `name{labels} value` lines of one metric, labels as a map.
pub(crate) fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, "}"));
            (metric == name).then(|| {
                let labels = labels
                    .trim_end_matches('}')
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .filter_map(|p| {
                        let (k, v) = p.split_once("=\"")?;
                        Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
                    })
                    .collect();
                (labels, value.parse().unwrap())
            })
        })
        .collect()
}

/// An agent serving `/metrics` on a free loopback port, its address, and its config
/// file (which must outlive it).
pub(crate) fn agent_with_endpoint() -> (RunningAgent, String, tempfile::NamedTempFile) {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[prometheus]\nenabled = true\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let agent = RunningAgent::with_config(config.path());
    let addr = logged_address(&agent, "Prometheus endpoint on http://");
    (agent, addr, config)
}

#[test]
fn scrape_matches_the_kernels_counts() {
    require_root!();
    let (agent, addr, _config) = agent_with_endpoint();

    // A device attached after the agent: all its I/O since then is in the agent's
    // cumulative counts (loop devices keep their stat counters across reuse, hence
    // the baseline).
    let lo = LoopDevice::new(64);
    let before = lo.stat();
    lo.dd_read(500, "4k");
    lo.dd_write(100, "4k", false);
    std::thread::sleep(Duration::from_millis(2500));
    let after = lo.stat();

    let (head, body) = scrape(&addr, "text/plain");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let text = String::from_utf8(body).unwrap();
    let name = "nodepulse_block_io_latency_seconds";
    let mut scraped = Vec::new();
    for op in ["read", "write"] {
        let want = after.get(op) - before.get(op);
        let mine = |(l, _): &(BTreeMap<String, String>, f64)| {
            l.get("dev") == Some(&lo.number) && l.get("op").map(String::as_str) == Some(op)
        };
        let count = samples(&text, &format!("{name}_count"))
            .into_iter()
            .find(mine)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no {op} series for {}:\n{text}", lo.number));
        // Exact as a rule; the rare completions that sysfs counts but that never fire
        // the tracepoint (docs/architecture.md, open question) may leave a few out.
        let count_u = count as u64;
        assert!(
            count_u <= want && want - count_u <= 16,
            "{op} count {count_u} vs {want} in /sys/block/{}/stat",
            lo.name
        );
        scraped.push((op, count_u));
        let buckets: Vec<(f64, f64)> = samples(&text, &format!("{name}_bucket"))
            .into_iter()
            .filter(mine)
            .map(|(l, v)| {
                let le = l["le"].as_str();
                (
                    if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap()
                    },
                    v,
                )
            })
            .collect();
        assert!(buckets.len() > 1);
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{buckets:?}"
        );
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count));
        // In seconds: a loop device's mean latency is far below a second, and far
        // above the nanosecond (the unit a missed conversion would leave).
        let sum = samples(&text, &format!("{name}_sum"))
            .into_iter()
            .find(mine)
            .map(|(_, v)| v)
            .unwrap();
        let mean = sum / count;
        assert!((1e-7..0.1).contains(&mean), "{op} mean {mean} s");
    }
    assert!(
        text.contains("nodepulse_probe_up{probe=\"block\",attach=\"tp_btf\",state=\"up\"} 1"),
        "{text}"
    );

    // Native histograms when the scraper asks for protobuf.
    let (head, body) = scrape(
        &addr,
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited",
    );
    assert!(head.contains("application/vnd.google.protobuf"), "{head}");
    assert!(!body.is_empty());

    // The endpoint serves exactly what the agent counted: each scraped count is the
    // cumulative count of one of its reports.
    let (stdout, _) = agent.terminate();
    for (op, count) in scraped {
        let reported: Vec<u64> = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .flat_map(|r| r["series"].as_array().cloned().unwrap_or_default())
            .filter(|s| s["labels"]["dev"] == lo.number.as_str() && s["labels"]["op"] == op)
            .filter_map(|s| s["cumulative_count"].as_u64())
            .collect();
        assert!(
            reported.contains(&count),
            "{op}: scraped {count}, reported {reported:?}"
        );
    }
}

/// `promtool check metrics` (Prometheus' own linter: names, units, suffixes, help)
/// has nothing to say about a real agent's text exposition, latency families included.
#[test]
fn promtool_finds_nothing_to_complain_about() {
    require_root!();
    require_debian_tool("promtool", "prometheus");
    let (agent, addr, _config) = agent_with_endpoint();
    let lo = LoopDevice::new(16);
    lo.dd_read(100, "4k");
    lo.dd_write(20, "4k", false);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no series for {} after 20 s",
            lo.number
        );
        std::thread::sleep(Duration::from_millis(500));
        let (head, body) = scrape(&addr, "text/plain");
        let text = String::from_utf8(body).unwrap();
        if head.starts_with("HTTP/1.1 200") && text.contains(&format!("dev=\"{}\"", lo.number)) {
            break text;
        }
    };
    agent.terminate();
    for family in [
        "nodepulse_block_io_latency_seconds",
        "nodepulse_block_io_size_bytes",
        "nodepulse_bpf_program_run_time_seconds_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family}:\n{text}"
        );
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics ({}):\n{said}",
        out.status
    );
}
