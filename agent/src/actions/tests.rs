use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::Path,
};

use super::*;
use crate::detect::{Severity, alarm::sample};

fn rule(name: &str, program: &[&str]) -> ActionRule {
    ActionRule {
        name: name.into(),
        family: String::new(),
        labels: Default::default(),
        min_severity: Severity::Minor,
        on: vec![Trigger::Open],
        cooldown: Duration::ZERO,
        timeout: Duration::from_secs(10),
        program: program.iter().map(|s| s.to_string()).collect(),
        webhook: String::new(),
        format: WebhookFormat::Nodepulse,
    }
}

fn actions(dir: &Path, rules: Vec<ActionRule>, tweak: impl FnOnce(&mut ActionsConfig)) -> Actions {
    let mut config = ActionsConfig {
        audit_log: dir.join("audit").join("actions.jsonl"),
        rules,
        ..ActionsConfig::default()
    };
    tweak(&mut config);
    config.validate().unwrap();
    Actions::start(&config, "node").unwrap().unwrap()
}

/// Every audit record, `started` ones included.
fn all_audit_lines(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("audit").join("actions.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The audit records of decisions and ends (not the `started` ones).
fn audit_lines(dir: &Path) -> Vec<serde_json::Value> {
    all_audit_lines(dir)
        .into_iter()
        .filter(|l| l["outcome"] != "started")
        .collect()
}

fn pid_in(file: &Path) -> i32 {
    for _ in 0..500 {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no pid in {}", file.display());
}

/// Alive: /proc has it and it is not a zombie. Waits a moment for the kernel.
fn alive(pid: i32) -> bool {
    (0..50).all(|_| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let live =
            !stat.is_empty() && stat.rsplit_once(')').unwrap().1.trim_start().as_bytes()[0] != b'Z';
        if live {
            std::thread::sleep(Duration::from_millis(10));
        }
        live
    })
}

/// A finished run, for tests of the audit log.
pub(crate) fn sample_run() -> ActionRun {
    let mut run = ActionRun::new(&alarm_with_id("x"), &rule("r", &["/bin/true"]), Outcome::Ok);
    run.output = "o".repeat(1000);
    run
}

fn alarm_with_id(id: &str) -> Alarm {
    let mut a = sample(Severity::Major);
    a.id = id.into();
    a
}

#[test]
fn nothing_runs_without_rules() {
    assert!(
        Actions::start(&ActionsConfig::default(), "n")
            .unwrap()
            .is_none()
    );
}

#[test]
fn dry_run_runs_nothing_but_audits() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let touch = ["/usr/bin/touch", marker.to_str().unwrap()];
    let mut a = actions(dir.path(), vec![rule("touch", &touch)], |c| {
        c.dry_run = true
    });
    a.dispatch(&alarm_with_id("a1"));
    assert!(a.wait(Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!marker.exists(), "dry run ran the program");
    let runs = a.completed();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].outcome, Outcome::DryRun);
    let lines = audit_lines(dir.path());
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["alarm_id"], "a1");
    assert_eq!(lines[0]["outcome"], "dry_run");
}

