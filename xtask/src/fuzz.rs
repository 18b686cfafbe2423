//! `cargo xtask fuzz`: the libFuzzer targets of `fuzz/` (one per parser of outside
//! input, see the agent's `nodepulse::fuzz`), each for a while, with cargo-fuzz on
//! nightly (not part of `cargo xtask test` yet, see docs/architecture.md); the longer run is
//! `cargo xtask fuzz --seconds 600`. A crash fails the task and leaves the input in
//! `fuzz/artifacts/<target>/` (replay it with `cargo +nightly fuzz run <target> <file>`
//! in `fuzz/`); the corpus grows in `fuzz/corpus/<target>/` from run to run.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Result, bail};

use crate::util::{self, fmt_duration};

/// The targets, as named in fuzz/Cargo.toml and `nodepulse::fuzz::TARGETS`.
pub const TARGETS: &[&str] = &[
    "configuration",
    "csv_series",
    "recordings",
    "qemu_cmdline",
    "libvirt_xml",
    "mounts_environ",
    "names",
    "otlp_answers",
    "http_requests",
    "sysfs_trees",
];

#[derive(clap::Args)]
pub struct Args {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Only these targets (default: all).
    targets: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    crate::setup::ensure_cargo_fuzz()?;
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &args.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "no fuzz target {t}; the targets are: {}",
                    TARGETS.join(", ")
                );
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    fuzz(&targets, args.seconds)
}

fn fuzz_dir() -> PathBuf {
    util::workspace_root().join("fuzz")
}

fn cargo_fuzz() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz"]).current_dir(fuzz_dir());
    cmd
}

/// Builds every target once, then runs each of `targets` for `seconds`.
pub fn fuzz(targets: &[&str], seconds: u64) -> Result<()> {
    util::run(cargo_fuzz().arg("build"))?;
    let mut ran = Vec::new();
    for target in targets {
        let corpus = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let started = Instant::now();
        // -rss_limit_mb: the sysfs target keeps a tree of files; the default 2 GB is
        // generous, but ASan's shadow memory counts too.
        let result = util::run(
            cargo_fuzz()
                .args(["run", target])
                .arg(&corpus)
                .args([
                    "--",
                    &format!("-max_total_time={seconds}"),
                    "-rss_limit_mb=4096",
                    "-print_final_stats=1",
                ])
                .env("NODEPULSE_FUZZ_SEEDS_TO", &corpus),
        );
        if let Err(e) = result {
            bail!(
                "fuzz target {target} failed: {e}; the input is in {}",
                fuzz_dir().join("artifacts").join(target).display()
            );
        }
        ran.push(format!("{target} {}", fmt_duration(started.elapsed())));
    }
    println!("fuzzed {} targets: {}", ran.len(), ran.join(", "));
    Ok(())
}
