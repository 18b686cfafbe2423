use super::*;
use crate::detect::eval::Rng;

/// A noisy daily cycle at 5-minute points (288 a day).
fn daily(rng: &mut Rng, i: usize) -> f64 {
    let phase = (i % 288) as f64 / 288.0 * std::f64::consts::TAU;
    100.0 + 40.0 * phase.sin() + 3.0 * rng.normal()
}

fn run(values: impl Iterator<Item = f64>, c: &ScalarConfig) -> Vec<Point> {
    let mut d = ScalarDetector::default();
    values
        .enumerate()
        .map(|(i, v)| d.observe(v, Some(1.7e9 + 300.0 * i as f64), c))
        .collect()
}

#[test]
fn scores_are_in_range_and_zero_while_learning() {
    let c = ScalarConfig::default();
    let mut rng = Rng::new(1);
    let points = run((0..3000).map(|i| daily(&mut rng, i)), &c);
    assert!(points.iter().all(|p| (0.0..=1.0).contains(&p.score)));
    assert!(
        points[..c.learn_points as usize]
            .iter()
            .all(|p| p.score == 0.0)
    );
}

#[test]
fn a_daily_cycle_is_learned_and_a_spike_is_not_part_of_it() {
    let c = ScalarConfig::default();
    let mut rng = Rng::new(2);
    let mut values: Vec<f64> = (0..288 * 8).map(|i| daily(&mut rng, i)).collect();
    let spike = 288 * 7 + 100;
    values[spike] += 80.0;
    let points = run(values.into_iter(), &c);
    // Days 4..7: the cycle is known; nothing scores near the spike.
    let quiet = points[288 * 4..spike]
        .iter()
        .map(|p| p.score)
        .fold(0.0, f64::max);
    let at_spike = points[spike..spike + 5]
        .iter()
        .map(|p| p.score)
        .fold(0.0, f64::max);
    assert!(at_spike >= c.fire, "spike scored {at_spike}");
    assert!(
        quiet < at_spike * 0.6,
        "cycle scored {quiet}, spike {at_spike}"
    );
    // The profile predicts the cycle: the expectation follows the sine.
    let p = points[288 * 6 + 72]; // a quarter day in: the peak
    assert!((p.expected - 140.0).abs() < 12.0, "{p:?}");
}

#[test]
fn a_level_shift_that_persists_is_learned() {
    let c = ScalarConfig::default();
    let mut rng = Rng::new(3);
    let step = 2000;
    let values = (0..5000).map(|i| {
        let base = if i < step { 50.0 } else { 90.0 };
        base + 2.0 * rng.normal()
    });
    let points = run(values, &c);
    let at_step = points[step..step + 10]
        .iter()
        .map(|p| p.undamped)
        .fold(0.0, f64::max);
    assert!(at_step >= 0.5, "step scored {at_step}");
    let later = points[step + 800..]
        .iter()
        .map(|p| p.undamped)
        .fold(0.0, f64::max);
    assert!(later < 0.3, "still anomalous long after the step: {later}");
    assert!(
        (points[4999].expected - 90.0).abs() < 3.0,
        "{:?}",
        points[4999]
    );
}

#[test]
fn one_anomaly_is_reported_once() {
    let c = ScalarConfig::default();
    let mut rng = Rng::new(4);
    let values = (0..3000).map(|i| {
        let bump = if (2000..2040).contains(&i) { 30.0 } else { 0.0 };
        50.0 + 2.0 * rng.normal() + bump
    });
    let points = run(values, &c);
    let fired: Vec<usize> = (0..3000).filter(|&i| points[i].score >= c.fire).collect();
    assert!(
        !fired.is_empty() && fired.iter().all(|&i| (2000..2010).contains(&i)),
        "{fired:?}"
    );
}

