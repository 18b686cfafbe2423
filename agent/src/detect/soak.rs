//! Scoring the detector on real recordings (`cargo xtask soak`): a recording of a node
//! running steady workloads, with a log of the regressions injected into it, replayed
//! through the detector. Alarms that open away from any injection are false alarms
//! (per node-day); an injection is detected when an alarm on its target opens within
//! the allowed delay after it starts.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Alarm, AlarmState, replay::Report};
use crate::aggregate::ExpHistogram;

/// One injected regression, as the soak harness logs it (a JSON line).
#[derive(Clone, Debug, Deserialize)]
pub struct Injection {
    pub kind: String,
    /// RFC 3339.
    pub start: String,
    pub end: String,
    /// The device it slows (`/dev/loop5` or `loop5`), if any.
    #[serde(default)]
    pub device: String,
    /// The cgroup it slows (`npsoak-inj` or `/npsoak-inj`), if any.
    #[serde(default)]
    pub cgroup: String,
}

impl Injection {
    fn span(&self) -> Option<(u64, u64)> {
        let t = |s: &str| {
            humantime::parse_rfc3339(s)
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_nanos() as u64)
        };
        Some((t(&self.start)?, t(&self.end)?))
    }

    /// Whether a series (family and labels) is one the injection targets. A CPU squeeze
    /// targets its cgroup's run-queue latency; an I/O injection its device's and its
    /// cgroup's I/O latency.
    fn targets(&self, family: &str, labels: &BTreeMap<String, String>) -> bool {
        let device = self.device.trim_start_matches("/dev/");
        let cgroup = self.cgroup.trim_start_matches('/');
        let label = |k: &str| labels.get(k).map(String::as_str);
        let on_device = !device.is_empty() && label("device") == Some(device);
        let on_cgroup = !cgroup.is_empty()
            && label("cgroup").map(|c| c.trim_start_matches('/')) == Some(cgroup);
        if self.kind == "squeeze" {
            return on_cgroup && family.contains("runqueue");
        }
        on_device || (on_cgroup && family.starts_with("block."))
    }
}

/// What an injection did to the series it targets, measured on the recording: the
/// p99 of each targeted series over the injection against its p99 over the minutes
/// before it. An injection is only a "2× p99 regression" if some series it targets
/// moved that much: a `blkio.throttle` limit delays bios before they become requests,
/// and request latency (what the probes measure) does not see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Effect {
    /// The targeted series whose p99 moved most.
    pub series: String,
    pub before_p99_ns: f64,
    pub during_p99_ns: f64,
}

impl Effect {
    pub fn ratio(&self) -> f64 {
        self.during_p99_ns / self.before_p99_ns.max(1.0)
    }
}

/// Samples a series needs before and during an injection for its p99 to count (a p99
/// of fewer than a couple of hundred samples is one or two samples).
const EFFECT_MIN_SAMPLES: u64 = 200;

/// Gathers, report by report, each injection's targeted series before and during it.
pub struct EffectMeter {
    spans: Vec<Option<(u64, u64)>>,
    targets: Vec<Injection>,
    before_ns: u64,
    /// Per injection: series name → (before, during).
    seen: Vec<BTreeMap<String, (ExpHistogram, ExpHistogram)>>,
}

impl EffectMeter {
    /// `before_s`: how much recording before an injection is its reference.
    pub fn new(injections: &[Injection], before_s: f64) -> Self {
        Self {
            spans: injections.iter().map(Injection::span).collect(),
            targets: injections.to_vec(),
            before_ns: (before_s * 1e9) as u64,
            seen: vec![BTreeMap::new(); injections.len()],
        }
    }

    /// Notes one report (each interval counts where it ends).
    pub fn add(&mut self, report: &Report) {
        let t = report.time;
        for ((span, injection), seen) in self.spans.iter().zip(&self.targets).zip(&mut self.seen) {
            let Some((s, e)) = *span else { continue };
            let during = t > s && t <= e;
            let before = t <= s && t + self.before_ns > s;
            if !(during || before) {
                continue;
            }
            for (family, labels, h) in &report.series {
                // Latencies only: what the detector judges (not queue depths or sizes).
                if !family.contains("latency") || !injection.targets(family, labels) {
                    continue;
                }
                let entry = seen.entry(super::series_name(family, labels)).or_default();
                if during { &mut entry.1 } else { &mut entry.0 }.merge(h);
            }
        }
    }

