//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, nightly) and for replaying their corpora and
//! crash inputs in `tests/fuzz_corpus.rs` (stable). Not an API: each function takes raw bytes, runs one
//! parser the way the product runs it, and panics when an invariant breaks, so a broken invariant is a
//! crash to the fuzzer and a failure to the test.
//!
//! - `config`: `config::parse`, then what a valid config must also be: durations within the limit the
//!   string form has, a proxy routing table that builds, the same config after the JSON trip to the proxy.
//! - `host`: `normalize_host` on a Host value, and `ServerNames` built from server_name lists.
//! - `uri_path`: `uri_path::normalize` on a request path.
//! - `notify`: a notify-socket datagram into fields, as the supervisor reads it.
//! - `control`: the control API's parsing of a request (route, method, query, JSON body).
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use crate::config::values::ListenAddr;
use crate::config::{Config, ConfigError, Secs};
use crate::proxy::protocol::{self, InitMessage, ProxyRuntimeConfig};
use crate::proxy::routes::Routes;
use crate::proxy::server_name::{normalize_host, BadHost, ServerNames};
use crate::proxy::uri_path;

/// The longest duration the string form accepts (`parse_duration`); the integer form must agree.
const MAX_DURATION: Duration = Duration::from_secs(365 * 86400);

/// Config text (lossy UTF-8: the loader reads files with `read_to_string`, so only UTF-8 gets this far).
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match crate::config::parse(Path::new("fuzz.toml"), &text) {
        Err(errors) => check_errors(&text, &errors),
        Ok(config) => check_valid_config(&config),
    }
}

fn check_errors(text: &str, errors: &[ConfigError]) {
    assert!(!errors.is_empty(), "an invalid config names its errors");
    let lines = text.split('\n').count();
    for e in errors {
        assert!(e.line >= 1 && e.col >= 1, "{e}");
        assert!(e.line <= lines, "line beyond the text: {e}");
        assert!(!e.message.is_empty(), "{e}");
    }
}

fn check_valid_config(config: &Config) {
    for (what, d) in durations(config) {
        assert!(
            d.0 <= MAX_DURATION,
            "{what} = {d} passed validation but is above the 1-year limit of the string form"
        );
    }
    // `replica_addresses` falls back to the address as written, trusting the checker to have refused
    // every address that does not expand to its replicas.
    for (name, service) in &config.service {
        for listen in service.listen.iter().flat_map(|l| l.to_vec()) {
            let expanded =
                ListenAddr::parse(&listen).and_then(|a| a.for_replicas(service.replicas));
            assert!(
                expanded.is_ok(),
                "service.{name}.listen {listen:?}: {expanded:?}"
            );
        }
    }
    let Some(proxy) = config.proxy.clone() else {
        return;
    };
    // What the proxy is sent (as `stackinit proxy --config` builds it): every service with `listen` is an
    // upstream, one address per replica; the zip there must lose no replica.
    for (name, service) in &config.service {
        if let Some(listen) = service
            .listen
            .as_ref()
            .and_then(|l| l.to_vec().first().cloned())
        {
            let names = protocol::replica_names(name, service.replicas);
            let addresses = protocol::replica_addresses(&listen, service.replicas);
            assert_eq!(names.len(), addresses.len(), "{name}: a name per address");
        }
    }
    let upstreams = crate::proxy::standalone_upstreams(config);
    let runtime = ProxyRuntimeConfig {
        proxy,
        upstreams,
        extra_server_names: vec!["10.0.0.1".into(), "ip-10-0-0-1.ec2.internal".into()],
        logs_dir: config.init.logs_dir.clone(),
    };
    let message = InitMessage::Config(runtime.clone());
    let line = match serde_json::to_string(&message) {
        Ok(line) => line,
        Err(e) => panic!("the proxy's config does not serialize: {e}"),
    };
    match serde_json::from_str::<InitMessage>(&line) {
        Ok(back) => assert_eq!(
            back, message,
            "the proxy reads another config than init sent"
        ),
        Err(e) => panic!("the proxy cannot read the config init sends: {e}\n{line}"),
    }
    if let Err(errors) = Routes::build(&runtime, None) {
        panic!("a valid config whose proxy routes do not build: {errors:?}");
    }
}

