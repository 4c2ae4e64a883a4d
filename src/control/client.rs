//! The CLI side of the control socket.
//!
//! Exit codes of the control commands (`status`, `start`, `stop`, `restart`, `reload`, `logs`,
//! `shutdown`):
//! - 0: done. For `status NAME`: every matching process is running, or is a oneshot that finished
//!   with exit 0.
//! - 1: failed: cannot connect, permission denied, the supervisor refused, a bad reply, or no answer
//!   within `--timeout`.
//! - 3: `status NAME` only: the service, or one of its replicas, is not running (as
//!   `supervisorctl status` and LSB init scripts do).
//! - 4: `status NAME` only: no such service or replica.
//! - 5: `restart NAME --wait` only: the restart was still going when the wait ran out.
#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::table::{format_diff, format_reload, format_table, is_fine};
use crate::api::{ActionReply, DiffReply, DiffRequest, ErrorReply, ReloadReply, StatusReply};
use crate::cli::Command;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_NOT_RUNNING: u8 = 3;
pub const EXIT_UNKNOWN_SERVICE: u8 = 4;
pub const EXIT_TIMED_OUT: u8 = 5;

/// Largest JSON reply the client reads (thousands of services fit easily).
const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// `--timeout` as the user wrote it (`"10s"`, `"500ms"`; `"0"`: wait as long as it takes).
pub fn main(socket: &Path, timeout: &str, command: Command) -> ExitCode {
    let timeout = match crate::config::units::parse_duration(timeout) {
        Ok(limit) => Some(limit).filter(|limit| !limit.is_zero()),
        Err(error) => {
            eprintln!("stackinit: --timeout: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    ExitCode::from(run(
        socket,
        command,
        timeout,
        &mut io::stdout(),
        &mut io::stderr(),
    ))
}

/// Run one control command against `socket`, writing results to `out` and errors to `err`;
/// returns the exit code. On its own current-thread runtime, so tests can call it directly.
/// `timeout` bounds the whole command, except that `logs --follow` waits only for the first answer
/// within it and then follows for as long as the log lasts, and `restart --wait` has its own limit.
pub fn run(
    socket: &Path,
    command: Command,
    timeout: Option<Duration>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = writeln!(err, "stackinit: cannot start the client runtime: {error}");
            return EXIT_FAILURE;
        }
    };
    let open_ended = matches!(
        command,
        Command::Logs { follow: true, .. } | Command::Restart { wait: Some(_), .. }
    );
    let client = Client::new(socket, timeout);
    let whole = if open_ended { None } else { timeout };
    let result = runtime.block_on(client.within(whole, execute(&client, command, out)));
    match result {
        Ok(code) => code,
        Err(error) => {
            let _ = writeln!(err, "stackinit: {error}");
            error.exit_code()
        }
    }
}

async fn execute(
    client: &Client,
    command: Command,
    out: &mut dyn Write,
) -> Result<u8, ClientError> {
    match command {
        Command::Status { name, json } => status(client, name.as_deref(), json, out).await,
        Command::Start { name } => action(client, &name, "start", out).await,
        Command::Stop { name } => action(client, &name, "stop", out).await,
        Command::Restart { name, wait: None } => action(client, &name, "restart", out).await,
        Command::Restart {
            name,
            wait: Some(limit),
        } => restart_and_wait(client, &name, &limit, out).await,
        Command::Reload {
            dry_run: true,
            json,
        } => diff(client, "/v1/reload?dry_run=1", None, json, out).await,
        Command::Diff { config, json } => {
            let body = match &config.config {
                Some(path) => Some(diff_body(path)?),
                None => None,
            };
            diff(client, "/v1/diff", body, json, out).await
        }
        Command::Reload { dry_run: false, .. } => {
            let reply: ReloadReply = client.call(Method::POST, "/v1/reload", None).await?;
            write_out(out, format_reload(&reply).as_bytes())?;
            Ok(EXIT_OK)
        }
        Command::Shutdown { reboot } => {
            let body = serde_json::json!({ "reboot": reboot }).to_string();
            let reply: ActionReply = client
                .call(Method::POST, "/v1/shutdown", Some(body))
                .await?;
            finish_action(reply, out)
        }
        Command::Logs {
            name,
            stderr,
            follow,
            lines,
        } => logs(client, &name, stderr, follow, lines, out).await,
        _ => Err(ClientError::NotAControlCommand),
    }
}