    /// Per injection, its largest p99 shift (None: no targeted series had enough
    /// samples both before and during it).
    pub fn effects(&self) -> Vec<Option<Effect>> {
        self.seen
            .iter()
            .map(|seen| {
                seen.iter()
                    .filter(|(_, (b, d))| {
                        b.count() >= EFFECT_MIN_SAMPLES && d.count() >= EFFECT_MIN_SAMPLES
                    })
                    .map(|(name, (b, d))| Effect {
                        series: name.clone(),
                        before_p99_ns: b.quantile(0.99).unwrap_or(0.0),
                        during_p99_ns: d.quantile(0.99).unwrap_or(0.0),
                    })
                    .max_by(|a, b| a.ratio().total_cmp(&b.ratio()))
            })
            .collect()
    }
}

/// Reads the harness's injection log (one JSON object per line).
pub fn read_injections(text: &str) -> Result<Vec<Injection>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("injection log line {}: {e}", i + 1))
        })
        .collect()
}

/// An alarm that opened, or a series that joined an open incident: where and when.
#[derive(Clone, Debug)]
pub struct Opened {
    pub at: u64,
    pub id: String,
    pub summary: String,
    /// Whether the alarm itself opened (else a series joined it).
    pub new_alarm: bool,
    /// The series that appeared in the alarm at `at` (all of them when it opened).
    pub series: Vec<SeriesName>,
}

/// A series named by its family and labels.
pub type SeriesName = (String, BTreeMap<String, String>);

/// The alarms a replay opened, and each series joining an incident later, in order.
pub fn opened(events: &[(u64, Alarm)]) -> Vec<Opened> {
    let mut seen: BTreeMap<String, Vec<SeriesName>> = BTreeMap::new();
    let mut out = Vec::new();
    for (at, a) in events {
        if a.state == AlarmState::Resolved {
            seen.remove(&a.id);
            continue;
        }
        // Read through JSON, so that the same scoring works on detectors whose
        // alarms have no list of related series.
        let value = serde_json::to_value(a).unwrap_or_default();
        let mut series: Vec<SeriesName> = value["related"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                Some((
                    r["family"].as_str()?.to_owned(),
                    serde_json::from_value(r["labels"].clone()).ok()?,
                ))
            })
            .collect();
        series.push((a.family.clone(), a.labels.clone()));
        let known = seen.entry(a.id.clone()).or_default();
        series.retain(|s| !known.contains(s));
        series.dedup();
        if series.is_empty() {
            continue;
        }
        known.extend(series.iter().cloned());
        out.push(Opened {
            at: *at,
            id: a.id.clone(),
            summary: a.summary.clone(),
            new_alarm: a.state == AlarmState::Open,
            series,
        });
    }
    out
}

/// One alarm (an incident) over its life: when it opened, its headline, and every
/// series it held at any time.
#[derive(Clone, Debug)]
pub struct AlarmLife {
    pub at: u64,
    pub summary: String,
    pub series: Vec<SeriesName>,
}

/// The alarms of `opened` (series joining later added to their alarm's), in order.
pub fn lives(opened: &[Opened]) -> Vec<AlarmLife> {
    let mut out: Vec<AlarmLife> = Vec::new();
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for o in opened {
        if o.new_alarm {
            index.insert(&o.id, out.len());
            out.push(AlarmLife {
                at: o.at,
                summary: o.summary.clone(),
                series: o.series.clone(),
            });
        } else if let Some(&i) = index.get(o.id.as_str()) {
            out[i].series.extend(o.series.iter().cloned());
        }
    }
    out
}

/// Which alarms two replays of the same stretch of a node (two agents at different
/// intervals) raised alike: pairs (indices into `first` and `second`) that share a
/// series and opened within `within_ns` of each other, and the alarms of each with no
/// such counterpart.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Agreement {
    pub both: Vec<(usize, usize)>,
    pub only_first: Vec<usize>,
    pub only_second: Vec<usize>,
}