#[test]
fn memory_is_bounded() {
    let c = ScalarConfig {
        context_capacity: 100,
        ..ScalarConfig::default()
    };
    let mut rng = Rng::new(5);
    let mut d = ScalarDetector::default();
    for i in 0..20_000 {
        d.observe(rng.uniform() * 1e6 + i as f64, None, &c);
    }
    let json = serde_json::to_string(&d).unwrap();
    assert!(json.len() < 20_000, "{} bytes", json.len());
}

/// Saved (as the state file holds it, through text) and restored, a detector scores
/// every later point as the one that never stopped; what is saved stays small.
#[test]
fn a_restored_detector_scores_as_if_it_had_never_stopped() {
    let c = ScalarConfig::default();
    let mut rng = Rng::new(7);
    let values: Vec<f64> = (0..288 * 6).map(|i| daily(&mut rng, i)).collect();
    let time = |i: usize| Some(1.7e9 + 300.0 * i as f64);
    for stop in [3, 200, 288 * 5] {
        let mut kept = ScalarDetector::default();
        for (i, &v) in values[..stop].iter().enumerate() {
            kept.observe(v, time(i), &c);
        }
        let text = serde_json::to_string(&kept).unwrap();
        assert!(text.len() < 4_000, "{} bytes saved", text.len());
        let mut restored: ScalarDetector = serde_json::from_str(&text).unwrap();
        for (i, &v) in values.iter().enumerate().skip(stop) {
            let (a, b) = (
                kept.observe(v, time(i), &c),
                restored.observe(v, time(i), &c),
            );
            // JSON numbers read back within an ulp (serde_json's fast float parsing).
            let near = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(1.0);
            assert!(
                near(a.score, b.score) && near(a.expected, b.expected) && a.novelty == b.novelty,
                "point {i} after a stop at {stop}: {a:?} against {b:?}"
            );
            assert_eq!(kept.context.ring(), restored.context.ring());
        }
        assert!(!restored.learning(&c));
    }
}

#[test]
fn the_agent_watches_scalar_series_up_to_its_budget_and_alarms_on_a_step() {
    use crate::detect::{DetectConfig, Detector, ScalarInput};
    let config = DetectConfig {
        scalar: ScalarConfig {
            max_series: 2,
            ..ScalarConfig::default()
        },
        ..DetectConfig::default()
    };
    let mut d = Detector::new(config, "n");
    let mut rng = Rng::new(6);
    let mut opened = Vec::new();
    for i in 0..1500u64 {
        let iops = if i < 1000 { 500.0 } else { 1500.0 };
        let inputs = ["sda", "sdb", "sdc"].map(|dev| ScalarInput {
            family: "block.io.latency:rate".into(),
            labels: [("device".to_owned(), dev.to_owned())].into(),
            unit: "/s",
            value: iops * (1.0 + 0.02 * rng.normal()),
            rises_only: false,
        });
        let out = d.update_with_scalars(
            1_800_000_000_000_000_000 + i * 10_000_000_000,
            10_000_000_000,
            [],
            inputs,
        );
        assert_eq!(
            d.scalars_unwatched, 1,
            "the third series is over the budget"
        );
        opened.extend(
            out.alarms
                .into_iter()
                .filter(|a| a.state == crate::detect::AlarmState::Open),
        );
    }
    // Both watched devices stepped together: one incident, opened at the step (at the
    // end of the first 30 s point holding it).
    assert_eq!(opened.len(), 1, "{opened:#?}");
    let a = &opened[0];
    let step = 1_800_000_000_000_000_000 + 1000 * 10_000_000_000;
    assert!(
        (step..=step + 30_000_000_000).contains(&a.start_unix_nano),
        "{} against the step at {step}",
        a.start_unix_nano
    );
    assert!(a.summary.contains(":rate{device=sd"), "{}", a.summary);
    assert!(a.factor > 2.5 && a.factor < 3.5, "{a:?}");
}

