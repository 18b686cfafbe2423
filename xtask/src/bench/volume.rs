//! `cargo xtask bench --workload volume`: what a storage node sends a collector per
//! interval, per signal, through the real OTLP exporter.
//!
//! The node is made for real: 24 loop devices with mixed reads, writes and flushes
//! (fio `randrw` with an `fsync` every few writes), issued by 60 fio threads spread over
//! 50 cgroups (v1 `blkio` and `cpu`, one thread's I/O each, so the block and run-queue
//! per-cgroup families both see 50), and two TCP peer groups with an iperf3 stream
//! each. Several agents watch that same node at once, each with its own export
//! settings and its own OTLP/HTTP receiver on loopback (gzip bodies, sizes as sent),
//! so every variant sees the same I/O. The first interval (partial for deltas) is left
//! out; the final export at shutdown too.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::{LoopDevice, median, process_cpu_seconds, spawn_agent, tcp};
use crate::receiver::Receiver;

const DEVICES: usize = 24;
const CGROUPS: usize = 50;
const THREADS: usize = 60;
/// The second TCP group's port (the first is the TCP bench's watched port).
const REPLICATION_PORT: u16 = 15_203;

/// One agent's export settings.
struct Variant {
    name: &'static str,
    /// Lines added to `[otlp]` (and `[outliers]`, after its header).
    otlp: &'static str,
    outliers: &'static str,
    interval_s: u64,
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "lossless (cumulative, scale 3)",
        otlp: "",
        outliers: "",
        interval_s: 10,
    },
    Variant {
        name: "delta",
        otlp: "temporality = \"delta\"\n",
        outliers: "",
        interval_s: 10,
    },
    Variant {
        name: "cumulative, scale 0",
        otlp: "histogram_scale = 0\n",
        outliers: "",
        interval_s: 10,
    },
    Variant {
        name: "delta, scale 0",
        otlp: "temporality = \"delta\"\nhistogram_scale = 0\n",
        outliers: "",
        interval_s: 10,
    },
    Variant {
        name: "delta, scale 0, 20 spans",
        otlp: "temporality = \"delta\"\nhistogram_scale = 0\n",
        outliers: "max_per_interval = 20\n",
        interval_s: 10,
    },
    Variant {
        name: "delta, scale -1, 20 spans",
        otlp: "temporality = \"delta\"\nhistogram_scale = -1\n",
        outliers: "max_per_interval = 20\n",
        interval_s: 10,
    },
    Variant {
        name: "lossless at 1 s (CPU)",
        otlp: "",
        outliers: "",
        interval_s: 1,
    },
];

/// The variants a `--baseline` binary runs: the CPU ones.
const BASELINE: [Variant; 2] = [
    Variant {
        name: "baseline binary, lossless",
        otlp: "",
        outliers: "",
        interval_s: 10,
    },
    Variant {
        name: "baseline binary, at 1 s",
        otlp: "",
        outliers: "",
        interval_s: 1,
    },
];

/// The variants whose figure is the agent's CPU (lossless, at 10 s and 1 s).
fn cpu_variants() -> impl Iterator<Item = &'static Variant> {
    [&VARIANTS[0], &VARIANTS[VARIANTS.len() - 1]].into_iter()
}

