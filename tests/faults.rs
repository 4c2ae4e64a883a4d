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

/// Three replicas of a python server with a readiness probe; a replica started while `{dir}/broken`
/// exists answers 500 and never gets ready.
fn web_with_readiness(extra: &str) -> Stack {
    Stack::start(&format!(
        r#"
[service.web]
command = ["python3", "-c", """
import os, socket
status = b'500 Broken' if os.path.exists('{{dir}}/broken') else b'200 OK'
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    try:
        c.recv(4096)
        c.sendall(b'HTTP/1.0 ' + status + b'\\r\\nContent-Length: 2\\r\\n\\r\\nok')
    except OSError:
        pass
    c.close()
"""]
replicas = 3
listen = "unix:{{dir}}/web.sock"
start_secs = "0s"
readiness = {{ http = "/", expect = 200, period = "100ms" }}
{extra}
"#
    ))
}

fn all_ready(stack: &Stack) -> bool {
    (0..3).all(|i| stack.unit(&format!("web@{i}"))["ready"] == true)
}

#[test]
fn restart_wait_returns_once_every_replica_is_replaced_and_ready() {
    let stack = web_with_readiness("");
    assert!(wait_until(Duration::from_secs(15), || all_ready(&stack)));
    let before: Vec<_> = (0..3).map(|i| stack.pid_of(&format!("web@{i}"))).collect();
    let out = stack.cli(&["restart", "web", "--wait"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("every replica replaced and ready"),
        "{out:?}"
    );
    // When it returns, the rollout is over: every replica is new and ready.
    let after: Vec<_> = (0..3).map(|i| stack.pid_of(&format!("web@{i}"))).collect();
    assert!(all_ready(&stack), "{}", stack.status());
    for (b, a) in before.iter().zip(&after) {
        assert!(a.is_some() && a != b, "{before:?} -> {after:?}");
    }
}

#[test]
fn restart_wait_exits_non_zero_when_the_rollout_halts() {
    // ready_timeout shortened from its default so the halt comes within the test.
    let stack = web_with_readiness("ready_timeout = \"2s\"");
    assert!(wait_until(Duration::from_secs(15), || all_ready(&stack)));
    std::fs::write(stack.path("broken"), "").expect("write broken");
    let out = stack.cli(&["restart", "web", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rollout halted"), "{err}");
    assert!(
        all_ready(&stack),
        "the old replicas serve on: {}",
        stack.status()
    );
}

#[test]
fn restart_wait_gives_up_waiting_after_its_duration_with_exit_5() {
    let stack = web_with_readiness("ready_timeout = \"30s\"");
    assert!(wait_until(Duration::from_secs(15), || all_ready(&stack)));
    std::fs::write(stack.path("broken"), "").expect("write broken");
    let t0 = Instant::now();
    let out = stack.cli(&["restart", "web", "--wait", "1s"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still going"),
        "{out:?}"
    );
}

#[test]
fn a_service_cannot_make_another_services_process_its_main_pid() {
    // The attacker finds the victim's pid and claims it with MAINPID=. Both run as nobody, so only
    // "it belongs to another unit" can refuse it.
    let stack = Stack::start(
        r#"
[service.victim]
command = ["sleep", "100001"]
user = "nobody"

[service.attacker]
# Debian's python: one under root's home (pyenv, a venv) is not reachable as nobody.
command = ["/usr/bin/python3", "-c", """
import os, socket, time
marker = str(100000 + 1).encode()
def victim():
    for p in os.listdir('/proc'):
        try:
            if p.isdigit() and marker in open('/proc/%s/cmdline' % p, 'rb').read():
                return int(p)
        except OSError:
            pass
pid = None
while pid is None:
    pid = victim()
    time.sleep(0.05)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(('READY=1\\nMAINPID=%d' % pid).encode(), os.environ['NOTIFY_SOCKET'])
time.sleep(100000)
"""]
user = "nobody"
notify = true
"#,
    );
    stack.wait_state("victim", "running", Duration::from_secs(10));
    let victim = stack.pid_of("victim").expect("victim pid");
    let refused = wait_until(Duration::from_secs(10), || {
        stack
            .stderr()
            .contains(&format!("MAINPID={victim} refused"))
    });
    assert!(refused, "no refusal logged:\n{}", stack.stderr());
    let attacker = stack.pid_of("attacker").expect("attacker pid");
    assert_ne!(attacker, victim);
    let out = stack.cli(&["stop", "attacker"]);
    assert!(out.status.success(), "{out:?}");
    stack.wait_state("attacker", "stopped", Duration::from_secs(10));
    assert!(
        !process_exists(attacker),
        "the attacker's own process was not stopped"
    );
    assert!(
        process_exists(victim),
        "the victim was stopped in the attacker's name"
    );
    assert_eq!(stack.pid_of("victim"), Some(victim));
}

#[test]
fn a_flood_on_the_notify_socket_is_bounded_and_other_services_are_still_heard() {
    let stack = Stack::start(
        r#"
[service.flood]
command = ["/usr/bin/python3", "-c", """
import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
end = time.time() + 4
while time.time() < end:
    try:
        s.sendto(b'STATUS=flood', os.environ['NOTIFY_SOCKET'])
    except OSError:
        pass
time.sleep(100000)
"""]
user = "nobody"

[service.legit]
command = ["python3", "-c", """
import os, socket, time
time.sleep(1.5)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])
time.sleep(100000)
"""]
notify = true
"#,
    );
    stack.wait_state("flood", "running", Duration::from_secs(10));
    // The other service's READY=1, sent in the middle of the flood, still gets through, and the flood
    // beyond its sender's budget is dropped before the supervisor spends any work on it. (What that
    // saves in CPU is a figure for a benchmark, not an assertion here.)
    stack.wait_state("legit", "running", Duration::from_secs(10));
    assert_eq!(stack.unit("legit")["ready"], true);
    assert!(
        stack.stderr().contains("messages a second"),
        "the drop was not reported:\n{}",
        stack.stderr()
    );
}
