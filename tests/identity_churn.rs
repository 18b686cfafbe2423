//! Counts stay exact while the things they describe come and go (root, real kernel):
//! a KVM guest process that exits mid-interval, a cgroup removed mid-interval, a loop
//! device detached mid-interval. Each runs the real agent (`nodepulse record`, JSON
//! lines) and adds up what it reported over every interval.

use crate::common;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{LoopDevice, kvm_guest::guest_process_path, require_tool};
use nodepulse::attribution::{CgroupMode, cgroups::find_hierarchy};

/// The agent as a process, its reports read as they come.
struct Agent {
    child: Child,
    reports: mpsc::Receiver<serde_json::Value>,
    seen: Vec<serde_json::Value>,
    _config: tempfile::NamedTempFile,
}

impl Agent {
    /// Starts `nodepulse record` with the probes named enabled and the others off, a 1 s
    /// interval, and waits for its first report (every probe attached by then).
    fn start(probes: &[&str]) -> Self {
        let mut toml = String::from("[detect]\nenabled = false\n");
        for p in nodepulse::probes::FAMILIES.iter().map(|f| f.name()) {
            toml += &format!("[probes.{p}]\nenabled = {}\n", probes.contains(&p));
        }
        let config = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(config.path(), toml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_nodepulse"))
            .args(["record", "--interval", "1s", "--config"])
            .arg(config.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nodepulse");
        let stdout = child.stdout.take().unwrap();
        let (tx, reports) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let report = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("report is not JSON ({e}): {line}"));
                if tx.send(report).is_err() {
                    break;
                }
            }
        });
        let mut agent = Self {
            child,
            reports,
            seen: Vec::new(),
            _config: config,
        };
        agent.wait_reports(1);
        agent
    }

    /// Waits for `n` more reports.
    fn wait_reports(&mut self, n: usize) {
        for _ in 0..n {
            let report = self
                .reports
                .recv_timeout(Duration::from_secs(20))
                .expect("a report every second");
            self.seen.push(report);
        }
    }

    /// Takes the reports already made (say, while a workload ran), so that
    /// [`Self::wait_reports`] waits for new ones.
    fn catch_up(&mut self) {
        while let Ok(report) = self.reports.try_recv() {
            self.seen.push(report);
        }
    }

    /// Stops the agent (SIGINT: it reports a last time) and returns every report.
    fn stop(mut self) -> Vec<serde_json::Value> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        while let Ok(report) = self.reports.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(report);
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Labels = BTreeMap<String, String>;

