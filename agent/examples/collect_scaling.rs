//! CPU per interval of the userspace collection path against the number of series:
//! merging each series' per-CPU kernel histograms (the form a map read returns), the
//! interval delta, the cardinality budget, the report, the OTLP metrics request and
//! its gzip encoding — everything the agent does per series each interval except the
//! map-read system calls themselves. Run by `cargo xtask bench --workload scaling`.
//!
//! Every series changes every interval (a few samples in a few buckets per CPU), the
//! worst case for deltas. Thread CPU time, median over the measured intervals.

use std::collections::BTreeMap;

use agent_common::hist;
use nodepulse::{
    aggregate::{Delta, ExpHistogram, SeriesKey, TrackedReading, budget::Budget},
    export::otlp::{
        encode::{self, Times},
        transport::Temporality,
    },
    report::{AgentReport, Report, SeriesReport},
};
use prost::Message;

const CPUS: usize = 2;
const INTERVALS: usize = 12;
const WARMUP: usize = 2;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("series counts are integers"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 100, 1_000, 10_000]
    } else {
        sizes
    };
    println!(
        "{:>8} {:>12} {:>10} {:>11} {:>12} {:>13} {:>11}",
        "series",
        "µs/interval",
        "of it merge",
        "µs/series",
        "% core @1 s",
        "% core @10 s",
        "gzip bytes"
    );
    for n in sizes {
        let (cpu_us, merge_us, bytes) = measure(n);
        println!(
            "{n:>8} {cpu_us:>12.0} {merge_us:>10.0} {:>11.2} {:>12.3} {:>13.4} {bytes:>11}",
            cpu_us / n as f64,
            cpu_us / 1e6 * 100.0,
            cpu_us / 1e7 * 100.0
        );
    }
    println!(
        "(thread CPU time per interval, median of {} intervals after {WARMUP}; {CPUS} CPUs' \
         dense histograms merged per series; OTLP cumulative at the kernel's scale)",
        INTERVALS - WARMUP
    );
}

/// Median CPU µs per interval for `n` series (and of it, the per-CPU merge), and the
/// last request's gzip size.
fn measure(n: usize) -> (f64, f64, usize) {
    let mut per_cpu: Vec<Vec<hist::Histogram>> =
        (0..n).map(|_| vec![hist::Histogram::ZERO; CPUS]).collect();
    let keys: Vec<SeriesKey> = (0..n)
        .map(|i| {
            SeriesKey::new(
                "block.io.latency",
                [
                    ("device", format!("sd{i}")),
                    ("dev", format!("8:{i}")),
                    ("op", ["read", "write", "flush"][i % 3].to_owned()),
                ],
            )
        })
        .collect();
    let mut delta = Delta::default();
    let mut budget = Budget::new(vec![]);
    let mut samples = Vec::new();
    let mut bytes = 0;
    for interval in 0..INTERVALS {
        // What the kernel recorded meanwhile: a spread of latencies on every CPU.
        for (i, cpus) in per_cpu.iter_mut().enumerate() {
            for (c, h) in cpus.iter_mut().enumerate() {
                for k in 0..4 {
                    let slot = 100 + (i * 7 + c * 13 + k * 5 + interval * 3) % 120;
                    h.buckets[slot] += 3;
                    h.sum += 3 << (slot / 8);
                }
            }
        }
        let start = thread_cpu_us();
        let readings: Vec<TrackedReading> = per_cpu
            .iter()
            .zip(&keys)
            .map(|(cpus, key)| TrackedReading {
                key: key.clone(),
                hist: ExpHistogram::from_per_cpu(cpus),
                entity: None,
            })
            .collect();
        let merged = thread_cpu_us();
        let collected = delta.update_tracked(readings);
        let series: Vec<SeriesReport> = budget
            .apply(collected.series)
            .into_iter()
            .map(|s| SeriesReport::from_owned(s, 1.0))
            .collect();
        let report = report(series);
        let request = encode::metrics_request(
            &report,
            &encode::resource("node"),
            Temporality::Cumulative,
            hist::SCALE,
            Times {
                agent_start: 1,
                process_start: 1,
                interval_start: 2,
                now: 3,
            },
            vec![],
        );
        let body = request.encode_to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &body).expect("gzip into memory");
        bytes = gz.finish().expect("gzip into memory").len();
        let end = thread_cpu_us();
        if interval >= WARMUP {
            samples.push((end - start, merged - start));
        }
    }
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (total, merge) = samples[samples.len() / 2];
    (total, merge, bytes)
}

fn report(series: Vec<SeriesReport>) -> Report {
    Report {
        time: String::new(),
        interval_s: 1.0,
        node: "node".into(),
        series,
        counters: vec![],
        outliers: vec![],
        probes: vec![],
        agent: AgentReport {
            cpu_percent: 0.0,
            rss_bytes: 0,
            dropped: BTreeMap::new(),
            dropped_total: BTreeMap::new(),
            cpu_seconds_total: 0.0,
            outliers_discarded: 0,
            export_ms: BTreeMap::new(),
            bpf_stats_unavailable: None,
            audit_failures_total: 0,
        },
        alarms: vec![],
        alarms_open: 0,
        learning: vec![],
        learning_until: None,
        capacity: None,
        actions: vec![],
        backing: BTreeMap::new(),
    }
}

fn thread_cpu_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; the clock id is valid.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}
