//! TLS server config from PEM files (rustls with ring), with ALPN h2 and http/1.1.
//!
//! The acceptor lives behind a lock that a reload swaps: connections already open keep their session, new ones
//! get the new certificate.
//!
//! `OneFill` reads a TLS stream without the extra socket read tokio-rustls makes after each record.
#![forbid(unsafe_code)]

use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

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

/// A TLS stream read one fill of plaintext at a time. tokio-rustls's own `poll_read`, once it has a record's
/// plaintext, tries the socket again to fill the rest of the buffer; for a request that came in one record
/// that read is always pending, and costs the socket poll, the idle timer's check and a waker registration
/// (under 1 % of an HTTPS request's instructions). hyper reads again when it needs more.
pub struct OneFill<S> {
    inner: S,
}

impl<S> OneFill<S> {
    pub fn new(inner: S) -> Self {
        OneFill { inner }
    }
}

impl<S: AsyncBufRead + Unpin> AsyncRead for OneFill<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let inner = Pin::new(&mut self.inner);
        let data = match inner.poll_fill_buf(cx) {
            Poll::Ready(Ok(data)) => data,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        let len = data.len().min(buf.remaining());
        buf.put_slice(&data[..len]);
        Pin::new(&mut self.inner).consume(len);
        Poll::Ready(Ok(()))
    }
}

super::write_through::write_through!(OneFill);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use tokio::io::AsyncReadExt;

    /// Plaintext that arrives in separate fills (records), counting the fills asked for.
    struct Records {
        records: VecDeque<Vec<u8>>,
        fills: usize,
    }

    impl AsyncBufRead for Records {
        fn poll_fill_buf(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
            let this = self.get_mut();
            this.fills += 1;
            match this.records.front() {
                Some(record) => Poll::Ready(Ok(record)),
                None => Poll::Pending,
            }
        }

        fn consume(self: Pin<&mut Self>, amt: usize) {
            let this = self.get_mut();
            if let Some(record) = this.records.front_mut() {
                record.drain(..amt);
                if record.is_empty() {
                    this.records.pop_front();
                }
            }
        }
    }

    impl AsyncRead for Records {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            unreachable!("OneFill reads through poll_fill_buf")
        }
    }

    #[tokio::test]
    async fn a_read_takes_one_record_without_asking_for_the_next() {
        let records = Records {
            records: VecDeque::from([b"GET / HTTP/1.1\r\n".to_vec(), b"\r\n".to_vec()]),
            fills: 0,
        };
        let mut stream = OneFill::new(records);
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n");
        assert_eq!(stream.inner.fills, 1);
        let n = stream.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"\r\n");
        assert_eq!(stream.inner.fills, 2);
    }
}
