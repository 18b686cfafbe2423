//! The fleet recording rules and alerts (deploy/prometheus/nodepulse-rules.yml) in a
//! real Prometheus on real scraped data. One agent and three loop devices under fio
//! stand for three nodes: three scrape jobs each keep one device's series (and the
//! agent's own) and name it `node-a`, `node-b`, `node-c`. A classic and a native
//! server both evaluate the rules; competing reads on node-c's device are the
//! regression the fleet alert must find, and stopping the agent makes the agents'
//! own alerts fire. Needs root.
//!
//! The rules are evaluated as written, with every duration divided by 60 (1m → 1s,
//! `[5m]` → `[5s]`, `for: 15m` → `for: 15s`), so a test takes a minute, not an hour.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    common::{LoopDevice, deploy::require_debian_tool},
    prometheus::agent_with_endpoint,
    prometheus_server::Server,
    regression_live::Fio,
};

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/nodepulse-rules.yml"
);
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const P99: &str = "nodepulse:block_io_latency_seconds:p99_5m";
const P50: &str = "nodepulse:block_io_latency_seconds:p50_5m";
const FLEET_ALERT: &str = "NodepulseBlockLatencyAboveFleet";

/// `text` with every duration in minutes or hours divided by 60 (into seconds): the
/// durations of rule files are range selectors (`[5m]`), `for:` and `interval:`.
fn compress_time(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(|c: char| c.is_ascii_digit()) {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let digits = from.len() - from.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (number, after) = from.split_at(digits);
        let starts_duration =
            before.ends_with('[') || before.ends_with("for: ") || before.ends_with("interval: ");
        let unit = after.chars().next();
        let ends = after[1.min(after.len())..]
            .chars()
            .next()
            .is_none_or(|c| c == ']' || c.is_whitespace());
        match (starts_duration && ends, unit) {
            (true, Some('m')) => {
                out.push_str(number);
                out.push('s');
                rest = &after[1..];
            }
            (true, Some('h')) => {
                let n: u64 = number.parse().unwrap();
                out.push_str(&format!("{}s", n * 60));
                rest = &after[1..];
            }
            _ => {
                out.push_str(number);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn compress_time_divides_rule_durations_by_60() {
    assert_eq!(
        compress_time("rate(x[5m]) [1h] for: 15m\n    interval: 1m\n 3 * y > 0.001 [30s]"),
        "rate(x[5s]) [60s] for: 15s\n    interval: 1s\n 3 * y > 0.001 [30s]"
    );
    // The real rules have durations in minutes and hours, and none is left.
    let text = std::fs::read_to_string(RULES).unwrap();
    assert!(minutes_or_hours(&text).len() > 10);
    let left = minutes_or_hours(&compress_time(&text));
    assert!(left.is_empty(), "durations left: {left:?}");
}

/// Durations in minutes or hours after `[`, `for: ` or `interval: `.
fn minutes_or_hours(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for start in ["[", "for: ", "interval: "] {
        for (at, _) in text.match_indices(start) {
            let from = &text[at + start.len()..];
            let digits = from.len() - from.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits > 0 && from[digits..].starts_with(['m', 'h']) {
                found.push(from[..digits + 1].to_owned());
            }
        }
    }
    found
}

fn promtool_check_rules(path: &std::path::Path) {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(path)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// prometheus.yml: the rules, and one job per node scraping the agent, keeping that
/// node's device and the series without a device (the agent's own).
fn config(agent: &str, rules: &std::path::Path, devices: &[&LoopDevice]) -> String {
    let mut yml = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n",
        rules.display()
    );
    for (node, dev) in NODES.iter().zip(devices) {
        yml.push_str(&format!(
            "  - job_name: nodepulse-{node}\n    static_configs:\n      - targets: [\"{agent}\"]\n    relabel_configs:\n      - target_label: instance\n        replacement: {node}\n    metric_relabel_configs:\n      - source_labels: [dev]\n        regex: \"|{}\"\n        action: keep\n",
            dev.number
        ));
    }
    yml
}

/// `(instance, value)` of a query's samples.
fn by_instance(server: &Server, promql: &str) -> Vec<(String, f64)> {
    by_instance_at(server, promql, None)
}

fn by_instance_at(server: &Server, promql: &str, at: Option<f64>) -> Vec<(String, f64)> {
    server
        .query_at(promql, at)
        .iter()
        .filter_map(|r| {
            let instance = r["metric"]["instance"].as_str().unwrap_or("").to_owned();
            let v = r["value"][1].as_str()?.parse().ok()?;
            Some((instance, v))
        })
        .collect()
}

/// Instances with a firing alert of that name.
fn firing(server: &Server, alert: &str) -> Vec<serde_json::Value> {
    server.query(&format!(
        "ALERTS{{alertname=\"{alert}\",alertstate=\"firing\"}}"
    ))
}

fn wait_for<T>(what: &str, servers: &[&Server], secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs} s\n{}",
            servers
                .iter()
                .map(|s| s.log())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn fleet_rules_record_and_alert_on_a_real_regression() {
    require_root!();
    require_debian_tool("prometheus", "prometheus");
    require_debian_tool("promtool", "prometheus");
    promtool_check_rules(std::path::Path::new(RULES));
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("nodepulse-rules.yml");
    std::fs::write(
        &rules,
        compress_time(&std::fs::read_to_string(RULES).unwrap()),
    )
    .unwrap();
    promtool_check_rules(&rules);

    // 576 MiB each: the competing reads use the second 256 MiB.
    let devices: Vec<LoopDevice> = (0..3).map(|_| LoopDevice::new(576)).collect();
    let (agent, agent_addr, _config) = agent_with_endpoint();
    let refs: Vec<&LoopDevice> = devices.iter().collect();
    let yml = config(&agent_addr, &rules, &refs);
    let classic = Server::with(&yml, &[]);
    let native = Server::with(&yml, &["--enable-feature=native-histograms"]);
    let servers = [("classic", &classic), ("native", &native)];
    let _steady: Vec<Fio> = devices.iter().map(|d| Fio::steady_reads(d, 150)).collect();

    // Baseline: every node's loop reads recorded, sane, and no fleet alert.
    let loop_reads = "{device_type=\"loop\",op=\"read\"}";
    for (kind, server) in servers {
        wait_for(&format!("{kind}: {P99} of 3 nodes"), &[server], 60, || {
            let v = by_instance(server, &format!("{P99}{loop_reads}"));
            (v.len() == 3).then_some(v)
        });
        // Every figure from one evaluation of the rules: an instant 1 s after all three
        // nodes had a p99, read 1 s later (rules run every second and take milliseconds),
        // so a burst between two queries cannot set the fleet's p99 against another
        // evaluation's node p99s.
        let unix_now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        };
        let at = Some(unix_now() + 1.0);
        std::thread::sleep(Duration::from_secs(2));
        let p99 = by_instance_at(server, &format!("{P99}{loop_reads}"), at);
        let p50 = by_instance_at(server, &format!("{P50}{loop_reads}"), at);
        let peers = server.scalar_at(
            &format!("nodepulse:block_io_latency_seconds:peers{loop_reads}"),
            at,
        );
        let median = server
            .scalar_at(
                &format!("nodepulse:block_io_latency_seconds:peer_median_p99_5m{loop_reads}"),
                at,
            )
            .unwrap();
        let fleet = server
            .scalar_at(
                &format!("nodepulse:block_io_latency_seconds:fleet_p99_5m{loop_reads}"),
                at,
            )
            .unwrap();
        eprintln!(
            "{kind} baseline: p99 {p99:?}, p50 {p50:?}, median p99 {median}, fleet p99 {fleet}"
        );
        assert_eq!(peers, Some(3.0), "{kind}: peers");
        let (lo, hi) = p99.iter().fold((f64::MAX, 0f64), |(lo, hi), (_, v)| {
            (lo.min(*v), hi.max(*v))
        });
        // 4 KiB direct reads of a loop device over a file: microseconds to milliseconds.
        assert!(1e-6 < lo && hi < 0.5, "{kind}: p99 {p99:?}");
        assert!(
            lo <= median && median <= hi,
            "{kind}: median {median} of {p99:?}"
        );
        assert!(
            lo <= fleet * 1.1 && fleet <= hi * 1.1,
            "{kind}: fleet p99 {fleet} of {p99:?}"
        );
        for (node, v50) in &p50 {
            let v99 = p99.iter().find(|(n, _)| n == node).unwrap().1;
            assert!(
                1e-6 < *v50 && *v50 <= v99,
                "{kind}: {node} p50 {v50} p99 {v99}"
            );
        }
    }
    // Longer than the alert's `for` (15 s), under the steady load alone.
    let quiet_until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < quiet_until {
        for (kind, server) in servers {
            let f = firing(server, FLEET_ALERT);
            assert!(
                f.is_empty(),
                "{kind}: {FLEET_ALERT} fires without a regression: {f:?}"
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }

    // The regression: node-c's device also serves large competing reads.
    let load = Fio::competing_reads(&devices[2]);
    let started = Instant::now();
    for (kind, server) in servers {
        let alerts = wait_for(
            &format!("{kind}: {FLEET_ALERT} firing"),
            &[server],
            90,
            || {
                let f = firing(server, FLEET_ALERT);
                (!f.is_empty()).then_some(f)
            },
        );
        let p99 = by_instance(server, &format!("{P99}{loop_reads}"));
        eprintln!(
            "{kind}: {FLEET_ALERT} firing {:.0} s after the regression began; p99 {p99:?}",
            started.elapsed().as_secs_f64()
        );
        for a in &alerts {
            let m = &a["metric"];
            assert_eq!(
                (
                    m["instance"].as_str(),
                    m["device_type"].as_str(),
                    m["op"].as_str()
                ),
                (Some("node-c"), Some("loop"), Some("read")),
                "{kind}: {alerts:?}"
            );
        }
    }
    drop(load);

    // The agent stops: the scrapes fail and the series go stale, so the agents' own
    // alerts fire for every node (`for: 5m`, here 5 s).
    agent.terminate();
    for (kind, server) in servers {
        for alert in ["NodepulseDown", "NodepulseNotExporting"] {
            let nodes = wait_for(
                &format!("{kind}: {alert} for 3 nodes"),
                &[server],
                60,
                || {
                    let mut nodes: Vec<String> = firing(server, alert)
                        .iter()
                        .filter_map(|a| a["metric"]["instance"].as_str().map(str::to_owned))
                        .collect();
                    nodes.sort();
                    (nodes == NODES).then_some(nodes)
                },
            );
            eprintln!("{kind}: {alert} firing for {nodes:?}");
        }
    }
}
