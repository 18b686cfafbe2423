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
    recordings: Vec<PathBuf>,
    /// Replay each second of the recording as this many seconds.
    #[arg(long, default_value_t = 1.0)]
    stretch: f64,
    /// Print every alarm event as it happens.
    #[arg(long)]
    every: bool,
    /// Also read this host's pressure (/proc/pressure and cgroups', as the agent's
    /// defaults do) this many times and print its cost per signal.
    #[arg(long, default_value_t = 0)]
    psi_reads: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.stretch.is_finite() && args.stretch >= 1.0,
        "--stretch must be at least 1, got {}",
        args.stretch
    );
    let config = CapacityConfig::default();
    if args.psi_reads > 0 {
        let root = std::fs::read_to_string("/proc/mounts")
            .ok()
            .and_then(|m| nodepulse::capacity::psi::cgroup2_root(&m));
        let mut p = nodepulse::capacity::psi::Pressure::new(
            std::path::Path::new("/proc"),
            root,
            config.max_cgroups,
        );
        p.update(0.0);
        let (t, mut shares) = (std::time::Instant::now(), 0);
        for _ in 0..args.psi_reads {
            shares += p.update(1e6).len();
        }
        let ns = t.elapsed().as_nanos() as f64;
        println!(
            "pressure: {} shares per read, {:.1} µs per read, {:.2} µs per share",
            shares / args.psi_reads as usize,
            ns / 1e3 / args.psi_reads as f64,
            ns / 1e3 / shares.max(1) as f64
        );
    }
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
        // The learning's own cost (knees, forecasts with their refits, demand, alarms);
        // parsing the recording is not in it.
        println!(
            "  learn: {} signals per interval, {:.2} µs per signal per interval ({:.1} µs per interval)",
            replayed.signals / replayed.reports.max(1),
            replayed.learn_ns as f64 / 1e3 / replayed.signals.max(1) as f64,
            replayed.learn_ns as f64 / 1e3 / replayed.reports.max(1) as f64,
        );
        for ((resource, signal), (n, first)) in &due {
            println!("  alarm due {n:>4} intervals {resource} {signal} (first at {first:.1} h)");
        }
        print!("{}", Standing::of(&replayed).render());
    }
    Ok(())
}