#[test]
fn a_program_runs_with_the_alarm_and_every_run_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let script = format!(
        "echo \"$NODEPULSE_ALARM_ID $NODEPULSE_LABEL_DEVICE $TRACEPARENT\" > {}; cat >> {}",
        out.display(),
        out.display()
    );
    let mut a = actions(
        dir.path(),
        vec![rule("fix", &["/bin/sh", "-c", &script])],
        |_| {},
    );
    let alarm = alarm_with_id("abc123");
    a.dispatch(&alarm);
    assert!(a.wait(Duration::from_secs(10)));
    let runs = a.completed();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(run.outcome, Outcome::Ok, "{run:?}");
    assert_eq!(run.exit_code, Some(0));
    assert_eq!(run.trace_id, alarm.trace_id);
    assert_eq!(run.parent_span_id, alarm.span_id);
    let text = std::fs::read_to_string(&out).unwrap();
    let first = text.lines().next().unwrap();
    assert_eq!(
        first,
        format!("abc123 sdx 00-{}-{}-01", alarm.trace_id, run.span_id)
    );
    let stdin: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
    assert_eq!(stdin["alarm"]["id"], "abc123");
    assert_eq!(stdin["event"], "open");
    // A failing run, audited as such, and the audit log survives a reopen.
    drop(a);
    let mut a = actions(dir.path(), vec![rule("fail", &["/bin/false"])], |_| {});
    a.dispatch(&alarm_with_id("def"));
    assert!(a.wait(Duration::from_secs(10)));
    let every = all_audit_lines(dir.path());
    let outcomes: Vec<&str> = every
        .iter()
        .map(|l| l["outcome"].as_str().unwrap())
        .collect();
    // Each run is on record before it starts.
    assert_eq!(outcomes, ["started", "ok", "started", "failed"]);
    assert_eq!(every[0]["span_id"], every[1]["span_id"]);
    let lines = audit_lines(dir.path());
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["outcome"], "ok");
    assert_eq!(lines[1]["outcome"], "failed");
    assert_eq!(lines[1]["exit_code"], 1);
    assert_eq!(lines[1]["alarm_id"], "def");
    assert!(lines[1]["duration_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn cooldown_holds_per_rule_and_resolutions_pass() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rule("t", &["/bin/true"]);
    r.cooldown = Duration::from_secs(600);
    r.on = vec![Trigger::Open, Trigger::Resolved];
    let mut a = actions(dir.path(), vec![r], |_| {});
    a.dispatch(&alarm_with_id("one"));
    a.dispatch(&alarm_with_id("two"));
    let mut resolved = alarm_with_id("one");
    resolved.resolve(1_900_000_000_000_000_000);
    a.dispatch(&resolved);
    assert!(a.wait(Duration::from_secs(10)));
    let mut outcomes: Vec<(String, &str)> = a
        .completed()
        .iter()
        .map(|r| (format!("{}/{}", r.alarm_id, r.event), r.outcome.as_str()))
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        vec![
            ("one/open".into(), "ok"),
            ("one/resolved".into(), "ok"),
            ("two/open".into(), "skipped_cooldown")
        ]
    );
    assert_eq!(audit_lines(dir.path()).len(), 3);
}

#[test]
fn global_rate_limit_and_concurrency_hold() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = actions(
        dir.path(),
        vec![rule("a", &["/bin/true"]), rule("b", &["/bin/true"])],
        |c| c.max_per_hour = 3,
    );
    a.dispatch(&alarm_with_id("x"));
    assert!(a.wait(Duration::from_secs(10)));
    a.dispatch(&alarm_with_id("y"));
    assert!(a.wait(Duration::from_secs(10)));
    let outcomes: Vec<Outcome> = a.completed().iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Ok).count(), 3);
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == Outcome::SkippedRateLimit)
            .count(),
        1
    );

    let dir = tempfile::tempdir().unwrap();
    let mut a = actions(
        dir.path(),
        vec![
            rule("slow", &["/bin/sleep", "1"]),
            rule("other", &["/bin/true"]),
        ],
        |c| c.max_concurrent = 1,
    );
    a.dispatch(&alarm_with_id("z"));
    assert!(a.wait(Duration::from_secs(10)));
    let outcomes: Vec<(String, Outcome)> = a
        .completed()
        .iter()
        .map(|r| (r.rule.clone(), r.outcome))
        .collect();
    assert!(
        outcomes.contains(&("slow".into(), Outcome::Ok)),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&("other".into(), Outcome::SkippedConcurrency)),
        "{outcomes:?}"
    );
}

#[test]
fn a_hanging_action_is_killed_at_its_timeout_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rule("hang", &["/bin/sleep", "60"]);
    r.timeout = Duration::from_millis(300);
    let mut a = actions(dir.path(), vec![r], |_| {});
    let started = Instant::now();
    a.dispatch(&alarm_with_id("h"));
    // The dispatch itself does not wait for the program.
    assert!(started.elapsed() < Duration::from_millis(200));
    assert!(a.wait(Duration::from_secs(10)));
    assert!(started.elapsed() < Duration::from_secs(5));
    let lines = audit_lines(dir.path());
    assert_eq!(lines[0]["outcome"], "timed_out");
    assert!(lines[0]["error"].as_str().unwrap().contains("timeout"));
}

