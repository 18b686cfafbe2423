//! `cargo xtask test`: the whole suite, as CI runs it. Stops at the first failing
//! step and ends with a table of steps and durations.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::{
    tally::run_tallied,
    util::{self, Progress, fmt_duration},
};

#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments for `cargo test`, after `--` (e.g. a test name filter).
    #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
    cargo_test_args: Vec<String>,
}

const ROOT_NOTICE: &str = "\
*** not root: integration tests that load eBPF programs will be skipped.
*** Run them with `sudo -E cargo xtask test`, or as root.";

pub fn run(args: Args) -> Result<()> {
    let root = util::is_root();
    if !root {
        println!("{ROOT_NOTICE}\n");
    }

    let start = Instant::now();
    let mut results: Vec<(&str, &str, Duration)> = Vec::new();

    let setup_start = Instant::now();
    let setup = crate::setup::ensure();
    results.push(("setup", outcome(&setup), setup_start.elapsed()));
    if let Err(err) = setup {
        summary(&results, start.elapsed());
        return Err(err.context("step `setup` failed"));
    }
    println!();

    // The eBPF crate only builds for the BPF target, with nightly: it is linted there
    // and left out of the host steps.
    let steps: [(&str, Vec<&str>); 5] = [
        ("fmt", vec!["fmt", "--all", "--", "--check"]),
        (
            "clippy",
            vec![
                "clippy",
                "--workspace",
                "--exclude",
                "agent-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
        (
            "clippy-ebpf",
            vec![
                "+nightly",
                "clippy",
                "--package",
                "agent-ebpf",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ],
        ),
        (
            "unit",
            // The crates' own unit tests time nothing and share nothing: one per core.
            vec![
                "test",
                "--workspace",
                "--exclude",
                "agent-ebpf",
                "--lib",
                "--bins",
                "--",
            ],
        ),
        (
            "test",
            // The integration tests one at a time: the root tests time the kernel and
            // the agent, and two at once on a 2-core runner made them fail by turns (a
            // lagging reader, rate extrapolation, a late exemplar).
            vec![
                "test",
                "--workspace",
                "--exclude",
                "agent-ebpf",
                "--test",
                "*",
                "--",
                "--test-threads=1",
            ],
        ),
    ];
    let mut progress = Progress::new(steps.len() + ARTIFACTS.len() + 1);
    let mut tally: Option<crate::tally::Tally> = None;
    for (name, cargo_args) in steps {
        if name == "test" {
            // The deployment tests run what these build (tests/deploy_artifacts.rs).
            for (artifact, build) in ARTIFACTS {
                let step = progress.step(&format!("build {artifact}"));
                if !root {
                    step.start_line("skipped (needs root; its tests are skipped too)");
                    results.push((artifact, "skipped", step.elapsed()));
                    continue;
                }
                step.start_line("building");
                let result = build();
                let elapsed = step.finish(outcome(&result));
                results.push((artifact, outcome(&result), elapsed));
                if let Err(err) = result {
                    summary(&results, start.elapsed());
                    return Err(err.context(format!("step `{artifact}` failed")));
                }
            }
        }
        let mut cmd = util::cargo();
        cmd.args(cargo_args);
        let tests = name == "unit" || name == "test";
        if tests {
            cmd.args(&args.cargo_test_args);
        }
        let step = progress.step(&format!("cargo {name}"));
        step.start_line("running");
        let result = if tests {
            run_tallied(&mut cmd).map(|t| *tally.get_or_insert_default() += t)
        } else {
            util::run(&mut cmd)
        };
        let elapsed = step.finish(outcome(&result));
        results.push((name, outcome(&result), elapsed));
        if let Err(err) = result {
            summary(&results, start.elapsed());
            return Err(err.context(format!("step `{name}` failed")));
        }
    }

    // The kernel matrix last: it boots three kernels under QEMU (see vmtest/mod.rs).
    let step = progress.step("vmtest (kernel matrix under QEMU)");
    if root {
        step.start_line("running");
        let result = crate::vmtest::run_matrix(&crate::vmtest::MATRIX);
        let elapsed = step.finish(outcome(&result));
        results.push(("vmtest", outcome(&result), elapsed));
        if let Err(err) = result {
            summary(&results, start.elapsed());
            return Err(err.context("step `vmtest` failed"));
        }
    } else {
        step.start_line(crate::vmtest::SKIP_NOTICE);
        results.push(("vmtest", "skipped", step.elapsed()));
    }

    summary(&results, start.elapsed());
    if !root {
        println!("\n{ROOT_NOTICE}");
    }
    // One closing line for people and CI: skipped tests passed by returning early.
    if let Some(t) = tally {
        println!(
            "tests: {} passed, {} failed, {} skipped",
            t.passed - t.skipped.min(t.passed),
            t.failed,
            t.skipped
        );
    }
    Ok(())
}

/// Builds one artifact.
type Build = fn() -> Result<()>;

/// Artifacts the deployment and upgrade tests need, built as root before `cargo test`.
const ARTIFACTS: [(&str, Build); 3] = [
    ("image", || crate::image::build().map(|_| ())),
    ("deb", || crate::deb::build().map(|_| ())),
    ("upgrade build", build_upgrade_variant),
];

/// The upgrade test's second agent (tests/restart.rs): the same sources with another
/// eBPF map layout, beside `nodepulse` in the test profile's directory. Only the two
/// crates with the feature are compiled again (about a minute on the 2-core VM).
fn build_upgrade_variant() -> Result<()> {
    util::run(util::cargo().args([
        "build",
        "-p",
        "agent",
        "--bin",
        "nodepulse-upgrade-test",
        "--features",
        "test-upgrade-layout",
    ]))
}

fn outcome<T>(result: &Result<T>) -> &'static str {
    if result.is_ok() { "ok" } else { "FAILED" }
}

fn summary(results: &[(&str, &str, Duration)], total: Duration) {
    println!("\n{:<8} {:<7} {:>12}", "step", "result", "time");
    for (name, outcome, elapsed) in results {
        println!("{name:<8} {outcome:<7} {:>12}", fmt_duration(*elapsed));
    }
    println!("{:<8} {:<7} {:>12}", "total", "", fmt_duration(total));
}
