//! Checks of the `[otlp]` configuration: what is wrong and what to do, before anything
//! is sent.

use super::*;

// ---------------------------------------------------------------------------------------
// Configuration checks
// ---------------------------------------------------------------------------------------

/// Lowest export scale: base 2^16, 4 buckets cover 1 ns to 18 hours; below that the
/// histogram says nothing.
pub const MIN_SCALE: i32 = -4;

/// Checks the `[otlp]` table; every problem names its key and says what to do.
pub fn validate(config: &OtlpConfig) -> Result<(), ConfigError> {
    check(config).map(drop)
}

/// What the checks produced, so `start` reads and parses nothing twice.
pub(super) struct Checked {
    pub(super) endpoint: Url,
    pub(super) headers: HeaderMap,
    pub(super) tls: TlsFiles,
}

pub(super) fn check(config: &OtlpConfig) -> Result<Checked, ConfigError> {
    let endpoint = check_endpoint(&config.endpoint, config.protocol)?;
    check_limits(config)?;
    let headers = check_headers(&config.headers, config.protocol)?;
    let tls = check_tls(&config.tls, &config.endpoint, &endpoint)?;
    Ok(Checked {
        endpoint,
        headers,
        tls,
    })
}

pub(super) fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

pub(super) fn check_endpoint(text: &str, protocol: OtlpProtocol) -> Result<Url, ConfigError> {
    let example = match protocol {
        OtlpProtocol::Grpc => "http://collector:4317",
        OtlpProtocol::HttpProtobuf => "http://collector:4318",
    };
    let bad = |problem: String| {
        invalid(
            "otlp.endpoint",
            format!("{problem}; write it like \"{example}\""),
        )
    };
    let url = Url::parse(text).map_err(|e| bad(format!("\"{text}\" is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "\"{text}\" must start with http:// or https:// (https turns TLS on)"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad(format!("\"{text}\" has no host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(format!("\"{text}\" must not have a query or fragment")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "otlp.endpoint",
            format!(
                "\"{text}\" has credentials, which are not sent from the URL; put them in \
                 otlp.headers (e.g. authorization = \"Basic ...\")"
            ),
        ));
    }
    check_endpoint_path(text, &url, protocol)?;
    Ok(url)
}

/// gRPC has no base path, and OTLP/HTTP appends the signal path itself: both mistakes
/// would otherwise show up only as 404s or UNIMPLEMENTED at run time.
pub(super) fn check_endpoint_path(
    text: &str,
    url: &Url,
    protocol: OtlpProtocol,
) -> Result<(), ConfigError> {
    let path = url.path().trim_end_matches('/');
    match protocol {
        OtlpProtocol::Grpc if !path.is_empty() => Err(invalid(
            "otlp.endpoint",
            format!(
                "\"{text}\" has a path ({path}), which gRPC does not use; remove it, or set \
                 otlp.protocol = \"http/protobuf\" for an OTLP/HTTP endpoint"
            ),
        )),
        OtlpProtocol::HttpProtobuf => {
            match Signal::ALL.iter().find(|s| path.ends_with(s.http_path())) {
                Some(signal) => Err(invalid(
                    "otlp.endpoint",
                    format!(
                        "\"{text}\" ends in {}, but /v1/metrics, /v1/traces and /v1/logs are \
                     appended; give the base URL without it",
                        signal.http_path()
                    ),
                )),
                None => Ok(()),
            }
        }
        OtlpProtocol::Grpc => Ok(()),
    }
}

pub(super) fn check_limits(config: &OtlpConfig) -> Result<(), ConfigError> {
    let kernel = agent_common::hist::SCALE;
    if !(MIN_SCALE..=kernel).contains(&config.histogram_scale) {
        return Err(invalid(
            "otlp.histogram_scale",
            format!(
                "must be between {MIN_SCALE} and {kernel} (the kernel records at scale \
                 {kernel}; a higher scale would need buckets it never had), got {}",
                config.histogram_scale
            ),
        ));
    }
    if !QUEUE_SIZE.contains(&config.queue_size) {
        return Err(invalid(
            "otlp.queue_size",
            format!(
                "must be between 1 and 10000 (batches waiting per signal), got {}",
                config.queue_size
            ),
        ));
    }
    if !TIMEOUT.contains(&config.timeout) {
        return Err(invalid(
            "otlp.timeout",
            format!(
                "must be between 100ms and 5m, got {}",
                humantime::format_duration(config.timeout)
            ),
        ));
    }
    let retry = &config.retry;
    if retry.initial_backoff < MIN_BACKOFF {
        return Err(invalid(
            "otlp.retry.initial_backoff",
            format!(
                "must be at least 1ms, got {}",
                humantime::format_duration(retry.initial_backoff)
            ),
        ));
    }
    if retry.max_backoff < retry.initial_backoff {
        return Err(invalid(
            "otlp.retry.max_backoff",
            format!(
                "must be at least otlp.retry.initial_backoff ({}), got {}",
                humantime::format_duration(retry.initial_backoff),
                humantime::format_duration(retry.max_backoff)
            ),
        ));
    }
    Ok(())
}

pub(super) fn check_headers(
    headers: &BTreeMap<String, String>,
    protocol: OtlpProtocol,
) -> Result<HeaderMap, ConfigError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let bad = |problem: String| invalid("otlp.headers", problem);
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            bad(format!(
                "\"{name}\" is not a valid header name; use ASCII letters, digits and '-', \
                 like \"x-api-key\""
            ))
        })?;
        if is_reserved(&header) {
            return Err(bad(format!(
                "\"{name}\" is set by the OTLP transport itself; remove it"
            )));
        }
        if protocol == OtlpProtocol::Grpc && header.as_str().ends_with("-bin") {
            return Err(bad(format!(
                "\"{name}\" would be binary gRPC metadata (names ending in -bin), which is not \
                 supported; rename it"
            )));
        }
        // gRPC's ASCII metadata is stricter than HTTP (no tab, no obs-text). The value
        // may be a secret: the message names the header, not the value.
        let printable = value.bytes().all(|b| (b' '..=b'~').contains(&b));
        let value = HeaderValue::from_str(value).ok().filter(|_| printable);
        let Some(value) = value else {
            return Err(bad(format!(
                "the value of \"{name}\" must be printable ASCII (no line breaks, control or \
                 non-ASCII characters)"
            )));
        };
        map.insert(header, value);
    }
    Ok(map)
}

