//! The init side of the control socket: HTTP/1.1 + JSON over a unix socket.
//!
//! Endpoints (every error is `{"error": "..."}` with a 4xx/5xx status):
//! - `GET  /v1/status`, `GET /v1/status/NAME` -> `StatusReply` (NAME: a service, meaning all its
//!   replicas, or one replica `app@1`)
//! - `POST /v1/services/NAME/start|stop|restart` -> `ActionReply`
//! - `POST /v1/reload` -> `ReloadReply` (400 with the config errors when the new config is invalid)
//! - `POST /v1/diff` (or `POST /v1/reload?dry_run=1`) -> `DiffReply`: what a reload would do, done by
//!   nobody; with a body `{"config": "<toml>", "path": "name"}`, against that text instead of the file
//! - `POST /v1/shutdown[?reboot=1]` (or body `{"reboot": true}`) -> `ActionReply`
//! - `GET  /v1/services/NAME/logs?stream=stdout|stderr&lines=N&follow=1` -> `text/plain`, the last N
//!   lines, then (follow) every new complete line as a chunked body until the client goes away
//!   (`log_stream`: streamed from the file, never held whole).
//!
//! The dashboard's endpoints (`GET /`, `/v1/events`, `/v1/facts`) and its CSRF rule for POSTs live in
//! `dashboard`; its optional TCP listener serves through `respond_tcp`.
//!
//! The server only translates HTTP to `Handle` requests; the supervisor decides everything.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::unistd::Gid;
use serde::Deserialize;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::access::Policy;
use super::reply::{
    error_response, json_response, method_not_allowed, with_content_type, ReplyBody,
};
use crate::api::{ApiError, DiffRequest, StatusReply};
use crate::supervise::handle::{Action, Handle, LogStream};

/// Largest request body accepted (the API's bodies are tiny JSON objects).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest request head (hyper's minimum buffer size is 8 KiB).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A client must send its request head (and then its body) within this time.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog, so a flood can't exhaust PID 1's fds.
const MAX_CONNECTIONS: usize = 64;
/// After a failed accept (out of fds), wait this long before the next try instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// `lines` when the query doesn't say.
const DEFAULT_TAIL_LINES: usize = 50;

/// Bind the control socket (mode 0660, group `group`) and serve it on the current runtime until the
/// process exits. Returns once the socket is bound, so clients can connect as soon as it returns.
pub async fn serve(path: &Path, group: Option<Gid>, handle: Handle) -> io::Result<()> {
    let listener = bind(path, group)
        .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", path.display())))?;
    let policy = Policy::new(nix::unistd::geteuid().as_raw(), group.map(Gid::as_raw));
    tracing::info!(socket = %path.display(), "control socket listening");
    tokio::spawn(accept_loop(listener, policy, handle));
    Ok(())
}

fn bind(path: &Path, group: Option<Gid>) -> io::Result<UnixListener> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(group) = group {
        // The owner stays who we are: root in production, where that makes it root:group.
        nix::unistd::chown(path, None, Some(group))?;
    }
    Ok(listener)
}

/// A socket file left by an earlier run is removed; a live one (another stackinit) or a non-socket
/// file is an error rather than something to delete.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a socket",
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is serving this socket",
        ));
    }
    std::fs::remove_file(path)
}