#[test]
fn rules_match_family_labels_and_severity() {
    let dir = tempfile::tempdir().unwrap();
    let mut other_device = rule("sdb-only", &["/bin/true"]);
    other_device.labels = [("device".to_owned(), "sdb".to_owned())].into();
    let mut critical = rule("critical-only", &["/bin/true"]);
    critical.min_severity = Severity::Critical;
    let mut sched = rule("sched-only", &["/bin/true"]);
    sched.family = "sched.runqueue.latency".into();
    let mut matching = rule("sdx-major", &["/bin/true"]);
    matching.labels = [("device".to_owned(), "sdx".to_owned())].into();
    matching.min_severity = Severity::Major;
    matching.family = "block.io.latency".into();
    let mut a = actions(
        dir.path(),
        vec![other_device, critical, sched, matching],
        |_| {},
    );
    a.dispatch(&alarm_with_id("m"));
    assert!(a.wait(Duration::from_secs(10)));
    let rules: Vec<String> = a.completed().iter().map(|r| r.rule.clone()).collect();
    assert_eq!(rules, vec!["sdx-major".to_owned()]);
}

/// Accepts one HTTP request and answers `status`; hands back the body.
fn one_request_server(status: u16) -> (String, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        )
        .unwrap();
        String::from_utf8(body).unwrap()
    });
    (url, handle)
}

#[test]
fn webhook_posts_an_alertmanager_alert() {
    let dir = tempfile::tempdir().unwrap();
    let (url, server) = one_request_server(200);
    let mut r = rule("am", &[]);
    r.webhook = url;
    r.format = WebhookFormat::Alertmanager;
    let mut a = actions(dir.path(), vec![r], |_| {});
    let alarm = alarm_with_id("w1");
    a.dispatch(&alarm);
    assert!(a.wait(Duration::from_secs(10)));
    let body: serde_json::Value = serde_json::from_str(&server.join().unwrap()).unwrap();
    let alert = &body[0];
    assert_eq!(alert["labels"]["alertname"], "NodepulseLatencyRegression");
    assert_eq!(alert["labels"]["device"], "sdx");
    assert_eq!(alert["labels"]["severity"], "major");
    assert_eq!(alert["annotations"]["alarm_id"], "w1");
    assert_eq!(alert["startsAt"], alarm.started);
    assert!(alert.get("endsAt").is_none());
    let runs = a.completed();
    assert_eq!(runs[0].outcome, Outcome::Ok, "{runs:?}");
    assert_eq!(runs[0].http_status, Some(200));
}

#[test]
fn unreachable_or_failing_webhook_is_a_failed_run_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut down = rule("down", &[]);
    down.webhook = format!("http://127.0.0.1:{port}/hook");
    let (url, server) = one_request_server(500);
    let mut failing = rule("500", &[]);
    failing.webhook = url;
    let mut a = actions(dir.path(), vec![down, failing], |_| {});
    a.dispatch(&alarm_with_id("u"));
    assert!(a.wait(Duration::from_secs(20)));
    server.join().unwrap();
    let runs = a.completed();
    let by = |name: &str| runs.iter().find(|r| r.rule == name).unwrap();
    assert_eq!(by("down").outcome, Outcome::Failed);
    let e = by("down").error.clone().unwrap();
    assert!(e.contains("unreachable") && e.contains("webhook"), "{e}");
    assert_eq!(by("500").outcome, Outcome::Failed);
    assert_eq!(by("500").http_status, Some(500));
}

