//! One request, start to finish: `/healthz`, Host validation and server choice, location choice, then the
//! location's action (proxy, static files, return), and the access log line when the response ends.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use super::access_log::{
    Entry, LoggedBody, ResponseBody, Unanswered, UpstreamClock, UpstreamTimes, CLIENT_CLOSED,
};
use super::body::{boxed, empty, full, BodyFault, LimitedBody, ProxyBody};
use super::headers::{self, UpstreamHost};
use super::metrics::{self, Tracked};
use super::real_ip::{self, Client};
use super::routes::{Action, ProxyTo, Routes, Settings};
use super::server_name::normalize_host;
use super::shared::Shared;
use super::upstream::{is_idempotent, ForwardSettings, Forwarded, InFlight, Waited};
use super::{head_limits, healthz, static_files, uri_path};

/// Who is on the other end of a client connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    pub https: bool,
    /// `$remote_addr` for X-Real-IP, X-Forwarded-For and the access log, formatted once per connection.
    pub remote_addr: HeaderValue,
}

impl ConnInfo {
    pub fn new(remote: Option<SocketAddr>, https: bool) -> ConnInfo {
        ConnInfo {
            remote,
            https,
            remote_addr: headers::remote_addr(remote.map(|a| a.ip())),
        }
    }
}

pub async fn handle(
    req: Request<Incoming>,
    conn: ConnInfo,
    shared: Arc<Shared>,
) -> Result<Response<LoggedBody>, Infallible> {
    let started = Instant::now();
    // Cheap clones (shared bytes) of what the log line needs; it is formatted only when the response ends.
    let (referer, user_agent) = logged_headers(req.headers());
    let (method, uri, version) = (req.method().clone(), req.uri().clone(), req.version());
    let routes = shared.routes();
    // Behind a trusted load balancer, the client it names; else the peer. The log shows the same one.
    let client = real_ip::client(
        conn.remote,
        &conn.remote_addr,
        conn.https,
        req.headers(),
        &routes.settings.trusted,
    );
    let line = Unanswered::new(Entry {
        remote: client.addr.clone(),
        method,
        uri,
        version,
        status: CLIENT_CLOSED,
        referer,
        user_agent,
        started,
        upstream: None,
    });
    // Set once the request's server and location are known; counted until the response body ends.
    let mut tracked = None;
    let (mut response, upstream, in_flight) =
        dispatch(req, conn, client, &shared, routes, (started, &mut tracked)).await;
    // The client's protocol, not the upstream's: an HTTP/1.0 upstream must not downgrade the client connection.
    *response.version_mut() = version;
    let mut tracked = tracked.unwrap_or_else(|| metrics::unrouted(started));
    let status = response.status().as_u16();
    tracked.set_status(status);
    let (parts, body) = response.into_parts();
    let body = LoggedBody::new(body, line, status, upstream, in_flight);
    Ok(Response::from_parts(parts, body.tracked(tracked)))
}

/// The request's `Referer` and `User-Agent` (the first of each), for the access log. A short head is scanned
/// once, comparing names as enum tags: cheaper than hashing each name for a lookup.
fn logged_headers(headers: &HeaderMap) -> (Option<HeaderValue>, Option<HeaderValue>) {
    if headers.keys_len() > 16 {
        let get = |name| headers.get(name).cloned();
        return (get(header::REFERER), get(header::USER_AGENT));
    }
    let (mut referer, mut user_agent) = (None, None);
    for (name, value) in headers {
        if referer.is_none() && name == header::REFERER {
            referer = Some(value.clone());
        } else if user_agent.is_none() && name == header::USER_AGENT {
            user_agent = Some(value.clone());
        }
    }
    (referer, user_agent)
}

type Routed = (
    Response<ResponseBody>,
    Option<UpstreamTimes>,
    Option<InFlight>,
);

/// A response the proxy made itself (not an upstream's).
fn local(response: Response<ProxyBody>) -> Response<ResponseBody> {
    response.map(ResponseBody::Local)
}

