//! `cargo xtask bench`: what the block probe costs, measured in one run.
//!
//! On a loop device (direct I/O over a file), fio runs `randread --bs=4k --iodepth=16`
//! in pairs of runs without and with the agent, alternating which goes first so drift
//! on this noisy machine hits both sides alike. It reports fio IOPS per run, the median
//! of each side and their ratio, the kernel cost per event of each program (BPF
//! run-time stats, as the agent reports them), and the agent's own CPU and memory.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::{run::build_agent, setup, util};

#[derive(clap::Args)]
pub struct Args {
    /// Pairs of runs (without, with the agent); at least 3.
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// Seconds of fio per run.
    #[arg(long, default_value_t = 8)]
    runtime: u64,
    /// Attach kind for the block probe (auto, tp_btf, raw_tracepoint, tracepoint).
    #[arg(long, default_value = "auto")]
    attach: String,
}

pub fn run(args: Args) -> Result<()> {
    ensure!(args.pairs >= 3, "--pairs must be at least 3 for a median");
    ensure!(
        util::is_root(),
        "the benchmark loads eBPF programs and creates a loop device: run it as root"
    );
    setup::ensure()?;
    let agent = build_agent(true)?;
    let device = LoopDevice::create(&util::target_dir().join("bench"))?;
    let config = util::target_dir().join("bench/nodepulse-bench.toml");
    std::fs::write(
        &config,
        format!("[probes.block]\nattach = \"{}\"\n", args.attach),
    )?;

    println!(
        "\nfio randread bs=4k iodepth=16 on {} for {} s per run, {} pairs, attach {}",
        device.path.display(),
        args.runtime,
        args.pairs,
        args.attach
    );
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut agent_runs = Vec::new();
    for pair in 0..args.pairs {
        // Alternate the order so slow drift does not favour one side.
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for use_agent in order {
            let label = if use_agent { "with agent" } else { "without" };
            print!("[pair {}/{}] {label:<11} ... ", pair + 1, args.pairs);
            let iops = if use_agent {
                let (iops, run) = run_with_agent(&agent, &config, &device.path, args.runtime)?;
                agent_runs.push(run);
                with.push(iops);
                iops
            } else {
                let iops = fio(&device.path, args.runtime)?;
                without.push(iops);
                iops
            };
            println!("{iops:>10.0} IOPS");
        }
    }

    let (m_without, m_with) = (median(&without), median(&with));
    println!("\nresults (medians of {} pairs)", args.pairs);
    println!("  fio IOPS without agent  {m_without:>10.0}");
    println!("  fio IOPS with agent     {m_with:>10.0}");
    println!(
        "  throughput ratio        {:>10.3}  (with / without)",
        m_with / m_without
    );
    for program in agent_runs[0].programs.iter().map(|p| p.0.clone()) {
        let per_run: Vec<f64> = agent_runs
            .iter()
            .filter_map(|r| r.programs.iter().find(|p| p.0 == program).map(|p| p.1))
            .collect();
        println!(
            "  {program:<24}{:>10.0}  ns/event (BPF stats)",
            median(&per_run)
        );
    }
    let cpu: Vec<f64> = agent_runs.iter().map(|r| r.cpu_percent).collect();
    // Per run: total CPU time over the run's length; the median of those.
    let rss = agent_runs.iter().map(|r| r.rss_bytes).max().unwrap_or(0);
    println!(
        "  agent CPU               {:>10.2}  % of one CPU",
        median(&cpu)
    );
    println!(
        "  agent RSS (max)         {:>10.1}  MiB",
        rss as f64 / 1048576.0
    );
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Read IOPS of one fio run.
fn fio(device: &Path, runtime: u64) -> Result<f64> {
    let out = Command::new("fio")
        .args([
            "--name=bench",
            "--rw=randread",
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
    report["jobs"][0]["read"]["iops"]
        .as_f64()
        .context("no read IOPS in fio's report")
}

/// What the agent reported over one benchmark run.
struct AgentRun {
    /// (program, ns per event over the whole run)
    programs: Vec<(String, f64)>,
    cpu_percent: f64,
    rss_bytes: u64,
}

fn run_with_agent(
    agent: &Path,
    config: &Path,
    device: &Path,
    runtime: u64,
) -> Result<(f64, AgentRun)> {
    let mut child = Command::new(agent)
        .args(["run", "--format", "json", "--interval", "1s", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nodepulse")?;
    let guard = KillOnDrop(&mut child);
    wait_until_attached(&mut *guard.0)?;
    let iops = fio(device, runtime)?;
    // One more interval so the last part of the run is reported.
    std::thread::sleep(Duration::from_millis(1100));
    let stdout = guard.stop()?;
    Ok((iops, summarise(&stdout)?))
}

fn wait_until_attached(child: &mut Child) -> Result<()> {
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
            .map(|(name, events, time)| (name, time as f64 / events.max(1) as f64))
            .collect(),
        // The mean over equal intervals is total CPU time over total time.
        cpu_percent: cpu.iter().sum::<f64>() / cpu.len() as f64,
        rss_bytes: rss,
    })
}

/// Stops the agent with SIGTERM (so it detaches cleanly) when dropped early.
struct KillOnDrop<'a>(&'a mut Child);

impl KillOnDrop<'_> {
    fn stop(self) -> Result<String> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let mut stdout = String::new();
        if let Some(mut out) = self.0.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut stdout)?;
        }
        let status = self.0.wait()?;
        ensure!(status.success(), "nodepulse exited with {status}");
        Ok(stdout)
    }
}

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A loop device with direct I/O over a file, detached and removed on drop.
struct LoopDevice {
    path: PathBuf,
    backing: PathBuf,
}

impl LoopDevice {
    fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let backing = dir.join("loop-backing.img");
        let file = std::fs::File::create(&backing)?;
        file.set_len(1 << 30)?;
        let out = Command::new(sbin("losetup"))
            .args(["--direct-io=on", "-f", "--show"])
            .arg(&backing)
            .output()
            .context("running losetup")?;
        ensure!(
            out.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(Self { path, backing })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new(sbin("losetup"))
            .arg("-d")
            .arg(&self.path)
            .status();
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
