//! The agent restarted, killed and upgraded under a steady workload (root, real
//! kernel): with `[agent] keep_attached` the probes stay attached in a bpffs of the
//! test's own, and every read the kernel completed (`/sys/block/<dev>/stat`) is
//! reported exactly once across the runs.

use crate::common;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Bpffs, LoopDevice, nodepulse, otlp_server::OtlpServer, require_tool, run};
use opentelemetry_proto::tonic::metrics::v1::metric;

/// A bpffs mounted for the test (pins there are invisible to other agents and go
/// when it is unmounted), a state directory and a configuration using both.
struct Env {
    // Field order is drop order: the mount goes before its directory.
    _bpffs_mount: Bpffs,
    bpffs: PathBuf,
    state: PathBuf,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nodepulse-restart-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let bpffs_mount = Bpffs::mount();
        let env = Self {
            state: dir.path().join("state"),
            bpffs: bpffs_mount.path.clone(),
            _bpffs_mount: bpffs_mount,
            dir,
        };
        env.write_config("c.toml", "");
        env
    }

    /// A configuration: block probe only, kept attached; `extra` is appended.
    fn write_config(&self, name: &str, extra: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let text = format!(
            "[agent]\nstate_dir = {:?}\nkeep_attached = true\nbpffs = {:?}\n\
             [probes.sched]\nenabled = false\n[probes.kvm]\nenabled = false\n\
             [probes.tcp]\nenabled = false\n{extra}",
            self.state, self.bpffs
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("c.toml")
    }

    /// The pin sets under `<bpffs>/nodepulse`.
    fn pin_sets(&self) -> Vec<String> {
        let mut sets: Vec<String> = std::fs::read_dir(self.bpffs.join("nodepulse"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        sets.sort();
        sets
    }

    fn saved_start(&self) -> u64 {
        let text = std::fs::read_to_string(self.state.join("state.json")).expect("state saved");
        let saved: serde_json::Value = serde_json::from_str(&text).unwrap();
        saved["start_unix_nano"].as_u64().unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = nodepulse()
            .args(["cleanup", "--config"])
            .arg(self.config())
            .output();
    }
}

/// `nodepulse run` with JSON reports every second, read as they come.
struct Agent {
    child: Child,
    reports: Arc<Mutex<Vec<serde_json::Value>>>,
    stdout: std::thread::JoinHandle<()>,
    stderr: std::thread::JoinHandle<String>,
    /// From spawn to the first report.
    first_report: Duration,
}

impl Agent {
    fn start(config: &Path) -> Self {
        let started = Instant::now();
        let mut child = nodepulse()
            .args(["run", "--interval", "1s", "--format", "json", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nodepulse");
        let reports = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = Arc::clone(&reports);
        let stdout = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let report = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("report is not JSON ({e}): {line}"));
                sink.lock().unwrap().push(report);
            }
        });
        let err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            BufReader::new(err)
                .lines()
                .map_while(Result::ok)
                .fold(String::new(), |acc, l| acc + &l + "\n")
        });
        let mut agent = Self {
            child,
            reports,
            stdout,
            stderr,
            first_report: Duration::ZERO,
        };
        agent.wait_reports(1);
        agent.first_report = started.elapsed();
        agent
    }

    fn count(&self) -> usize {
        self.reports.lock().unwrap().len()
    }

    fn wait_reports(&mut self, n: usize) {
        let want = self.count() + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.count() < want {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nodepulse exited ({status}) before reporting");
            }
            assert!(Instant::now() < deadline, "no report within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal`, waits for the exit; returns the reports and the log.
    fn stop(mut self, signal: i32) -> (Vec<serde_json::Value>, String) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = self.child.wait().unwrap();
        if signal == libc::SIGTERM {
            assert!(status.success(), "clean exit: {status}");
        }
        let log = self.stderr.join().unwrap_or_default();
        // Everything the agent wrote before it died is still in the pipe: read to
        // its end.
        self.stdout.join().expect("stdout reader");
        let reports = std::mem::take(&mut *self.reports.lock().unwrap());
        (reports, log)
    }
}

/// What the runs reported for the reads of device `number`.
#[derive(Debug, Default)]
struct Reads {
    /// Interval counts added up over every report of every run.
    samples: u64,
    unrecorded: u64,
    /// The last report's running totals.
    last_cumulative: u64,
    last_unrecorded_total: u64,
}