#[test]
fn a_rule_runs_once_per_incident_also_when_its_series_joins_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rule("loop0-only", &["/bin/true"]);
    r.labels = BTreeMap::from([("device".to_owned(), "loop0".to_owned())]);
    let mut a = actions(dir.path(), vec![r], |_| {});
    // The backing disk's alarm opens the incident: the rule on loop0 does not match.
    let mut incident = alarm_with_id("inc");
    a.dispatch(&incident);
    // A window later loop0 joins it: now it matches, and runs once.
    incident.state = AlarmState::Ongoing;
    let mut labels = incident.labels.clone();
    labels.insert("device".into(), "loop0".into());
    let joined = crate::detect::incident::RelatedSeries {
        series: "block.io.latency{device=loop0,op=write}".into(),
        family: incident.family.clone(),
        labels,
        alarm_id: "loop0-alarm".into(),
        state: AlarmState::Open,
        quantile: "p99",
        factor: 2.0,
        baseline_ns: 1e5,
        current_ns: 2e5,
        added_ns: 1.0,
        share: 0.5,
    };
    incident.related.push(joined);
    a.dispatch(&incident);
    a.dispatch(&incident);
    // Another incident later matches from its opening: it runs again, once.
    let mut other = incident.clone();
    other.id = "other".into();
    other.state = AlarmState::Open;
    a.dispatch(&other);
    assert!(a.wait(Duration::from_secs(10)));
    let mut runs: Vec<(String, &str)> = a
        .completed()
        .iter()
        .map(|r| (format!("{}/{}", r.alarm_id, r.event), r.outcome.as_str()))
        .collect();
    runs.sort();
    assert_eq!(
        runs,
        vec![("inc/ongoing".into(), "ok"), ("other/open".into(), "ok")]
    );
}

#[test]
fn at_agent_stop_a_running_program_and_what_it_detached_are_killed_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("detached");
    let script = format!(
        "setsid sh -c 'echo $$ > {}; exec sleep 300' & exec sleep 300",
        pid_file.display()
    );
    let mut a = actions(
        dir.path(),
        vec![rule("long", &["/bin/sh", "-c", &script])],
        |_| {},
    );
    a.dispatch(&alarm_with_id("s"));
    let detached = pid_in(&pid_file);
    assert!(alive(detached));
    let started = Instant::now();
    assert!(a.stop(Duration::from_millis(200)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !alive(detached),
        "detached child {detached} survived the agent stop"
    );
    let lines = audit_lines(dir.path());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["outcome"], "stopped");
    let killed: Vec<&str> = lines[0]["killed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(
        killed.contains(&format!("{detached} sleep").as_str()),
        "{killed:?}"
    );
}