async fn dispatch(
    req: Request<Incoming>,
    conn: ConnInfo,
    client: Client,
    shared: &Shared,
    routes: Arc<Routes>,
    (started, tracked): (Instant, &mut Option<Tracked>),
) -> Routed {
    if let Some(status) = head_limits::check(&req, routes.settings.max_header_size) {
        return (local_error(status), None, None);
    }
    if req.uri().path() == healthz::PATH {
        return (
            local(healthz::respond(
                &shared.health(),
                req.method() == hyper::Method::HEAD,
            )),
            None,
            None,
        );
    }
    let host_header = match host_header(&req) {
        Ok(h) => h,
        Err(()) => return (local_error(StatusCode::BAD_REQUEST), None, None),
    };
    if !scheme_is_http(req.uri()) {
        return (local_error(StatusCode::BAD_REQUEST), None, None);
    }
    // The Host used for routing: the request-line authority if any (absolute-form or HTTP/2), else the header.
    let routing_host = match req.uri().authority() {
        Some(authority) => Some(authority.as_str().as_bytes()),
        None => host_header.map(HeaderValue::as_bytes),
    };
    let host = match routing_host {
        Some(raw) => match normalize_host(raw) {
            Ok(host) => Some(host),
            Err(_) => return (local_error(StatusCode::BAD_REQUEST), None, None),
        },
        None if req.version() == Version::HTTP_11 => {
            return (local_error(StatusCode::BAD_REQUEST), None, None)
        }
        None => None,
    };
    let Some(path) = uri_path::normalize(req.uri().path()) else {
        return (local_error(StatusCode::BAD_REQUEST), None, None);
    };
    let server_index = routes.names.select(host.as_deref());
    let Some(server) = routes.servers.get(server_index) else {
        return (local_error(StatusCode::NOT_FOUND), None, None);
    };
    let Some(location) = server.locations.select(&path) else {
        *tracked = server.series.last().map(|s| metrics::start(s, started));
        return (local_error(StatusCode::NOT_FOUND), None, None);
    };
    *tracked = server
        .series
        .get(location)
        .map(|s| metrics::start(s, started));
    match &server.actions[location] {
        Action::Return { status, redirect } => (
            local(return_response(*status, redirect.as_deref())),
            None,
            None,
        ),
        Action::Static(spec) => {
            let response =
                static_files::serve(spec, &path, req.uri().query(), req.method(), req.headers())
                    .await;
            (local(response), None, None)
        }
        Action::Proxy(to) => {
            // The path and host may borrow from the request, which the upstream request takes over.
            drop(path);
            drop(host);
            // Inline, not boxed: with its rare waits boxed (upstream.rs) this future is small enough that hyper's
            // one copy of the whole request future (+175 Ir) costs less than a box's malloc, free and copy did
            // (-730 Ir; callgrind, benches/proxy_profile.sh). Box it again if it grows.
            let settings = &routes.settings;
            proxy(req, conn, &client, to, settings, started).await
        }
    }
}

/// Forward a request to an upstream and pass its response back, streaming both bodies. `began`: when the proxy
/// got the request (the upstream and queue clocks start from it: microseconds before the first pick).
async fn proxy(
    mut req: Request<Incoming>,
    conn: ConnInfo,
    client: &Client,
    to: &ProxyTo,
    settings: &Settings,
    began: Instant,
) -> Routed {
    let upstream = &to.upstream;
    let limit = settings.client_max_body_size;
    if declared_length(&req).is_some_and(|len| len > limit) {
        return (local_error(StatusCode::PAYLOAD_TOO_LARGE), None, None);
    }
    let upgrade = (req.version() == Version::HTTP_11)
        .then(|| headers::upgrade_request(req.headers(), &to.upgrade))
        .flatten();
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    // The upstream is told the Host the request was routed by: for an absolute-form target (or HTTP/2's
    // `:authority`) that is the target's authority, not a Host header that may name another server
    // (RFC 9112 §3.2.2: a proxy replaces Host with the target's host).
    let forward_host = match req.uri().authority() {
        Some(authority) => UpstreamHost::Authority(HeaderValue::from_str(authority.as_str()).ok()),
        None => UpstreamHost::AsSent,
    };
    // The client's request head becomes the upstream's: rewritten in place, not copied into a new one.
    let (mut head, body) = req.into_parts();
    if !settings.underscores_in_headers {
        headers::drop_underscored(&mut head.headers);
    }
    headers::to_upstream(
        &mut head.headers,
        &conn.remote_addr,
        client,
        forward_host,
        upgrade.clone(),
    );
    head.uri = origin_form(head.uri);
    head.version = Version::HTTP_11;
    // Whatever hyper noted on the client's request is not for the upstream connection.
    head.extensions.clear();
    let bodyless = body.is_end_stream();
    // Only a request that may be sent twice (idempotent, no body, no upgrade) keeps a copy for a retry.
    let retry_copy = (is_idempotent(&head.method) && bodyless && upgrade.is_none()).then(|| {
        let (method, uri) = (head.method.clone(), head.uri.clone());
        (method, uri, headers::listed(&head.headers))
    });
    let rebuild = retry_copy.as_ref().map(|(method, uri, headers)| {
        move || {
            upstream_request(
                empty(),
                method.clone(),
                uri.clone(),
                headers::mapped(headers),
            )
        }
    });
    let retry = rebuild
        .as_ref()
        .map(|f| f as &(dyn Fn() -> Request<ProxyBody> + Sync));
    // A bodyless request sends `Empty`, a zero-sized box: no allocation, no size limit to watch.
    let (first_body, fault) = if bodyless {
        (empty(), None)
    } else {
        let fault = Arc::new(BodyFault::default());
        let limited = LimitedBody::new(body, limit, Arc::clone(&fault));
        (boxed(limited), Some(fault))
    };
    let no_fault = BodyFault::default();
    let fault = fault.as_deref().unwrap_or(&no_fault);
    let mut first = Some(Request::from_parts(head, first_body));
    let forward_settings = ForwardSettings {
        began,
        connect_timeout: settings.connect_timeout,
        queue_timeout: settings.queue_timeout,
        response_timeout: settings.upstream_timeout,
    };
    let mut waited = Waited::default();
    let forwarded = upstream
        .forward(&mut first, retry, &forward_settings, fault, &mut waited)
        .await;
    // The upstream clock is what has passed since `began` less the queue waits: it runs from the first pick.
    let upstream_since = began + waited.queued;
    let times = |clock: UpstreamClock| {
        Some(UpstreamTimes {
            queued: waited.queued,
            upstream: waited.picked.then_some(clock),
        })
    };
    let upstream_took = || times(UpstreamClock::Took(upstream_since.elapsed()));
    match forwarded {
        Ok(Forwarded {
            mut response,
            in_flight,
            replica,
        }) => {
            let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
            headers::to_client(response.headers_mut(), switching);
            if switching {
                match (client_upgrade, &upgrade) {
                    (Some(client), Some(asked))
                        if headers::switched_as_asked(response.headers(), asked) =>
                    {
                        let upstream_side = hyper::upgrade::on(&mut response);
                        tokio::spawn(tunnel(client, upstream_side, in_flight));
                        let (parts, _) = response.into_parts();
                        let body = ResponseBody::Local(empty());
                        return (Response::from_parts(parts, body), upstream_took(), None);
                    }
                    _ => {
                        tracing::warn!(replica = %replica.name, "upstream switched protocols unasked, or to one not asked for");
                        return (local_error(StatusCode::BAD_GATEWAY), upstream_took(), None);
                    }
                }
            }
            // Runs on until the upstream's body ends (`LoggedBody`).
            (
                response.map(ResponseBody::Upstream),
                times(UpstreamClock::Since(upstream_since)),
                Some(in_flight),
            )
        }
        Err(failure) => {
            tracing::warn!(upstream = %upstream.name, "{failure}");
            (local_error(failure.status()), upstream_took(), None)
        }
    }
}

