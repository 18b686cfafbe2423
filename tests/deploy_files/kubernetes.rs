//! The kustomize base and overlays.

use std::process::Command;

use serde_json::Value;

use crate::common::{
    self,
    deploy::{kustomize, mebibytes, object, venv_bin, yaml_documents},
};

/// The Kubernetes versions the manifests are validated against (kubernetes-validate
/// ships their schemas).
const KUBERNETES_VERSIONS: [&str; 2] = ["1.36.0", "1.37.0"];

const OVERLAYS: [&str; 3] = ["base", "overlays/hypervisor", "overlays/storage"];

/// Kinds from CRDs, whose schemas kubernetes-validate does not have.
const CUSTOM_KINDS: [&str; 1] = ["PodMonitor"];

#[test]
fn every_overlay_validates_against_two_kubernetes_versions() {
    one_subject_at_a_time!();
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
    one_subject_at_a_time!();
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
        if overlay.ends_with("storage") {
            assert_eq!(
                host_path_at(&config.attribution.ceph_root).as_deref(),
                Some("/var/lib/ceph")
            );
        }
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

/// A CPU quantity in millicores: `10m` → 10, `1` → 1000.
fn millicores(v: &Value) -> u64 {
    let s = v.as_str().unwrap();
    match s.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => s.parse::<u64>().unwrap() * 1000,
    }
}
