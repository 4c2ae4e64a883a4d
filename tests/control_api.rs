//! The control socket end to end: the real server (`control::server::serve`) in front of a fake
//! supervisor answering `Handle` requests with canned data, driven by the real `stackinit` binary,
//! by raw HTTP, and by curl running as an unprivileged uid.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use nix::unistd::Gid;
use serde_json::Value;
use stackinit::api::{ActionReply, ApiError, DiffReply, ReloadReply, ServiceStatus, State};
use stackinit::control::server::serve;
use stackinit::supervise::handle::{Action, Handle, LogSource, LogStream, Request};
use support::http;
use support::{kill9, BIN};
use tokio::sync::{broadcast, mpsc, oneshot};

const NOBODY: u32 = 65534;
const CONTROL_GID: u32 = 4242;

/// What the test tells the fake supervisor to do.
enum Command_ {
    LogLine(&'static str),
    CloseLogs,
    BreakConfig,
    SetDraining,
    /// Answer once no reader is subscribed to the app's stdout feed any more.
    WaitUnsubscribed(oneshot::Sender<()>),
}

/// What the fake supervisor saw.
#[derive(Debug, PartialEq)]
enum Event {
    Control(String, Action),
    Shutdown { reboot: bool },
    LogsSubscribed,
}

struct FakeStack {
    dir: tempfile::TempDir,
    socket: PathBuf,
    commands: mpsc::UnboundedSender<Command_>,
    events: std_mpsc::Receiver<Event>,
    thread: Option<JoinHandle<()>>,
}

impl FakeStack {
    fn start() -> FakeStack {
        FakeStack::start_with_group(None)
    }

    fn start_with_group(group: Option<u32>) -> FakeStack {
        let dir = tempfile::tempdir().expect("tempdir");
        // The socket's parent is created by `serve` (0755), like /run/stackinit.
        let socket = dir.path().join("run").join("control.sock");
        std::fs::write(dir.path().join("app.out.log"), "one\ntwo\nthree\n").expect("write log");
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = std_mpsc::channel();
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let logs_dir = dir.path().to_path_buf();
        let socket_path = socket.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let (handle, requests) = Handle::new();
                let served = serve(&socket_path, group.map(Gid::from_raw), handle.clone()).await;
                let ok = served.is_ok();
                let _ = ready_tx.send(served);
                if ok {
                    fake_supervisor(handle, requests, command_rx, event_tx, logs_dir).await;
                }
            });
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            other => panic!("serve failed: {other:?}"),
        }
        FakeStack {
            dir,
            socket,
            commands,
            events,
            thread: Some(thread),
        }
    }

    fn send(&self, command: Command_) {
        self.commands
            .send(command)
            .unwrap_or_else(|_| panic!("fake supervisor is gone"));
    }

    fn next_event(&self) -> Event {
        self.events
            .recv_timeout(Duration::from_secs(10))
            .expect("an event from the fake supervisor")
    }

    /// The real binary as a control client of this stack.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run stackinit")
    }

    /// Let uids other than root reach the socket file (the server's own check is what's tested).
    fn open_up(&self, socket_mode: u32) {
        for dir in [self.dir.path(), self.socket.parent().expect("parent")] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .expect("chmod dir");
        }
        std::fs::set_permissions(&self.socket, std::fs::Permissions::from_mode(socket_mode))
            .expect("chmod socket");
    }
}

