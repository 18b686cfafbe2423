//! Tests of the parent module.
use std::{convert::Infallible, io::Read, net::SocketAddr, sync::atomic::AtomicUsize};

use opentelemetry_proto::tonic::collector::{
    metrics::v1::metrics_service_server::{MetricsService, MetricsServiceServer},
    trace::v1::{
        ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
};
use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;
use tonic::transport::{Server, ServerTlsConfig, server::TcpIncoming};

use super::*;

/// A test CA and a certificate it signed for localhost and 127.0.0.1 (serverAuth and
/// clientAuth), valid 2000–2100, made with openssl for these tests.
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBazCCARGgAwIBAgIBATAKBggqhkjOPQQDAjAcMRowGAYDVQQDDBFub2RlcHVs
c2UgdGVzdCBDQTAgFw0wMDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAwMDAwMFowHDEa
MBgGA1UEAwwRbm9kZXB1bHNlIHRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMB
BwNCAARLwl+YVeRXF7S9vhO4ZXfPwswWJmiGJ50xTSUsVbfvHW0vohtMTSgkJKM/
ssWZ48hU40OCj+kqTeIIhTjE3bLUo0IwQDAPBgNVHRMBAf8EBTADAQH/MA4GA1Ud
DwEB/wQEAwIBBjAdBgNVHQ4EFgQUqOwfQAaVLcrwa/xfbctt2FKq/pcwCgYIKoZI
zj0EAwIDSAAwRQIhALZdJQqn+MYzAkDjOyKC4jXXqW/TiMJSLWLKkk/IPRSzAiAr
hqK9vTObNqugHv8LZlr3TrCN6ChlpXLGGsbGAYtYmQ==
-----END CERTIFICATE-----
";
const LEAF_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBvjCCAWSgAwIBAgIBAjAKBggqhkjOPQQDAjAcMRowGAYDVQQDDBFub2RlcHVs
c2UgdGVzdCBDQTAgFw0wMDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAwMDAwMFowFDES
MBAGA1UEAwwJbG9jYWxob3N0MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEvFf9
Pqy+Okau/+7Vo/nqclyjoGnudISVkiuR7N78MlLji6d0OHj+TkOy+UZnRlP8M4nn
rAFyuS6ZKYAdGNcZwaOBnDCBmTAaBgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEw
DAYDVR0TAQH/BAIwADAOBgNVHQ8BAf8EBAMCB4AwHQYDVR0lBBYwFAYIKwYBBQUH
AwEGCCsGAQUFBwMCMB8GA1UdIwQYMBaAFKjsH0AGlS3K8Gv8X23LbdhSqv6XMB0G
A1UdDgQWBBSkx+Tq4pVERRbBPVO/A3yZ0LVvgTAKBggqhkjOPQQDAgNIADBFAiEA
jnKWJTmEOLlVqSsxhq1siGnv2APimUYta05XZ+1hgjYCIFhrIJhoOZFiVXR8O+jm
FLlZ486ZS79sgJk6l526bbiz
-----END CERTIFICATE-----
";
const LEAF_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgeTXXcGeFZ/SzGBPE
lZ1zfMpl2WGQtNz/hvcQ0PKyyPGhRANCAAS8V/0+rL46Rq7/7tWj+epyXKOgae50
hJWSK5Hs3vwyUuOLp3Q4eP5OQ7L5RmdGU/wzieesAXK5LpkpgB0Y1xnB
-----END PRIVATE KEY-----
";

fn otlp(endpoint: &str, protocol: OtlpProtocol) -> OtlpConfig {
    OtlpConfig {
        enabled: true,
        endpoint: endpoint.into(),
        protocol,
        ..OtlpConfig::default()
    }
}

/// Quick retries that give up after `max_elapsed`.
fn fast(mut config: OtlpConfig, max_elapsed: Duration) -> OtlpConfig {
    config.timeout = Duration::from_secs(5);
    config.retry = RetryConfig {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(20),
        max_elapsed,
    };
    config
}

fn problem(config: &OtlpConfig) -> String {
    validate(config).unwrap_err().to_string()
}

/// Writes PEM files into a temporary directory and points the config at them.
fn with_tls(
    mut config: OtlpConfig,
    files: [(&str, Option<&str>); 3],
) -> (OtlpConfig, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = files.map(|(name, content)| {
        let path = dir.path().join(name);
        if let Some(content) = content {
            std::fs::write(&path, content).unwrap();
        }
        path
    });
    let [ca, cert, key] = std::array::from_fn(|i| std::mem::take(&mut paths[i]));
    config.tls = TlsConfig {
        ca_file: if files[0].0.is_empty() {
            Default::default()
        } else {
            ca
        },
        cert_file: if files[1].0.is_empty() {
            Default::default()
        } else {
            cert
        },
        key_file: if files[2].0.is_empty() {
            Default::default()
        } else {
            key
        },
    };
    (config, dir)
}

fn metrics_batch(tag: &str) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            schema_url: format!("https://example.com/{tag}"),
            ..Default::default()
        }],
    }
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

