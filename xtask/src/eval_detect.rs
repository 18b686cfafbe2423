//! `cargo xtask eval-detect`: the regression detector's evaluation harness (the
//! `eval_detect` example of the agent), built in release mode and run with fixed
//! seeds. Needs no root. Prints each scenario as it finishes, then the table.

use anyhow::Result;

use crate::util;

#[derive(clap::Args)]
pub struct Args {
    /// Arguments for the harness after `--` (e.g. `--seeds 20`; `-- --help` lists them).
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    println!("building the evaluation harness (release) ...");
    util::run_agent_example("eval_detect", &args.args)
}
