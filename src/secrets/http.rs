//! One HTTP/1.1 exchange over a fresh connection, plain or TLS (rustls with ring and the Mozilla roots of
//! webpki-roots, so an image needs no CA bundle), with the answer's body bounded.
#![forbid(unsafe_code)]

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Where a request goes, from an endpoint URL: `http(s)://HOST[:PORT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("endpoint {url:?} is not http:// or https://"));
        };
        let authority = rest.trim_end_matches('/');
        let uri: hyper::http::uri::Authority = authority
            .parse()
            .map_err(|e| format!("endpoint {url:?}: {e}"))?;
        Ok(Endpoint {
            tls,
            host: uri.host().trim_matches(['[', ']']).to_string(),
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        })
    }

    /// The Host header (and what is signed): the port only when it is not the scheme's own.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{}", self.port),
        }
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.authority())
    }
}

/// Send `request` to `endpoint` and read the answer: its status and at most `max_body` bytes of body.
pub async fn exchange(
    endpoint: &Endpoint,
    request: Request<Full<Bytes>>,
    max_body: usize,
) -> Result<(u16, Bytes), String> {
    let stream = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| format!("connect {}: {e}", endpoint.authority()))?;
    if endpoint.tls {
        let name = rustls::pki_types::ServerName::try_from(endpoint.host.clone())
            .map_err(|e| format!("{}: {e}", endpoint.host))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS with {}: {e}", endpoint.authority()))?;
        send(tls, request, max_body).await
    } else {
        send(stream, request, max_body).await
    }
}

async fn send<S>(
    stream: S,
    request: Request<Full<Bytes>>,
    max_body: usize,
) -> Result<(u16, Bytes), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, body))
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("https://ssm.eu-west-1.amazonaws.com").unwrap();
        assert_eq!((e.tls, e.port), (true, 443));
        assert_eq!(e.authority(), "ssm.eu-west-1.amazonaws.com");
        let e = Endpoint::parse("http://127.0.0.1:5000/").unwrap();
        assert_eq!(e.authority(), "127.0.0.1:5000");
        assert_eq!(e.url("/"), "http://127.0.0.1:5000/");
        assert!(Endpoint::parse("ftp://x").is_err());
    }
}