// --- validate ----------------------------------------------------------------------

#[test]
fn defaults_are_valid_for_both_protocols() {
    validate(&OtlpConfig::default()).unwrap();
    validate(&otlp(
        "https://collector.example:4318/otlp/",
        OtlpProtocol::HttpProtobuf,
    ))
    .unwrap();
    validate(&otlp("http://[::1]:4317/", OtlpProtocol::Grpc)).unwrap();
}

#[test]
fn endpoint_must_be_an_http_url_with_a_host() {
    let e = problem(&otlp("not a url", OtlpProtocol::Grpc));
    assert!(
        e.starts_with("config key `otlp.endpoint` \"not a url\" is not a URL"),
        "{e}"
    );
    assert!(
        e.ends_with("write it like \"http://collector:4317\""),
        "{e}"
    );

    let e = problem(&otlp("localhost:4317", OtlpProtocol::Grpc));
    assert!(e.contains("must start with http:// or https://"), "{e}");
    let e = problem(&otlp("ftp://collector", OtlpProtocol::HttpProtobuf));
    assert!(e.contains("must start with http:// or https://"), "{e}");
    assert!(e.ends_with("\"http://collector:4318\""), "{e}");

    let e = problem(&otlp("http://", OtlpProtocol::Grpc));
    assert!(e.contains("empty host"), "{e}");
}

#[test]
fn endpoint_extras_are_rejected_with_their_fix() {
    let e = problem(&otlp("http://c:4318/?a=1", OtlpProtocol::HttpProtobuf));
    assert!(e.contains("must not have a query or fragment"), "{e}");
    let e = problem(&otlp("http://user:secret@c:4317", OtlpProtocol::Grpc));
    assert!(e.contains("has credentials"), "{e}");
    assert!(e.contains("otlp.headers"), "{e}");

    let e = problem(&otlp("http://c:4317/v1/metrics", OtlpProtocol::Grpc));
    assert!(
        e.contains("has a path (/v1/metrics), which gRPC does not use"),
        "{e}"
    );
    assert!(e.contains("otlp.protocol = \"http/protobuf\""), "{e}");

    let e = problem(&otlp(
        "http://c:4318/v1/traces/",
        OtlpProtocol::HttpProtobuf,
    ));
    assert!(e.contains("ends in /v1/traces, but"), "{e}");
}

#[test]
fn histogram_scale_is_the_kernels_or_lower() {
    let mut c = OtlpConfig {
        histogram_scale: 4,
        ..OtlpConfig::default()
    };
    assert_eq!(
        problem(&c),
        "config key `otlp.histogram_scale` must be between -4 and 3 (the kernel records at \
         scale 3; a higher scale would need buckets it never had), got 4"
    );
    c.histogram_scale = -5;
    assert!(problem(&c).ends_with("got -5"));
    for ok in [-4, 0, 3] {
        c.histogram_scale = ok;
        validate(&c).unwrap();
    }
}

#[test]
fn queue_size_and_timeout_ranges() {
    let mut c = OtlpConfig {
        queue_size: 0,
        ..OtlpConfig::default()
    };
    assert_eq!(
        problem(&c),
        "config key `otlp.queue_size` must be between 1 and 10000 (batches waiting per \
         signal), got 0"
    );
    c.queue_size = 10_001;
    assert!(problem(&c).ends_with("got 10001"));
    c.queue_size = 10_000;
    validate(&c).unwrap();

    c.timeout = Duration::from_millis(50);
    assert_eq!(
        problem(&c),
        "config key `otlp.timeout` must be between 100ms and 5m, got 50ms"
    );
    c.timeout = Duration::from_secs(301);
    assert!(problem(&c).ends_with("got 5m 1s"), "{}", problem(&c));
    c.timeout = Duration::from_millis(100);
    validate(&c).unwrap();
}

#[test]
fn retry_backoffs_are_checked() {
    let mut c = OtlpConfig::default();
    c.retry.initial_backoff = Duration::ZERO;
    assert_eq!(
        problem(&c),
        "config key `otlp.retry.initial_backoff` must be at least 1ms, got 0s"
    );
    c.retry.initial_backoff = Duration::from_secs(5);
    c.retry.max_backoff = Duration::from_secs(1);
    assert_eq!(
        problem(&c),
        "config key `otlp.retry.max_backoff` must be at least otlp.retry.initial_backoff \
         (5s), got 1s"
    );
}