fn reads_of(reports: &[serde_json::Value], number: &str) -> Reads {
    let mut r = Reads::default();
    for report in reports {
        let mut cumulative = 0;
        let mut unrecorded_total = 0;
        for s in report["series"].as_array().unwrap() {
            if s["family"] == "block.io.device.latency"
                && s["labels"]["dev"] == number
                && s["labels"]["op"] == "read"
            {
                r.samples += s["count"].as_u64().unwrap();
                cumulative += s["cumulative_count"].as_u64().unwrap();
            }
        }
        for c in report["counters"].as_array().unwrap() {
            if c["family"] == "block.io.unrecorded" && c["labels"]["dev"] == number {
                r.unrecorded += c["delta"].as_u64().unwrap();
                unrecorded_total += c["total"].as_u64().unwrap();
            }
        }
        r.last_cumulative = cumulative;
        r.last_unrecorded_total = unrecorded_total;
    }
    r
}

/// Restarts the agent `cycles` times with `signal` under rate-limited fio (each run
/// lasting `run_for(cycle)`, half a second between runs) and checks every read
/// against sysfs.
fn restarts_under_fio(signal: i32, cycles: u32, run_for: impl Fn(u32) -> Duration) {
    require_tool("fio");
    let env = Env::new();
    // A real OTLP receiver: the start time of the cumulative series it gets.
    let collector = OtlpServer::start_grpc("127.0.0.1:0".parse().unwrap());
    env.write_config(
        "c.toml",
        &format!(
            "[otlp]\nenabled = true\nendpoint = \"{}\"\n",
            collector.endpoint()
        ),
    );
    let device = LoopDevice::new(256);
    let mut agent = Agent::start(&env.config());
    let start = env.saved_start();
    let before = device.stat();
    let runtime = (0..cycles)
        .map(|c| run_for(c) + Duration::from_millis(1500))
        .sum::<Duration>();
    let fio = device.fio(&[
        "--rw=randread",
        "--bs=4k",
        "--iodepth=4",
        "--rate_iops=2000",
        "--time_based",
        &format!("--runtime={}", runtime.as_secs() + 2),
    ]);
    let mut reports = Vec::new();
    let mut first_reports = Vec::new();
    for cycle in 0..cycles {
        std::thread::sleep(run_for(cycle));
        let (r, log) = agent.stop(signal);
        reports.extend(r);
        if signal == libc::SIGTERM {
            assert!(log.contains("probes stay attached"), "{log}");
        }
        // The gap: fio goes on, nothing reads the maps.
        std::thread::sleep(Duration::from_millis(500));
        agent = Agent::start(&env.config());
        first_reports.push(agent.first_report);
        assert_eq!(env.saved_start(), start, "the start time is kept");
    }
    fio.finish();
    device.wait_idle();
    agent.wait_reports(2);
    let (r, log) = agent.stop(libc::SIGTERM);
    reports.extend(r);
    assert!(
        log.contains("continuing the kernel's counts from pinned maps"),
        "{log}"
    );
    let kernel = device.stat().read - before.read;
    let got = reads_of(&reports, &device.number);
    first_reports.sort();
    eprintln!(
        "{cycles} restarts (signal {signal}): sysfs {kernel} reads; reported {} + {} \
         unrecorded over the intervals; last cumulative {} + {}; time to first report \
         after a restart {:?}..{:?}",
        got.samples,
        got.unrecorded,
        got.last_cumulative,
        got.last_unrecorded_total,
        first_reports.first().unwrap(),
        first_reports.last().unwrap()
    );
    assert!(kernel > 1000, "fio ran: {kernel}");
    assert_eq!(
        got.last_cumulative + got.last_unrecorded_total,
        kernel,
        "the cumulative count continues over every run and gap"
    );
    assert_eq!(
        got.samples + got.unrecorded,
        kernel,
        "the interval counts add up to every read, none twice"
    );
    let mut starts = std::collections::BTreeSet::new();
    for request in &collector.received().metrics {
        let metrics = request
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .filter(|m| m.name == "nodepulse.block.io.latency");
        for m in metrics {
            if let Some(metric::Data::ExponentialHistogram(h)) = &m.data {
                starts.extend(h.data_points.iter().map(|p| p.start_time_unix_nano));
            }
        }
    }
    assert_eq!(
        starts.into_iter().collect::<Vec<_>>(),
        vec![start],
        "every exported cumulative point starts when the first run did"
    );
}

