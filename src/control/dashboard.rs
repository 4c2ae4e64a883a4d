//! The web dashboard: what supervisor's web UI on :9001 gave the seed stack, served by the control
//! server itself.
//!
//! Endpoints added to the control API (on the unix socket, and on the optional TCP listener):
//! - `GET /` -> the page, one self-contained HTML file embedded in the binary;
//! - `GET /v1/events` -> `text/event-stream`: one `snapshot` event (`StatusReply`), then a `service`
//!   event (`ServiceStatus`) per change, a `health` event whenever `/healthz`'s answer changes, and a
//!   `: keepalive` comment every `KEEPALIVE` while the stream is open (see `dashboard_events`);
//! - `GET /v1/facts` -> `{"facts": {...}, "health": {"healthy", "draining", "unhealthy"}, "version"}`.
//!
//! CSRF: a POST that comes from a browser (it arrived over TCP, or carries `Origin` or
//! `Sec-Fetch-Site`) must be same-origin and carry the per-process token that is embedded in the page,
//! as header `X-Stackinit-CSRF`; otherwise 403. The CLI sends neither header over the unix socket and
//! needs no token. Over TCP only start/stop/restart may change state; reload and shutdown stay on the
//! unix socket.
#![forbid(unsafe_code)]

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderValue, CACHE_CONTROL, HOST, ORIGIN};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::dashboard_events::{health, Health};
use super::reply::{json_response, method_not_allowed, with_content_type, ReplyBody};
use crate::api::ApiError;
use crate::facts::Facts;
use crate::supervise::handle::Handle;

pub use super::dashboard_tcp::{serve_tcp, Auth};

/// The page; `{{CSRF}}` and `{{NONCE}}` are filled in per response.
const PAGE: &str = include_str!("dashboard.html");
/// The header a browser must echo the page's token in, on every POST.
pub const CSRF_HEADER: &str = "x-stackinit-csrf";

#[derive(Serialize)]
struct FactsReply {
    facts: Facts,
    health: Health,
    /// The user-data overlay: applied, or refused with its errors (shown as a banner).
    user_data: Option<crate::api::UserDataStatus>,
    version: &'static str,
}

/// The dashboard's part of routing: answers its own endpoints, refuses browser POSTs that fail the
/// CSRF rule, and returns None for everything else (the control API proper).
pub(super) async fn route(
    request: &Request<hyper::body::Incoming>,
    tcp: bool,
    handle: &Handle,
) -> Result<Option<Response<ReplyBody>>, ApiError> {
    let path = request.uri().path();
    let method = request.method();
    if *method == Method::POST {
        check_post(request.headers(), path, tcp)?;
        return Ok(None);
    }
    let own = matches!(path, "/" | "/index.html" | "/v1/events" | "/v1/facts");
    if !own {
        return Ok(None);
    }
    if *method != Method::GET && *method != Method::HEAD {
        return Ok(Some(method_not_allowed(method, path, &Method::GET)));
    }
    Ok(Some(match path {
        "/v1/events" => super::dashboard_events::stream(handle.clone())?,
        "/v1/facts" => {
            let info = handle.facts().await?;
            json_response(
                StatusCode::OK,
                &FactsReply {
                    health: health(handle.is_draining(), info.unhealthy),
                    user_data: info.user_data,
                    facts: info.facts,
                    version: env!("CARGO_PKG_VERSION"),
                },
            )
        }
        _ => page(),
    }))
}

/// The page with this process's CSRF token and a fresh CSP nonce for its one script and style.
fn page() -> Response<ReplyBody> {
    let nonce = random_hex(16);
    let body = PAGE
        .replace("{{CSRF}}", csrf_token())
        .replace("{{NONCE}}", &nonce);
    let mut response = with_content_type(
        Response::new(Full::new(Bytes::from(body)).boxed_unsync()),
        "text/html; charset=utf-8",
    );
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    let headers = response.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&csp) {
        headers.insert("content-security-policy", csp);
    }
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The CSRF rule for POSTs (see the module comment).
fn check_post(headers: &HeaderMap, path: &str, tcp: bool) -> Result<(), ApiError> {
    let forbidden = |message: &str| ApiError {
        status: 403,
        message: message.to_string(),
    };
    if tcp && !is_dashboard_action(path) {
        return Err(forbidden(
            "only start, stop and restart are available over the dashboard listener; use the control socket",
        ));
    }
    let from_browser =
        tcp || headers.contains_key(ORIGIN) || headers.contains_key("sec-fetch-site");
    if !from_browser {
        return Ok(());
    }
    // Browsers mark who initiated a request; anything but the page itself is refused outright.
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return Err(forbidden("cross-origin request refused"));
        }
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let host = headers.get(HOST).map(HeaderValue::as_bytes).unwrap_or(b"");
        if !same_origin(origin.as_bytes(), host) {
            return Err(forbidden("cross-origin request refused"));
        }
    }
    let sent = headers
        .get(CSRF_HEADER)
        .map(HeaderValue::as_bytes)
        .unwrap_or(b"");
    if !constant_time_eq(sent, csrf_token().as_bytes()) {
        return Err(forbidden(
            "missing or wrong CSRF token (header X-Stackinit-CSRF, from the dashboard page)",
        ));
    }
    Ok(())
}

