//! `cargo xtask bench`: what the probes cost, measured in one run.
//!
//! Each workload runs in pairs without and with the agent, alternating which goes first
//! so drift on this noisy machine hits both sides alike:
//! - `block`: fio `randread --bs=4k --iodepth=16` on a loop device (IOPS);
//! - `switch`: `stress-ng --switch 2`, a context-switch storm (bogo ops/s);
//! - `kvm`: a real-mode guest through /dev/kvm doing `out` + `hlt` exits to userspace
//!   (exits/s), the test suite's `kvm_guest_process`;
//! - `tcp`, `tcp-unwatched`: an iperf3 stream over loopback (bits/s) on a port of a
//!   configured peer group, or on a port in none, with only the TCP probe running;
//! - `endpoints`: request latency of `/metrics` and `/healthz` under abuse (see
//!   [`endpoints`]).
//!
//! It reports each run's throughput, the medians and the median of per-pair ratios, the
//! kernel cost per event of every program that ran (BPF run-time stats, as the agent
//! reports them), and the agent's own CPU and memory.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::{run::build_agent, setup, util};

mod compare;
mod endpoints;
mod tcp;
mod volume;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Workload {
    /// fio randread bs=4k iodepth=16 on a loop device.
    Block,
    /// The same with randwrite.
    BlockWrite,
    Switch,
    Kvm,
    /// OTLP export cost under fio: agent CPU and RSS, bytes per interval, export time,
    /// at a 10 s and a 1 s interval.
    Otlp,
    /// iperf3 over loopback on a watched port (the TCP probe alone).
    Tcp,
    /// OTLP bytes per 10 s interval and signal at a storage node's cardinality (24
    /// loop devices, 50 cgroups, 2 TCP groups), for several export settings at once.
    Volume,
    /// CPU per interval of the userspace collection path (merge, delta, budget, report,
    /// OTLP encoding, gzip) at 10, 100, 1,000 and 10,000 synthetic series; no root.
    Scaling,
    /// The same on a port in no group: what every other connection pays.
    TcpUnwatched,
    /// The Prometheus and health endpoints under 1,000 idle and 50 slowloris
    /// connections: latency of concurrent requests, and the agent's memory.
    Endpoints,
}

#[derive(clap::Args)]
pub struct Args {
    /// Workloads to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Workload::Block, Workload::Switch, Workload::Kvm])]
    workload: Vec<Workload>,
    /// Pairs of runs (without, with the agent) per workload; at least 3.
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 6)]
    runtime: u64,
    /// Attach kind for the block probe (auto, tp_btf, raw_tracepoint, tracepoint).
    #[arg(long, default_value = "auto")]
    attach: String,
    /// I/O scheduler of the benchmark's loop device (none, mq-deadline, …): with one,
    /// every request also passes the insertion probe.
    #[arg(long, default_value = "none")]
    scheduler: String,
    /// Runs the peer's equivalent too (bpftrace biolatency for block workloads, runqlat
    /// for switch), in rounds of three alternating runs, and prints both side by side.
    #[arg(long)]
    compare: bool,
    /// Ten-second intervals measured by the volume workload (after one to settle).
    #[arg(long, default_value_t = 3)]
    intervals: u64,
    /// Another nodepulse binary (e.g. a build of an earlier commit) that the volume
    /// workload runs beside this one at a 1 s interval, for a side-by-side CPU figure.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Volume workload: run only the agents whose figure is CPU (lossless at 10 s and
    /// 1 s, and the baseline's), fewer agents loading the host.
    #[arg(long)]
    cpu_only: bool,
    /// A nodepulse binary to measure instead of building this tree's (e.g. a build of
    /// another branch, for a side-by-side cost).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Lines appended to the agent configuration the benchmark writes (e.g.
    /// "[probes.sched]\nsaturation = true"), to measure a setting's cost.
    #[arg(long, default_value = "")]
    config_extra: String,
}

