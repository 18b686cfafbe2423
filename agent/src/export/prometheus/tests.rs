//! Tests of the parent module.
use std::collections::BTreeMap;

use agent_common::hist::bucket_index;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::{aggregate::histogram::bucket_upper, report::sample};

const PROTOBUF_ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";

const BLOCK: &str = "nodepulse_block_io_latency_seconds";

/// One parsed sample line of the text format.
#[derive(Debug)]
struct Line {
    name: String,
    labels: BTreeMap<String, String>,
    value: String,
}

/// A strict little parser for sample lines: `name{k="v",...} value`.
fn parse_line(line: &str) -> Line {
    let end = line.find(['{', ' ']).expect("name ends");
    let name = line[..end].to_owned();
    let mut rest = &line[end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        loop {
            let (start, _) = *chars.peek().expect("label or }");
            if body[start..].starts_with('}') {
                rest = &body[start + 1..];
                break;
            }
            let eq = start + body[start..].find('=').expect("=");
            let key = body[start..eq].to_owned();
            assert_eq!(&body[eq + 1..eq + 2], "\"", "{line}");
            while chars.next().expect("key").0 < eq + 1 {}
            let mut value = String::new();
            loop {
                match chars.next().expect("value").1 {
                    '\\' => match chars.next().expect("escape").1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => panic!("bad escape \\{c} in {line}"),
                    },
                    '"' => break,
                    '\n' => panic!("raw newline in {line}"),
                    c => value.push(c),
                }
            }
            assert!(
                labels.insert(key, value).is_none(),
                "duplicate label: {line}"
            );
            if chars.peek().map(|&(_, c)| c) == Some(',') {
                chars.next();
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .expect("space before value")
        .to_owned();
    assert!(!value.contains(' '), "{line}");
    Line {
        name,
        labels,
        value,
    }
}

/// Every sample line, checking that each belongs to the family of the last `# TYPE`
/// and that HELP and TYPE appear once per family.
fn parse_text(text: &str) -> Vec<Line> {
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = Vec::new();
    let mut current: Option<(String, String)> = None;
    let mut lines = Vec::new();
    for line in text.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            let name = help.split(' ').next().unwrap().to_owned();
            assert!(!helped.contains(&name), "second HELP for {name}");
            helped.push(name);
        } else if let Some(ty) = line.strip_prefix("# TYPE ") {
            let (name, kind) = ty.split_once(' ').unwrap();
            assert!(typed.insert(name.into(), kind.into()).is_none(), "{name}");
            current = Some((name.into(), kind.into()));
        } else {
            let l = parse_line(line);
            let (family, kind) = current.clone().expect("sample before TYPE");
            let ok = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| l.name == format!("{family}{s}")),
                _ => l.name == family,
            };
            assert!(ok, "{} under TYPE {family} {kind}", l.name);
            lines.push(l);
        }
    }
    assert_eq!(helped.len(), typed.len());
    lines
}

