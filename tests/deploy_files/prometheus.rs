//! The fleet rules: promtool, unit tests for every alert, exported metrics only.

use std::{collections::BTreeSet, process::Command};

use serde_json::Value;

use crate::common::deploy::{assert_exported, metric_names, repo, require_debian_tool, yaml_file};

fn promtool() -> Command {
    require_debian_tool("promtool", "prometheus");
    let mut cmd = Command::new("promtool");
    cmd.current_dir(repo().join("deploy/prometheus"));
    cmd
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    one_subject_at_a_time!();
    let out = promtool()
        .args(["check", "rules", "nodepulse-rules.yml"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("SUCCESS"), "{text}");

    let tests: Vec<String> = std::fs::read_dir(repo().join("deploy/prometheus/tests"))
        .unwrap()
        .map(|e| format!("tests/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|n| n.ends_with(".yml"))
        .collect();
    let out = promtool()
        .args(["test", "rules"])
        .args(&tests)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "promtool test rules:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("FAILED"), "{text}");

    // Every alert has a unit test that sees it fire.
    let rules = yaml_file("deploy/prometheus/nodepulse-rules.yml");
    let alerts: BTreeSet<String> = all_rules(&rules)
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect();
    let mut fired = BTreeSet::new();
    for test in &tests {
        let doc = yaml_file(&format!("deploy/prometheus/{test}"));
        for group in doc["tests"].as_array().unwrap() {
            for t in group["alert_rule_test"].as_array().into_iter().flatten() {
                if !t["exp_alerts"].as_array().unwrap().is_empty() {
                    fired.insert(t["alertname"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    assert!(alerts.len() >= 8, "{alerts:?}");
    let untested: Vec<&String> = alerts.difference(&fired).collect();
    assert!(
        untested.is_empty(),
        "alerts without a firing unit test: {untested:?}"
    );
}

fn all_rules(doc: &Value) -> impl Iterator<Item = &Value> {
    doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
}

#[test]
fn the_rules_query_only_exported_metrics() {
    one_subject_at_a_time!();
    let rules = yaml_file("deploy/prometheus/nodepulse-rules.yml");
    let mut uses = Vec::new();
    for r in all_rules(&rules) {
        let place = r["record"]
            .as_str()
            .or(r["alert"].as_str())
            .unwrap()
            .to_owned();
        for name in metric_names(r["expr"].as_str().unwrap()) {
            uses.push((name, place.clone()));
        }
    }
    assert!(uses.len() > 10);
    assert_exported(&uses);
}
