//! Header rewriting between client and upstream, as Debian's `proxy_params` does with nginx:
//! Host kept as sent, `X-Real-IP`, `X-Forwarded-For` appended, `X-Forwarded-Proto`; hop-by-hop headers removed.
#![forbid(unsafe_code)]

use std::net::IpAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::real_ip::{Client, X_FORWARDED_FOR, X_FORWARDED_PROTO};

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy ones nginx also drops). `Expect` is answered by this
/// proxy, not forwarded, as nginx does. Typed names, not strings: removing by `&str` parses the name first.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::EXPECT,
];

pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Where `name` is in `HOP_BY_HOP`. By its text: a string match tests a length and at most two byte strings,
/// where comparing with each of the eight names cost more than the rest of the stripping.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "te" => Some(3),
        "trailer" => Some(4),
        "transfer-encoding" => Some(5),
        "upgrade" => Some(6),
        "expect" => Some(7),
        _ => None,
    }
}

/// nginx's `$remote_addr` as a header value: the client's IP, or `unix:` for a unix-socket client. Made once per
/// client connection and shared by its requests.
pub fn remote_addr(client_ip: Option<IpAddr>) -> HeaderValue {
    client_ip
        .and_then(|ip| HeaderValue::from_str(&ip.to_canonical().to_string()).ok())
        .unwrap_or_else(|| HeaderValue::from_static("unix:"))
}

/// Remove hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few names present, noting which fixed ones are there: most requests carry none, and a
    // response from nginx only `Connection`. Only those present are removed (each removal hashes its name).
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    // The names `Connection` lists, while it is there to read, each matched against the names present: none
    // is parsed or allocated.
    while let Some(name) = listed_in_connection(headers) {
        headers.remove(&name);
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, here)| *here) {
        headers.remove(name);
    }
}

/// A header present that a `Connection` field (any of them) lists, other than `Connection` itself. Compared as
/// bytes: a listed token with other than ASCII in it names no header.
fn listed_in_connection(headers: &HeaderMap) -> Option<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .find_map(|token| {
            let token = token.trim_ascii();
            headers.keys().find(|name| {
                *name != header::CONNECTION && token.eq_ignore_ascii_case(name.as_str().as_bytes())
            })
        })
        .cloned()
}

/// Remove request headers whose names contain `_`, as nginx does (`underscores_in_headers off`). CGI and WSGI
/// turn `-` into `_`, so `X_Forwarded_Proto: https` would reach Django as `HTTP_X_FORWARDED_PROTO` beside, or
/// instead of, the `X-Forwarded-Proto` the proxy sets.
pub fn drop_underscored(headers: &mut HeaderMap) {
    let underscored = |name: &HeaderName| name.as_str().contains('_');
    // Nearly every request has none: one scan of the names, no allocation.
    if !headers.keys().any(underscored) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| underscored(n)).cloned().collect();
    for name in names {
        tracing::debug!(header = %name, "dropped a request header with an underscore in its name");
        headers.remove(name);
    }
}

/// Rewrite a client request's headers for the upstream. `peer` is the connection's `$remote_addr` (from
/// `remote_addr`), appended to `X-Forwarded-For`; `client` is who the request is from once a trusted load
/// balancer is believed (`real_ip::client`: the peer itself otherwise), for `X-Real-IP` and
/// `X-Forwarded-Proto`; `host` says which Host to send; `upgrade` keeps an `Upgrade` handshake intact for
/// WebSocket pass-through.
pub fn to_upstream(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    client: &Client,
    host: UpstreamHost,
    upgrade: Option<HeaderValue>,
) {
    strip_hop_by_hop(headers);
    match host {
        UpstreamHost::AsSent => {}
        UpstreamHost::Authority(Some(host)) => {
            headers.insert(header::HOST, host);
        }
        UpstreamHost::Authority(None) => {
            headers.remove(header::HOST);
        }
    }
    // One lookup for the read and the write: the name is hashed once.
    match headers.entry(&X_FORWARDED_FOR) {
        header::Entry::Vacant(vacant) => {
            // The common case: no proxy in front, the value is the client's address as is.
            vacant.insert(peer.clone());
        }
        header::Entry::Occupied(mut occupied) => {
            let joined = forwarded_for(occupied.iter(), peer);
            // Replaces every incoming X-Forwarded-For value with the joined one.
            occupied.insert(joined);
        }
    }
    headers.insert(X_REAL_IP.clone(), client.addr.clone());
    headers.insert(X_FORWARDED_PROTO.clone(), client.proto.clone());
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
}

