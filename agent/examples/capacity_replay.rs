//! Feeds recordings (`nodepulse record`, capacity enabled) through the capacity
//! learning the agent runs (`capacity::replay`, as `nodepulse capacity --from`), and
//! reports per recording how often an alarm was open and the standing at the end. The
//! forecaster needs two hours of 10-minute buckets before it says anything, longer
//! than most recordings: `--stretch N` replays each interval as N times longer (a
//! 1-hour recording reads as N hours), which keeps the real values and their noise
//! but compresses their time structure N-fold; every figure is then in stretched hours.
//!
//! `cargo run --release -p agent --example capacity_replay -- [--stretch N] FILE...`

use std::{collections::BTreeMap, fs::File, io::BufReader, path::PathBuf};

use anyhow::Context as _;
use clap::Parser;
use nodepulse::capacity::{CapacityConfig, replay::replay, standing::Standing};

#[derive(Parser)]
#[command(about = "Forecast time to saturation over recorded capacity signals")]
struct Args {
    /// Recordings (`nodepulse record` output with a `capacity` section).
    #[arg(required = true)]
    recordings: Vec<PathBuf>,
    /// Replay each second of the recording as this many seconds.
    #[arg(long, default_value_t = 1.0)]
    stretch: f64,
    /// Print every alarm event as it happens.
    #[arg(long)]
    every: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.stretch.is_finite() && args.stretch >= 1.0,
        "--stretch must be at least 1, got {}",
        args.stretch
    );
    let config = CapacityConfig::default();
    for path in &args.recordings {
        let name = path.display().to_string();
        let file = File::open(path).with_context(|| format!("reading {name}"))?;
        // Per signal: intervals with an alarm open or ongoing, and the first such hour.
        let mut due: BTreeMap<(String, &str), (u64, f64)> = BTreeMap::new();
        let replayed = replay(
            &name,
            BufReader::new(file),
            &config,
            args.stretch,
            |hours, c| {
                for a in &c.alarms {
                    if args.every {
                        println!("  {hours:6.2} h {} {}", a.state, a.summary);
                    }
                    if a.state != "resolved" {
                        let d = due
                            .entry((a.resource.clone(), a.signal))
                            .or_insert((0, hours));
                        d.0 += 1;
                    }
                }
            },
        )?;
        println!(
            "{name}: {:.2} h (stretch {}), {} reports",
            replayed.hours, args.stretch, replayed.reports
        );
        for ((resource, signal), (n, first)) in &due {
            println!("  alarm due {n:>4} intervals {resource} {signal} (first at {first:.1} h)");
        }
        print!("{}", Standing::of(&replayed).render());
    }
    Ok(())
}