fn value_of(lines: &[Line], name: &str, labels: &[(&str, &str)]) -> String {
    lines
        .iter()
        .find(|l| {
            l.name == name
                && labels
                    .iter()
                    .all(|(k, v)| l.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no {name} {labels:?}"))
        .value
        .clone()
}

/// Checks the classic buckets of every series of a histogram family: increasing `le`,
/// non-decreasing counts, `+Inf` == `_count` == `expected_count`.
fn check_classic(lines: &[Line], family: &str, expected_count: u64) {
    let bucket_name = format!("{family}_bucket");
    let buckets: Vec<&Line> = lines.iter().filter(|l| l.name == bucket_name).collect();
    assert!(buckets.len() > 2);
    let (mut last_le, mut last_count) = (f64::NEG_INFINITY, 0u64);
    for b in &buckets {
        let le = b.labels["le"].as_str();
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap()
        };
        let count: u64 = b.value.parse().unwrap();
        assert!(le > last_le, "le not increasing at {b:?}");
        assert!(count >= last_count, "count decreasing at {b:?}");
        (last_le, last_count) = (le, count);
    }
    assert_eq!(buckets.last().unwrap().labels["le"], "+Inf");
    assert_eq!(last_count, expected_count);
    let count: u64 = value_of(lines, &format!("{family}_count"), &[])
        .parse()
        .unwrap();
    assert_eq!(count, expected_count);
}

fn decode_families(mut body: &[u8]) -> Vec<proto::MetricFamily> {
    let mut out = Vec::new();
    while !body.is_empty() {
        out.push(proto::MetricFamily::decode_length_delimited(&mut body).unwrap());
    }
    out
}

/// (Prometheus index, count) of every bucket the spans and deltas describe.
fn expand_native(spans: &[proto::BucketSpan], deltas: &[i64]) -> Vec<(i32, u64)> {
    let mut out = Vec::new();
    let (mut index, mut count, mut deltas) = (0i32, 0i64, deltas.iter());
    for (n, span) in spans.iter().enumerate() {
        index = if n == 0 {
            span.offset()
        } else {
            index + span.offset()
        };
        for _ in 0..span.length() {
            count += deltas.next().expect("a delta per bucket");
            out.push((index, count as u64));
            index += 1;
        }
    }
    assert!(deltas.next().is_none(), "more deltas than buckets");
    out
}

fn with_histogram(h: ExpHistogram, labels: &[(&'static str, &str)]) -> Report {
    let mut r = sample();
    let s = &mut r.series[0];
    s.cumulative_count = h.count();
    s.cumulative = h;
    s.labels = labels.iter().map(|&(k, v)| (k, v.to_owned())).collect();
    r
}

#[test]
fn text_has_monotonic_classic_buckets_from_the_cumulative_histogram() {
    let r = sample();
    let text = render_text(&r);
    let lines = parse_text(&text);
    assert!(
        text.contains(&format!("# TYPE {BLOCK} histogram\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("# HELP {BLOCK} Block I/O latency")),
        "{text}"
    );
    check_classic(&lines, BLOCK, r.series[0].cumulative_count);
    assert_eq!(r.series[0].cumulative_count, 100);
    // 9 ms in all, in seconds.
    assert_eq!(value_of(&lines, &format!("{BLOCK}_sum"), &[]), "0.009");
    // An `le` at every power of two from the one below the first sample to 2^36 ns: 90
    // samples near 80 µs are below 2^17 ns (131 µs), the 10 near 2.6 ms below 2^22 ns
    // (4.2 ms), none below 2^16.
    let labels = [("device", "loop7"), ("dev", "7:7"), ("op", "read")];
    for power in 16..=36 {
        let le = format_float(pow2(power) / 1e9);
        let with_le: Vec<(&str, &str)> = labels
            .iter()
            .copied()
            .chain([("le", le.as_str())])
            .collect();
        let expected = match power {
            ..17 => "0",
            17..22 => "90",
            _ => "100",
        };
        assert_eq!(
            value_of(&lines, &format!("{BLOCK}_bucket"), &with_le),
            expected,
            "le {le}"
        );
    }
    let edges = lines
        .iter()
        .filter(|l| l.name == format!("{BLOCK}_bucket"))
        .count();
    assert_eq!(edges, 21 + 1, "2^16 to 2^36 and +Inf");
}

#[test]
fn text_has_the_self_metrics() {
    let lines = parse_text(&render_text(&sample()));
    let program = [("probe", "block"), ("program", "block_rq_issue_btf")];
    let v = |name: &str, labels: &[(&str, &str)]| value_of(&lines, name, labels);
    assert_eq!(v("nodepulse_bpf_program_run_count_total", &program), "1000");
    assert_eq!(
        v("nodepulse_bpf_program_run_time_seconds_total", &program),
        "0.00004"
    );
    let up = [("probe", "block"), ("attach", "tp_btf"), ("state", "up")];
    assert_eq!(v("nodepulse_probe_up", &up), "1");
    let reason = [("reason", "block_unmatched_completions")];
    assert_eq!(v("nodepulse_dropped_events_total", &reason), "7");
    assert_eq!(
        v("nodepulse_process_resident_memory_bytes", &[]),
        "10485760"
    );
    assert_eq!(v("nodepulse_process_cpu_seconds_total", &[]), "1.5");
    assert_eq!(v("nodepulse_alarms_open", &[]), "0");
    let mut r = sample();
    r.alarms_open = 2;
    let lines = parse_text(&render_text(&r));
    assert_eq!(value_of(&lines, "nodepulse_alarms_open", &[]), "2");
}

#[test]
fn down_probe_is_zero_with_attach_none_and_says_down() {
    let mut r = sample();
    r.probes[0].state = ProbeState::Down;
    r.probes[0].attach = None;
    let lines = parse_text(&render_text(&r));
    let labels = [("probe", "block"), ("attach", "none"), ("state", "down")];
    assert_eq!(value_of(&lines, "nodepulse_probe_up", &labels), "0");
}

#[test]
fn labels_are_renamed_and_values_escaped() {
    let nasty = "a\"b\\c\nd{e}=f,g";
    let r = with_histogram(
        sample().series[0].cumulative.clone(),
        &[
            ("vm.uuid", nasty),
            ("nova.instance.name", "instance-0000002a"),
        ],
    );
    let text = render_text(&r);
    assert!(text.contains(r#"vm_uuid="a\"b\\c\nd{e}=f,g""#), "{text}");
    let lines = parse_text(&text);
    let l = lines
        .iter()
        .find(|l| l.name == format!("{BLOCK}_count"))
        .unwrap();
    assert_eq!(l.labels["vm_uuid"], nasty);
    assert_eq!(l.labels["nova_instance_name"], "instance-0000002a");
    assert_eq!(escape_help("a\\b\nc\"d"), "a\\\\b\\nc\"d");
    assert_eq!(
        catalog::prometheus_label("kvm.exit.latency"),
        "kvm_exit_latency"
    );
    assert_eq!(catalog::prometheus_label("9-lives"), "_9_lives");
}

#[test]
fn zero_bucket_gaps_and_unlabelled_series() {
    // Zeros, two adjacent buckets, then a gap.
    let h = ExpHistogram::from_buckets(5_000, 4, [(10, 2), (11, 3), (40, 1)]);
    let r = with_histogram(h.clone(), &[]);
    let text = render_text(&r);
    let lines = parse_text(&text);
    check_classic(&lines, BLOCK, 10);
    // Everything lies below the lowest nanosecond edge, 256 ns.
    let lowest = format_float(pow2(8) / 1e9);
    assert!(
        text.contains(&format!("{BLOCK}_bucket{{le=\"{lowest}\"}} 10\n")),
        "{text}"
    );
    assert!(text.contains(&format!("{BLOCK}_count 10\n")), "{text}");
    // Counted in requests, the same buckets (upper edges 2^(11/8), 2^(12/8), 2^(41/8))
    // fall into the powers of two 1 to 4,096 as zeros 4, then 9 by 4, then 10 by 64.
    let buckets = classic_buckets(&h, Unit::Count);
    let expected: Vec<(f64, u64)> = (0..=12)
        .map(|p| {
            let count = match p {
                0 | 1 => 4,
                2..=5 => 9,
                _ => 10,
            };
            (pow2(p), count)
        })
        .collect();
    assert_eq!(buckets, expected);
}

#[test]
fn classic_edges_add_up_across_series() {
    // What `sum by (le)` across nodes needs: an `le` one series lacks is one where its
    // count is 0, so the sum over every listed `le` (a missing one adding nothing) is
    // each series' true cumulative count there, and its quantile lies between theirs.
    let series = [
        ExpHistogram::from_buckets(0, 0, [(130, 99), (131, 1)]),
        ExpHistogram::from_buckets(0, 0, [(170, 50), (200, 50)]),
        ExpHistogram::from_buckets(0, 3, [(2, 1), (300, 2)]),
        ExpHistogram::default(),
    ];
    for unit in [Unit::Nanoseconds, Unit::Bytes, Unit::Count] {
        let listed: Vec<Vec<(f64, u64)>> =
            series.iter().map(|h| classic_buckets(h, unit)).collect();
        for (h, edges) in series.iter().zip(&listed) {
            for power in unit.classic_powers() {
                let le = pow2(power);
                let truth = h.zero_count
                    + h.buckets()
                        .filter(|(otlp, _)| prometheus_index(*otlp) <= 8 * power)
                        .map(|(_, c)| c)
                        .sum::<u64>();
                let listed = edges.iter().find(|(e, _)| *e == le).map(|(_, c)| *c);
                assert!(
                    listed == Some(truth) || (listed.is_none() && truth == 0),
                    "{unit:?} le {le}: listed {listed:?}, truth {truth}"
                );
            }
        }
        assert!(listed[3].is_empty(), "an empty series lists no edge");
    }
}

#[test]
fn index_convention_matches_the_kernel_bucketing() {
    // 1 ns is the inclusive upper bound of Prometheus bucket 0 (OTLP bucket -1).
    assert_eq!(prometheus_index(bucket_index(1)), 0);
    assert_eq!(native_upper_bound(0), 1.0);
    // Every value lies in (bound(k-1), bound(k)] of its Prometheus bucket k. (Up to
    // 2^53 ns, 104 days, where every integer is still exact as an f64.)
    let mut values: Vec<u64> = (1..=5000).collect();
    values.extend((1..53).flat_map(|s| [(1u64 << s) - 1, 1 << s, (1 << s) + 1]));
    values.extend([80_000, 2_600_000, 999_999_999, 86_400_000_000_000]);
    for v in values {
        let k = prometheus_index(bucket_index(v));
        let x = v as f64;
        assert!(
            native_upper_bound(k - 1) < x && x <= native_upper_bound(k),
            "{v}: k {k}"
        );
    }
}

#[test]
fn bounds_agree_with_the_aggregate_module() {
    for otlp in -1..=511 {
        let ours = native_upper_bound(prometheus_index(otlp));
        let theirs = bucket_upper(otlp);
        assert!(
            (ours / theirs - 1.0).abs() < 1e-15,
            "{otlp}: {ours} {theirs}"
        );
        if (otlp + 1) % 8 == 0 {
            assert_eq!(ours, pow2((otlp + 1) / 8));
        }
    }
    for (j, f) in SCHEMA3_FRACTIONS.iter().enumerate() {
        assert!((f.log2() - (j as f64 / 8.0 - 1.0)).abs() < 1e-15);
    }
}

#[test]
fn protobuf_carries_native_and_classic_histograms() {
    let r = sample();
    let families = decode_families(&render_protobuf(&r));
    let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
    let text_names: Vec<String> = families_in_text(&render_text(&r));
    assert_eq!(names, text_names);

    let f = families.iter().find(|f| f.name() == BLOCK).unwrap();
    assert_eq!(f.r#type(), proto::MetricType::Histogram);
    assert_eq!(f.metric.len(), 1);
    let m = &f.metric[0];
    let labels: Vec<(&str, &str)> = m.label.iter().map(|l| (l.name(), l.value())).collect();
    assert_eq!(
        labels,
        [("dev", "7:7"), ("device", "loop7"), ("op", "read")]
    );
    let h = m.histogram.as_ref().unwrap();
    let cumulative = &r.series[0].cumulative;
    assert_eq!(h.schema(), 3);
    assert_eq!(h.zero_threshold, Some(2f64.powi(-128)));
    assert_eq!(h.zero_count(), 0);
    assert_eq!(h.sample_count(), 100);
    assert_eq!(h.sample_sum(), 0.009);
    assert_eq!(h.positive_span.len(), 2, "{:?}", h.positive_span);
    let native = expand_native(&h.positive_span, &h.positive_delta);
    // Shifted into seconds: the same buckets and counts, 239 indexes down.
    let expected: Vec<(i32, u64)> = cumulative
        .buckets()
        .map(|(i, c)| (i + 1 - 239, c))
        .collect();
    assert_eq!(native, expected);
    let classic: Vec<(f64, u64)> = h
        .bucket
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect();
    let in_seconds: Vec<(f64, u64)> = classic_buckets(cumulative, Unit::Nanoseconds)
        .into_iter()
        .map(|(le, c)| (le / 1e9, c))
        .collect();
    assert_eq!(classic, in_seconds);

    let cost = families
        .iter()
        .find(|f| f.name() == "nodepulse_bpf_program_run_count_total")
        .unwrap();
    assert_eq!(cost.r#type(), proto::MetricType::Counter);
    assert_eq!(cost.metric[0].counter.as_ref().unwrap().value(), 1000.0);
    let rss = families
        .iter()
        .find(|f| f.name() == "nodepulse_process_resident_memory_bytes")
        .unwrap();
    assert_eq!(rss.r#type(), proto::MetricType::Gauge);
    assert_eq!(rss.metric[0].gauge.as_ref().unwrap().value(), 10_485_760.0);
}

fn families_in_text(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect()
}

#[test]
fn native_spans_reconstruct_gappy_histograms() {
    let h = ExpHistogram::from_buckets(
        1,
        7,
        [(-1, 1), (0, 5), (1, 2), (5, 9), (6, 9), (100, 1), (102, 4)],
    );
    let p = histogram_proto(&h, Unit::Count);
    assert_eq!(p.zero_count(), 7);
    let spans: Vec<(i32, u32)> = p
        .positive_span
        .iter()
        .map(|s| (s.offset(), s.length()))
        .collect();
    assert_eq!(spans, [(0, 3), (3, 2), (93, 1), (1, 1)]);
    let expected: Vec<(i32, u64)> = h.buckets().map(|(i, c)| (i + 1, c)).collect();
    assert_eq!(expand_native(&p.positive_span, &p.positive_delta), expected);
    // Round trip through the wire format.
    let decoded = proto::Histogram::decode(p.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded, p);
}

#[test]
fn empty_histogram_is_still_native() {
    let p = histogram_proto(&ExpHistogram::default(), Unit::Count);
    assert_eq!(p.sample_count(), 0);
    assert_eq!(
        p.positive_span,
        [proto::BucketSpan {
            offset: Some(0),
            length: Some(0)
        }]
    );
    assert!(p.positive_delta.is_empty() && p.bucket.is_empty());
    // What Prometheus 2.42 checks (model/textparse isNativeHistogram): an empty
    // histogram is native only through a zero threshold above 0, and that threshold
    // is below every value a bucket can hold (1 ns in seconds, 1 byte).
    assert!(p.zero_threshold() > 0.0);
    // The lower bound of the bucket holding 1 ns, in seconds.
    assert!(p.zero_threshold() < native_upper_bound(-1 - NATIVE_SECONDS_SHIFT));
}

#[test]
fn negotiates_the_format_from_accept() {
    assert!(!wants_protobuf(None));
    assert!(!wants_protobuf(Some("*/*")));
    assert!(!wants_protobuf(Some("text/plain;version=0.0.4")));
    assert!(wants_protobuf(Some(PROTOBUF_ACCEPT)));
    assert!(wants_protobuf(Some(
        "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
    )));
    // Text preferred, or protobuf in the wrong encoding or refused.
    assert!(!wants_protobuf(Some(
        "text/plain;q=0.9,application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5"
    )));
    assert!(!wants_protobuf(Some(
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text"
    )));
    assert!(!wants_protobuf(Some(
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0"
    )));
}

/// One HTTP/1.1 request over a raw socket: (status, content type, body).
async fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let body = raw[split + 4..].to_vec();
    let mut head_lines = head.split("\r\n");
    let status = head_lines.next().unwrap().split(' ').nth(1).unwrap();
    let mut content_type = String::new();
    for h in head_lines {
        let (k, v) = h.split_once(':').unwrap();
        if k.eq_ignore_ascii_case("content-type") {
            content_type = v.trim().to_owned();
        }
        if k.eq_ignore_ascii_case("content-length") {
            assert_eq!(v.trim().parse::<usize>().unwrap(), body.len());
        }
    }
    (status.parse().unwrap(), content_type, body)
}

#[tokio::test(flavor = "current_thread")]
async fn serves_metrics_over_http() {
    let (mut exporter, addr) = PrometheusExporter::start("127.0.0.1:0".parse().unwrap()).unwrap();
    assert_ne!(addr.port(), 0);
    assert_eq!(exporter.name(), "prometheus");

    let (status, ct, body) = get(addr, "/metrics", None).await;
    assert_eq!((status, ct.as_str()), (503, http::PLAIN_CONTENT_TYPE));
    assert!(String::from_utf8(body).unwrap().contains("first interval"));

    let report = sample();
    exporter.export(&report).unwrap();
    exporter.wait_rendered();

    let (status, ct, body) = get(addr, "/metrics", None).await;
    assert_eq!((status, ct.as_str()), (200, TEXT_CONTENT_TYPE));
    let text = String::from_utf8(body).unwrap();
    assert_eq!(text, render_text(&report));
    check_classic(&parse_text(&text), BLOCK, 100);

    let (status, ct, body) = get(addr, "/metrics", Some(PROTOBUF_ACCEPT)).await;
    assert_eq!((status, ct.as_str()), (200, PROTOBUF_CONTENT_TYPE));
    assert_eq!(body, render_protobuf(&report));
    let families = decode_families(&body);
    let f = families.iter().find(|f| f.name() == BLOCK).unwrap();
    assert_eq!(f.metric[0].histogram.as_ref().unwrap().schema(), 3);

    let (status, ct, body) = get(addr, "/", None).await;
    assert_eq!((status, ct.as_str()), (404, http::PLAIN_CONTENT_TYPE));
    assert!(String::from_utf8(body).unwrap().contains("/metrics"));
    let (status, _, _) = get(addr, "/metrics/extra", None).await;
    assert_eq!(status, 404);
}

/// A new endpoint at a reload is fed the last report and scraped at once: once handed a
/// report it never answers 503, even before the render thread got to it.
#[tokio::test(flavor = "current_thread")]
async fn the_first_report_is_served_before_the_render_thread_publishes_it() {
    let (mut exporter, addr) = PrometheusExporter::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let report = sample();
    // The render thread stopped: whatever is served was published by `export` itself.
    exporter.renderer.stop();
    exporter.export(&report).unwrap();
    let (status, _, body) = get(addr, "/metrics", None).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(String::from_utf8(body).unwrap(), render_text(&report));
}

#[tokio::test(flavor = "current_thread")]
async fn a_stuck_client_does_not_block_others() {
    let (mut exporter, addr) = PrometheusExporter::start("127.0.0.1:0".parse().unwrap()).unwrap();
    exporter.export(&sample()).unwrap();
    exporter.wait_rendered();
    // Half a request, never finished.
    let mut stuck = tokio::net::TcpStream::connect(addr).await.unwrap();
    stuck.write_all(b"GET /metr").await.unwrap();
    let (status, _, _) = get(addr, "/metrics", None).await;
    assert_eq!(status, 200);
    // Exporting stays possible while the stuck client is connected.
    exporter.export(&sample()).unwrap();
}

#[test]
fn start_outside_a_runtime_is_an_error() {
    let err = PrometheusExporter::start("127.0.0.1:0".parse().unwrap()).err();
    assert!(err.unwrap().to_string().contains("tokio runtime"));
}

#[test]
fn method_not_allowed() {
    let r = respond(
        &Method::POST,
        METRICS_PATH,
        &HeaderMap::new(),
        Some(&Rendered::new(sample())),
    );
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
}

#[test]
fn a_report_is_rendered_once_however_many_scrape_it() {
    let latest = Rendered::new(sample());
    let (a, b) = (latest.text(), latest.text());
    assert_eq!(a.as_ptr(), b.as_ptr(), "the second scrape re-rendered");
    assert_eq!(a, render_text(&sample()));
    let (p, q) = (latest.protobuf(), latest.protobuf());
    assert_eq!(p.as_ptr(), q.as_ptr());
    assert_eq!(p, render_protobuf(&sample()));
}

#[test]
fn a_report_is_served_already_rendered() {
    let latest = Latest::default();
    let renderer = Renderer::start(latest.clone());
    renderer.submit(sample());
    renderer.wait_published();
    let first = super::latest(&latest).expect("published");
    // Rendered before any scrape asked: the first scrape pays nothing.
    assert_eq!(first.text.get().unwrap(), &render_text(&sample()));
    assert!(
        first.protobuf.get().is_none(),
        "protobuf before anyone asked"
    );
    // Once a scraper asked for protobuf, later reports come rendered in it too.
    renderer.protobuf_wanted.store(true, Ordering::Relaxed);
    renderer.submit(sample());
    renderer.wait_published();
    let second = super::latest(&latest).unwrap();
    assert!(
        !Arc::ptr_eq(&first, &second),
        "the second report was not published"
    );
    assert_eq!(second.protobuf.get().unwrap(), &render_protobuf(&sample()));
    renderer.stop();
}

#[test]
fn counter_families_carry_their_running_totals() {
    let text = render_text(&sample());
    assert!(
        text.contains("# TYPE nodepulse_block_io_errors_total counter"),
        "{text}"
    );
    let lines = parse_text(&text);
    let l = lines
        .iter()
        .find(|l| l.name == "nodepulse_block_io_errors_total")
        .expect("errors counter");
    assert_eq!(l.labels["error"], "nospc");
    assert_eq!(l.value, "5");
}

#[test]
fn native_seconds_edges_read_1_56_percent_high() {
    // Every shifted native edge is the true edge in seconds times 1e9 / 2^(239/8).
    let bias = 1e9 / 2f64.powf(239.0 / 8.0);
    assert!((bias - 1.0156).abs() < 1e-4, "{bias}");
    for k in [-8, 0, 1, 100, 239, 300] {
        let exported = native_upper_bound(Unit::Nanoseconds.native_index(k));
        let truth = native_upper_bound(k) / 1e9;
        assert!((exported / truth / bias - 1.0).abs() < 1e-12, "{k}");
    }
    // Sizes keep their index: bytes are Prometheus' base unit already.
    assert_eq!(Unit::Bytes.native_index(17), 17);
    assert_eq!(Unit::of("block.io.size"), Unit::Bytes);
    assert_eq!(Unit::of("block.io.queue_depth"), Unit::Count);
    assert_eq!(Unit::of("block.io.latency"), Unit::Nanoseconds);
}

/// `2^(j/8 - 1)` for j = 0..8: the fractions of a power of two at which schema-3 buckets
/// end, as the float literals of client_golang's `nativeHistogramBounds[3]`
/// (prometheus/client_golang prometheus/histogram.go), which Prometheus' own
/// `getBound` (model/histogram) also uses. Building the nanosecond edges from the same
/// literals makes them bit-identical to the native schema-3 bounds, where `2f64.powf`
/// could be an ulp off.
const SCHEMA3_FRACTIONS: [f64; 8] = [
    0.5,
    0.5452538663326288,
    0.5946035575013605,
    0.6484197773255048,
    0.7071067811865475,
    0.7711054127039704,
    0.8408964152537144,
    0.9170040432046711,
];

/// Inclusive upper bound, in ns, of Prometheus native bucket `k` at schema 3: `2^(k/8)`.
fn native_upper_bound(k: i32) -> f64 {
    SCHEMA3_FRACTIONS[k.rem_euclid(8) as usize] * pow2(k.div_euclid(8) + 1)
}
