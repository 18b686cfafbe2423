//! The Grafana dashboard.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::common::deploy::{assert_exported, metric_names, repo};

#[test]
fn the_dashboard_queries_only_exported_metrics() {
    one_subject_at_a_time!();
    let text = std::fs::read_to_string(repo().join("deploy/grafana/nodepulse.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let mut uses = Vec::new();
    let mut ids = BTreeSet::new();
    let mut heatmaps = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id: {p}"
        );
        let title = p["title"].as_str().unwrap().to_owned();
        if p["type"] == "heatmap" {
            heatmaps.push(p["targets"][0]["expr"].as_str().unwrap().to_owned());
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            for name in metric_names(t["expr"].as_str().unwrap()) {
                uses.push((name, format!("panel \"{title}\"")));
            }
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            let inner = q.trim_start_matches("label_values(").trim_end_matches(')');
            let selector = inner.rsplit_once(',').map_or(inner, |(s, _)| s);
            for name in metric_names(selector) {
                uses.push((name, format!("variable {}", v["name"])));
            }
        }
    }
    let mut alarms = false;
    for a in dash["annotations"]["list"].as_array().unwrap() {
        if let Some(expr) = a["expr"].as_str() {
            alarms |= expr.contains("nodepulse_alarms_open");
            for name in metric_names(expr) {
                uses.push((name, format!("annotation {}", a["name"])));
            }
        }
    }
    assert!(alarms, "alarms are shown as annotations");
    // Latency heatmaps from the native histograms per device, VM and cgroup.
    for family in [
        "nodepulse_block_io_latency_seconds{",
        "nodepulse_vm_vcpu_wait_seconds{",
        "nodepulse_cgroup_runqueue_latency_seconds{",
    ] {
        assert!(
            heatmaps.iter().any(|e| e.contains(family)),
            "no heatmap of {family}"
        );
    }
    assert_exported(&uses);
}

#[test]
fn metric_names_are_found_in_promql() {
    one_subject_at_a_time!();
    let names = metric_names(
        "histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{x=\"y\",le=\"1\"}[$__rate_interval]))) \
         or on (instance) label_replace(b, \"c\", \"$1\", \"d\", \"(e).*\") / 1e6 > bool c:d:e",
    );
    assert_eq!(names, ["a_bucket", "b"]);
}

/// Prometheus fed by the collector has the latency families in nanoseconds
/// (`_nanoseconds`, as OTLP carries them), the scrape endpoint in seconds: every
/// quantile and rate panel reads both, the collector's quantiles divided by 1e9. The
/// heatmaps draw the scraped `_seconds` family only (a native histogram cannot be
/// rescaled in PromQL), as the README says.
#[test]
fn latency_panels_read_the_scraped_and_the_collector_families() {
    one_subject_at_a_time!();
    let text = std::fs::read_to_string(repo().join("deploy/grafana/nodepulse.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let mut both = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let names = metric_names(expr);
            let seconds: Vec<&String> = names
                .iter()
                .filter(|n| n.ends_with("_seconds") && n.starts_with("nodepulse_"))
                .collect();
            if seconds.is_empty() {
                continue;
            }
            let title = p["title"].as_str().unwrap();
            if p["type"] == "heatmap" {
                assert!(!expr.contains("_nanoseconds"), "{title}: {expr}");
                continue;
            }
            for s in seconds {
                let twin = format!("{}_nanoseconds", s.trim_end_matches("_seconds"));
                assert!(names.contains(&twin), "{title}: no {twin} in {expr}");
            }
            if expr.contains("histogram_quantile") {
                assert!(expr.ends_with("/ 1e9"), "{title}: {expr}");
            }
            both += 1;
        }
    }
    assert!(both >= 10, "{both} panels read both families");
}
