//! The built-in demo's worker (`stackinit demo-worker`) on inherited sockets, unix and TCP, and behind the proxy.

mod support;

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use support::http::{get, read_reply};
use support::{Guarded, BIN};

/// Start the demo worker with `fd` as its only LISTEN_FDS socket (moved to fd 3).
fn start_worker(fd: i32, replica: &str) -> Guarded {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" demo-worker")
        .arg(BIN);
    command
        .env("LISTEN_FDS", "1")
        .env("STACKINIT_REPLICA", replica);
    // SAFETY: only dup2 (async-signal-safe) runs between fork and exec.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 100) < 0 || libc::dup2(100, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Guarded::spawn(&mut command, "stackinit demo-worker")
}

#[test]
fn demo_worker_serves_unix_and_tcp_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("demo@0.sock");
    let unix = UnixListener::bind(&sock).unwrap();
    let mut worker = start_worker(unix.as_raw_fd(), "0");
    let mut stream = UnixStream::connect(&sock).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let reply = read_reply(&mut BufReader::new(stream), false).unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("replica 0"), "{}", reply.text());
    assert!(
        reply.text().contains(&format!("pid {}", worker.pid())),
        "{}",
        reply.text()
    );

    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let _tcp_worker = start_worker(tcp.as_raw_fd(), "1");
    let started = Instant::now();
    let slow = get(addr, "x", "/slow?ms=300").unwrap();
    assert_eq!(slow.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(slow.text().contains("replica 1"));

    let status = worker
        .terminate(Duration::from_secs(10))
        .expect("worker stops on SIGTERM");
    assert!(status.success(), "{status}");
}