fn is_dashboard_action(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v1/services/") else {
        return false;
    };
    rest.rsplit_once('/').is_some_and(|(name, action)| {
        !name.is_empty() && !name.contains('/') && matches!(action, "start" | "stop" | "restart")
    })
}

/// Whether `Origin` (`http://host:port`) names the host the request was sent to.
fn same_origin(origin: &[u8], host: &[u8]) -> bool {
    let origin = origin.to_ascii_lowercase();
    let authority = origin
        .strip_prefix(b"http://")
        .or_else(|| origin.strip_prefix(b"https://"));
    match authority {
        Some(authority) => !host.is_empty() && authority == host.to_ascii_lowercase().as_slice(),
        // "null" (sandboxed frames, file: pages) and anything unparseable.
        None => false,
    }
}

/// Compare secrets without leaking, through timing, how long a prefix matched.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// This process's CSRF token: random, made on first use, the same for every page it serves.
pub(super) fn csrf_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| random_hex(16))
}

/// `bytes` random bytes as hex, from the kernel (`/dev/urandom`). Where that can't be read (very
/// early in a PID 1 boot), SipHash under std's OS-seeded random keys stands in.
pub(super) fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    let from_kernel = std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut raw))
        .is_ok();
    if !from_kernel {
        for (i, chunk) in raw.chunks_mut(8).enumerate() {
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_usize(i);
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            let word = hasher.finish().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn cli_posts_over_the_unix_socket_need_no_token() {
        assert!(check_post(&headers(&[]), "/v1/reload", false).is_ok());
        assert!(check_post(&headers(&[]), "/v1/services/web/restart", false).is_ok());
    }

    #[test]
    fn browser_posts_need_the_token_and_the_same_origin() {
        let token = csrf_token();
        let good = [
            ("origin", "http://127.0.0.1:9001"),
            ("host", "127.0.0.1:9001"),
            ("sec-fetch-site", "same-origin"),
            (CSRF_HEADER, token),
        ];
        assert!(check_post(&headers(&good), "/v1/services/web/restart", true).is_ok());
        assert!(check_post(&headers(&good), "/v1/services/web/restart", false).is_ok());
        let mut no_token = good.to_vec();
        no_token.pop();
        assert_eq!(
            check_post(&headers(&no_token), "/v1/services/web/stop", false)
                .unwrap_err()
                .status,
            403
        );
        let mut cross = good.to_vec();
        cross[0] = ("origin", "http://evil.example");
        assert_eq!(
            check_post(&headers(&cross), "/v1/services/web/stop", true)
                .unwrap_err()
                .status,
            403
        );
        let mut cross_site = good.to_vec();
        cross_site[2] = ("sec-fetch-site", "cross-site");
        assert!(check_post(&headers(&cross_site), "/v1/services/web/stop", true).is_err());
        // Over TCP even a request without browser headers needs the token.
        assert!(check_post(&headers(&[]), "/v1/services/web/stop", true).is_err());
        let bare = [(CSRF_HEADER, token)];
        assert!(check_post(&headers(&bare), "/v1/services/web/stop", true).is_ok());
    }

    #[test]
    fn tcp_cannot_reload_or_shut_down() {
        let with_token = [(CSRF_HEADER, csrf_token())];
        assert!(check_post(&headers(&with_token), "/v1/reload", true).is_err());
        assert!(check_post(&headers(&with_token), "/v1/shutdown", true).is_err());
        assert!(check_post(&headers(&with_token), "/v1/services/a/b/stop", true).is_err());
    }

    #[test]
    fn origins() {
        assert!(same_origin(b"http://127.0.0.1:9001", b"127.0.0.1:9001"));
        assert!(same_origin(b"http://LocalHost:9001", b"localhost:9001"));
        assert!(!same_origin(b"http://127.0.0.1:9002", b"127.0.0.1:9001"));
        assert!(!same_origin(b"null", b"127.0.0.1:9001"));
        assert!(!same_origin(b"http://x", b""));
    }

    #[test]
    fn tokens_are_random_hex() {
        let a = random_hex(16);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_hex(16));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn page_is_self_contained_and_small() {
        assert!(PAGE.len() < 48 * 1024, "{} bytes", PAGE.len());
        assert!(
            !PAGE.contains("innerHTML"),
            "data must go in with textContent"
        );
        assert!(
            !PAGE.contains("http://") && !PAGE.contains("https://"),
            "no external assets"
        );
        let response = page();
        assert!(response.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("'nonce-"));
    }
}