/// Restored (or reloaded) under another number of time-of-day bins, a series goes on
/// with its level and a new profile instead of indexing the old one (which panicked).
#[test]
fn a_series_restored_under_other_season_bins_keeps_its_level() {
    let c = ScalarConfig::default();
    let mut rng = Rng::new(10);
    let mut d = ScalarDetector::default();
    for i in 0..1000 {
        d.observe(daily(&mut rng, i), Some(1.7e9 + 300.0 * i as f64), &c);
    }
    let text = serde_json::to_string(&d).unwrap();
    // Without a profile, the expectation is the level: the same under any new size.
    let expected = |bins: u32| {
        let other = ScalarConfig {
            season_bins: bins,
            ..c.clone()
        };
        let mut restored: ScalarDetector = serde_json::from_str(&text).unwrap();
        let p = restored.observe(100.0, Some(1.7e9 + 300.0 * 1000.0), &other);
        assert!(!restored.learning(&other));
        p.expected
    };
    let level = expected(0);
    assert!((40.0..160.0).contains(&level), "{level}");
    for bins in [96, 24] {
        assert_eq!(expected(bins), level, "{bins} bins");
    }
}

/// The agent judges 30 s points whatever its interval: agents at 1 s and at 10 s over
/// the same events open the same alarm at the same time. A counter's rise is an
/// anomaly, its fall is not. Its learning is listed while it lasts.
#[test]
fn counters_alarm_on_rises_only_and_alike_at_1_s_and_10_s() {
    use std::collections::BTreeMap;

    use crate::detect::{AlarmState, DetectConfig, Detector, ScalarInput};
    const S: u64 = 1_000_000_000;
    let base = 1_800_000_000u64;
    // Three hours of a retransmit rate, second by second: 10/s with the scatter of a
    // count, then `after` from the second hour on.
    let per_second = |after: f64| -> Vec<f64> {
        let mut rng = Rng::new(7);
        (1..=3 * 3600u64)
            .map(|t| {
                let level = if t <= 7200 { 10.0 } else { after };
                (level * (1.0 + rng.normal() / level.sqrt())).max(0.0)
            })
            .collect()
    };
    let run = |values: &[f64], interval_s: usize| {
        let mut d = Detector::new(DetectConfig::default(), "n");
        let mut opened = Vec::new();
        let mut learning_listed = false;
        for (i, chunk) in values.chunks(interval_s).enumerate() {
            let t = ((i + 1) * interval_s) as u64;
            let input = ScalarInput {
                family: "net.tcp.retransmits:rate".into(),
                labels: BTreeMap::new(),
                unit: "/s",
                value: chunk.iter().sum::<f64>() / chunk.len() as f64,
                rises_only: true,
            };
            let out = d.update_with_scalars((base + t) * S, interval_s as u64 * S, [], [input]);
            if t == 600 {
                learning_listed = d
                    .learning()
                    .any(|n| n.starts_with("net.tcp.retransmits:rate"))
                    && d.learning_until().is_some_and(|u| u > (base + t) * S);
            }
            opened.extend(
                (out.alarms.iter())
                    .filter(|a| a.state == AlarmState::Open)
                    .map(|a| a.start_unix_nano / S - base),
            );
        }
        assert!(learning_listed, "learning at 10 minutes, and listed");
        opened
    };
    let rise = per_second(30.0);
    let (one, ten) = (run(&rise, 1), run(&rise, 10));
    assert_eq!(one.len(), 1, "{one:?}");
    // Its anomaly starts within three points of the step (the surprise is a short
    // mean of the points' scores).
    assert!((7200..=7290).contains(&one[0]), "{one:?}");
    assert_eq!(one, ten, "the same alarm at 1 s and at 10 s");
    let fall = per_second(2.0);
    assert_eq!(
        run(&fall, 1),
        Vec::<u64>::new(),
        "fewer retransmits harm no one"
    );
    assert_eq!(run(&fall, 10), Vec::<u64>::new());
}