pub fn agreement(first: &[AlarmLife], second: &[AlarmLife], within_ns: u64) -> Agreement {
    let mut out = Agreement::default();
    let mut taken = vec![false; second.len()];
    for (i, a) in first.iter().enumerate() {
        let partner = second.iter().enumerate().position(|(j, b)| {
            !taken[j]
                && a.at.abs_diff(b.at) <= within_ns
                && a.series.iter().any(|s| b.series.contains(s))
        });
        match partner {
            Some(j) => {
                taken[j] = true;
                out.both.push((i, j));
            }
            None => out.only_first.push(i),
        }
    }
    out.only_second = (0..second.len()).filter(|&j| !taken[j]).collect();
    out
}

/// The score of one replay.
#[derive(Clone, Debug, Default)]
pub struct Score {
    /// Recorded time away from injections (and their settling time), in hours.
    pub steady_hours: f64,
    /// Alarms opened in that time.
    pub steady_alarms: Vec<Opened>,
    /// Per injection judged (its index in the log, its kind), the delay to the first
    /// alarm on its target (None: missed within the allowed delay).
    pub injected: Vec<(usize, String, Option<f64>)>,
    /// Alarms opened during injections on series they do not target.
    pub collateral: usize,
    /// Alarms opened during other known disturbances (and their settling time).
    pub disturbance_alarms: Vec<Opened>,
    /// Injections that started before judging began (while the detector learned):
    /// neither detected nor missed.
    pub while_learning: usize,
}

impl Score {
    pub fn alarms_per_day(&self) -> f64 {
        self.steady_alarms.len() as f64 / (self.steady_hours / 24.0).max(1e-9)
    }
}

