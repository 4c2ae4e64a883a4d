//! The web dashboard in a real headless Chromium, against a real `stackinit run` with 3 services and
//! the TCP listener on a loopback port with a token.
//!
//! Needs Debian's `chromium` and `chromium-driver`; without them the test fails.
//! `STACKINIT_UPDATE_SCREENSHOT=1` also writes the screenshot to docs/dashboard.png.

mod support;

use std::time::Duration;

use serde_json::json;
use support::browser::{self, Browser};
use support::http::{Reply, Request};
use support::{csrf_token, free_port, wait_until, Stack};

const TOKEN: &str = "test-token-0123456789";
const WAIT: Duration = Duration::from_secs(20);

/// `init_extra` goes into `[init]` after the dashboard's keys.
fn start_stack(port: u16, init_extra: &str) -> Stack {
    // alpha's first line is markup, to show log lines are text; bravo says its pid when it starts;
    // charlie ticks.
    let config = format!(
        r#"
dashboard = "127.0.0.1:{port}"
dashboard_token = "{TOKEN}"
dashboard_user = "admin"
dashboard_password = "s3cret pass"
{init_extra}

[service.alpha]
command = ["sh", "-c", "echo '<img src=x onerror=window.pwned=1> alpha up'; exec sleep 100000"]
start_secs = "100ms"

[service.bravo]
command = ["sh", "-c", "echo \"bravo started $$\"; exec sleep 100000"]
start_secs = "100ms"
stop_grace = "2s"

[service.charlie]
command = ["sh", "-c", "i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.3; done"]
start_secs = "100ms"
"#
    );
    let stack = Stack::start(&config);
    for name in ["alpha", "bravo", "charlie"] {
        stack.wait_state(name, "running", WAIT);
    }
    stack
}

