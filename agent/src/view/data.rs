//! A recording boiled down to what the page draws: per series, a heatmap of shares
//! (time columns × log-scale buckets), p50/p99/p99.9 and the event rate per column;
//! alarms as spans with their figures and actions; probe states and the agent's cost.
//!
//! A column merges `per_column` consecutive reports (a day at 10 s with the default
//! 1,440 columns: 6 reports, one minute) so the page's size and drawing time depend on
//! the column budget and the series count, not on the recording's length. Quantiles
//! are computed here from the merged full-resolution (scale 3) histogram; only the
//! heatmap's cells are coarser (scale 1, base √2) and quantized to 1..=255.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    aggregate::ExpHistogram,
    detect::{
        Alarm, AlarmState,
        replay::{ReplayError, for_each_line, parse_time},
    },
};

/// Scale of the heatmap's rows: bucket i spans (2^(i/2), 2^((i+1)/2)].
pub const HEAT_SCALE: i32 = 1;
const DOWN: u32 = (agent_common::hist::SCALE - HEAT_SCALE) as u32;

/// The page's data, serialized into it as JSON.
#[derive(Debug, Serialize)]
pub struct View {
    pub node: String,
    pub source: String,
    pub reports: usize,
    /// Median report interval, seconds.
    pub interval_s: f64,
    /// Reports merged into one column.
    pub per_column: usize,
    pub heat_scale: i32,
    /// Unix ms of each column's start, and the end of the last column.
    pub times: Vec<f64>,
    pub end: f64,
    pub series: Vec<SeriesView>,
    pub alarms: Vec<AlarmView>,
    /// `recording` (what the agent raised while recording) or `replay` (the detector
    /// run over the recording by `nodepulse view --detect`).
    pub alarm_source: &'static str,
    pub probes: Vec<ProbeView>,
    pub agent: AgentView,
    /// Headroom and forecasts per resource, worst first (`view::capacity`); `None`
    /// without capacity signals.
    pub capacity: Option<super::capacity::CapacityView>,
}

