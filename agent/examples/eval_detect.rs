//! The detector's evaluation harness: `cargo xtask eval-detect` runs this in release
//! mode. Prints each scenario as it finishes, then the table.

use std::time::Instant;

use clap::Parser;
use nodepulse::{
    config::Config,
    detect::{
        corpus,
        eval::{self, Options},
    },
};

#[derive(Parser)]
#[command(about = "Evaluate the regression detector on labelled synthetic series")]
struct Args {
    /// Series (seeds) per scenario.
    #[arg(long, default_value_t = 100)]
    seeds: u32,
    /// Simulated days per control series.
    #[arg(long, default_value_t = 3.0)]
    control_days: f64,
    /// Hours of history before the change, and after it.
    #[arg(long, default_value_t = 3.0)]
    before_hours: f64,
    #[arg(long, default_value_t = 1.0)]
    after_hours: f64,
    /// Agent interval in seconds.
    #[arg(long, default_value_t = 10.0)]
    interval: f64,
    /// Print every false alarm with the profile of its series.
    #[arg(long)]
    explain: bool,
    /// A configuration file whose [detect] section to evaluate (default: the defaults).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Evaluate the scalar detector on a public labelled corpus instead: a checkout of
    /// the Numenta Anomaly Benchmark or of the Turing Change Point Dataset (README:
    /// "Anomalies in scalar series" says where to get them).
    #[arg(long, value_name = "DIR")]
    corpus: Option<std::path::PathBuf>,
    /// With --corpus: use the [detect.scalar] settings as given, untuned.
    #[arg(long, requires = "corpus")]
    no_tune: bool,
    /// With --corpus: also score each part of the detector switched off.
    #[arg(long, requires = "corpus")]
    ablation: bool,
    /// With --corpus: tune with fixed learning periods only, not shares of each
    /// series' length (to compare with them).
    #[arg(long, requires = "corpus")]
    fixed_learning: bool,
    /// With a NAB --corpus: score this published detector's result directory
    /// (e.g. DIR/results/numenta) instead, to check the scorer against NAB's numbers.
    #[arg(long, value_name = "DIR", requires = "corpus")]
    nab_results: Option<std::path::PathBuf>,
    /// With a NAB --corpus: tell the detector each file's minimum and maximum in
    /// advance, as NAB tells its detectors (a live series has no such bounds).
    #[arg(long, requires = "corpus")]
    known_range: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load(args.config.as_deref(), &Default::default())?;
    if let Some(dir) = &args.corpus {
        let options = corpus::Options {
            tune: !args.no_tune,
            nab_results: args.nab_results.clone(),
            ablation: args.ablation,
            fixed_learning: args.fixed_learning,
            known_range: args.known_range,
        };
        let started = Instant::now();
        let report = corpus::evaluate(dir, &config.detect.scalar, &options, &mut |line| {
            eprintln!("[{:.0}s] {line}", started.elapsed().as_secs_f64())
        })?;
        print!("{report}");
        return Ok(());
    }
    let options = Options {
        seeds: args.seeds,
        control_days: args.control_days,
        before_h: args.before_hours,
        after_h: args.after_hours,
        interval_s: args.interval,
        explain: args.explain,
    };
    let total = eval::SCENARIOS.len() + 1;
    let started = Instant::now();
    let mut done = 0;
    eprintln!(
        "evaluating {total} scenarios × {} seeds ({} control days each) …",
        args.seeds, args.control_days
    );
    let result = eval::evaluate(&options, &config.detect, |row| {
        done += 1;
        eprintln!(
            "[{done}/{total}] {:<28} detected {:>3.0}%  false alarms/day {:.3}  ({:.0}s)",
            row.name,
            100.0 * row.detection_rate(),
            row.false_alarms_per_day(),
            started.elapsed().as_secs_f64()
        );
    });
    print!("{}", eval::render(&result));
    Ok(())
}