fn labels(series: &serde_json::Value) -> Labels {
    series["labels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// Interval counts of `family` added up over all reports, per label set.
fn totals(reports: &[serde_json::Value], family: &str) -> BTreeMap<Labels, u64> {
    let mut out = BTreeMap::new();
    for r in reports {
        for s in r["series"].as_array().unwrap() {
            if s["family"] == family {
                *out.entry(labels(s)).or_default() += s["count"].as_u64().unwrap();
            }
        }
    }
    out
}

/// Whether the last report still has a series of `family` matching `pick`.
fn in_last_report(
    reports: &[serde_json::Value],
    family: &str,
    pick: impl Fn(&Labels) -> bool,
) -> bool {
    reports.last().unwrap()["series"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["family"] == family && pick(&labels(s)))
}

#[test]
fn a_vm_that_exits_mid_interval_is_counted_once_under_its_name() {
    require_root!();
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED: no /dev/kvm on this machine");
        return;
    }
    let mut agent = Agent::start(&["kvm", "sched"]);
    let name = format!("churn-{}", std::process::id());
    let uuid = "6a1c3c5e-2f4b-4f57-9b7e-3e2d1c0b9a87";
    // Long enough to span two interval boundaries (the agent names it while it runs:
    // 60,000 rounds took 1.0-1.1 s here, and a VM that lives between two reads is never
    // seen alive), short enough to end mid-interval.
    let iterations = 180_000u64;
    let started = Instant::now();
    let guest = Command::new(guest_process_path())
        .args([
            "-name",
            &format!("guest={name},debug-threads=on"),
            "-uuid",
            uuid,
        ])
        .env("NODEPULSE_KVM_GUEST_ITERATIONS", iterations.to_string())
        .stdout(Stdio::piped())
        .output()
        .expect("run the guest process");
    let ran = started.elapsed();
    let run: serde_json::Value = serde_json::from_slice(&guest.stdout).expect("guest report");
    let pid = run["pid"].as_u64().unwrap();
    assert_eq!(run["io"], iterations);
    assert_eq!(run["hlt"], iterations);
    // The kernel's last counts, then the read that ends the series.
    agent.catch_up();
    agent.wait_reports(4);
    let reports = agent.stop();
    eprintln!("guest pid {pid} ran {ran:?}");

    for family in ["kvm.run.duration", "kvm.exit.userspace.latency"] {
        let totals = totals(&reports, family);
        let mut ours: BTreeMap<String, u64> = BTreeMap::new();
        for (labels, count) in &totals {
            let vm = labels.get("vm").map(String::as_str);
            assert_ne!(
                vm,
                Some(format!("pid:{pid}").as_str()),
                "{family}: counted again under the pid after the process exited: {totals:?}"
            );
            if vm == Some(name.as_str()) {
                assert_eq!(labels.get("vm.uuid").map(String::as_str), Some(uuid));
                *ours.entry(labels["reason"].clone()).or_default() += count;
            }
        }
        eprintln!("{family}: {ours:?}");
        assert_eq!(ours.get("io"), Some(&iterations), "{family}");
        // Every KVM_RUN ends in an exit; every exit but the last is handled and run
        // again.
        let hlt = if family == "kvm.run.duration" {
            iterations
        } else {
            iterations - 1
        };
        assert_eq!(ours.get("hlt"), Some(&hlt), "{family}");
        assert!(
            !in_last_report(&reports, family, |l| l.get("vm") == Some(&name)),
            "{family}: the exited VM's series ended"
        );
    }
}

/// A test cgroup in the hierarchy the run-queue probe reads by default.
struct Cgroup {
    path: std::path::PathBuf,
    name: String,
}

impl Cgroup {
    fn new(role: &str) -> Self {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let hierarchy = find_hierarchy(&mounts, CgroupMode::Auto).expect("a cgroup hierarchy");
        let name = format!("nodepulse-churn-{role}-{}", std::process::id());
        let path = hierarchy.root.join(&name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self {
            path,
            name: format!("/{name}"),
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[test]
fn a_cgroup_removed_mid_interval_is_counted_under_its_path_then_ends() {
    require_root!();
    let mut agent = Agent::start(&["sched"]);
    let cgroup = Cgroup::new("gone");
    // One process joins the cgroup itself, sleeps 1 ms 6,000 times (a wait per
    // wakeup; long enough for the agent's periodic cgroup scan to name it), and prints how many times the scheduler ran it meanwhile
    // (`/proc/self/schedstat`, field 2: timeslices run).
    let script = format!(
        "import os, time\n\
         open('{procs}', 'w').write(str(os.getpid()))\n\
         s = lambda: int(open('/proc/self/schedstat').read().split()[2])\n\
         before = s()\n\
         for _ in range(6000): time.sleep(0.001)\n\
         print(s() - before)\n",
        procs = cgroup.path.join("cgroup.procs").display()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let timeslices: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let removed_at = Instant::now();
    std::fs::remove_dir(&cgroup.path).expect("remove the empty cgroup");
    agent.catch_up();
    agent.wait_reports(4);
    let reports = agent.stop();

    let totals = totals(&reports, "cgroup.runqueue.latency");
    let ours: u64 = totals
        .iter()
        .filter(|(l, _)| l.get("cgroup") == Some(&cgroup.name))
        .map(|(_, c)| c)
        .sum();
    let by_id: Vec<_> = totals
        .keys()
        .filter(|l| l.get("cgroup").is_some_and(|c| c.starts_with("id:")))
        .collect();
    eprintln!(
        "{}: {ours} waits, schedstat {timeslices} timeslices",
        cgroup.name
    );
    assert!(
        by_id.is_empty(),
        "counted under an id after removal: {by_id:?}"
    );
    // Each switch-in is one sample; the process's first few (joining, before its
    // first reading) and last few (printing, exiting) fall outside its own readings
    // of schedstat: up to 20 more. A few are never sampled: the kernel does not run BPF
    // programs in some contexts (on this VM, while a thread of its PID 1 is switched
    // out; see docs/architecture.md), so up to 0.5 % may be missing.
    assert!(
        ours * 1000 >= timeslices * 995 && ours <= timeslices + 20,
        "{ours} samples for {timeslices} timeslices"
    );
    assert!(
        !in_last_report(&reports, "cgroup.runqueue.latency", |l| l.get("cgroup")
            == Some(&cgroup.name)),
        "the removed cgroup does not linger as a zero-count series ({:?} after removal)",
        removed_at.elapsed()
    );
}

#[test]
fn a_loop_device_detached_mid_interval_keeps_every_request() {
    require_root!();
    require_tool("dd");
    let mut agent = Agent::start(&["block"]);
    // Every loop device's reads now: whichever free device losetup picks, its
    // baseline is known (the kernel's partition scan after attach counts too).
    agent.catch_up();
    let before: BTreeMap<String, u64> = std::fs::read_dir("/sys/block")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("loop"))
        .map(|n| {
            let reads = std::fs::read_to_string(format!("/sys/block/{n}/stat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            (n, reads)
        })
        .collect();
    let device = LoopDevice::new(64);
    device.dd_read(3000, "4k");
    let kernel_reads = device.stat().read - before.get(&device.name).copied().unwrap_or(0);
    let (name, number) = (device.name.clone(), device.number.clone());
    // Detached (and its backing file deleted) mid-interval.
    drop(device);
    agent.wait_reports(3);
    let reports = agent.stop();
    let of_device = |family| -> BTreeMap<Labels, u64> {
        totals(&reports, family)
            .into_iter()
            .filter(|(l, _)| l.get("dev") == Some(&number))
            .collect()
    };
    let latency = of_device("block.io.device.latency");
    let reads: u64 = latency
        .iter()
        .filter(|(l, _)| l.get("op").map(String::as_str) == Some("read"))
        .map(|(_, c)| c)
        .sum();
    let unrecorded: u64 = reports
        .iter()
        .flat_map(|r| r["counters"].as_array().unwrap().iter())
        .filter(|c| c["family"] == "block.io.unrecorded" && c["labels"]["dev"] == number.as_str())
        .map(|c| c["delta"].as_u64().unwrap())
        .sum();
    eprintln!(
        "{name} ({number}): {reads} reads reported, {unrecorded} unrecorded, sysfs {kernel_reads}"
    );
    assert!(
        latency.keys().all(|l| l.get("device") == Some(&name)),
        "all under its name: {latency:?}"
    );
    assert_eq!(
        reads + unrecorded,
        kernel_reads,
        "every read the kernel completed"
    );
    assert!(reads >= 3000, "dd's reads");
}
