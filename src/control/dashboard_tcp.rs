//! The dashboard's optional TCP listener (`[init] dashboard = "127.0.0.1:9001"`), for SSH/SSM port
//! forwarding. Every request must carry the configured credentials, then goes to the same handler as
//! the control socket (with the CSRF rule always on for POSTs).
//!
//! Credentials, any of:
//! - `Authorization: Basic ...` with `dashboard_user`/`dashboard_password` (browsers prompt for it);
//! - `Authorization: Bearer TOKEN` with `dashboard_token` (scripts);
//! - the session cookie a browser gets by opening `/?token=TOKEN` once (it is redirected to `/`, so
//!   the token leaves the address bar). The cookie holds a random id made for that login, not the
//!   token, is `HttpOnly; SameSite=Strict`, and expires after `dashboard_session_lifetime` (sessions.rs).
//!
//! Wrong credentials are counted per client: after a few, the client must wait, longer each time, before
//! any credentials of its are looked at again (429; login_throttle.rs).
//!
//! Without configured credentials (allowed on loopback only, see the config check) the listener only
//! answers requests whose `Host` is a loopback name, so a DNS-rebinding page can't reach it.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::io;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCEPT, AUTHORIZATION, CACHE_CONTROL, COOKIE, HOST, LOCATION, RETRY_AFTER,
    SET_COOKIE, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::dashboard::{constant_time_eq, random_hex};
use super::login_throttle::Throttle;
use super::reply::{error_response, with_content_type, ReplyBody};
use super::server::respond_tcp;
use super::sessions::Sessions;
use crate::api::ApiError;
use crate::config::InitSpec;
use crate::supervise::handle::Handle;

/// Browsers hold a few connections each (page, event stream, log tails); this bounds PID 1's fds.
const MAX_CONNECTIONS: usize = 32;
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const SESSION_COOKIE: &str = "stackinit_session";

/// The credentials the TCP listener accepts, from `[init]`, with its sessions and failed-login counts.
#[derive(Clone)]
pub struct Auth {
    /// `user:password` in base64, as a browser sends it after `Basic `.
    basic: Option<String>,
    token: Option<String>,
    logins: Arc<Logins>,
}

/// What the listener remembers about logins; shared by its connections.
struct Logins {
    sessions: Mutex<Sessions>,
    throttle: Mutex<Throttle>,
}

impl Logins {
    fn new(session_lifetime: Duration) -> Arc<Logins> {
        Arc::new(Logins {
            sessions: Mutex::new(Sessions::new(session_lifetime)),
            throttle: Mutex::new(Throttle::default()),
        })
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        // Poisoned only by a panic while held; the table is still usable.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.throttle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets themselves.
        f.debug_struct("Auth")
            .field("basic", &self.basic.is_some())
            .field("token", &self.token.is_some())
            .finish()
    }
}

impl Auth {
    pub fn from_init(init: &InitSpec) -> Auth {
        let basic = match (&init.dashboard_user, &init.dashboard_password) {
            (Some(user), Some(password)) => Some(base64(format!("{user}:{password}").as_bytes())),
            _ => None,
        };
        Auth {
            basic,
            token: init.dashboard_token.clone().filter(|t| !t.is_empty()),
            logins: Logins::new(init.dashboard_session_lifetime.0),
        }
    }

    pub fn with_token(token: &str) -> Auth {
        Auth {
            basic: None,
            token: Some(token.to_string()),
            logins: Logins::new(Duration::from_secs(3600)),
        }
    }

    fn is_open(&self) -> bool {
        self.basic.is_none() && self.token.is_none()
    }

    /// Whether the request carries the cookie of a live session.
    fn in_session(&self, request: &Request<Incoming>) -> bool {
        cookie(request, SESSION_COOKIE)
            .is_some_and(|id| self.logins.sessions().is_valid(id, Instant::now()))
    }