#[derive(Debug, Serialize)]
pub struct SeriesView {
    pub family: String,
    pub labels: BTreeMap<String, String>,
    pub unit: String,
    /// Heat-scale index of the lowest row; `rows` rows.
    pub lo: i32,
    pub rows: u32,
    /// Column-major shares: `heat[col * rows + row]`, 0 for none, else ⌈share × 255⌉.
    pub heat: Vec<u8>,
    pub p50: Vec<Option<f32>>,
    pub p99: Vec<Option<f32>>,
    pub p999: Vec<Option<f32>>,
    /// Samples per second in each column.
    pub rate: Vec<f32>,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct AlarmView {
    pub id: String,
    pub series: String,
    /// Index into `series`, when the alarm's series is in the recording.
    pub index: Option<usize>,
    pub severity: String,
    pub state: String,
    pub start: f64,
    /// Unix ms of the resolution; `None` while still open at the end.
    pub end: Option<f64>,
    pub summary: String,
    pub quantile: String,
    pub peak_factor: f64,
    /// Quantiles (ns) of the baseline and of the worst regressed window.
    pub baseline: BTreeMap<String, f64>,
    pub current: BTreeMap<String, f64>,
    pub actions: Vec<ActionView>,
}

/// An action run, as the recording's `actions` carry it.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ActionView {
    pub time: String,
    pub alarm_id: String,
    pub rule: String,
    pub kind: String,
    pub target: String,
    pub outcome: String,
    pub exit_code: Option<i32>,
    pub http_status: Option<u16>,
    pub duration_ms: f64,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ProbeView {
    pub probe: String,
    /// In the last report.
    pub state: String,
    pub attach: Option<String>,
    pub errors: Vec<String>,
    /// Reports in which the probe was not up.
    pub reports_not_up: usize,
    pub programs: Vec<ProgramView>,
}

#[derive(Debug, Serialize)]
pub struct ProgramView {
    pub program: String,
    pub events: u64,
    pub run_time_ns: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct AgentView {
    /// Per column, the highest CPU % of its reports.
    pub cpu_percent: Vec<Option<f32>>,
    pub cpu_percent_mean: Option<f64>,
    pub rss_bytes_max: u64,
    pub dropped_total: BTreeMap<String, u64>,
}

/// The parts of a recorded report the page needs; everything but the series is
/// optional (trimmed recordings carry series only).
#[derive(Deserialize)]
struct Line {
    time: String,
    interval_s: f64,
    #[serde(default)]
    node: String,
    #[serde(default)]
    series: Vec<LineSeries>,
    #[serde(default)]
    alarms: Vec<Alarm>,
    #[serde(default)]
    actions: Vec<ActionView>,
    #[serde(default)]
    probes: Vec<LineProbe>,
    agent: Option<LineAgent>,
}

#[derive(Deserialize)]
struct LineSeries {
    family: String,
    labels: BTreeMap<String, String>,
    #[serde(default)]
    unit: String,
    #[serde(default)]
    sum: u64,
    histogram: LineHistogram,
}

#[derive(Deserialize)]
struct LineHistogram {
    zero_count: u64,
    offset: i32,
    counts: Vec<u64>,
}

#[derive(Deserialize)]
struct LineProbe {
    probe: String,
    state: String,
    attach: Option<String>,
    #[serde(default)]
    errors: Vec<String>,
    #[serde(default)]
    programs: Vec<LineProgram>,
}

#[derive(Deserialize)]
struct LineProgram {
    program: String,
    #[serde(default)]
    events: u64,
    #[serde(default)]
    run_time_ns: u64,
}

#[derive(Deserialize)]
struct LineAgent {
    #[serde(default)]
    cpu_percent: f64,
    #[serde(default)]
    rss_bytes: u64,
    #[serde(default)]
    dropped_total: BTreeMap<String, u64>,
}

/// Options of [`read`].
pub struct Options {
    pub max_columns: usize,
    /// Alarms from the detector run offline, replacing the recorded ones.
    pub replayed: Option<Vec<(u64, Alarm)>>,
}

/// One series while reading: the column being merged, and the columns done (only
/// their figures and coarse buckets, so memory follows the column budget).
struct Building {
    family: String,
    labels: BTreeMap<String, String>,
    unit: String,
    column: usize,
    merging: ExpHistogram,
    done: Vec<Column>,
}

struct Column {
    index: usize,
    count: u64,
    quantiles: [Option<f32>; 3],
    coarse: ExpHistogram,
}

impl Building {
    /// Adds one report's histogram, closing the column being merged when `column` is a
    /// later one.
    fn add(&mut self, column: usize, h: &ExpHistogram) {
        if column != self.column {
            self.close();
            self.column = column;
        }
        self.merging.merge(h);
    }

