//! The image under podman.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;

use super::{VERSION, output, wait_ready};
use crate::common::{
    self,
    deploy::{kustomize, mebibytes, object, require_debian_tool, yaml_documents},
};

fn image() -> String {
    format!("localhost/nodepulse:{VERSION}")
}

fn podman() -> Command {
    require_debian_tool("podman", "podman");
    Command::new("podman")
}

fn require_image() {
    let exists = output(podman().args(["image", "exists", &image()]));
    assert!(
        exists.status.success(),
        "image {} is missing: run `cargo xtask image` (cargo xtask test builds it first)",
        image()
    );
}

/// The base overlay's rendered DaemonSet container and configuration.
fn daemonset() -> (Value, Value, String) {
    let objects = yaml_documents(&kustomize("base"));
    let pod = object(&objects, "DaemonSet")["spec"]["template"]["spec"].clone();
    let toml = object(&objects, "ConfigMap")["data"]["nodepulse.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    (pod["containers"][0].clone(), pod, toml)
}

/// The runtime's default seccomp profile as newer runtimes have it (containerd's
/// RuntimeDefault, which a Kubernetes node applies): `bpf` allowed with CAP_BPF and
/// `perf_event_open` with CAP_PERFMON. Debian 12's containers-common (0.50) allows
/// both only with CAP_SYS_ADMIN; this derives the newer rule from it, EPERM otherwise.
fn seccomp_profile(dir: &Path) -> PathBuf {
    let default = "/usr/share/containers/seccomp.json";
    let mut profile: Value =
        serde_json::from_str(&std::fs::read_to_string(default).unwrap_or_else(|e| {
            panic!("{default}: {e} (Debian package golang-github-containers-common, with podman)")
        }))
        .unwrap();
    let moved = ["bpf", "perf_event_open"];
    let rules = profile["syscalls"].as_array_mut().unwrap();
    for rule in rules.iter_mut() {
        if let Some(names) = rule["names"].as_array_mut() {
            names.retain(|n| !moved.contains(&n.as_str().unwrap_or_default()));
        }
    }
    rules.retain(|r| r["names"].as_array().is_some_and(|n| !n.is_empty()));
    for (syscall, cap) in [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")] {
        rules.push(serde_json::json!({
            "names": [syscall], "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap]}
        }));
        rules.push(serde_json::json!({
            "names": [syscall], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
            "excludes": {"caps": [cap]}
        }));
    }
    let path = dir.join("seccomp.json");
    std::fs::write(&path, profile.to_string()).unwrap();
    path
}

/// `podman run` arguments for the DaemonSet's security context and host mounts.
/// `host` replaces a hostPath by a directory of the test's own.
fn pod_options(
    container: &Value,
    pod: &Value,
    caps: &[String],
    dir: &Path,
    host: &[(&str, &Path)],
) -> Vec<String> {
    let mut args = vec![
        "--cap-drop=ALL".to_owned(),
        format!("--security-opt=seccomp={}", seccomp_profile(dir).display()),
        // podman's default ulimits exceed this VM's hard limits, and raising a limit
        // takes CAP_SYS_RESOURCE, which the container does not have.
        "--ulimit=nofile=4096:4096".to_owned(),
        "--ulimit=nproc=4096:4096".to_owned(),
    ];
    args.extend(caps.iter().map(|c| format!("--cap-add=CAP_{c}")));
    let sc = &container["securityContext"];
    if sc["readOnlyRootFilesystem"] == true {
        args.push("--read-only".into());
    }
    if sc["allowPrivilegeEscalation"] == false {
        args.push("--security-opt=no-new-privileges".into());
    }
    for m in container["volumeMounts"].as_array().unwrap() {
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap();
        if let Some(path) = volume["hostPath"]["path"].as_str() {
            let host = host
                .iter()
                .find(|(from, _)| *from == path)
                .map_or_else(|| path.to_owned(), |(_, to)| to.display().to_string());
            let ro = if m["readOnly"] == true { ":ro" } else { "" };
            args.push(format!(
                "--volume={host}:{}{ro}",
                m["mountPath"].as_str().unwrap()
            ));
        }
    }
    args
}

/// A detached container, removed when the test ends however it ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "2", &self.0])
            .output();
    }
}