#[test]
fn dashboard_in_a_real_browser() {
    let port = free_port();
    let stack = start_stack(port, "");
    let base = format!("http://127.0.0.1:{port}");
    let browser = Browser::start();

    // Sign in with the token once; the server trades it for a session cookie and redirects to `/`.
    browser.goto(&format!("{base}/?token={TOKEN}"));
    assert_eq!(
        browser.url(),
        format!("{base}/"),
        "token login redirects to /"
    );

    // (1) All three services, with the pids the CLI reports.
    browser.wait_for(
        "three running services",
        WAIT,
        "const rows = [...document.querySelectorAll('#rows tr')];
         return rows.length === 3 && rows.every(r => r.querySelector('.st').textContent === 'running');",
        json!([]),
    );
    let names = browser.eval(
        "return [...document.querySelectorAll('#rows tr')].map(r => r.dataset.name)",
        json!([]),
    );
    assert_eq!(names, json!(["alpha", "bravo", "charlie"]));
    for name in ["alpha", "bravo", "charlie"] {
        let shown = browser.eval(
            "return document.querySelector(`tr[data-name='${arguments[0]}'] .pid`).textContent",
            json!([name]),
        );
        let pid = stack.pid_of(name).expect("pid");
        assert_eq!(shown, json!(pid.to_string()), "pid of {name} on the page");
    }
    browser.wait_for(
        "health badge and facts",
        WAIT,
        "return document.getElementById('health').textContent.startsWith('healthy')
            && document.getElementById('facts').textContent.includes('Facts from')",
        json!([]),
    );

    // Follow bravo's log, by clicking its Logs button.
    browser.click("tr[data-name='bravo'] button.logs");
    let old_pid = stack.pid_of("bravo").expect("bravo pid");
    let old_line = format!("bravo started {old_pid}");
    browser.wait_for(
        "bravo's first line in the tail",
        WAIT,
        "return document.getElementById('log').textContent.includes(arguments[0])",
        json!([old_line]),
    );

    // (2) Restart bravo with a click and the confirmation dialog; the pid changes without a reload.
    browser.eval("window.notReloaded = true; return null", json!([]));
    browser.click("tr[data-name='bravo'] button.restart");
    browser.wait_for(
        "the confirmation dialog",
        WAIT,
        "const d = document.getElementById('confirm');
         return d.open && d.textContent.includes('Restart bravo?')",
        json!([]),
    );
    browser.click("#confirm-ok");
    assert!(
        wait_until(WAIT, || stack
            .pid_of("bravo")
            .is_some_and(|pid| pid != old_pid)
            && stack.state_of("bravo") == "running"),
        "bravo was not restarted: {}",
        stack.unit("bravo")
    );
    let new_pid = stack.pid_of("bravo").expect("new pid");
    browser.wait_for(
        "bravo's new pid on the page",
        WAIT,
        "return document.querySelector(`tr[data-name='bravo'] .pid`).textContent === arguments[0]
            && document.querySelector(`tr[data-name='bravo'] .st`).textContent === 'running'",
        json!([new_pid.to_string()]),
    );
    assert_eq!(
        browser.eval("return window.notReloaded === true", json!([])),
        json!(true),
        "the page must update live, not reload"
    );

    // (3) The line the new process wrote arrives in the open tail.
    let new_line = format!("bravo started {new_pid}");
    browser.wait_for(
        "bravo's line after the restart in the tail",
        WAIT,
        "return document.getElementById('log').textContent.includes(arguments[0])",
        json!([new_line]),
    );
    // The ticker's lines keep arriving in its tail, chosen from the select.
    browser.eval(
        "const s = document.getElementById('log-unit'); s.value = 'charlie';
         s.dispatchEvent(new Event('change')); return null",
        json!([]),
    );
    browser.wait_for(
        "a tick",
        WAIT,
        "return /tick \\d+/.test(document.getElementById('log').textContent)",
        json!([]),
    );
    let first = browser.eval(
        "const m = document.getElementById('log').textContent.match(/tick (\\d+)/g); return Number(m[m.length-1].slice(5))",
        json!([]),
    );
    browser.wait_for(
        "a newer tick",
        WAIT,
        "const m = document.getElementById('log').textContent.match(/tick (\\d+)/g);
         return Number(m[m.length-1].slice(5)) > arguments[0]",
        json!([first]),
    );

    // Log lines are text: alpha's markup line shows literally and runs nothing.
    browser.click("tr[data-name='alpha'] button.logs");
    browser.wait_for(
        "alpha's markup line, as text",
        WAIT,
        "return document.getElementById('log').textContent.includes('<img src=x onerror=window.pwned=1> alpha up')",
        json!([]),
    );
    assert_eq!(
        browser.eval(
            "return [window.pwned === undefined, document.querySelectorAll('#log img').length]",
            json!([])
        ),
        json!([true, 0]),
        "a log line became markup"
    );

    // Screenshot for the docs, at desktop width with bravo's tail showing.
    browser.click("tr[data-name='bravo'] button.logs");
    browser.wait_for(
        "bravo's tail again",
        WAIT,
        "return document.getElementById('log').textContent.includes(arguments[0])",
        json!([new_line]),
    );
    browser.eval("window.scrollTo(0, 0); return null", json!([]));
    let png = browser.screenshot_png();
    assert!(png.starts_with(b"\x89PNG"), "screenshot is a PNG");
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(shots.join("dashboard.png"), &png).expect("write screenshot");
    if std::env::var_os("STACKINIT_UPDATE_SCREENSHOT").is_some() {
        let docs = browser::docs_screenshot();
        std::fs::create_dir_all(docs.parent().expect("docs dir")).expect("docs dir");
        std::fs::write(&docs, &png).expect("write docs screenshot");
    }

    // Readable at phone width: nothing wider than the viewport.
    browser.set_window(390, 844);
    browser.wait_for(
        "no horizontal overflow at phone width",
        WAIT,
        "return document.documentElement.scrollWidth <= window.innerWidth",
        json!([]),
    );
    browser.eval("window.scrollTo(0, 0); return null", json!([]));
    std::fs::write(shots.join("dashboard-phone.png"), browser.screenshot_png())
        .expect("write phone screenshot");

    // (4b) A cross-origin page in the same (signed-in) browser cannot POST: a page on another port of
    // the same host is same-site, so it even carries the session cookie; the CSRF rule still refuses.
    let evil = EvilSite::start();
    browser.goto(&format!("http://127.0.0.1:{}/", evil.port));
    let before = stack.pid_of("bravo");
    let outcome = browser.eval_async(
        "const done = arguments[arguments.length - 1];
         fetch(arguments[0], {method: 'POST', mode: 'no-cors', credentials: 'include'})
           .then(r => done('sent: ' + r.type), e => done('error: ' + e));",
        json!([format!("{base}/v1/services/bravo/stop")]),
    );
    assert!(
        outcome.as_str().is_some_and(|o| o.starts_with("sent")),
        "{outcome}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        stack.state_of("bravo"),
        "running",
        "cross-origin POST stopped bravo"
    );
    assert_eq!(stack.pid_of("bravo"), before);
}

