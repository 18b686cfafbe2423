//! The HTTP/protobuf link: hyper over rustls, POST /v1/<signal>.

use super::*;

// --- HTTP/protobuf ---------------------------------------------------------------------

pub(super) type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub(super) struct HttpLink {
    pub(super) client: HttpsClient,
    pub(super) uri: Uri,
    pub(super) headers: HeaderMap,
    pub(super) gzip: bool,
}

impl HttpLink {
    pub(super) async fn attempt(&self, body: Bytes, state: &SignalState) -> Outcome {
        let size = body.len() as u64;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(e) => {
                return Outcome::Retry {
                    error: format!("POST {}: {}", self.uri, error_chain(&e)),
                    after: None,
                };
            }
        };
        SignalState::add(&state.bytes_sent, size);
        let status = response.status();
        let after = retry_after(response.headers());
        let protobuf = is_protobuf(response.headers());
        // Read even on success, so the connection goes back to the pool.
        let body = Limited::new(response.into_body(), RESPONSE_LIMIT)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        http_outcome(status, after, protobuf, &body, &self.uri)
    }
}

pub(super) fn http_outcome(
    status: StatusCode,
    after: Option<Duration>,
    protobuf: bool,
    body: &[u8],
    uri: &Uri,
) -> Outcome {
    if status.is_success() {
        let response = protobuf
            .then(|| ExportMetricsServiceResponse::decode(body).ok())
            .flatten();
        return Outcome::Sent(response.and_then(rejected));
    }
    let error = format!(
        "HTTP {status} from {uri}: {}",
        http_error_text(body, protobuf)
    );
    if http_retryable(status) {
        Outcome::Retry { error, after }
    } else {
        Outcome::Fail(error)
    }
}

/// OTLP/HTTP errors carry a protobuf `google.rpc.Status`; proxies send text or HTML.
pub(super) fn http_error_text(body: &[u8], protobuf: bool) -> String {
    let text = match protobuf.then(|| RpcStatus::decode(body).ok()).flatten() {
        Some(status) => status.message,
        None => String::from_utf8_lossy(body).into_owned(),
    };
    match truncate(&text) {
        text if text.is_empty() => "(no response text)".to_owned(),
        text => text,
    }
}

/// Retry-After in seconds (the HTTP-date form is not used by collectors).
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

pub(super) fn is_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROTOBUF))
}

pub(super) fn http_headers(mut headers: HeaderMap, gzip: bool) -> HeaderMap {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    headers
        .entry(header::USER_AGENT)
        .or_insert(HeaderValue::from_static(USER_AGENT));
    headers
}

pub(super) fn http_client(
    config: &OtlpConfig,
    url: &Url,
    tls: TlsFiles,
) -> Result<HttpsClient, String> {
    let tls = rustls_client(tls, url.scheme() == "https")?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.timeout));
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build(connector))
}

/// For plain http the connector still wants a TLS config; it gets an unused empty one
/// rather than loading the system roots for nothing.
pub(super) fn rustls_client(files: TlsFiles, https: bool) -> Result<ClientConfig, String> {
    let roots = match files.ca {
        Some(ca) => tls::Roots::Given(ca.roots),
        None if https => tls::Roots::System,
        None => tls::Roots::None,
    };
    let cert = files.identity.map(|id| tls::ClientCert {
        certs: id.certs,
        key: id.key,
    });
    tls::client_config(roots, cert).map_err(|e| match e {
        tls::TlsError::SystemRoots(_) => format!("{e}, or set otlp.tls.ca_file"),
        tls::TlsError::ClientCert(_) => e.to_string(),
    })
}
