//! A CPU storm replayed at 1 s and at 10 s: the same stream of samples recorded by two
//! agents, each a recording in the format `nodepulse record` writes, read back through
//! the replay. Modelled on the held-out soak's storm (other engineers' tests resuming
//! on the shared VM): the node's run queue, a steady job's cgroup run queue, its loop
//! device (served by kernel threads) and a tmpfs-backed loop device all slow for three
//! minutes, while the node's disk does not move. Both agents must learn for the same
//! time, open one incident for it with the same series, and stay quiet otherwise.

use std::collections::BTreeMap;

use serde_json::json;

use super::{AlarmState, DetectConfig, eval::Rng, replay::replay_timed_with};
use crate::aggregate::ExpHistogram;

const T0: u64 = 1_790_000_000; // unix seconds of the recordings' start
const STORM_FROM: u64 = 1_500; // seconds after T0
const STORM_TO: u64 = 1_680;
const END: u64 = 2_100;

/// One generated series: a log-normal latency around `median_us`, `per_s` samples a
/// second, slowed `storm` times during the storm.
struct Shape {
    family: &'static str,
    labels: &'static [(&'static str, &'static str)],
    median_us: f64,
    per_s: u64,
    storm: f64,
}

const SHAPES: [Shape; 6] = [
    Shape {
        family: "sched.runqueue.latency",
        labels: &[],
        median_us: 40.0,
        per_s: 600,
        storm: 12.0,
    },
    Shape {
        family: "cgroup.runqueue.latency",
        labels: &[("cgroup", "/npsoak-fio-b")],
        median_us: 45.0,
        per_s: 300,
        storm: 8.0,
    },
    Shape {
        family: "block.io.device.latency",
        labels: &[("device", "loop1"), ("op", "read")],
        median_us: 180.0,
        per_s: 400,
        storm: 6.0,
    },
    Shape {
        family: "block.io.latency",
        labels: &[("device", "loop1"), ("op", "read")],
        median_us: 190.0,
        per_s: 400,
        storm: 6.0,
    },
    Shape {
        family: "block.io.latency",
        labels: &[("device", "loop4"), ("op", "read")],
        median_us: 20.0,
        per_s: 250,
        storm: 12.0,
    },
    // The node's disk: unmoved by a CPU storm.
    Shape {
        family: "block.io.latency",
        labels: &[("device", "vda"), ("op", "write")],
        median_us: 400.0,
        per_s: 60,
        storm: 1.0,
    },
];

/// Every second's histogram per series: the samples both agents see.
fn seconds() -> Vec<Vec<ExpHistogram>> {
    let mut rng = Rng::new(7);
    // A real node's windows scatter more than independent samples would: a level that
    // wanders from one 10 s stretch to the next.
    let mut level = vec![1.0; SHAPES.len()];
    (0..END)
        .map(|s| {
            SHAPES
                .iter()
                .enumerate()
                .map(|(i, shape)| {
                    if s % 10 == 0 {
                        level[i] = (0.15 * rng.normal()).exp();
                    }
                    let slow = if (STORM_FROM..STORM_TO).contains(&s) {
                        shape.storm
                    } else {
                        1.0
                    };
                    let mut buckets: BTreeMap<i32, u64> = BTreeMap::new();
                    let mut sum = 0;
                    for _ in 0..shape.per_s {
                        let v =
                            (shape.median_us * 1e3 * level[i] * slow * (0.6 * rng.normal()).exp())
                                as u64;
                        sum += v;
                        *buckets
                            .entry(agent_common::hist::bucket_index(v))
                            .or_default() += 1;
                    }
                    let mut h = ExpHistogram::from_buckets(0, 0, buckets);
                    h.sum = sum;
                    h
                })
                .collect()
        })
        .collect()
}