pub fn run(mut args: Args) -> Result<()> {
    ensure!(args.pairs >= 3, "--pairs must be at least 3 for a median");
    for b in [&args.baseline, &args.agent].into_iter().flatten() {
        ensure!(
            b.is_file(),
            "{}: no such file; give the path of a nodepulse binary",
            b.display()
        );
    }
    if args.workload.contains(&Workload::Scaling) {
        println!("\n== collection scaling (synthetic series; building the example, release) ...");
        util::run_agent_example("collect_scaling", &[])?;
        args.workload.retain(|w| *w != Workload::Scaling);
        if args.workload.is_empty() {
            return Ok(());
        }
    }
    ensure!(
        util::is_root(),
        "the benchmark loads eBPF programs and creates a loop device: run it as root"
    );
    setup::ensure()?;
    if args.compare {
        for w in &args.workload {
            ensure!(
                peer_of(*w).is_some(),
                "--compare has no peer for workload {w:?}: use --workload block, block-write \
                 or switch"
            );
        }
        setup::ensure_packages(setup::COMPARE_PACKAGES)?;
    }
    let agent = match &args.agent {
        Some(agent) => agent.clone(),
        None => build_agent(true)?,
    };
    let dir = util::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("nodepulse-bench.toml");
    std::fs::write(
        &config,
        format!(
            "[probes.block]\nattach = \"{}\"\n{}\n",
            args.attach,
            args.config_extra.replace("\\n", "\n")
        ),
    )?;
    let tcp_config = dir.join("nodepulse-bench-tcp.toml");
    std::fs::write(&tcp_config, tcp::config())?;

    for workload in &args.workload {
        if *workload == Workload::Otlp {
            otlp_cost(&agent, &dir, args.runtime)?;
            continue;
        }
        if *workload == Workload::Endpoints {
            endpoints::run(&agent, &dir, args.pairs)?;
            continue;
        }
        if *workload == Workload::Volume {
            volume::run(
                &agent,
                args.baseline.as_deref(),
                &dir,
                args.intervals,
                args.cpu_only,
            )?;
            continue;
        }
        let device;
        let _server;
        let (what, unit, mut measure): (String, &str, Box<dyn FnMut() -> Result<f64>>) =
            match workload {
                Workload::Block | Workload::BlockWrite => {
                    device = LoopDevice::create(&dir, &args.scheduler)?;
                    let path = device.path.clone();
                    let runtime = args.runtime;
                    let rw = if *workload == Workload::Block {
                        "randread"
                    } else {
                        "randwrite"
                    };
                    (
                        format!(
                            "fio {rw} bs=4k iodepth=16 on {} (scheduler {})",
                            path.display(),
                            args.scheduler
                        ),
                        "IOPS",
                        Box::new(move || fio(&path, rw, runtime)),
                    )
                }
                Workload::Switch => {
                    let runtime = args.runtime;
                    (
                        "stress-ng --switch 2".into(),
                        "bogo ops/s",
                        Box::new(move || stress_switch(runtime)),
                    )
                }
                Workload::Otlp | Workload::Volume | Workload::Scaling | Workload::Endpoints => {
                    unreachable!("measured on their own")
                }
                Workload::Tcp | Workload::TcpUnwatched => {
                    let port = if *workload == Workload::Tcp {
                        tcp::WATCHED_PORT
                    } else {
                        tcp::UNWATCHED_PORT
                    };
                    _server = tcp::Server::start(port)?;
                    let runtime = args.runtime;
                    (
                        format!("iperf3 over loopback to port {port}"),
                        "bit/s",
                        Box::new(move || tcp::stream(port, runtime)),
                    )
                }
                Workload::Kvm => {
                    let guest = build_kvm_guest()?;
                    let iterations = 60_000 * args.runtime;
                    (
                        format!("KVM guest, {iterations} × (out + hlt)"),
                        "exits/s",
                        Box::new(move || kvm_guest(&guest, iterations)),
                    )
                }
            };
        println!(
            "\n== {what}: {} s per run, {} pairs, block attach {}",
            args.runtime, args.pairs, args.attach
        );
        let config = match workload {
            Workload::Tcp | Workload::TcpUnwatched => &tcp_config,
            _ => &config,
        };
        match peer_of(*workload).filter(|_| args.compare) {
            Some(peer) => compare::rounds(&agent, config, peer, args.pairs, unit, &mut *measure)?,
            None => pairs(&agent, config, args.pairs, unit, &mut *measure)?,
        }
    }
    Ok(())
}

/// The peer tool `--compare` runs beside nodepulse for a workload.
fn peer_of(workload: Workload) -> Option<compare::Peer> {
    match workload {
        Workload::Block | Workload::BlockWrite => Some(compare::BIOLATENCY),
        Workload::Switch => Some(compare::RUNQLAT),
        _ => None,
    }
}

