//! Feeds the capacity signals of recordings (`nodepulse record`, capacity enabled)
//! through the forecaster the agent runs, and reports per signal what it forecasts and
//! how often an alarm would have been due. The forecaster needs two hours of 10-minute
//! buckets before it says anything, longer than most recordings: `--stretch N` replays
//! each interval as N times longer (a 1-hour recording reads as N hours), which keeps
//! the real values and their noise but compresses their time structure N-fold; every
//! figure it prints is then in stretched hours.
//!
//! `cargo run --release -p agent --example capacity_replay -- [--stretch N] FILE...`

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader},
    path::PathBuf,
};

use anyhow::Context as _;
use clap::Parser;
use nodepulse::{
    capacity::{CapacityConfig, forecast::Forecaster},
    detect::replay::parse_time,
};

#[derive(Parser)]
#[command(about = "Forecast time to saturation over recorded capacity signals")]
struct Args {
    /// Recordings (`nodepulse record` output with a `capacity` section).
    #[arg(required = true)]
    recordings: Vec<PathBuf>,
    /// Replay each second of the recording as this many seconds.
    #[arg(long, default_value_t = 1.0)]
    stretch: f64,
    /// Print the forecast at every refit, not only the last.
    #[arg(long)]
    every: bool,
}

/// What one signal went through.
#[derive(Default)]
struct Track {
    forecaster: Forecaster,
    refits: u64,
    /// Refits whose interval lay wholly within the alarm horizon (an alarm open).
    due: u64,
    first_due_h: Option<f64>,
    values: (f64, f64, u64),
    last: Option<nodepulse::capacity::forecast::Forecast>,
}

/// The signals the agent forecasts (as `capacity::forecast_input`).
fn forecast_input(name: &str, labels: &serde_json::Value) -> bool {
    match name {
        "busy" => labels.get("op").is_none(),
        "pressure_some" | "vcpu_wait_share" => true,
        "runqueue_saturation" => labels.get("cpu").is_none(),
        _ => false,
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.stretch.is_finite() && args.stretch >= 1.0,
        "--stretch must be at least 1, got {}",
        args.stretch
    );
    let config = CapacityConfig::default();
    let level = config.interval_percent / 100.0;
    for path in &args.recordings {
        let name = path.display().to_string();
        let file = File::open(path).with_context(|| format!("reading {name}"))?;
        let mut tracks: BTreeMap<(String, String), Track> = BTreeMap::new();
        let (mut start, mut end) = (None::<f64>, 0.0);
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("reading {name}"))?;
            let v: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("{name}:{}: not a JSON report", i + 1))?;
            let Some(signals) = v["capacity"]["signals"].as_array() else {
                continue;
            };
            let time = v["time"].as_str().context("a report without a time")?;
            let t = parse_time(time)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{name}:{}", i + 1))? as f64
                / 1e9;
            let t0 = *start.get_or_insert(t);
            let now = t0 + (t - t0) * args.stretch;
            end = now;
            for s in signals {
                let (Some(signal), Some(resource), Some(value)) = (
                    s["name"].as_str(),
                    s["resource"].as_str(),
                    s["value"].as_f64(),
                ) else {
                    continue;
                };
                if !forecast_input(signal, &s["labels"]) {
                    continue;
                }
                let tr = tracks
                    .entry((resource.to_owned(), signal.to_owned()))
                    .or_default();
                tr.values.0 += value;
                tr.values.1 = tr.values.1.max(value);
                tr.values.2 += 1;
                if !tr.forecaster.observe(now as u64, value) {
                    continue;
                }
                let Some(f) = tr.forecaster.forecast(now as u64, config.saturation, level) else {
                    continue;
                };
                tr.refits += 1;
                let hours = (now - t0) / 3600.0;
                if f.upper_h.is_some_and(|h| h <= config.alarm_within_h) {
                    tr.due += 1;
                    tr.first_due_h.get_or_insert(hours);
                }
                if args.every {
                    println!("  {hours:6.2} h {resource} {signal}: {}", show(&f));
                }
                tr.last = Some(f);
            }
        }
        let hours = start.map_or(0.0, |s| (end - s) / 3600.0);
        println!("{name}: {hours:.2} h (stretch {})", args.stretch);
        for ((resource, signal), tr) in &tracks {
            let (sum, max, n) = tr.values;
            if n == 0 {
                continue;
            }
            println!(
                "  {resource:<28} {signal:<20} mean {:.3} max {max:.3} refits {:>3} alarm due {:>3}{} last: {}",
                sum / n as f64,
                tr.refits,
                tr.due,
                tr.first_due_h
                    .map_or(String::new(), |h| format!(" (first at {h:.1} h)")),
                tr.last.as_ref().map_or("none".into(), show)
            );
        }
    }
    Ok(())
}

fn show(f: &nodepulse::capacity::forecast::Forecast) -> String {
    let h = |v: Option<f64>| v.map_or("never".to_owned(), |v| format!("{v:.1}"));
    format!(
        "{} h ({}-{}), slope {:+.3}/day, sigma {:.4}, {} buckets",
        h(f.hours),
        h(f.lower_h),
        h(f.upper_h),
        f.slope_per_day,
        f.sigma,
        f.buckets
    )
}
