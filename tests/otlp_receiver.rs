//! The OTLP receiver of the export tests (tests/common/otlp_server.rs), checked with
//! plain tonic and hyper clients. Needs no root.

use crate::common;

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use common::otlp_server::{Mode, OtlpServer};
use http_body_util::{BodyExt as _, Full};
use hyper::StatusCode;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{ExportLogsServiceRequest, logs_service_client::LogsServiceClient},
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_client::MetricsServiceClient,
        },
        trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    },
    common::v1::{AnyValue, KeyValue, any_value},
    metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
    },
    resource::v1::Resource,
};
use prost::Message as _;
use tonic::{Code, codec::CompressionEncoding, transport::Channel};

const WAIT: Duration = Duration::from_secs(5);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A gauge with `points` data points: enough repetition that gzip shrinks it.
fn metrics_request(points: usize) -> ExportMetricsServiceRequest {
    let attr = |k: &str, v: &str| KeyValue {
        key: k.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_owned())),
        }),
        ..Default::default()
    };
    let data_points = (0..points)
        .map(|i| NumberDataPoint {
            attributes: vec![attr("dev", &format!("7:{i}"))],
            time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
            value: Some(number_data_point::Value::AsInt(i as i64)),
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![attr("service.name", "nodepulse-test")],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "nodepulse.test.gauge".to_owned(),
                    data: Some(metric::Data::Gauge(Gauge { data_points })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn grpc_client(server: &OtlpServer) -> MetricsServiceClient<Channel> {
    MetricsServiceClient::connect(server.endpoint())
        .await
        .expect("connect to the gRPC receiver")
        .send_compressed(CompressionEncoding::Gzip)
}

async fn grpc_export(
    client: &mut MetricsServiceClient<Channel>,
    request: &ExportMetricsServiceRequest,
) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(request.clone());
    request
        .metadata_mut()
        .insert("x-nodepulse-test", "grpc".parse().unwrap());
    client.export(request).await.map(drop)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// POSTs `body` to `path`; returns the status, the content type and the body.
async fn http_post(
    client: &HttpClient,
    server: &OtlpServer,
    path: &str,
    content_type: &str,
    gzip_encoded: bool,
    body: Vec<u8>,
) -> (StatusCode, String, Bytes) {
    try_http_post(client, server, path, content_type, gzip_encoded, body)
        .await
        .expect("POST to the HTTP receiver")
}

async fn try_http_post(
    client: &HttpClient,
    server: &OtlpServer,
    path: &str,
    content_type: &str,
    gzip_encoded: bool,
    body: Vec<u8>,
) -> Result<(StatusCode, String, Bytes), hyper_util::client::legacy::Error> {
    let mut request = hyper::Request::post(format!("{}{path}", server.endpoint()))
        .header("content-type", content_type)
        .header("x-nodepulse-test", "http");
    if gzip_encoded {
        request = request.header("content-encoding", "gzip");
    }
    let response = client
        .request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await?;
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok((status, content_type, body))
}

#[test]
fn grpc_records_gzip_requests_of_every_signal() {
    one_subject_at_a_time!();
    let server = OtlpServer::start_grpc(any_port());
    assert_ne!(server.addr().port(), 0);
    assert_eq!(
        server.endpoint(),
        format!("http://127.0.0.1:{}", server.addr().port())
    );
    let sent = metrics_request(200);
    runtime().block_on(async {
        let mut client = grpc_client(&server).await;
        grpc_export(&mut client, &sent)
            .await
            .expect("export metrics");

        let channel = Channel::from_shared(server.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap();
        TraceServiceClient::new(channel.clone())
            .send_compressed(CompressionEncoding::Gzip)
            .export(ExportTraceServiceRequest::default())
            .await
            .expect("export traces");
        LogsServiceClient::new(channel)
            .export(ExportLogsServiceRequest::default())
            .await
            .expect("export logs");
    });
    let got = server.received();
    assert_eq!(got.metrics, vec![sent.clone()]);
    assert_eq!(got.traces.len(), 1);
    assert_eq!(got.logs.len(), 1);
    assert_eq!(got.requests(), 3);
    assert_eq!(got.bytes.len(), 3);
    assert_eq!(got.header(0, "x-nodepulse-test"), Some("grpc"));
    assert_eq!(got.header(0, "grpc-encoding"), Some("gzip"));
    assert_eq!(got.header(0, "content-type"), Some("application/grpc"));
    assert_eq!(
        got.header(2, "grpc-encoding"),
        None,
        "logs were not compressed"
    );
    // Counted as sent: compressed, plus the 5-byte gRPC message prefix.
    let plain = sent.encoded_len() as u64;
    assert!(
        got.bytes[0] > 5 && got.bytes[0] < plain / 2,
        "{} bytes on the wire for {plain} bytes of protobuf",
        got.bytes[0]
    );
    assert_eq!(got.bytes[2], 5, "an empty message is only the prefix");
    assert_eq!(server.rejected(), 0);
}

#[test]
fn http_records_plain_and_gzip_requests() {
    one_subject_at_a_time!();
    let server = OtlpServer::start_http(any_port());
    let sent = metrics_request(200);
    let encoded = sent.encode_to_vec();
    let compressed = gzip(&encoded);
    runtime().block_on(async {
        let client = http_client();
        for (gz, body) in [(false, encoded.clone()), (true, compressed.clone())] {
            let (status, content_type, body) = http_post(
                &client,
                &server,
                "/v1/metrics",
                "application/x-protobuf",
                gz,
                body,
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(content_type, "application/x-protobuf");
            assert_eq!(
                ExportMetricsServiceResponse::decode(body).unwrap(),
                ExportMetricsServiceResponse::default()
            );
        }
        let traces = ExportTraceServiceRequest::default().encode_to_vec();
        let logs = gzip(&ExportLogsServiceRequest::default().encode_to_vec());
        for (path, gz, body) in [("/v1/traces", false, traces), ("/v1/logs", true, logs)] {
            let (status, ..) =
                http_post(&client, &server, path, "application/x-protobuf", gz, body).await;
            assert_eq!(status, StatusCode::OK, "{path}");
        }

        // Not OTLP/HTTP protobuf: refused, not recorded, not counted as rejected.
        let (status, ..) = http_post(
            &client,
            &server,
            "/v1/metrics",
            "application/json",
            false,
            b"{}".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (status, ..) = http_post(
            &client,
            &server,
            "/v1/profiles",
            "application/x-protobuf",
            false,
            vec![],
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, ..) = http_post(
            &client,
            &server,
            "/v1/metrics",
            "application/x-protobuf",
            true,
            b"not gzip".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    });
    let got = server.received();
    assert_eq!(got.metrics, vec![sent.clone(), sent]);
    assert_eq!(got.traces.len(), 1);
    assert_eq!(got.logs.len(), 1);
    assert_eq!(got.requests(), 4);
    assert_eq!(got.bytes[0], encoded.len() as u64);
    assert_eq!(got.bytes[1], compressed.len() as u64);
    assert!(compressed.len() < encoded.len() / 2);
    assert_eq!(got.header(0, "x-nodepulse-test"), Some("http"));
    assert_eq!(got.header(0, "content-encoding"), None);
    assert_eq!(got.header(1, "content-encoding"), Some("gzip"));
    assert_eq!(
        got.header(1, "content-type"),
        Some("application/x-protobuf")
    );
    assert_eq!(server.rejected(), 0);
}

#[test]
fn grpc_injected_errors() {
    one_subject_at_a_time!();
    let server = OtlpServer::start_grpc(any_port());
    let sent = metrics_request(3);
    runtime().block_on(async {
        let mut client = grpc_client(&server).await;
        server.set_mode(Mode::RetryableError);
        let err = grpc_export(&mut client, &sent).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        server.set_mode(Mode::PermanentError);
        let err = grpc_export(&mut client, &sent).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_eq!(server.rejected(), 2);
        assert_eq!(server.received().requests(), 0);

        server.set_mode(Mode::Accept);
        grpc_export(&mut client, &sent)
            .await
            .expect("accepted again");
    });
    let got = server.received();
    assert_eq!(got.metrics, vec![sent]);
    assert_eq!(got.requests(), 1);
    assert_eq!(server.rejected(), 2);
}

#[test]
fn http_injected_errors() {
    one_subject_at_a_time!();
    let server = OtlpServer::start_http(any_port());
    let body = metrics_request(3).encode_to_vec();
    runtime().block_on(async {
        let client = http_client();
        let post = || {
            http_post(
                &client,
                &server,
                "/v1/metrics",
                "application/x-protobuf",
                false,
                body.clone(),
            )
        };
        server.set_mode(Mode::RetryableError);
        let (status, content_type, _) = post().await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(content_type, "application/x-protobuf");
        server.set_mode(Mode::PermanentError);
        assert_eq!(post().await.0, StatusCode::BAD_REQUEST);
        assert_eq!(server.rejected(), 2);
        assert_eq!(server.received().requests(), 0);

        server.set_mode(Mode::Accept);
        assert_eq!(post().await.0, StatusCode::OK);
    });
    assert_eq!(server.received().metrics.len(), 1);
    assert_eq!(server.rejected(), 2);
}

/// A collector that goes away and comes back on the same port: the client's open
/// connection is closed by the stop, and the restarted receiver accepts again.
#[test]
fn restart_on_the_same_port() {
    one_subject_at_a_time!();
    let rt = runtime();
    let sent = metrics_request(3);

    let grpc = OtlpServer::start_grpc(any_port());
    let addr = grpc.addr();
    let mut client = rt.block_on(grpc_client(&grpc));
    rt.block_on(grpc_export(&mut client, &sent)).unwrap();
    grpc.stop();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "stopped receiver still listens"
    );
    assert!(rt.block_on(grpc_export(&mut client, &sent)).is_err());
    let grpc = OtlpServer::start_grpc(addr);
    assert_eq!(grpc.addr(), addr);
    // The same client reconnects (tonic may fail the first call after a lost
    // connection).
    rt.block_on(async {
        for _ in 0..50 {
            if grpc_export(&mut client, &sent).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the client never reached the restarted receiver");
    });
    assert!(grpc.wait_for(|r| r.metrics.len() == 1, WAIT));

    let http = OtlpServer::start_http(any_port());
    let addr = http.addr();
    let client = http_client();
    let body = sent.encode_to_vec();
    let post = |server: &OtlpServer| {
        rt.block_on(try_http_post(
            &client,
            server,
            "/v1/metrics",
            "application/x-protobuf",
            false,
            body.clone(),
        ))
        .map(|(status, ..)| status)
    };
    assert_eq!(post(&http).unwrap(), StatusCode::OK);
    // The client keeps that connection alive; the stop closes it from our side.
    http.stop();
    assert!(std::net::TcpStream::connect(addr).is_err());
    let http = OtlpServer::start_http(addr);
    assert_eq!(http.addr(), addr);
    // The first request may go out on the pooled connection the stop closed, and fail
    // (an exporter must retry that); the next one opens a new connection.
    let status = post(&http).or_else(|_| post(&http));
    assert_eq!(status.unwrap(), StatusCode::OK);
    assert!(http.wait_for(|r| r.metrics.len() == 1, WAIT));
}

#[test]
fn wait_for_times_out() {
    one_subject_at_a_time!();
    let server = OtlpServer::start_http(any_port());
    let start = std::time::Instant::now();
    assert!(!server.wait_for(|r| !r.metrics.is_empty(), Duration::from_millis(100)));
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert!(server.wait_for(|r| r.metrics.is_empty(), Duration::ZERO));
}