pub(super) fn is_reserved(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "content-type"
            | "content-encoding"
            | "content-length"
            | "transfer-encoding"
            | "host"
            | "te"
    ) || name.starts_with("grpc-")
}

/// CA and client certificate, read and parsed once.
#[derive(Default)]
pub(super) struct TlsFiles {
    pub(super) ca: Option<CaFile>,
    pub(super) identity: Option<ClientIdentity>,
}

pub(super) struct CaFile {
    /// For tonic, which takes PEM.
    pub(super) pem: Vec<u8>,
    /// For the rustls connector of the HTTP path.
    pub(super) roots: RootCertStore,
}

pub(super) struct ClientIdentity {
    pub(super) cert_pem: Vec<u8>,
    pub(super) key_pem: Vec<u8>,
    pub(super) certs: Vec<CertificateDer<'static>>,
    pub(super) key: PrivateKeyDer<'static>,
}

pub(super) fn check_tls(
    tls: &TlsConfig,
    text: &str,
    endpoint: &Url,
) -> Result<TlsFiles, ConfigError> {
    let is_set = |path: &Path| !path.as_os_str().is_empty();
    let files = [
        ("otlp.tls.ca_file", &tls.ca_file),
        ("otlp.tls.cert_file", &tls.cert_file),
        ("otlp.tls.key_file", &tls.key_file),
    ];
    for (key, path) in files {
        if is_set(path) && endpoint.scheme() != "https" {
            return Err(invalid(
                key,
                format!(
                    "is set but otlp.endpoint \"{text}\" is plain http, so no TLS would be used; \
                     use an https:// endpoint, or remove the setting"
                ),
            ));
        }
    }
    let identity = match (is_set(&tls.cert_file), is_set(&tls.key_file)) {
        (true, true) => Some(read_identity(&tls.cert_file, &tls.key_file)?),
        (false, false) => None,
        (true, false) => {
            return Err(invalid(
                "otlp.tls.key_file",
                "must be set when otlp.tls.cert_file is: a client certificate needs its private \
                 key (set both, or neither)",
            ));
        }
        (false, true) => {
            return Err(invalid(
                "otlp.tls.cert_file",
                "must be set when otlp.tls.key_file is: a private key needs its client \
                 certificate (set both, or neither)",
            ));
        }
    };
    let ca = match is_set(&tls.ca_file) {
        true => Some(read_ca(&tls.ca_file)?),
        false => None,
    };
    Ok(TlsFiles { ca, identity })
}

pub(super) fn read_file(
    key: &'static str,
    path: &Path,
    what: &str,
) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| {
        invalid(
            key,
            format!(
                "cannot read \"{}\" ({e}); it should be {what}",
                path.display()
            ),
        )
    })
}

pub(super) fn read_certificates(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            invalid(
                key,
                format!("\"{}\" is not valid PEM ({e})", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!(
                "\"{}\" contains no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block)",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

pub(super) fn read_ca(path: &Path) -> Result<CaFile, ConfigError> {
    const KEY: &str = "otlp.tls.ca_file";
    let pem = read_file(KEY, path, "a PEM bundle of CA certificates")?;
    let mut roots = RootCertStore::empty();
    let (valid, _) = roots.add_parsable_certificates(read_certificates(KEY, path, &pem)?);
    if valid == 0 {
        return Err(invalid(
            KEY,
            format!(
                "\"{}\" holds PEM blocks but no valid X.509 CA certificate",
                path.display()
            ),
        ));
    }
    Ok(CaFile { pem, roots })
}

pub(super) fn read_identity(
    cert_path: &Path,
    key_path: &Path,
) -> Result<ClientIdentity, ConfigError> {
    const CERT: &str = "otlp.tls.cert_file";
    const KEY: &str = "otlp.tls.key_file";
    let cert_pem = read_file(CERT, cert_path, "a PEM client certificate")?;
    let certs = read_certificates(CERT, cert_path, &cert_pem)?;
    let key_pem = read_file(KEY, key_path, "a PEM private key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        invalid(
            KEY,
            format!(
                "\"{}\" contains no usable PEM private key ({e}); expected a \"-----BEGIN \
                 PRIVATE KEY-----\" (or RSA/EC PRIVATE KEY) block",
                key_path.display()
            ),
        )
    })?;
    // rustls checks that the key parses and belongs to the certificate.
    tls::builder()
        .with_root_certificates(RootCertStore::empty())
        .with_client_auth_cert(certs.clone(), key.clone_key())
        .map_err(|e| {
            invalid(
                KEY,
                format!(
                    "\"{}\" does not fit the certificate in \"{}\" ({e})",
                    key_path.display(),
                    cert_path.display()
                ),
            )
        })?;
    Ok(ClientIdentity {
        cert_pem,
        key_pem,
        certs,
        key,
    })
}
