//! TLS for every listener: rustls with the ring provider, TLS 1.2 and 1.3 (the Python SDK speaks 1.2 only).

use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the server certificate or key is not valid PEM: {0}")]
    Pem(String),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

pub fn server_config(cert_pem: &str, key_pem: &str, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certificates = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem(error.to_string()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|error| TlsError::Pem(error.to_string()))?
        .ok_or_else(|| TlsError::Pem("no private key".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certificates, key)?;
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(Arc::new(config))
}
