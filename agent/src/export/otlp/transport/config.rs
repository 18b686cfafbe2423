//! `[otlp]`: where and how reports are sent to an OpenTelemetry collector.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::settings::duration;

/// Export to an OpenTelemetry collector.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    pub enabled: bool,
    /// `http://host:4317` (gRPC) or `http://host:4318` (HTTP; `/v1/<signal>` is
    /// appended). `https://` turns TLS on.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub temporality: Temporality,
    /// Scale of the exported exponential histograms: the kernel's (3, lossless) or
    /// lower, down to -4. Each step down merges pairs of adjacent buckets, which is
    /// exact (every sample stays in the bucket holding it) but halves the resolution.
    pub histogram_scale: i32,
    pub compression: Compression,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Extra request headers (gRPC metadata), e.g. an authorization token.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Batches waiting per signal before new ones are dropped (and counted).
    pub queue_size: usize,
    pub tls: TlsConfig,
    pub retry: RetryConfig,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: "http://localhost:4317".into(),
            protocol: OtlpProtocol::Grpc,
            temporality: Temporality::Cumulative,
            histogram_scale: agent_common::hist::SCALE,
            compression: Compression::Gzip,
            timeout: Duration::from_secs(10),
            headers: Default::default(),
            queue_size: 64,
            tls: TlsConfig::default(),
            retry: RetryConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Temporality {
    #[default]
    Cumulative,
    Delta,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    Gzip,
    None,
}

/// TLS for `https://` endpoints. Empty paths mean: system roots, no client certificate.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM bundle of CAs to trust instead of the system roots.
    pub ca_file: PathBuf,
    /// PEM client certificate and key, for collectors that require mutual TLS.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Retries of retryable failures (gRPC UNAVAILABLE, RESOURCE_EXHAUSTED, …; HTTP 429,
/// 502, 503, 504, connection errors): exponential backoff with full jitter.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    #[serde(deserialize_with = "duration")]
    pub initial_backoff: Duration,
    #[serde(deserialize_with = "duration")]
    pub max_backoff: Duration,
    /// Give up on a batch after this long (it is then counted as dropped).
    #[serde(deserialize_with = "duration")]
    pub max_elapsed: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(300),
        }
    }
}