/// The Host an upstream request carries.
pub enum UpstreamHost {
    /// The client's Host header (at most one: two are refused before this), or none, left as it is: the common
    /// case costs no lookup.
    AsSent,
    /// The request target's authority (absolute-form, HTTP/2's `:authority`) in place of any Host header;
    /// `None` (no Host at all) when it is not a valid header value.
    Authority(Option<HeaderValue>),
}

/// nginx's `$proxy_add_x_forwarded_for`: every incoming X-Forwarded-For joined with ", ", then the client.
fn forwarded_for<'a>(
    incoming: impl Iterator<Item = &'a HeaderValue>,
    client: &HeaderValue,
) -> HeaderValue {
    let mut incoming = incoming.filter(|v| v.to_str().is_ok()).peekable();
    if incoming.peek().is_none() {
        return client.clone();
    }
    let mut out = Vec::new();
    for value in incoming {
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client.as_bytes());
    // Joined from valid values with ", ": still valid.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| client.clone())
}

/// A header map's fields, in its order: kept for a request that may be sent again, at one allocation where a
/// `HeaderMap` clone made two and copied its hash index (`mapped` makes the map back, only for a retry).
pub fn listed(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// The map of `listed` fields, each name's values in their order.
pub fn mapped(fields: &[(HeaderName, HeaderValue)]) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, value) in fields {
        headers.append(name.clone(), value.clone());
    }
    headers
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

/// The `Upgrade` value to forward for a request that asks for a protocol switch (`Connection: upgrade` +
/// `Upgrade: x`): only the protocols in `allowed` (lowercased names), or `None`. A request asking for nothing
/// allowed is forwarded as a plain request, as nginx forwards it without a `proxy_set_header Upgrade`: the
/// upstream cannot answer 101, so no tunnel (which the location rules would no longer see) opens.
pub fn upgrade_request(headers: &HeaderMap, allowed: &[String]) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks || allowed.is_empty() {
        return None;
    }
    let kept: Vec<&str> = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| {
            allowed
                .iter()
                .any(|a| protocol_name(p).eq_ignore_ascii_case(a))
        })
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