/// The request an upstream gets: always HTTP/1.1 (keep-alive), with an origin-form target.
fn upstream_request(
    body: ProxyBody,
    method: hyper::Method,
    uri: Uri,
    headers: hyper::HeaderMap,
) -> Request<ProxyBody> {
    let mut r = Request::new(body);
    *r.method_mut() = method;
    *r.uri_mut() = uri;
    *r.version_mut() = Version::HTTP_11;
    *r.headers_mut() = headers;
    r
}

/// `/path?query` of a request target; an absolute-form target (`http://host/path`) loses its scheme and host,
/// which travel in the Host header instead.
fn origin_form(uri: Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return uri;
    }
    uri.path_and_query()
        .cloned()
        .map_or_else(|| Uri::from_static("/"), Uri::from)
}

/// Copy bytes both ways between an upgraded client connection and its upstream until either side closes.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    in_flight: InFlight,
) {
    let _in_flight = in_flight;
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!("upgraded connection ended: {e}");
            }
        }
        Err(e) => tracing::warn!("upgrade failed: {e}"),
    }
}

/// Whether a request target's scheme, if it has one (absolute-form, HTTP/2's `:scheme`), is one this server
/// answers for: `http` or `https`. `ftp://`, `gopher://` and the like are not requests for this site.
fn scheme_is_http(uri: &Uri) -> bool {
    uri.scheme_str()
        .is_none_or(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"))
}

/// The single Host header, `Ok(None)` if absent; two or more is a bad request (nginx: "duplicate host header").
fn host_header<B>(req: &Request<B>) -> Result<Option<&HeaderValue>, ()> {
    let mut all = req.headers().get_all(header::HOST).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(());
    }
    Ok(first)
}

fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn return_response(status: StatusCode, redirect: Option<&str>) -> Response<ProxyBody> {
    let mut response = match redirect {
        Some(target) if status.is_redirection() => {
            let mut r = error(status);
            if let Ok(v) = HeaderValue::from_str(target) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        // nginx `return CODE TEXT`: the text is the body.
        Some(text) => {
            let mut r = Response::new(full(text.to_string()));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        }
        None => error(status),
    };
    *response.status_mut() = status;
    response
}

fn local_error(status: StatusCode) -> Response<ResponseBody> {
    local(error(status))
}

/// A short plain-text error page.
pub fn error(status: StatusCode) -> Response<ProxyBody> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_gets_the_first_referer_and_user_agent_of_any_head() {
        for filler in [0, 40] {
            let mut h = HeaderMap::new();
            for i in 0..filler {
                h.insert(
                    header::HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("f"),
                );
            }
            assert_eq!(logged_headers(&h), (None, None));
            h.append(header::USER_AGENT, HeaderValue::from_static("ua1"));
            h.append(header::REFERER, HeaderValue::from_static("r1"));
            h.append(header::USER_AGENT, HeaderValue::from_static("ua2"));
            h.append(header::REFERER, HeaderValue::from_static("r2"));
            let (referer, user_agent) = logged_headers(&h);
            assert_eq!(referer.unwrap(), "r1", "{filler} other fields");
            assert_eq!(user_agent.unwrap(), "ua1", "{filler} other fields");
        }
    }
}
