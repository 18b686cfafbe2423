//! OTLP export of a running agent to a real OTLP receiver on loopback (gRPC and
//! HTTP/protobuf), while a loop device does real I/O: exact kernel counts in the
//! exponential histograms, outlier spans with their exemplars, and the collector going
//! away, failing and coming back. Needs root.

use crate::common;

use std::{net::SocketAddr, time::Duration};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{KeyValue, any_value},
    metrics::v1::{ExponentialHistogramDataPoint, metric},
};

use common::{
    LoopDevice, RunningAgent,
    otlp_server::{Mode, OtlpServer, Received},
};
use nodepulse::util::time::unix_nanos;

fn string_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match &a.value {
            Some(v) => match &v.value {
                Some(any_value::Value::StringValue(s)) => Some(s.as_str()),
                _ => None,
            },
            None => None,
        })
}

/// The data point of the loop device's `op` series in one metrics request.
fn point(
    req: &ExportMetricsServiceRequest,
    dev: &str,
    op: &str,
) -> Option<ExponentialHistogramDataPoint> {
    family_point(req, "nodepulse.block.io.latency", dev, op)
}

/// The data point of metric `name` for (device, operation).
fn family_point(
    req: &ExportMetricsServiceRequest,
    name: &str,
    dev: &str,
    op: &str,
) -> Option<ExponentialHistogramDataPoint> {
    histogram_points(req, name)
        .find(|p| {
            string_attr(&p.attributes, "dev") == Some(dev)
                && string_attr(&p.attributes, "op") == Some(op)
        })
        .cloned()
}

/// Every exponential-histogram point of family `name` in one request.
fn histogram_points<'a>(
    req: &'a ExportMetricsServiceRequest,
    name: &'a str,
) -> impl Iterator<Item = &'a ExponentialHistogramDataPoint> {
    req.resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .filter(move |m| m.name == name)
        .filter_map(|m| match &m.data {
            Some(metric::Data::ExponentialHistogram(h)) => Some(h),
            _ => None,
        })
        .flat_map(|h| &h.data_points)
}

/// The newest cumulative read count the collector has for the device.
fn latest_count(r: &Received, dev: &str) -> Option<u64> {
    r.metrics
        .iter()
        .rev()
        .find_map(|m| point(m, dev, "read"))
        .map(|p| p.count)
}

/// Whether the collector's newest count covers everything the kernel completed (up to
/// the few completions that may never reach the tracepoint; see the exact-count test).
fn caught_up(count: Option<u64>, kernel: u64) -> bool {
    count.is_some_and(|c| c <= kernel && kernel - c <= (kernel / 1000).max(8))
}

fn config(endpoint: &str, protocol: &str, extra: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        f.path(),
        format!(
            "[otlp]\nenabled = true\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\n\
             timeout = \"2s\"\n{extra}\n\
             [otlp.retry]\ninitial_backoff = \"100ms\"\nmax_backoff = \"500ms\"\nmax_elapsed = \"60s\"\n\
             [outliers]\nblock_threshold = \"100us\"\n"
        ),
    )
    .unwrap();
    f
}

fn start_agent(config: &tempfile::NamedTempFile) -> RunningAgent {
    RunningAgent::with_config(config.path())
}

/// fio random reads at queue depth 8 (plenty of samples and some outliers), about
/// `secs` seconds' worth, then synchronous reads. A fixed number of I/Os rather than a
/// time limit: fio then reaps every request before it exits, while at the end of a
/// time-based run it leaves some in flight, which the loop device completes without
/// `block_rq_complete` firing for them (seen on 6.18: the kernel's stat counts them,
/// the tracepoint does not), and the exact comparison below would not hold.
fn io(lo: &LoopDevice, secs: u32) {
    lo.fio(&[
        "--rw=randread",
        "--bs=4k",
        "--iodepth=8",
        &format!("--number_ios={}", 60_000 * secs),
    ])
    .finish();
    lo.dd_read(1000, "4k");
}

