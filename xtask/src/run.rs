//! `cargo xtask run`: set up, build the agent, then become `nodepulse run`.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Args {
    /// Build and run the release profile (the default).
    #[arg(long, conflicts_with = "debug")]
    release: bool,
    /// Build and run the debug profile.
    #[arg(long)]
    debug: bool,
    /// Arguments for `nodepulse run`, after `--`.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    setup::ensure()?;

    let binary = build_agent(!args.debug)?;
    let mut cmd = Command::new(&binary);
    cmd.arg("run").args(&args.args);
    let shown = format!(
        "{} run {}",
        util::relative_to_cwd(&binary).display(),
        util::quote_all(&args.args)
    );
    let shown = shown.trim_end();

    // Checked after the build so the binary is ready for the sudo rerun.
    if !util::is_root() {
        println!(
            "loading eBPF programs needs root (or CAP_BPF + CAP_PERFMON); run:\n    sudo {shown}"
        );
        bail!("built, but not started: not root");
    }

    // Replace this process so signals (Ctrl-C) and the exit status are nodepulse's own.
    // The working directory stays the caller's, so relative paths in ARGS work.
    println!("$ {shown}");
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not exec {}", binary.display()))
}

/// Builds the `nodepulse` binary and returns its path.
pub fn build_agent(release: bool) -> Result<std::path::PathBuf> {
    println!("building nodepulse (first build compiles the kernel programs too, ~2 min) ...");
    let mut build = util::cargo();
    build.args(["build", "-p", "agent"]);
    if release {
        build.arg("--release");
    }
    util::run(&mut build)?;
    let profile = if release { "release" } else { "debug" };
    Ok(util::target_dir().join(profile).join("nodepulse"))
}