/// Scores `opened` alarms over the judged part of a recording, `start..end` (unix ns:
/// from the first judged window, so that a longer learning period is not credited with
/// hours in which no alarm could open). `settle_s`
/// after each injection still belongs to it (the node recovers); an injection counts
/// as detected when an alarm on its target opens within `allowed_s` of its start.
/// `disturbances` are other known departures from the steady load (a build the
/// harness did not start): like injections they are not steady time, and their alarms
/// are counted apart, but nothing is expected of the detector there.
pub fn score(
    opened: &[Opened],
    injections: &[Injection],
    disturbances: &[Injection],
    (start, end): (u64, u64),
    settle_s: f64,
    allowed_s: f64,
) -> Score {
    let settle = (settle_s * 1e9) as u64;
    // Each disturbance of the steady load with its settling time, cut at `end`.
    let with_settling = |list: &[Injection]| -> Vec<(u64, u64)> {
        list.iter()
            .filter_map(Injection::span)
            .filter(|&(s, _)| s < end)
            .map(|(s, e)| (s, e + settle))
            .collect()
    };
    let others = with_settling(disturbances);
    let mut spans = with_settling(injections);
    spans.extend(&others);
    spans.sort_unstable();
    let within = |spans: &[(u64, u64)], t: u64| spans.iter().any(|&(s, e)| t >= s && t < e);
    // The judged time they cover, overlaps counted once.
    let mut disturbed_ns = 0;
    let mut covered_to = start;
    for &(s, e) in &spans {
        let (s, e) = (s.max(covered_to), e.min(end));
        if e > s {
            disturbed_ns += e - s;
            covered_to = e;
        }
    }
    let mut out = Score {
        steady_hours: end.saturating_sub(start).saturating_sub(disturbed_ns) as f64 / 3.6e12,
        ..Score::default()
    };
    for o in opened.iter().filter(|o| o.new_alarm && o.at >= start) {
        if !within(&spans, o.at) {
            out.steady_alarms.push(o.clone());
        } else if within(&others, o.at) {
            out.disturbance_alarms.push(o.clone());
        }
    }
    for (index, injection) in injections.iter().enumerate() {
        let Some((s, e)) = injection.span() else {
            continue;
        };
        if s >= end {
            continue;
        }
        if s < start {
            out.while_learning += 1;
            continue;
        }
        let on_target = |o: &Opened| o.series.iter().any(|(f, l)| injection.targets(f, l));
        let first = opened
            .iter()
            .filter(|o| o.at >= s && on_target(o))
            .map(|o| (o.at - s) as f64 / 1e9)
            .find(|&d| d <= allowed_s);
        out.injected.push((index, injection.kind.clone(), first));
        out.collateral += opened
            .iter()
            .filter(|o| o.new_alarm && o.at >= s && o.at < e + settle && !on_target(o))
            .count();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_800_000_000 * S;

    fn at(t: u64, family: &str, labels: &[(&str, &str)]) -> Opened {
        Opened {
            at: t,
            id: format!("{t}"),
            summary: String::new(),
            new_alarm: true,
            series: vec![(
                family.into(),
                labels
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
            )],
        }
    }

    fn injection(kind: &str, from_s: u64, to_s: u64) -> Injection {
        let t = |s: u64| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(T0 / S + s),
            )
            .to_string()
        };
        Injection {
            kind: kind.into(),
            start: t(from_s),
            end: t(to_s),
            device: "/dev/loop5".into(),
            cgroup: "npsoak-inj".into(),
        }
    }

    #[test]
    fn steady_alarms_detections_and_collateral() {
        let injections = [
            injection("reader", 3600, 3720),
            injection("squeeze", 7200, 7320),
        ];
        let opened = [
            // Steady time: a false alarm.
            at(T0 + 600 * S, "block.io.latency", &[("device", "loop1")]),
            // The reader on loop5, 50 s in: detected.
            at(T0 + 3650 * S, "block.io.latency", &[("device", "loop5")]),
            // During it, elsewhere: collateral, not a steady alarm.
            at(T0 + 3700 * S, "sched.runqueue.latency", &[]),
            // The squeeze's cgroup, but only 200 s in: too late.
            at(
                T0 + 7400 * S,
                "cgroup.runqueue.latency",
                &[("cgroup", "/npsoak-inj")],
            ),
        ];
        let s = score(
            &opened,
            &injections,
            &[],
            (T0, T0 + 4 * 3600 * S),
            300.0,
            90.0,
        );
        assert_eq!(s.steady_alarms.len(), 1);
        assert_eq!(s.injected[0], (0, "reader".into(), Some(50.0)));
        assert_eq!(s.injected[1], (1, "squeeze".into(), None));
        assert_eq!(s.collateral, 1);
        // 4 h minus two injections of 2 min + 5 min settling.
        assert!((s.steady_hours - (4.0 - 2.0 * 420.0 / 3600.0)).abs() < 1e-9);
        assert!((s.alarms_per_day() - 24.0 / s.steady_hours).abs() < 1e-9);
    }

    #[test]
    fn only_judged_time_counts() {
        let injections = [
            injection("reader", 3600, 3720),
            injection("squeeze", 7200, 7320),
        ];
        let opened = [
            at(T0 + 3800 * S, "block.io.latency", &[("device", "loop1")]),
            at(T0 + 5000 * S, "block.io.latency", &[("device", "loop1")]),
        ];
        // Judged from 3650 s: the reader began while learning, its settling time
        // (until 4020 s) is still disturbed.
        let start = T0 + 3650 * S;
        let s = score(
            &opened,
            &injections,
            &[],
            (start, T0 + 4 * 3600 * S),
            300.0,
            90.0,
        );
        assert_eq!(s.while_learning, 1);
        assert_eq!(s.injected, vec![(1, "squeeze".into(), None)]);
        assert_eq!(s.steady_alarms.len(), 1);
        let hours = (4.0 * 3600.0 - 3650.0 - (4020.0 - 3650.0) - 420.0) / 3600.0;
        assert!((s.steady_hours - hours).abs() < 1e-9, "{}", s.steady_hours);
    }

    #[test]
    fn a_disturbance_is_not_steady_time_and_its_alarms_are_counted_apart() {
        let injections = [injection("reader", 3600, 3720)];
        // A build from 3650 s to 4200 s, overlapping the reader's settling time.
        let build = [injection("build", 3650, 4200)];
        let opened = [
            at(T0 + 1000 * S, "block.io.latency", &[("device", "loop1")]),
            at(T0 + 4300 * S, "block.io.latency", &[("device", "loop4")]),
            at(T0 + 5000 * S, "block.io.latency", &[("device", "loop1")]),
        ];
        let s = score(
            &opened,
            &injections,
            &build,
            (T0, T0 + 2 * 3600 * S),
            300.0,
            90.0,
        );
        assert_eq!(s.steady_alarms.len(), 2);
        assert_eq!(
            s.disturbance_alarms.len(),
            1,
            "4300 s: within the build's settling"
        );
        // Two hours minus 3600–4500 s (the reader, the build and their settling, once).
        let hours = (2.0 * 3600.0 - 900.0) / 3600.0;
        assert!((s.steady_hours - hours).abs() < 1e-9, "{}", s.steady_hours);
        assert_eq!(s.injected, vec![(0, "reader".into(), None)]);
    }

    #[test]
    fn effects_are_the_targeted_latencies_p99_before_and_during() {
        let injections = [
            injection("reader", 3600, 3720),
            injection("writer", 7200, 7320),
        ];
        let mut meter = EffectMeter::new(&injections, 300.0);
        let labels = |device: &str| BTreeMap::from([("device".to_owned(), device.to_owned())]);
        for t in (3000..=3800).step_by(10) {
            let during = t > 3600 && t <= 3720;
            // Its device's latency: 1 % of 300 samples 8 buckets (2×) up while injected.
            let slow = if during { 105 } else { 0 };
            let latency = ExpHistogram::from_buckets(0, 0, [(100, 300 - slow), (108, slow)]);
            // Not what the detector judges, or not targeted: ignored however they move.
            let depth = ExpHistogram::from_buckets(0, 0, [(if during { 40 } else { 10 }, 300)]);
            let other = ExpHistogram::from_buckets(0, 0, [(if during { 130 } else { 100 }, 300)]);
            meter.add(&Report {
                time: T0 + t * S,
                interval_ns: 10 * S,
                node: "n".into(),
                series: vec![
                    ("block.io.latency".into(), labels("loop5"), latency),
                    ("block.io.queue_depth".into(), labels("loop5"), depth),
                    ("block.io.latency".into(), labels("loop1"), other),
                ],
                ..Report::default()
            });
        }
        let effects = meter.effects();
        let reader = effects[0].as_ref().expect("measured");
        assert_eq!(reader.series, "block.io.latency{device=loop5}");
        assert!((reader.ratio() - 2.0).abs() < 0.2, "{reader:?}");
        // Nothing recorded around the second one.
        assert_eq!(effects[1], None);
    }

    #[test]
    fn alarms_of_two_intervals_agree_by_series_and_time() {
        let loop1 = |t| at(T0 + t * S, "block.io.latency", &[("device", "loop1")]);
        let run = |t| at(T0 + t * S, "sched.runqueue.latency", &[]);
        // The 1 s agent: loop1 at 100 s, joined by the run queue (one incident), and
        // the run queue alone at 900 s.
        let mut joined = run(130);
        joined.id = format!("{}", T0 + 100 * S);
        joined.new_alarm = false;
        let one = lives(&[loop1(100), joined, run(900)]);
        assert_eq!(one.len(), 2);
        assert_eq!(one[0].series.len(), 2);
        // The 10 s agent: the run queue at 150 s (the same incident, headed otherwise),
        // loop1 at 2000 s (no counterpart in time).
        let ten = lives(&[run(150), loop1(2000)]);
        let a = agreement(&one, &ten, 90 * S);
        assert_eq!(a.both, vec![(0, 0)]);
        assert_eq!(a.only_first, vec![1]);
        assert_eq!(a.only_second, vec![1]);
    }

    #[test]
    fn injection_log_errors_name_the_line() {
        let e = read_injections("{\"kind\":\"reader\",\"start\":\"a\",\"end\":\"b\"}\nnope\n")
            .unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }
}
