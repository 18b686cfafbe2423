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

use crate::regression_live::Fio;
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
        self.write_config_with_sched(name, false, extra)
    }

    /// A configuration: the block probe and, if `sched`, the scheduler probe, kept
    /// attached; `extra` is appended.
    fn write_config_with_sched(&self, name: &str, sched: bool, extra: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let text = format!(
            "[agent]\nstate_dir = {:?}\nkeep_attached = true\nbpffs = {:?}\n\
             [probes.sched]\nenabled = {sched}\n[probes.kvm]\nenabled = false\n\
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

    /// The links pinned by the current pin set.
    fn pinned_links(&self) -> Vec<String> {
        let sets = self.pin_sets();
        let mut links: Vec<String> = sets
            .iter()
            .flat_map(|set| {
                std::fs::read_dir(self.bpffs.join("nodepulse").join(set).join("links"))
                    .into_iter()
                    .flatten()
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
            })
            .collect();
        links.sort();
        links
    }

    fn saved_start(&self) -> u64 {
        let file = std::fs::File::open(self.state.join("state.json.gz")).expect("state saved");
        let saved: serde_json::Value =
            serde_json::from_reader(flate2::read::GzDecoder::new(file)).unwrap();
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
        Self::start_with(nodepulse(), config)
    }

    /// Starts `agent`, a nodepulse binary.
    fn start_with(mut agent: std::process::Command, config: &Path) -> Self {
        let started = Instant::now();
        let mut child = agent
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
    /// Double counts the comparison with the kernel found (`block.io.overcounted`).
    overcounted: u64,
    last_overcounted_total: u64,
    /// The last report's unrecorded totals by cause.
    last_causes: std::collections::BTreeMap<String, u64>,
}

fn reads_of(reports: &[serde_json::Value], number: &str) -> Reads {
    let mut r = Reads::default();
    for report in reports {
        let mut cumulative = 0;
        let mut unrecorded_total = 0;
        let mut overcounted_total = 0;
        let mut causes = std::collections::BTreeMap::new();
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
            if c["labels"]["dev"] != number {
                continue;
            }
            if c["family"] == "block.io.unrecorded" {
                r.unrecorded += c["delta"].as_u64().unwrap();
                unrecorded_total += c["total"].as_u64().unwrap();
                let cause = c["labels"]["cause"].as_str().unwrap_or_default().to_owned();
                *causes.entry(cause).or_default() += c["total"].as_u64().unwrap();
            } else if c["family"] == "block.io.overcounted" {
                r.overcounted += c["delta"].as_u64().unwrap();
                overcounted_total += c["total"].as_u64().unwrap();
            }
        }
        r.last_cumulative = cumulative;
        r.last_unrecorded_total = unrecorded_total;
        r.last_overcounted_total = overcounted_total;
        r.last_causes = causes;
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
    assert_continuous(&got, kernel, &collector, start);
}

/// Every read the kernel completed is counted once over all runs and gaps, and every
/// exported cumulative point starts when the first run did.
fn assert_continuous(got: &Reads, kernel: u64, collector: &OtlpServer, start: u64) {
    assert!(kernel > 1000, "fio ran: {kernel}");
    eprintln!(
        "unrecorded by cause at the end: {:?}; overcounted {}",
        got.last_causes, got.last_overcounted_total
    );
    // Every interval reported, none twice: what the reports said interval by interval
    // adds up to the running total (a kill between the state's save and the report's
    // write once lost an interval here).
    assert_eq!(
        got.samples + got.unrecorded - got.overcounted,
        got.last_cumulative + got.last_unrecorded_total - got.last_overcounted_total,
        "the interval sums equal the cumulative"
    );
    // A double count the comparison with the kernel found is counted, not hidden.
    assert_eq!(
        got.last_cumulative + got.last_unrecorded_total - got.last_overcounted_total,
        kernel,
        "the cumulative count continues over every run and gap"
    );
    assert_eq!(
        got.samples + got.unrecorded - got.overcounted,
        kernel,
        "the interval counts add up to every read, none twice"
    );
    assert_eq!(
        otlp_starts(collector),
        vec![start],
        "every exported cumulative point starts when the first run did"
    );
}

/// The start times of every cumulative block latency point the collector received.
fn otlp_starts(collector: &OtlpServer) -> Vec<u64> {
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
    starts.into_iter().collect()
}

#[test]
fn counts_add_up_across_graceful_restarts() {
    require_root!();
    restarts_under_fio(libc::SIGTERM, 3, |_| Duration::from_secs(2));
}

/// The alarm events in `report` about the reads of `device` (as headline or related
/// series): (id, state).
fn alarms_on_reads(report: &serde_json::Value, device: &str) -> Vec<(String, String)> {
    let on = |s: &serde_json::Value| s["labels"]["device"] == device && s["labels"]["op"] == "read";
    report["alarms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| on(a) || a["related"].as_array().is_some_and(|r| r.iter().any(on)))
        .map(|a| {
            let text = |k: &str| a[k].as_str().unwrap_or_default().to_owned();
            (text("id"), text("state"))
        })
        .collect()
}

#[test]
fn twenty_kills_keep_every_count_the_start_time_and_the_open_alarm() {
    require_root!();
    require_tool("fio");
    let test_started = Instant::now();
    let env = Env::new();
    let collector = OtlpServer::start_grpc("127.0.0.1:0".parse().unwrap());
    let otlp = format!(
        "[otlp]\nenabled = true\nendpoint = \"{}\"\n",
        collector.endpoint()
    );
    env.write_config(
        "c.toml",
        &format!("{otlp}{}", crate::regression_live::ONE_SECOND_WINDOWS),
    );
    let device = LoopDevice::new(512);
    let mut agent = Agent::start(&env.config());
    let start = env.saved_start();
    let before = device.stat();
    let reads = Fio::steady_reads(&device, 300);
    // The baseline (8 windows), then a regression held until the end: large reads
    // competing for the device (see `regression_live`).
    agent.wait_reports(10);
    let load = Fio::competing_reads(&device);
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        agent.wait_reports(1);
        let last = agent.reports.lock().unwrap().last().cloned().unwrap();
        let open = alarms_on_reads(&last, &device.name)
            .into_iter()
            .find(|(_, state)| state != "resolved");
        if let Some((id, _)) = open {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "no alarm on the reads within 30 s of the load"
        );
    };
    // Held through every kill: `run_for` 1 to 3.4 s (1 to 10 s in the issue; shorter
    // keeps the test near 90 s), mid-interval or not.
    let mut killed = Vec::new();
    let mut first_reports = Vec::new();
    for cycle in 0..20u64 {
        std::thread::sleep(Duration::from_millis(1000 + cycle * 7919 % 25 * 100));
        let (r, _) = agent.stop(libc::SIGKILL);
        killed.extend(r);
        std::thread::sleep(Duration::from_millis(500));
        agent = Agent::start(&env.config());
        first_reports.push(agent.first_report);
        assert_eq!(env.saved_start(), start, "the start time is kept");
    }
    // The last run judges the regression too, under the same alarm.
    let deadline = Instant::now() + Duration::from_secs(20);
    let last_run_from = agent.count();
    let mut seen_after_last = false;
    while !seen_after_last {
        agent.wait_reports(1);
        let reports = agent.reports.lock().unwrap();
        seen_after_last = reports[last_run_from..]
            .iter()
            .any(|r| !alarms_on_reads(r, &device.name).is_empty());
        drop(reports);
        assert!(
            Instant::now() < deadline,
            "no alarm event in the last run within 20 s"
        );
    }
    // What was reported while the regression was held (the killed runs' and the last
    // run's so far); the last run goes on as the load stops.
    let mut held = killed.clone();
    held.extend(agent.reports.lock().unwrap().iter().cloned());
    drop(load);
    drop(reads);
    device.wait_idle();
    agent.wait_reports(2);
    let (last_run, log) = agent.stop(libc::SIGTERM);
    let kernel = device.stat().read - before.read;
    let mut reports = killed;
    reports.extend(last_run);
    let got = reads_of(&reports, &device.number);
    first_reports.sort();

    let events: Vec<(String, String)> = held
        .iter()
        .flat_map(|r| alarms_on_reads(r, &device.name))
        .collect();
    let first = events.iter().position(|(i, _)| *i == id).unwrap();
    let after: Vec<&(String, String)> = events[first..].iter().collect();
    eprintln!(
        "20 kills under a held regression: sysfs {kernel} reads; reported {} + {} \
         unrecorded; last cumulative {} + {}; alarm {id}: {} events after it opened, \
         none of another alarm; time to first report after a restart {:?}..{:?}; test \
         {:?}",
        got.samples,
        got.unrecorded,
        got.last_cumulative,
        got.last_unrecorded_total,
        after.len(),
        first_reports.first().unwrap(),
        first_reports.last().unwrap(),
        test_started.elapsed()
    );
    assert!(
        after
            .iter()
            .all(|(i, state)| *i == id && state != "resolved"),
        "alarm {id} stays the one open alarm on the reads through every kill: {after:?}"
    );
    assert!(
        log.contains("open_alarms"),
        "the last run restored it: {log}"
    );
    assert_continuous(&got, kernel, &collector, start);
}

#[test]
fn another_layout_with_the_same_maps_carries_every_count() {
    require_root!();
    let env = Env::new();
    let device = LoopDevice::new(64);
    let agent = Agent::start(&env.config());
    let start = env.saved_start();
    let (_, _) = agent.stop(libc::SIGTERM);
    let old = env.pin_sets();
    assert_eq!(old.len(), 1, "{old:?}");
    // Read while no agent runs: the old programs count them.
    let before = device.stat();
    device.dd_read(300, "4k");

    // The same version with other program globals: another layout, the same maps.
    let other = env.write_config("other.toml", "[probes.block]\nkernel_timestamps = false\n");
    let mut agent = Agent::start(&other);
    let new = env.pin_sets();
    assert_eq!(new.len(), 1, "the old set is removed: {new:?}");
    assert_ne!(new, old);
    device.dd_read(1000, "4k");
    let kernel = device.stat().read - before.read;
    agent.wait_reports(2);
    let (reports, log) = agent.stop(libc::SIGTERM);
    for said in [
        "pins of another version or map layout found",
        "counts continue across the switch of pin sets",
        "old pins removed, their programs detached",
    ] {
        assert!(log.contains(said), "the log says `{said}`: {log}");
    }
    assert!(!log.contains("map reset at the upgrade"), "{log}");
    assert_eq!(env.saved_start(), start, "the series go on");
    let got = reads_of(&reports, &device.number);
    assert_eq!(
        got.samples + got.unrecorded,
        kernel,
        "the reads of the gap (old programs) and after (new ones), each once"
    );

    // Cleanup detaches everything and forgets the state.
    let out = run(nodepulse().args(["cleanup", "--config"]).arg(&other));
    assert!(out.contains("its probes are detached"), "{out}");
    assert!(env.pin_sets().is_empty());
    assert!(!env.state.join("state.json.gz").exists());
    let out = run(nodepulse().args(["cleanup", "--config"]).arg(&other));
    assert!(out.contains("nothing pinned"), "{out}");
}

/// The upgrade test's "new version": nodepulse built with another eBPF map layout.
fn upgraded_agent() -> std::process::Command {
    let exe = Path::new(env!("CARGO_BIN_EXE_nodepulse")).with_file_name("nodepulse-upgrade-test");
    assert!(
        exe.exists(),
        "{} is missing: build it with `cargo build -p agent --bin nodepulse-upgrade-test \
         --features test-upgrade-layout` (cargo xtask test does)",
        exe.display()
    );
    std::process::Command::new(exe)
}

/// Upgrade to a build whose `BLOCK_ERRORS` changed meaning, and back, under fio:
/// every read once across both switches and the gaps, one start time, the changed
/// map reset and named.
#[test]
fn an_upgrade_and_a_downgrade_under_fio_keep_every_count_and_reset_the_changed_map() {
    require_root!();
    require_tool("fio");
    let env = Env::new();
    let collector = OtlpServer::start_grpc("127.0.0.1:0".parse().unwrap());
    let config = env.write_config(
        "c.toml",
        &format!(
            "[otlp]\nenabled = true\nendpoint = \"{}\"\n",
            collector.endpoint()
        ),
    );
    let device = LoopDevice::new(256);
    let mut old = Agent::start(&config);
    let start = env.saved_start();
    let old_sets = env.pin_sets();
    let old_links = env.pinned_links();
    assert_eq!(old_sets.len(), 1, "{old_sets:?}");
    let before = device.stat();
    let fio = device.fio(&[
        "--rw=randread",
        "--bs=4k",
        "--iodepth=4",
        "--rate_iops=2000",
        "--time_based",
        "--runtime=14",
    ]);
    old.wait_reports(2);
    let (mut reports, _) = old.stop(libc::SIGTERM);
    // While no agent runs the old programs count on, into the old maps.
    std::thread::sleep(Duration::from_millis(500));

    let mut new = Agent::start_with(upgraded_agent(), &config);
    let new_sets = env.pin_sets();
    assert_eq!(new_sets.len(), 1, "the old set is removed: {new_sets:?}");
    assert_ne!(new_sets, old_sets, "another object is another layout");
    assert_eq!(
        env.pinned_links(),
        old_links,
        "the same programs, attached anew from the new object"
    );
    new.wait_reports(3);
    let (r, up) = new.stop(libc::SIGTERM);
    reports.extend(r);
    std::thread::sleep(Duration::from_millis(500));

    // And back (a downgrade): the normal build's layout again.
    let mut back = Agent::start(&config);
    assert_eq!(env.pin_sets(), old_sets, "the normal build's layout again");
    fio.finish();
    device.wait_idle();
    back.wait_reports(2);
    let (r, down) = back.stop(libc::SIGTERM);
    reports.extend(r);
    let kernel = device.stat().read - before.read;
    let got = reads_of(&reports, &device.number);
    eprintln!(
        "upgrade and downgrade under fio: sysfs {kernel} reads; reported {} + {} \
         unrecorded; last cumulative {} + {}",
        got.samples, got.unrecorded, got.last_cumulative, got.last_unrecorded_total
    );
    for (switch, log) in [("upgrade", &up), ("downgrade", &down)] {
        for line in log.lines().filter(|l| {
            l.contains("counts continue") || l.contains("map reset") || l.contains("attempt")
        }) {
            eprintln!("{switch}: {line}");
        }
        for said in [
            "pins of another version or map layout found",
            "counts continue across the switch of pin sets",
            "old pins removed, their programs detached",
        ] {
            assert!(log.contains(said), "the {switch} log says `{said}`: {log}");
        }
        let reset = log
            .lines()
            .find(|l| l.contains("map reset at the upgrade"))
            .unwrap_or_else(|| panic!("the {switch} names the reset map: {log}"));
        assert!(
            reset.contains("BLOCK_ERRORS") && reset.contains("fingerprint differs"),
            "{reset}"
        );
        assert_eq!(
            log.matches("map reset at the upgrade").count(),
            1,
            "only the changed map is reset: {log}"
        );
    }
    assert_eq!(env.saved_start(), start, "one start time throughout");
    assert_continuous(&got, kernel, &collector, start);
}

/// An upgrade after the device's I/O ended: the new programs never see the device,
/// and what the old ones counted of it (the reads since the last report, unrecorded
/// totals included) is still reported, once.
#[test]
fn an_upgrade_after_the_devices_io_ended_still_reports_what_the_old_set_counted() {
    require_root!();
    require_tool("fio");
    let env = Env::new();
    let config = env.config();
    let device = LoopDevice::new(256);
    let mut old = Agent::start(&config);
    let before = device.stat();
    let fio = device.fio(&[
        "--rw=randread",
        "--bs=4k",
        "--iodepth=4",
        "--rate_iops=2000",
        "--time_based",
        "--runtime=3",
    ]);
    old.wait_reports(1);
    let (mut reports, _) = old.stop(libc::SIGTERM);
    // The old programs count the rest of fio's reads while no agent runs.
    fio.finish();
    device.wait_idle();
    let mut new = Agent::start_with(upgraded_agent(), &config);
    new.wait_reports(2);
    let (r, up) = new.stop(libc::SIGTERM);
    reports.extend(r);
    assert!(
        up.contains("counts continue across the switch of pin sets"),
        "{up}"
    );
    let kernel = device.stat().read - before.read;
    let got = reads_of(&reports, &device.number);
    eprintln!(
        "upgrade after the I/O ended: sysfs {kernel} reads; reported {} + {} unrecorded; \
         last cumulative {} + {}",
        got.samples, got.unrecorded, got.last_cumulative, got.last_unrecorded_total
    );
    assert!(kernel > 1000, "fio ran: {kernel}");
    assert_eq!(
        got.last_cumulative + got.last_unrecorded_total - got.last_overcounted_total,
        kernel,
        "the last report holds every read, the old set's included"
    );
    assert_eq!(
        got.samples + got.unrecorded - got.overcounted,
        kernel,
        "the interval counts add up to every read, none twice"
    );
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

/// Sends SIGHUP to the agent.
fn hup(agent: &Agent) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGHUP) };
}

