//! Differential tests: the same servers and names in nginx and in the stackinit proxy; every Host of a corpus
//! must reach the same server (or get the same 400), and the echo upstream must see the same forwarded headers.
//!
//! Documented exceptions (kept on purpose):
//! - `Connection`: nginx talks HTTP/1.0 to upstreams and sends `Connection: close`; stackinit keeps upstream
//!   connections alive (HTTP/1.1) and sends no Connection header.
//! - Headers named in the client's `Connection` header, and `Proxy-Connection`: nginx forwards them, stackinit
//!   removes them as hop-by-hop (RFC 9110 §7.6.1).
//! - An absolute-form request (`GET http://host/path`) is routed by the target's host in both, but nginx (with
//!   Debian's `Host $http_host`) forwards the client's Host header, which may name another server; stackinit
//!   forwards the target's host, the one it routed by (RFC 9112 §3.2.2). nginx accepts any scheme there
//!   (`ftp://`); stackinit answers 400 to anything but http and https.
//! - A request line over 8 KB gets 414 from nginx (`large_client_header_buffers`); stackinit's limit is
//!   `max_header_size` (32 KB), so only longer ones are compared.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use support::http::raw_request;
use support::nginx::{outcome, request_for, start_nginx};
use support::proxy::{Echo, ProxyProcess};
use support::{free_port, Guarded};

/// (server_name list, is default) — nginx syntax; the same strings go into the stackinit config.
fn servers() -> Vec<(Vec<&'static str>, bool)> {
    vec![
        (
            vec!["example.org", "www.example.org", "xn--bcher-kva.example"],
            false,
        ),
        (vec!["*.example.org"], false),
        (vec!["*.a.example.org", "mail.*"], false),
        (vec!["www.example.*", "api.*"], false),
        (
            vec![r"~^ip-\d+-\d+-\d+-\d+\.", r"~^api\d+\.", r"~\.test$"],
            false,
        ),
        (
            vec![
                "*.compute.amazonaws.com",
                "*.compute-1.amazonaws.com",
                "*.compute.internal",
                "*.ec2.internal",
                ".dot.example",
            ],
            true,
        ),
        (
            vec![
                "*.us-west-2.compute.amazonaws.com",
                "localhost",
                "127.0.0.1",
                "10.0.0.5",
            ],
            false,
        ),
    ]
}