/// `cpu_only` runs only the lossless variants at 10 s and 1 s (and the baseline's),
/// for a side-by-side CPU figure with fewer agents loading the host.
pub fn run(
    agent: &Path,
    baseline: Option<&Path>,
    dir: &Path,
    intervals: u64,
    cpu_only: bool,
) -> Result<()> {
    let measured = intervals.max(2);
    // One interval to settle, the measured ones, and a margin for the last export.
    let seconds = 10 * (measured + 1) + 5;
    println!(
        "\n== telemetry volume of a storage node: {DEVICES} loop devices (randrw + fsync), \
         {THREADS} fio threads in {CGROUPS} cgroups, 2 TCP groups; {measured} intervals \
         of 10 s measured"
    );
    let mut devices = Vec::new();
    for k in 0..DEVICES {
        devices.push(LoopDevice::create_sized(
            dir,
            &format!("volume-{k}"),
            256 << 20,
        )?);
    }
    println!("[1/4] {DEVICES} loop devices ... ok");
    let cgroups = Cgroups::create(CGROUPS)?;
    let fio = Fio::start(&devices, seconds + 20)?;
    // fio creates its threads once it has set up every job.
    std::thread::sleep(Duration::from_secs(2));
    let moved = cgroups.spread(fio.0.id())?;
    println!("[2/4] fio running, {moved} threads spread over {CGROUPS} cgroups ... ok");
    let _servers = [
        tcp::Server::start(tcp::WATCHED_PORT)?,
        tcp::Server::start(REPLICATION_PORT)?,
    ];
    let _streams = [
        Stream::start(tcp::WATCHED_PORT, seconds + 20)?,
        Stream::start(REPLICATION_PORT, seconds + 20)?,
    ];
    println!("[3/4] iperf3 streams on both TCP groups ... ok");

    let mut agents = Vec::new();
    let mut variants: Vec<&Variant> = if cpu_only {
        cpu_variants().collect()
    } else {
        VARIANTS.iter().collect()
    };
    for v in &variants {
        agents.push(Agent::start(agent, dir, v)?);
    }
    if let Some(baseline) = baseline {
        for v in &BASELINE {
            agents.push(Agent::start(baseline, dir, v)?);
            variants.push(v);
        }
    }
    println!(
        "[4/4] {} agents attached; measuring for {seconds} s ...",
        agents.len()
    );
    let started = Instant::now();
    while started.elapsed().as_secs() < seconds {
        std::thread::sleep(Duration::from_secs(10));
        println!(
            "  ... {} s of {seconds} s",
            started.elapsed().as_secs().min(seconds)
        );
    }

    println!(
        "{:<32}{:>11}{:>11}{:>9}{:>11}{:>8}{:>8}{:>8}",
        "variant", "metrics B", "traces B", "logs B", "total B", "series", "spans", "CPU %"
    );
    for (v, a) in variants.into_iter().zip(agents) {
        let r = a.finish()?;
        println!(
            "{:<32}{:>11.0}{:>11.0}{:>9.0}{:>11.0}{:>8}{:>8.0}{:>8.2}",
            v.name,
            r.bytes[0],
            r.bytes[1],
            r.bytes[2],
            r.bytes.iter().sum::<f64>(),
            r.series,
            r.spans,
            r.cpu_percent
        );
    }
    println!(
        "(bytes per interval as sent: gzip-compressed OTLP/HTTP bodies, means over the \
         measured intervals; series: histogram and counter series in the last report; \
         spans: outliers per interval; CPU: the agent's share of one CPU)"
    );
    drop(fio);
    drop(cgroups);
    Ok(())
}

/// What one agent sent per interval.
struct Sent {
    /// metrics, traces, logs
    bytes: [f64; 3],
    series: usize,
    spans: f64,
    cpu_percent: f64,
}

struct Agent {
    child: Child,
    receiver: Receiver,
    cpu_start: f64,
    started: Instant,
}

impl Agent {
    fn start(agent: &Path, dir: &Path, v: &Variant) -> Result<Self> {
        let receiver = Receiver::start()?;
        let config = dir.join(format!("volume-{}.toml", v.name.replace([' ', ','], "-")));
        std::fs::write(
            &config,
            format!(
                "[probes.tcp]\ngroups = [{{ name = \"storage\", ports = [{}] }}, \
                 {{ name = \"replication\", ports = [{REPLICATION_PORT}] }}]\n\
                 [outliers]\n{}[otlp]\nenabled = true\nprotocol = \"http/protobuf\"\n\
                 endpoint = \"http://{}\"\n{}",
                tcp::WATCHED_PORT,
                v.outliers,
                receiver.addr,
                v.otlp
            ),
        )?;
        let child = spawn_agent(agent, v.interval_s, &config)?;
        let cpu_start = process_cpu_seconds(child.id());
        Ok(Self {
            child,
            receiver,
            cpu_start,
            started: Instant::now(),
        })
    }

