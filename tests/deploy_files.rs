//! The deployment files checked with the tools that consume them: every Kubernetes
//! overlay rendered by `kubectl kustomize` and validated against the schemas of two
//! Kubernetes versions, its configuration parsed by nodepulse itself; the fleet rules
//! through `promtool check rules` and `promtool test rules`; the dashboard's and the
//! rules' queries against the metrics nodepulse exports; the collector's pipelines.
//! No root needed.

mod common;

use std::{collections::BTreeSet, process::Command};

use common::deploy::{
    PENDING, PROMETHEUS_BUILTIN, exported_metrics, kustomize, metric_names, object, repo,
    require_debian_tool, venv_bin, yaml_documents, yaml_file,
};
use serde_json::Value;

/// The Kubernetes versions the manifests are validated against (kubernetes-validate
/// ships their schemas).
const KUBERNETES_VERSIONS: [&str; 2] = ["1.36.0", "1.37.0"];

const OVERLAYS: [&str; 3] = ["base", "overlays/hypervisor", "overlays/storage"];

/// Kinds from CRDs, whose schemas kubernetes-validate does not have.
const CUSTOM_KINDS: [&str; 1] = ["PodMonitor"];

#[test]
fn every_overlay_validates_against_two_kubernetes_versions() {
    for overlay in OVERLAYS {
        let rendered = kustomize(overlay);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &rendered).unwrap();
        let objects = yaml_documents(&rendered);
        for version in KUBERNETES_VERSIONS {
            let out = Command::new(venv_bin("kubernetes-validate"))
                .args(["--strict", "--kubernetes-version", version])
                .arg(file.path())
                .output()
                .unwrap();
            let report = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{overlay} on {version}:\n{report}");
            // Each built-in object passed; only CRD kinds may lack a schema.
            for o in &objects {
                let kind = o["kind"].as_str().unwrap();
                let name = o["metadata"]["name"].as_str().unwrap();
                let line = format!("passed for resource {}/{name}", kind.to_lowercase());
                if CUSTOM_KINDS.contains(&kind) {
                    assert!(report.contains(&format!("Couldn't find schema for kind {kind}")));
                } else {
                    assert!(
                        report.contains(&line),
                        "{overlay} {version}: {line}\n{report}"
                    );
                }
            }
            assert!(!report.contains("ERROR"), "{report}");
        }
    }
}

/// What the DaemonSet of every overlay promises: least privilege, host paths
/// read-only where the configuration looks for them, probes on the health endpoint.
#[test]
fn the_daemonset_runs_with_least_privilege_and_its_config_parses() {
    for overlay in OVERLAYS {
        let objects = yaml_documents(&kustomize(overlay));
        let ds = object(&objects, "DaemonSet");
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(
            pod["tolerations"],
            serde_json::json!([{"operator": "Exists"}])
        );
        assert_eq!(pod["hostNetwork"], false);
        assert_eq!(pod["hostPID"], false);
        assert_eq!(pod["automountServiceAccountToken"], false);
        let priority = object(&objects, "PriorityClass");
        assert_eq!(pod["priorityClassName"], priority["metadata"]["name"]);
        let c = &pod["containers"][0];
        let sc = &c["securityContext"];
        assert_eq!(sc["privileged"], false, "{overlay}");
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(
            sc["capabilities"]["add"],
            serde_json::json!(["BPF", "PERFMON"])
        );
        let env = |name: &str| {
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{overlay}: env {name}"))
        };
        assert_eq!(
            env("NODEPULSE_NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.nodeName"
        );
        assert!(env("NODEPULSE_OTLP_ENDPOINT")["value"].is_string());

        // The configuration, parsed by nodepulse itself.
        let cm = object(&objects, "ConfigMap");
        let toml = cm["data"]["nodepulse.toml"].as_str().unwrap();
        let config = nodepulse::config::Config::parse(toml, overlay)
            .unwrap_or_else(|e| panic!("{overlay}: {e}"));
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), toml).unwrap();
        let out = common::nodepulse()
            .args(["check", "--config-only", "--config"])
            .arg(file.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{overlay}: {out:?}");

        // Its roots are read-only mounts of the host's /sys, /proc and /run.
        let mounts = c["volumeMounts"].as_array().unwrap();
        let volumes = pod["volumes"].as_array().unwrap();
        let host_path_at = |path: &std::path::Path| -> Option<String> {
            let m = mounts
                .iter()
                .find(|m| path.starts_with(m["mountPath"].as_str().unwrap()))?;
            assert_eq!(m["readOnly"], true, "{overlay}: {m}");
            let v = volumes.iter().find(|v| v["name"] == m["name"])?;
            Some(v["hostPath"]["path"].as_str()?.to_owned())
        };
        assert_eq!(
            host_path_at(&config.agent.sys_root).as_deref(),
            Some("/sys")
        );
        assert_eq!(
            host_path_at(&config.attribution.proc_root).as_deref(),
            Some("/proc")
        );
        assert_eq!(
            host_path_at(&config.attribution.run_root).as_deref(),
            Some("/run")
        );
        assert_eq!(
            host_path_at(&config.attribution.cgroup_root).as_deref(),
            Some("/sys")
        );
        let config_mount = mounts
            .iter()
            .find(|m| m["name"] == "config")
            .expect("config mount");
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
        assert!(config_path.starts_with(config_mount["mountPath"].as_str().unwrap()));

        // Probes and ports are the endpoints the configuration serves.
        assert!(config.health.enabled && config.prometheus.enabled);
        let port = |name: &str| {
            c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .map(|p| p["containerPort"].as_u64().unwrap())
                .unwrap()
        };
        let listen_port = |l: &str| l.rsplit(':').next().unwrap().parse::<u64>().unwrap();
        assert_eq!(port("health"), listen_port(&config.health.listen));
        assert_eq!(port("metrics"), listen_port(&config.prometheus.listen));
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "health");

        // Requests below limits; the memory limit leaves room above the measured RSS
        // (checked against a running container in deploy_artifacts).
        let r = &c["resources"];
        assert!(mebibytes(&r["requests"]["memory"]) < mebibytes(&r["limits"]["memory"]));
        assert!(millicores(&r["requests"]["cpu"]) < millicores(&r["limits"]["cpu"]));

        if overlay != "base" {
            let role = overlay.rsplit('/').next().unwrap();
            assert_eq!(pod["nodeSelector"]["nodepulse.io/role"], role);
            assert_eq!(
                ds["spec"]["selector"]["matchLabels"]["nodepulse.io/role"],
                role
            );
            let monitor = object(&objects, "PodMonitor");
            assert_eq!(
                monitor["spec"]["selector"]["matchLabels"]["nodepulse.io/role"],
                role
            );
            assert_eq!(monitor["metadata"]["namespace"], "nodepulse");
            assert_eq!(config.probes.kvm.enabled, role == "hypervisor");
        }
    }
}

