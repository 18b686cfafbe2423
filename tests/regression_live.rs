//! A real regression on a real device: steady reads on a loop device build a baseline,
//! then competing large reads slow them down. The agent must raise an alarm for that
//! device within a few windows, run the configured action (audited with the alarm's
//! id), and resolve the alarm once the load is gone.

use crate::common;

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{LoopDevice, RunningAgent};
use serde_json::Value;

/// fio with its jobs as threads (`--thread`): by default each job is a process of its
/// own (in a session of its own), which killing the fio we started leaves running.
pub struct Fio(Child);

impl Fio {
    pub fn start(dev: &LoopDevice, args: &[&str]) -> Self {
        common::require_tool("fio");
        let child = Command::new("fio")
            .args(["--name=np", "--thread", "--ioengine=libaio", "--direct=1"])
            .arg(format!("--filename={}", dev.path.display()))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fio");
        Self(child)
    }

    /// Steady, light random reads of the device's first 128 MiB, 400 a second, for
    /// `runtime_s`: the baseline of the tests that regress a device.
    pub fn steady_reads(dev: &LoopDevice, runtime_s: u32) -> Self {
        Self::start(
            dev,
            &[
                "--size=128m",
                "--rw=randread",
                "--bs=4k",
                "--iodepth=1",
                "--rate_iops=400",
                "--time_based",
                &format!("--runtime={runtime_s}"),
            ],
        )
    }

    /// Large random reads of the device's second 256 MiB, for five minutes at most: a
    /// competing reader the device's small reads queue behind, whatever else shares the
    /// machine (a loop device's direct I/O never makes reads wait behind writes).
    pub fn competing_reads(dev: &LoopDevice) -> Self {
        Self::start(
            dev,
            &[
                "--offset=256m",
                "--size=256m",
                "--rw=randread",
                "--bs=1m",
                "--iodepth=64",
                "--numjobs=2",
                "--time_based",
                "--runtime=300",
            ],
        )
    }
}

impl Drop for Fio {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Follows the agent's JSON reports: alarm events on one device, and which are open.
struct Alarms {
    reports: mpsc::Receiver<Value>,
    device: String,
    open: HashSet<String>,
    /// Reports read so far.
    reports_seen: u32,
}

impl Alarms {
    /// Reads reports until `matches` holds for an alarm event on the device (or the
    /// timeout); returns that event.
    fn wait_for(&mut self, timeout: Duration, matches: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(report) = self.reports.recv_timeout(left) else {
                break;
            };
            self.reports_seen += 1;
            let alarms = report["alarms"].as_array().cloned().unwrap_or_default();
            let mut found = None;
            for alarm in alarms
                .into_iter()
                .filter(|a| involves(a, &self.device, None).is_some())
            {
                let id = alarm["id"].as_str().unwrap().to_owned();
                if alarm["state"] == "resolved" {
                    self.open.remove(&id);
                } else {
                    self.open.insert(id);
                }
                if found.is_none() && matches(&alarm) {
                    found = Some(alarm);
                }
            }
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Reads reports for `how_long`, keeping track of open alarms.
    fn follow(&mut self, how_long: Duration) {
        self.wait_for(how_long, |_| false);
    }
}

/// The series of `alarm` on `device` (and `op`, when given): an alarm is an incident,
/// whose headline is the series that opened it and whose `related` lists every series
/// that shifted with it (the loop device's reads, the disk under it, ...).
fn involves<'a>(alarm: &'a Value, device: &str, op: Option<&str>) -> Option<&'a Value> {
    let on =
        |s: &Value| s["labels"]["device"] == device && op.is_none_or(|op| s["labels"]["op"] == op);
    if on(alarm) {
        return Some(alarm);
    }
    alarm["related"].as_array()?.iter().find(|s| on(s))
}

/// One-second windows: a busy device reaches min_samples every interval. Floors higher
/// than the defaults: one-second windows of a loop device on a shared VM are noisy, and
/// the competing loads of these tests shift the reads by several times.
pub const ONE_SECOND_WINDOWS: &str = r#"
[detect]
families = ["block.io.latency"]
min_window = "1s"
max_window = "5s"
min_samples = 200
baseline_windows = 8
learning_period = "0s"
raise_after = 2
clear_after = 2
p50_ratio = 1.5
p90_ratio = 1.5
p99_ratio = 2.0
"#;

