//! `nodepulse replay` as a user runs it (no root): a recording with a known step, in
//! the console JSON format `nodepulse record` writes, yields one alarm at the step; a
//! CSV yields one scored row per input row; a real recording (root) replays.

use crate::common;

use std::{collections::BTreeMap, path::Path};

use nodepulse::detect::eval::Rng;
use serde_json::{Value, json};

const T0: u64 = 1_790_000_000; // unix seconds of the recording's start
const INTERVAL: u64 = 10;
const STEP_AT: u64 = 200; // the first slowed interval

/// 300 ten-second reports of one block series, ~600 samples each around 100 µs; from
/// report `STEP_AT` on, every sample takes twice as long.
fn write_recording(path: &Path) {
    let mut rng = Rng::new(42);
    let mut text = String::new();
    for i in 0..300u64 {
        let slow = if i >= STEP_AT { 2.0 } else { 1.0 };
        let mut buckets: BTreeMap<i32, u64> = BTreeMap::new();
        let mut sum = 0u64;
        for _ in 0..600 {
            let v = (100_000.0 * (0.4 * rng.normal()).exp() * slow) as u64;
            sum += v;
            *buckets
                .entry(agent_common::hist::bucket_index(v))
                .or_default() += 1;
        }
        let offset = *buckets.keys().next().unwrap();
        let last = *buckets.keys().last().unwrap();
        let counts: Vec<u64> = (offset..=last)
            .map(|b| buckets.get(&b).copied().unwrap_or(0))
            .collect();
        let end = std::time::UNIX_EPOCH + std::time::Duration::from_secs(T0 + (i + 1) * INTERVAL);
        let report = json!({
            "time": humantime::format_rfc3339_seconds(end).to_string(),
            "interval_s": INTERVAL as f64,
            "node": "replay-test",
            "series": [{
                "family": "block.io.latency",
                "labels": {"device": "sdz", "dev": "8:0", "op": "write"},
                "unit": "ns",
                "count": 600,
                "sum_ns": sum,
                "histogram": {"scale": 3, "zero_count": 0, "offset": offset, "counts": counts},
            }],
        });
        text.push_str(&report.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// `nodepulse replay <args> <file>`.
fn replay(args: &[&str], file: &Path) -> std::process::Output {
    common::nodepulse()
        .arg("replay")
        .args(args)
        .arg(file)
        .output()
        .unwrap()
}

/// `nodepulse replay --format json <recording>`, which must succeed: its alarm events, one
/// per line, and what it wrote to stderr.
fn replay_alarms(rec: &Path) -> (Vec<Value>, String) {
    let out = replay(&["--format", "json"], rec);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (events, stderr)
}

#[test]
fn recording_with_a_step_yields_the_alarm_at_the_step() {
    one_subject_at_a_time!();
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec.jsonl");
    write_recording(&rec);
    let (alarms, stderr) = replay_alarms(&rec);
    let opened: Vec<&Value> = alarms.iter().filter(|a| a["state"] == "open").collect();
    assert_eq!(opened.len(), 1, "{alarms:#?}");
    let alarm = opened[0];
    assert_eq!(alarm["labels"]["device"], "sdz");
    // Dated from the window holding the step (3 intervals per window), give or take
    // the window that straddles it.
    let step_s = T0 + STEP_AT * INTERVAL;
    let started_s = alarm["start_unix_nano"].as_u64().unwrap() / 1_000_000_000;
    assert!(
        started_s + 3 * INTERVAL >= step_s && started_s <= step_s + 3 * INTERVAL,
        "started {started_s}, step at {step_s}: {alarm:#}"
    );
    let factor = alarm["factor"].as_f64().unwrap();
    assert!((1.6..2.5).contains(&factor), "{alarm:#}");
    // Opened within a few windows of the step.
    let ongoing_before = alarms.iter().filter(|a| a["state"] == "ongoing").count();
    assert!(ongoing_before > 10, "stays open while the step lasts");
    assert!(stderr.contains("1 alarm(s) opened, 0 resolved"), "{stderr}");
}

#[test]
fn csv_gets_a_score_per_row_and_bad_input_names_the_line() {
    one_subject_at_a_time!();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("history.csv");
    let mut rng = Rng::new(9);
    let mut text = String::from("timestamp,value\n");
    for i in 0..3000 {
        let v = 1.8 * (0.3 * rng.normal()).exp() * if i >= 2400 { 3.0 } else { 1.0 };
        text.push_str(&format!(
            "2026-11-27T00:{:02}:{:02}Z,{v}\n",
            (i / 60) % 60,
            i % 60
        ));
    }
    std::fs::write(&csv, &text).unwrap();
    let out = replay(&[], &csv);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = stdout.lines().collect();
    assert_eq!(rows[0], "timestamp,value,score");
    assert_eq!(rows.len(), 3001);
    let score = |row: &str| row.rsplit(',').next().unwrap().parse::<f64>().unwrap();
    assert!(rows[1..].iter().all(|r| (0.0..=1.0).contains(&score(r))));
    // The scalar detector: the step stands out from the noise before it, at its start.
    let max = |rows: &[&str]| rows.iter().map(|r| score(r)).fold(0.0, f64::max);
    let before = max(&rows[1000..2401]);
    let at = max(&rows[2401..2411]);
    assert!(at >= 0.35 && at > before, "step {at}, before it {before}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("alarm(s) opened") && !stderr.contains(" 0 alarm(s) opened"),
        "{stderr}"
    );

    std::fs::write(&csv, "timestamp,value\n1,2\n2,fast\n").unwrap();
    let out = replay(&[], &csv);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("history.csv line 3"), "{stderr}");
}

#[test]
fn a_real_recording_replays() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("live.jsonl");
    let out = common::nodepulse()
        .args(["record", "--interval", "1s", "--reports", "3", "--output"])
        .arg(&rec)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "the recording goes to the file only");
    let text = std::fs::read_to_string(&rec).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(v["series"].is_array() && v["time"].is_string());
    }
    let out = replay(&[], &rec);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0 alarm(s) opened"), "{stderr}");
}

