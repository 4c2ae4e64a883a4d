//! `/metrics` scraped by a real Prometheus server (Debian's), and a few series queried back.

mod support;

use std::process::Command;
use std::time::Duration;

use support::http::get;
use support::*;

const TOKEN: &str = "metrics-test-token-0123456789abcdef";

/// A Prometheus server on loopback scraping `target` every second with the dashboard's bearer token.
fn prometheus(dir: &std::path::Path, target: u16) -> (Guarded, u16) {
    let port = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: stackinit\n    authorization:\n      credentials: {TOKEN}\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let server = Guarded::spawn(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
        "prometheus (Debian package prometheus)",
    );
    (server, port)
}

/// The value of an instant query that returns one series, once it does.
fn query(port: u16, promql: &str) -> Option<String> {
    let path = format!("/api/v1/query?query={}", encode(promql));
    let reply = get(port, "127.0.0.1", &path).ok()?;
    // 503 while the server starts.
    if reply.status != 200 {
        return None;
    }
    let json = reply.json();
    let result = json["data"]["result"].as_array()?;
    let [series] = result.as_slice() else {
        return None;
    };
    series["value"][1].as_str().map(String::from)
}

/// Percent-encode a query for a URL.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_service_state_readiness_and_health() {
    let dashboard = free_port();
    let stack = Stack::start(&format!(
        r#"dashboard = "127.0.0.1:{dashboard}"
dashboard_token = "{TOKEN}"

[service.web]
command = ["sleep", "100000"]
start_secs = "0s"

[service.broken]
command = ["sh", "-c", "exit 3"]
"#
    ));
    stack.wait_state("web", "running", Duration::from_secs(10));
    let dir = temp_dir("stackinit-prometheus");
    let (_server, port) = prometheus(dir.path(), dashboard);
    for (promql, want) in [
        (r#"stackinit_service_ready{unit="web"}"#, "1"),
        (
            r#"stackinit_service_state{unit="web",state="running"}"#,
            "1",
        ),
        (
            r#"stackinit_service_state{unit="broken",state="running"}"#,
            "0",
        ),
        ("stackinit_healthz_healthy", "0"),
        (r#"up{job="stackinit"}"#, "1"),
    ] {
        let got = poll(Duration::from_secs(30), || {
            query(port, promql).filter(|v| v == want)
        });
        assert_eq!(got.as_deref(), Some(want), "{promql}");
    }
    let restarts = poll(Duration::from_secs(30), || {
        query(port, r#"stackinit_service_restarts{unit="broken"}"#)
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|n| *n >= 2)
    });
    assert!(
        restarts.is_some(),
        "broken's restarts never reached Prometheus"
    );
}

/// Poll a query until it answers `want` (Prometheus scrapes every second, the proxy reports every second).
fn expect(port: u16, promql: &str, want: &str) {
    let got = poll(Duration::from_secs(30), || {
        query(port, promql).filter(|v| v == want)
    });
    assert_eq!(
        got.as_deref(),
        Some(want),
        "{promql} (last answer {:?})",
        query(port, promql)
    );
}

#[test]
fn prometheus_scrapes_the_proxys_requests_latency_and_upstreams() {
    let dashboard = free_port();
    let http = free_port();
    let stack = Stack::start(&format!(
        r#"dashboard = "127.0.0.1:{dashboard}"
dashboard_token = "{TOKEN}"

[service.app]
command = ["stackinit", "demo-worker"]
listen = "unix:{{dir}}/app.sock"
start_secs = "100ms"

[proxy]
listen = ["127.0.0.1:{http}"]

[[proxy.server]]
server_name = ["metrics.test"]
  [[proxy.server.location]]
  path = "/"
  upstream = "app"
  [[proxy.server.location]]
  path = "/gone"
  return = 410
"#
    ));
    stack.wait_state("app", "running", Duration::from_secs(10));
    stack.wait_state("proxy", "running", Duration::from_secs(10));
    let served = poll(Duration::from_secs(10), || {
        get(http, "metrics.test", "/")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert!(served.is_some(), "the proxy never served the app");
    for _ in 0..4 {
        assert_eq!(get(http, "metrics.test", "/").unwrap().status, 200);
    }
    assert_eq!(get(http, "metrics.test", "/missing").unwrap().status, 404);
    assert_eq!(get(http, "metrics.test", "/gone").unwrap().status, 410);
    // One slow request: its latency lands past the 1 s bucket, the others well within it.
    assert_eq!(
        get(http, "metrics.test", "/slow?ms=1200").unwrap().status,
        200
    );
    assert!(get(http, "metrics.test", "/healthz").is_ok());

    let dir = temp_dir("stackinit-prometheus");
    let (_server, port) = prometheus(dir.path(), dashboard);
    let app = r#"server="metrics.test",upstream="app""#;
    // The first `/` the poll above made may have found the app not ready yet: at least 6 answered 200.
    let ok = poll(Duration::from_secs(30), || {
        query(
            port,
            &format!(r#"stackinit_proxy_requests_total{{{app},class="2xx"}}"#),
        )
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| *n >= 6)
    })
    .expect("the proxy's 2xx count never reached Prometheus");
    expect(
        port,
        &format!(r#"stackinit_proxy_requests_total{{{app},class="4xx"}}"#),
        "1",
    );
    expect(
        port,
        r#"stackinit_proxy_requests_total{server="metrics.test",upstream="-",class="4xx"}"#,
        "1",
    );
    expect(
        port,
        r#"sum(stackinit_proxy_requests_total{server="-",upstream="-"})"#,
        "1",
    );
    let count = ok + 1;
    expect(
        port,
        &format!("stackinit_proxy_request_duration_seconds_count{{{app}}}"),
        &count.to_string(),
    );
    expect(
        port,
        &format!(r#"sum(stackinit_proxy_request_duration_seconds_bucket{{{app},le=~"1|1.0"}})"#),
        &(count - 1).to_string(),
    );
    expect(port, &format!("stackinit_proxy_in_flight{{{app}}}"), "0");
    expect(
        port,
        r#"stackinit_proxy_retries_total{upstream="app"}"#,
        "0",
    );
}
