//! `cargo xtask bench --compare`: nodepulse beside the peers' equivalents in one run.
//!
//! Each round runs the workload three times — without any tracer, with nodepulse,
//! with the peer (a bpftrace script) — rotating the order so drift hits every side
//! alike. The peers are bpftrace programs doing what bpftrace's own tools do, on the
//! classic tracepoints those tools use: `biolatency` (start time keyed by device and
//! sector, a histogram of issue → completion) and `runqlat` (wakeup stamps per pid, a
//! histogram at switch-in). bpftrace's shipped `biolatency.bt` uses kprobes, which
//! this kernel lacks, hence scripts rather than the shipped files.
//!
//! Cost per event is the kernel's BPF run-time statistics for both sides: nodepulse
//! reports its own; the peer's come from `bpftool prog show` (programs held by the
//! bpftrace process), read before it stops. The statistics need
//! `kernel.bpf_stats_enabled`, switched on for the run and restored after; classic
//! tracepoints need tracefs, mounted for the run and unmounted after when it was not
//! mounted before.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::{AgentRun, RunningAgent, median};

/// A peer tool's equivalent of what nodepulse measures for a workload.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub name: &'static str,
    script: &'static str,
}

/// bpftrace's `biolatency`: issue → completion, keyed by (device, sector).
pub const BIOLATENCY: Peer = Peer {
    name: "bpftrace biolatency",
    script: "tracepoint:block:block_rq_issue { @start[args->dev, args->sector] = nsecs; }
tracepoint:block:block_rq_complete /@start[args->dev, args->sector]/ {
  @usecs = hist((nsecs - @start[args->dev, args->sector]) / 1000);
  delete(@start[args->dev, args->sector]);
}",
};

/// bpftrace's `runqlat`: enqueue stamps at wakeup (and at preemption of a running
/// task), the wait at switch-in.
pub const RUNQLAT: Peer = Peer {
    name: "bpftrace runqlat",
    script: "tracepoint:sched:sched_wakeup, tracepoint:sched:sched_wakeup_new {
  @qtime[args->pid] = nsecs;
}
tracepoint:sched:sched_switch {
  if (args->prev_state == 0) { @qtime[args->prev_pid] = nsecs; }
  $ns = @qtime[args->next_pid];
  if ($ns) { @usecs = hist((nsecs - $ns) / 1000); }
  delete(@qtime[args->next_pid]);
}",
};

/// The three sides of a round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Without,
    Nodepulse,
    Peer,
}

/// Per program: (name, events, ns per event).
type Costs = Vec<(String, u64, f64)>;

pub fn rounds(
    agent: &Path,
    config: &Path,
    peer: Peer,
    count: usize,
    unit: &str,
    measure: &mut dyn FnMut() -> Result<f64>,
) -> Result<()> {
    let _tracefs = Tracefs::mount()?;
    let _stats = BpfStats::enable()?;
    let mut values = [Vec::new(), Vec::new(), Vec::new()];
    let mut agent_runs: Vec<AgentRun> = Vec::new();
    let mut peer_runs: Vec<Costs> = Vec::new();
    let sides = [Side::Without, Side::Nodepulse, Side::Peer];
    for round in 0..count {
        for k in 0..3 {
            let side = sides[(k + round) % 3];
            let label = match side {
                Side::Without => "without",
                Side::Nodepulse => "nodepulse",
                Side::Peer => peer.name,
            };
            print!("[round {}/{count}] {label:<20} ... ", round + 1);
            let _ = std::io::Write::flush(&mut std::io::stdout());
            let value = match side {
                Side::Without => measure()?,
                Side::Nodepulse => {
                    let running = RunningAgent::start(agent, config)?;
                    let value = measure()?;
                    agent_runs.push(running.stop()?);
                    value
                }
                Side::Peer => {
                    let running = Bpftrace::start(peer)?;
                    let value = measure()?;
                    peer_runs.push(running.stop()?);
                    value
                }
            };
            values[side as usize].push(value);
            println!("{value:>12.0} {unit}");
        }
    }

    let ratio = |side: Side| {
        let r: Vec<f64> = values[side as usize]
            .iter()
            .zip(&values[Side::Without as usize])
            .map(|(w, wo)| w / wo)
            .collect();
        median(&r)
    };
    let costs = |runs: Vec<Costs>| -> Costs {
        let mut names: Vec<String> = runs.iter().flatten().map(|p| p.0.clone()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let of = |f: fn(&(String, u64, f64)) -> f64| {
                    let v: Vec<f64> = runs
                        .iter()
                        .filter_map(|r| r.iter().find(|p| p.0 == name && p.1 > 0))
                        .map(f)
                        .collect();
                    median(&v)
                };
                let (events, ns) = (of(|p| p.1 as f64), of(|p| p.2));
                (name, events as u64, ns)
            })
            .collect()
    };
    let ours = costs(agent_runs.iter().map(|r| r.programs.clone()).collect());
    let theirs = costs(peer_runs);
    println!(
        "results: medians of {count} rounds; throughput ratio = median of per-round \
         (with tracer / without); ns per event from BPF stats"
    );
    println!(
        "  {:<22}{:>14}  {:>8}  programs (ns/event)",
        "", unit, "ratio"
    );
    println!(
        "  {:<22}{:>14.0}  {:>8}",
        "without",
        median(&values[Side::Without as usize]),
        "1"
    );
    for (label, side, programs) in [
        ("nodepulse", Side::Nodepulse, &ours),
        (peer.name, Side::Peer, &theirs),
    ] {
        let list: Vec<String> = programs
            .iter()
            .filter(|p| p.1 > 0)
            .map(|p| format!("{} {:.0}", p.0, p.2))
            .collect();
        println!(
            "  {label:<22}{:>14.0}  {:>8.3}  {}",
            median(&values[side as usize]),
            ratio(side),
            list.join(", ")
        );
    }
    // Per request or per switch: the cost of the programs every event goes through.
    let per_event = |programs: &Costs, words: &[&str]| -> f64 {
        words
            .iter()
            .filter_map(|w| programs.iter().find(|p| p.0.contains(w) && p.1 > 0))
            .map(|p| p.2)
            .sum()
    };
    let words: &[&str] = if peer.name == BIOLATENCY.name {
        // "compl": the kernel keeps 15 characters of a name (bpftrace's
        // "block_rq_comple").
        &["issue", "compl"]
    } else {
        &["switch"]
    };
    let (a, b) = (per_event(&ours, words), per_event(&theirs, words));
    if a > 0.0 && b > 0.0 {
        println!(
            "  ns per {} (the {} programs): nodepulse {a:.0}, {} {b:.0}, ratio {:.2}",
            if words.len() == 2 {
                "request"
            } else {
                "switch"
            },
            words.join(" + "),
            peer.name,
            a / b
        );
    }
    let cpu: Vec<f64> = agent_runs.iter().map(|r| r.cpu_percent).collect();
    println!("  nodepulse CPU {:.2} % of one CPU", median(&cpu));
    Ok(())
}