/// `128Mi` → 128.
pub fn mebibytes(v: &Value) -> u64 {
    let s = v.as_str().unwrap();
    s.strip_suffix("Mi").unwrap().parse().unwrap()
}

/// `10m` → 10, `1` → 1000.
pub fn millicores(v: &Value) -> u64 {
    let s = v.as_str().unwrap();
    match s.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => s.parse::<u64>().unwrap() * 1000,
    }
}

fn promtool() -> Command {
    require_debian_tool("promtool", "prometheus");
    let mut cmd = Command::new("promtool");
    cmd.current_dir(repo().join("deploy/prometheus"));
    cmd
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
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

/// Checks that every name is exported, listing each unknown one with where it is used.
fn assert_exported(uses: &[(String, String)]) {
    let exported = exported_metrics();
    let mut unknown = Vec::new();
    for (name, place) in uses {
        if exported.contains(name) || PROMETHEUS_BUILTIN.contains(&name.as_str()) {
            continue;
        }
        match PENDING.iter().find(|(n, _)| n == name) {
            Some((_, issue)) => {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "NOTE {place}: {name} is not exported yet; {issue} adds it"
                );
            }
            None => unknown.push(format!("{place}: {name}")),
        }
    }
    assert!(
        unknown.is_empty(),
        "queries of metrics nodepulse does not export:\n{}",
        unknown.join("\n")
    );
}

#[test]
fn the_rules_query_only_exported_metrics() {
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

#[test]
fn the_dashboard_queries_only_exported_metrics() {
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
        "nodepulse_block_io_latency_nanoseconds{",
        "nodepulse_vm_vcpu_wait_nanoseconds{",
        "nodepulse_cgroup_runqueue_latency_nanoseconds{",
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
    let names = metric_names(
        "histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{x=\"y\",le=\"1\"}[$__rate_interval]))) \
         or on (instance) label_replace(b, \"c\", \"$1\", \"d\", \"(e).*\") / 1e6 > bool c:d:e",
    );
    assert_eq!(names, ["a_bucket", "b"]);
}

#[test]
fn every_collector_pipeline_uses_defined_components() {
    let c = yaml_file("deploy/otel-collector/collector.yaml");
    let defined = |section: &str| -> BTreeSet<String> {
        c[section]
            .as_object()
            .unwrap_or_else(|| panic!("no {section}"))
            .keys()
            .cloned()
            .collect()
    };
    let pipelines = c["service"]["pipelines"].as_object().unwrap();
    for signal in ["metrics", "traces", "logs"] {
        assert!(pipelines.contains_key(signal), "no {signal} pipeline");
    }
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    for (name, p) in pipelines {
        for section in ["receivers", "processors", "exporters"] {
            let list: Vec<String> = p[section]
                .as_array()
                .unwrap_or_else(|| panic!("{name} has no {section}"))
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            assert!(!list.is_empty() || section == "processors");
            for component in &list {
                assert!(
                    defined(section).contains(component),
                    "pipeline {name}: {component} is not defined under {section}"
                );
                used.insert((section.to_owned(), component.clone()));
            }
            if section == "processors" {
                assert_eq!(
                    list.first().map(String::as_str),
                    Some("memory_limiter"),
                    "{name}"
                );
                assert_eq!(list.last().map(String::as_str), Some("batch"), "{name}");
            }
        }
    }
    for section in ["receivers", "processors", "exporters"] {
        for component in defined(section) {
            assert!(
                used.contains(&(section.to_owned(), component.clone())),
                "{section}.{component} is defined but in no pipeline"
            );
        }
    }
    for e in c["service"]["extensions"].as_array().unwrap() {
        assert!(defined("extensions").contains(e.as_str().unwrap()));
    }
    // nodepulse's default OTLP port, and the exporters the issue names.
    assert_eq!(
        c["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"],
        "0.0.0.0:4317"
    );
    let exporters = |signal: &str| pipelines[signal]["exporters"].to_string();
    assert!(exporters("metrics").contains("prometheusremotewrite"));
    assert!(exporters("traces").contains("otlp"));
    assert!(exporters("logs").contains("otlphttp"));
}
