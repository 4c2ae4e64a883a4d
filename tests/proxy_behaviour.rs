//! Black-box behaviour of the standalone proxy: limits (413, 431), upstream failures (502, 504), slowloris,
//! retries across replicas, fewest-in-flight, WebSocket, static files and graceful stop.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::free_port;
use support::http::{get, raw_request, read_reply};
use support::proxy::{ws_frame, Echo, ProxyProcess};

struct Setup {
    _dir: tempfile::TempDir,
    proxy: ProxyProcess,
    addr: SocketAddr,
}

/// A proxy on a fresh port with `[proxy]` extras, servers and services given as TOML.
fn setup(proxy_extra: &str, rest: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = format!(
        "[init]\nlogs_dir = \"{}\"\n[proxy]\nlisten = [\"{addr}\"]\n{proxy_extra}\n{rest}",
        dir.path().display()
    );
    let proxy = ProxyProcess::start(dir.path(), &config, addr);
    Setup {
        _dir: dir,
        proxy,
        addr,
    }
}

fn one_location(upstream: &str) -> String {
    format!("[[proxy.server]]\nserver_name = [\"t\"]\n  [[proxy.server.location]]\n  path = \"/\"\n  upstream = \"{upstream}\"\n")
}

#[test]
fn body_and_header_limits_give_413_and_431() {
    let echo = Echo::start("e");
    let s = setup(
        "client_max_body_size = \"1KB\"\nmax_header_size = \"4KB\"",
        &one_location(&echo.addr.to_string()),
    );
    let small =
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789";
    let reply = raw_request(s.addr, small.as_bytes()).unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["body_len"], 10);
    // Declared too large: refused before the body is read.
    let big = "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_request(s.addr, big.as_bytes()).unwrap().status, 413);
    // Chunked, so only counting the streamed bytes can catch it.
    let mut chunked =
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(b"300\r\n");
        chunked.extend_from_slice(&[b'x'; 0x300]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw_request(s.addr, &chunked).unwrap().status, 413);
    let huge_header = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(10_000)
    );
    assert_eq!(
        raw_request(s.addr, huge_header.as_bytes()).unwrap().status,
        431
    );
}

#[test]
fn upstream_down_gives_502_and_silent_upstream_gives_504() {
    let dead = free_port();
    let echo = Echo::start("e");
    let servers = format!(
        "[[proxy.server]]\nserver_name = [\"t\"]\n  [[proxy.server.location]]\n  path = \"/\"\n  upstream = \"127.0.0.1:{dead}\"\n\
           [[proxy.server.location]]\n  path = \"/hang\"\n  upstream = \"{}\"\n",
        echo.addr
    );
    let s = setup("upstream_timeout = \"500ms\"", &servers);
    let reply = get(s.addr, "t", "/").unwrap();
    assert_eq!(reply.status, 502);
    assert!(
        reply.body.len() < 100,
        "short body, got {} bytes",
        reply.body.len()
    );
    let started = Instant::now();
    assert_eq!(get(s.addr, "t", "/hang").unwrap().status, 504);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn slowloris_connections_are_closed_while_normal_requests_flow() {
    let echo = Echo::start("e");
    let s = setup(
        "header_timeout = \"1s\"",
        &one_location(&echo.addr.to_string()),
    );
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut c = TcpStream::connect(s.addr).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").unwrap();
            c
        })
        .collect();
    let started = Instant::now();
    // Normal requests keep working while the slow ones dribble.
    while started.elapsed() < Duration::from_millis(1800) {
        for c in &mut slow {
            let _ = c.write_all(b"X-Slow: 1\r\n");
        }
        assert_eq!(get(s.addr, "t", "/").unwrap().status, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    for mut c in slow {
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 256];
        match c.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(
                    text.starts_with("HTTP/1.1 408"),
                    "slow connection got {text:?}"
                );
            }
        }
    }
}