#[test]
fn competing_load_raises_an_alarm_runs_the_action_and_resolves() {
    require_root!();
    let dev = LoopDevice::new(512);
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let ran = dir.path().join("ran");
    let config = dir.path().join("nodepulse.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[probes.sched]
enabled = false
[probes.kvm]
enabled = false
{DETECT}
[actions]
audit_log = "{audit}"

[[actions.rules]]
name = "record-alarm"
family = "block.io.latency"
labels = {{ device = "{device}", op = "read" }}
program = ["/bin/sh", "-c", "echo \"$NODEPULSE_ALARM_ID $NODEPULSE_ALARM_SEVERITY\" >> {ran}"]
timeout = "5s"
# A neighbour's burst may raise an alarm on the baseline already (this VM is shared):
# its run must not hold back the one for the test's own regression.
cooldown = "0s"
"#,
            audit = audit.display(),
            device = dev.name,
            ran = ran.display(),
            DETECT = ONE_SECOND_WINDOWS,
        ),
    )
    .unwrap();

    // Steady, light random reads of the first quarter: the baseline. Nothing writes,
    // so the device's blocks are the same before, during and after the load: what
    // changes during the load is only the queueing.
    let _reads = Fio::steady_reads(&dev, 300);
    let mut agent = RunningAgent::with_config(&config);
    let stdout = agent.process.0.as_mut().unwrap().stdout.take().unwrap();
    let (tx, reports) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send(v).is_err()
            {
                break;
            }
        }
    });

    let mut alarms = Alarms {
        reports,
        device: dev.name.clone(),
        open: HashSet::new(),
        reports_seen: 0,
    };

    // 8 learning windows, then a few judged ones. This VM is shared: a neighbour's
    // burst can be a real, short regression of this device too. Such an alarm must
    // have resolved before the test's own regression starts.
    alarms.follow(Duration::from_secs(14));
    let quiet_deadline = Instant::now() + Duration::from_secs(30);
    while !alarms.open.is_empty() {
        assert!(
            Instant::now() < quiet_deadline,
            "alarms on the steady baseline stayed open for 30 s: {:?}",
            alarms.open
        );
        alarms.follow(Duration::from_secs(1));
    }

    // The regression: large reads competing for the same device. Not writes: the
    // loop device does direct I/O asynchronously, so small reads never wait behind a
    // writer's requests (a competing writer left them unmoved in CI); a 1 MiB read of
    // the sparse file is zero-filled where it is submitted, and the small reads queue
    // behind that work.
    let load = Fio::competing_reads(&dev);
    let load_started = Instant::now();
    let reports_before = alarms.reports_seen;
    let opened = alarms
        .wait_for(Duration::from_secs(15), |a| {
            a["state"] != "resolved" && involves(a, &dev.name, Some("read")).is_some()
        })
        .expect("no alarm on the device's reads within 15 s of the competing load");
    let reads = involves(&opened, &dev.name, Some("read")).unwrap();
    let windows = alarms.reports_seen - reports_before;
    eprintln!(
        "alarm after {windows} windows, reads' factor {}: {}",
        reads["factor"], opened["summary"]
    );
    // One-second reports; fio needs a moment to start; two regressed windows raise it,
    // and slowed reads complete fewer per second, so a window of 200 samples takes
    // longer to fill: 5 reports measured here, 8 allowed on a loaded runner.
    assert!(
        windows <= 8,
        "alarm after {windows} windows ({:?}): {opened:#}",
        load_started.elapsed()
    );
    assert_eq!(opened["family"], "block.io.latency");
    assert!(reads["factor"].as_f64().unwrap() >= 1.5, "{opened:#}");
    assert!(opened["evidence"]["current"]["counts"].is_array());
    let id = opened["id"].as_str().unwrap().to_owned();

    // The action ran, with the alarm's id, and the audit log says so.
    let deadline = Instant::now() + Duration::from_secs(10);
    let audited = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|l| l["alarm_id"] == id.as_str() && l["outcome"] != "started")
        {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no audit line for alarm {id}: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(audited["outcome"], "ok", "{audited:#}");
    assert_eq!(audited["exit_code"], 0);
    assert_eq!(audited["rule"], "record-alarm");
    assert_eq!(audited["trace_id"], opened["trace_id"]);
    assert_eq!(audited["parent_span_id"], opened["span_id"]);
    let ran_text = std::fs::read_to_string(&ran).unwrap();
    assert!(ran_text.starts_with(&id), "{ran_text}");

    // The load stops: the alarm resolves (two normal windows).
    drop(load);
    let resolved = alarms
        .wait_for(Duration::from_secs(30), |a| {
            a["state"] == "resolved" && a["id"] == id.as_str()
        })
        .expect("the alarm did not resolve within 30 s of the load stopping");
    assert!(resolved["ended"].is_string());

    let (_, log) = agent.terminate();
    assert!(log.contains(&id), "the agent logged the alarm: {log}");
}