fn host_corpus() -> Vec<Option<Vec<u8>>> {
    let mut hosts: Vec<String> = Vec::new();
    let regions = [
        "us-west-2",
        "us-east-2",
        "eu-west-1",
        "ap-southeast-2",
        "sa-east-1",
        "eu-central-1",
        "ca-central-1",
        "ap-northeast-1",
    ];
    for (i, ip) in [
        "3.91.2.7",
        "54.12.200.1",
        "18.0.0.255",
        "10.0.0.5",
        "172.31.44.9",
    ]
    .iter()
    .enumerate()
    {
        let dashed = ip.replace('.', "-");
        hosts.push(format!("ec2-{dashed}.compute-1.amazonaws.com"));
        hosts.push(format!("ip-{dashed}.ec2.internal"));
        for region in regions {
            hosts.push(format!("ec2-{dashed}.{region}.compute.amazonaws.com"));
            hosts.push(format!("ip-{dashed}.{region}.compute.internal"));
            if i == 0 {
                hosts.push(format!(
                    "EC2-{dashed}.{}.Compute.AmazonAWS.com",
                    region.to_uppercase()
                ));
                hosts.push(format!("ec2-{dashed}.{region}.compute.amazonaws.com."));
                hosts.push(format!("ip-{dashed}.{region}.compute.internal:80"));
                hosts.push(format!("ip-{dashed}.{region}.compute.internal.:8080"));
            }
        }
        hosts.push(ip.to_string());
        hosts.push(format!("{ip}:80"));
        hosts.push(format!("{ip}:443"));
    }
    for h in [
        "example.org",
        "EXAMPLE.ORG",
        "example.org.",
        "example.org:8080",
        "www.example.org",
        "Www.Example.Org.",
        "x.example.org",
        "x.y.z.example.org",
        "a.example.org",
        "b.a.example.org",
        "c.b.a.example.org",
        "www.example.com",
        "www.example.co.uk",
        "www.example",
        "www.example.",
        "mail.example.org",
        "mail.foo",
        "mail.foo.bar",
        "mail",
        "api.x",
        "api2.x",
        "api12.service.local",
        "api.example.org",
        "ip-10-0-0-1.foo",
        "ip-10-0-0-1",
        "foo.test",
        "test",
        "a.b.test",
        "dot.example",
        "x.dot.example",
        "y.x.dot.example",
        "localhost",
        "LOCALHOST",
        "localhost:8080",
        "localhost.",
        "127.0.0.1",
        "127.0.0.1:80",
        "10.0.0.5",
        "10.0.0.5:80",
        "10.0.0.6",
        "[::1]",
        "[::1]:80",
        "[2001:db8::1]:8080",
        "::1",
        "unknown.invalid",
        "xn--bcher-kva.example",
        "XN--BCHER-KVA.EXAMPLE",
        "bücher.example",
        "例え.テスト",
        "😀.example.org",
        "straße.example.org",
        "münchen.compute.internal",
        "a.example.org:",
        "example.org:abc",
        ":80",
        ".",
        "..",
        "a..b",
        "example..org",
        ".example.org",
        "example.org..",
        "a/b",
        "a\\b",
        "exa mple.org",
        "-",
        "_",
        "*",
        "*.example.org",
        "%41.example.org",
        "a_b.example.org",
        "a@b.example.org",
        "user@example.org",
        "example.org#frag",
        "example.org?q",
        "[::1",
        "[::1]]",
        "[example.org]",
        "]",
        "[",
        "a:b:c",
        "1.2.3.4:5:6",
        "ec2-1-2-3-4.compute-1.amazonaws.com:99999",
        "0.0.0.0",
        "255.255.255.255",
        "999.1.1.1",
        "1.2.3",
        "0x7f.1",
        "compute.amazonaws.com",
        ".compute.amazonaws.com",
        "x.compute.amazonaws.comx",
        "ec2.internal",
        "x.ec2.internal.evil.com",
        "internal",
        "example.org.evil.com",
        "www.example.org.evil",
        "www.example.evil.org",
        "a.b.c.d.e.f.g.h.i.j.example.org",
    ] {
        hosts.push(h.to_string());
    }
    let long = format!("{}.example.org", "a".repeat(200));
    hosts.push(long);
    let mut corpus: Vec<Option<Vec<u8>>> =
        hosts.into_iter().map(|h| Some(h.into_bytes())).collect();
    corpus.push(Some(Vec::new()));
    corpus.push(Some(b"\x80\xff.example.org".to_vec()));
    corpus.push(Some(b"a\x7fb".to_vec()));
    corpus.push(Some(b"a\tb".to_vec()));
    corpus.push(None);
    corpus
}

struct Pair {
    _dir: tempfile::TempDir,
    _echoes: Vec<Echo>,
    _nginx: Guarded,
    proxy: ProxyProcess,
    nginx: SocketAddr,
    stackinit: SocketAddr,
    ids: BTreeMap<String, usize>,
}

fn start_pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let servers = servers();
    let echoes: Vec<Echo> = (0..servers.len())
        .map(|i| Echo::start(&format!("s{i}")))
        .collect();
    let ids = echoes
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.clone(), i))
        .collect();
    let nginx_port = free_port();
    let proxy_port = free_port();
    let mut http = String::new();
    let mut toml = format!(
        "[init]\nlogs_dir = \"{}\"\n[proxy]\nlisten = [\"127.0.0.1:{proxy_port}\"]\n",
        dir.path().display()
    );
    for (i, (names, default)) in servers.iter().enumerate() {
        let upstream = echoes[i].addr;
        http.push_str(&format!(
            "server {{\n listen 127.0.0.1:{nginx_port}{};\n server_name {};\n location / {{\n  proxy_pass http://{upstream};\n\
             proxy_set_header Host $http_host;\n  proxy_set_header X-Real-IP $remote_addr;\n\
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n  proxy_set_header X-Forwarded-Proto $scheme;\n }}\n}}\n",
            if *default { " default_server" } else { "" },
            names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(" "),
        ));
        let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
        toml.push_str(&format!(
            "[[proxy.server]]\nserver_name = [{}]\ndefault = {default}\n  [[proxy.server.location]]\n  path = \"/\"\n  upstream = \"{upstream}\"\n",
            quoted.join(", ")
        ));
    }
    let nginx_addr: SocketAddr = format!("127.0.0.1:{nginx_port}").parse().unwrap();
    let proxy_addr: SocketAddr = format!("127.0.0.1:{proxy_port}").parse().unwrap();
    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let nginx = start_nginx(&nginx_dir, &http, nginx_addr);
    let proxy_dir = dir.path().join("proxy");
    std::fs::create_dir_all(&proxy_dir).unwrap();
    let proxy = ProxyProcess::start(&proxy_dir, &toml, proxy_addr);
    Pair {
        _dir: dir,
        _echoes: echoes,
        _nginx: nginx,
        proxy,
        nginx: nginx_addr,
        stackinit: proxy_addr,
        ids,
    }
}