/// Every duration of a config, named.
fn durations(config: &Config) -> Vec<(String, Secs)> {
    let mut all = vec![
        (
            "init.shutdown_drain".to_string(),
            config.init.shutdown_drain,
        ),
        ("init.imds.timeout".to_string(), config.init.imds.timeout),
    ];
    for (name, s) in &config.service {
        let mut add = |key: &str, d: Secs| all.push((format!("service.{name}.{key}"), d));
        add("start_secs", s.start_secs);
        add("backoff_initial", s.backoff_initial);
        add("backoff_max", s.backoff_max);
        add("backoff_reset", s.backoff_reset);
        add("stop_grace", s.stop_grace);
        add("ready_timeout", s.ready_timeout);
        if let Some(w) = s.watchdog {
            add("watchdog", w);
        }
        for (kind, probe) in [
            ("startup", &s.startup),
            ("readiness", &s.readiness),
            ("liveness", &s.liveness),
        ] {
            if let Some(p) = probe {
                add(&format!("{kind}.initial_delay"), p.initial_delay);
                add(&format!("{kind}.period"), p.period);
                add(&format!("{kind}.timeout"), p.timeout);
            }
        }
    }
    if let Some(p) = &config.proxy {
        for (key, d) in [
            ("connect_timeout", p.connect_timeout),
            ("queue_timeout", p.queue_timeout),
            ("header_timeout", p.header_timeout),
            ("upstream_timeout", p.upstream_timeout),
            ("idle_timeout", p.idle_timeout),
            ("stop_grace", p.stop_grace),
        ] {
            all.push((format!("proxy.{key}"), d));
        }
    }
    all
}

/// First line: the Host value (as a header, or as the request line's authority); each further line: one
/// server's names, separated by spaces. The first server is the default.
pub fn host(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let raw = lines.next().unwrap_or_default();
    let mut regexes = 0;
    let servers: Vec<Vec<String>> = lines
        .take(64)
        .map(|line| {
            String::from_utf8_lossy(line)
                .split(' ')
                .filter(|n| !n.is_empty())
                .filter(|n| !n.starts_with('~') || few_short_regexes(n, &mut regexes))
                .map(str::to_string)
                .collect()
        })
        .collect();
    let host = check_host(raw);
    // hyper gives the handler the authority of an absolute-form target (`GET http://HOST/`) as parsed by
    // `http`; it goes through the same normalization.
    if let Ok(authority) = hyper::http::uri::Authority::try_from(raw) {
        check_host(authority.as_str().as_bytes());
    }
    let Ok(names) = ServerNames::new(&servers, 0) else {
        return;
    };
    let picked = names.select(host.as_deref());
    assert!(
        picked == 0 || picked < servers.len(),
        "server {picked} of {}",
        servers.len()
    );
    // An exact name is chosen over every wildcard and regex, by the first server that lists it.
    let mut seen = std::collections::HashSet::new();
    for (index, list) in servers.iter().enumerate() {
        for name in list {
            let lower = name.to_ascii_lowercase();
            let bare = lower.strip_suffix('.').unwrap_or(&lower);
            let plain = !(name.starts_with(['~', '.']) || name.contains('*'));
            if !plain || !seen.insert(bare.to_string()) {
                continue;
            }
            if normalize_host(bare.as_bytes()).as_deref() == Ok(bare) {
                assert_eq!(names.select(Some(bare)), index, "exact name {name:?}");
            }
        }
    }
}

/// Regex names an input may compile, and their longest length. Compiling them is the `regex` crate's work
/// (fuzzed by its own project), not stackinit's: without a bound it took most of the time and held the
/// target at ~750 exec/s. A few short ones still reach every branch of `ServerNames::select`.
const MAX_REGEXES: usize = 4;
const MAX_REGEX_LEN: usize = 32;

fn few_short_regexes(name: &str, count: &mut usize) -> bool {
    *count += 1;
    *count <= MAX_REGEXES && name.len() <= MAX_REGEX_LEN
}

