//! Offline replay: a recording (the console's JSON lines, as `nodepulse record` writes
//! them) or a plain CSV time series run through the same detector the agent runs.
//!
//! A CSV (`timestamp,value`) has one number per row, not a distribution: it goes
//! through the scalar detector (`scalar`), one row a point, with the alarm lifecycle
//! counting rows. Each row's score is the detector's (0 while it learns; damped for a
//! while after an anomaly was reported, so that one anomaly scores high once).

use std::{collections::BTreeMap, io::BufRead};

use serde::Deserialize;
use thiserror::Error;

use super::{
    Alarm, DetectConfig, Detector, ScalarInput,
    corpus::clock::parse_time as clock_seconds,
    scalar::ScalarConfig,
    scalar::series::{Reading, ScalarSeries},
    series::Identity,
};
use crate::aggregate::ExpHistogram;

#[derive(Debug, Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} line {line}: not a nodepulse recording line ({message}); record one with \
         `nodepulse record --output FILE`, or pass a CSV of `timestamp,value` rows"
    )]
    Recording {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path} line {line}: {message}; expected `timestamp,value` with a number as value")]
    Csv {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path} holds no data")]
    Empty { path: String },
}

/// The parts of a recorded report the detector needs.
#[derive(Debug, Deserialize)]
struct RecordedReport {
    time: String,
    interval_s: f64,
    #[serde(default)]
    node: String,
    series: Vec<RecordedSeries>,
    #[serde(default)]
    counters: Vec<RecordedCounter>,
    /// What the recording agent's own detector raised.
    #[serde(default)]
    alarms: Vec<RecordedAlarm>,
    /// Absent in recordings made before devices' backing was reported.
    #[serde(default)]
    backing: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct RecordedAlarm {
    state: super::AlarmState,
    summary: String,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RecordedCounter {
    family: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    rate_per_s: f64,
}

/// A recorded series as the readers of recordings (the detector, capacity) need it.
#[derive(Debug, Deserialize)]
pub(crate) struct RecordedSeries {
    pub family: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The interval's samples and their rate.
    #[serde(default)]
    pub count: u64,
    #[serde(default)]
    pub rate_per_s: f64,
    #[serde(default)]
    sum_ns: u64,
    /// The samples' mean (absent in an empty interval).
    #[serde(default)]
    mean: Option<f64>,
    histogram: RecordedHistogram,
}

#[derive(Debug, Deserialize)]
struct RecordedHistogram {
    zero_count: u64,
    offset: i32,
    counts: Vec<u64>,
}

impl RecordedSeries {
    /// The interval's histogram.
    pub fn into_histogram(self) -> ExpHistogram {
        ExpHistogram {
            sum: self.sum_ns,
            zero_count: self.histogram.zero_count,
            offset: self.histogram.offset,
            counts: self.histogram.counts,
        }
    }
}

/// Runs a recording through the detector; returns every alarm event in order.
pub fn replay_recording(
    path: &str,
    reader: impl BufRead,
    config: &DetectConfig,
) -> Result<Vec<Alarm>, ReplayError> {
    Ok(replay_timed(path, reader, config)?
        .into_iter()
        .map(|(_, alarm)| alarm)
        .collect())
}

/// As [`replay_recording`], with the time (unix ns) of the report each event came
/// out of: when the alarm opened, changed or resolved.
pub fn replay_timed(
    path: &str,
    reader: impl BufRead,
    config: &DetectConfig,
) -> Result<Vec<(u64, Alarm)>, ReplayError> {
    Ok(replay_timed_with(path, reader, config, |_| {})?.alarms)
}

/// What a timed replay produced.
pub struct Replayed {
    /// Every alarm event, with the time (unix ns) of the report it came out of.
    pub alarms: Vec<(u64, Alarm)>,
    /// The time of the first report in which the detector judged a window (a series
    /// past learning); None when it never did. Before it no alarm can open, so rates
    /// of alarms count time from here on.
    pub judged_from: Option<u64>,
}

/// As [`replay_timed`], showing every report to `also` on its way (the soak scorer
/// measures injections' effects in the same pass).
pub fn replay_timed_with(
    path: &str,
    reader: impl BufRead,
    config: &DetectConfig,
    also: impl FnMut(&Report),
) -> Result<Replayed, ReplayError> {
    let mut out = replay_configs_with(path, reader, std::slice::from_ref(config), also)?;
    Ok(out.remove(0))
}

/// As [`replay_timed_with`], through one detector per configuration, reading the
/// recording once (an hour at 1 s is up to 1.4 GB of JSON: comparing settings on
/// it should not read it once per setting).
pub fn replay_configs_with(
    path: &str,
    reader: impl BufRead,
    configs: &[DetectConfig],
    mut also: impl FnMut(&Report),
) -> Result<Vec<Replayed>, ReplayError> {
    let mut detectors: Vec<Option<Detector>> = configs.iter().map(|_| None).collect();
    let mut out: Vec<Replayed> = configs
        .iter()
        .map(|_| Replayed {
            alarms: Vec::new(),
            judged_from: None,
        })
        .collect();
    for_each_report(path, reader, |report| {
        also(&report);
        for ((detector, config), replayed) in detectors.iter_mut().zip(configs).zip(&mut out) {
            let detector =
                detector.get_or_insert_with(|| Detector::new(config.clone(), &report.node));
            detector.note_backing(&report.backing, report.time);
            let update = detector.update_with_scalars(
                report.time,
                report.interval_ns,
                report
                    .series
                    .iter()
                    .map(|(f, l, h)| (f.as_str(), l.clone(), h)),
                report.scalars(&config.scalar),
            );
            if update.judged > 0 && replayed.judged_from.is_none() {
                replayed.judged_from = Some(report.time);
            }
            (replayed.alarms).extend(update.alarms.into_iter().map(|a| (report.time, a)));
        }
    })?;
    Ok(out)
}

/// One report of a recording, as the detector sees it.
#[derive(Default)]
pub struct Report {
    /// Unix ns.
    pub time: u64,
    pub interval_ns: u64,
    pub node: String,
    /// Family, labels and the interval's histogram of every series.
    pub series: Vec<(String, BTreeMap<String, String>, ExpHistogram)>,
    /// Per series, its rate and mean; per counter, its family, labels and rate: what
    /// the scalar detector may watch.
    pub(crate) numbers: Vec<(f64, Option<f64>)>,
    pub(crate) counters: Vec<RecordedCounter>,
    /// The summaries of the alarms the recording agent itself opened in this report
    /// (its settings then, its code then: beside a replay, a check that the replay
    /// scores what the agent raised).
    pub opened_live: Vec<String>,
    /// What stacked devices were backed by (see `Report::backing`).
    pub backing: BTreeMap<String, String>,
}

impl Report {
    /// The numbers of this report the scalar detector watches under `c`, as the
    /// agent's pipeline takes them from its own reports.
    pub fn scalars(&self, c: &ScalarConfig) -> Vec<ScalarInput> {
        let series = self.series.iter().zip(&self.numbers);
        let mut out: Vec<ScalarInput> = series
            .flat_map(|((family, labels, _), &(rate, mean))| {
                c.series_inputs(family, rate, mean, || labels.clone())
            })
            .collect();
        out.extend(
            self.counters
                .iter()
                .filter_map(|k| c.counter_input(&k.family, k.rate_per_s, || k.labels.clone())),
        );
        out
    }
}

/// Reads a recording report by report.
pub fn for_each_report(
    path: &str,
    reader: impl BufRead,
    mut each: impl FnMut(Report),
) -> Result<(), ReplayError> {
    for_each_line(path, reader, |report: RecordedReport, bad| {
        let time = parse_time(&report.time).map_err(bad)?;
        let numbers = report
            .series
            .iter()
            .map(|s| (s.rate_per_s, s.mean))
            .collect();
        let series = report
            .series
            .into_iter()
            .map(|mut s| {
                let (family, labels) =
                    (std::mem::take(&mut s.family), std::mem::take(&mut s.labels));
                (family, labels, s.into_histogram())
            })
            .collect();
        each(Report {
            time,
            interval_ns: (report.interval_s * 1e9) as u64,
            node: report.node,
            series,
            numbers,
            counters: report.counters,
            opened_live: (report.alarms.into_iter())
                .filter(|a| a.state == super::AlarmState::Open)
                .map(|a| a.summary)
                .collect(),
            backing: report.backing,
        });
        Ok(())
    })
}

/// Reads a recording line by line as `T` (the parts of a report a reader needs;
/// `nodepulse view` reads more than the detector). `each` gets each line and a way
/// to turn a complaint about it into an error naming the file and line.
pub fn for_each_line<T: serde::de::DeserializeOwned>(
    path: &str,
    reader: impl BufRead,
    mut each: impl FnMut(T, &dyn Fn(String) -> ReplayError) -> Result<(), ReplayError>,
) -> Result<(), ReplayError> {
    let mut lines = 0;
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| ReplayError::Read {
            path: path.into(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| ReplayError::Recording {
            path: path.into(),
            line: i + 1,
            message,
        };
        let value: T = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        each(value, &bad)?;
        lines += 1;
    }
    if lines == 0 {
        return Err(ReplayError::Empty { path: path.into() });
    }
    Ok(())
}

/// A report's RFC 3339 time as unix ns.
pub fn parse_time(time: &str) -> Result<u64, String> {
    humantime::parse_rfc3339(time)
        .map_err(|e| format!("time \"{time}\": {e}"))
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        })
}

/// One CSV row with its score.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredRow {
    pub timestamp: String,
    pub value: f64,
    pub score: f64,
}