    /// Whether the request's `Authorization` header carries valid credentials.
    fn admits(&self, request: &Request<Incoming>) -> bool {
        let headers = request.headers();
        for value in headers.get_all(AUTHORIZATION) {
            let Some((scheme, secret)) = value.to_str().ok().and_then(|v| v.split_once(' ')) else {
                continue;
            };
            let expected = if scheme.eq_ignore_ascii_case("basic") {
                &self.basic
            } else if scheme.eq_ignore_ascii_case("bearer") {
                &self.token
            } else {
                continue;
            };
            if let Some(expected) = expected {
                if constant_time_eq(secret.trim().as_bytes(), expected.as_bytes()) {
                    return true;
                }
            }
        }
        false
    }

    /// `GET /?token=TOKEN` with the right token: the browser's way in when it can't send a header.
    fn login_token_matches(&self, request: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        request.method() == Method::GET
            && request.uri().path() == "/"
            && query_value(request.uri().query().unwrap_or(""), "token")
                .is_some_and(|sent| constant_time_eq(sent.as_bytes(), token.as_bytes()))
    }
}

/// Whether a request offers credentials (an `Authorization` header, or `/?token=`): a wrong offer is a failed
/// login. A request with none (a browser's first visit, a stale cookie) is only answered 401.
fn offers_credentials(request: &Request<Incoming>) -> bool {
    request.headers().contains_key(AUTHORIZATION)
        || query_value(request.uri().query().unwrap_or(""), "token").is_some()
}

/// Bind `addr` and serve the dashboard there on the current runtime. Returns once bound.
pub async fn serve_tcp(addr: SocketAddr, auth: Auth, handle: Handle) -> io::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|err| io::Error::new(err.kind(), format!("dashboard {addr}: {err}")))?;
    if auth.is_open() {
        tracing::warn!(%addr, "dashboard listening without credentials: any local user can control services through it");
    } else {
        tracing::info!(%addr, "dashboard listening");
    }
    tokio::spawn(accept_loop(listener, Arc::new(auth), handle));
    Ok(())
}

async fn accept_loop(listener: TcpListener, auth: Arc<Auth>, handle: Handle) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let (auth, handle) = (auth.clone(), handle.clone());
                tokio::spawn(async move {
                    serve_connection(stream, auth, handle).await;
                    drop(slot);
                });
            }
            Err(err) => {
                tracing::warn!(%err, "dashboard: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, auth: Arc<Auth>, handle: Handle) {
    let peer = stream.peer_addr().ok();
    let service = hyper::service::service_fn(move |request| {
        let (auth, handle) = (auth.clone(), handle.clone());
        async move { Ok::<_, Infallible>(respond(request, &auth, &handle, peer).await) }
    });
    super::server::serve_http1(stream, service, "dashboard").await;
}

async fn respond(
    request: Request<Incoming>,
    auth: &Auth,
    handle: &Handle,
    peer: Option<SocketAddr>,
) -> Response<ReplyBody> {
    if auth.is_open() {
        let host = request
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !is_loopback_host(host) {
            return error_response(&ApiError {
                status: 403,
                message: "this dashboard has no credentials and only answers Host: 127.0.0.1, [::1] or localhost".into(),
            });
        }
    } else if !auth.in_session(&request) {
        if let Some(refused) = check_credentials(auth, &request, peer) {
            return refused;
        }
    }
    if request.method() == Method::POST {
        tracing::info!(?peer, path = %request.uri().path(), "dashboard request");
    }
    respond_tcp(request, handle).await
}

/// `None` when the request's credentials are good; else the answer: 429 while its client is locked out
/// after failed logins, the login redirect for a good `/?token=`, or 401.
fn check_credentials(
    auth: &Auth,
    request: &Request<Incoming>,
    peer: Option<SocketAddr>,
) -> Option<Response<ReplyBody>> {
    let client = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip());
    let now = Instant::now();
    if let Some(wait) = auth.logins.throttle().retry_after(client, now) {
        tracing::info!(?peer, "dashboard: client locked out after failed logins");
        return Some(too_many_failures(wait));
    }
    if auth.login_token_matches(request) {
        auth.logins.throttle().succeeded(client);
        return Some(login_redirect(auth));
    }
    if auth.admits(request) {
        auth.logins.throttle().succeeded(client);
        return None;
    }
    if offers_credentials(request) {
        tracing::warn!(?peer, path = %request.uri().path(), "dashboard: wrong credentials");
        auth.logins.throttle().failed(client, now);
    } else {
        tracing::info!(?peer, path = %request.uri().path(), "dashboard: request without credentials");
    }
    Some(unauthorized(auth, request))
}

