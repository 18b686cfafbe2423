//! `cargo xtask soak`: the detector on real workloads. `record` (root) runs the soak
//! harness (`xtask/soak/record.sh`): steady fio mixes on loop devices, a CPU-contended
//! cgroup, a KVM guest and an idle device, recorded by two agents (1 s and 10 s), with
//! injected regressions on a device of its own (a competing reader or writer, a
//! blkio/io.max limit, a cpu.max squeeze) logged with their times. `eval` replays the
//! recordings through the detector and prints false alarms per node-day away from the
//! injections and the injections detected within three windows.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use crate::util;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Record workloads and injected regressions (root; takes `--duration`).
    Record {
        /// How long to record, in seconds (the soak's goal is an hour or more).
        #[arg(long, default_value_t = 3600)]
        duration: u64,
        /// Where the recordings, devices' backing files and logs go (outside the repo:
        /// an hour at 1 s is 150–530 MB).
        #[arg(long, default_value = "/var/tmp/nodepulse-soak")]
        out: PathBuf,
        /// Record the steady workloads only, with no injections: a held-out check of
        /// false alarms (its `injections.jsonl` stays empty).
        #[arg(long)]
        steady_only: bool,
        /// Keep the soak's own CPU cost low on a shared node: the CPU-contended cgroups
        /// at a quarter of their load, the KVM guest every 5 s, the tmpfs reader at 250
        /// IOPS, 256 MiB files (see `xtask/soak/record.sh`).
        #[arg(long)]
        light: bool,
        /// The learning period of the detector to be scored, in seconds: the first
        /// injection comes a minute after it (one during learning is neither caught
        /// nor missed). The default is the detector's default `learning_period`.
        #[arg(long, default_value_t = 1200)]
        learn: u64,
    },
    /// Score the detector on recordings (no root).
    Eval {
        /// Arguments for the scorer (`-- --help` lists them): recordings,
        /// `--injections FILE`, `--config FILE`, `--window SECONDS`, `--explain`.
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Record {
            duration,
            out,
            steady_only,
            light,
            learn,
        } => record(duration, &out, steady_only, light, learn),
        Command::Eval { args } => util::run_agent_example("soak_eval", &args),
    }
}

fn record(duration: u64, out: &PathBuf, steady_only: bool, light: bool, learn: u64) -> Result<()> {
    if !util::is_root() {
        bail!("the soak harness needs root (loop devices, cgroups, probes); run it with sudo");
    }
    // One injection (2 min) and the 3 minutes it is scored over, after learning.
    let least = learn + 60 + 300;
    if duration < least {
        bail!(
            "--duration {duration}: at least {least} s, so that an injection follows the \
             {learn} s of learning (--learn)"
        );
    }
    println!("building nodepulse (release) and the KVM guest process ...");
    util::run(util::cargo().args(["build", "--release", "-p", "agent"]))?;
    let guest = util::stdout_of(util::cargo().args([
        "test",
        "--no-run",
        "--message-format=json",
        "-p",
        "agent",
        "--test",
        "kvm_guest_process",
    ]))
    .unwrap_or_default();
    let guest = built_test_path(&guest).context(
        "could not find the kvm_guest_process test binary; `cargo test --no-run -p agent \
         --test kvm_guest_process` should build it",
    )?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let root = util::workspace_root();
    let nodepulse = util::target_dir().join("release/nodepulse");
    let script = root.join("xtask/soak/record.sh");
    util::run(
        std::process::Command::new("bash")
            .arg(&script)
            .arg(&nodepulse)
            .arg(duration.to_string())
            .arg(out)
            .arg(&guest)
            .arg(if steady_only { "steady" } else { "inject" })
            .arg(if light { "light" } else { "full" })
            .arg(learn.to_string()),
    )
}

/// The test executable in `cargo test --no-run --message-format=json` output.
fn built_test_path(output: &str) -> Option<PathBuf> {
    output
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == "kvm_guest_process")
        .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
        .next_back()
}