#[test]
fn headers_must_be_valid_metadata() {
    let with = |protocol, name: &str, value: &str| {
        let mut c = otlp("http://c:4317", protocol);
        c.headers.insert(name.into(), value.into());
        c
    };
    validate(&with(OtlpProtocol::Grpc, "Authorization", "Bearer abc")).unwrap();

    let e = problem(&with(OtlpProtocol::Grpc, "x api key", "v"));
    assert!(
        e.starts_with("config key `otlp.headers` \"x api key\" is not a valid header name"),
        "{e}"
    );
    let e = problem(&with(OtlpProtocol::Grpc, "Content-Type", "text/plain"));
    assert!(
        e.contains("\"Content-Type\" is set by the OTLP transport itself"),
        "{e}"
    );
    let e = problem(&with(OtlpProtocol::Grpc, "grpc-timeout", "1S"));
    assert!(e.contains("set by the OTLP transport"), "{e}");
    let e = problem(&with(OtlpProtocol::Grpc, "trace-bin", "x"));
    assert!(e.contains("binary gRPC metadata"), "{e}");
    validate(&with(OtlpProtocol::HttpProtobuf, "trace-bin", "x")).unwrap();

    let e = problem(&with(OtlpProtocol::Grpc, "x-token", "s3cret\nnext"));
    assert!(
        e.contains("the value of \"x-token\" must be printable ASCII"),
        "{e}"
    );
    assert!(!e.contains("s3cret"), "the value must not be echoed: {e}");
    let e = problem(&with(OtlpProtocol::Grpc, "x-token", "naïve"));
    assert!(e.contains("must be printable ASCII"), "{e}");
}

#[test]
fn tls_files_need_an_https_endpoint() {
    let c = otlp("http://c:4317", OtlpProtocol::Grpc);
    let (c, _dir) = with_tls(c, [("ca.pem", Some(CA_PEM)), ("", None), ("", None)]);
    let e = problem(&c);
    assert!(
        e.starts_with(
            "config key `otlp.tls.ca_file` is set but otlp.endpoint \"http://c:4317\" is plain http"
        ),
        "{e}"
    );
}

#[test]
fn ca_file_must_hold_a_certificate() {
    let https = otlp("https://c:4317", OtlpProtocol::Grpc);
    let (c, _dir) = with_tls(
        https.clone(),
        [("missing.pem", None), ("", None), ("", None)],
    );
    let e = problem(&c);
    assert!(
        e.starts_with("config key `otlp.tls.ca_file` cannot read"),
        "{e}"
    );
    assert!(
        e.contains("it should be a PEM bundle of CA certificates"),
        "{e}"
    );

    let (c, _dir) = with_tls(
        https.clone(),
        [("ca.pem", Some("hello\n")), ("", None), ("", None)],
    );
    let e = problem(&c);
    assert!(e.contains("contains no PEM certificate"), "{e}");

    let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let (c, _dir) = with_tls(
        https.clone(),
        [("ca.pem", Some(garbage)), ("", None), ("", None)],
    );
    let e = problem(&c);
    assert!(e.contains("no valid X.509 CA certificate"), "{e}");

    let (c, _dir) = with_tls(https, [("ca.pem", Some(CA_PEM)), ("", None), ("", None)]);
    validate(&c).unwrap();
}

#[test]
fn client_certificate_and_key_come_together() {
    let https = otlp("https://c:4318", OtlpProtocol::HttpProtobuf);
    let (c, _dir) = with_tls(
        https.clone(),
        [("", None), ("cert.pem", Some(LEAF_PEM)), ("", None)],
    );
    let e = problem(&c);
    assert!(
        e.starts_with("config key `otlp.tls.key_file` must be set when otlp.tls.cert_file is"),
        "{e}"
    );

    let (c, _dir) = with_tls(
        https.clone(),
        [("", None), ("", None), ("key.pem", Some(LEAF_KEY))],
    );
    let e = problem(&c);
    assert!(
        e.starts_with("config key `otlp.tls.cert_file` must be set when otlp.tls.key_file is"),
        "{e}"
    );

    let files = [
        ("", None),
        ("cert.pem", Some(LEAF_PEM)),
        ("key.pem", Some(LEAF_PEM)),
    ];
    let (c, _dir) = with_tls(https.clone(), files);
    let e = problem(&c);
    assert!(e.contains("contains no usable PEM private key"), "{e}");

    let files = [
        ("", None),
        ("cert.pem", Some(CA_PEM)),
        ("key.pem", Some(LEAF_KEY)),
    ];
    let (c, _dir) = with_tls(https.clone(), files);
    let e = problem(&c);
    assert!(e.contains("does not fit the certificate in"), "{e}");

    let files = [
        ("", None),
        ("cert.pem", Some(LEAF_PEM)),
        ("key.pem", Some(LEAF_KEY)),
    ];
    let (c, _dir) = with_tls(https, files);
    validate(&c).unwrap();
}

