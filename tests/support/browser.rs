//! A tiny WebDriver client for headless Chromium (Debian `chromium` + `chromium-driver`). No crates
//! beyond serde_json: the protocol is JSON over HTTP.
//!
//! A missing browser or driver is a test failure, never a skip.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::http::Request;
use super::{free_port, poll_every, repo, Guarded};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Headless Chromium under chromedriver, one WebDriver session. Dropping it ends the session and the
/// driver (by pid).
pub struct Browser {
    driver: Guarded,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn start() -> Browser {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: these tests need Debian's `chromium` and `chromium-driver` \
                 (apt-get install -y chromium chromium-driver)"
            );
        }
        let profile = tempfile::Builder::new()
            .prefix("stackinit-chromium")
            .tempdir()
            .expect("profile dir");
        let port = free_port();
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).expect("log");
        // Its own process group, so the browser it starts can be killed with it (see Drop).
        let driver = Guarded::spawn(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log),
            "chromedriver",
        );
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let ready = poll_every(Duration::from_millis(50), Duration::from_secs(20), || {
            let up = TcpStream::connect(("127.0.0.1", port)).is_ok()
                && browser.raw("GET", "/status", None)["value"]["ready"] == true;
            up.then_some(())
        });
        assert!(
            ready.is_some(),
            "chromedriver never became ready: {}",
            browser.driver_log()
        );
        let user_data = browser._profile.path().join("profile");
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-crash-reporter".into(),
            "--disable-breakpad".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", user_data.display()),
        ];
        let created = browser.raw(
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            }}})),
        );
        browser.session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}\n{}", browser.driver_log()))
            .to_string();
        browser
    }

    fn driver_log(&self) -> String {
        std::fs::read_to_string(self._profile.path().join("chromedriver.log")).unwrap_or_default()
    }

    fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        // Starting a session starts the browser: slow on a busy machine.
        let reply = Request::new(self.port, method, path)
            .header("Content-Type", "application/json")
            .body(body.as_bytes())
            .timeout(Duration::from_secs(60))
            .reply();
        serde_json::from_slice(&reply.body).unwrap_or(Value::Null)
    }

    /// A session command; panics with WebDriver's error when it fails.
    pub fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let full = format!("/session/{}{path}", self.session);
        let reply = self.raw(method, &full, body);
        if reply["value"].get("error").is_some() {
            panic!("WebDriver {method} {path} failed: {}", reply["value"]);
        }
        reply["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Run `script` (a function body; `arguments` holds `args`) in the page and return its value.
    pub fn eval(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Run an async script: it must call `arguments[arguments.length - 1](result)`.
    pub fn eval_async(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/async",
            Some(json!({ "script": script, "args": args })),
        )
    }

    pub fn find(&self, css: &str) -> String {
        let found = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        found[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    /// A real click (WebDriver moves the pointer and clicks), on the element `css` selects.
    pub fn click(&self, css: &str) {
        let id = self.find(css);
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    pub fn set_window(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        );
    }

    pub fn screenshot_png(&self) -> Vec<u8> {
        let b64 = self.cmd("GET", "/screenshot", None);
        decode_base64(b64.as_str().expect("screenshot is base64"))
    }

    /// Wait until `script` returns true in the page; panics with `what` and the page's last value.
    pub fn wait_for(&self, what: &str, timeout: Duration, script: &str, args: Value) {
        let done = poll_every(Duration::from_millis(50), timeout, || {
            (self.eval(script, args.clone()) == Value::Bool(true)).then_some(())
        });
        if done.is_none() {
            let page = self.eval(
                "return document.body ? document.body.innerText : ''",
                json!([]),
            );
            panic!(
                "timed out waiting for {what}; page text:\n{}",
                page.as_str().unwrap_or("")
            );
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = std::panic::catch_unwind(|| self.raw("DELETE", &path, None));
        }
        // If the session could not be ended, its browser must not outlive the test: end the
        // driver's whole process group (the browser and its helpers are in it); the guard reaps it.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.driver.pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Standard base64 (WebDriver sends screenshots so).
pub fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let digits: Vec<u32> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, d)| acc | (d << (18 - 6 * i)));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}

/// Where the docs screenshot lives in the source tree.
pub fn docs_screenshot() -> PathBuf {
    repo().join("docs/dashboard.png")
}