/// A normalized Host is what `normalize_host` promises, and normalizing it again changes nothing but the
/// trailing dot.
fn check_host(raw: &[u8]) -> Option<String> {
    let host = normalize_host(raw).ok()?.into_owned();
    assert!(!host.is_empty(), "{raw:?}");
    assert!(!host.contains(".."), "{raw:?} -> {host:?}");
    assert!(
        !host
            .bytes()
            .any(|b| b <= 0x20 || b == 0x7f || b == b'/' || b.is_ascii_uppercase()),
        "{raw:?} -> {host:?}"
    );
    // The trailing dot goes only when it is the value's last dot: in `a.:80.x` (or `.:.`) a dot after the
    // port keeps it, and the name is `a.` (`.`), matching no server name but a regex. nginx's
    // ngx_http_validate_host does exactly this, so it stays (regressions/host/dot-after-the-port-...).
    let again = normalize_host(host.as_bytes());
    match host.strip_suffix('.') {
        None => assert_eq!(
            again.as_deref(),
            Ok(host.as_str()),
            "not idempotent on {raw:?}"
        ),
        Some("") => assert_eq!(again, Err(BadHost::Empty), "{raw:?}"),
        Some(bare) => assert_eq!(again.as_deref(), Ok(bare), "{raw:?}"),
    }
    Some(host)
}

/// A request path: as the `http` crate parses a request target (what the proxy is given), and as any
/// string starting with `/`.
pub fn uri_path(data: &[u8]) {
    if let Ok(uri) = hyper::Uri::try_from(data) {
        check_path(uri.path());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check_path(text);
    }
}

fn check_path(raw: &str) {
    let Some(path) = uri_path::normalize(raw) else {
        return;
    };
    assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
    let inner = path.strip_suffix('/').unwrap_or(&path);
    for segment in inner.split('/').skip(1) {
        assert!(
            !matches!(segment, "" | "." | ".."),
            "segment {segment:?} left in {raw:?} -> {path:?}"
        );
    }
    if let std::borrow::Cow::Borrowed(same) = &path {
        assert_eq!(*same, raw, "a borrowed path is the input itself");
    }
    // Decoding happens once: only a result without `%` is sure to be its own normal form.
    if !path.contains('%') {
        assert_eq!(
            uri_path::normalize(&path).as_deref(),
            Some(&*path),
            "not idempotent on {raw:?}"
        );
    }
}

/// A datagram on the notify socket, as the supervisor reads it (UTF-8 or ignored).
pub fn notify(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let fields = crate::supervise::notify::parse_fields(text);
    assert!(fields.len() <= text.lines().count());
    for (key, value) in &fields {
        assert!(!key.contains(['\n', '=']), "{key:?}");
        assert_eq!(key.trim(), key, "keys are trimmed");
        assert!(!value.contains('\n'), "{value:?}");
    }
    // Written back one per line, the fields read the same (a value's trailing '\r' aside: `lines` strips
    // it with the '\n').
    let written: String = fields
        .iter()
        .filter(|(_, v)| !v.ends_with('\r'))
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    let again = crate::supervise::notify::parse_fields(&written);
    let expected: Vec<_> = fields
        .iter()
        .filter(|(_, v)| !v.ends_with('\r'))
        .cloned()
        .collect();
    assert_eq!(again, expected, "fields written back read differently");
}

/// First line: `METHOD TARGET`; the rest: the body.
pub fn control(data: &[u8]) {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let (method, target) = match head.iter().position(|&b| b == b' ') {
        Some(i) => (&head[..i], &head[i + 1..]),
        None => (&b"GET"[..], head),
    };
    let Ok(method) = hyper::Method::from_bytes(method) else {
        return;
    };
    let Ok(uri) = hyper::Uri::try_from(target) else {
        return;
    };
    let path = uri.path();
    match crate::control::server::parse_request(&method, path, uri.query(), body) {
        Err(e) => {
            assert!(
                matches!(e.status, 400 | 404),
                "a request that does not parse is the client's error: {} {}",
                e.status,
                e.message
            );
            assert!(!e.message.is_empty());
        }
        Ok(Err(allowed)) => assert_ne!(allowed, method),
        Ok(Ok(call)) => {
            use crate::control::server::Call;
            let name = match &call {
                Call::Status(Some(name)) | Call::Control { name, .. } | Call::Logs(name, _) => name,
                _ => return,
            };
            assert!(!name.is_empty());
            // The name is the path's segment with every `%XX` (two hex digits) decoded, and nothing else.
            // `/v1/status/NAME` and `/v1/services/NAME/ACTION` alike.
            let segment = path.split('/').nth(3).unwrap_or_default();
            assert_eq!(
                strict_percent_decode(segment).as_deref(),
                Some(name.as_str()),
                "{path:?}"
            );
        }
    }
}

/// RFC 3986 percent-decoding: `%` then exactly two hex digits; the result must be UTF-8.
fn strict_percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let digit = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
            out.push(digit(hex[0]) * 16 + digit(hex[1]));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