impl Drop for FakeStack {
    fn drop(&mut self) {
        // Closing the command channel ends the fake supervisor; its runtime drops the server with it.
        let (closed, _) = mpsc::unbounded_channel();
        self.commands = closed;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn service(name: &str, state: State) -> ServiceStatus {
    let (service, replica) = match name.split_once('@') {
        Some((service, replica)) => (service.to_owned(), replica.parse::<u32>().ok()),
        None => (name.to_owned(), None),
    };
    let running = state == State::Running;
    // Built from JSON so that fields added to ServiceStatus later (with serde defaults) need no change here.
    serde_json::from_value(serde_json::json!({
        "name": name,
        "service": service,
        "replica": replica,
        "state": state,
        "ready": running,
        "pid": running.then_some(1000 + name.len() as i32),
        "restarts": 0,
        "uptime_secs": running.then_some(45.0),
        "last_exit": null,
        "reason": null,
        "oneshot": false,
        "stdout": format!("/logs/{service}.out.log"),
        "stderr": format!("/logs/{service}.err.log"),
    }))
    .expect("a ServiceStatus")
}

fn canned_services() -> Vec<ServiceStatus> {
    let mut proxy = service("proxy", State::Running);
    proxy.uptime_secs = Some(11_532.0);
    let mut migrate = service("migrate", State::Exited);
    migrate.oneshot = true;
    migrate.last_exit = Some("exit 0".into());
    let mut app1 = service("app@1", State::Backoff);
    app1.restarts = 3;
    app1.last_exit = Some("exit 1".into());
    app1.reason = Some("exited after 0.2s; retrying in 2s".into());
    let web = service("web", State::Stopped);
    vec![service("app@0", State::Running), app1, migrate, proxy, web]
}

async fn fake_supervisor(
    handle: Handle,
    mut requests: mpsc::UnboundedReceiver<Request>,
    mut commands: mpsc::UnboundedReceiver<Command_>,
    events: std_mpsc::Sender<Event>,
    logs_dir: PathBuf,
) {
    let mut app_lines = Some(broadcast::channel::<Bytes>(64).0);
    let mut config_broken = false;
    loop {
        // Commands first: a test that sends one before a request expects it to have taken effect.
        tokio::select! {
            biased;
            command = commands.recv() => match command {
                None => return,
                Some(Command_::LogLine(line)) => {
                    if let Some(lines) = &app_lines {
                        let _ = lines.send(Bytes::from_static(line.as_bytes()));
                    }
                }
                Some(Command_::CloseLogs) => app_lines = None,
                Some(Command_::BreakConfig) => config_broken = true,
                Some(Command_::SetDraining) => handle.set_draining(true),
                Some(Command_::WaitUnsubscribed(done)) => {
                    if let Some(lines) = app_lines.clone() {
                        tokio::spawn(async move {
                            lines.closed().await;
                            let _ = done.send(());
                        });
                    }
                }
            },
            request = requests.recv() => {
                let Some(request) = request else { return };
                answer(request, &app_lines, config_broken, &events, &logs_dir);
            }
        }
    }
}

fn answer(
    request: Request,
    app_lines: &Option<broadcast::Sender<Bytes>>,
    config_broken: bool,
    events: &std_mpsc::Sender<Event>,
    logs_dir: &Path,
) {
    let unknown = |name: &str| ApiError::not_found(format!("no such service: {name}"));
    match request {
        Request::Status { name, reply } => {
            let services: Vec<ServiceStatus> = canned_services()
                .into_iter()
                .filter(|s| {
                    name.as_deref()
                        .is_none_or(|name| s.name == name || s.service == name)
                })
                .collect();
            let answer = match name {
                Some(name) if services.is_empty() => Err(unknown(&name)),
                _ => Ok(services),
            };
            let _ = reply.send(answer);
        }
        Request::Control {
            name,
            action,
            reply,
            ..
        } => {
            let known = canned_services()
                .iter()
                .any(|s| s.name == name || s.service == name);
            let answer = if !known {
                Err(unknown(&name))
            } else if name == "migrate" && action == Action::Stop {
                Err(ApiError::conflict("migrate is not running"))
            } else {
                let verb = match action {
                    Action::Start => "started",
                    Action::Stop => "stopped",
                    Action::Restart => "restarted",
                };
                Ok(ActionReply {
                    ok: true,
                    message: format!("{name}: {verb}"),
                })
            };
            let _ = events.send(Event::Control(name, action));
            let _ = reply.send(answer);
        }
        Request::Reload { reply } => {
            let _ = reply.send(if config_broken {
                Err(ApiError::bad_request(
                    "/etc/stackinit/stackinit.toml:3:1: unknown key `comand`\n\
                     /etc/stackinit/stackinit.toml:9:9: bad duration \"40\"",
                ))
            } else {
                Ok(ReloadReply {
                    added: vec!["web".into()],
                    removed: vec![],
                    changed: vec!["app".into()],
                    unchanged: vec!["migrate".into(), "proxy".into()],
                })
            });
        }
        // The dry run's own behaviour is tested against a real supervisor (tests/import.rs).
        Request::Diff { reply, .. } => {
            let _ = reply.send(Ok(DiffReply::default()));
        }
        Request::Shutdown { reboot, reply } => {
            let _ = events.send(Event::Shutdown { reboot });
            let what = if reboot { "rebooting" } else { "powering off" };
            let _ = reply.send(Ok(ActionReply {
                ok: true,
                message: format!("shutting down: {what}"),
            }));
        }
        Request::Logs {
            name,
            stream,
            reply,
        } => {
            if name != "app" {
                let _ = reply.send(Err(unknown(&name)));
                return;
            }
            let file = match stream {
                LogStream::Stdout => "app.out.log",
                LogStream::Stderr => "app.err.log",
            };
            let lines = match app_lines {
                Some(lines) => lines.subscribe(),
                None => broadcast::channel(1).1,
            };
            let _ = reply.send(Ok(LogSource {
                path: logs_dir.join(file),
                lines,
            }));
            let _ = events.send(Event::LogsSubscribed);
        }
        Request::Facts { reply } => {
            let _ = reply.send(Ok(stackinit::supervise::handle::InstanceInfo {
                facts: Default::default(),
                unhealthy: Vec::new(),
                user_data: None,
            }));
        }
    }
}

/// GET on the control socket: (status, lowercased head, body).
fn get(socket: &Path, path: &str) -> (u16, String, String) {
    http::Request::new(socket, "GET", path)
        .timeout(Duration::from_secs(10))
        .reply()
        .parts()
}

/// POST of a JSON body on the control socket: (status, lowercased head, body).
fn post(socket: &Path, path: &str, body: &str) -> (u16, String, String) {
    http::Request::new(socket, "POST", path)
        .header("Content-Type", "application/json")
        .body(body.as_bytes())
        .timeout(Duration::from_secs(10))
        .reply()
        .parts()
}

/// The `error` of a JSON error body, failing the test when the body isn't one.
fn error_of(body: &str) -> String {
    let value: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string in {body}"))
        .to_owned()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn socket_is_created_with_mode_0660_in_a_0755_dir() {
    let stack = FakeStack::start();
    let mode = |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode(&stack.socket), 0o660);
    assert_eq!(mode(stack.socket.parent().expect("parent")), 0o755);
}

#[test]
fn socket_gets_the_control_group() {
    use std::os::unix::fs::MetadataExt;
    let stack = FakeStack::start_with_group(Some(CONTROL_GID));
    let meta = std::fs::metadata(&stack.socket).expect("stat");
    assert_eq!((meta.uid(), meta.gid()), (0, CONTROL_GID));
}

#[test]
fn stale_socket_is_replaced_but_a_live_one_is_not() {
    let stack = FakeStack::start();
    // A second server on the same live socket must refuse rather than steal it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let second = runtime.block_on(serve(&stack.socket, None, Handle::new().0));
    let error = second.expect_err("a live socket must not be replaced");
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse, "{error}");
    // A stale socket file (nobody listening) is replaced.
    let stale = stack.dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    runtime
        .block_on(serve(&stale, None, Handle::new().0))
        .expect("stale socket replaced");
    // A regular file is not a socket to delete.
    let file = stack.dir.path().join("file.sock");
    std::fs::write(&file, "keep me").expect("write");
    runtime
        .block_on(serve(&file, None, Handle::new().0))
        .expect_err("regular file kept");
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "keep me");
}