/// A bpftrace process running a peer script, its output discarded.
struct Bpftrace {
    child: Child,
}

impl Bpftrace {
    fn start(peer: Peer) -> Result<Self> {
        let mut child = Command::new("bpftrace")
            .args(["-e", peer.script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting bpftrace (the benchmark's setup installs it)")?;
        let stdout = child.stdout.take().context("bpftrace stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = String::new();
        for line in lines.by_ref().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            // bpftrace prints "Attaching N probes..." once they are attached.
            if line.starts_with("Attaching") {
                std::thread::spawn(move || lines.for_each(drop));
                // Attached programs run from here; give the last attach a moment.
                std::thread::sleep(Duration::from_millis(200));
                return Ok(Self { child });
            }
        }
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        let _ = child.wait();
        bail!("bpftrace exited before attaching:\n{seen}{err}")
    }

    /// Reads its programs' BPF stats, then stops it.
    fn stop(mut self) -> Result<Costs> {
        let costs = programs_of(self.child.id());
        // bpftrace 0.17 here sometimes lets a first SIGINT pass: repeat it each
        // second, and kill it after 10 s (its histogram output is not wanted anyway).
        for _ in 0..10 {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            std::thread::sleep(Duration::from_secs(1));
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
        }
        let costs = costs?;
        ensure!(
            !costs.is_empty(),
            "bpftool listed no program held by bpftrace"
        );
        Ok(costs)
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// BPF programs a process holds, with their run-time stats: ids and stats from the
/// process's `/proc/PID/fdinfo` (bpftool here cannot list a program's holders), names
/// from `bpftool prog show`.
fn programs_of(pid: u32) -> Result<Costs> {
    let mut held = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let text = std::fs::read_to_string(entry?.path()).unwrap_or_default();
        if let Some(p) = prog_fdinfo(&text) {
            held.push(p);
        }
    }
    held.sort();
    held.dedup();
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("running bpftool (the benchmark's setup installs it)")?;
    ensure!(
        out.status.success(),
        "bpftool prog show failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    Ok(held
        .into_iter()
        .map(|(id, time, events)| {
            let name = list
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["id"].as_u64() == Some(id))
                .and_then(|p| p["name"].as_str())
                .map_or_else(|| format!("prog {id}"), str::to_owned);
            (name, events, time as f64 / events.max(1) as f64)
        })
        .collect())
}

/// (program id, run_time_ns, run_cnt) of a program fd's fdinfo; `None` for other fds.
fn prog_fdinfo(text: &str) -> Option<(u64, u64, u64)> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((field("prog_id")?, field("run_time_ns")?, field("run_cnt")?))
}

/// tracefs at its standard place for the run; unmounted after if we mounted it.
struct Tracefs {
    mounted_here: bool,
}

const TRACEFS: &str = "/sys/kernel/tracing";

impl Tracefs {
    fn mount() -> Result<Self> {
        if Path::new(TRACEFS).join("events").is_dir() {
            return Ok(Self {
                mounted_here: false,
            });
        }
        let status = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", TRACEFS])
            .status()
            .context("running mount")?;
        ensure!(
            status.success(),
            "mounting tracefs at {TRACEFS} failed ({status}): bpftrace's classic \
             tracepoints need it"
        );
        Ok(Self { mounted_here: true })
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = Command::new("umount").arg(TRACEFS).status();
        }
    }
}

/// `kernel.bpf_stats_enabled` on for the run, put back as it was after.
struct BpfStats {
    before: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<Self> {
        let before =
            std::fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        std::fs::write(BPF_STATS, "1").with_context(|| format!("writing 1 to {BPF_STATS}"))?;
        Ok(Self { before })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.before.trim());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_fds_give_their_stats() {
        let prog = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nprog_id:\t5900\n\
                    run_time_ns:\t2959388\nrun_cnt:\t37083\nrecursion_misses:\t0\n";
        assert_eq!(prog_fdinfo(prog), Some((5900, 2_959_388, 37_083)));
        let map = "pos:\t0\nmap_type:\t1\nmap_id:\t12\n";
        assert_eq!(prog_fdinfo(map), None);
    }
}
