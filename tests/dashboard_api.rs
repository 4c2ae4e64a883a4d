//! The dashboard's endpoints on the control socket, for scripts (no browser): the page, the event
//! stream, facts and health, and the CSRF rule for browser-looking POSTs. Runs the real binary.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use support::http::Request;
use support::{csrf_token, poll_every, wait_until, Stack};

const WAIT: Duration = Duration::from_secs(20);

const CONFIG: &str = r#"
shutdown_drain = "3s"

[service.web]
command = ["sleep", "100000"]
start_secs = "100ms"
stop_grace = "2s"

[service.worker]
command = ["sleep", "100000"]
start_secs = "100ms"
stop_grace = "2s"

[service.jobs]
command = ["sleep", "100000"]
start_secs = "100ms"
autostart = false
stop_grace = "2s"
"#;

/// One request on the control socket: (status, lowercased head, body).
fn request(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    Request::new(socket, method, path)
        .headers(headers)
        .timeout(Duration::from_secs(10))
        .reply()
        .parts()
}

/// An open `GET /v1/events` stream; `wait_for` reads until a predicate holds on everything so far.
struct Events {
    stream: UnixStream,
    seen: String,
}

impl Events {
    fn open(socket: &Path) -> Events {
        let mut stream = UnixStream::connect(socket).expect("connect");
        stream
            .write_all(
                b"GET /v1/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
            )
            .expect("write");
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Events {
            stream,
            seen: String::new(),
        }
    }