fn export_end_to_end(protocol: &str, start: fn(SocketAddr) -> OtlpServer) {
    let collector = start("127.0.0.1:0".parse().unwrap());
    let cfg = config(&collector.endpoint(), protocol, "");
    let t0 = unix_nanos();
    let agent = start_agent(&cfg);
    let lo = LoopDevice::new(128);
    let before = lo.stat();
    io(&lo, 2);
    let want = lo.stat().read - before.read;
    let (stdout, _) = agent.terminate();
    let t1 = unix_nanos();

    // The final report (sent at SIGTERM) holds every completed request.
    let r = collector.received();
    let count = latest_count(&r, &lo.number).expect("the loop device's read series");
    // Export is lossless: the collector holds exactly what the agent counted, as its
    // own final report (JSON on stdout) says.
    let final_report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a final report")).unwrap();
    let agent_count = final_report["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["labels"]["dev"] == lo.number.as_str() && s["labels"]["op"] == "read")
        .and_then(|s| s["cumulative_count"].as_u64())
        .expect("the device in the final report");
    assert_eq!(count, agent_count, "exported count vs the agent's own");
    // And the agent counted what the kernel did. Exact in the block probe's tests;
    // here, with fio's queue of 8 and another agent attaching and detaching in the
    // parallel test, a handful of completions (at most the queue depth, seen 0 to 8)
    // sometimes never reach block_rq_complete although sysfs counts them: an open
    // question noted in docs/architecture.md, not an export loss.
    assert!(
        want - count <= 8 && count <= want,
        "cumulative count {count} vs {want} in /sys/block/{}/stat",
        lo.name
    );
    let last = r
        .metrics
        .iter()
        .rev()
        .find_map(|m| point(m, &lo.number, "read"))
        .unwrap();
    let b = last.positive.as_ref().unwrap();
    assert_eq!(last.scale, 3);
    assert_eq!(
        b.bucket_counts.iter().sum::<u64>() + last.zero_count,
        last.count
    );
    assert!(
        b.bucket_counts.first().is_some_and(|&c| c > 0),
        "offset is the first populated bucket"
    );
    assert!(last.sum.unwrap() > 0.0);

    let resource = r.metrics[0].resource_metrics[0].resource.as_ref().unwrap();
    for key in ["service.name", "service.version", "host.name", "os.type"] {
        assert!(
            string_attr(&resource.attributes, key).is_some(),
            "resource lacks {key}"
        );
    }

    // Outlier spans with sane times, and exemplars pointing at them.
    let spans: Vec<_> = r
        .traces
        .iter()
        .flat_map(|t| &t.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    assert!(!spans.is_empty(), "at least one outlier span");
    for s in &spans {
        assert!(s.start_time_unix_nano < s.end_time_unix_nano);
        assert!(
            s.start_time_unix_nano >= t0 && s.end_time_unix_nano <= t1,
            "span within the test"
        );
    }
    // Outliers are slow device times (issue → completion), the slowest of the node's
    // devices: on a quiet runner the backing disk's can outrank the loop device's.
    let exemplar_ids: Vec<(Vec<u8>, Vec<u8>)> = r
        .metrics
        .iter()
        .flat_map(|req| histogram_points(req, "nodepulse.block.io.device.latency"))
        .flat_map(|p| &p.exemplars)
        .map(|e| (e.trace_id.clone(), e.span_id.clone()))
        .collect();
    assert!(
        !exemplar_ids.is_empty(),
        "exemplars on a device-time histogram"
    );
    assert!(
        exemplar_ids
            .iter()
            .any(|(t, s)| spans.iter().any(|sp| &sp.trace_id == t && &sp.span_id == s)),
        "an exemplar's ids match a received span"
    );
}

#[test]
fn grpc_export_carries_exact_counts_spans_and_exemplars() {
    require_root!();
    export_end_to_end("grpc", OtlpServer::start_grpc);
}

#[test]
fn http_export_carries_exact_counts_spans_and_exemplars() {
    require_root!();
    export_end_to_end("http/protobuf", OtlpServer::start_http);
}

/// Delta temporality at a scale below the kernel's, through the real exporter: the
/// collector's delta points, added up bucket by bucket, are exactly the agent's
/// interval histograms (scale 3, from its JSON reports) with buckets merged to scale 0.
#[test]
fn http_export_of_deltas_at_a_lower_scale_adds_up_exactly() {
    require_root!();
    let collector = OtlpServer::start_http("127.0.0.1:0".parse().unwrap());
    let cfg = config(
        &collector.endpoint(),
        "http/protobuf",
        "temporality = \"delta\"\nhistogram_scale = 0",
    );
    let agent = start_agent(&cfg);
    let lo = LoopDevice::new(128);
    io(&lo, 1);
    let (stdout, _) = agent.terminate();

    let mut reported: std::collections::BTreeMap<i32, u64> = Default::default();
    let mut reported_count = 0;
    for line in stdout.lines() {
        let report: serde_json::Value = serde_json::from_str(line).unwrap();
        for s in report["series"].as_array().unwrap() {
            if s["family"] != "block.io.latency"
                || s["labels"]["dev"] != lo.number.as_str()
                || s["labels"]["op"] != "read"
            {
                continue;
            }
            let h = &s["histogram"];
            assert_eq!(h["scale"], 3);
            reported_count += s["count"].as_u64().unwrap();
            let offset = h["offset"].as_i64().unwrap() as i32;
            for (k, c) in h["counts"].as_array().unwrap().iter().enumerate() {
                // Scale 3 → 0: eight buckets become one (index >> 3, floored).
                *reported.entry((offset + k as i32) >> 3).or_default() += c.as_u64().unwrap();
            }
        }
    }
    reported.retain(|_, c| *c > 0);
    assert!(
        reported_count > 1000,
        "the agent saw the reads: {reported_count}"
    );

    let mut exported: std::collections::BTreeMap<i32, u64> = Default::default();
    let mut exported_count = 0;
    for m in &collector.received().metrics {
        let Some(p) = point(m, &lo.number, "read") else {
            continue;
        };
        assert_eq!(p.scale, 0);
        let b = p.positive.as_ref().unwrap();
        assert_eq!(b.bucket_counts.iter().sum::<u64>() + p.zero_count, p.count);
        exported_count += p.count;
        for (k, c) in b.bucket_counts.iter().enumerate() {
            *exported.entry(b.offset + k as i32).or_default() += c;
        }
    }
    exported.retain(|_, c| *c > 0);
    assert_eq!(exported_count, reported_count, "delta counts add up");
    assert_eq!(exported, reported, "buckets merged exactly");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The collector is absent at start, then dies mid-run and comes back: the agent keeps
/// collecting with bounded memory, and once data flows again the cumulative count
/// includes everything measured during the outages.
#[test]
fn collector_absent_then_restarted() {
    require_root!();
    let addr = SocketAddr::from(([127, 0, 0, 1], common::free_ports::<1>()[0]));
    let cfg = config(&format!("http://{addr}"), "grpc", "queue_size = 4");
    let agent = start_agent(&cfg);
    let pid = agent.pid();
    let lo = LoopDevice::new(128);
    let before = lo.stat();
    io(&lo, 2); // nobody listening

    let collector = OtlpServer::start_grpc(addr);
    let counted = |c: &OtlpServer, want: u64| {
        let ok = c.wait_for(
            |r| caught_up(latest_count(r, &lo.number), want),
            Duration::from_secs(20),
        );
        if !ok {
            let history: Vec<Option<u64>> = c
                .received()
                .metrics
                .iter()
                .map(|m| point(m, &lo.number, "read").map(|p| p.count))
                .collect();
            eprintln!("want {want}; the collector got {history:?}");
        }
        ok
    };
    let want = lo.stat().read - before.read;
    assert!(
        counted(&collector, want),
        "export resumed with everything measured during the outage"
    );

    collector.stop(); // the collector dies
    io(&lo, 2);
    let rss = rss_kib(pid);
    assert!(rss < 64 * 1024, "RSS {rss} KiB while the collector is away");
    let collector = OtlpServer::start_grpc(addr); // and comes back
    let want = lo.stat().read - before.read;
    assert!(
        counted(&collector, want),
        "export resumed after the restart"
    );
    agent.terminate();
}

/// Retryable errors are retried until the collector accepts again; permanent ones are
/// dropped and counted, and the agent keeps running and exporting.
#[test]
fn collector_errors_retryable_and_permanent() {
    require_root!();
    let collector = OtlpServer::start_http("127.0.0.1:0".parse().unwrap());
    let cfg = config(&collector.endpoint(), "http/protobuf", "");
    let agent = start_agent(&cfg);
    let lo = LoopDevice::new(128);
    let before = lo.stat();

    collector.set_mode(Mode::RetryableError);
    io(&lo, 2);
    let rejected = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        collector.rejected() > 0
    });
    assert!(rejected, "the agent exported while the collector refused");
    collector.set_mode(Mode::Accept);
    let want = lo.stat().read - before.read;
    assert!(
        collector.wait_for(
            |r| caught_up(latest_count(r, &lo.number), want),
            Duration::from_secs(20)
        ),
        "retried batches and later ones arrive once the collector accepts"
    );

    collector.set_mode(Mode::PermanentError);
    let rejected = collector.rejected();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(collector.rejected() > rejected, "the agent kept exporting");
    collector.set_mode(Mode::Accept);
    let received = collector.received().metrics.len();
    assert!(
        collector.wait_for(|r| r.metrics.len() > received, Duration::from_secs(10)),
        "export goes on after permanent errors"
    );
    // The agent counts what the collector refused for good.
    let failed = collector.wait_for(
        |r| {
            r.metrics.last().is_some_and(|m| {
                m.resource_metrics
                    .iter()
                    .flat_map(|r| &r.scope_metrics)
                    .flat_map(|s| &s.metrics)
                    .filter(|m| m.name == "nodepulse.otlp.batches")
                    .filter_map(|m| match &m.data {
                        Some(metric::Data::Sum(s)) => Some(s),
                        _ => None,
                    })
                    .flat_map(|s| &s.data_points)
                    .any(|p| {
                        string_attr(&p.attributes, "outcome") == Some("failed")
                            && matches!(
                                p.value,
                                Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(n)) if n > 0
                            )
                    })
            })
        },
        Duration::from_secs(10),
    );
    assert!(
        failed,
        "failed batches are exported as nodepulse.otlp.batches{{outcome=failed}}"
    );
    agent.terminate();
}
