//! TLS server config from PEM files (rustls with ring), with ALPN h2 and http/1.1.
//!
//! The acceptor lives behind a lock that a reload swaps: connections already open keep their session, new ones
//! get the new certificate.
#![forbid(unsafe_code)]

use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::config::TlsSpec;

/// Build a rustls server config from the cert chain and key files of `spec`.
pub fn load(spec: &TlsSpec) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certs(spec)?;
    let key = read_key(spec)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS: {} / {}: {e}", spec.cert.display(), spec.key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(spec: &TlsSpec) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem =
        std::fs::read(&spec.cert).map_err(|e| format!("TLS cert {}: {e}", spec.cert.display()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_slice()).collect();
    let certs = certs.map_err(|e| format!("TLS cert {}: {e}", spec.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "TLS cert {}: no CERTIFICATE block found",
            spec.cert.display()
        ));
    }
    Ok(certs)
}

fn read_key(spec: &TlsSpec) -> Result<PrivateKeyDer<'static>, String> {
    let pem =
        std::fs::read(&spec.key).map_err(|e| format!("TLS key {}: {e}", spec.key.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("TLS key {}: {e}", spec.key.display()))?
        .ok_or_else(|| format!("TLS key {}: no PRIVATE KEY block found", spec.key.display()))
}

/// The current TLS config, swapped on reload.
#[derive(Default)]
pub struct TlsHolder {
    current: RwLock<Option<Arc<ServerConfig>>>,
}

impl TlsHolder {
    pub fn get(&self) -> Option<Arc<ServerConfig>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set(&self, config: Option<Arc<ServerConfig>>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
    }
}