/// An agent that was killed outright (SIGKILL, a crash) leaves a run behind: the next
/// start finds its processes, kills them and audits the run. The dead agent is a real
/// process that existed and is gone, so its `pid:start-time` names no live process.
#[test]
fn after_a_crash_the_next_start_kills_and_audits_runs_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut dead_agent = std::process::Command::new("/bin/sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let agent_pid = dead_agent.id() as i32;
    let stat = std::fs::read_to_string(format!("/proc/{agent_pid}/stat")).unwrap();
    let start: u64 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    dead_agent.kill().unwrap();
    dead_agent.wait().unwrap();
    let pid_file = dir.path().join("left");
    // What the dead agent's run left: a detached process carrying its marks.
    let mut starter = std::process::Command::new("/bin/sh")
        .args([
            "-c",
            &format!(
                "setsid sh -c 'echo $$ > {}; exec sleep 300' &",
                pid_file.display()
            ),
        ])
        .env(sweep::RUN_VAR, "0123456789abcdef")
        .env(sweep::AGENT_VAR, format!("{agent_pid}:{start}"))
        .env(
            sweep::AUDIT_VAR,
            dir.path().join("audit").join("actions.jsonl"),
        )
        .env("NODEPULSE_ALARM_ID", "crashed-alarm")
        .env("NODEPULSE_RULE", "restart-service")
        .env(
            "TRACEPARENT",
            "00-0af7651916cd43dd8448eb211c80319c-0123456789abcdef-01",
        )
        .spawn()
        .unwrap();
    starter.wait().unwrap();
    let left = pid_in(&pid_file);
    assert!(alive(left));
    // A run of a live agent (this test process) is left alone.
    let mut ours = std::process::Command::new("/bin/sleep")
        .arg("300")
        .env(
            sweep::AUDIT_VAR,
            dir.path().join("audit").join("actions.jsonl"),
        )
        .env(sweep::RUN_VAR, "fedcba9876543210")
        .env(sweep::AGENT_VAR, sweep::this_agent())
        .spawn()
        .unwrap();

    let mut a = actions(dir.path(), vec![rule("any", &["/bin/true"])], |_| {});
    assert!(
        !alive(left),
        "process {left} left by the crashed agent survived"
    );
    assert!(alive(ours.id() as i32), "a live agent's run was killed");
    ours.kill().unwrap();
    ours.wait().unwrap();
    let lines = audit_lines(dir.path());
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["outcome"], "killed_after_restart");
    assert_eq!(l["alarm_id"], "crashed-alarm");
    assert_eq!(l["rule"], "restart-service");
    assert_eq!(l["span_id"], "0123456789abcdef");
    assert_eq!(l["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(l["killed"][0], format!("{left} sleep"));
    assert_eq!(a.completed().len(), 1);
}

/// A run on record as started, with no end and nothing left running (the agent was
/// killed as the program finished): the next start records it as unfinished, once.
#[test]
fn a_started_run_with_no_end_is_audited_as_unfinished_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit").join("actions.jsonl");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let mut started = ActionRun::new(
        &alarm_with_id("gone"),
        &rule("r", &["/bin/true"]),
        Outcome::Started,
    );
    started.span_id = "00000000000000aa".into();
    let mut ended = started.clone();
    ended.span_id = "00000000000000bb".into();
    let mut closed = ended.clone();
    closed.outcome = Outcome::Ok;
    let text: String = [&started, &ended, &closed]
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    std::fs::write(&log, text).unwrap();
    let mut a = actions(dir.path(), vec![rule("r", &["/bin/true"])], |_| {});
    let runs = a.completed();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].outcome, Outcome::Unfinished);
    assert_eq!(runs[0].span_id, "00000000000000aa");
    assert_eq!(runs[0].alarm_id, "gone");
    drop(a);
    // Recorded once: a second start finds it closed.
    let mut a = actions(dir.path(), vec![rule("r", &["/bin/true"])], |_| {});
    assert!(a.completed().is_empty());
    let last = audit_lines(dir.path()).pop().unwrap();
    assert_eq!(last["outcome"], "unfinished");
}

#[test]
fn a_reload_takes_new_rules_and_never_runs_a_rule_twice_for_one_incident() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = actions(dir.path(), vec![rule("first", &["/bin/true"])], |_| {});
    a.dispatch(&alarm_with_id("inc"));
    assert!(a.wait(Duration::from_secs(10)));
    // Reloaded with a second rule and a dry run: the first rule already ran for this
    // incident and does not again; the new one is decided once.
    let mut config = a.config.clone();
    config.rules.push(rule("second", &["/bin/true"]));
    config.dry_run = true;
    a.reconfigure(&config).unwrap();
    let mut ongoing = alarm_with_id("inc");
    ongoing.state = AlarmState::Ongoing;
    a.dispatch(&ongoing);
    a.dispatch(&ongoing);
    assert!(a.wait(Duration::from_secs(10)));
    let runs: Vec<(String, &str)> = a
        .completed()
        .iter()
        .map(|r| (r.rule.clone(), r.outcome.as_str()))
        .collect();
    assert_eq!(
        runs,
        vec![("first".into(), "ok"), ("second".into(), "dry_run")]
    );

    // An audit log that cannot be opened keeps the running configuration.
    let mut bad = config.clone();
    std::fs::write(dir.path().join("plain"), "").unwrap();
    bad.audit_log = dir.path().join("plain").join("actions.jsonl");
    let err = a.reconfigure(&bad).unwrap_err().to_string();
    assert!(err.contains("set actions.audit_log"), "{err}");
    assert_eq!(a.config, config);
}