/// `[service.app]`: `n` replicas on consecutive ports from `base`, with `keys`, served at `/` of `t`.
fn replicated_app(base: u16, n: u16, keys: &str) -> String {
    format!(
        "[service.app]\ncommand = [\"true\"]\nreplicas = {n}\n{keys}listen = \"127.0.0.1:{base}\"\n{}",
        one_location("app")
    )
}

/// `n` free loopback ports in a row; the first of them.
fn consecutive_ports(n: u16) -> u16 {
    loop {
        let base = free_port();
        if base < 60000
            && (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
}

#[test]
fn connect_failures_are_retried_on_another_replica_for_any_method() {
    let base = consecutive_ports(3);
    let _b = Echo::start_on(&format!("127.0.0.1:{}", base + 1), "r1", false);
    let _c = Echo::start_on(&format!("127.0.0.1:{}", base + 2), "r2", false);
    // Replica 0 has no server at all.
    let s = setup("", &replicated_app(base, 3, ""));
    for i in 0..30 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let raw = format!(
            "{method} / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        );
        let reply = raw_request(s.addr, raw.as_bytes()).unwrap();
        assert_eq!(reply.status, 200, "{method} #{i}: {}", reply.text());
    }
    let _ = s.proxy.stderr();
}

/// The admission tests run with the default workers (one per core) and with 4 workers, more than this
/// machine's cores: the queue and the fewest-in-flight choice are global, whichever worker a request is on.
const FOUR_WORKERS: &str = "workers = 4";

#[test]
fn a_request_whose_free_replica_refuses_waits_for_the_busy_one_and_the_proxy_stays_responsive() {
    waits_for_the_busy_replica("");
}

#[test]
fn a_request_whose_free_replica_refuses_waits_for_the_busy_one_with_four_workers() {
    waits_for_the_busy_replica(FOUR_WORKERS);
}

fn waits_for_the_busy_replica(workers: &str) {
    // Replica 0 refuses connections (nothing listens); replica 1 serves one request at a time and is busy.
    // The second request fails on replica 0 and must wait for replica 1, not spin on replica 0's room.
    let base = consecutive_ports(2);
    let _r1 = Echo::start_on(&format!("127.0.0.1:{}", base + 1), "r1", true);
    let s = setup(
        &format!("queue_timeout = \"20s\"\n{workers}"),
        &replicated_app(base, 2, "max_in_flight = 1\n"),
    );
    let addr = s.addr;
    let slow = std::thread::spawn(move || get(addr, "t", "/slow?ms=1500").unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let waiting = std::thread::spawn(move || get(addr, "t", "/fast").unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let health_started = Instant::now();
    let health = get(s.addr, "any", "/healthz").unwrap();
    assert_eq!(health.status, 200);
    assert!(
        health_started.elapsed() < Duration::from_millis(500),
        "the proxy stalled while a request waited: /healthz took {:?}",
        health_started.elapsed()
    );
    let reply = waiting.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["id"], "r1");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(5),
        "it should have waited for the slow request on r1 to end, not {waited:?}"
    );
    assert_eq!(slow.join().unwrap().status, 200);
}

#[test]
fn fast_requests_do_not_queue_behind_a_slow_one() {
    fast_requests_avoid_the_busy_replica("");
}

#[test]
fn fast_requests_do_not_queue_behind_a_slow_one_with_four_workers() {
    fast_requests_avoid_the_busy_replica(FOUR_WORKERS);
}

fn fast_requests_avoid_the_busy_replica(workers: &str) {
    let base = consecutive_ports(2);
    let _a = Echo::start_on(&format!("127.0.0.1:{base}"), "r0", true);
    let _b = Echo::start_on(&format!("127.0.0.1:{}", base + 1), "r1", true);
    let s = setup(workers, &replicated_app(base, 2, ""));
    let addr = s.addr;
    let slow = std::thread::spawn(move || get(addr, "t", "/slow?ms=3000").unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let started = Instant::now();
        let reply = get(s.addr, "t", "/fast").unwrap();
        assert_eq!(reply.status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "a fast request waited {:?}",
            started.elapsed()
        );
        ids.insert(reply.json()["id"].as_str().unwrap().to_string());
    }
    let slow_reply = slow.join().unwrap();
    assert_eq!(slow_reply.status, 200);
    let slow_id = slow_reply.json()["id"].as_str().unwrap().to_string();
    assert!(
        !ids.contains(&slow_id),
        "fast requests went to the busy replica {slow_id}"
    );
}

#[test]
fn websocket_echo_through_the_proxy() {
    let echo = Echo::start("e");
    let s = setup("", &one_location(&echo.addr.to_string()));
    let mut stream = TcpStream::connect(s.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let reply = read_reply(&mut reader, false).unwrap();
    assert_eq!(reply.status, 101);
    assert_eq!(
        reply
            .header("upgrade")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("websocket")
    );
    assert_eq!(
        reply.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    for message in ["hello", "second message through the tunnel"] {
        stream
            .write_all(&ws_frame(1, message.as_bytes(), Some([1, 2, 3, 4])))
            .unwrap();
        let mut head = [0u8; 2];
        reader.read_exact(&mut head).unwrap();
        assert_eq!(head[0], 0x81);
        let mut payload = vec![0u8; (head[1] & 0x7f) as usize];
        reader.read_exact(&mut payload).unwrap();
        assert_eq!(payload, message.as_bytes());
    }
}

/// A request asking to switch to `protocol` (HTTP/1.1 `Connection: Upgrade`), and what the upstream saw of it.
fn upgrade_headers_seen(addr: SocketAddr, path: &str, protocol: &str) -> (u16, Option<String>) {
    let raw = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: {protocol}\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    );
    let reply = raw_request(addr, raw.as_bytes()).unwrap();
    if reply.status != 200 {
        return (reply.status, None);
    }
    let json = reply.json();
    let upgrade = json["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pair| pair[0] == "upgrade")
        .map(|pair| pair[1].as_str().unwrap_or("").to_string());
    (200, upgrade)
}

#[test]
fn only_the_upgrades_a_location_allows_reach_the_upstream() {
    let echo = Echo::start("e");
    let locations = format!(
        "[[proxy.server]]\nserver_name = [\"t\"]\n\
           [[proxy.server.location]]\n  path = \"/\"\n  upstream = \"{up}\"\n\
           [[proxy.server.location]]\n  path = \"/h2c/\"\n  upstream = \"{up}\"\n  upgrade = [\"h2c\"]\n\
           [[proxy.server.location]]\n  path = \"/none/\"\n  upstream = \"{up}\"\n  upgrade = []\n",
        up = echo.addr
    );
    let s = setup("", &locations);
    // By default only WebSocket: an h2c (or any other) switch is forwarded as a plain request, so the
    // upstream cannot open a tunnel past the location rules.
    assert_eq!(upgrade_headers_seen(s.addr, "/", "h2c"), (200, None));
    assert_eq!(upgrade_headers_seen(s.addr, "/", "foo/1"), (200, None));
    assert_eq!(
        upgrade_headers_seen(s.addr, "/h2c/", "h2c"),
        (200, Some("h2c".to_string())),
        "a location that allows h2c forwards it"
    );
    // `upgrade = []`: not even WebSocket (the echo would answer 101 if it saw the Upgrade).
    assert_eq!(
        upgrade_headers_seen(s.addr, "/none/", "websocket"),
        (200, None)
    );
    assert_eq!(upgrade_headers_seen(s.addr, "/", "websocket").0, 101);
}

#[test]
fn static_files_with_index_conditional_and_ranges() {
    let files = tempfile::tempdir().unwrap();
    let root = files.path().join("site");
    std::fs::create_dir_all(root.join("static/sub")).unwrap();
    std::fs::write(root.join("static/app.css"), "body { color: red }\n").unwrap();
    std::fs::write(root.join("static/sub/index.html"), "<h1>sub</h1>\n").unwrap();
    std::fs::write(files.path().join("secret.txt"), "secret\n").unwrap();
    std::os::unix::fs::symlink(
        files.path().join("secret.txt"),
        root.join("static/escape.txt"),
    )
    .unwrap();
    let servers = format!(
        "[[proxy.server]]\nserver_name = [\"t\"]\n  [[proxy.server.location]]\n  path = \"/static/\"\n  root = \"{}\"\n\
           [[proxy.server.location]]\n  path = \"/assets/\"\n  alias = \"{}/static/\"\n",
        root.display(),
        root.display()
    );
    let s = setup("", &servers);
    let css = get(s.addr, "t", "/static/app.css").unwrap();
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), Some("text/css"));
    assert_eq!(css.text(), "body { color: red }\n");
    let etag = css.header("etag").unwrap().to_string();
    let last_modified = css.header("last-modified").unwrap().to_string();
    assert_eq!(
        get(s.addr, "t", "/assets/app.css").unwrap().text(),
        "body { color: red }\n",
        "alias"
    );
    let conditional = |header: &str| {
        raw_request(
            s.addr,
            format!(
                "GET /static/app.css HTTP/1.1\r\nHost: t\r\n{header}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap()
    };
    assert_eq!(conditional(&format!("If-None-Match: {etag}")).status, 304);
    assert_eq!(
        conditional(&format!("If-Modified-Since: {last_modified}")).status,
        304
    );
    let range = conditional("Range: bytes=0-3");
    assert_eq!(range.status, 206);
    assert_eq!(range.text(), "body");
    assert_eq!(range.header("content-range"), Some("bytes 0-3/20"));
    let unsatisfiable = conditional("Range: bytes=100-");
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(unsatisfiable.header("content-range"), Some("bytes */20"));
    assert_eq!(
        get(s.addr, "t", "/static/sub/").unwrap().text(),
        "<h1>sub</h1>\n",
        "index"
    );
    let redirect = get(s.addr, "t", "/static/sub").unwrap();
    assert_eq!(redirect.status, 301);
    assert_eq!(redirect.header("location"), Some("/static/sub/"));
    assert_eq!(get(s.addr, "t", "/static/missing.css").unwrap().status, 404);
    assert_eq!(
        get(s.addr, "t", "/static/escape.txt").unwrap().status,
        404,
        "symlink out of the root"
    );
    assert_eq!(
        get(s.addr, "t", "/static/../../secret.txt").unwrap().status,
        400,
        "traversal above the root"
    );
    assert_eq!(
        get(s.addr, "t", "/static/%2e%2e/%2e%2e/secret.txt")
            .unwrap()
            .status,
        400
    );
    assert_eq!(
        get(s.addr, "t", "/assets/../../secret.txt").unwrap().status,
        400
    );
    let head = raw_request(
        s.addr,
        b"HEAD /static/app.css HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("20"));
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let echo = Echo::start("e");
    let mut s = setup(
        "stop_grace = \"10s\"",
        &one_location(&echo.addr.to_string()),
    );
    let addr = s.addr;
    let in_flight = std::thread::spawn(move || get(addr, "t", "/slow?ms=1500"));
    std::thread::sleep(Duration::from_millis(300));
    let status = s
        .proxy
        .process
        .terminate(Duration::from_secs(10))
        .expect("proxy exits within the grace");
    let reply = in_flight.join().unwrap().unwrap();
    assert_eq!(reply.status, 200, "the in-flight request finished");
    assert!(status.success(), "exit status {status}");
    assert!(TcpStream::connect(addr).is_err(), "listener closed");
    assert!(
        s.proxy
            .access_log()
            .contains("\"GET /slow?ms=1500 HTTP/1.1\" 200"),
        "access log: {}",
        s.proxy.access_log()
    );
}

#[test]
fn healthz_answers_for_any_host_before_routing() {
    let s = setup("", "[[proxy.server]]\nserver_name = [\"only.example\"]\n");
    for host in ["10.0.3.7", "ip-10-0-3-7.ec2.internal", "anything", "a..b"] {
        let reply = get(s.addr, host, "/healthz").unwrap();
        assert_eq!(reply.status, 200, "Host {host}");
        assert_eq!(reply.json()["status"], "ok");
    }
    assert_eq!(get(s.addr, "only.example", "/").unwrap().status, 404);
}

/// The headers an echo upstream saw, by lowercased name.
fn seen_headers(reply: &support::http::Reply) -> std::collections::HashMap<String, String> {
    reply.json()["headers"]
        .as_array()
        .expect("echo headers")
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap_or_default().to_string(),
                pair[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Behind a load balancer: a trusted peer's X-Forwarded-For names the client (the rightmost address that is
/// not itself trusted) and its X-Forwarded-Proto reaches the app; an untrusted peer sending the same
/// headers is the client itself, over plain HTTP. The access log shows the same client the app is told.
/// The trusted peer is `[::1]`, the untrusted one 127.0.0.1: both reach the same proxy.
#[test]
fn only_a_trusted_load_balancer_names_the_client_and_the_scheme() {
    let echo = Echo::start("e");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let config = format!(
        "[init]\nlogs_dir = \"{}\"\n[proxy]\nlisten = [\"{v4}\", \"{v6}\"]\n\
         trusted_proxies = [\"::1\", \"10.0.0.0/8\"]\n{}",
        dir.path().display(),
        one_location(&echo.addr.to_string())
    );
    let proxy = ProxyProcess::start(dir.path(), &config, v4);
    // What an ALB sends: the client's own spoofed entry, then the address the ALB saw, then an internal hop.
    let alb = [
        ("X-Forwarded-For", "6.6.6.6, 198.51.100.7, 10.1.2.3"),
        ("X-Forwarded-Proto", "https"),
        ("X-Real-IP", "6.6.6.6"),
    ];
    let trusted = support::http::Request::new(v6, "GET", "/from-alb")
        .host("t")
        .headers(&alb)
        .reply();
    assert_eq!(trusted.status, 200);
    let h = seen_headers(&trusted);
    assert_eq!(h["x-real-ip"], "198.51.100.7", "{h:?}");
    assert_eq!(h["x-forwarded-proto"], "https", "{h:?}");
    assert_eq!(
        h["x-forwarded-for"], "6.6.6.6, 198.51.100.7, 10.1.2.3, ::1",
        "{h:?}"
    );

    let spoofed = support::http::Request::new(v4, "GET", "/spoofed")
        .host("t")
        .headers(&alb)
        .reply();
    assert_eq!(spoofed.status, 200);
    let h = seen_headers(&spoofed);
    assert_eq!(h["x-real-ip"], "127.0.0.1", "{h:?}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h:?}");

    // The access log is written in batches, just after the responses.
    let log = support::poll_every(Duration::from_millis(20), Duration::from_secs(10), || {
        let log = proxy.access_log();
        log.contains("/spoofed").then_some(log)
    })
    .unwrap_or_else(|| proxy.access_log());
    let line = |path: &str| {
        log.lines()
            .find(|l| l.contains(path))
            .unwrap_or_else(|| panic!("no {path} in the access log: {log}"))
            .to_string()
    };
    assert!(line("/from-alb").starts_with("198.51.100.7 - - ["), "{log}");
    assert!(line("/spoofed").starts_with("127.0.0.1 - - ["), "{log}");
}

/// The last three fields of the access log line for `target`: `$request_time $upstream_response_time
/// $queue_time`, waiting for the batched log to be written.
fn logged_times(s: &Setup, target: &str) -> [String; 3] {
    let needle = format!("\"GET {target} HTTP/1.1\"");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = s.proxy.access_log();
        if let Some(line) = log.lines().find(|l| l.contains(&needle)) {
            let fields: Vec<&str> = line.rsplitn(4, ' ').collect();
            return [fields[2], fields[1], fields[0]].map(String::from);
        }
        assert!(Instant::now() < deadline, "no line for {target} in:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn access_log_tells_the_queue_wait_from_the_upstream_time() {
    // One replica serving one request at a time: the second request waits in the proxy's queue while the
    // first is served. Its upstream time (nginx's `$upstream_response_time`) must be its own 300 ms, not the wait.
    let base = consecutive_ports(1);
    let _r0 = Echo::start_on(&format!("127.0.0.1:{base}"), "r0", true);
    let s = setup(
        "queue_timeout = \"20s\"",
        &replicated_app(base, 1, "max_in_flight = 1\n"),
    );
    let addr = s.addr;
    let first = std::thread::spawn(move || get(addr, "t", "/slow?ms=1000").unwrap());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(get(s.addr, "t", "/slow?ms=300").unwrap().status, 200);
    assert_eq!(first.join().unwrap().status, 200);
    assert_eq!(get(s.addr, "t", "/healthz").unwrap().status, 200);
    let secs = |field: &str| -> f64 { field.parse().unwrap_or_else(|_| panic!("{field:?}")) };

    let [request, upstream, queue] = logged_times(&s, "/slow?ms=300");
    let (request, upstream, queue) = (secs(&request), secs(&upstream), secs(&queue));
    assert!(
        queue >= 0.5,
        "it waited ~800 ms for the replica, queue_time {queue}"
    );
    assert!(
        (0.3..0.6).contains(&upstream),
        "upstream_time {upstream} should be the replica's 300 ms without the wait"
    );
    assert!(
        request + 0.002 >= queue + upstream,
        "request_time {request} holds both"
    );

    let [_, upstream, queue] = logged_times(&s, "/slow?ms=1000");
    assert!(secs(&upstream) >= 1.0, "upstream_time {upstream}");
    assert!(
        secs(&queue) < 0.1,
        "nothing to wait for, queue_time {queue}"
    );

    // Answered by the proxy itself: neither clock ran.
    let [_, upstream, queue] = logged_times(&s, "/healthz");
    assert_eq!((upstream.as_str(), queue.as_str()), ("-", "-"));
}

#[test]
fn with_many_workers_the_access_log_has_every_line_whole_and_in_order_per_connection() {
    // 4 workers serve 24 keep-alive connections at once; each worker buffers its own lines and writes them
    // in batches to the one shared file.
    let echo = Echo::start("e");
    let s = setup(FOUR_WORKERS, &one_location(&echo.addr.to_string()));
    const CONNS: usize = 24;
    const REQUESTS: usize = 200;
    let clients: Vec<_> = (0..CONNS)
        .map(|c| {
            let addr = s.addr;
            std::thread::spawn(move || {
                let stream = TcpStream::connect(addr).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                for r in 0..REQUESTS {
                    let request = format!("GET /c{c}/r{r} HTTP/1.1\r\nHost: t\r\n\r\n");
                    writer.write_all(request.as_bytes()).unwrap();
                    let reply = read_reply(&mut reader, false).unwrap();
                    assert_eq!(reply.status, 200);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    let mut next = vec![0usize; CONNS];
    let lines = support::poll_every(Duration::from_millis(50), Duration::from_secs(10), || {
        let log = s.proxy.access_log();
        (log.lines().count() >= CONNS * REQUESTS).then_some(log)
    })
    .unwrap_or_else(|| s.proxy.access_log());
    for line in lines.lines() {
        let target = line
            .split_once("\"GET /c")
            .and_then(|(_, rest)| rest.split_once(' '))
            .map(|(target, _)| target)
            .unwrap_or_else(|| panic!("not a whole line: {line:?}"));
        let (c, r) = target.split_once("/r").expect("/cN/rM");
        let (c, r): (usize, usize) = (c.parse().unwrap(), r.parse().unwrap());
        assert_eq!(
            r, next[c],
            "connection {c}: line for request {r} out of order"
        );
        next[c] += 1;
        assert!(line.contains("\" 200 "), "{line}");
    }
    assert_eq!(next, vec![REQUESTS; CONNS], "every request logged once");
}

#[test]
fn a_request_its_client_abandons_keeps_its_replica_busy_until_the_replica_answers() {
    // Two sync replicas (one request at a time, like gunicorn's sync workers). A client sends a slow request
    // and hangs up before the answer, as wrk does at the end of a run. The replica still works on it: the
    // proxy must keep counting it busy until it answers, so the requests that follow go to the other replica
    // instead of waiting inside the busy one. And the abandoned request gets its access-log line, 499 as in nginx.
    let base = consecutive_ports(2);
    let _r0 = Echo::start_on(&format!("127.0.0.1:{base}"), "r0", true);
    let _r1 = Echo::start_on(&format!("127.0.0.1:{}", base + 1), "r1", true);
    let s = setup("", &replicated_app(base, 2, "max_in_flight = 1\n"));
    let mut abandoning = TcpStream::connect(s.addr).unwrap();
    abandoning
        .write_all(b"GET /slow?ms=2000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(abandoning);
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..6 {
        let started = Instant::now();
        let reply = get(s.addr, "t", &format!("/fast{i}")).unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "request {i} went to {} and waited {:?} behind the abandoned request",
            reply.json()["id"],
            started.elapsed()
        );
    }
    let [request, ..] = logged_times(&s, "/slow?ms=2000");
    let log = s.proxy.access_log();
    let line = log.lines().find(|l| l.contains("/slow?ms=2000")).unwrap();
    assert!(line.contains("\" 499 0 "), "{line}");
    let request: f64 = request.parse().unwrap();
    assert!(
        (0.2..1.0).contains(&request),
        "request_time {request}: until the client left"
    );
}

/// A keep-alive connection left quiet between requests (its HTTP state let go after a second, and made anew
/// when the next bytes come) goes on serving: a request after the wait, a head split across a wait, two
/// pipelined requests, a request with a body; and it still closes once idle past `idle_timeout`.
#[test]
fn a_keep_alive_connection_quiet_between_requests_serves_on_and_closes_when_idle_too_long() {
    let echo = Echo::start("e");
    let s = setup(
        "idle_timeout = \"4s\"",
        &one_location(&echo.addr.to_string()),
    );
    let conn = TcpStream::connect(s.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    let quiet = || std::thread::sleep(Duration::from_millis(1500));
    let expect_200 = |reader: &mut BufReader<TcpStream>, what: &str| {
        let reply = read_reply(reader, false).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(reply.status, 200, "{what}");
    };
    let get = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    writer.write_all(get).unwrap();
    expect_200(&mut reader, "the first request");
    quiet();
    writer.write_all(get).unwrap();
    expect_200(&mut reader, "a request after a quiet wait");
    writer.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    quiet();
    writer.write_all(b"st: t\r\n\r\n").unwrap();
    expect_200(&mut reader, "a head split across a quiet wait");
    quiet();
    writer.write_all(&[&get[..], &get[..]].concat()).unwrap();
    expect_200(&mut reader, "the first pipelined request");
    expect_200(&mut reader, "the second pipelined request");
    writer
        .write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    expect_200(&mut reader, "a request with a body");
    quiet();
    writer.write_all(get).unwrap();
    expect_200(&mut reader, "a request after a body and a quiet wait");
    let idle = Instant::now();
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).unwrap(), 0, "{rest:?}");
    let waited = idle.elapsed();
    assert!(
        waited > Duration::from_secs(3) && waited < Duration::from_secs(8),
        "closed after {waited:?} idle, idle_timeout 4s"
    );
}