#[test]
fn the_image_attaches_and_reports_with_the_daemonsets_privileges_only() {
    require_root!();
    require_image();
    let (container, pod, toml) = daemonset();
    let caps: Vec<String> = container["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();

    // The ConfigMap's configuration, with the endpoints on free loopback ports (the
    // container shares the host's network here; in a pod it has its own) and the
    // console on, to read the reports.
    let (health, metrics) = crate::common::free_ports::<2>().into();
    let mut config: toml::Table = toml.parse().unwrap();
    config["health"]["listen"] = format!("127.0.0.1:{health}").into();
    config["prometheus"]["listen"] = format!("127.0.0.1:{metrics}").into();
    config["otlp"]["enabled"] = false.into();
    config["console"]["enabled"] = true.into();
    config["agent"]["interval"] = "2s".into();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("nodepulse.toml"),
        toml::to_string(&config).unwrap(),
    )
    .unwrap();

    // The host's bpffs and state directory: the test's own, so nothing it pins or
    // saves outlives it.
    let bpffs = common::Bpffs::mount();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let host = [
        ("/sys/fs/bpf", bpffs.path.as_path()),
        ("/var/lib/nodepulse", state.as_path()),
    ];
    let name = format!("nodepulse-test-{}", std::process::id());
    let run = output(
        podman()
            .args(["run", "--detach", "--name", &name, "--network=host"])
            .args(pod_options(&container, &pod, &caps, dir.path(), &host))
            .arg(format!(
                "--volume={}:/etc/nodepulse:ro",
                dir.path().display()
            ))
            .args(["--env", "NODEPULSE_NODE_NAME=container-node"])
            .arg(image())
            .args([
                "run",
                "--config",
                "/etc/nodepulse/nodepulse.toml",
                "--format",
                "json",
                "--reports",
                "6",
            ]),
    );
    assert!(
        run.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let _guard = Container(name.clone());
    let pid = String::from_utf8(
        output(podman().args(["inspect", "--format", "{{.State.Pid}}", &name])).stdout,
    )
    .unwrap();
    let pid = pid.trim().to_owned();

    // Ready (an interval completed, every probe attached) over the health endpoint.
    let addr = format!("127.0.0.1:{health}");
    let ready = wait_ready(&addr, Duration::from_secs(20));
    // Block I/O on a loop device the container sees only through the host's /sys.
    let lo = common::LoopDevice::new(64);
    for _ in 0..3 {
        lo.dd_read(2000, "4k");
        std::thread::sleep(Duration::from_millis(300));
    }
    let peak_kib = vm_hwm_kib(&pid);
    let wait = output(podman().args(["wait", &name]));
    let logs = output(podman().args(["logs", &name]));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&logs.stdout).into_owned(),
        String::from_utf8_lossy(&logs.stderr).into_owned(),
    );
    assert_eq!(
        ready.as_ref().map(|r| r.0),
        Some(200),
        "{ready:?}\n{stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&wait.stdout).trim(),
        "0",
        "{stderr}"
    );

    let reports: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(reports.len() >= 6, "{stdout}\n{stderr}");
    let last = reports.last().unwrap();
    assert_eq!(last["node"], "container-node");
    for probe in last["probes"].as_array().unwrap() {
        let state = probe["state"].as_str().unwrap();
        assert!(state == "up" || state == "not_applicable", "{probe}");
    }
    let loop_reads = reports.iter().any(|r| {
        r["series"].as_array().unwrap().iter().any(|s| {
            s["family"] == "block.io.latency"
                && s["labels"]["device"] == lo.name.as_str()
                && s["count"].as_u64() > Some(0)
        })
    });
    assert!(loop_reads, "no reads of {} in {stdout}", lo.name);

    // Measured resources against the DaemonSet's: steady RSS, peak RSS (loading) and
    // CPU beside the requests and limits.
    let rss_mib = last["agent"]["rss_bytes"].as_f64().unwrap() / 1048576.0;
    let cpu: Vec<f64> = reports
        .iter()
        .skip(1)
        .map(|r| r["agent"]["cpu_percent"].as_f64().unwrap())
        .collect();
    let peak_mib = peak_kib as f64 / 1024.0;
    let resources = &container["resources"];
    let limit_mib = mebibytes(&resources["limits"]["memory"]);
    let request_mib = mebibytes(&resources["requests"]["memory"]);
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "MEASURED container: rss {rss_mib:.1} MiB, peak rss {peak_mib:.1} MiB, cpu {cpu:.2?} % \
         (DaemonSet: request {request_mib} MiB, limit {limit_mib} MiB)"
    );
    assert!(
        rss_mib < request_mib as f64,
        "steady RSS above the memory request"
    );
    assert!(
        peak_mib * 2.0 < limit_mib as f64,
        "peak RSS not well below the limit"
    );
}

fn vm_hwm_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Without CAP_PERFMON (or without both) the agent refuses to start and names what is
/// missing and how to grant it.
#[test]
fn the_image_without_its_capabilities_names_the_missing_one() {
    require_root!();
    require_image();
    let (container, pod, _) = daemonset();
    let dir = tempfile::tempdir().unwrap();
    // Never the host's own: it never gets to pin or save anything.
    let (bpffs, state) = (dir.path().join("bpf"), dir.path().join("state"));
    for d in [&bpffs, &state] {
        std::fs::create_dir(d).unwrap();
    }
    let host = [
        ("/sys/fs/bpf", bpffs.as_path()),
        ("/var/lib/nodepulse", state.as_path()),
    ];
    for (caps, missing) in [
        (vec!["BPF".to_owned()], "missing CAP_PERFMON: grant it"),
        (vec![], "missing CAP_BPF and CAP_PERFMON: grant them"),
    ] {
        let out = output(
            podman()
                .args(["run", "--rm", "--network=none"])
                .args(pod_options(&container, &pod, &caps, dir.path(), &host))
                .arg(image())
                .args(["run", "--sys-root", "/host/sys", "--reports", "1"]),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{caps:?}: {stderr}");
        assert!(stderr.contains(missing), "{caps:?}: {stderr}");
        assert!(stderr.contains("--cap-add=CAP_PERFMON"), "{stderr}");
    }
}
