//! Developer and CI tasks for the nodepulse workspace, run as `cargo xtask <task>`.
//!
//! Each task is one module with an `Args` struct and a `run` function; adding a task
//! is one variant in [`Task`] and one match arm below.

mod bench;
mod deb;
mod dist;
mod eval_detect;
mod fuzz;
mod image;
mod receiver;
mod run;
mod setup;
mod soak;
mod tally;
mod test;
mod util;
mod vmtest;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(bin_name = "cargo xtask", about, disable_version_flag = true)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (Debian packages, nightly, rust-src,
    /// bpf-linker), skipping whatever is already present.
    Setup(setup::Args),
    /// Set up, build the agent and run `nodepulse run` (needs root).
    Run(run::Args),
    /// The whole test suite, as CI runs it: fmt, clippy, tests.
    Test(test::Args),
    /// Measure the block probe's cost: kernel ns/event, fio IOPS with and without the
    /// agent (alternating pairs, medians), the agent's CPU and memory. Needs root.
    Bench(bench::Args),
    /// Build the container image (static binary, FROM scratch) with podman.
    Image(image::Args),
    /// Build the Debian package (static binary, hardened systemd unit) with dpkg-deb.
    Deb(deb::Args),
    /// Evaluate the regression detector on labelled synthetic series (fixed seeds):
    /// detection rate, delay in windows, false alarms per day. No root needed.
    EvalDetect(eval_detect::Args),
    /// The detector on real workloads: `record` steady workloads and injected
    /// regressions (root), `eval` false alarms per node-day and detections on them.
    Soak(soak::Args),
    /// The kernel matrix: Debian's 5.10, 6.1, 6.12 and Ubuntu's 5.15, 6.8 kernels under QEMU, every probe
    /// family attached and its counts checked against the guest's own. Needs root.
    Vmtest(vmtest::Args),
    /// The libFuzzer targets (fuzz/, one per parser of outside input), each for
    /// `--seconds` (default 60), with cargo-fuzz on nightly (installed when missing).
    Fuzz(fuzz::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup(args) => setup::run(args),
        Task::Run(args) => run::run(args),
        Task::Test(args) => test::run(args),
        Task::Bench(args) => bench::run(args),
        Task::Image(args) => image::run(args),
        Task::Deb(args) => deb::run(args),
        Task::EvalDetect(args) => eval_detect::run(args),
        Task::Soak(args) => soak::run(args),
        Task::Vmtest(args) => vmtest::run(args),
        Task::Fuzz(args) => fuzz::run(args),
    };
    // Printed by hand: a failed task is an expected outcome, and anyhow's Debug output
    // would add a backtrace of xtask itself whenever RUST_BACKTRACE is set.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