async fn status(
    client: &Client,
    name: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, ClientError> {
    let path = match name {
        Some(name) => format!("/v1/status/{}", encode_segment(name)),
        None => "/v1/status".to_owned(),
    };
    let (code, body) = client.fetch(Method::GET, &path, None).await?;
    if code == StatusCode::NOT_FOUND {
        if let Some(name) = name {
            return Err(ClientError::UnknownService(
                error_message(code, &body).unwrap_or_else(|| name.to_owned()),
            ));
        }
    }
    if !code.is_success() {
        return Err(api_error(code, &body));
    }
    let reply: StatusReply = parse(&body)?;
    if json {
        write_json(out, &body)?;
    } else {
        write_out(out, format_table(&reply.services).as_bytes())?;
        if let Some(user_data) = reply.user_data.as_ref().filter(|u| !u.applied) {
            let mut text = format!(
                "\nuser data {} refused; the baked config runs without it:\n",
                user_data.path.display()
            );
            for e in &user_data.errors {
                text.push_str(&format!("  {e}\n"));
            }
            write_out(out, text.as_bytes())?;
        }
    }
    Ok(match name {
        None => EXIT_OK,
        Some(_) if reply.services.is_empty() => EXIT_UNKNOWN_SERVICE,
        Some(_) if reply.services.iter().all(is_fine) => EXIT_OK,
        Some(_) => EXIT_NOT_RUNNING,
    })
}

/// `diff` / `reload --dry-run`: the plan as a table, or the server's JSON as sent.
async fn diff(
    client: &Client,
    path: &str,
    body: Option<String>,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, ClientError> {
    let (code, reply) = client.fetch(Method::POST, path, body).await?;
    if !code.is_success() {
        return Err(api_error(code, &reply));
    }
    let plan: DiffReply = parse(&reply)?;
    if json {
        write_json(out, &reply)?;
    } else {
        write_out(out, format_diff(&plan).as_bytes())?;
    }
    Ok(EXIT_OK)
}

/// `diff --config PATH`: the file's text goes to the supervisor, which never reads the client's files.
fn diff_body(path: &Path) -> Result<String, ClientError> {
    let config = std::fs::read_to_string(path)
        .map_err(|e| ClientError::BadRequest(format!("cannot read {}: {e}", path.display())))?;
    let request = DiffRequest {
        config,
        path: Some(path.display().to_string()),
    };
    serde_json::to_string(&request).map_err(|e| ClientError::BadRequest(e.to_string()))
}

async fn action(
    client: &Client,
    name: &str,
    verb: &str,
    out: &mut dyn Write,
) -> Result<u8, ClientError> {
    let path = format!("/v1/services/{}/{verb}", encode_segment(name));
    let reply: ActionReply = client.call(Method::POST, &path, None).await?;
    finish_action(reply, out)
}

/// `restart NAME --wait[=DURATION]`: the supervisor answers once the restart is over.
async fn restart_and_wait(
    client: &Client,
    name: &str,
    limit: &str,
    out: &mut dyn Write,
) -> Result<u8, ClientError> {
    let limit = crate::config::units::parse_duration(limit)
        .map_err(|e| ClientError::Usage(format!("--wait: {e}")))?;
    let path = format!("/v1/services/{}/restart", encode_segment(name));
    let body = Some(serde_json::json!({ "wait": true }).to_string());
    match tokio::time::timeout(limit, client.call(Method::POST, &path, body)).await {
        Ok(reply) => finish_action(reply?, out),
        Err(_) => Err(ClientError::TimedOut(format!(
            "{name}: the restart was still going after {limit:?}"
        ))),
    }
}

fn finish_action(reply: ActionReply, out: &mut dyn Write) -> Result<u8, ClientError> {
    if !reply.ok {
        return Err(ClientError::Refused(reply.message));
    }
    write_out(out, format!("{}\n", reply.message).as_bytes())?;
    Ok(EXIT_OK)
}

async fn logs(
    client: &Client,
    name: &str,
    stderr: bool,
    follow: bool,
    lines: usize,
    out: &mut dyn Write,
) -> Result<u8, ClientError> {
    let stream = if stderr { "stderr" } else { "stdout" };
    let follow = if follow { "&follow=1" } else { "" };
    let path = format!(
        "/v1/services/{}/logs?stream={stream}&lines={lines}{follow}",
        encode_segment(name)
    );
    // With --follow the command as a whole has no deadline, but the first answer still has.
    let response = client
        .within(client.timeout, client.send(Method::GET, &path, None))
        .await?;
    let code = response.status();
    if !code.is_success() {
        let body = read_reply(response.into_body()).await?;
        return Err(api_error(code, &body));
    }
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ClientError::Transport)?;
        if let Some(data) = frame.data_ref() {
            match out.write_all(data).and_then(|()| out.flush()) {
                Ok(()) => {}
                // `stackinit logs app | head`: the reader has seen enough.
                Err(error) if error.kind() == io::ErrorKind::BrokenPipe => return Ok(EXIT_OK),
                Err(error) => return Err(ClientError::Output(error)),
            }
        }
    }
    Ok(EXIT_OK)
}