    fn wait_for(&mut self, what: &str, mut done: impl FnMut(&str) -> bool) {
        let mut buf = [0u8; 8192];
        // No pause between polls: each read waits up to its 200 ms timeout for more of the stream.
        let found = poll_every(Duration::ZERO, WAIT, || {
            if done(&self.seen) {
                return Some(());
            }
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("event stream ended:\n{}", self.seen),
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => {}
            }
            None
        });
        assert!(
            found.is_some(),
            "no {what} in the event stream:\n{}",
            self.seen
        );
    }

    /// The JSON payloads of every `event: NAME` seen so far (chunk framing is skipped: each
    /// event's data is one line).
    fn payloads(&self, name: &str) -> Vec<Value> {
        let marker = format!("event: {name}\ndata: ");
        self.seen
            .split(&marker)
            .skip(1)
            .filter_map(|rest| rest.split('\n').next())
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

#[test]
fn page_facts_and_event_stream_on_the_control_socket() {
    let mut stack = Stack::start(CONFIG);
    stack.wait_state("web", "running", WAIT);
    stack.wait_state("worker", "running", WAIT);
    let socket = stack.socket.clone();

    // The page, with a CSRF token and a strict content security policy.
    let (status, head, body) = request(&socket, "GET", "/", &[]);
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(head.contains("x-frame-options: deny"), "{head}");
    assert!(
        body.contains("<meta name=\"csrf-token\" content=\""),
        "no token"
    );
    assert!(!body.contains("{{CSRF}}") && !body.contains("{{NONCE}}"));
    assert!(body.len() < 48 * 1024);

    // Facts and health.
    let (status, _, body) = request(&socket, "GET", "/v1/facts", &[]);
    assert_eq!(status, 200, "{body}");
    let facts: Value = serde_json::from_str(&body).expect("json");
    assert!(facts["facts"]["source"].is_string(), "{facts}");
    // jobs is critical (the default) and not started, so /healthz would say 503.
    assert_eq!(facts["health"]["healthy"], false, "{facts}");
    assert_eq!(
        facts["health"]["unhealthy"],
        serde_json::json!(["jobs"]),
        "{facts}"
    );

    // The stream: a snapshot, then the health, then one event per change.
    let mut events = Events::open(&socket);
    events.wait_for("snapshot and health", |s| {
        s.contains("event: snapshot") && s.contains("event: health")
    });
    assert!(events.seen.starts_with("HTTP/1.1 200"), "{}", events.seen);
    assert!(events
        .seen
        .to_ascii_lowercase()
        .contains("content-type: text/event-stream"));
    let snapshot = &events.payloads("snapshot")[0];
    assert_eq!(
        snapshot["services"].as_array().map(Vec::len),
        Some(3),
        "{snapshot}"
    );
    assert_eq!(
        events.payloads("health")[0]["unhealthy"],
        serde_json::json!(["jobs"])
    );

    // Starting jobs makes the stack healthy: service events for jobs, then a health event.
    let out = stack.cli(&["start", "jobs"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    events.wait_for("jobs running and healthy", |s| {
        s.contains("\"healthy\":true") && s.contains("\"name\":\"jobs\"")
    });
    let jobs: Vec<Value> = events
        .payloads("service")
        .into_iter()
        .filter(|s| s["name"] == "jobs")
        .collect();
    assert!(
        jobs.iter()
            .any(|s| s["state"] == "running" && s["ready"] == true),
        "{jobs:?}"
    );

    // A restart from the CLI (no token needed on the unix socket) shows up as the new pid.
    let old = stack.pid_of("web").expect("pid");
    let out = stack.cli(&["restart", "web"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(WAIT, || stack
        .pid_of("web")
        .is_some_and(|p| p != old)));
    let new = stack.pid_of("web").expect("pid");
    events.wait_for("web's new pid", |s| s.contains(&format!("\"pid\":{new}")));
    stack.wait_state("web", "running", WAIT);

    // Shutdown: the draining flag reaches the stream at once, before any service stops.
    stack.signal(Signal::SIGTERM);
    events.wait_for("draining", |s| s.contains("\"draining\":true"));
    let last = events.payloads("health").pop().expect("health");
    assert_eq!(last["healthy"], false);
    assert_eq!(
        stack.state_of_quiet("web"),
        Some("running".into()),
        "drain comes first"
    );
    stack.stop();
}

#[test]
fn browser_posts_on_the_control_socket_need_the_csrf_token() {
    let stack = Stack::start(CONFIG);
    stack.wait_state("web", "running", WAIT);
    let socket = stack.socket.clone();
    let pid = stack.pid_of("web");
    let (_, _, page) = request(&socket, "GET", "/", &[]);
    let token = csrf_token(&page);

    // SSH forwarding hands the browser's requests to the socket: they carry Origin/Sec-Fetch-Site.
    for headers in [
        vec![("Origin", "http://localhost")],
        vec![("Sec-Fetch-Site", "same-origin")],
        vec![
            ("Origin", "http://evil.example"),
            ("X-Stackinit-CSRF", token.as_str()),
        ],
        vec![
            ("Sec-Fetch-Site", "cross-site"),
            ("X-Stackinit-CSRF", token.as_str()),
        ],
        vec![("Origin", "null"), ("X-Stackinit-CSRF", token.as_str())],
        vec![
            ("Origin", "http://localhost"),
            ("X-Stackinit-CSRF", "0123456789abcdef0123456789abcdef"),
        ],
    ] {
        let (status, head, body) = request(&socket, "POST", "/v1/services/web/stop", &headers);
        assert_eq!(status, 403, "{headers:?}: {body}");
        assert!(head.contains("application/json"));
        assert!(serde_json::from_str::<Value>(&body).expect("json")["error"].is_string());
    }
    assert_eq!(stack.pid_of("web"), pid, "a refused POST stopped web");

    // The page's own POST (same origin, token) works, and so does the CLI with neither.
    let (status, _, body) = request(
        &socket,
        "POST",
        "/v1/services/web/restart",
        &[
            ("Origin", "http://localhost"),
            ("Sec-Fetch-Site", "same-origin"),
            ("X-Stackinit-CSRF", &token),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = request(&socket, "POST", "/v1/services/worker/restart", &[]);
    assert_eq!(status, 200, "{body}");
}

trait QuietState {
    fn state_of_quiet(&self, name: &str) -> Option<String>;
}

impl QuietState for Stack {
    /// The state through the CLI, or None once the control socket is gone.
    fn state_of_quiet(&self, name: &str) -> Option<String> {
        let out = self.cli(&["status", "--json"]);
        let status: Value = serde_json::from_slice(&out.stdout).ok()?;
        status["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["state"].as_str().map(str::to_string))
    }
}
