//! The `nodepulse` binary as an operator meets it: configuration errors, `check`, and
//! the console formats.

use crate::common;

use common::{LoopDevice, RunningAgent, nodepulse};

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

/// Invalid configuration: exit code 2, a message naming the key, nothing attached.
#[test]
fn invalid_config_exits_2_naming_the_key_before_attaching() {
    one_subject_at_a_time!();
    let cases = [
        ("[agent]\nintervall = \"5s\"\n", "unknown field `intervall`"),
        (
            "[agent]\ninterval = \"0s\"\n",
            "config key `agent.interval` must be between 1s and 1h",
        ),
        ("[console]\nformat = \"xml\"\n", "unknown variant `xml`"),
        (
            "[probes.block]\nattach = \"uprobe\"\n",
            "unknown variant `uprobe`",
        ),
        ("[probes.blok]\n", "unknown field `blok`"),
        (
            "[otlp]\nenabled = true\nendpoint = \"collector:4317\"\n",
            "config key `otlp.endpoint`",
        ),
        (
            "[otlp]\nenabled = true\nendpoint = \"https://c:4317\"\n[otlp.tls]\nca_file = \"/nonexistent/ca.pem\"\n",
            "config key `otlp.tls.ca_file`",
        ),
        (
            "[otlp]\nprotocol = \"http/json\"\n",
            "unknown variant `http/json`",
        ),
        (
            "[prometheus]\nenabled = true\nlisten = \"localhost\"\n",
            "config key `prometheus.listen`",
        ),
        ("[outliers]\nblock_threshold = \"soon\"\n", "or \"auto\""),
        (
            "[health]\nenabled = true\nlisten = \":9465\"\n",
            "config key `health.listen`",
        ),
    ];
    for (text, expected) in cases {
        let config = write_config(text);
        let out = nodepulse()
            .arg("run")
            .arg("--config")
            .arg(config.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {stderr}");
        assert!(stderr.contains(expected), "{text:?}: {stderr}");
        assert!(stderr.contains("nothing was attached"), "{stderr}");
        assert!(!stderr.contains("probe attached"), "{stderr}");
        assert!(out.stdout.is_empty());
    }
}

/// `check --config-only` validates without privileges: what a deployment pipeline runs
/// on a ConfigMap before rolling it out.
#[test]
fn check_config_only_validates_without_attaching() {
    one_subject_at_a_time!();
    let check = |text: &str| {
        let config = write_config(text);
        nodepulse()
            .args(["check", "--config-only", "--config"])
            .arg(config.path())
            .output()
            .unwrap()
    };
    let out = check("[health]\nenabled = true\nlisten = \"0.0.0.0:9465\"\n");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("configuration is valid"), "{stdout}");

    let out = check("[health]\nenabeld = true\n");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown field `enabeld`"), "{stderr}");
}

/// `[agent] btf`: a missing, garbage or foreign file is a configuration error naming the
/// key; a copy of the kernel's own BTF is read and `check` says so.
#[test]
fn an_external_btf_file_is_checked_and_used() {
    one_subject_at_a_time!();
    let dir = tempfile::tempdir().unwrap();
    let check = |path: &std::path::Path, config_only: bool| {
        let config = write_config(&format!("[agent]\nbtf = \"{}\"\n", path.display()));
        let mut cmd = nodepulse();
        cmd.arg("check");
        if config_only {
            cmd.arg("--config-only");
        }
        cmd.arg("--config").arg(config.path()).output().unwrap()
    };
    let garbage = dir.path().join("garbage.btf");
    std::fs::write(&garbage, vec![0x5a; 4096]).unwrap();
    for (path, expected) in [
        (
            dir.path().join("absent.btf"),
            "cannot read it: No such file",
        ),
        (garbage, "not a BTF file (malformed BTF: bad magic"),
        (dir.path().to_owned(), "cannot read it: Is a directory"),
    ] {
        let out = check(&path, true);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path:?}: {stderr}");
        assert!(stderr.contains("config key `agent.btf`"), "{stderr}");
        assert!(stderr.contains(expected), "{path:?}: {stderr}");
    }
    let out = check(std::path::Path::new("vmlinux.btf"), true);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("must be empty (the kernel's own BTF) or an absolute path"),
        "{out:?}"
    );

    let Ok(own) = std::fs::read("/sys/kernel/btf/vmlinux") else {
        eprintln!("SKIPPED the copy: /sys/kernel/btf/vmlinux absent");
        return;
    };
    let copy = dir.path().join("vmlinux.btf");
    std::fs::write(&copy, &own).unwrap();
    if !common::is_root() {
        eprintln!("SKIPPED the check with the copy: needs root");
        return;
    }
    let out = check(&copy, false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let line = format!(
        "read from {} ([agent] btf), identical to the kernel's own /sys/kernel/btf/vmlinux",
        copy.display()
    );
    assert!(text.contains(&line), "{text}");
    assert!(
        text.contains("probe block    attaches via tp_btf"),
        "{text}"
    );
}