/// 429 with the seconds left in the lockout.
fn too_many_failures(wait: Duration) -> Response<ReplyBody> {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response = error_response(&ApiError {
        status: 429,
        message: format!("too many failed logins from this address: try again in {seconds} s"),
    });
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds));
    response
}

fn login_redirect(auth: &Auth) -> Response<ReplyBody> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    headers.insert(LOCATION, HeaderValue::from_static("/"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let id = random_hex(32);
    let mut sessions = auth.logins.sessions();
    let max_age = sessions.lifetime().as_secs();
    sessions.open(id.clone(), Instant::now());
    if let Ok(cookie) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={id}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict"
    )) {
        headers.insert(SET_COOKIE, cookie);
    }
    response
}

/// 401 with the challenges for the configured schemes. Browsers asking for the page get a small form
/// for the token (basic auth has the browser's own prompt).
fn unauthorized(auth: &Auth, request: &Request<Incoming>) -> Response<ReplyBody> {
    let wants_html = request
        .headers()
        .get(ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let mut response = if wants_html && auth.basic.is_none() {
        let mut response = with_content_type(
            Response::new(Full::new(Bytes::from_static(LOGIN_PAGE.as_bytes())).boxed_unsync()),
            "text/html; charset=utf-8",
        );
        response.headers_mut().insert(
            "content-security-policy",
            HeaderValue::from_static(
                "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
            ),
        );
        response
    } else {
        error_response(&ApiError {
            status: 401,
            message: "credentials required: see dashboard_token / dashboard_user in [init]".into(),
        })
    };
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    if auth.basic.is_some() {
        headers.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"stackinit\", charset=\"UTF-8\""),
        );
    }
    if auth.token.is_some() {
        headers.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"stackinit\""),
        );
    }
    response
}

const LOGIN_PAGE: &str = "<!doctype html><html lang=en><meta charset=utf-8>\
<meta name=viewport content=\"width=device-width,initial-scale=1\"><title>stackinit: sign in</title>\
<form method=get action=/><p><label for=t>Dashboard token</label> \
<input id=t name=token type=password autocomplete=current-password required autofocus> \
<button>Open dashboard</button></form></html>";

fn cookie<'r>(request: &'r Request<Incoming>, name: &str) -> Option<&'r str> {
    request
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// One query parameter, percent-decoded (lossily: a token is plain text).
fn query_value(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode_lossy(&v.replace('+', " ")))
}

fn percent_decode_lossy(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `Host` names this machine's loopback: 127.0.0.0/8, [::1] or localhost, with any port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Standard base64 with padding (RFC 4648), as browsers encode basic-auth credentials.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(
            base64(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "127.0.0.1:9001",
            "127.1.2.3",
            "localhost:9001",
            "[::1]:9001",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:9001",
            "10.0.0.1:9001",
            "",
            "[::2]:1",
            "localhost.evil.example",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            query_value("a=1&token=x%2By+z", "token").as_deref(),
            Some("x+y z")
        );
        assert_eq!(query_value("token", "token"), None);
        assert_eq!(percent_decode_lossy("%zz%4"), "%zz%4");
    }

    #[test]
    fn auth_debug_hides_secrets() {
        let auth = Auth::with_token("s3cret");
        assert!(!format!("{auth:?}").contains("s3cret"));
    }
}