/// Runs `measure` in alternating pairs without and with the agent, and prints results.
fn pairs(
    agent: &Path,
    config: &Path,
    count: usize,
    unit: &str,
    measure: &mut dyn FnMut() -> Result<f64>,
) -> Result<()> {
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut agent_runs = Vec::new();
    for pair in 0..count {
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for use_agent in order {
            let label = if use_agent { "with agent" } else { "without" };
            print!("[pair {}/{count}] {label:<11} ... ", pair + 1);
            let value = if use_agent {
                let running = RunningAgent::start(agent, config)?;
                let value = measure()?;
                agent_runs.push(running.stop()?);
                with.push(value);
                value
            } else {
                let value = measure()?;
                without.push(value);
                value
            };
            println!("{value:>12.0} {unit}");
        }
    }

    let (m_without, m_with) = (median(&without), median(&with));
    // Each pair ran back to back: its ratio is the least disturbed by drift.
    let ratios: Vec<f64> = with.iter().zip(&without).map(|(w, wo)| w / wo).collect();
    println!("results (medians of {count} pairs)");
    println!("  without agent           {m_without:>12.0}  {unit}");
    println!("  with agent              {m_with:>12.0}  {unit}");
    println!(
        "  throughput ratio        {:>12.3}  (median of per-pair with/without)",
        median(&ratios)
    );
    let mut programs: Vec<String> = agent_runs
        .iter()
        .flat_map(|r| r.programs.iter().filter(|p| p.1 > 0).map(|p| p.0.clone()))
        .collect();
    programs.sort();
    programs.dedup();
    for program in programs {
        let per_run: Vec<f64> = agent_runs
            .iter()
            .filter_map(|r| r.programs.iter().find(|p| p.0 == program && p.1 > 0))
            .map(|p| p.2)
            .collect();
        let events: Vec<f64> = agent_runs
            .iter()
            .filter_map(|r| r.programs.iter().find(|p| p.0 == program))
            .map(|p| p.1 as f64)
            .collect();
        println!(
            "  {program:<26}{:>10.0}  ns/event (BPF stats; median {:.0} events per run)",
            median(&per_run),
            median(&events)
        );
    }
    let cpu: Vec<f64> = agent_runs.iter().map(|r| r.cpu_percent).collect();
    let rss = agent_runs.iter().map(|r| r.rss_bytes).max().unwrap_or(0);
    println!(
        "  agent CPU               {:>12.2}  % of one CPU",
        median(&cpu)
    );
    println!(
        "  agent RSS (max)         {:>12.1}  MiB",
        rss as f64 / 1048576.0
    );
    Ok(())
}

