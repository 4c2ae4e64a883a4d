//! One request, start to finish: `/healthz`, Host validation and server choice, location choice, then the
//! location's action (proxy, static files, return), and the access log line when the response ends.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;

use super::access_log::{Entry, LoggedBody};
use super::body::{boxed, empty, full, LimitedBody, ProxyBody};
use super::headers;
use super::routes::Action;
use super::server_name::normalize_host;
use super::shared::Shared;
use super::upstream::{is_idempotent, ForwardSettings, Forwarded, InFlight};
use super::{healthz, static_files, uri_path};

/// Who is on the other end of a client connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    pub https: bool,
}

pub async fn handle(
    req: Request<Incoming>,
    conn: ConnInfo,
    shared: Arc<Shared>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let entry_base = EntryBase::of(&req, conn);
    let (response, upstream_time, in_flight) = route(req, conn, &shared).await;
    let entry = Entry {
        log: Arc::clone(&shared.log),
        remote: conn.remote.map(|a| a.ip()),
        request_line: entry_base.request_line,
        status: response.status().as_u16(),
        referer: entry_base.referer,
        user_agent: entry_base.user_agent,
        started,
        upstream_time,
    };
    let (parts, body) = response.into_parts();
    Ok(Response::from_parts(
        parts,
        boxed(LoggedBody::new(body, entry, in_flight)),
    ))
}

struct EntryBase {
    request_line: String,
    referer: String,
    user_agent: String,
}

impl EntryBase {
    fn of(req: &Request<Incoming>, conn: ConnInfo) -> EntryBase {
        let _ = conn;
        let target = if req.version() == Version::HTTP_2 {
            req.uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string()
        } else {
            req.uri().to_string()
        };
        let text = |name: header::HeaderName| {
            req.headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default()
        };
        EntryBase {
            request_line: format!("{} {target} {:?}", req.method(), req.version()),
            referer: text(header::REFERER),
            user_agent: text(header::USER_AGENT),
        }
    }
}

type Routed = (
    Response<ProxyBody>,
    Option<std::time::Duration>,
    Option<InFlight>,
);

async fn route(req: Request<Incoming>, conn: ConnInfo, shared: &Shared) -> Routed {
    let version = req.version();
    let (mut response, upstream_time, in_flight) = dispatch(req, conn, shared).await;
    // The client's protocol, not the upstream's: an HTTP/1.0 upstream must not downgrade the client connection.
    *response.version_mut() = version;
    (response, upstream_time, in_flight)
}

async fn dispatch(mut req: Request<Incoming>, conn: ConnInfo, shared: &Shared) -> Routed {
    if req.uri().path() == healthz::PATH {
        return (
            healthz::respond(&shared.health(), req.method() == hyper::Method::HEAD),
            None,
            None,
        );
    }
    let host_header = match host_header(&req) {
        Ok(h) => h,
        Err(()) => return (error(StatusCode::BAD_REQUEST), None, None),
    };
    // The Host used for routing: the request-line authority if any (absolute-form or HTTP/2), else the header.
    let routing_host = match req.uri().authority() {
        Some(authority) => Some(authority.as_str().as_bytes().to_vec()),
        None => host_header.as_ref().map(|h| h.as_bytes().to_vec()),
    };
    let host = match routing_host {
        Some(raw) => match normalize_host(&raw) {
            Ok(host) => Some(host),
            Err(_) => return (error(StatusCode::BAD_REQUEST), None, None),
        },
        None if req.version() == Version::HTTP_11 => {
            return (error(StatusCode::BAD_REQUEST), None, None)
        }
        None => None,
    };
    let Some(path) = uri_path::normalize(req.uri().path()) else {
        return (error(StatusCode::BAD_REQUEST), None, None);
    };
    let routes = shared.routes();
    let server_index = routes.names.select(host.as_deref());
    let Some(server) = routes.servers.get(server_index) else {
        return (error(StatusCode::NOT_FOUND), None, None);
    };
    let Some(location) = server.locations.select(&path) else {
        return (error(StatusCode::NOT_FOUND), None, None);
    };
    match &server.actions[location] {
        Action::Return { status, redirect } => {
            (return_response(*status, redirect.as_deref()), None, None)
        }
        Action::Static(spec) => {
            let response =
                static_files::serve(spec, &path, req.uri().query(), req.method(), req.headers())
                    .await;
            (response, None, None)
        }
        Action::Proxy(upstream) => {
            let settings = routes.settings.clone();
            let limit = settings.client_max_body_size;
            if declared_length(&req).is_some_and(|len| len > limit) {
                return (error(StatusCode::PAYLOAD_TOO_LARGE), None, None);
            }
            let upgrade = (req.version() == Version::HTTP_11)
                .then(|| headers::upgrade_request(req.headers()))
                .flatten();
            let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
            let forward_host = host_header.or_else(|| {
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            });
            let (parts, body) = req.into_parts();
            let mut up_headers = parts.headers.clone();
            headers::to_upstream(
                &mut up_headers,
                conn.remote.map(|a| a.ip()),
                conn.https,
                forward_host,
                upgrade.clone(),
            );
            let target = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            let bodyless = body.is_end_stream();
            let exceeded = Arc::new(AtomicBool::new(false));
            let build = |body: ProxyBody| {
                let mut r = Request::new(body);
                *r.method_mut() = parts.method.clone();
                *r.uri_mut() = target.parse().unwrap_or_default();
                *r.version_mut() = Version::HTTP_11;
                *r.headers_mut() = up_headers.clone();
                r
            };
            let first = build(boxed(LimitedBody::new(body, limit, Arc::clone(&exceeded))));
            let rebuild = || build(empty());
            let retry: Option<&(dyn Fn() -> Request<ProxyBody> + Sync)> =
                (is_idempotent(&parts.method) && bodyless && upgrade.is_none())
                    .then_some(&rebuild as _);
            let forward_settings = ForwardSettings {
                connect_timeout: settings.connect_timeout,
                response_timeout: settings.upstream_timeout,
            };
            let began = Instant::now();
            match upstream
                .forward(first, retry, &forward_settings, &exceeded)
                .await
            {
                Ok(Forwarded {
                    mut response,
                    in_flight,
                    replica,
                }) => {
                    let upstream_time = Some(began.elapsed());
                    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                    headers::to_client(response.headers_mut(), switching);
                    if switching {
                        match client_upgrade {
                            Some(client) => {
                                let upstream_side = hyper::upgrade::on(&mut response);
                                tokio::spawn(tunnel(client, upstream_side, in_flight));
                                let (parts, _) = response.into_parts();
                                return (Response::from_parts(parts, empty()), upstream_time, None);
                            }
                            None => {
                                tracing::warn!(replica = %replica.name, "upstream switched protocols unasked");
                                return (error(StatusCode::BAD_GATEWAY), upstream_time, None);
                            }
                        }
                    }
                    let (parts, body) = response.into_parts();
                    (
                        Response::from_parts(parts, boxed(body)),
                        upstream_time,
                        Some(in_flight),
                    )
                }
                Err(failure) => {
                    tracing::warn!(upstream = %upstream.name, "{failure}");
                    (error(failure.status()), Some(began.elapsed()), None)
                }
            }
        }
    }
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

/// The single Host header, `Ok(None)` if absent; two or more is a bad request (nginx: "duplicate host header").
fn host_header<B>(req: &Request<B>) -> Result<Option<HeaderValue>, ()> {
    let mut all = req.headers().get_all(header::HOST).iter();
    let first = all.next().cloned();
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