#[test]
fn status_table() {
    let stack = FakeStack::start();
    let output = stack.cli(&["status"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let table = text(&output.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "{table}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATE",
            "READY",
            "PID",
            "UPTIME",
            "RESTARTS",
            "LAST-EXIT",
            "REASON"
        ]
    );
    let row = |name: &str| -> Vec<String> {
        let line = lines
            .iter()
            .find(|line| line.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} in {table}"));
        line.split_whitespace().map(str::to_owned).collect()
    };
    assert_eq!(
        row("app@0"),
        ["app@0", "running", "yes", "1005", "45s", "0", "-", "-"]
    );
    assert_eq!(
        row("proxy"),
        ["proxy", "running", "yes", "1005", "3h12m", "0", "-", "-"]
    );
    assert_eq!(
        row("migrate"),
        ["migrate", "exited", "no", "-", "-", "0", "exit", "0", "-"]
    );
    assert!(
        lines.iter().any(|line| line.starts_with("app@1 ")
            && line.ends_with("exit 1     exited after 0.2s; retrying in 2s")),
        "{table}"
    );
    // Columns line up: every STATE cell starts where the header's does.
    let state_column = lines[0].find("STATE").expect("STATE");
    for line in &lines[1..] {
        assert!(line[..state_column].ends_with("  "), "{line:?} in\n{table}");
        assert_ne!(line.as_bytes()[state_column], b' ', "{line:?} in\n{table}");
    }
}

#[test]
fn status_json_per_contract() {
    let stack = FakeStack::start();
    let output = stack.cli(&["status", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let value: Value = serde_json::from_slice(&output.stdout).expect("valid JSON");
    let services = value["services"].as_array().expect("services array");
    assert_eq!(services.len(), 5);
    for service in services {
        assert!(service["name"].is_string(), "{service}");
        let state = service["state"].as_str().expect("state");
        assert!(
            ["stopped", "starting", "running", "backoff", "stopping", "exited", "fatal"]
                .contains(&state)
        );
        assert!(service["ready"].is_boolean());
        assert!(service["pid"].is_i64() || service["pid"].is_null());
        assert!(service["restarts"].is_u64());
    }
    assert_eq!(services[1]["name"], "app@1");
    assert_eq!(services[1]["state"], "backoff");
    assert_eq!(services[1]["pid"], Value::Null);
    assert_eq!(services[1]["restarts"], 3);
    assert_eq!(value["draining"], false);

    stack.send(Command_::SetDraining);
    // Once the flag is set, the next status shows it (the command is handled before the request).
    let (status, _, body) = get(&stack.socket, "/v1/status/app");
    assert_eq!(status, 200);
    let value: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(value["draining"], true, "{body}");
    assert_eq!(
        value["services"].as_array().map(Vec::len),
        Some(2),
        "{body}"
    );
}

#[test]
fn status_name_exit_codes() {
    let stack = FakeStack::start();
    let code = |args: &[&str]| stack.cli(args).status.code();
    assert_eq!(code(&["status", "app@0"]), Some(0));
    assert_eq!(code(&["status", "proxy", "--json"]), Some(0));
    // One replica in backoff: the service is not (all) running.
    assert_eq!(code(&["status", "app"]), Some(3));
    assert_eq!(code(&["status", "app@1"]), Some(3));
    assert_eq!(code(&["status", "web"]), Some(3));
    // A oneshot that finished with exit 0 is fine.
    assert_eq!(code(&["status", "migrate"]), Some(0));
    let unknown = stack.cli(&["status", "nope"]);
    assert_eq!(unknown.status.code(), Some(4));
    assert_eq!(text(&unknown.stderr), "stackinit: no such service: nope\n");
    assert!(unknown.stdout.is_empty());
    // The table for one service shows only its replicas.
    let output = stack.cli(&["status", "app"]);
    let table = text(&output.stdout);
    assert_eq!(table.lines().count(), 3, "{table}");
}

#[test]
fn actions_reload_and_shutdown() {
    let stack = FakeStack::start();
    let output = stack.cli(&["start", "web"]);
    assert_eq!(
        (output.status.code(), text(&output.stdout)),
        (Some(0), "web: started\n".to_owned())
    );
    assert_eq!(
        stack.next_event(),
        Event::Control("web".into(), Action::Start)
    );
    let output = stack.cli(&["restart", "app@1"]);
    assert_eq!(
        (output.status.code(), text(&output.stdout)),
        (Some(0), "app@1: restarted\n".to_owned())
    );
    assert_eq!(
        stack.next_event(),
        Event::Control("app@1".into(), Action::Restart)
    );

    let output = stack.cli(&["stop", "nope"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stderr), "stackinit: no such service: nope\n");
    assert_eq!(
        stack.next_event(),
        Event::Control("nope".into(), Action::Stop)
    );
    let output = stack.cli(&["stop", "migrate"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stderr), "stackinit: migrate is not running\n");
    assert_eq!(
        stack.next_event(),
        Event::Control("migrate".into(), Action::Stop)
    );

    let output = stack.cli(&["reload"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        text(&output.stdout),
        "added: web\nremoved: -\nchanged: app\nunchanged: migrate, proxy\n"
    );
    stack.send(Command_::BreakConfig);
    let output = stack.cli(&["reload"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with("stackinit: /etc/stackinit/stackinit.toml:3:1: unknown key `comand`\n"),
        "{stderr}"
    );
    assert!(stderr.contains("9:9: bad duration"), "{stderr}");
    let (status, _, body) = post(&stack.socket, "/v1/reload", "");
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("unknown key `comand`"));

    let output = stack.cli(&["shutdown", "--reboot"]);
    assert_eq!(
        (output.status.code(), text(&output.stdout)),
        (Some(0), "shutting down: rebooting\n".to_owned())
    );
    assert_eq!(stack.next_event(), Event::Shutdown { reboot: true });
    let output = stack.cli(&["shutdown"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(stack.next_event(), Event::Shutdown { reboot: false });
    let (status, _, _) = post(&stack.socket, "/v1/shutdown?reboot=1", "");
    assert_eq!(status, 200);
    assert_eq!(stack.next_event(), Event::Shutdown { reboot: true });
}

#[test]
fn http_errors_are_json() {
    let stack = FakeStack::start();
    let socket = &stack.socket;

    let (status, head, body) = get(socket, "/v1/nothing");
    assert_eq!(status, 404);
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(error_of(&body).contains("/v1/nothing"));
    let (status, _, body) = get(socket, "/v1/status/nope");
    assert_eq!(
        (status, error_of(&body)),
        (404, "no such service: nope".to_owned())
    );
    let (status, _, body) = post(socket, "/v1/services/nope/start", "");
    assert_eq!(
        (status, error_of(&body)),
        (404, "no such service: nope".to_owned())
    );
    let (status, _, body) = post(socket, "/v1/services/migrate/stop", "");
    assert_eq!(
        (status, error_of(&body)),
        (409, "migrate is not running".to_owned())
    );

    let (status, head, body) = get(socket, "/v1/reload");
    assert_eq!(status, 405);
    assert!(head.contains("\r\nallow: post"), "{head}");
    error_of(&body);
    let (status, head, _) = post(socket, "/v1/status", "");
    assert_eq!(status, 405);
    assert!(head.contains("\r\nallow: get"), "{head}");

    for bad in [
        "{",
        "{\"reboot\": \"yes\"}",
        "{\"reboot\": true, \"typo\": 1}",
        "[1,2",
    ] {
        let (status, _, body) = post(socket, "/v1/shutdown", bad);
        assert_eq!(status, 400, "{bad}: {body}");
        error_of(&body);
    }
    let (status, _, body) = post(socket, "/v1/services/web/start", "not json");
    assert_eq!(status, 400);
    assert!(error_of(&body).starts_with("invalid JSON body"), "{body}");
    let (status, _, body) = get(socket, "/v1/services/app/logs?lines=many");
    assert_eq!(status, 400);
    error_of(&body);
    let (status, _, body) = get(socket, "/v1/services/app/logs?stream=both");
    assert_eq!(status, 400);
    error_of(&body);

    let big = format!(
        "{{\"reboot\": false, \"pad\": \"{}\"}}",
        "x".repeat(70 * 1024)
    );
    let (status, _, body) = post(socket, "/v1/shutdown", &big);
    assert_eq!(status, 413);
    error_of(&body);

    // Garbage that isn't HTTP gets an error or a closed connection, and the server carries on.
    for garbage in [
        "GARBAGE\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
        "\0\0\0\0\r\n\r\n",
        "GET /v1/status HTTP/1.1\r\nHost: \u{1}\r\nX: \x7f\r\n\r\n",
    ] {
        let mut stream = UnixStream::connect(socket).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = stream.write_all(garbage.as_bytes());
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }
    let (status, _, _) = get(socket, "/v1/status");
    assert_eq!(status, 200);
    // Only the well-formed requests reached the supervisor; none with a bad body did.
    assert_eq!(
        stack.next_event(),
        Event::Control("nope".into(), Action::Start)
    );
    assert_eq!(
        stack.next_event(),
        Event::Control("migrate".into(), Action::Stop)
    );
    assert!(stack.events.try_recv().is_err());
}

#[test]
fn logs_tail() {
    let stack = FakeStack::start();
    let output = stack.cli(&["logs", "app", "-n", "2"]);
    assert_eq!(
        (output.status.code(), text(&output.stdout)),
        (Some(0), "two\nthree\n".to_owned())
    );
    let output = stack.cli(&["logs", "app"]);
    assert_eq!(text(&output.stdout), "one\ntwo\nthree\n");
    // No stderr file yet: nothing to show, not an error.
    let output = stack.cli(&["logs", "app", "--stderr"]);
    assert_eq!(
        (output.status.code(), output.stdout.len()),
        (Some(0), 0),
        "{output:?}"
    );
    let output = stack.cli(&["logs", "nope"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stderr), "stackinit: no such service: nope\n");
    let (status, head, body) = get(&stack.socket, "/v1/services/app/logs?lines=1");
    assert_eq!((status, body.as_str()), (200, "three\n"));
    assert!(head.contains("content-type: text/plain"), "{head}");
}

#[test]
fn logs_follow_streams_new_lines_until_the_log_closes() {
    let stack = FakeStack::start();
    let child = Command::new(BIN)
        .arg("--socket")
        .arg(&stack.socket)
        .args(["logs", "app", "--follow", "-n", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stackinit logs");
    let _kill = KillOnDrop(child.id());
    assert_eq!(stack.next_event(), Event::LogsSubscribed);
    stack.send(Command_::LogLine("four\n"));
    stack.send(Command_::LogLine("five")); // a feed without newlines gets them added
    stack.send(Command_::CloseLogs);
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(text(&output.stdout), "two\nthree\nfour\nfive\n");
}

#[test]
fn logs_follow_is_chunked_and_unsubscribes_when_the_client_leaves() {
    let stack = FakeStack::start();
    let mut stream = UnixStream::connect(&stack.socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(
            b"GET /v1/services/app/logs?lines=1&follow=1 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .expect("write");
    assert_eq!(stack.next_event(), Event::LogsSubscribed);
    stack.send(Command_::LogLine("four\n"));
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !text(&seen).contains("four\n") {
        let n = stream.read(&mut buffer).expect("read");
        assert!(n > 0, "closed early: {}", text(&seen));
        seen.extend_from_slice(&buffer[..n]);
    }
    let seen = text(&seen);
    let (head, body) = seen.split_once("\r\n\r\n").expect("head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert!(
        body.contains("three\n") && !body.contains("two\n"),
        "{body}"
    );
    // The client goes away without another line being written: the server must notice and let
    // go of its subscription on its own.
    drop(stream);
    let (done, unsubscribed) = oneshot::channel();
    stack.send(Command_::WaitUnsubscribed(done));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), unsubscribed).await });
    assert!(
        matches!(result, Ok(Ok(()))),
        "the follow subscription outlived its client"
    );
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill9(self.0 as i32);
    }
}

/// curl over the socket as `nobody`, with extra setpriv options; returns (HTTP status, body).
fn curl_as_nobody(socket: &Path, setpriv_groups: Option<&str>, primary_gid: u32) -> (u16, String) {
    let mut command = match setpriv_groups {
        Some(groups) => {
            let mut command = Command::new("setpriv");
            command.args([
                format!("--reuid={NOBODY}"),
                format!("--regid={primary_gid}"),
                format!("--groups={groups}"),
                "--".into(),
                "curl".into(),
            ]);
            command
        }
        None => {
            let mut command = Command::new("curl");
            command.uid(NOBODY).gid(primary_gid);
            command
        }
    };
    let output = command
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--write-out",
            "\n%{http_code}",
            "--unix-socket",
        ])
        .arg(socket)
        .arg("http://localhost/v1/status")
        .output()
        .expect("curl and setpriv must be installed");
    assert!(output.status.success(), "curl failed: {output:?}");
    let out = text(&output.stdout);
    let (body, code) = out.rsplit_once('\n').expect("status code line");
    (code.trim().parse().expect("http code"), body.to_owned())
}

#[test]
fn unprivileged_peer_gets_403() {
    let stack = FakeStack::start();
    // Even with a socket mode that lets anyone connect, SO_PEERCRED keeps strangers out.
    stack.open_up(0o666);
    let (status, body) = curl_as_nobody(&stack.socket, None, NOBODY);
    assert_eq!(status, 403, "{body}");
    assert!(error_of(&body).starts_with("permission denied"), "{body}");
    // The CLI says so and fails.
    let output = Command::new(BIN)
        .uid(NOBODY)
        .gid(NOBODY)
        .arg("--socket")
        .arg(&stack.socket)
        .args(["restart", "app"])
        .output()
        .expect("run stackinit as nobody");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        text(&output.stderr).starts_with("stackinit: permission denied"),
        "{output:?}"
    );
    // Nothing reached the supervisor.
    assert!(stack.events.try_recv().is_err());
    // Root still gets in.
    assert_eq!(get(&stack.socket, "/v1/status").0, 200);
}

#[test]
fn socket_mode_keeps_out_who_is_not_in_the_group() {
    let stack = FakeStack::start_with_group(Some(CONTROL_GID));
    stack.open_up(0o660);
    let output = Command::new(BIN)
        .uid(NOBODY)
        .gid(NOBODY)
        .arg("--socket")
        .arg(&stack.socket)
        .arg("status")
        .output()
        .expect("run stackinit as nobody");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = text(&output.stderr);
    assert_eq!(
        stderr,
        format!(
            "stackinit: cannot connect to {}: Permission denied (are you root or in the control group?)\n",
            stack.socket.display()
        )
    );
}

#[test]
fn control_group_members_are_allowed() {
    let stack = FakeStack::start_with_group(Some(CONTROL_GID));
    stack.open_up(0o660);
    // By supplementary group (read from /proc/PID/status of the peer).
    let (status, body) = curl_as_nobody(&stack.socket, Some(&CONTROL_GID.to_string()), NOBODY);
    assert_eq!(status, 200, "{body}");
    let value: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(value["services"].as_array().map(Vec::len), Some(5));
    // By primary group.
    let (status, body) = curl_as_nobody(&stack.socket, None, CONTROL_GID);
    assert_eq!(status, 200, "{body}");
    // A group member may change state too.
    let output = Command::new(BIN)
        .uid(NOBODY)
        .gid(CONTROL_GID)
        .arg("--socket")
        .arg(&stack.socket)
        .args(["restart", "app"])
        .output()
        .expect("run stackinit as a group member");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        stack.next_event(),
        Event::Control("app".into(), Action::Restart)
    );
}
