//! The proxy as init runs it: listeners and the `stackinit-state` channel handed in through LISTEN_FDS, a
//! Config message first, then State messages that drive `/healthz` and which replicas get traffic.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use support::http::{get, Reply};
use support::proxy::Echo;
use support::{poll_every, wait_exit, wait_for_port, Guarded, BIN};

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
    let proxy = Guarded::spawn(&mut command, "stackinit proxy");
    drop(theirs);
    drop(listener);
    InitSide {
        _dir: dir,
        proxy,
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

    /// Poll `path` (with Host `host`) until it answers `status` (bounded): the message and the request
    /// race by design.
    fn wait_reply(&self, host: &str, path: &str, status: u16) -> Reply {
        let mut last = None;
        let reply = poll_every(Duration::from_millis(20), Duration::from_secs(10), || {
            let reply = get(self.addr, host, path).expect("GET through the proxy");
            if reply.status == status {
                return Some(reply);
            }
            last = Some(reply);
            None
        });
        reply.unwrap_or_else(|| {
            let last = last.expect("a reply");
            panic!(
                "{path} (Host {host}): {} after 10 s, not {status}: {} / {}",
                last.status,
                last.text(),
                self.stderr()
            )
        })
    }

    fn wait_health(&self, status: u16) -> Reply {
        self.wait_reply("10.0.0.9", "/healthz", status)
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
    wait_for_port(init.addr);
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
    init.wait_reply("app.test", "/", 502);
    init.send(state(&["app@0"], &[], false));
    init.wait_reply("app.test", "/", 200);
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
    init.wait_reply("other.test", "/", 200);
    // Init going away (channel closed) stops the proxy cleanly.
    drop(init.channel);
    let status = wait_exit(&mut init.proxy.child, Duration::from_secs(10))
        .expect("proxy did not stop after EOF on its channel");
    assert!(status.success(), "exit {status}");
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