/// Scores a CSV time series with the scalar detector ([detect.scalar]); alarms it
/// raised come back alongside. A timestamp that is a clock time (RFC 3339, `YYYY-MM-DD
/// HH:MM:SS` or Unix seconds) feeds the time-of-day profile.
pub fn replay_csv(
    path: &str,
    reader: impl BufRead,
    config: &DetectConfig,
) -> Result<(Vec<ScoredRow>, Vec<Alarm>), ReplayError> {
    let labels = BTreeMap::from([("source".to_owned(), path.to_owned())]);
    let name = super::series_name("csv", &labels);
    let who = Identity {
        node: "replay",
        family: "csv",
        labels: &labels,
        series: &name,
    };
    let mut state = ScalarSeries::default();
    let mut rows = Vec::new();
    let mut alarms = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| ReplayError::Read {
            path: path.into(),
            source,
        })?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |message: String| ReplayError::Csv {
            path: path.into(),
            line: i + 1,
            message,
        };
        let (timestamp, value) = line.split_once(',').ok_or_else(|| bad("no comma".into()))?;
        let value: f64 = match value.trim().parse() {
            Ok(v) => v,
            // A header row.
            Err(_) if rows.is_empty() && i == 0 => continue,
            Err(e) => return Err(bad(format!("value \"{}\": {e}", value.trim()))),
        };
        // Rows that cannot be scored are errors, never a silent zero.
        if !value.is_finite() {
            return Err(bad(format!(
                "value {value} cannot be scored (only finite numbers can)"
            )));
        }
        let timestamp = timestamp.trim();
        if let Some(previous) = rows.last().map(|r: &ScoredRow| r.timestamp.as_str())
            && !after(timestamp, previous)
        {
            return Err(bad(format!(
                "timestamp {timestamp} is not after the previous row's ({previous}); rows \
                 must be in time order, one per timestamp"
            )));
        }
        let time_s = clock_seconds(timestamp);
        // Row n is at n seconds when its timestamp is no clock time.
        let now = time_s.map_or((rows.len() as u64 + 1) * 1_000_000_000, |t| {
            (t.max(0.0) * 1e9) as u64
        });
        let reading = Reading {
            unit: "",
            value,
            rises_only: false,
        };
        let (point, alarm) = state.observe(&who, reading, now, time_s, config, &config.scalar);
        alarms.extend(alarm);
        rows.push(ScoredRow {
            timestamp: timestamp.to_owned(),
            value,
            score: point.score,
        });
    }
    if rows.is_empty() {
        return Err(ReplayError::Empty { path: path.into() });
    }
    Ok((rows, alarms))
}