/// The median; NaN (printed as such) when there are no values.
pub(crate) fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// IOPS of one fio run; `rw` is `randread` or `randwrite`.
fn fio(device: &Path, rw: &str, runtime: u64) -> Result<f64> {
    let out = Command::new("fio")
        .args([
            "--name=bench",
            &format!("--rw={rw}"),
            "--bs=4k",
            "--iodepth=16",
            "--ioengine=libaio",
            "--direct=1",
            "--time_based",
            "--output-format=json",
        ])
        .arg(format!("--runtime={runtime}"))
        .arg(format!("--filename={}", device.display()))
        .output()
        .context("running fio (cargo xtask setup installs it)")?;
    ensure!(
        out.status.success(),
        "fio failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).context("fio's JSON")?;
    let side = if rw.contains("write") {
        "write"
    } else {
        "read"
    };
    report["jobs"][0][side]["iops"]
        .as_f64()
        .with_context(|| format!("no {side} IOPS in fio's report"))
}

/// What the agent reported over one benchmark run.
pub(crate) struct AgentRun {
    /// (program, events, ns per event over the whole run)
    programs: Vec<(String, u64, f64)>,
    pub(crate) cpu_percent: f64,
    rss_bytes: u64,
}

/// `nodepulse run` reporting JSON every second; stopped with SIGTERM.
pub(crate) struct RunningAgent {
    child: Child,
}

impl RunningAgent {
    pub(crate) fn start(agent: &Path, config: &Path) -> Result<Self> {
        Ok(Self {
            child: spawn_agent(agent, 1, config)?,
        })
    }

    pub(crate) fn stop(mut self) -> Result<AgentRun> {
        // One more interval so the end of the run is reported.
        std::thread::sleep(Duration::from_millis(1100));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut stdout)?;
        }
        let status = self.child.wait()?;
        ensure!(status.success(), "nodepulse exited with {status}");
        summarise(&stdout)
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Adds up the agent's per-interval reports into whole-run figures.
fn summarise(json_lines: &str) -> Result<AgentRun> {
    let mut totals: Vec<(String, u64, u64)> = Vec::new();
    let mut cpu = Vec::new();
    let mut rss = 0;
    for line in json_lines.lines().filter(|l| !l.is_empty()) {
        let report: Value = serde_json::from_str(line).context("agent JSON line")?;
        cpu.push(report["agent"]["cpu_percent"].as_f64().unwrap_or(0.0));
        rss = rss.max(report["agent"]["rss_bytes"].as_u64().unwrap_or(0));
        let probes = report["probes"].as_array().cloned().unwrap_or_default();
        for program in probes
            .iter()
            .flat_map(|p| p["programs"].as_array().cloned().unwrap_or_default())
        {
            let name = program["program"].as_str().unwrap_or("?").to_owned();
            let events = program["events"].as_u64().unwrap_or(0);
            let time = program["run_time_ns"].as_u64().unwrap_or(0);
            match totals.iter_mut().find(|t| t.0 == name) {
                Some(t) => {
                    t.1 += events;
                    t.2 += time;
                }
                None => totals.push((name, events, time)),
            }
        }
    }
    ensure!(!cpu.is_empty(), "the agent printed no report");
    Ok(AgentRun {
        programs: totals
            .into_iter()
            .map(|(name, events, time)| (name, events, time as f64 / events.max(1) as f64))
            .collect(),
        // The mean over equal intervals is total CPU time over total time.
        cpu_percent: cpu.iter().sum::<f64>() / cpu.len() as f64,
        rss_bytes: rss,
    })
}

/// A loop device with direct I/O over a file, detached and removed on drop.
pub(crate) struct LoopDevice {
    pub(crate) path: PathBuf,
    backing: PathBuf,
}

impl LoopDevice {
    fn create(dir: &Path, scheduler: &str) -> Result<Self> {
        let device = Self::create_sized(dir, "loop-backing", 1 << 30)?;
        let name = device
            .path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        let knob = format!("/sys/block/{name}/queue/scheduler");
        std::fs::write(&knob, scheduler)
            .with_context(|| format!("setting {knob} to {scheduler}"))?;
        Ok(device)
    }

    /// Over a sparse file `<dir>/<name>.img` of `bytes`.
    fn create_sized(dir: &Path, name: &str, bytes: u64) -> Result<Self> {
        let backing = dir.join(format!("{name}.img"));
        let file = std::fs::File::create(&backing)?;
        file.set_len(bytes)?;
        // Another process on this shared machine may take the free device losetup
        // found before it is set up (or its node may not exist yet): try again.
        let mut tries = 0;
        let out = loop {
            let out = Command::new(sbin("losetup"))
                .args(["--direct-io=on", "-f", "--show"])
                .arg(&backing)
                .output()
                .context("running losetup")?;
            tries += 1;
            if out.status.success() || tries == 5 {
                break out;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        if !out.status.success() {
            let _ = std::fs::remove_file(&backing);
        }
        ensure!(
            out.status.success(),
            "losetup failed {tries} times: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(Self { path, backing })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // Busy for a moment after a killed fio's last requests: retry.
        for _ in 0..20 {
            let detached = Command::new(sbin("losetup"))
                .arg("-d")
                .arg(&self.path)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if detached {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let _ = std::fs::remove_file(&self.backing);
    }
}

/// losetup lives in /usr/sbin, which a non-login root shell may lack in its PATH.
fn sbin(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// bogo ops/s of `stress-ng --switch 2` (two pairs of processes ping-ponging).
fn stress_switch(runtime: u64) -> Result<f64> {
    let out = Command::new("stress-ng")
        .args(["--switch", "2", "--metrics-brief", "--timeout"])
        .arg(format!("{runtime}s"))
        .output()
        .context("running stress-ng (cargo xtask setup installs it)")?;
    ensure!(
        out.status.success(),
        "stress-ng failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "stress-ng: metrc: [pid] switch  <ops> <real s> <usr s> <sys s> <ops/s real> ..."
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "switch")?;
            words.get(at + 5)?.parse::<f64>().ok()
        })
        .with_context(|| format!("no switch metrics in stress-ng's output:\n{text}"))
}

/// Builds the test suite's KVM guest process and returns its path.
fn build_kvm_guest() -> Result<PathBuf> {
    let out = util::cargo()
        .args([
            "test",
            "-p",
            "agent",
            "--test",
            "kvm_guest_process",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("building the KVM guest helper")?;
    ensure!(out.status.success(), "building the KVM guest helper failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["target"]["name"] == "kvm_guest_process")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo did not report the kvm_guest_process executable")
}

/// Exits per second of a guest doing `iterations` × (out + hlt).
fn kvm_guest(guest: &Path, iterations: u64) -> Result<f64> {
    let start = Instant::now();
    let out = Command::new(guest)
        .args([
            "-name",
            "guest=bench",
            "-uuid",
            "00000000-0000-4000-8000-000000000001",
        ])
        .env("NODEPULSE_KVM_GUEST_ITERATIONS", iterations.to_string())
        .output()
        .context("running the KVM guest")?;
    let elapsed = start.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "the KVM guest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(2.0 * iterations as f64 / elapsed)
}

/// `nodepulse run` with `config`, reporting JSON every `interval_s` seconds on a pipe,
/// once its probes are attached (its log drained from then on).
fn spawn_agent(agent: &Path, interval_s: u64, config: &Path) -> Result<Child> {
    let mut child = Command::new(agent)
        .args(["run", "--format", "json", "--interval"])
        .arg(format!("{interval_s}s"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nodepulse")?;
    wait_until_attached(&mut child)?;
    Ok(child)
}

pub(crate) fn wait_until_attached(child: &mut Child) -> Result<()> {
    let stderr = child.stderr.take().context("agent stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut log = String::new();
    for line in lines.by_ref().map_while(Result::ok) {
        log.push_str(&line);
        log.push('\n');
        if line.contains("first report in") {
            // Keep draining so a chatty agent never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(());
        }
    }
    bail!("nodepulse exited before attaching:\n{log}")
}

/// The agent exporting everything over OTLP/HTTP to a local receiver while fio runs:
/// its CPU and memory, the bytes of each metrics batch, and how long an export takes
/// (encoding and queueing in the loop, as the agent reports it; the transfer, as the
/// receiver sees it).
fn otlp_cost(agent: &Path, dir: &Path, runtime: u64) -> Result<()> {
    let device = LoopDevice::create(dir, "none")?;
    println!(
        "\n== OTLP export under fio randread (iodepth 16) on {}",
        device.path.display()
    );
    println!(
        "{:>9} {:>9} {:>9} {:>10} {:>12} {:>12} {:>12}",
        "interval", "agent CPU", "RSS MiB", "batches", "bytes/batch", "encode ms", "transfer ms"
    );
    for interval in [10u64, 1] {
        let receiver = crate::receiver::Receiver::start()?;
        let config = dir.join(format!("otlp-{interval}.toml"));
        std::fs::write(
            &config,
            format!(
                "[otlp]\nenabled = true\nprotocol = \"http/protobuf\"\nendpoint = \"http://{}\"\n",
                receiver.addr
            ),
        )?;
        // At least three intervals of load.
        let seconds = (3 * interval).max(runtime);
        let mut child = spawn_agent(agent, interval, &config)?;
        let pid = child.id();
        let cpu_before = process_cpu_seconds(pid);
        let started = Instant::now();
        let sampler = std::thread::spawn(move || {
            let mut max_rss = 0;
            while started.elapsed().as_secs() < seconds + 1 {
                max_rss = max_rss.max(process_rss_bytes(pid));
                std::thread::sleep(Duration::from_millis(200));
            }
            max_rss
        });
        fio(&device.path, "randread", seconds)?;
        std::thread::sleep(Duration::from_millis(1200));
        let cpu = process_cpu_seconds(pid) - cpu_before;
        let wall = started.elapsed().as_secs_f64();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut stdout)?;
        }
        child.wait()?;
        let max_rss = sampler.join().unwrap_or(0);
        let batches: Vec<_> = receiver
            .requests()
            .into_iter()
            .filter(|r| r.path == "/v1/metrics")
            .collect();
        let bytes: Vec<f64> = batches.iter().map(|r| r.bytes as f64).collect();
        let transfer: Vec<f64> = batches
            .iter()
            .map(|r| r.receive_time.as_secs_f64() * 1e3)
            .collect();
        let encode: Vec<f64> = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["agent"]["export_ms"]["otlp"].as_f64())
            .collect();
        ensure!(!bytes.is_empty(), "the receiver got no metrics batch");
        println!(
            "{:>8}s {:>8.2}% {:>9.1} {:>10} {:>12.0} {:>12.2} {:>12.2}",
            interval,
            100.0 * cpu / wall,
            max_rss as f64 / 1048576.0,
            bytes.len(),
            median(&bytes),
            if encode.is_empty() {
                0.0
            } else {
                median(&encode)
            },
            median(&transfer)
        );
    }
    println!("(medians over the run; CPU as a share of one CPU over the whole run)");
    Ok(())
}

pub(crate) fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    f.iter().sum::<u64>() as f64 / ticks
}

fn process_rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