// --- pure helpers ------------------------------------------------------------------

#[test]
fn signal_paths_join_onto_the_endpoint() {
    let cases = [
        ("http://c:4318", "http://c:4318/v1/metrics"),
        ("http://c:4318/", "http://c:4318/v1/metrics"),
        (
            "https://gw.example/otlp",
            "https://gw.example/otlp/v1/metrics",
        ),
        (
            "https://gw.example/otlp/",
            "https://gw.example/otlp/v1/metrics",
        ),
        (
            "https://gw.example/a/b//",
            "https://gw.example/a/b/v1/metrics",
        ),
    ];
    for (endpoint, want) in cases {
        let url = Url::parse(endpoint).unwrap();
        assert_eq!(
            signal_url(&url, Signal::Metrics).as_str(),
            want,
            "{endpoint}"
        );
    }
    let url = Url::parse("http://c:4318/base").unwrap();
    assert_eq!(signal_url(&url, Signal::Traces).path(), "/base/v1/traces");
    assert_eq!(signal_url(&url, Signal::Logs).path(), "/base/v1/logs");
}

#[test]
fn grpc_retryable_codes_follow_the_otlp_table() {
    let table = [
        (Code::Ok, false),
        (Code::Cancelled, true),
        (Code::Unknown, false),
        (Code::InvalidArgument, false),
        (Code::DeadlineExceeded, true),
        (Code::NotFound, false),
        (Code::AlreadyExists, false),
        (Code::PermissionDenied, false),
        (Code::ResourceExhausted, true),
        (Code::FailedPrecondition, false),
        (Code::Aborted, true),
        (Code::OutOfRange, true),
        (Code::Unimplemented, false),
        (Code::Internal, false),
        (Code::Unavailable, true),
        (Code::DataLoss, true),
        (Code::Unauthenticated, false),
    ];
    for (code, retryable) in table {
        assert_eq!(grpc_retryable(code), retryable, "{code:?}");
    }
}

#[test]
fn http_retryable_statuses_follow_the_otlp_table() {
    for status in [429, 502, 503, 504] {
        assert!(
            http_retryable(StatusCode::from_u16(status).unwrap()),
            "{status}"
        );
    }
    for status in [400, 401, 403, 404, 405, 408, 413, 415, 500, 501, 505] {
        assert!(
            !http_retryable(StatusCode::from_u16(status).unwrap()),
            "{status}"
        );
    }
}

#[test]
fn grpc_status_becomes_an_outcome() {
    let status = Status::with_details(
        Code::Unavailable,
        "busy",
        retry_info_status(Duration::from_millis(1500)),
    );
    assert_eq!(
        grpc_outcome(&status),
        Outcome::Retry {
            error: "gRPC Unavailable: busy".into(),
            after: Some(Duration::from_millis(1500)),
        }
    );
    assert_eq!(
        grpc_outcome(&Status::resource_exhausted("slow down")),
        Outcome::Retry {
            error: "gRPC ResourceExhausted: slow down".into(),
            after: None,
        }
    );
    assert_eq!(
        grpc_outcome(&Status::invalid_argument("bad span")),
        Outcome::Fail("gRPC InvalidArgument: bad span".into())
    );
    assert_eq!(retry_info_delay(b"not protobuf \xff"), None);

    // Made by tonic from a broken connection, not sent by the collector.
    let mut status = Status::unknown("transport error");
    let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset");
    status.set_source(Arc::new(reset));
    assert_eq!(
        grpc_outcome(&status),
        Outcome::Retry {
            error: "gRPC Unknown: transport error: connection reset".into(),
            after: None,
        }
    );
}