/// Whether timestamp `t` comes after `previous`: as numbers when both are (Unix
/// seconds), else as text (RFC 3339 times in one zone order as text does).
fn after(t: &str, previous: &str) -> bool {
    match (t.parse::<f64>(), previous.parse::<f64>()) {
        (Ok(a), Ok(b)) => a > b,
        _ => t > previous,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::eval::Rng;

    #[test]
    fn csv_step_raises_the_score_and_an_alarm_at_the_step() {
        let mut rng = Rng::new(7);
        let mut text = String::from("timestamp,value\n");
        for i in 0..4000 {
            let scale = if i < 3000 { 1.0 } else { 2.0 };
            let v = (rng.normal() * 0.1).exp() * scale;
            text.push_str(&format!("{i},{v}\n"));
        }
        let config = DetectConfig::default();
        let (rows, alarms) = replay_csv("t.csv", text.as_bytes(), &config).unwrap();
        assert_eq!(rows.len(), 4000);
        assert!(rows.iter().all(|r| (0.0..=1.0).contains(&r.score)));
        let fire = config.scalar.fire;
        let before = rows[500..3000].iter().map(|r| r.score).fold(0.0, f64::max);
        assert!(before < fire, "calm before the step: {before}");
        let at = rows[3000..3010].iter().map(|r| r.score).fold(0.0, f64::max);
        assert!(at >= fire, "the step scores: {at}");
        let opened = alarms.first().expect("an alarm");
        let start_row = opened.start_unix_nano / 1_000_000_000;
        assert!((3000..=3005).contains(&start_row), "{opened:?}");
        let scalar = opened.scalar.as_ref().expect("scalar figures");
        assert!((scalar.expected - 1.0).abs() < 0.1, "{scalar:?}");
        assert!(
            opened.summary.contains("is anomalous"),
            "{}",
            opened.summary
        );
        // The new level persists: learned, the alarm resolves.
        assert!(
            alarms
                .iter()
                .any(|a| a.id == opened.id && a.state == super::super::AlarmState::Resolved),
            "resolved once the new level is learned"
        );
    }

    #[test]
    fn csv_errors_name_the_line() {
        let e = replay_csv(
            "x.csv",
            "t,v\n1,2\n2,abc\n".as_bytes(),
            &DetectConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("x.csv line 3"), "{e}");
        assert!(e.contains("timestamp,value"), "{e}");
    }

    #[test]
    fn rows_that_cannot_be_scored_are_reported_with_their_line() {
        let run = |text: &str| {
            replay_csv("x.csv", text.as_bytes(), &DetectConfig::default())
                .unwrap_err()
                .to_string()
        };
        for (text, want) in [
            (
                "t,v\n1,2\n2,NaN\n",
                "x.csv line 3: value NaN cannot be scored",
            ),
            ("1,2\n2,inf\n", "x.csv line 2: value inf cannot be scored"),
            (
                "1,2\n2,-infinity\n",
                "x.csv line 2: value -inf cannot be scored",
            ),
            (
                "1,2\n3,2\n2,2\n",
                "x.csv line 3: timestamp 2 is not after the previous row's (3)",
            ),
            ("10,2\n10,2\n", "x.csv line 2: timestamp 10 is not after"),
            (
                "2026-01-01T00:00:02Z,1\n2026-01-01T00:00:01Z,1\n",
                "x.csv line 2: timestamp 2026-01-01T00:00:01Z is not after",
            ),
        ] {
            let e = run(text);
            assert!(e.contains(want), "{text:?}: {e}");
        }
        // Numeric order, not text order: 9 comes before 10.
        replay_csv("x.csv", "9,1\n10,1\n".as_bytes(), &DetectConfig::default()).unwrap();
    }

    #[test]
    fn bad_recording_line_says_what_a_recording_is() {
        let e = replay_recording(
            "r.jsonl",
            "{\"nope\":1}\n".as_bytes(),
            &DetectConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("r.jsonl line 1"), "{e}");
        assert!(e.contains("nodepulse record"), "{e}");
    }
}
