//! `cargo xtask eval-detect`: the regression detector's evaluation harness (the
//! `eval_detect` example of the agent), built in release mode and run with fixed
//! seeds. Needs no root. Prints each scenario as it finishes, then the table.
//! With `--corpus DIR`: the scalar detector on a public labelled corpus (NAB or
//! TCPD, told apart by their layout), tuned on half of it and scored on the rest.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::util;

#[derive(clap::Args)]
pub struct Args {
    /// A checkout of the Numenta Anomaly Benchmark or of the Turing Change Point
    /// Dataset (README: "Anomalies in scalar series").
    #[arg(long, value_name = "DIR")]
    corpus: Option<PathBuf>,
    /// Arguments for the harness after `--` (e.g. `--seeds 20`; `-- --help` lists them).
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let mut forward = args.args;
    if let Some(dir) = args.corpus {
        if !dir.is_dir() {
            bail!(
                "--corpus {}: no such directory; clone NAB or TCPD there (README: \
                 \"Anomalies in scalar series\")",
                dir.display()
            );
        }
        let dir = dir.canonicalize()?;
        forward.splice(0..0, ["--corpus".to_owned(), dir.display().to_string()]);
    }
    println!("building the evaluation harness (release) ...");
    util::run_agent_example("eval_detect", &forward)
}