#[test]
fn same_server_as_nginx_for_every_host() {
    let pair = start_pair();
    let corpus = host_corpus();
    assert!(
        corpus.len() >= 200,
        "corpus has only {} hosts",
        corpus.len()
    );
    let mut differences = Vec::new();
    let mut by_outcome: BTreeMap<String, usize> = BTreeMap::new();
    for host in &corpus {
        for version in ["1.1", "1.0"] {
            let raw = request_for(host, "/probe", version);
            let want = outcome(pair.nginx, &raw);
            let got = outcome(pair.stackinit, &raw);
            *by_outcome.entry(want.clone()).or_default() += 1;
            if want != got {
                differences.push(format!(
                    "HTTP/{version} Host {:?}: nginx {want}, stackinit {got}",
                    host.as_ref()
                        .map(|h| String::from_utf8_lossy(h).into_owned())
                ));
            }
        }
    }
    // Absolute-form request targets route by their authority in both.
    for (target, host) in [
        ("http://www.example.org/p", "other"),
        ("http://x.example.org/p", "example.org"),
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (want, got) = (
            outcome(pair.nginx, raw.as_bytes()),
            outcome(pair.stackinit, raw.as_bytes()),
        );
        if want != got {
            differences.push(format!("target {target}: nginx {want}, stackinit {got}"));
        }
    }
    // Every server must have been chosen at least once, or the corpus proves little.
    for id in pair.ids.keys() {
        assert!(
            by_outcome.contains_key(&format!("200 {id}")),
            "no host reached {id}: {by_outcome:?}"
        );
    }
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

fn echoed_headers(addr: SocketAddr, raw: &str) -> BTreeMap<String, Vec<String>> {
    let reply = raw_request(addr, raw.as_bytes()).unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in reply.json()["headers"].as_array().unwrap() {
        let name = pair[0].as_str().unwrap().to_string();
        out.entry(name)
            .or_default()
            .push(pair[1].as_str().unwrap().to_string());
    }
    out
}

#[test]
fn forwarded_headers_match_nginx() {
    let pair = start_pair();
    let cases = [
        "GET /h HTTP/1.1\r\nHost: www.example.org\r\nUser-Agent: t/1\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: Www.Example.Org:8080\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: x.example.org\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2\r\nX-Forwarded-For: 3.3.3.3\r\nConnection: close\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: x.example.org\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: x.example.org\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nConnection: close, TE\r\n\r\n",
        "POST /h?q=1 HTTP/1.1\r\nHost: api.x\r\nContent-Length: 5\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nhello",
        "GET /h HTTP/1.0\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: ip-10-1-2-3.ec2.internal\r\nCookie: a=b\r\nAuthorization: Bearer x\r\nConnection: close\r\n\r\n",
        // nginx drops names with underscores (`underscores_in_headers off`): WSGI would read this one as
        // HTTP_X_FORWARDED_PROTO, the header the proxy sets.
        "GET /h HTTP/1.1\r\nHost: x.example.org\r\nX_Forwarded_Proto: https\r\nFoo_Bar: 1\r\nConnection: close\r\n\r\n",
    ];
    for raw in cases {
        let mut want = echoed_headers(pair.nginx, raw);
        let mut got = echoed_headers(pair.stackinit, raw);
        assert_eq!(
            want.remove("connection"),
            Some(vec!["close".to_string()]),
            "nginx closes upstream connections"
        );
        assert_eq!(
            got.remove("connection"),
            None,
            "stackinit keeps upstream connections alive"
        );
        assert_eq!(want, got, "forwarded headers differ for request {raw:?}");
        for gone in ["keep-alive", "te", "upgrade", "proxy-connection"] {
            assert!(!got.contains_key(gone), "{gone} forwarded for {raw:?}");
        }
    }
    // Documented exception: a header named in Connection is hop-by-hop for stackinit, forwarded by nginx.
    let raw =
        "GET /h HTTP/1.1\r\nHost: x.example.org\r\nX-Hop: 1\r\nConnection: close, X-Hop\r\n\r\n";
    assert!(echoed_headers(pair.nginx, raw).contains_key("x-hop"));
    assert!(!echoed_headers(pair.stackinit, raw).contains_key("x-hop"));
}

#[test]
fn absolute_form_is_routed_like_nginx_and_the_upstream_gets_the_host_it_was_routed_by() {
    let pair = start_pair();
    for (target, host) in [
        ("http://www.example.org/p", "other.example"),
        ("https://x.example.org:8443/p?q=1", "example.org"),
        ("HTTP://api.x/p", "x.example.org"),
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (want, got) = (
            outcome(pair.nginx, raw.as_bytes()),
            outcome(pair.stackinit, raw.as_bytes()),
        );
        assert_eq!(want, got, "{target} with Host {host}: routed differently");
        let authority = target.split("://").nth(1).and_then(|r| r.split('/').next());
        let forwarded = echoed_headers(pair.stackinit, &raw);
        assert_eq!(
            forwarded.get("host").map(Vec::as_slice),
            Some([authority.unwrap().to_string()].as_slice()),
            "{target}: the upstream must get the host the request was routed by, not Host: {host}"
        );
    }
    // Documented exception: nginx routes any scheme; only http and https are requests for this site.
    for target in ["ftp://www.example.org/p", "foo://www.example.org/p"] {
        let raw =
            format!("GET {target} HTTP/1.1\r\nHost: www.example.org\r\nConnection: close\r\n\r\n");
        assert_eq!(outcome(pair.nginx, raw.as_bytes()), "200 s0");
        assert_eq!(outcome(pair.stackinit, raw.as_bytes()), "400", "{target}");
    }
}

/// Each case must get the status nginx gives it, and every refusal must be in stackinit's access log, those
/// hyper answers before the handler sees them included.
fn same_status_as_nginx_and_logged(pair: &Pair, cases: &[(&str, Vec<u8>)]) {
    let mut statuses = Vec::new();
    for (what, raw) in cases {
        let (want, got) = (outcome(pair.nginx, raw), outcome(pair.stackinit, raw));
        assert_eq!(want, got, "{what}: nginx {want}, stackinit {got}");
        statuses.push(got);
    }
    let logged = |status: &str| {
        let log = pair.proxy.access_log();
        log.lines()
            .filter(|l| l.contains(&format!("\" {status} ")))
            .count()
    };
    let mut distinct = statuses.clone();
    distinct.dedup();
    for status in distinct {
        let sent = statuses.iter().filter(|s| **s == status).count();
        assert!(
            support::wait_until(std::time::Duration::from_secs(5), || logged(&status)
                == sent),
            "{sent} requests got {status}, access.log has {}:\n{}",
            logged(&status),
            pair.proxy.access_log()
        );
    }
}

#[test]
fn request_lines_over_the_limit_get_414_like_nginx() {
    let pair = start_pair();
    let long_target = |n: usize| {
        format!(
            "GET /{} HTTP/1.1\r\nHost: www.example.org\r\nConnection: close\r\n\r\n",
            "a".repeat(n)
        )
        .into_bytes()
    };
    same_status_as_nginx_and_logged(
        &pair,
        &[
            ("a 40 KB URI", long_target(40_000)),
            ("a 70 KB URI", long_target(70_000)),
            ("a 120 KB URI", long_target(120_000)),
        ],
    );
}

#[test]
fn malformed_requests_and_bodies_get_400_like_nginx() {
    let pair = start_pair();
    let chunked = |body: &str| {
        format!(
            "POST /h HTTP/1.1\r\nHost: www.example.org\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}"
        )
        .into_bytes()
    };
    same_status_as_nginx_and_logged(
        &pair,
        &[
            ("a chunk size that is not hex", chunked("zz\r\nhello\r\n0\r\n\r\n")),
            ("chunk data longer than its size", chunked("5\r\nhelloXX0\r\n\r\n")),
            (
                "a control character in the URI",
                b"GET /\x01 HTTP/1.1\r\nHost: www.example.org\r\nConnection: close\r\n\r\n".to_vec(),
            ),
            (
                "a header name with a space",
                b"GET / HTTP/1.1\r\nHost: www.example.org\r\nBad Header: x\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            ),
        ],
    );
}