#[test]
fn invalid_flag_values_exit_2() {
    one_subject_at_a_time!();
    for args in [
        &["run", "--interval", "0s"][..],
        &["run", "--format", "xml"],
        &["run", "--interval", "soon"],
    ] {
        let out = nodepulse().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--interval") || stderr.contains("--format"),
            "{stderr}"
        );
    }
}

#[test]
fn missing_config_file_exits_2() {
    one_subject_at_a_time!();
    let out = nodepulse()
        .args(["check", "--config", "/nonexistent/nodepulse.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn help_explains_run_and_check() {
    one_subject_at_a_time!();
    let out = nodepulse().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("run") && text.contains("check"), "{text}");
    let out = nodepulse().args(["run", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--interval",
        "--format",
        "--log-level",
        "--reports",
    ] {
        assert!(text.contains(flag), "run --help lacks {flag}");
    }
}

/// `check` on this kernel: BTF present, the block probe attaches, exit 0; its JSON
/// names every kind of the chain.
#[test]
fn check_reports_what_this_node_supports() {
    require_root!();
    let out = nodepulse().arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("probe block    attaches via"), "{text}");
    assert!(text.contains("probe sched    attaches via"), "{text}");
    // KVM probes attach on any KVM host, whether or not their tracepoints ever fire.
    if std::path::Path::new("/dev/kvm").exists() {
        assert!(text.contains("probe kvm      attaches via"), "{text}");
        // In-kernel exits are traced only by VMX/SVM; without them the probe says so.
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let hardware = cpuinfo
            .split_whitespace()
            .any(|flag| flag == "vmx" || flag == "svm");
        let expected = if hardware {
            "probe kvm_exit attaches via"
        } else {
            "probe kvm_exit not applicable here"
        };
        assert!(text.contains(expected), "{text}");
    }
    let out = nodepulse().args(["check", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = v["probes"][0]["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k[0].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["tp_btf", "raw_tracepoint", "tracepoint", "fentry", "kprobe"]
    );
}

/// A probe that cannot attach is reported with its reason; the agent keeps running and
/// reporting (its own cost and state) instead of exiting.
#[test]
fn a_probe_that_cannot_attach_is_reported_and_the_agent_keeps_running() {
    require_root!();
    // Pick a kind this kernel cannot do, as `check` reports it.
    let out = nodepulse().args(["check", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let block = v["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["probe"] == "block")
        .unwrap();
    let failing = block["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k[1].get("Err").is_some())
        .map(|k| k[0].as_str().unwrap().to_owned());
    let Some(kind) = failing else {
        eprintln!("SKIPPED: every attach kind works on this kernel");
        return;
    };
    let config = write_config(&format!("[probes.block]\nattach = \"{kind}\"\n"));
    let out = nodepulse()
        .args([
            "run",
            "--interval",
            "1s",
            "--reports",
            "2",
            "--format",
            "json",
            "--config",
        ])
        .arg(config.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("cannot attach"), "{stderr}");
    assert!(
        stderr.contains("could not attach by any method"),
        "{stderr}"
    );
    let reports: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 2, "the agent kept reporting");
    let probe = reports[1]["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["probe"] == "block")
        .unwrap();
    assert_eq!(probe["state"], "down");
    assert!(
        probe["errors"][0].as_str().unwrap().starts_with(&kind),
        "{probe}"
    );
    assert!(reports[1]["agent"]["rss_bytes"].as_u64().unwrap() > 0);
}

/// JSON lines: one object per interval holding the loop device's series with buckets
/// that add up to its count; the table shows the device and a histogram.
#[test]
fn console_formats_show_the_device() {
    require_root!();
    let lo = LoopDevice::new(64);
    for (format, check) in [("json", true), ("table", false)] {
        let agent =
            RunningAgent::start(&["--interval", "1s", "--reports", "2", "--format", format]);
        lo.dd_read(2000, "4k");
        let (text, _) = agent.finish();
        if check {
            let mut found = false;
            for line in text.lines() {
                let r: serde_json::Value = serde_json::from_str(line).unwrap();
                for s in r["series"].as_array().unwrap() {
                    if s["labels"]["device"] == lo.name.as_str() && s["labels"]["op"] == "read" {
                        let h = &s["histogram"];
                        let total: u64 = h["counts"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|c| c.as_u64().unwrap())
                            .sum::<u64>()
                            + h["zero_count"].as_u64().unwrap();
                        assert_eq!(total, s["count"].as_u64().unwrap());
                        found |= total > 0;
                    }
                }
            }
            assert!(found, "no read series for {} in {text}", lo.name);
        } else {
            assert!(text.contains(&lo.name), "{text}");
            assert!(text.contains("p99.9"), "{text}");
            assert!(text.contains("ns/ev"), "{text}");
        }
    }
}

/// `nodepulse run | head -1`: once nobody reads the console any more (and it is the only
/// output), the agent stops quietly with 0 instead of warning every interval.
#[test]
fn run_into_a_closed_pipe_stops_quietly() {
    require_root!();
    let started = std::time::Instant::now();
    let out = std::process::Command::new("bash")
        .args([
            "-o",
            "pipefail",
            "-c",
            &format!(
                "{} run --interval 1s --format json | head -c 1",
                env!("CARGO_BIN_EXE_nodepulse")
            ),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(out.stdout, b"{");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("nobody reads the output any more"),
        "{stderr}"
    );
    assert!(!stderr.contains("export failed"), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

/// `check --config-only` fails wherever `run` would, before anything attaches: two
/// endpoints on one port, unknown families, an address another process holds, an audit
/// log that cannot be written.
#[test]
fn check_config_only_finds_what_run_would_fail_on() {
    one_subject_at_a_time!();
    let check = |text: &str| {
        let config = write_config(text);
        let out = nodepulse()
            .args(["check", "--config-only", "--config"])
            .arg(config.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check(
        "[prometheus]\nenabled = true\nlisten = \"127.0.0.1:9464\"\n\
         [health]\nenabled = true\nlisten = \"127.0.0.1:9464\"\n",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("clashes with prometheus.listen"), "{err}");

    let (code, err) = check("[detect]\nfamilies = [\"nope\"]\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`nope`, which is not a metric family"),
        "{err}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (code, err) = check(&format!(
        "[prometheus]\nenabled = true\nlisten = \"{addr}\"\n"
    ));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("[prometheus] listen {addr}: cannot bind it now")),
        "{err}"
    );
    assert!(err.contains("`nodepulse run` would fail"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    // A file where the audit log's directory should be.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let (code, err) = check(&format!(
        "[actions]\naudit_log = \"{}/actions.jsonl\"\n[[actions.rules]]\nname = \"r\"\n\
         program = [\"/bin/true\"]\n",
        blocker.display()
    ));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("actions.audit_log: cannot append to"), "{err}");
}

/// A node name built to fake an alarm on a terminal is shown escaped, in the table and
/// in JSON; one of 100,000 characters is refused before anything attaches.
#[test]
fn node_names_cannot_inject_into_the_terminal() {
    one_subject_at_a_time!();
    let long = "n".repeat(100_000);
    let out = nodepulse()
        .args(["run", "--reports", "1", "--node-name", &long])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`agent.node_name` is 100000 characters long; at most 128"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was attached"), "{stderr}");
}

#[test]
fn node_name_escape_sequences_are_shown_escaped() {
    require_root!();
    let evil = "evil\n\u{1b}[31mFAKE ALARM\u{1b}[0m\u{202e}";
    let shown = "evil\\u{a}\\u{1b}[31mFAKE ALARM\\u{1b}[0m\\u{202e}";
    for format in ["table", "json"] {
        let agent = RunningAgent::start(&[
            "--interval",
            "1s",
            "--reports",
            "1",
            "--format",
            format,
            "--node-name",
            evil,
        ]);
        let (text, _) = agent.finish();
        assert!(!text.contains('\u{1b}'), "{format}: raw ESC in {text:?}");
        assert!(
            !text.contains('\u{202e}'),
            "{format}: raw U+202E in {text:?}"
        );
        if format == "json" {
            let r: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
            assert_eq!(r["node"], shown);
        } else {
            assert!(text.contains(shown), "{text}");
        }
    }
}

/// `nodepulse capacity --from`: a missing file, a file that is not a recording and a
/// recording without capacity each exit 2 saying what is wrong and what to do.
#[test]
fn capacity_from_a_bad_file_exits_2_saying_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let run = |path: &std::path::Path| {
        let out = nodepulse()
            .args(["capacity", "--from"])
            .arg(path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(out.stdout.is_empty());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&dir.path().join("absent.jsonl"));
    assert!(
        e.contains("cannot read") && e.contains("nodepulse record --output FILE"),
        "{e}"
    );
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "time,value\n1,2\n").unwrap();
    let e = run(&bad);
    assert!(
        e.contains("bad.jsonl line 1: not a nodepulse recording line"),
        "{e}"
    );
    let old = dir.path().join("old.jsonl");
    std::fs::write(
        &old,
        r#"{"time":"2026-12-07T00:00:00Z","interval_s":10,"series":[]}"#,
    )
    .unwrap();
    let e = run(&old);
    assert!(e.contains("has no capacity signals"), "{e}");
    let out = nodepulse().args(["capacity", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for what in ["--from", "--json", "--for", "Worst", "capacity.*"] {
        assert!(help.contains(what), "capacity --help lacks {what}: {help}");
    }
}

/// Live `nodepulse capacity`: a 3-second window, the host's CPU run queues among the
/// resources, forecasts honestly still learning, no log lines.
#[test]
fn capacity_live_reports_the_window() {
    require_root!();
    one_subject_at_a_time!();
    // The configuration of an agent running beside it: its port held, pins and state
    // kept. The look must take none of them.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let state = tempfile::tempdir().unwrap();
    let config = write_config(&format!(
        "[agent]\nkeep_attached = true\nstate_dir = \"{}\"\n\
         [prometheus]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n\
         [probes.sched]\nsaturation = true\n",
        state.path().display()
    ));
    let pins = || {
        std::fs::read_dir("/sys/fs/bpf/nodepulse")
            .map(|d| {
                d.filter_map(|e| Some(e.ok()?.file_name()))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let pins_before = pins();
    let out = nodepulse()
        .args([
            "capacity",
            "--for",
            "3s",
            "--interval",
            "1s",
            "--json",
            "--config",
        ])
        .arg(config.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("INFO"),
        "{out:?}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["reports"], 3, "{v}");
    let resources = v["resources"].as_array().unwrap();
    let cpu = resources
        .iter()
        .find(|r| r["resource"] == "cpu")
        .unwrap_or_else(|| panic!("no cpu in {v}"));
    assert_eq!(cpu["kind"], "cpu");
    assert_eq!(cpu["forecast"]["state"], "learning", "{cpu}");
    assert!(
        cpu["now"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "runqueue_saturation"),
        "{cpu}"
    );
    assert_eq!(pins(), pins_before, "the look pinned probes");
    assert_eq!(
        std::fs::read_dir(state.path()).unwrap().count(),
        0,
        "the look wrote state"
    );
    drop(held);
}