/// A recording at `interval_s`, its report times jittered by up to ±0.1 s as a real
/// agent's are (at 10 s, three intervals then often fall just short of 30 s).
fn recording(seconds: &[Vec<ExpHistogram>], interval_s: u64) -> String {
    let mut rng = Rng::new(interval_s);
    let mut text = String::new();
    let mut previous_end = T0 as f64;
    for first in (0..END).step_by(interval_s as usize) {
        let mut sums: Vec<ExpHistogram> = vec![ExpHistogram::default(); SHAPES.len()];
        for second in &seconds[first as usize..(first + interval_s) as usize] {
            for (sum, h) in sums.iter_mut().zip(second) {
                sum.merge(h);
            }
        }
        let jitter = if interval_s > 1 {
            0.1 * (2.0 * rng.uniform() - 1.0)
        } else {
            0.0
        };
        let end = (T0 + first + interval_s) as f64 + jitter;
        let series: Vec<_> = SHAPES
            .iter()
            .zip(&sums)
            .map(|(shape, h)| {
                let labels: BTreeMap<&str, &str> = shape.labels.iter().copied().collect();
                json!({
                    "family": shape.family,
                    "labels": labels,
                    "unit": "ns",
                    "count": h.count(),
                    "sum_ns": h.sum,
                    "histogram": {
                        "scale": 3,
                        "zero_count": h.zero_count,
                        "offset": h.offset,
                        "counts": h.counts,
                    },
                })
            })
            .collect();
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(end);
        let report = json!({
            "time": humantime::format_rfc3339_millis(time).to_string(),
            "interval_s": end - previous_end,
            "node": "storm",
            "series": series,
        });
        previous_end = end;
        text.push_str(&report.to_string());
        text.push('\n');
    }
    text
}

/// What one agent's replay made of the storm.
#[derive(Debug)]
struct Seen {
    /// Unix seconds of the first judged report.
    judged_from: f64,
    /// Per incident opened: when (unix s), its headline series and every series that
    /// was in it at any time.
    incidents: Vec<(f64, String, Vec<String>)>,
}

fn replayed(text: &str) -> Seen {
    let config = DetectConfig::default();
    let replayed = replay_timed_with("storm", text.as_bytes(), &config, |_| {}).unwrap();
    let mut incidents: Vec<(f64, String, Vec<String>)> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for (at, alarm) in &replayed.alarms {
        let index = match ids.iter().position(|id| *id == alarm.id) {
            Some(index) => index,
            None => {
                assert_eq!(alarm.state, AlarmState::Open, "{alarm:#?}");
                ids.push(alarm.id.clone());
                incidents.push((*at as f64 / 1e9, alarm.series.clone(), Vec::new()));
                ids.len() - 1
            }
        };
        let members = &mut incidents[index].2;
        for r in &alarm.related {
            if !members.contains(&r.series) {
                members.push(r.series.clone());
            }
        }
    }
    for (_, _, members) in &mut incidents {
        members.sort();
    }
    Seen {
        judged_from: replayed.judged_from.expect("judged") as f64 / 1e9,
        incidents,
    }
}

#[test]
fn a_cpu_storm_is_one_incident_with_the_same_series_at_1s_and_at_10s() {
    let seconds = seconds();
    let one = replayed(&recording(&seconds, 1));
    let ten = replayed(&recording(&seconds, 10));
    // Learning is a time: both agents judge from 20 minutes in (the first window
    // closing after it: the 10 s agent's within one window of the 1 s agent's).
    let learned = (T0 + 20 * 60) as f64;
    for seen in [&one, &ten] {
        assert!(
            (learned..learned + 41.0).contains(&seen.judged_from),
            "judged from {} s in: {seen:?}",
            seen.judged_from - T0 as f64
        );
    }
    assert!(
        (one.judged_from - ten.judged_from).abs() <= 31.0,
        "{one:?} {ten:?}"
    );
    for seen in [&one, &ten] {
        assert_eq!(
            seen.incidents.len(),
            1,
            "one incident, for the storm: {seen:#?}"
        );
        let (at, _, members) = &seen.incidents[0];
        // Within three 30 s windows (and the 10 s agent's report jitter).
        let delay = at - (T0 + STORM_FROM) as f64;
        assert!(
            (0.0..=91.0).contains(&delay),
            "opened {delay} s in: {seen:?}"
        );
        assert!(
            !members.iter().any(|m| m.contains("vda")),
            "the disk did not move: {members:?}"
        );
        assert!(members.len() >= 3, "{members:?}");
    }
    assert_eq!(one.incidents[0].2, ten.incidents[0].2, "the same series");
}
