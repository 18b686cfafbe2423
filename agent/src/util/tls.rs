//! TLS client configuration for the agent's HTTP clients (OTLP, webhooks): rustls on
//! ring, the provider tonic uses too, so no process-wide default is needed.

use std::sync::Arc;

use hyper_rustls::ConfigBuilderExt;
use rustls::{
    ClientConfig, ConfigBuilder, RootCertStore, WantsVerifier,
    pki_types::{CertificateDer, PrivateKeyDer},
};

/// Whom the client trusts.
pub enum Roots {
    /// The system's CA certificates.
    System,
    /// These CAs only.
    Given(RootCertStore),
    /// Nobody: for plain http, where the connector still wants a TLS configuration.
    None,
}

/// A client certificate and its private key, for mutual TLS.
pub struct ClientCert {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// A rustls client builder on ring with the default protocol versions.
pub fn builder() -> ConfigBuilder<ClientConfig, WantsVerifier> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls's default protocol versions")
}

/// Why a client configuration could not be made; the caller adds which setting to
/// change.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot load the system CA certificates ({0}); install them")]
    SystemRoots(std::io::Error),
    #[error("client certificate: {0}")]
    ClientCert(rustls::Error),
}

/// A client configuration trusting `roots`, presenting `cert` when given.
pub fn client_config(roots: Roots, cert: Option<ClientCert>) -> Result<ClientConfig, TlsError> {
    let builder = builder();
    let builder = match roots {
        Roots::Given(roots) => builder.with_root_certificates(roots),
        Roots::System => builder.with_native_roots().map_err(TlsError::SystemRoots)?,
        Roots::None => builder.with_root_certificates(RootCertStore::empty()),
    };
    match cert {
        Some(cert) => builder
            .with_client_auth_cert(cert.certs, cert.key)
            .map_err(TlsError::ClientCert),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The system roots for https, none for plain http (rather than loading the system
/// roots for nothing), no client certificate.
pub fn default_client(https: bool) -> Result<ClientConfig, TlsError> {
    client_config(if https { Roots::System } else { Roots::None }, None)
}