/// `losetup` on the test's loop device; panics with what went wrong.
fn losetup(args: &[&str]) {
    let out = Command::new("losetup")
        .args(args)
        .output()
        .expect("losetup");
    assert!(
        out.status.success(),
        "losetup {args:?}: {} (another test may have taken the loop device meanwhile; rerun)",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_loop_device_attached_to_another_file_starts_its_series_anew() {
    require_root!();
    // File A on tmpfs, buffered (reads of a few µs); file B on the disk with direct
    // I/O (tens to hundreds of µs): against a baseline learned on A, B's reads are a
    // regression many times over. No absolute floor, so that only the identity keeps
    // them from alarming.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let dev = LoopDevice::backed_in(shm.path(), 160, false);
    let file_b = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    file_b.as_file().set_len(160 << 20).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nodepulse.toml");
    std::fs::write(
        &config,
        format!(
            "[probes.sched]\nenabled = false\n[probes.kvm]\nenabled = false\n\
             {ONE_SECOND_WINDOWS}[detect.min_shift]\n\"block.io.latency\" = \"0s\"\n"
        ),
    )
    .unwrap();
    let reads = Fio::steady_reads(&dev, 120);
    let mut agent = RunningAgent::with_config(&config);
    let stdout = agent.process.0.as_mut().unwrap().stdout.take().unwrap();
    let (tx, reports) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send(v).is_err()
            {
                break;
            }
        }
    });
    let series = format!("device={},", dev.name);
    let reads_learning = |r: &Value| {
        r["learning"].as_array().into_iter().flatten().any(|s| {
            let s = s.as_str().unwrap_or_default();
            s.starts_with("block.io.latency{") && s.contains(&series) && s.contains("op=read")
        })
    };
    let opened_on_device = |r: &Value| -> Vec<Value> {
        r["alarms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "open" && involves(a, &dev.name, None).is_some())
            .cloned()
            .collect()
    };
    // Learned on A: 8 windows of a second, then judged.
    let mut backing_a = None;
    let mut learned = false;
    let mut last = Value::Null;
    let mut seen_learning = false;
    let deadline = Instant::now() + Duration::from_secs(40);
    while !learned && Instant::now() < deadline {
        let r = reports
            .recv_timeout(Duration::from_secs(5))
            .expect("a report");
        last = serde_json::json!({"learning": r["learning"], "backing": r["backing"]});
        backing_a = r["backing"][&dev.name]
            .as_str()
            .map(str::to_owned)
            .or(backing_a);
        let reads_reported = r["series"].as_array().into_iter().flatten().any(|s| {
            s["family"] == "block.io.latency"
                && s["labels"]["device"] == dev.name.as_str()
                && s["labels"]["op"] == "read"
        });
        // Judged: listed as learning once, and no longer.
        let learning_now = reads_learning(&r);
        seen_learning |= learning_now;
        learned = backing_a.is_some() && seen_learning && !learning_now && reads_reported;
    }
    assert!(
        learned,
        "the device's reads never left learning within 40 s; last report: {last:#}"
    );
    let backing_a = backing_a.unwrap();
    assert!(backing_a.starts_with(&dev_backing(&dev)), "{backing_a}");

    // The same loop number, another file.
    drop(reads);
    let path = dev.path.to_string_lossy().into_owned();
    losetup(&["-d", &path]);
    let b = file_b.path().to_string_lossy().into_owned();
    losetup(&["--direct-io=on", &path, &b]);
    let _reads = Fio::steady_reads(&dev, 60);
    let mut relearning = false;
    let mut backing_b = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let r = reports
            .recv_timeout(Duration::from_secs(5))
            .expect("a report");
        let opened = opened_on_device(&r);
        assert!(
            opened.is_empty(),
            "an alarm on the re-attached device: {opened:#?}"
        );
        if let Some(now) = r["backing"][&dev.name].as_str() {
            backing_b = Some(now.to_owned());
            relearning |= reads_learning(&r);
        }
    }
    let backing_b = backing_b.expect("the device's backing in the reports");
    assert!(backing_b.starts_with(&b), "{backing_b}");
    assert!(
        relearning,
        "the device's reads did not learn anew on file B"
    );
    let _ = agent.terminate();
}

/// The backing file of the test's loop device, as sysfs names it.
fn dev_backing(dev: &LoopDevice) -> String {
    std::fs::read_to_string(format!("/sys/block/{}/loop/backing_file", dev.name))
        .unwrap()
        .trim()
        .to_owned()
}