#[test]
fn tcp_listener_refuses_missing_credentials_and_cross_origin_posts() {
    let port = free_port();
    let stack = start_stack(port, "");
    let bearer = format!("Bearer {TOKEN}");
    let pid = stack.pid_of("bravo");

    // No credentials, wrong ones: 401 with a challenge, on the page and on the API alike.
    let reply = http(port, "GET", "/", &[("Accept", "text/html")]);
    assert_eq!(reply.status, 401, "{}", reply.text());
    let challenges: Vec<&str> = reply
        .headers
        .iter()
        .filter(|(k, _)| k == "www-authenticate")
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic realm=")),
        "{challenges:?}"
    );
    assert!(
        challenges.iter().any(|c| c.starts_with("Bearer realm=")),
        "{challenges:?}"
    );
    for (path, headers) in [
        ("/v1/status", vec![]),
        ("/v1/status", vec![("Authorization", "Bearer wrong")]),
        ("/v1/events", vec![("Cookie", "stackinit_session=guess")]),
        ("/?token=wrong", vec![]),
        ("/", vec![("Authorization", "Basic YWRtaW46d3Jvbmc=")]), // admin:wrong
    ] {
        let reply = http(port, "GET", path, &headers);
        assert_eq!(reply.status, 401, "{path} {headers:?}: {}", reply.text());
    }
    let reply = http(port, "POST", "/v1/services/bravo/stop", &[]);
    assert_eq!(reply.status, 401);

    // Basic auth, as a browser sends it after its prompt.
    let reply = http(
        port,
        "GET",
        "/v1/status",
        &[("Authorization", "Basic YWRtaW46czNjcmV0IHBhc3M=")], // admin:s3cret pass
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["services"].as_array().map(Vec::len), Some(3));

    // With credentials: the page carries the CSRF token.
    let page = http(port, "GET", "/", &[("Authorization", &bearer)]);
    assert_eq!(page.status, 200);
    assert!(page.header("content-security-policy").is_some());
    let token = csrf_token(&page.text());
    assert_eq!(token.len(), 32);

    // Cross-origin POSTs are refused with 403 JSON, with or without the token.
    for headers in [
        vec![
            ("Authorization", bearer.as_str()),
            ("Origin", "http://evil.example"),
        ],
        vec![
            ("Authorization", bearer.as_str()),
            ("Origin", "http://evil.example"),
            ("X-Stackinit-CSRF", token.as_str()),
        ],
        vec![
            ("Authorization", bearer.as_str()),
            ("Sec-Fetch-Site", "cross-site"),
            ("X-Stackinit-CSRF", token.as_str()),
        ],
        // Same origin but no token.
        vec![
            ("Authorization", bearer.as_str()),
            ("Origin", &format!("http://127.0.0.1:{port}")),
        ],
    ] {
        let reply = http(port, "POST", "/v1/services/bravo/stop", &headers);
        assert_eq!(reply.status, 403, "{headers:?}: {}", reply.text());
        assert!(reply.json()["error"].is_string());
    }
    // Reload and shutdown are not for the TCP listener at all.
    let reply = http(
        port,
        "POST",
        "/v1/shutdown",
        &[("Authorization", &bearer), ("X-Stackinit-CSRF", &token)],
    );
    assert_eq!(reply.status, 403);
    assert_eq!(
        stack.pid_of("bravo"),
        pid,
        "a refused POST changed something"
    );

    // The control: same origin with the token works, so the refusals above were the CSRF rule.
    let origin = format!("http://127.0.0.1:{port}");
    let reply = http(
        port,
        "POST",
        "/v1/services/bravo/restart",
        &[
            ("Authorization", &bearer),
            ("Origin", &origin),
            ("Sec-Fetch-Site", "same-origin"),
            ("X-Stackinit-CSRF", &token),
        ],
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(wait_until(WAIT, || stack
        .pid_of("bravo")
        .is_some_and(|p| Some(p) != pid)));

    // The CLI over the unix socket needs no token.
    let out = stack.cli(&["restart", "charlie"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn wrong_credentials_lock_the_client_out_for_a_while() {
    let port = free_port();
    let _stack = start_stack(port, "");
    let bearer = format!("Bearer {TOKEN}");
    // A few typos cost nothing...
    for _ in 0..5 {
        let reply = http(
            port,
            "GET",
            "/v1/status",
            &[("Authorization", "Bearer guess")],
        );
        assert_eq!(reply.status, 401, "{}", reply.text());
    }
    assert_eq!(
        http(port, "GET", "/v1/status", &[("Authorization", &bearer)]).status,
        200
    );
    // ...a success forgives them; then a guessing run locks the client out, the right token included.
    for _ in 0..6 {
        let reply = http(port, "GET", "/?token=guess", &[]);
        assert_eq!(reply.status, 401, "{}", reply.text());
    }
    let locked = http(port, "GET", "/v1/status", &[("Authorization", &bearer)]);
    assert_eq!(locked.status, 429, "{}", locked.text());
    let wait: u64 = locked
        .header("retry-after")
        .and_then(|s| s.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&wait), "first lockout {wait} s");
    std::thread::sleep(Duration::from_secs(wait));
    assert_eq!(
        http(port, "GET", "/v1/status", &[("Authorization", &bearer)]).status,
        200,
        "the lockout ends"
    );
}

#[test]
fn each_login_gets_its_own_session_and_sessions_expire() {
    let port = free_port();
    let _stack = start_stack(port, "dashboard_session_lifetime = \"2s\"");
    let login = || {
        let reply = http(port, "GET", &format!("/?token={TOKEN}"), &[]);
        assert_eq!(reply.status, 303, "{}", reply.text());
        let cookie = reply
            .header("set-cookie")
            .expect("a session cookie")
            .to_string();
        assert!(cookie.contains("Max-Age=2;"), "{cookie}");
        cookie.split(';').next().unwrap_or("").to_string()
    };
    let (first, second) = (login(), login());
    assert_ne!(first, second, "one id per login, not one per process");
    for cookie in [&first, &second] {
        let reply = http(port, "GET", "/v1/status", &[("Cookie", cookie)]);
        assert_eq!(reply.status, 200, "{cookie}: {}", reply.text());
    }
    std::thread::sleep(Duration::from_millis(2100));
    for cookie in [&first, &second] {
        let reply = http(port, "GET", "/v1/status", &[("Cookie", cookie)]);
        assert_eq!(reply.status, 401, "{cookie} outlived its lifetime");
    }
}

/// One request to the dashboard's TCP listener (no body).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    Request::new(port, method, path).headers(headers).reply()
}

/// A page on another loopback port: the attacker's origin in the CSRF test.
struct EvilSite {
    port: u16,
}

impl EvilSite {
    fn start() -> EvilSite {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for stream in listener.incoming().flatten().take(16) {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let body = "<!doctype html><title>elsewhere</title><p>another origin";
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        EvilSite { port }
    }
}

#[test]
fn base64_round() {
    assert_eq!(
        browser::decode_base64("QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        b"Aladdin:open sesame"
    );
    assert_eq!(browser::decode_base64("Zm8="), b"fo");
}

/// A user-data overlay refused at start: the page says so above the services, with the error located in
/// the overlay, and names it in the instance facts.
#[test]
fn a_refused_user_data_overlay_shows_on_the_page() {
    let overlay_dir = support::temp_dir("stackinit-overlay");
    let overlay = overlay_dir.path().join("user-data.toml");
    std::fs::write(&overlay, "# launch\n[service.alpha]\nreplicas = \"two\"\n").unwrap();
    let port = free_port();
    let _stack = start_stack(port, &format!("user_data = \"{}\"", overlay.display()));
    let base = format!("http://127.0.0.1:{port}");
    let browser = Browser::start();
    browser.goto(&format!("{base}/?token={TOKEN}"));
    let expected = format!("{}:3:12: service.alpha.replicas", overlay.display());
    browser.wait_for(
        "the refused overlay's banner",
        WAIT,
        "const banner = document.getElementById('user-data');
         return !banner.hidden && banner.textContent.includes('refused') && banner.textContent.includes(arguments[0]);",
        json!([expected]),
    );
    let facts = browser.eval(
        "return document.getElementById('facts').textContent",
        json!([]),
    );
    assert!(
        facts
            .as_str()
            .is_some_and(|f| f.contains("refused (see above)")),
        "{facts}"
    );
}