async fn accept_loop(listener: UnixListener, policy: Policy, handle: Handle) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let handle = handle.clone();
                tokio::spawn(async move {
                    serve_connection(stream, policy, handle).await;
                    drop(slot);
                });
            }
            Err(err) => {
                tracing::warn!(%err, "control socket: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Who is on the other end of a connection, decided once when it is accepted.
#[derive(Clone, Copy, Debug)]
struct Peer {
    uid: Option<u32>,
    allowed: bool,
    /// Came in over the dashboard's TCP listener (already authenticated there).
    tcp: bool,
}

async fn serve_connection(stream: UnixStream, policy: Policy, handle: Handle) {
    let peer = match stream.peer_cred() {
        Ok(cred) => {
            let allowed = policy.allows(&cred);
            if !allowed {
                tracing::warn!(uid = cred.uid(), gid = cred.gid(), pid = ?cred.pid(), "control socket: peer refused");
            }
            Peer {
                uid: Some(cred.uid()),
                allowed,
                tcp: false,
            }
        }
        Err(err) => {
            tracing::warn!(%err, "control socket: no peer credentials; refusing");
            Peer {
                uid: None,
                allowed: false,
                tcp: false,
            }
        }
    };
    let service = hyper::service::service_fn(move |request| {
        let handle = handle.clone();
        async move { Ok::<_, Infallible>(respond(request, peer, &handle).await) }
    });
    serve_http1(stream, service, "control socket").await;
}

/// One HTTP/1.1 connection with the control server's limits (header timeout, head size), for the unix
/// socket and the dashboard's TCP listener alike.
pub(super) async fn serve_http1<IO, S>(stream: IO, service: S, what: &str)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = ReplyBody>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    if let Err(err) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%err, "{what}: connection ended with an error");
    }
}

async fn respond(request: Request<Incoming>, peer: Peer, handle: &Handle) -> Response<ReplyBody> {
    if !peer.allowed {
        return error_response(&ApiError {
            status: 403,
            message: "permission denied: the control socket is for root and the control group"
                .into(),
        });
    }
    match handle_request(request, peer, handle).await {
        Ok(response) => response,
        Err(err) => error_response(&err),
    }
}

/// A request from the dashboard's TCP listener, whose credentials `dashboard_tcp` has checked.
pub(super) async fn respond_tcp(
    request: Request<Incoming>,
    handle: &Handle,
) -> Response<ReplyBody> {
    let peer = Peer {
        uid: None,
        allowed: true,
        tcp: true,
    };
    respond(request, peer, handle).await
}

async fn handle_request(
    request: Request<Incoming>,
    peer: Peer,
    handle: &Handle,
) -> Result<Response<ReplyBody>, ApiError> {
    if let Some(response) = super::dashboard::route(&request, peer.tcp, handle).await? {
        return Ok(response);
    }
    let path = request.uri().path().to_owned();
    let (route, query) = match parse_head(request.method(), &path, request.uri().query())? {
        Head::Call(route, query) => (route, query),
        Head::WrongMethod(allowed) => {
            return Ok(method_not_allowed(request.method(), &path, &allowed))
        }
    };
    if route.method() == Method::POST {
        tracing::info!(uid = ?peer.uid, %path, "control request");
    }
    let body = if route.reads_body() {
        Some(read_body(request.into_body()).await?)
    } else {
        None
    };
    match parse_call(route, &query, body.as_deref())? {
        Call::Metrics => {
            let services = handle.status(None).await?;
            let unhealthy = handle.facts().await?.unhealthy;
            let draining = handle.is_draining();
            let text = super::metrics::render(
                &services,
                unhealthy.is_empty() && !draining,
                draining,
                handle.proxy_metrics().as_deref(),
            );
            let body = http_body_util::Full::new(bytes::Bytes::from(text)).boxed_unsync();
            Ok(with_content_type(
                Response::new(body),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ))
        }
        Call::Status(name) => {
            let services = handle.status(name).await?;
            let user_data = handle.facts().await?.user_data;
            Ok(json_response(
                StatusCode::OK,
                &StatusReply {
                    services,
                    draining: handle.is_draining(),
                    user_data,
                },
            ))
        }
        Call::Control { name, action, wait } => {
            let reply = match (action, wait) {
                (Action::Restart, true) => handle.restart_and_wait(name).await?,
                _ => handle.control(name, action).await?,
            };
            Ok(json_response(StatusCode::OK, &reply))
        }
        Call::Reload => Ok(json_response(StatusCode::OK, &handle.reload().await?)),
        Call::Diff(source) => Ok(json_response(StatusCode::OK, &handle.diff(source).await?)),
        Call::Shutdown { reboot } => Ok(json_response(
            StatusCode::OK,
            &handle.shutdown(reboot).await?,
        )),
        Call::Logs(name, options) => {
            let LogOptions {
                stream,
                lines,
                follow,
            } = options;
            super::log_stream::logs(handle, name, stream, lines, follow).await
        }
    }
}

