//! The gRPC link: tonic over HTTP/2, reconnecting after connection-level failures.

use super::*;

// --- gRPC ------------------------------------------------------------------------------

pub(super) struct GrpcLink {
    /// The channel in use, replaced by a fresh one after a connection-level failure:
    /// a channel whose connection failed can stay failed (its buffer worker keeps the
    /// first error), so a collector that comes back would never be reached again.
    pub(super) channel: std::sync::Mutex<Channel>,
    pub(super) endpoint: Endpoint,
    pub(super) path: PathAndQuery,
    pub(super) gzip: bool,
    pub(super) metadata: MetadataMap,
    pub(super) timeout: Duration,
}

impl GrpcLink {
    pub(super) async fn attempt(&self, body: Bytes, state: &Arc<SignalState>) -> Outcome {
        let (outcome, connection_failed) = self.try_once(body, state).await;
        if connection_failed {
            *self.channel.lock().unwrap_or_else(|e| e.into_inner()) = self.endpoint.connect_lazy();
        }
        outcome
    }

    /// One attempt, and whether it failed at the connection level (not an answer from
    /// the collector).
    async fn try_once(&self, body: Bytes, state: &Arc<SignalState>) -> (Outcome, bool) {
        let inner = self
            .channel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let channel = CountingChannel {
            inner,
            state: state.clone(),
        };
        let mut grpc = tonic::client::Grpc::new(channel);
        if self.gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        if let Err(e) = grpc.ready().await {
            let outcome = Outcome::Retry {
                error: format!("gRPC channel not ready: {}", error_chain(&e)),
                after: None,
            };
            return (outcome, true);
        }
        let mut request = tonic::Request::new(body);
        *request.metadata_mut() = self.metadata.clone();
        // Tells the collector the deadline too (grpc-timeout).
        request.set_timeout(self.timeout);
        match grpc.unary(request, self.path.clone(), EncodedCodec).await {
            Ok(response) => (Outcome::Sent(response.into_inner()), false),
            Err(status) => {
                let local = std::error::Error::source(&status).is_some();
                (grpc_outcome(&status), local)
            }
        }
    }
}

/// A status that tonic made from a local transport error carries that error as its
/// source (a reset connection, a failed TLS handshake, often as UNKNOWN): those are
/// connection errors and retried, as on the HTTP path. Statuses the collector sent have
/// no source and follow the code table.
pub(super) fn grpc_outcome(status: &Status) -> Outcome {
    let source = std::error::Error::source(status);
    let text = format!("gRPC {:?}: {}", status.code(), status.message());
    let error = truncate(&with_causes(text, source));
    if grpc_retryable(status.code()) || source.is_some() {
        Outcome::Retry {
            error,
            after: retry_info_delay(status.details()),
        }
    } else {
        Outcome::Fail(error)
    }
}

pub(super) fn grpc_endpoint(
    config: &OtlpConfig,
    url: &Url,
    tls: TlsFiles,
) -> Result<Endpoint, Box<dyn std::error::Error>> {
    let mut endpoint = Endpoint::from_shared(url.as_str().to_owned())?
        .user_agent(USER_AGENT)?
        .connect_timeout(config.timeout)
        .tcp_nodelay(true);
    if url.scheme() == "https" {
        endpoint = endpoint.tls_config(grpc_tls(tls))?;
    }
    Ok(endpoint)
}

pub(super) fn grpc_tls(tls: TlsFiles) -> ClientTlsConfig {
    let config = ClientTlsConfig::new();
    let config = match tls.ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(ca.pem)),
        None => config.with_native_roots(),
    };
    match tls.identity {
        Some(id) => config.identity(Identity::from_pem(id.cert_pem, id.key_pem)),
        None => config,
    }
}

pub(super) type GrpcRequest = hyper::Request<tonic::body::Body>;

/// A `Channel` that counts the request body bytes it sends: the gRPC frames after
/// compression, i.e. what goes on the wire.
#[derive(Clone)]
pub(super) struct CountingChannel {
    pub(super) inner: Channel,
    pub(super) state: Arc<SignalState>,
}

impl Service<GrpcRequest> for CountingChannel {
    type Response = <Channel as Service<GrpcRequest>>::Response;
    type Error = <Channel as Service<GrpcRequest>>::Error;
    type Future = <Channel as Service<GrpcRequest>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: GrpcRequest) -> Self::Future {
        let state = self.state.clone();
        let request = request.map(|body| {
            tonic::body::Body::new(body.map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    SignalState::add(&state.bytes_sent, data.len() as u64);
                }
                frame
            }))
        });
        self.inner.call(request)
    }
}

/// Passes the already-encoded request through, so a batch is encoded once when queued
/// and resent as is on retries. Every signal's response has the same wire shape
/// (`partial_success { rejected count = 1; error_message = 2 }`), so one decoder serves
/// all three.
#[derive(Clone, Copy)]
pub(super) struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = Option<Rejected>;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        *self
    }

    fn decoder(&mut self) -> Self {
        *self
    }
}

impl Encoder for EncodedCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for EncodedCodec {
    type Item = Option<Rejected>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let response = ExportMetricsServiceResponse::decode(src)
            .map_err(|e| Status::internal(format!("cannot decode the export response: {e}")))?;
        Ok(Some(rejected(response)))
    }
}

pub(super) fn rejected(response: ExportMetricsServiceResponse) -> Option<Rejected> {
    let partial = response.partial_success?;
    let refused = partial.rejected_data_points > 0 || !partial.error_message.is_empty();
    refused.then(|| Rejected {
        items: u64::try_from(partial.rejected_data_points).unwrap_or(0),
        message: truncate(&partial.error_message),
    })
}

/// `google.rpc.Status`: in `grpc-status-details-bin`, and the body of OTLP/HTTP errors.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub(super) code: i32,
    #[prost(string, tag = "2")]
    pub(super) message: String,
    #[prost(message, repeated, tag = "3")]
    pub(super) details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ProtoAny {
    #[prost(string, tag = "1")]
    pub(super) type_url: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub(super) value: Bytes,
}

/// `google.rpc.RetryInfo`: how long a throttling collector wants us to wait.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub(super) retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub(super) seconds: i64,
    #[prost(int32, tag = "2")]
    pub(super) nanos: i32,
}

pub(super) fn retry_info_delay(details: &[u8]) -> Option<Duration> {
    let status = RpcStatus::decode(details).ok()?;
    let info = status
        .details
        .iter()
        .find(|d| d.type_url == RETRY_INFO_TYPE)?;
    let delay = RetryInfo::decode(info.value.clone()).ok()?.retry_delay?;
    let seconds = u64::try_from(delay.seconds).ok()?;
    let nanos = u32::try_from(delay.nanos).ok()?.min(999_999_999);
    Some(Duration::new(seconds, nanos))
}