#[test]
fn http_answer_becomes_an_outcome() {
    let uri: Uri = "http://c:4318/v1/metrics".parse().unwrap();
    let ok = partial_success(2, "bad points").encode_to_vec();
    assert_eq!(
        http_outcome(StatusCode::OK, None, true, &ok, &uri),
        Outcome::Sent(Some(Rejected {
            items: 2,
            message: "bad points".into()
        }))
    );
    assert_eq!(
        http_outcome(StatusCode::OK, None, false, b"{}", &uri),
        Outcome::Sent(None)
    );
    assert_eq!(
        http_outcome(
            StatusCode::OK,
            None,
            true,
            &ExportMetricsServiceResponse::default().encode_to_vec(),
            &uri
        ),
        Outcome::Sent(None)
    );
    assert_eq!(
        http_outcome(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::from_secs(7)),
            false,
            b"",
            &uri
        ),
        Outcome::Retry {
            error: "HTTP 503 Service Unavailable from http://c:4318/v1/metrics: (no response text)"
                .into(),
            after: Some(Duration::from_secs(7)),
        }
    );
    let status = RpcStatus {
        code: Code::InvalidArgument as i32,
        message: "metric name is empty".into(),
        details: vec![],
    };
    assert_eq!(
        http_outcome(
            StatusCode::BAD_REQUEST,
            None,
            true,
            &status.encode_to_vec(),
            &uri
        ),
        Outcome::Fail(
            "HTTP 400 Bad Request from http://c:4318/v1/metrics: metric name is empty".into()
        )
    );
    let Outcome::Fail(error) = http_outcome(
        StatusCode::NOT_FOUND,
        None,
        false,
        "x".repeat(5000).as_bytes(),
        &uri,
    ) else {
        panic!("404 is final");
    };
    assert!(error.ends_with("x…") && error.len() < 500, "{error}");
}

#[test]
fn retry_after_is_read_in_seconds() {
    let mut headers = HeaderMap::new();
    assert_eq!(retry_after(&headers), None);
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static(" 3 "));
    assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
    );
    assert_eq!(retry_after(&headers), None);
}

#[test]
fn backoff_doubles_up_to_the_max_with_jitter_under_the_cap() {
    let retry = RetryConfig {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        max_elapsed: Duration::from_secs(60),
    };
    let caps = [100, 200, 400, 800, 1000, 1000, 1000].map(Duration::from_millis);
    for seed in 0..200 {
        let mut backoff = Backoff::new(&retry, seed);
        for cap in caps {
            assert_eq!(backoff.cap, cap);
            let wait = backoff.next();
            assert!(
                wait <= cap && wait <= retry.max_backoff,
                "{wait:?} over {cap:?}"
            );
        }
    }
    let mut backoff = Backoff::new(&retry, 42);
    let waits: Vec<_> = (0..20).map(|_| backoff.next()).collect();
    assert!(
        waits.iter().any(|w| *w > Duration::from_millis(500)),
        "{waits:?}"
    );
    assert!(waits.windows(2).any(|w| w[0] != w[1]), "{waits:?}");
}

#[test]
fn full_jitter_spans_zero_to_cap() {
    let cap = Duration::from_secs(30);
    assert_eq!(full_jitter(cap, 0), Duration::ZERO);
    assert!(full_jitter(cap, u64::MAX) <= cap);
    assert!(full_jitter(cap, u64::MAX) > Duration::from_millis(29_999));
    assert_eq!(full_jitter(Duration::ZERO, u64::MAX), Duration::ZERO);
    let huge = Duration::from_secs(u64::MAX / 4);
    assert!(full_jitter(huge, u64::MAX) <= huge);
}

#[test]
fn a_tiny_initial_backoff_is_raised_to_the_floor() {
    let retry = RetryConfig {
        initial_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        max_elapsed: Duration::from_secs(1),
    };
    assert_eq!(Backoff::new(&retry, 1).cap, MIN_BACKOFF);
}

#[test]
fn warnings_are_limited_to_one_a_minute() {
    let mut limiter = WarnLimiter::default();
    let t0 = Instant::now();
    assert_eq!(limiter.allow(t0), Some(0));
    assert_eq!(limiter.allow(t0 + Duration::from_secs(1)), None);
    assert_eq!(limiter.allow(t0 + Duration::from_secs(59)), None);
    assert_eq!(limiter.allow(t0 + Duration::from_secs(60)), Some(2));
    assert_eq!(limiter.allow(t0 + Duration::from_secs(61)), None);
}

#[test]
fn gzip_round_trips() {
    let data = b"nodepulse ".repeat(1000);
    let packed = gzip(&data);
    assert!(packed.len() < data.len() / 10);
    let mut unpacked = Vec::new();
    flate2::read::GzDecoder::new(&packed[..])
        .read_to_end(&mut unpacked)
        .unwrap();
    assert_eq!(unpacked, data);
}

#[test]
fn start_needs_a_runtime() {
    let e = start(&OtlpConfig::default()).err().unwrap();
    assert!(matches!(e, TransportError::NoRuntime), "{e}");
}

#[tokio::test(flavor = "current_thread")]
async fn start_rejects_an_invalid_config() {
    let e = start(&otlp("grpc://c:4317", OtlpProtocol::Grpc))
        .err()
        .unwrap();
    assert!(
        e.to_string().starts_with("config key `otlp.endpoint`"),
        "{e}"
    );
}