/// What a request asks of the supervisor, parsed from its method, target and body without any I/O.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Metrics,
    Status(Option<String>),
    /// `wait`: a restart answers once the service is ready again (`restart --wait`).
    Control {
        name: String,
        action: Action,
        wait: bool,
    },
    Reload,
    /// A dry run of reload, against the body's config if it has one.
    Diff(Option<DiffRequest>),
    Shutdown {
        reboot: bool,
    },
    Logs(String, LogOptions),
}

/// `?stream=stdout|stderr&lines=N&follow=1` of a logs request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LogOptions {
    pub stream: LogStream,
    pub lines: usize,
    pub follow: bool,
}

/// A request's head once checked: its route and query, or the method its route wants instead.
enum Head {
    Call(Route, Query),
    WrongMethod(Method),
}

/// Route, method, query: what is checked first, before any body is read.
fn parse_head(method: &Method, path: &str, query: Option<&str>) -> Result<Head, ApiError> {
    let route = Route::parse(path)?;
    let allowed = route.method();
    if *method != allowed {
        return Ok(Head::WrongMethod(allowed));
    }
    Ok(Head::Call(route, Query::parse(query.unwrap_or(""))?))
}

/// The rest of a request, once its body is read (`body` is `Some` exactly when `route.reads_body()`).
fn parse_call(route: Route, query: &Query, body: Option<&[u8]>) -> Result<Call, ApiError> {
    let json = match body {
        Some(body) => parse_json_body(body)?,
        None => None,
    };
    Ok(match route {
        Route::Metrics => Call::Metrics,
        Route::Status(name) => Call::Status(name),
        Route::Control(name, action) => Call::Control {
            name,
            action,
            wait: json
                .as_ref()
                .and_then(|b| b.get("wait"))
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        },
        Route::Reload if query.flag("dry_run")? => Call::Diff(diff_request(json)?),
        Route::Reload => Call::Reload,
        Route::Diff => Call::Diff(diff_request(json)?),
        Route::Shutdown => {
            let body: ShutdownBody = match json {
                Some(value) => serde_json::from_value(value).map_err(|err| {
                    ApiError::bad_request(format!("invalid shutdown request: {err}"))
                })?,
                None => ShutdownBody::default(),
            };
            Call::Shutdown {
                reboot: query.flag("reboot")? || body.reboot,
            }
        }
        Route::Logs(name) => Call::Logs(name, LogOptions::parse(query)?),
    })
}

