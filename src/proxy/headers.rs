//! Header rewriting between client and upstream, as Debian's `proxy_params` does with nginx:
//! Host kept as sent, `X-Real-IP`, `X-Forwarded-For` appended, `X-Forwarded-Proto`; hop-by-hop headers removed.
#![forbid(unsafe_code)]

use std::net::IpAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy ones nginx also drops). `Expect` is answered by this
/// proxy, not forwarded, as nginx does.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
];

pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Remove hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Rewrite a client request's headers for the upstream. `host` is the Host to send (the client's own, or the
/// HTTP/2 `:authority`); `upgrade` keeps an `Upgrade` handshake intact for WebSocket pass-through.
pub fn to_upstream(
    headers: &mut HeaderMap,
    client_ip: Option<IpAddr>,
    https: bool,
    host: Option<HeaderValue>,
    upgrade: Option<HeaderValue>,
) {
    strip_hop_by_hop(headers);
    match host {
        Some(host) => {
            headers.insert(header::HOST, host);
        }
        None => {
            headers.remove(header::HOST);
        }
    }
    let ip = client_ip.map(|ip| ip.to_canonical().to_string());
    let forwarded_for = forwarded_for(headers, ip.as_deref());
    headers.remove(&X_FORWARDED_FOR);
    if let Some(value) = forwarded_for.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    match ip.and_then(|ip| HeaderValue::from_str(&ip).ok()) {
        Some(ip) => {
            headers.insert(X_REAL_IP.clone(), ip);
        }
        None => {
            // A unix-socket client has no address; nginx sends "unix:" for both.
            headers.insert(X_REAL_IP.clone(), HeaderValue::from_static("unix:"));
        }
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
}

/// nginx's `$proxy_add_x_forwarded_for`: every incoming X-Forwarded-For joined with ", ", then the client.
fn forwarded_for(headers: &HeaderMap, client: Option<&str>) -> Option<String> {
    let client = client.unwrap_or("unix:");
    let mut out = String::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        let Ok(value) = value.to_str() else { continue };
        out.push_str(value);
        out.push_str(", ");
    }
    out.push_str(client);
    Some(out)
}

/// Rewrite an upstream response's headers for the client.
pub fn to_client(headers: &mut HeaderMap, upgrade: bool) {
    let kept_upgrade = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    strip_hop_by_hop(headers);
    if let Some(value) = kept_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, value);
    }
}

/// The `Upgrade` value of a request that asks for a protocol switch (`Connection: upgrade` + `Upgrade: x`).
pub fn upgrade_request(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_params_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        h.insert("user-agent", HeaderValue::from_static("t"));
        to_upstream(
            &mut h,
            Some("127.0.0.9".parse().unwrap()),
            false,
            Some(HeaderValue::from_static("Ex.com:80")),
            None,
        );
        assert_eq!(h["host"], "Ex.com:80");
        assert_eq!(h["x-real-ip"], "127.0.0.9");
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["user-agent"], "t");
        for gone in ["connection", "x-secret", "keep-alive", "te"] {
            assert!(h.get(gone).is_none(), "{gone} should be stripped");
        }
    }

    #[test]
    fn upgrade_survives_for_websocket() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        let up = upgrade_request(&h);
        assert_eq!(up.as_ref().unwrap(), "websocket");
        to_upstream(&mut h, None, true, None, up);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(h.get("host").is_none());
    }
}