/// Whether an upstream's 101 switched to one of the protocols the forwarded request offered (`requested`,
/// from `upgrade_request`). Anything else would open a tunnel for a protocol nobody allowed.
pub fn switched_as_asked(response: &HeaderMap, requested: &HeaderValue) -> bool {
    let Some(chosen) = response.get(header::UPGRADE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let offered = requested.to_str().unwrap_or("");
    offered
        .split(',')
        .any(|p| protocol_name(p.trim()).eq_ignore_ascii_case(protocol_name(chosen.trim())))
}

/// `websocket` of `websocket` or of `websocket/13` (RFC 9110 §7.8: protocol-name ["/" protocol-version]).
fn protocol_name(protocol: &str) -> &str {
    protocol.split('/').next().unwrap_or(protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client as a peer nobody trusts is: itself, over the connection's scheme.
    fn own(peer: &HeaderValue, https: bool) -> Client {
        Client {
            addr: peer.clone(),
            proto: HeaderValue::from_static(if https { "https" } else { "http" }),
        }
    }

    #[test]
    fn a_believed_client_is_the_real_ip_and_the_peer_is_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let peer = remote_addr(Some("10.0.1.5".parse().unwrap()));
        let client = Client {
            addr: HeaderValue::from_static("198.51.100.7"),
            proto: HeaderValue::from_static("https"),
        };
        to_upstream(&mut h, &peer, &client, UpstreamHost::AsSent, None);
        assert_eq!(h["x-real-ip"], "198.51.100.7");
        assert_eq!(h["x-forwarded-for"], "198.51.100.7, 10.0.1.5");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

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
        let peer = remote_addr(Some("127.0.0.9".parse().unwrap()));
        to_upstream(
            &mut h,
            &peer,
            &own(&peer, false),
            UpstreamHost::Authority(Some(HeaderValue::from_static("Ex.com:80"))),
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
    fn the_host_is_kept_as_sent_or_replaced_by_the_authority() {
        let peer = remote_addr(None);
        let with_host = || {
            let mut h = HeaderMap::new();
            h.insert("host", HeaderValue::from_static("a.example"));
            h
        };
        let mut h = with_host();
        to_upstream(
            &mut h,
            &peer,
            &own(&peer, false),
            UpstreamHost::AsSent,
            None,
        );
        assert_eq!(h["host"], "a.example");
        let mut h = with_host();
        let authority = UpstreamHost::Authority(Some(HeaderValue::from_static("b.example")));
        to_upstream(&mut h, &peer, &own(&peer, false), authority, None);
        assert_eq!(h.get_all("host").iter().collect::<Vec<_>>(), ["b.example"]);
        let mut h = with_host();
        to_upstream(
            &mut h,
            &peer,
            &own(&peer, false),
            UpstreamHost::Authority(None),
            None,
        );
        assert!(h.get("host").is_none());
    }

    #[test]
    fn every_connection_field_lists_names_to_strip_in_any_case() {
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("X-One"));
        h.append("connection", HeaderValue::from_static(" x-two ,close"));
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert("x-two", HeaderValue::from_static("2"));
        h.insert("x-three", HeaderValue::from_static("3"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-three"], "3");
    }

    #[test]
    fn the_index_names_each_hop_by_hop_header() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&header::CONTENT_LENGTH), None);
        assert_eq!(hop_by_hop_index(&HeaderName::from_static("x-te")), None);
    }

    #[test]
    fn a_listed_map_maps_back_the_same() {
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("host", HeaderValue::from_static("h"));
        h.append("x-a", HeaderValue::from_static("2"));
        let back = mapped(&listed(&h));
        assert_eq!(back, h);
        let order = |m: &HeaderMap| {
            m.iter()
                .map(|(n, v)| format!("{n}={v:?}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(order(&back), order(&h));
    }

    #[test]
    fn underscored_names_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("x_forwarded_proto", HeaderValue::from_static("https"));
        h.insert("foo_bar", HeaderValue::from_static("1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        drop_underscored(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn only_allowed_upgrades_are_forwarded() {
        let ws = ["websocket".to_string()];
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        assert_eq!(upgrade_request(&h, &ws), None);
        assert_eq!(upgrade_request(&h, &["h2c".to_string()]).unwrap(), "h2c");
        h.insert("upgrade", HeaderValue::from_static("foo/2, WebSocket/13"));
        assert_eq!(upgrade_request(&h, &ws).unwrap(), "WebSocket/13");
        assert_eq!(upgrade_request(&h, &[]), None);
        h.remove("connection");
        assert_eq!(upgrade_request(&h, &ws), None, "no Connection: upgrade");
    }

    #[test]
    fn a_101_must_switch_to_what_was_asked() {
        let asked = HeaderValue::from_static("websocket");
        let mut response = HeaderMap::new();
        assert!(!switched_as_asked(&response, &asked));
        response.insert("upgrade", HeaderValue::from_static("h2c"));
        assert!(!switched_as_asked(&response, &asked));
        response.insert("upgrade", HeaderValue::from_static("WebSocket"));
        assert!(switched_as_asked(&response, &asked));
    }

    #[test]
    fn upgrade_survives_for_websocket() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        let up = upgrade_request(&h, &["websocket".to_string()]);
        assert_eq!(up.as_ref().unwrap(), "websocket");
        let peer = remote_addr(None);
        to_upstream(&mut h, &peer, &own(&peer, true), UpstreamHost::AsSent, up);
        assert_eq!(h["x-real-ip"], "unix:");
        assert_eq!(h["x-forwarded-for"], "unix:");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(h.get("host").is_none());
    }
}