    fn finish(mut self) -> Result<Sent> {
        // Before the shutdown's final export.
        let requests = self.receiver.requests();
        let cpu = process_cpu_seconds(self.child.id()) - self.cpu_start;
        let wall = self.started.elapsed().as_secs_f64();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut stdout)?;
        }
        self.child.wait()?;
        let metrics: Vec<_> = requests
            .iter()
            .filter(|r| r.path == "/v1/metrics")
            .collect();
        ensure!(
            metrics.len() >= 3,
            "the receiver got {} metrics batches; at least 3 intervals are needed",
            metrics.len()
        );
        // From the end of the first interval's export to the last one's.
        let (from, to) = (metrics[0].at, metrics[metrics.len() - 1].at);
        let intervals = (metrics.len() - 1) as f64;
        let per_interval = |path: &str| {
            requests
                .iter()
                .filter(|r| r.path == path && r.at > from && r.at <= to)
                .map(|r| r.bytes as f64)
                .sum::<f64>()
                // An empty sum is -0.0.
                .abs()
                / intervals
        };
        let reports: Vec<Value> = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let last = reports.last().context("the agent printed no report")?;
        let len = |key: &str| last[key].as_array().map_or(0, Vec::len);
        let spans: Vec<f64> = reports
            .iter()
            .skip(1)
            .map(|r| r["outliers"].as_array().map_or(0, Vec::len) as f64)
            .collect();
        Ok(Sent {
            bytes: [
                per_interval("/v1/metrics"),
                per_interval("/v1/traces"),
                per_interval("/v1/logs"),
            ],
            series: len("series") + len("counters"),
            spans: median(&spans),
            cpu_percent: 100.0 * cpu / wall,
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One fio process: `THREADS` rate-limited randrw jobs over the devices, each writer
/// flushing every 8 writes. Killed (by PID) on drop.
struct Fio(Child);

impl Fio {
    fn start(devices: &[LoopDevice], seconds: u64) -> Result<Self> {
        let mut cmd = Command::new("fio");
        cmd.args([
            "--thread",
            "--rw=randrw",
            "--rwmixread=70",
            "--bs=4k",
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=2",
            "--rate_iops=15",
            "--fsync=8",
            "--time_based",
        ])
        .arg(format!("--runtime={seconds}"));
        for k in 0..THREADS {
            cmd.arg(format!("--name=j{k}")).arg(format!(
                "--filename={}",
                devices[k % devices.len()].path.display()
            ));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting fio (cargo xtask setup installs it)")?;
        Ok(Self(child))
    }
}

impl Drop for Fio {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A rate-limited iperf3 stream to a local server. Killed (by PID) on drop.
struct Stream(Child);

impl Stream {
    fn start(port: u16, seconds: u64) -> Result<Self> {
        let child = Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-b", "20M", "-p", &port.to_string()])
            .args(["-t", &seconds.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -c")?;
        Ok(Self(child))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `count` cgroups in the v1 `blkio` and `cpu` hierarchies (a thread's I/O is
/// attributed through blkio, its run-queue waits through cpu on this kind of host);
/// removed on drop.
struct Cgroups {
    dirs: Vec<PathBuf>,
}

const HIERARCHIES: [&str; 2] = ["/sys/fs/cgroup/blkio", "/sys/fs/cgroup/cpu"];

impl Cgroups {
    fn create(count: usize) -> Result<Self> {
        let mut this = Self { dirs: Vec::new() };
        for root in HIERARCHIES {
            ensure!(
                Path::new(root).join("tasks").is_file(),
                "the volume bench spreads fio's threads over cgroup v1 hierarchies, and \
                 {root} is not one here (per-thread placement needs v1's `tasks` files)"
            );
            let parent = Path::new(root).join("nodepulse-volume");
            std::fs::create_dir_all(&parent)
                .with_context(|| format!("creating {}", parent.display()))?;
            for k in 0..count {
                let dir = parent.join(format!("c{k:02}"));
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                this.dirs.push(dir);
            }
            this.dirs.push(parent);
        }
        Ok(this)
    }

    /// Puts the process's threads but the first (fio's main thread) round-robin into
    /// the cgroups; returns how many moved.
    fn spread(&self, pid: u32) -> Result<usize> {
        let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&t| t != pid)
            .collect();
        tids.sort();
        for (k, tid) in tids.iter().enumerate() {
            for root in HIERARCHIES {
                let tasks = Path::new(root)
                    .join("nodepulse-volume")
                    .join(format!("c{:02}", k % CGROUPS))
                    .join("tasks");
                // A thread may have exited in between; the rest still count.
                let _ = std::fs::write(&tasks, tid.to_string());
            }
        }
        ensure!(
            tids.len() >= CGROUPS,
            "fio has {} threads, fewer than the {CGROUPS} cgroups",
            tids.len()
        );
        Ok(tids.len())
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        // Children first (they were pushed before their parent); tasks may take a
        // moment to leave after fio exits.
        for dir in &self.dirs {
            for _ in 0..20 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