/// Everything the server decides about a request before it asks the supervisor, in the same order, with
/// `body` standing for the whole request body; `Ok(Err(allowed))` is a wrong method. For `crate::fuzzing`.
pub(crate) fn parse_request(
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<Result<Call, Method>, ApiError> {
    match parse_head(method, path, query)? {
        Head::WrongMethod(allowed) => Ok(Err(allowed)),
        Head::Call(route, query) => {
            let body = route.reads_body().then_some(body);
            parse_call(route, &query, body).map(Ok)
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Status(Option<String>),
    Control(String, Action),
    Logs(String),
    Reload,
    Diff,
    Shutdown,
    /// Prometheus scrape.
    Metrics,
}

impl Route {
    fn parse(path: &str) -> Result<Route, ApiError> {
        let not_found = || ApiError::not_found(format!("no such endpoint: {path}"));
        if path == "/metrics" {
            return Ok(Route::Metrics);
        }
        let rest = path.strip_prefix("/v1/").ok_or_else(not_found)?;
        let segments: Vec<&str> = rest.split('/').collect();
        let name = |raw: &str| -> Result<String, ApiError> {
            match percent_decode(raw)? {
                name if name.is_empty() => Err(not_found()),
                name => Ok(name),
            }
        };
        Ok(match segments.as_slice() {
            ["status"] => Route::Status(None),
            ["status", service] => Route::Status(Some(name(service)?)),
            ["services", service, "start"] => Route::Control(name(service)?, Action::Start),
            ["services", service, "stop"] => Route::Control(name(service)?, Action::Stop),
            ["services", service, "restart"] => Route::Control(name(service)?, Action::Restart),
            ["services", service, "logs"] => Route::Logs(name(service)?),
            ["reload"] => Route::Reload,
            ["diff"] => Route::Diff,
            ["shutdown"] => Route::Shutdown,
            _ => return Err(not_found()),
        })
    }

    fn method(&self) -> Method {
        match self {
            Route::Status(_) | Route::Logs(_) | Route::Metrics => Method::GET,
            Route::Control(..) | Route::Reload | Route::Diff | Route::Shutdown => Method::POST,
        }
    }

    /// The POSTs read a body (which must be empty or JSON); the GETs never do.
    fn reads_body(&self) -> bool {
        self.method() == Method::POST
    }
}

/// `%XX` escapes decoded; the result must be UTF-8.
fn percent_decode(text: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request(format!("bad percent-encoding in {text:?}"));
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                // Exactly two hex digits: from_str_radix alone also takes a sign, so "%+F" decoded to
                // 0x0F (found by fuzz/fuzz_targets/control.rs).
                .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// The query string's parameters; unknown ones are ignored.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Result<Query, ApiError> {
        let mut pairs = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            pairs.push((
                percent_decode(key)?,
                percent_decode(&value.replace('+', " "))?,
            ));
        }
        Ok(Query(pairs))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `?follow`, `?follow=1`, `=true`, `=yes` are true; absent, `=0`, `=false`, `=no` are false.
    fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None | Some("0" | "false" | "no") => Ok(false),
            Some("" | "1" | "true" | "yes") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "{key} must be 1 or 0, not {other:?}"
            ))),
        }
    }
}

