//! Scores the detector on soak recordings: `cargo xtask soak eval` runs this in release
//! mode. One row per recording: false alarms per node-day away from injections, over
//! judged time only ("steady h": from the detector's first judged window on, so that a
//! longer learning period is not credited with hours in which no alarm could open),
//! and the injected regressions detected within the allowed number of windows.

use std::{fs::File, io::BufReader, path::PathBuf};

use anyhow::Context as _;
use clap::Parser;
use nodepulse::{
    config::Config,
    detect::{
        replay::replay_configs_with,
        soak::{self, EffectMeter, Injection},
    },
};

#[derive(Parser)]
#[command(about = "Score the regression detector on soak recordings")]
struct Args {
    /// Recordings (`nodepulse record` output).
    #[arg(required = true)]
    recordings: Vec<PathBuf>,
    /// The harness's injection log (JSON lines); none: every alarm is a false alarm.
    #[arg(long)]
    injections: Option<PathBuf>,
    /// A configuration file whose [detect] section to use (default: the defaults).
    /// Repeat it to compare settings: each recording is read once and scored once per
    /// file, one row each, named by the file.
    #[arg(long)]
    config: Vec<PathBuf>,
    /// Other known disturbances of the steady load, in the injection log's format (a
    /// build run beside the recording): not steady time; their alarms are listed apart.
    #[arg(long)]
    disturbances: Option<PathBuf>,
    /// Seconds after an injection ends that still belong to it.
    #[arg(long, default_value_t = 300.0)]
    settle: f64,
    /// The detector's window, in seconds, to express delays in windows.
    #[arg(long, default_value_t = 30.0)]
    window: f64,
    /// Delay (in windows) within which an injection counts as detected.
    #[arg(long, default_value_t = 3.0)]
    allowed_windows: f64,
    /// Seconds before an injection that are its reference, to measure its effect.
    #[arg(long, default_value_t = 300.0)]
    before: f64,
    /// Print every false alarm and every injection's outcome.
    #[arg(long)]
    explain: bool,
    /// With two recordings of the same node and time (the harness's 1 s and 10 s
    /// agents): list which alarms both raised (a shared series, opened within the
    /// allowed windows of each other) and which only one did.
    #[arg(long)]
    compare: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let configs: Vec<(String, Config)> = if args.config.is_empty() {
        vec![(
            "defaults".to_owned(),
            Config::load(None, &Default::default())?,
        )]
    } else {
        let named = |p: &PathBuf| {
            let name = p.file_stem().map_or(p.display().to_string(), |n| {
                n.to_string_lossy().into_owned()
            });
            Ok::<_, anyhow::Error>((name, Config::load(Some(p.as_path()), &Default::default())?))
        };
        args.config.iter().map(named).collect::<Result<_, _>>()?
    };
    let detect: Vec<_> = configs.iter().map(|(_, c)| c.detect.clone()).collect();
    let read = |path: &Option<PathBuf>| -> anyhow::Result<Vec<Injection>> {
        let Some(path) = path else {
            return Ok(Vec::new());
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        soak::read_injections(&text).map_err(anyhow::Error::msg)
    };
    let injections = read(&args.injections)?;
    let disturbances = read(&args.disturbances)?;
    // An injection is a 2× p99 regression only if a series it targets moved that much
    // in the recording (see `soak::Effect`); "≤3 w" counts detections within
    // `allowed_windows` windows of its start.
    println!(
        "{:<24} {:>6} {:>8} {:>7} {:>8} {:>10} {:>10} {:>10}",
        "recording", "hours", "steady h", "alarms", "per day", "≥2× ≤3 w", "all ≤3 w", "delay p50"
    );
    if args.compare && args.recordings.len() != 2 {
        anyhow::bail!("--compare takes two recordings of the same node and time");
    }
    // Per recording, per configuration: its alarms over their lives.
    let mut lives: Vec<Vec<Vec<soak::AlarmLife>>> = Vec::new();
    for path in &args.recordings {
        let name = path.display().to_string();
        let file = File::open(path).with_context(|| format!("reading {name}"))?;
        let span = recording_span(path)?;
        let mut meter = EffectMeter::new(&injections, args.before);
        let mut live: Vec<(u64, String)> = Vec::new();
        let replays = replay_configs_with(&name, BufReader::new(file), &detect, |r| {
            meter.add(r);
            live.extend(r.opened_live.iter().map(|a| (r.time, a.clone())));
        })?;
        let effects = meter.effects();
        lives.push(Vec::new());
        for ((config_name, _), replayed) in configs.iter().zip(replays) {
            let row_name = path
                .file_name()
                .map_or(name.clone(), |n| n.to_string_lossy().into());
            let row_name = if configs.len() > 1 {
                format!("{row_name} [{config_name}]")
            } else {
                row_name
            };
            let events = replayed.alarms;
            // Rates count judged time only: no alarm can open while every series learns.
            let judged = (replayed.judged_from.unwrap_or(span.1).max(span.0), span.1);
            let opened = soak::opened(&events);
            lives.last_mut().expect("pushed").push(soak::lives(&opened));
            let allowed = args.allowed_windows * args.window;
            let s = soak::score(
                &opened,
                &injections,
                &disturbances,
                judged,
                args.settle,
                allowed,
            );
            let doubled = |i: usize| effects[i].as_ref().is_some_and(|e| e.ratio() >= 2.0);
            let detected = s.injected.iter().filter(|(_, _, d)| d.is_some()).count();
            let doubled_detected = s
                .injected
                .iter()
                .filter(|(i, _, d)| doubled(*i) && d.is_some())
                .count();
            let doubled_count = s.injected.iter().filter(|(i, _, _)| doubled(*i)).count();
            let mut delays: Vec<f64> = s.injected.iter().filter_map(|(_, _, d)| *d).collect();
            delays.sort_by(f64::total_cmp);
            let median = delays.get(delays.len() / 2).map_or("-".to_owned(), |d| {
                format!("{d:.0}s/{:.1}w", d / args.window)
            });
            println!(
                "{:<24} {:>6.2} {:>8.2} {:>7} {:>8.1} {:>10} {:>10} {:>10}",
                row_name,
                (span.1 - span.0) as f64 / 3.6e12,
                s.steady_hours,
                s.steady_alarms.len(),
                s.alarms_per_day(),
                format!("{doubled_detected}/{doubled_count}"),
                format!("{detected}/{}", s.injected.len()),
                median
            );
            println!(
                "  judged from {} ({:.2} h learning); all alarms opened: {}; during injections \
             on other series: {}; injections while learning: {}; during other disturbances: {}",
                rfc3339(judged.0),
                (judged.0 - span.0) as f64 / 3.6e12,
                opened.iter().filter(|o| o.new_alarm).count(),
                s.collateral,
                s.while_learning,
                s.disturbance_alarms.len()
            );
            // What the agent that made the recording raised itself, over the same
            // judged time: a replay must not score fewer alarms than the agent sent.
            let live_judged: Vec<_> = live.iter().filter(|(t, _)| *t >= judged.0).collect();
            println!(
                "  the recording agent itself opened {} alarms, {} of them in the judged time",
                live.len(),
                live_judged.len()
            );
            if args.explain {
                for (at, summary) in &live_judged {
                    println!("  recorded alarm at {}: {summary}", rfc3339(*at));
                }
                for a in &s.disturbance_alarms {
                    println!(
                        "  alarm during a disturbance at {}: {}",
                        rfc3339(a.at),
                        a.summary
                    );
                }
                for a in &s.steady_alarms {
                    println!("  false alarm at {}: {}", rfc3339(a.at), a.summary);
                    // The series it opened with (an incident's evidence): what moved together.
                    for (family, labels) in a.series.iter().filter(|_| a.series.len() > 1) {
                        println!(
                            "    with {}",
                            nodepulse::detect::series_name(family, labels)
                        );
                    }
                }
                for (index, kind, delay) in &s.injected {
                    let (i, effect) = (&injections[*index], &effects[*index]);
                    let effect =
                        effect
                            .as_ref()
                            .map_or("no targeted series measurable".to_owned(), |e| {
                                format!(
                                    "p99 {:.2}× on {} ({:.0}µs → {:.0}µs)",
                                    e.ratio(),
                                    e.series,
                                    e.before_p99_ns / 1e3,
                                    e.during_p99_ns / 1e3
                                )
                            });
                    let outcome = delay
                        .map_or("not detected within the allowed windows".to_owned(), |d| {
                            format!("detected after {d:.0} s")
                        });
                    println!(
                        "  injection {kind} at {}: {outcome}; effect {effect}",
                        i.start
                    );
                }
            }
        }
    }
    if args.compare {
        let within = (args.allowed_windows * args.window * 1e9) as u64;
        for (c, (config_name, _)) in configs.iter().enumerate() {
            print_agreement(
                config_name,
                &args.recordings,
                &lives[0][c],
                &lives[1][c],
                within,
            );
        }
    }
    Ok(())
}

fn print_agreement(
    config: &str,
    paths: &[PathBuf],
    first: &[soak::AlarmLife],
    second: &[soak::AlarmLife],
    within_ns: u64,
) {
    let name = |i: usize| {
        paths[i]
            .file_name()
            .map_or(paths[i].display().to_string(), |n| {
                n.to_string_lossy().into()
            })
    };
    let a = soak::agreement(first, second, within_ns);
    println!(
        "[{config}] alarms raised by both: {}; only by {}: {}; only by {}: {}",
        a.both.len(),
        name(0),
        a.only_first.len(),
        name(1),
        a.only_second.len()
    );
    for &(i, j) in &a.both {
        let apart = first[i].at as f64 / 1e9 - second[j].at as f64 / 1e9;
        println!(
            "  both ({apart:+.0} s): {} {}",
            rfc3339(first[i].at),
            first[i].summary
        );
    }
    for (which, only, lives) in [(0, &a.only_first, first), (1, &a.only_second, second)] {
        for &i in only {
            println!(
                "  only {}: {} {}",
                name(which),
                rfc3339(lives[i].at),
                lives[i].summary
            );
            for (family, labels) in lives[i].series.iter().filter(|_| lives[i].series.len() > 1) {
                println!(
                    "    with {}",
                    nodepulse::detect::series_name(family, labels)
                );
            }
        }
    }
}

/// First and last report time of a recording (unix ns).
fn recording_span(path: &PathBuf) -> anyhow::Result<(u64, u64)> {
    use std::io::BufRead as _;
    let file = File::open(path)?;
    let mut first = None;
    let mut last = 0;
    for line in BufReader::new(file).lines() {
        let line = line?;
        // The time is the first field of every report; no need to parse the rest.
        let Some(at) = line.find("\"time\":\"") else {
            continue;
        };
        let text = &line[at + 8..];
        let Some(end) = text.find('"') else { continue };
        let t = humantime::parse_rfc3339(&text[..end])?
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64;
        first.get_or_insert(t);
        last = t;
    }
    Ok((first.context("empty recording")?, last))
}

fn rfc3339(unix_nano: u64) -> String {
    nodepulse::util::time::rfc3339(unix_nano)
}