    fn close(&mut self) {
        let h = std::mem::take(&mut self.merging);
        if h.is_empty() {
            return;
        }
        // Durations are continuous; sizes and depths sit on bucket bounds (as in the
        // reports' own quantiles).
        let q = |q: f64| {
            if self.unit == "ns" {
                h.quantile(q)
            } else {
                h.quantile_bound(q)
            }
            .map(|v| v as f32)
        };
        self.done.push(Column {
            index: self.column,
            count: h.count(),
            quantiles: [q(0.5), q(0.99), q(0.999)],
            coarse: h.downscaled(DOWN),
        });
    }
}

/// Reads a recording of `reports` reports (counted beforehand, to size the columns)
/// into a [`View`].
pub fn read(
    path: &str,
    reader: impl std::io::BufRead,
    reports: usize,
    options: Options,
) -> Result<View, ReplayError> {
    let per_column = reports.div_ceil(options.max_columns.max(1)).max(1);
    let mut times: Vec<u64> = Vec::new();
    let mut intervals: Vec<f64> = Vec::new();
    let mut node = String::new();
    let mut series: Vec<Building> = Vec::new();
    let mut index: BTreeMap<(String, BTreeMap<String, String>), usize> = BTreeMap::new();
    let mut events: Vec<(u64, Alarm)> = Vec::new();
    let mut actions: Vec<ActionView> = Vec::new();
    let mut probes: BTreeMap<String, ProbeView> = BTreeMap::new();
    let mut agent_cpu: Vec<f64> = Vec::new();
    let mut agent = AgentView::default();

    for_each_line(path, reader, |line: Line, bad| {
        let end = parse_time(&line.time).map_err(bad)?;
        let start = end.saturating_sub((line.interval_s * 1e9) as u64);
        if let Some(&last) = times.last()
            && start + 1_000_000_000 < last
        {
            return Err(bad(format!(
                "this report starts before the previous one ({}); a recording's reports \
                 must be in time order (was it appended to by two agents?)",
                crate::util::time::rfc3339(last)
            )));
        }
        let r = times.len();
        times.push(start);
        intervals.push(line.interval_s);
        if node.is_empty() {
            node = line.node;
        }
        for s in line.series {
            let key = (s.family, s.labels);
            let i = *index.entry(key.clone()).or_insert_with(|| {
                series.push(Building {
                    family: key.0.clone(),
                    labels: key.1.clone(),
                    unit: if s.unit.is_empty() {
                        "ns".into()
                    } else {
                        s.unit.clone()
                    },
                    column: 0,
                    merging: ExpHistogram::default(),
                    done: Vec::new(),
                });
                series.len() - 1
            });
            series[i].add(
                r / per_column,
                &ExpHistogram {
                    sum: s.sum,
                    zero_count: s.histogram.zero_count,
                    offset: s.histogram.offset,
                    counts: s.histogram.counts,
                },
            );
        }
        events.extend(line.alarms.into_iter().map(|a| (end, a)));
        actions.extend(line.actions);
        for p in line.probes {
            let view = probes.entry(p.probe.clone()).or_insert_with(|| ProbeView {
                probe: p.probe.clone(),
                state: String::new(),
                attach: None,
                errors: Vec::new(),
                reports_not_up: 0,
                programs: Vec::new(),
            });
            if p.state != "up" {
                view.reports_not_up += 1;
            }
            view.state = p.state;
            view.attach = p.attach;
            view.errors = p.errors;
            for prog in p.programs {
                match view.programs.iter_mut().find(|v| v.program == prog.program) {
                    Some(v) => {
                        v.events += prog.events;
                        v.run_time_ns += prog.run_time_ns;
                    }
                    None => view.programs.push(ProgramView {
                        program: prog.program,
                        events: prog.events,
                        run_time_ns: prog.run_time_ns,
                    }),
                }
            }
        }
        match line.agent {
            Some(a) => {
                agent_cpu.push(a.cpu_percent);
                agent.rss_bytes_max = agent.rss_bytes_max.max(a.rss_bytes);
                agent.dropped_total = a.dropped_total;
            }
            None => agent_cpu.push(f64::NAN),
        }
        Ok(())
    })?;

    let reports = times.len();
    let end_ns = times.last().copied().unwrap_or(0)
        + (intervals.last().copied().unwrap_or(0.0) * 1e9) as u64;
    let columns = reports.div_ceil(per_column);
    let column_times: Vec<f64> = (0..columns)
        .map(|c| times[c * per_column] as f64 / 1e6)
        .collect();
    // Each column's length in seconds, for rates.
    let column_s: Vec<f64> = (0..columns)
        .map(|c| {
            let a = c * per_column;
            intervals[a..(a + per_column).min(reports)].iter().sum()
        })
        .collect();

    let series: Vec<SeriesView> = series
        .into_iter()
        .map(|mut b| {
            b.close();
            summarize(b, &column_s)
        })
        .collect();

    agent.cpu_percent = agent_cpu
        .chunks(per_column)
        .map(|c| {
            let max = c
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .fold(f64::NAN, f64::max);
            max.is_finite().then_some(max as f32)
        })
        .collect();
    let cpu: Vec<f64> = agent_cpu
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    agent.cpu_percent_mean = (!cpu.is_empty()).then(|| cpu.iter().sum::<f64>() / cpu.len() as f64);

    let (events, alarm_source) = match options.replayed {
        Some(replayed) => (replayed, "replay"),
        None => (events, "recording"),
    };
    let mut alarms = alarms(events, &series);
    for a in actions {
        if let Some(alarm) = alarms.iter_mut().find(|x| x.id == a.alarm_id) {
            alarm.actions.push(a);
        }
    }
    let mut sorted = intervals.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(View {
        node,
        source: path.to_owned(),
        reports,
        interval_s: sorted.get(reports / 2).copied().unwrap_or(0.0),
        per_column,
        heat_scale: HEAT_SCALE,
        times: column_times,
        end: end_ns as f64 / 1e6,
        series,
        alarms,
        alarm_source,
        probes: probes.into_values().collect(),
        agent,
        capacity: None,
    })
}

/// One series' columns: quantiles, rates and heat cells.
fn summarize(b: Building, column_s: &[f64]) -> SeriesView {
    let columns = column_s.len();
    let filled = || b.done.iter().filter(|c| !c.coarse.counts.is_empty());
    let lo = filled().map(|c| c.coarse.offset).min();
    let hi = filled()
        .map(|c| c.coarse.offset + c.coarse.counts.len() as i32 - 1)
        .max();
    let (lo, rows) = match (lo, hi) {
        (Some(lo), Some(hi)) => (lo, (hi - lo + 1) as usize),
        _ => (0, 0),
    };
    let mut heat = vec![0u8; columns * rows];
    let mut quantiles = [
        vec![None; columns],
        vec![None; columns],
        vec![None; columns],
    ];
    let mut rate = vec![0f32; columns];
    for c in &b.done {
        for (k, q) in c.quantiles.iter().enumerate() {
            quantiles[k][c.index] = *q;
        }
        let s = column_s[c.index];
        rate[c.index] = if s > 0.0 {
            (c.count as f64 / s) as f32
        } else {
            0.0
        };
        for (i, n) in c.coarse.buckets() {
            let share = n as f64 / c.count as f64;
            heat[c.index * rows + (i - lo) as usize] = ((share * 255.0).ceil() as u8).max(1);
        }
    }
    let [p50, p99, p999] = quantiles;
    SeriesView {
        family: b.family,
        labels: b.labels,
        unit: b.unit,
        lo,
        rows: rows as u32,
        heat,
        p50,
        p99,
        p999,
        rate,
        count: b.done.iter().map(|c| c.count).sum(),
    }
}

/// Alarm events grouped into one span per alarm id, with the figures of its worst
/// window.
fn alarms(events: Vec<(u64, Alarm)>, series: &[SeriesView]) -> Vec<AlarmView> {
    let mut out: Vec<AlarmView> = Vec::new();
    for (_, a) in events {
        let at = out.iter().position(|x| x.id == a.id);
        let view = match at {
            Some(i) => &mut out[i],
            None => {
                out.push(AlarmView {
                    id: a.id.clone(),
                    series: a.series.clone(),
                    index: series
                        .iter()
                        .position(|s| s.family == a.family && s.labels == a.labels),
                    severity: String::new(),
                    state: String::new(),
                    start: a.start_unix_nano as f64 / 1e6,
                    end: None,
                    summary: String::new(),
                    quantile: String::new(),
                    peak_factor: 0.0,
                    baseline: BTreeMap::new(),
                    current: BTreeMap::new(),
                    actions: Vec::new(),
                });
                out.last_mut().expect("just pushed")
            }
        };
        view.severity = a.severity.as_str().into();
        view.state = a.state.as_str().into();
        view.summary = a.summary.clone();
        if a.state != AlarmState::Resolved && a.factor >= view.peak_factor {
            view.peak_factor = a.factor;
            view.quantile = a.quantile.into();
            view.baseline = a
                .baseline_ns
                .iter()
                .map(|(k, v)| ((*k).into(), *v))
                .collect();
            view.current = a
                .current_ns
                .iter()
                .map(|(k, v)| ((*k).into(), *v))
                .collect();
        }
        view.end = a.end_unix_nano.map(|e| e as f64 / 1e6);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` reports 10 s apart of one series whose every sample sits in bucket `at(r)`.
    fn recording(n: usize, at: impl Fn(usize) -> i32) -> String {
        (0..n)
            .map(|r| {
                serde_json::json!({
                    "time": crate::util::time::rfc3339(1_800_000_000_000_000_000 + (r as u64 + 1) * 10_000_000_000),
                    "interval_s": 10.0,
                    "node": "n",
                    "series": [{"family": "block.io.latency", "labels": {"device": "sdx"},
                        "unit": "ns", "histogram": {"zero_count": 0, "offset": at(r), "counts": [100]}}],
                })
                .to_string()
                    + "\n"
            })
            .collect()
    }

    fn read_text(text: &str, columns: usize) -> View {
        let n = text.lines().count();
        let options = Options {
            max_columns: columns,
            replayed: None,
        };
        read("t", text.as_bytes(), n, options).unwrap()
    }

    #[test]
    fn reports_merge_into_columns_with_quantiles_of_the_merged_histogram() {
        // Ten reports into five columns: each column holds one report at bucket 160
        // and one at 168 (an octave up), so its p50 is in the lower and p99 in the upper.
        let v = read_text(&recording(10, |r| 160 + 8 * (r as i32 % 2)), 5);
        assert_eq!((v.per_column, v.times.len()), (2, 5));
        let s = &v.series[0];
        assert_eq!(s.count, 1000);
        // Heat rows at scale 1: 160 >> 2 = 40 and 168 >> 2 = 42.
        assert_eq!((s.lo, s.rows), (40, 3));
        for c in 0..5 {
            assert_eq!(&s.heat[c * 3..c * 3 + 3], &[128, 0, 128], "column {c}");
            assert!((s.rate[c] - 10.0).abs() < 1e-6, "200 samples over 20 s");
            let (p50, p99) = (s.p50[c].unwrap() as f64, s.p99[c].unwrap() as f64);
            // Rank 100 of 200 is the lower bucket's last sample: its upper edge (as
            // f32); p99 lies inside the upper bucket.
            assert!((p50 / 2f64.powf(20.125) - 1.0).abs() < 1e-6, "{p50}");
            assert!(
                (2f64.powf(21.0)..=2f64.powf(21.125)).contains(&p99),
                "{p99}"
            );
        }
        assert_eq!(v.times[1] - v.times[0], 20_000.0);
    }

    #[test]
    fn a_series_that_stops_leaves_empty_columns() {
        let text = recording(4, |_| 100);
        let mut lines: Vec<&str> = text.lines().collect();
        let quiet = lines[3].replace("\"counts\":[100]", "\"counts\":[]");
        lines[3] = &quiet;
        let v = read_text(&(lines.join("\n") + "\n"), 100);
        let s = &v.series[0];
        assert_eq!(s.p50[3], None);
        assert_eq!(s.rate[3], 0.0);
        assert!(s.p50[2].is_some());
    }

    #[test]
    fn reports_out_of_order_are_refused_with_their_line() {
        let text = recording(3, |_| 100);
        let lines: Vec<&str> = text.lines().collect();
        let swapped = format!("{}\n{}\n{}\n", lines[0], lines[2], lines[1]);
        let e = read(
            "rec.jsonl",
            swapped.as_bytes(),
            3,
            Options {
                max_columns: 10,
                replayed: None,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rec.jsonl line 3") && e.contains("time order"),
            "{e}"
        );
    }
}
