//! The client behind a trusted load balancer, as nginx's realip module finds it (`set_real_ip_from`,
//! `real_ip_header X-Forwarded-For`, `real_ip_recursive on`): when the peer is trusted, the client is the
//! rightmost address of `X-Forwarded-For` that is not itself trusted, and the peer's `X-Forwarded-Proto`
//! says how the client connected. From any other peer neither header is believed.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};

use hyper::header::{HeaderMap, HeaderValue};

use super::headers::{X_FORWARDED_FOR, X_FORWARDED_PROTO};
use crate::config::values::TrustedSource;

/// `[proxy] trusted_proxies`, parsed. The config's checks refuse an entry that does not parse; one that
/// still fails here (a config not from `check`) is left out, trusting less.
#[derive(Clone, Debug, Default)]
pub struct Trusted(Vec<TrustedSource>);

impl Trusted {
    pub fn from_spec(entries: &[String]) -> Trusted {
        Trusted(
            entries
                .iter()
                .filter_map(|e| TrustedSource::parse(e).ok())
                .collect(),
        )
    }

    fn contains(&self, peer: Option<IpAddr>) -> bool {
        self.0.iter().any(|s| s.contains(peer))
    }
}

/// Who the request is from, as the app and the access log are told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// `$remote_addr` after realip: `X-Real-IP` and the access log's first field.
    pub addr: HeaderValue,
    /// `X-Forwarded-Proto`: the trusted peer's, else the scheme of the connection to this proxy.
    pub proto: HeaderValue,
}

/// The client of a request that arrived from `peer` (`None`: a unix socket) over `https` or not, whose
/// connection-level `$remote_addr` is `peer_addr`.
pub fn client(
    peer: Option<SocketAddr>,
    peer_addr: &HeaderValue,
    https: bool,
    headers: &HeaderMap,
    trusted: &Trusted,
) -> Client {
    let own_proto = HeaderValue::from_static(if https { "https" } else { "http" });
    let peer_ip = peer.map(|a| a.ip().to_canonical());
    // The common case, no load balancer configured: no header is looked at.
    if trusted.0.is_empty() || !trusted.contains(peer_ip) {
        return Client {
            addr: peer_addr.clone(),
            proto: own_proto,
        };
    }
    let addr = forwarded_client(headers, trusted)
        .and_then(|ip| HeaderValue::from_str(&ip.to_string()).ok())
        .unwrap_or_else(|| peer_addr.clone());
    let proto = forwarded_proto(headers).unwrap_or(own_proto);
    Client { addr, proto }
}

/// nginx's `ngx_http_get_forwarded_addr` with recursion: walk `X-Forwarded-For` (every field line, in order)
/// from the right, skipping trusted addresses; the first untrusted one is the client, or the leftmost if all
/// are trusted. An entry that is not an address ends the walk with no answer: the peer's address stays.
fn forwarded_client(headers: &HeaderMap, trusted: &Trusted) -> Option<IpAddr> {
    let mut values = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    values.peek()?;
    let mut entries: Vec<&str> = Vec::new();
    for value in values {
        entries.extend(value.to_str().ok()?.split(','));
    }
    let mut found = None;
    for entry in entries.iter().rev() {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let ip = parse_entry(entry)?;
        found = Some(ip);
        if !trusted.contains(Some(ip)) {
            break;
        }
    }
    found
}