/// The config a diff compares against, when its body names one.
fn diff_request(json: Option<serde_json::Value>) -> Result<Option<DiffRequest>, ApiError> {
    json.map(|value| {
        serde_json::from_value(value)
            .map_err(|err| ApiError::bad_request(format!("invalid diff request: {err}")))
    })
    .transpose()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShutdownBody {
    #[serde(default)]
    reboot: bool,
}

/// The request body, bounded in size and time.
async fn read_body(body: Incoming) -> Result<bytes::Bytes, ApiError> {
    match tokio::time::timeout(READ_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect()).await {
        Err(_) => Err(ApiError {
            status: 408,
            message: "timed out reading the request body".into(),
        }),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError {
            status: 413,
            message: format!("request body larger than {MAX_BODY_BYTES} bytes"),
        }),
        Ok(Err(err)) => Err(ApiError::bad_request(format!(
            "cannot read the request body: {err}"
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// A request body: None when empty (or only whitespace), else it must be JSON.
fn parse_json_body(body: &[u8]) -> Result<Option<serde_json::Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|err| ApiError::bad_request(format!("invalid JSON body: {err}")))
}

impl LogOptions {
    fn parse(query: &Query) -> Result<LogOptions, ApiError> {
        let stream = match query.get("stream") {
            None | Some("stdout") => LogStream::Stdout,
            Some("stderr") => LogStream::Stderr,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "stream must be stdout or stderr, not {other:?}"
                )))
            }
        };
        let lines = match query.get("lines") {
            None => DEFAULT_TAIL_LINES,
            Some(n) => n
                .parse()
                .map_err(|_| ApiError::bad_request(format!("lines must be a count, not {n:?}")))?,
        };
        let follow = query.flag("follow")?;
        Ok(LogOptions {
            stream,
            lines,
            follow,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/v1/status").unwrap(), Route::Status(None));
        assert_eq!(
            Route::parse("/v1/status/app@1").unwrap(),
            Route::Status(Some("app@1".into()))
        );
        assert_eq!(
            Route::parse("/v1/status/app%401").unwrap(),
            Route::Status(Some("app@1".into()))
        );
        assert_eq!(
            Route::parse("/v1/services/web/restart").unwrap(),
            Route::Control("web".into(), Action::Restart)
        );
        assert_eq!(
            Route::parse("/v1/services/web/logs").unwrap(),
            Route::Logs("web".into())
        );
        assert_eq!(Route::parse("/v1/reload").unwrap(), Route::Reload);
        assert_eq!(Route::parse("/v1/shutdown").unwrap(), Route::Shutdown);
        for missing in [
            "/",
            "/v1",
            "/v1/",
            "/v1/status/",
            "/v1/services/web",
            "/v1/services/web/kill",
            "/v2/status",
        ] {
            assert_eq!(Route::parse(missing).unwrap_err().status, 404, "{missing}");
        }
        assert_eq!(Route::parse("/v1/status/%zz").unwrap_err().status, 400);
        assert_eq!(Route::parse("/v1/status/%ff").unwrap_err().status, 400);
        assert_eq!(Route::parse("/v1/status/%4").unwrap_err().status, 400);
        // fuzz/regressions/control/percent-plus-hex-decoded: a sign is not a hex digit.
        assert_eq!(Route::parse("/v1/status/%+F").unwrap_err().status, 400);
        assert_eq!(Query::parse("lines=%+5").err().map(|e| e.status), Some(400));
    }

    #[test]
    fn query_flags_and_values() {
        let query = Query::parse("follow&lines=10&stream=std%65rr&reboot=0").unwrap();
        assert!(query.flag("follow").unwrap());
        assert!(!query.flag("reboot").unwrap());
        assert!(!query.flag("absent").unwrap());
        assert_eq!(query.get("lines"), Some("10"));
        assert_eq!(query.get("stream"), Some("stderr"));
        assert_eq!(
            Query::parse("follow=maybe")
                .unwrap()
                .flag("follow")
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn requests_parse_in_the_order_the_server_checks_them() {
        let parse = |method: Method, target: &str, body: &str| {
            let uri: hyper::Uri = target.parse().unwrap();
            parse_request(&method, uri.path(), uri.query(), body.as_bytes())
        };
        assert_eq!(
            parse(Method::GET, "/v1/services/web/logs?lines=5&follow", "").unwrap(),
            Ok(Call::Logs(
                "web".into(),
                LogOptions {
                    stream: LogStream::Stdout,
                    lines: 5,
                    follow: true
                }
            ))
        );
        assert_eq!(
            parse(Method::POST, "/v1/shutdown", r#"{"reboot": true}"#).unwrap(),
            Ok(Call::Shutdown { reboot: true })
        );
        assert_eq!(
            parse(Method::POST, "/v1/shutdown?reboot=1", " \n").unwrap(),
            Ok(Call::Shutdown { reboot: true })
        );
        // The route before the method, the method before the query, the body before the query's flag.
        assert_eq!(parse(Method::GET, "/v2/x?%zz", "").unwrap_err().status, 404);
        assert_eq!(
            parse(Method::GET, "/v1/reload?%zz", "").unwrap(),
            Err(Method::POST)
        );
        assert_eq!(
            parse(Method::POST, "/v1/reload?%zz", "")
                .unwrap_err()
                .status,
            400
        );
        let err = parse(Method::POST, "/v1/shutdown?reboot=x", "{").unwrap_err();
        assert!(
            err.message.starts_with("invalid JSON body"),
            "{}",
            err.message
        );
        let err = parse(Method::POST, "/v1/shutdown", r#"{"rebot": true}"#).unwrap_err();
        assert!(
            err.message.starts_with("invalid shutdown request"),
            "{}",
            err.message
        );
        // A GET's body is never read, so never judged.
        assert!(parse(Method::GET, "/v1/status", "{").unwrap().is_ok());
    }

    #[test]
    fn errors_never_carry_a_success_status() {
        let response = error_response(&ApiError {
            status: 200,
            message: "odd".into(),
        });
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let response = error_response(&ApiError {
            status: 1000,
            message: "odd".into(),
        });
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            error_response(&ApiError::conflict("busy")).status(),
            StatusCode::CONFLICT
        );
    }
}