#[test]
fn counts_add_up_across_graceful_restarts() {
    require_root!();
    restarts_under_fio(libc::SIGTERM, 3, |_| Duration::from_secs(2));
}

#[test]
fn counts_add_up_across_twenty_kills() {
    require_root!();
    // 1 to 2.9 s between kills, mid-interval or not.
    restarts_under_fio(libc::SIGKILL, 20, |c| {
        Duration::from_millis(1000 + u64::from(c * 7919 % 19) * 100)
    });
}

#[test]
fn another_layout_replaces_the_pins_and_says_what_it_reset() {
    require_root!();
    let env = Env::new();
    let device = LoopDevice::new(64);
    let agent = Agent::start(&env.config());
    let (_, _) = agent.stop(libc::SIGTERM);
    let old = env.pin_sets();
    assert_eq!(old.len(), 1, "{old:?}");

    // The same version with other program globals: another layout, as an upgrade
    // whose maps changed would be.
    let other = env.write_config("other.toml", "[probes.block]\nkernel_timestamps = false\n");
    let mut agent = Agent::start(&other);
    let new = env.pin_sets();
    assert_eq!(new.len(), 1, "the old set is removed: {new:?}");
    assert_ne!(new, old);
    let before = device.stat();
    device.dd_read(1000, "4k");
    let kernel = device.stat().read - before.read;
    agent.wait_reports(2);
    let (reports, log) = agent.stop(libc::SIGTERM);
    assert!(
        log.contains("pins of another version or map layout found"),
        "{log}"
    );
    assert!(
        log.contains("Reset: every cumulative series starts from zero"),
        "{log}"
    );
    assert!(log.contains("the kernel maps were replaced"), "{log}");
    let got = reads_of(&reports, &device.number);
    assert_eq!(
        got.samples + got.unrecorded,
        kernel,
        "counted once, by the new programs only"
    );

    // Cleanup detaches everything and forgets the state.
    let out = run(nodepulse().args(["cleanup", "--config"]).arg(&other));
    assert!(out.contains("its probes are detached"), "{out}");
    assert!(env.pin_sets().is_empty());
    assert!(!env.state.join("state.json").exists());
    let out = run(nodepulse().args(["cleanup", "--config"]).arg(&other));
    assert!(out.contains("nothing pinned"), "{out}");
}

#[test]
fn a_bad_bpffs_or_state_dir_is_refused_with_the_fix() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = {:?}\nkeep_attached = true\nbpffs = {:?}\n",
            dir.path().join("state"),
            dir.path()
        ),
    )
    .unwrap();
    let out = nodepulse()
        .args(["run", "--reports", "1", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is not a bpf filesystem") && err.contains("mount -t bpf"),
        "{err}"
    );

    std::fs::write(&config, "[agent]\nkeep_attached = true\n").unwrap();
    let out = nodepulse()
        .args(["check", "--config-only", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("needs [agent] state_dir"), "{err}");
}

#[test]
fn sighup_reloads_and_an_invalid_file_keeps_the_running_configuration() {
    require_root!();
    let env = Env::new();
    let config = env.config();
    let mut agent = Agent::start(&config);
    let hup = |agent: &Agent| {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(agent.child.id() as i32, libc::SIGHUP) };
    };
    std::fs::write(&config, "[agent\nbroken").unwrap();
    hup(&agent);
    agent.wait_reports(2);
    env.write_config(
        "c.toml",
        "[detect]\nmin_window = \"1m\"\n[limits]\nmax_devices = 8\n",
    );
    hup(&agent);
    agent.wait_reports(2);
    let (_, log) = agent.stop(libc::SIGTERM);
    assert!(
        log.contains("configuration not reloaded, the running one stays"),
        "{log}"
    );
    let reloaded = log
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(reloaded.contains("\"limits\", \"detect\""), "{reloaded}");
    assert!(
        log.contains("probes stay attached"),
        "still running until SIGTERM: {log}"
    );
}
