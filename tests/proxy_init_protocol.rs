//! The proxy as init runs it: listeners and the `stackinit-state` channel handed in through LISTEN_FDS, a
//! Config message first, then State messages that drive `/healthz` and which replicas get traffic.

#[path = "support/proxy_harness.rs"]
mod harness;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{get, Echo, Guarded, BIN};

struct InitSide {
    _dir: tempfile::TempDir,
    proxy: Guarded,
    channel: UnixStream,
    addr: SocketAddr,
}

/// Start `stackinit proxy` with fd 3 = a TCP listener (`http`) and fd 4 = our end of a socketpair.
fn start() -> InitSide {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (listen_fd, channel_fd) = (listener.as_raw_fd(), theirs.as_raw_fd());
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" proxy")
        .arg(BIN)
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", "http:stackinit-state")
        .stdout(std::fs::File::create(dir.path().join("access.log")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("proxy.err")).unwrap());
    // SAFETY: only dup2 (async-signal-safe) runs between fork and exec. Going through fds 100/101 first keeps
    // the moves from clobbering each other whatever numbers the sources have.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            for (from, to) in [(listen_fd, 100), (channel_fd, 101), (100, 3), (101, 4)] {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("start stackinit proxy");
    drop(theirs);
    drop(listener);
    InitSide {
        _dir: dir,
        proxy: Guarded {
            child,
            name: "proxy".into(),
        },
        channel: ours,
        addr,
    }
}

impl InitSide {
    fn send(&mut self, message: serde_json::Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.channel.write_all(line.as_bytes()).unwrap();
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("proxy.err")).unwrap_or_default()
    }

    /// Poll `/healthz` until it answers `status` (bounded): the message and the request race by design.
    fn wait_health(&self, status: u16) -> harness::Reply {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = get(self.addr, "10.0.0.9", "/healthz").unwrap();
            if reply.status == status || Instant::now() > deadline {
                assert_eq!(
                    reply.status,
                    status,
                    "healthz: {} / {}",
                    reply.text(),
                    self.stderr()
                );
                return reply;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_status(&self, path: &str, status: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = get(self.addr, "app.test", path).unwrap();
            if reply.status == status || Instant::now() > deadline {
                assert_eq!(
                    reply.status,
                    status,
                    "{path}: {} / {}",
                    reply.text(),
                    self.stderr()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn config(upstream_address: &str, names: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "type": "config",
        "proxy": {
            "listen": ["127.0.0.1:1"],
            // A request for a replica that is not ready waits this long before its 502.
            "queue_timeout": "1s",
            "server": [{"server_name": names, "location": [{"path": "/", "upstream": "app"}]}],
        },
        "upstreams": {"app": [{"name": "app@0", "address": upstream_address}]},
        "extra_server_names": [],
        "logs_dir": "/tmp",
    })
}

fn state(ready: &[&str], unhealthy: &[&str], draining: bool) -> serde_json::Value {
    serde_json::json!({"type": "state", "draining": draining, "ready": ready, "unhealthy": unhealthy})
}

#[test]
fn state_messages_drive_healthz_and_routing() {
    let echo = Echo::start("e");
    let mut init = start();
    init.send(config(&echo.addr.to_string(), &["app.test"]));
    harness::wait_for_port(init.addr);
    // A config but no state yet: the proxy does not answer, so a load balancer never sees a 200 from
    // /healthz before init has said what is ready. The request waits in the backlog and is answered once
    // the state is in.
    let mut early = std::net::TcpStream::connect(init.addr).unwrap();
    early
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    early
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut answer = Vec::new();
    let waited = std::io::Read::read_to_end(&mut early, &mut answer);
    assert!(
        waited.is_err() && answer.is_empty(),
        "answered before any state: {:?}",
        String::from_utf8_lossy(&answer)
    );
    init.send(state(&[], &["app"], false));
    early
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = std::io::Read::read_to_end(&mut early, &mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    init.send(state(&[], &[], false));
    init.wait_health(200);
    // Not ready yet: no traffic to the replica.
    init.wait_status("/", 502);
    init.send(state(&["app@0"], &[], false));
    init.wait_status("/", 200);
    init.send(state(&["app@0"], &["app"], false));
    let sick = init.wait_health(503);
    assert_eq!(sick.json()["unhealthy"][0], "app");
    init.send(state(&["app@0"], &[], false));
    init.wait_health(200);
    init.send(state(&["app@0"], &[], true));
    let draining = init.wait_health(503);
    assert_eq!(draining.json()["draining"], true);
    // A new Config (reload) replaces the routes; the replica's readiness carries over.
    init.send(config(&echo.addr.to_string(), &["other.test"]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(init.addr, "other.test", "/").unwrap().status != 200 {
        assert!(
            Instant::now() < deadline,
            "reload not applied: {}",
            init.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Init going away (channel closed) stops the proxy cleanly.
    drop(init.channel);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = init.proxy.child.try_wait().unwrap() {
            assert!(status.success(), "exit {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "proxy did not stop after EOF on its channel"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn wrong_listen_pid_is_refused() {
    let output = Command::new(BIN)
        .arg("proxy")
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDNAMES", "http")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("LISTEN_PID"));
}