// --- queues ------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_drops_and_counts() {
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let mut config = otlp("http://127.0.0.1:9", protocol);
        config.queue_size = 2;
        let sender = start(&config).unwrap();
        // The sender task has not run yet (nothing awaited), so nothing leaves the queue.
        let accepted: Vec<bool> = (0..5)
            .map(|i| sender.try_send_metrics(metrics_batch(&i.to_string())))
            .collect();
        assert_eq!(accepted, [true, true, false, false, false], "{protocol:?}");
        assert!(sender.try_send_traces(ExportTraceServiceRequest::default()));
        assert!(sender.try_send_logs(ExportLogsServiceRequest::default()));

        let stats = sender.stats();
        assert_eq!(stats.metrics.batches_dropped, 3);
        assert_eq!(stats.metrics.pending, 2);
        assert_eq!(stats.traces.batches_dropped, 0);
        assert_eq!(stats.traces.pending, 1);
        assert_eq!(stats.signal(Signal::Logs).pending, 1);
        assert!(!sender.flush(Duration::from_millis(20)).await);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_absent_collector_is_retried_then_given_up() {
    let port = closed_port();
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let config = fast(
            otlp(&format!("http://127.0.0.1:{port}"), protocol),
            Duration::from_millis(200),
        );
        let sender = start(&config).unwrap();
        assert!(sender.try_send_metrics(metrics_batch("a")));
        assert!(sender.flush(Duration::from_secs(10)).await, "{protocol:?}");
        let stats = sender.stats().metrics;
        assert_eq!(
            (stats.batches_sent, stats.batches_failed),
            (0, 1),
            "{stats:?}"
        );
        assert!(stats.retries >= 1, "{stats:?}");
        assert_eq!(stats.bytes_sent, 0, "{stats:?}");
        let error = stats.last_error.unwrap();
        assert!(error.contains("gave up after retrying"), "{error}");
        assert!(error.to_lowercase().contains("refused"), "{error}");
        assert!(stats.last_export_duration.is_some());
    }
}

#[tokio::test(flavor = "current_thread")]
async fn flush_of_nothing_returns_at_once() {
    let sender = start(&otlp("http://127.0.0.1:9", OtlpProtocol::Grpc)).unwrap();
    assert!(sender.flush(Duration::ZERO).await);
    assert_eq!(sender.stats(), TransportStats::default());
}

// --- against local collectors ------------------------------------------------------

/// A request a test collector received.
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// An OTLP/HTTP collector on loopback that answers with `answer(path, nth request
/// to that path)`.
async fn http_collector(
    answer: fn(&str, usize) -> hyper::Response<Full<Bytes>>,
) -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let path = parts.uri.path().to_owned();
                        let nth = {
                            let mut log = log.lock().unwrap();
                            let nth = log.iter().filter(|r: &&Received| r.path == path).count();
                            log.push(Received {
                                path: path.clone(),
                                headers: parts.headers,
                                body,
                            });
                            nth
                        };
                        Ok::<_, hyper::Error>(answer(&path, nth))
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
        }
    });
    (addr, received)
}

fn answer(
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: Vec<u8>,
) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(*name, HeaderValue::from_static(value));
    }
    response
}