/// The server's JSON as sent: already per the contract, and it keeps fields this client doesn't know.
fn write_json(out: &mut dyn Write, body: &[u8]) -> Result<(), ClientError> {
    write_out(out, body)?;
    if !body.ends_with(b"\n") {
        write_out(out, b"\n")?;
    }
    Ok(())
}

fn write_out(out: &mut dyn Write, bytes: &[u8]) -> Result<(), ClientError> {
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(ClientError::Output)
}

/// One connection per command: the CLI makes a single request.
struct Client {
    socket: PathBuf,
    /// `--timeout`: how long to wait for the answer (None: as long as it takes).
    timeout: Option<Duration>,
}

impl Client {
    fn new(socket: &Path, timeout: Option<Duration>) -> Client {
        Client {
            socket: socket.to_path_buf(),
            timeout,
        }
    }

    /// `work`, or a timeout error once `limit` has passed.
    async fn within<T>(
        &self,
        limit: Option<Duration>,
        work: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let Some(limit) = limit else {
            return work.await;
        };
        match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::NoAnswer {
                socket: self.socket.clone(),
                limit,
            }),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ClientError::Transport)?;
        tokio::spawn(async move {
            // Errors surface through `send_request` or the body.
            let _ = connection.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost");
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|error| ClientError::BadRequest(error.to_string()))?;
        sender
            .send_request(request)
            .await
            .map_err(ClientError::Transport)
    }

    async fn fetch(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let response = self.send(method, path, body).await?;
        let code = response.status();
        Ok((code, read_reply(response.into_body()).await?))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<T, ClientError> {
        let (code, body) = self.fetch(method, path, body).await?;
        if !code.is_success() {
            return Err(api_error(code, &body));
        }
        parse(&body)
    }
}

async fn read_reply(body: Incoming) -> Result<Bytes, ClientError> {
    match Limited::new(body, MAX_REPLY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => match error.downcast::<hyper::Error>() {
            Ok(error) => Err(ClientError::Transport(*error)),
            Err(error) => Err(ClientError::BadReply(error.to_string())),
        },
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|error| ClientError::BadReply(error.to_string()))
}

/// The `error` of an `{"error": ...}` body, else the body as text.
fn error_message(code: StatusCode, body: &[u8]) -> Option<String> {
    if let Ok(reply) = serde_json::from_slice::<ErrorReply>(body) {
        return Some(reply.error);
    }
    let text = String::from_utf8_lossy(body).trim().to_owned();
    if text.is_empty() {
        code.canonical_reason().map(str::to_owned)
    } else {
        Some(text)
    }
}