/// Run-queue samples the scheduler probe reported in `reports`.
fn sched_samples(reports: &[serde_json::Value]) -> u64 {
    reports
        .iter()
        .flat_map(|r| r["series"].as_array().unwrap())
        .filter(|s| s["family"] == "sched.runqueue.latency")
        .map(|s| s["count"].as_u64().unwrap())
        .sum()
}

#[test]
fn sighup_detaches_and_reattaches_a_probe_and_moves_an_exporter_while_block_counts_stay_exact() {
    require_root!();
    require_tool("fio");
    let env = Env::new();
    let (old_port, new_port) = common::free_ports::<2>().into();
    let prometheus =
        |port: u16| format!("[prometheus]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n");
    let config = env.write_config_with_sched("c.toml", true, &prometheus(old_port));
    let device = LoopDevice::new(256);
    let mut agent = Agent::start(&config);
    let all_links = env.pinned_links();
    let before = device.stat();
    let fio = device.fio(&[
        "--rw=randread",
        "--bs=4k",
        "--iodepth=4",
        "--rate_iops=2000",
        "--time_based",
        "--runtime=14",
    ]);
    agent.wait_reports(2);

    // The scheduler probe off: its programs are detached and unpinned, block's kept.
    env.write_config_with_sched("c.toml", false, &prometheus(old_port));
    hup(&agent);
    agent.wait_reports(1);
    let off_from = agent.count();
    // An invalid file in between: the agent goes on with what runs.
    std::fs::write(&config, "[probes.sched\nenabled = true").unwrap();
    hup(&agent);
    agent.wait_reports(3);
    let off_to = agent.count();
    let without_sched = env.pinned_links();
    assert!(
        !without_sched.is_empty() && without_sched.len() < all_links.len(),
        "sched's links go, block's stay: {all_links:?} -> {without_sched:?}"
    );

    // Back on, and Prometheus moved to another port.
    env.write_config_with_sched("c.toml", true, &prometheus(new_port));
    hup(&agent);
    // The moved endpoint serves the last report from its first request, not a 503
    // until the next interval.
    let first = (0..200)
        .find_map(|_| {
            let got = common::http_get(&format!("127.0.0.1:{new_port}"), "/metrics").ok();
            if got.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            got
        })
        .expect("Prometheus listens on the new port");
    assert_eq!(first.0, 200, "{}", first.1);
    agent.wait_reports(3);
    assert_eq!(env.pinned_links(), all_links, "sched's links pinned again");
    let (status, body) = common::http_get(&format!("127.0.0.1:{new_port}"), "/metrics")
        .expect("Prometheus answers on the new port");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("nodepulse_block_io_latency"), "{body}");
    assert!(
        common::http_get(&format!("127.0.0.1:{old_port}"), "/metrics").is_err(),
        "the old port is closed"
    );

    fio.finish();
    device.wait_idle();
    agent.wait_reports(2);
    let (reports, log) = agent.stop(libc::SIGTERM);
    let kernel = device.stat().read - before.read;
    let got = reads_of(&reports, &device.number);
    // Reports while sched was off (after the one the SIGHUP landed in).
    let off = &reports[off_from..off_to];
    let state_of = |r: &serde_json::Value| {
        r["probes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["probe"] == "sched")
            .map(|p| p["state"].as_str().unwrap().to_owned())
    };
    eprintln!(
        "SIGHUP off/on of sched under fio: sysfs {kernel} reads; reported {} + {} \
         unrecorded; last cumulative {} + {}; sched samples while off {}, after {}",
        got.samples,
        got.unrecorded,
        got.last_cumulative,
        got.last_unrecorded_total,
        sched_samples(off),
        sched_samples(&reports[off_to..])
    );
    assert!(kernel > 1000, "fio ran: {kernel}");
    assert_eq!(
        got.samples + got.unrecorded,
        kernel,
        "block reads exact, none twice"
    );
    assert_eq!(got.last_cumulative + got.last_unrecorded_total, kernel);
    assert!(
        off.iter()
            .all(|r| state_of(r).as_deref() == Some("disabled")),
        "{off:?}"
    );
    assert_eq!(sched_samples(off), 0, "nothing measured while detached");
    assert!(
        sched_samples(&reports[off_to..]) > 0,
        "measured again once re-enabled"
    );
    assert_eq!(
        state_of(reports.last().unwrap()).as_deref(),
        Some("up"),
        "sched up again"
    );
    assert!(
        log.contains("configuration not reloaded, the running one stays"),
        "{log}"
    );
    let toggles: Vec<String> = log
        .lines()
        .filter(|l| l.contains("probes enabled or disabled"))
        .map(without_colours)
        .collect();
    assert_eq!(toggles.len(), 2, "{log}");
    assert!(
        toggles[0].contains("detached=[\"sched\"]"),
        "{}",
        toggles[0]
    );
    assert!(
        toggles[1].contains("attached=[\"sched\"]"),
        "{}",
        toggles[1]
    );
    let last = log
        .lines()
        .rfind(|l| l.contains("configuration reloaded"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(last.contains("\"probes\", \"prometheus\""), "{last}");

    // The layout does not depend on which probes run: a start with sched disabled
    // adopts the same pin set and unpins sched's links, which must not count on.
    let sets = env.pin_sets();
    env.write_config_with_sched("c.toml", false, "");
    let agent = Agent::start(&config);
    assert_eq!(env.pin_sets(), sets, "same pin set");
    assert_eq!(env.pinned_links(), without_sched, "sched's links removed");
    agent.stop(libc::SIGTERM);
}

/// A log line without its terminal colour sequences.
fn without_colours(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// The run-queue waits of `cgroup` in `reports`.
#[derive(Debug, Default)]
struct CgroupWaits {
    /// The interval counts and sums (ns) added up.
    count: u64,
    sum: u64,
    /// The last report's cumulative count (0 when the series is absent from it).
    last_cumulative: u64,
    in_last: bool,
}

fn cgroup_waits(reports: &[serde_json::Value], cgroup: &str) -> CgroupWaits {
    let mut w = CgroupWaits::default();
    for report in reports {
        (w.last_cumulative, w.in_last) = (0, false);
        for s in report["series"].as_array().unwrap() {
            if s["family"] == "cgroup.runqueue.latency" && s["labels"]["cgroup"] == cgroup {
                w.count += s["count"].as_u64().unwrap();
                w.sum += s["sum"].as_u64().unwrap();
                (w.last_cumulative, w.in_last) = (s["cumulative_count"].as_u64().unwrap(), true);
            }
        }
    }
    w
}

/// A cgroup's CPU waits end before an upgrade (another layout): the new programs never
/// see the cgroup, and its cumulative still goes on in every report of the new run,
/// equal to the waits the interval reports added up and to the kernel's run_delay.
#[test]
fn a_cgroup_idle_since_an_upgrade_keeps_its_carried_total() {
    require_root!();
    require_tool("taskset");
    use crate::sched_probe::{TestCgroup, run_delay};
    use nodepulse::attribution::{CgroupMode, cgroups::find_hierarchy};
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let hierarchy = find_hierarchy(&mounts, CgroupMode::Auto).expect("a cgroup hierarchy");
    let env = Env::new();
    // Every cgroup keeps its series: the budget keeps the busiest 50 (by the interval's
    // count) and folds the rest, and an idle one has none in the interval.
    let limits = "[limits]\nmax_cgroups = 10000\n";
    let config = env.write_config_with_sched("sched.toml", true, limits);
    let other = env.write_config_with_sched(
        "other.toml",
        true,
        &format!("{limits}[probes.block]\nkernel_timestamps = false\n"),
    );
    let mut hogs = TestCgroup::new(&hierarchy.root, "carried");
    for _ in 0..3 {
        hogs.spawn("taskset -c 0 sh -c 'while :; do :; done'");
    }
    std::thread::sleep(Duration::from_millis(300));
    let tids = hogs.threads();
    assert_eq!(tids.len(), 3, "{tids:?}");
    let signal = |sig| {
        for &t in &tids {
            // SAFETY: kill(2) on the test's own workload.
            unsafe { libc::kill(t as i32, sig) };
        }
    };
    // Stopped, the hogs wait for nothing: the kernel's run_delay is the span's waits.
    signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(100));
    let mut old = Agent::start(&config);
    let before = run_delay(&tids);
    signal(libc::SIGCONT);
    old.wait_reports(2);
    let (mut reports, _) = old.stop(libc::SIGTERM);
    // The old programs count on while no agent runs, then the waits end.
    std::thread::sleep(Duration::from_millis(700));
    signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(100));
    let kernel = run_delay(&tids) - before;

    let mut new = Agent::start(&other);
    new.wait_reports(3);
    let (after, log) = new.stop(libc::SIGTERM);
    assert!(
        log.contains("counts continue across the switch of pin sets"),
        "{log}"
    );
    for line in log
        .lines()
        .filter(|l| l.contains("counts continue") || l.contains("reset"))
    {
        eprintln!("upgrade: {line}");
    }
    let old_run = cgroup_waits(&reports, &hogs.name);
    let new_run = cgroup_waits(&after, &hogs.name);
    reports.extend(after.iter().cloned());
    let all = cgroup_waits(&reports, &hogs.name);
    eprintln!(
        "cgroup {} idle since the upgrade: run_delay {kernel} ns; reported {} ns in {} \
         waits over the intervals (old run {old_run:?}, new run {new_run:?}), last \
         cumulative count {}",
        hogs.name, all.sum, all.count, all.last_cumulative
    );
    assert!(
        all.in_last,
        "the new run's last report has the cgroup: {new_run:?}"
    );
    assert!(
        after.iter().all(|r| r["series"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["labels"]["cgroup"] == hogs.name.as_str())),
        "every report of the new run has it"
    );
    assert_eq!(
        all.count, all.last_cumulative,
        "the interval counts add up to the cumulative"
    );
    assert!(
        all.last_cumulative > old_run.last_cumulative,
        "the waits of the gap are in it"
    );
    // Per cgroup the probe is a little short of run_delay (see docs/architecture.md).
    let ratio = all.sum as f64 / kernel as f64;
    assert!(
        (0.95..=1.001).contains(&ratio),
        "{} vs {kernel}: {ratio}",
        all.sum
    );
    signal(libc::SIGCONT);
}