/// `nodepulse replay file.csv | head -1`: the reader goes away after one line; the
/// replay ends quietly with 0 (it panicked with "failed printing to stdout: Broken
/// pipe", exit 101). Same for `check --config-only` and the recording's alarm lines.
#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("long.csv");
    // Far more than a pipe holds (64 KiB), so the writer meets the closed pipe.
    let text: String = (0..50_000)
        .map(|i| format!("{i},{}\n", 1 + i % 7))
        .collect();
    std::fs::write(&csv, text).unwrap();
    let mut child = common::nodepulse()
        .args(["replay", csv.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // Dropping the reader closes the pipe, as `head -1` does.
    assert_eq!(first, "timestamp,value,score\n");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Through a real shell pipe too, with pipefail so the replay's status shows.
    let out = std::process::Command::new("bash")
        .args([
            "-o",
            "pipefail",
            "-c",
            &format!(
                "{} replay {} | head -1",
                env!("CARGO_BIN_EXE_nodepulse"),
                csv.display()
            ),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "timestamp,value,score\n"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A slice of a real hour recorded here by `cargo xtask soak record` at a 10 s interval
/// (tests/data/soak-squeeze-10s.jsonl, only the squeezed cgroup's run-queue series kept):
/// 38 steady minutes, then the cgroup squeezed to 2 % of a CPU from 13:02:42 to 13:04:42
/// (its run-queue p99 ×8 as measured by the harness), then 5 minutes of recovery. The
/// detector must stay quiet on the steady part, open one alarm for the squeeze while it
/// lasts, and resolve it after.
#[test]
fn a_real_recording_of_a_cpu_squeeze_yields_one_alarm_for_it() {
    one_subject_at_a_time!();
    let rec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/soak-squeeze-10s.jsonl");
    let (events, _) = replay_alarms(&rec);
    let opened: Vec<&Value> = events.iter().filter(|a| a["state"] == "open").collect();
    assert_eq!(opened.len(), 1, "one alarm, for the squeeze: {events:#?}");
    let alarm = opened[0];
    assert_eq!(alarm["labels"]["cgroup"], "/npsoak-squeeze", "{alarm:#}");
    // RFC 3339 UTC times of one day compare as text.
    let started = alarm["started"].as_str().unwrap();
    assert!(
        ("2026-12-06T13:01:42Z"..="2026-12-06T13:04:42Z").contains(&started),
        "dated from the window holding the squeeze's start (13:02:42): {alarm:#}"
    );
    assert!(alarm["factor"].as_f64().unwrap() >= 2.0, "{alarm:#}");
    let resolved: Vec<&Value> = events
        .iter()
        .filter(|a| a["state"] == "resolved" && a["id"] == alarm["id"])
        .collect();
    assert_eq!(
        resolved.len(),
        1,
        "resolved once the squeeze ended: {events:#?}"
    );
    let ended = resolved[0]["ended"].as_str().unwrap();
    assert!(ended > "2026-12-06T13:04:42Z", "{:#}", resolved[0]);
}