#[tokio::test(flavor = "current_thread")]
async fn http_export_retries_then_delivers_gzip_with_headers() {
    let (addr, received) = http_collector(|path, nth| match (path, nth) {
        ("/base/v1/metrics", 0) => answer(503, &[("retry-after", "0")], b"overloaded".to_vec()),
        ("/base/v1/metrics", _) => answer(
            200,
            &[("content-type", PROTOBUF)],
            partial_success(2, "bad points").encode_to_vec(),
        ),
        _ => answer(
            400,
            &[("content-type", "text/plain")],
            b"malformed batch".to_vec(),
        ),
    })
    .await;
    let mut config = fast(
        otlp(&format!("http://{addr}/base/"), OtlpProtocol::HttpProtobuf),
        Duration::from_secs(5),
    );
    config.headers.insert("X-Api-Key".into(), "k1".into());
    let sender = start(&config).unwrap();
    let batch = metrics_batch("http");
    assert!(sender.try_send_metrics(batch.clone()));
    assert!(sender.try_send_traces(ExportTraceServiceRequest::default()));
    assert!(sender.flush(Duration::from_secs(10)).await);

    let received = received.lock().unwrap();
    let metrics: Vec<_> = received
        .iter()
        .filter(|r| r.path == "/base/v1/metrics")
        .collect();
    assert_eq!(metrics.len(), 2);
    let request = metrics[1];
    assert_eq!(request.headers["content-type"], PROTOBUF);
    assert_eq!(request.headers["content-encoding"], "gzip");
    assert_eq!(request.headers["x-api-key"], "k1");
    assert!(
        request.headers["user-agent"]
            .to_str()
            .unwrap()
            .starts_with("nodepulse/")
    );
    let mut body = Vec::new();
    flate2::read::GzDecoder::new(&request.body[..])
        .read_to_end(&mut body)
        .unwrap();
    assert_eq!(
        ExportMetricsServiceRequest::decode(&body[..]).unwrap(),
        batch
    );

    let stats = sender.stats();
    let m = &stats.metrics;
    assert_eq!(
        (
            m.batches_sent,
            m.batches_failed,
            m.retries,
            m.items_rejected
        ),
        (1, 0, 1, 2),
        "{m:?}"
    );
    assert_eq!(
        m.bytes_sent,
        metrics.iter().map(|r| r.body.len() as u64).sum::<u64>()
    );
    assert!(
        m.last_error
            .as_deref()
            .unwrap()
            .contains("HTTP 503 Service Unavailable"),
        "{m:?}"
    );

    let t = &stats.traces;
    assert_eq!(
        (t.batches_sent, t.batches_failed, t.retries),
        (0, 1, 0),
        "{t:?}"
    );
    let error = t.last_error.as_deref().unwrap();
    assert!(
        error.starts_with("HTTP 400 Bad Request from http://127.0.0.1:"),
        "{error}"
    );
    assert!(
        error.ends_with("/base/v1/traces: malformed batch"),
        "{error}"
    );
}

/// Answers metrics with UNAVAILABLE (with RetryInfo) once, then a partial success;
/// traces always with INVALID_ARGUMENT.
#[derive(Default)]
struct GrpcCollector {
    metrics_calls: AtomicUsize,
    api_keys: Mutex<Vec<String>>,
    encodings: Mutex<Vec<String>>,
}

impl GrpcCollector {
    fn record<T>(&self, request: &tonic::Request<T>) {
        let text = |name| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        self.api_keys.lock().unwrap().push(text("x-api-key"));
        self.encodings.lock().unwrap().push(text("grpc-encoding"));
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, Status> {
        self.record(&request);
        if self.metrics_calls.fetch_add(1, Ordering::SeqCst) == 0 {
            let details = retry_info_status(Duration::from_millis(5));
            return Err(Status::with_details(
                Code::Unavailable,
                "warming up",
                details,
            ));
        }
        Ok(tonic::Response::new(partial_success(3, "too old")))
    }
}

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
        self.record(&request);
        Err(Status::invalid_argument("span without id"))
    }
}

/// Routes each request to the signal's generated server (tonic's router feature is
/// off in this crate).
#[derive(Clone)]
struct GrpcRoutes {
    metrics: MetricsServiceServer<GrpcCollector>,
    traces: TraceServiceServer<GrpcCollector>,
}

impl Service<GrpcRequest> for GrpcRoutes {
    type Response = hyper::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: GrpcRequest) -> Self::Future {
        if request.uri().path() == Signal::Traces.grpc_path() {
            Box::pin(self.traces.call(request))
        } else {
            Box::pin(self.metrics.call(request))
        }
    }
}

async fn grpc_collector(tls: Option<ServerTlsConfig>) -> (SocketAddr, Arc<GrpcCollector>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = Arc::new(GrpcCollector::default());
    let routes = GrpcRoutes {
        metrics: MetricsServiceServer::from_arc(collector.clone())
            .accept_compressed(CompressionEncoding::Gzip),
        traces: TraceServiceServer::from_arc(collector.clone())
            .accept_compressed(CompressionEncoding::Gzip),
    };
    tokio::spawn(serve(routes, listener, tls));
    (addr, collector)
}