/// An `X-Forwarded-For` entry: an address, optionally with a port as RFC 3986 writes one
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`); ALBs send bare addresses.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    entry
        .parse::<SocketAddr>()
        .ok()
        .map(|a| a.ip().to_canonical())
}

/// A trusted peer's `X-Forwarded-Proto`, when it is exactly one of `http` and `https` (any case). Anything
/// else (a list from a chain of proxies, a typo) is not guessed at: the connection's own scheme goes instead.
fn forwarded_proto(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(&X_FORWARDED_PROTO).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let text = value.to_str().ok()?.trim();
    if text.eq_ignore_ascii_case("https") {
        Some(HeaderValue::from_static("https"))
    } else if text.eq_ignore_ascii_case("http") {
        Some(HeaderValue::from_static("http"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &[&str]) -> Trusted {
        Trusted::from_spec(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn ask(peer: &str, xff: &[&str], proto: Option<&str>, t: &Trusted) -> Client {
        let peer: SocketAddr = peer.parse().unwrap();
        let mut h = HeaderMap::new();
        for v in xff {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        if let Some(p) = proto {
            h.insert(&X_FORWARDED_PROTO, HeaderValue::from_str(p).unwrap());
        }
        let peer_addr = super::super::headers::remote_addr(Some(peer.ip()));
        client(Some(peer), &peer_addr, false, &h, t)
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let t = trusted(&["10.0.0.0/8"]);
        let c = ask("203.0.113.9:5000", &["198.51.100.1"], Some("https"), &t);
        assert_eq!(c.addr, "203.0.113.9");
        assert_eq!(c.proto, "http");
        let nobody = trusted(&[]);
        let c = ask("10.0.0.1:5000", &["198.51.100.1"], Some("https"), &nobody);
        assert_eq!(
            (c.addr.to_str().unwrap(), c.proto.to_str().unwrap()),
            ("10.0.0.1", "http")
        );
    }

    #[test]
    fn a_trusted_peer_gives_the_rightmost_untrusted_address() {
        let t = trusted(&["10.0.0.0/8", "192.0.2.0/24"]);
        // A client spoofs a first entry; the ALB appends what it saw; another trusted hop before the ALB.
        let c = ask(
            "10.0.1.5:4000",
            &["6.6.6.6, 198.51.100.7", "192.0.2.3"],
            Some("https"),
            &t,
        );
        assert_eq!(c.addr, "198.51.100.7");
        assert_eq!(c.proto, "https");
        // All trusted: the leftmost, as nginx.
        let c = ask("10.0.1.5:4000", &["192.0.2.9, 10.9.9.9"], None, &t);
        assert_eq!(c.addr, "192.0.2.9");
        assert_eq!(
            c.proto, "http",
            "no X-Forwarded-Proto: the connection's scheme"
        );
        // Ports as RFC 3986 writes them, and IPv6.
        let c = ask("10.0.1.5:4000", &["[2001:db8::7]:443"], Some("HTTPS"), &t);
        assert_eq!(
            (c.addr.to_str().unwrap(), c.proto.to_str().unwrap()),
            ("2001:db8::7", "https")
        );
        // No header at all: the peer.
        assert_eq!(ask("10.0.1.5:4000", &[], None, &t).addr, "10.0.1.5");
    }

    #[test]
    fn garbage_is_not_believed() {
        let t = trusted(&["10.0.0.0/8"]);
        let c = ask(
            "10.0.1.5:4000",
            &["198.51.100.7, nonsense"],
            Some("https, http"),
            &t,
        );
        assert_eq!(
            c.addr, "10.0.1.5",
            "an entry that is no address: the peer stays"
        );
        assert_eq!(c.proto, "http", "a list of schemes is not guessed at");
        let c = ask("10.0.1.5:4000", &["198.51.100.7"], Some("gopher"), &t);
        assert_eq!(
            (c.addr.to_str().unwrap(), c.proto.to_str().unwrap()),
            ("198.51.100.7", "http")
        );
    }

    #[test]
    fn unix_peers_are_trusted_only_when_listed() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.7"));
        let unix = HeaderValue::from_static("unix:");
        assert_eq!(
            client(None, &unix, false, &h, &trusted(&["10.0.0.0/8"])).addr,
            "unix:"
        );
        assert_eq!(
            client(None, &unix, false, &h, &trusted(&["unix:"])).addr,
            "198.51.100.7"
        );
    }
}