fn api_error(code: StatusCode, body: &[u8]) -> ClientError {
    ClientError::Api {
        status: code.as_u16(),
        message: error_message(code, body).unwrap_or_else(|| code.to_string()),
    }
}

/// A name as one URL path segment: unreserved characters and `@` pass, the rest is %-escaped.
fn encode_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~@".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[derive(Debug)]
pub enum ClientError {
    Connect {
        socket: PathBuf,
        source: io::Error,
    },
    Transport(hyper::Error),
    /// The server answered with an error status.
    Api {
        status: u16,
        message: String,
    },
    /// `status NAME` for a name the supervisor doesn't know.
    UnknownService(String),
    /// The supervisor answered, but declined (`"ok": false`).
    Refused(String),
    BadReply(String),
    BadRequest(String),
    Output(io::Error),
    /// No (complete) answer within `--timeout`.
    NoAnswer {
        socket: PathBuf,
        limit: Duration,
    },
    NotAControlCommand,
    /// A command-line value this client cannot use.
    Usage(String),
    /// `restart --wait`: the restart did not end in time.
    TimedOut(String),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::UnknownService(_) => EXIT_UNKNOWN_SERVICE,
            ClientError::TimedOut(_) => EXIT_TIMED_OUT,
            _ => EXIT_FAILURE,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { socket, source } => {
                let hint = match source.kind() {
                    io::ErrorKind::PermissionDenied => "are you root or in the control group?",
                    _ => "is stackinit running?",
                };
                write!(
                    f,
                    "cannot connect to {}: {} ({hint})",
                    socket.display(),
                    describe(source)
                )
            }
            ClientError::Transport(error) => write!(f, "lost the connection to stackinit: {error}"),
            ClientError::Api { message, .. }
            | ClientError::UnknownService(message)
            | ClientError::Refused(message)
            | ClientError::Usage(message)
            | ClientError::TimedOut(message) => f.write_str(message),
            ClientError::BadReply(error) => write!(f, "unexpected reply from stackinit: {error}"),
            ClientError::BadRequest(error) => write!(f, "cannot build the request: {error}"),
            ClientError::Output(error) => write!(f, "cannot write output: {}", describe(error)),
            ClientError::NoAnswer { socket, limit } => write!(
                f,
                "no answer from {} within {} (stackinit is busy or stuck; --timeout sets the limit, 0 waits forever)",
                socket.display(),
                crate::config::Secs(*limit)
            ),
            ClientError::NotAControlCommand => f.write_str("not a control command"),
        }
    }
}

impl std::error::Error for ClientError {}

/// `No such file or directory` rather than `No such file or directory (os error 2)`.
fn describe(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_owned(),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_as_one_segment() {
        assert_eq!(encode_segment("app@1"), "app@1");
        assert_eq!(encode_segment("my-app_2.x"), "my-app_2.x");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn connect_error_names_the_socket() {
        let error = ClientError::Connect {
            socket: PathBuf::from("/run/stackinit/control.sock"),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(
            error.to_string(),
            "cannot connect to /run/stackinit/control.sock: No such file or directory (is stackinit running?)"
        );
        assert_eq!(error.exit_code(), EXIT_FAILURE);
    }

    #[test]
    fn error_bodies_are_read_as_json_or_text() {
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, br#"{"error":"no such service: x"}"#).unwrap(),
            "no such service: x"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b"upstream down\n").unwrap(),
            "upstream down"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b"").unwrap(),
            "Bad Gateway"
        );
    }

    #[test]
    fn unreachable_socket_fails_with_exit_1() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("control.sock");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(
            &socket,
            Command::Status {
                name: None,
                json: false,
            },
            None,
            &mut out,
            &mut err,
        );
        assert_eq!(code, EXIT_FAILURE);
        let err = String::from_utf8(err).unwrap();
        assert!(
            err.starts_with(&format!(
                "stackinit: cannot connect to {}: ",
                socket.display()
            )),
            "{err}"
        );
        assert!(err.ends_with("(is stackinit running?)\n"), "{err}");
        assert!(out.is_empty());
    }
}