async fn serve<S>(service: S, listener: tokio::net::TcpListener, tls: Option<ServerTlsConfig>)
where
    S: Service<GrpcRequest, Response = hyper::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls).unwrap();
    }
    server
        .serve_with_incoming(service, TcpIncoming::from(listener))
        .await
        .unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn grpc_export_retries_then_delivers_with_metadata() {
    let (addr, collector) = grpc_collector(None).await;
    let mut config = fast(
        otlp(&format!("http://{addr}"), OtlpProtocol::Grpc),
        Duration::from_secs(5),
    );
    config.headers.insert("x-api-key".into(), "k2".into());
    let sender = start(&config).unwrap();
    assert!(sender.try_send_metrics(metrics_batch("grpc")));
    assert!(sender.try_send_traces(ExportTraceServiceRequest::default()));
    assert!(sender.flush(Duration::from_secs(10)).await);

    assert_eq!(collector.metrics_calls.load(Ordering::SeqCst), 2);
    assert!(collector.api_keys.lock().unwrap().iter().all(|k| k == "k2"));
    assert!(
        collector
            .encodings
            .lock()
            .unwrap()
            .iter()
            .all(|e| e == "gzip")
    );

    let stats = sender.stats();
    let m = &stats.metrics;
    assert_eq!(
        (
            m.batches_sent,
            m.batches_failed,
            m.retries,
            m.items_rejected
        ),
        (1, 0, 1, 3),
        "{m:?}"
    );
    assert!(m.bytes_sent > 0, "{m:?}");
    assert_eq!(
        m.last_error.as_deref(),
        Some("gRPC Unavailable: warming up")
    );

    let t = &stats.traces;
    assert_eq!(
        (t.batches_sent, t.batches_failed, t.retries),
        (0, 1, 0),
        "{t:?}"
    );
    assert_eq!(
        t.last_error.as_deref(),
        Some("gRPC InvalidArgument: span without id")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn grpc_export_over_mutual_tls() {
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(LEAF_PEM, LEAF_KEY))
        .client_ca_root(Certificate::from_pem(CA_PEM));
    let (addr, collector) = grpc_collector(Some(tls)).await;
    let https = fast(
        otlp(&format!("https://{addr}"), OtlpProtocol::Grpc),
        Duration::from_millis(300),
    );
    let files = [
        ("ca.pem", Some(CA_PEM)),
        ("cert.pem", Some(LEAF_PEM)),
        ("key.pem", Some(LEAF_KEY)),
    ];
    let (config, _dir) = with_tls(https.clone(), files);
    let sender = start(&config).unwrap();
    assert!(sender.try_send_metrics(metrics_batch("tls")));
    assert!(sender.flush(Duration::from_secs(10)).await);
    assert_eq!(
        sender.stats().metrics.batches_sent,
        1,
        "{:?}",
        sender.stats().metrics
    );
    assert_eq!(collector.metrics_calls.load(Ordering::SeqCst), 2);

    // Without a client certificate the collector refuses the handshake: a connection
    // error, retried until otlp.retry.max_elapsed.
    let (config, _dir) = with_tls(https, [("ca.pem", Some(CA_PEM)), ("", None), ("", None)]);
    let sender = start(&config).unwrap();
    assert!(sender.try_send_metrics(metrics_batch("no client cert")));
    assert!(sender.flush(Duration::from_secs(10)).await);
    let stats = sender.stats().metrics;
    assert_eq!(
        (stats.batches_sent, stats.batches_failed),
        (0, 1),
        "{stats:?}"
    );
    assert!(stats.retries >= 1, "{stats:?}");
    let error = stats.last_error.unwrap();
    assert!(error.contains("CertificateRequired"), "{error}");
    assert_eq!(collector.metrics_calls.load(Ordering::SeqCst), 2);
}

/// An OTLP/HTTP collector behind tonic's TLS server, which gives an HTTPS (HTTP/2)
/// endpoint without another dependency.
#[derive(Clone, Default)]
struct HttpsCollector {
    paths: Arc<Mutex<Vec<String>>>,
}

impl Service<GrpcRequest> for HttpsCollector {
    type Response = hyper::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: GrpcRequest) -> Self::Future {
        self.paths
            .lock()
            .unwrap()
            .push(request.uri().path().to_owned());
        let body = tonic::body::Body::new(Full::new(Bytes::from(
            partial_success(0, "").encode_to_vec(),
        )));
        let mut response = hyper::Response::new(body);
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
        std::future::ready(Ok(response))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn http_export_over_mutual_tls() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = HttpsCollector::default();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(LEAF_PEM, LEAF_KEY))
        .client_ca_root(Certificate::from_pem(CA_PEM));
    tokio::spawn(serve(collector.clone(), listener, Some(tls)));

    let https = fast(
        otlp(
            &format!("https://localhost:{}", addr.port()),
            OtlpProtocol::HttpProtobuf,
        ),
        Duration::from_millis(300),
    );
    let files = [
        ("ca.pem", Some(CA_PEM)),
        ("cert.pem", Some(LEAF_PEM)),
        ("key.pem", Some(LEAF_KEY)),
    ];
    let (config, _dir) = with_tls(https, files);
    let sender = start(&config).unwrap();
    assert!(sender.try_send_logs(ExportLogsServiceRequest::default()));
    assert!(sender.flush(Duration::from_secs(10)).await);
    let stats = sender.stats().logs;
    assert_eq!(
        (stats.batches_sent, stats.items_rejected),
        (1, 0),
        "{stats:?}"
    );
    assert_eq!(*collector.paths.lock().unwrap(), ["/v1/logs"]);
}
