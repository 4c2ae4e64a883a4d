//! Faults on an unattended instance: crash loops that never give up by default, starts that count as
//! successful once the service said it is ready, requests handed back from a replica that will not
//! come back at once, and deploy scripts that wait for a rollout.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use support::*;

/// Exits with 3 until `{dir}/fixed` exists, then serves (sleeps).
const BROKEN_UNTIL_FIXED: &str = r#"command = ["sh", "-c", "[ -e {dir}/fixed ] || { echo cannot start >&2; exit 3; }; exec sleep 100000"]"#;

#[test]
fn by_default_a_crash_loop_keeps_retrying_with_the_reason_and_never_goes_fatal() {
    // Fully default restart settings: start_limit 5, backoff from 100 ms doubling to 30 s.
    let stack = Stack::start(&format!("[service.broken]\n{BROKEN_UNTIL_FIXED}\n"));
    let looping = wait_until(Duration::from_secs(10), || {
        stack.unit("broken")["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("crash loop:"))
    });
    let u = stack.unit("broken");
    assert!(looping, "never reported a crash loop: {u}");
    assert_eq!(u["state"], "backoff", "{u}");
    assert_eq!(
        u["reason"], "crash loop: 5 failed starts (last: exit 3); retrying every 30s",
        "{u}"
    );
    // Still retrying, never fatal, a while later.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(stack.state_of("broken"), "backoff");
}

#[test]
fn a_crash_loop_recovers_on_its_own_once_the_cause_is_gone() {
    // backoff_max shortened from 30 s so the retry comes within the test; the default is tested above.
    let stack = Stack::start(&format!(
        "[service.broken]\n{BROKEN_UNTIL_FIXED}\nbackoff_max = \"300ms\"\nstart_limit = 2\n"
    ));
    assert!(wait_until(Duration::from_secs(10), || stack.unit("broken")
        ["reason"]
        .as_str()
        .is_some_and(|r| r.starts_with("crash loop:"))));
    std::fs::write(stack.path("fixed"), "").expect("write fixed");
    stack.wait_state("broken", "running", Duration::from_secs(10));
    let u = stack.unit("broken");
    assert_eq!(u["reason"], serde_json::Value::Null, "{u}");
}

#[test]
fn giving_up_stays_available_as_an_explicit_choice() {
    let stack = Stack::start(&format!(
        "[service.broken]\n{BROKEN_UNTIL_FIXED}\nstart_limit_action = \"fatal\"\nstart_limit = 2\n"
    ));
    stack.wait_state("broken", "fatal", Duration::from_secs(10));
    let u = stack.unit("broken");
    assert_eq!(
        u["reason"], "start limit reached: 2 failed starts (last: exit 3)",
        "{u}"
    );
}

#[test]
fn a_start_that_reached_ready_is_successful_however_soon_the_process_dies() {
    // Each process says READY=1 and dies 200 ms later, well inside start_secs (1 s): with giving up
    // chosen explicitly, ready starts must still never count towards the start limit.
    let stack = Stack::start(
        r#"
[service.flaky]
command = ["python3", "-c", """
import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])
time.sleep(0.2)
raise SystemExit(3)
"""]
notify = true
start_limit = 2
start_limit_action = "fatal"
backoff_max = "200ms"
"#,
    );
    let restarted = wait_until(Duration::from_secs(20), || {
        stack.unit("flaky")["restarts"].as_u64() >= Some(6)
    });
    let u = stack.unit("flaky");
    assert!(restarted, "did not keep restarting: {u}");
    assert_ne!(u["state"], "fatal", "{u}");
}

/// A replicated service of two python servers on `{dir}/web@N.sock`.
fn two_web_replicas() -> Stack {
    Stack::start(
        r#"
[service.web]
command = ["python3", "-c", """
import socket
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    c.recv(4096)
    c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok')
    c.close()
"""]
replicas = 2
listen = "unix:{dir}/web.sock"
start_secs = "0s"
"#,
    )
}

/// Connect to a unix socket, send a request, and time how long until the connection ends.
fn request_ends_within(socket: &std::path::Path, limit: Duration) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut conn = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(limit))
        .map_err(|e| e.to_string())?;
    // Ended before the request was even written (EPIPE, ECONNRESET) is ended too.
    if conn.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return Ok(t0.elapsed());
    }
    let mut reply = Vec::new();
    match conn.read_to_end(&mut reply) {
        Ok(_) if reply.is_empty() => Ok(t0.elapsed()),
        Ok(_) => Err(format!("answered: {:?}", String::from_utf8_lossy(&reply))),
        // Closed with the request unread: the peer sees a reset, which ends it as well.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(t0.elapsed()),
        Err(e) => Err(format!("no answer within {limit:?}: {e}")),
    }
}

#[test]
fn a_request_queued_on_a_replica_that_will_not_come_back_at_once_is_handed_back() {
    let stack = two_web_replicas();
    stack.wait_state("web@1", "running", Duration::from_secs(10));
    let out = stack.cli(&["stop", "web@1"]);
    assert!(out.status.success(), "{out:?}");
    stack.wait_state("web@1", "stopped", Duration::from_secs(10));
    // Nothing will accept on web@1's socket: what is queued there must end at once, so that the proxy
    // retries it on another replica, rather than wait for its upstream timeout.
    let socket = stack.path("web@1.sock");
    for _ in 0..3 {
        let ended = request_ends_within(&socket, Duration::from_secs(3));
        assert!(
            ended.as_ref().is_ok_and(|t| *t < Duration::from_secs(1)),
            "{ended:?}"
        );
    }
    // The replica that runs still answers, and web@1 serves again once started.
    let running = request_ends_within(&stack.path("web@0.sock"), Duration::from_secs(3));
    assert!(
        running.as_ref().is_err_and(|e| e.starts_with("answered")),
        "{running:?}"
    );
    assert!(stack.cli(&["start", "web@1"]).status.success());
    stack.wait_state("web@1", "running", Duration::from_secs(10));
    let answered = request_ends_within(&socket, Duration::from_secs(3));
    assert!(
        answered.as_ref().is_err_and(|e| e.starts_with("answered")),
        "{answered:?}"
    );
}
