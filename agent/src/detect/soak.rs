//! Scoring the detector on real recordings (`cargo xtask soak`): a recording of a node
//! running steady workloads, with a log of the regressions injected into it, replayed
//! through the detector. Alarms that open away from any injection are false alarms
//! (per node-day); an injection is detected when an alarm on its target opens within
//! the allowed delay after it starts.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Alarm, AlarmState};

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

/// The score of one replay.
#[derive(Clone, Debug, Default)]
pub struct Score {
    /// Recorded time away from injections (and their settling time), in hours.
    pub steady_hours: f64,
    /// Alarms opened in that time.
    pub steady_alarms: Vec<Opened>,
    /// Per injection: kind, and the delay to the first alarm on its target (None:
    /// missed within the allowed delay).
    pub injected: Vec<(String, Option<f64>)>,
    /// Alarms opened during injections on series they do not target.
    pub collateral: usize,
}

impl Score {
    pub fn alarms_per_day(&self) -> f64 {
        self.steady_alarms.len() as f64 / (self.steady_hours / 24.0).max(1e-9)
    }
}

/// Scores `opened` alarms over a recording spanning `start..end` (unix ns). `settle_s`
/// after each injection still belongs to it (the node recovers); an injection counts
/// as detected when an alarm on its target opens within `allowed_s` of its start.
pub fn score(
    opened: &[Opened],
    injections: &[Injection],
    (start, end): (u64, u64),
    settle_s: f64,
    allowed_s: f64,
) -> Score {
    let settle = (settle_s * 1e9) as u64;
    let spans: Vec<(u64, u64)> = injections
        .iter()
        .filter_map(Injection::span)
        .filter(|&(s, _)| s < end)
        .collect();
    let disturbed = |t: u64| spans.iter().any(|&(s, e)| t >= s && t < e + settle);
    let disturbed_ns: u64 = spans
        .iter()
        .map(|&(s, e)| (e + settle).min(end).saturating_sub(s.max(start)))
        .sum();
    let mut out = Score {
        steady_hours: end.saturating_sub(start).saturating_sub(disturbed_ns) as f64 / 3.6e12,
        ..Score::default()
    };
    for o in opened.iter().filter(|o| o.new_alarm) {
        if !disturbed(o.at) {
            out.steady_alarms.push(o.clone());
        }
    }
    for injection in injections {
        let Some((s, e)) = injection.span() else {
            continue;
        };
        if s >= end {
            continue;
        }
        let on_target = |o: &Opened| o.series.iter().any(|(f, l)| injection.targets(f, l));
        let first = opened
            .iter()
            .filter(|o| o.at >= s && on_target(o))
            .map(|o| (o.at - s) as f64 / 1e9)
            .find(|&d| d <= allowed_s);
        out.injected.push((injection.kind.clone(), first));
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
        let s = score(&opened, &injections, (T0, T0 + 4 * 3600 * S), 300.0, 90.0);
        assert_eq!(s.steady_alarms.len(), 1);
        assert_eq!(s.injected[0], ("reader".into(), Some(50.0)));
        assert_eq!(s.injected[1], ("squeeze".into(), None));
        assert_eq!(s.collateral, 1);
        // 4 h minus two injections of 2 min + 5 min settling.
        assert!((s.steady_hours - (4.0 - 2.0 * 420.0 / 3600.0)).abs() < 1e-9);
        assert!((s.alarms_per_day() - 24.0 / s.steady_hours).abs() < 1e-9);
    }

    #[test]
    fn injection_log_errors_name_the_line() {
        let e = read_injections("{\"kind\":\"reader\",\"start\":\"a\",\"end\":\"b\"}\nnope\n")
            .unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }
}
