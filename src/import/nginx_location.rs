//! nginx `location` blocks into `[[proxy.server.location]]`: the match (prefix, `=`, `^~`), the action
//! (`proxy_pass`, `alias`, `root`, `return`) and the headers sent upstream, compared with what the
//! stackinit proxy does.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use super::emit::{strings, Table};
use super::nginx_lex::Directive;
use super::nginx_values::why;
use super::report::{Origin, Skips};
use crate::config::values::ListenAddr;

/// A `proxy_set_header` line.
#[derive(Clone, Debug)]
pub struct Header {
    pub name: String,
    pub value: String,
    pub at: Origin,
}

/// What a location inherits from its server and from `http`.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub root: Option<(String, Origin)>,
    pub index: Option<(Vec<String>, Origin)>,
    /// The `proxy_set_header` lines of the nearest level that has any (nginx inherits them only
    /// when a level sets none).
    pub headers: Option<Vec<Header>>,
}

/// Where `proxy_pass` can go: the `upstream` blocks, and the services (by their addresses).
pub struct Targets<'a> {
    pub upstreams: BTreeMap<String, &'a Directive>,
    pub services: &'a [(String, Vec<String>)],
}

/// Directives that set one proxy-wide value in stackinit; in a location they are left out.
pub const PROXY_WIDE: [&str; 6] = [
    "client_max_body_size",
    "proxy_read_timeout",
    "proxy_send_timeout",
    "proxy_connect_timeout",
    "keepalive_timeout",
    "client_header_timeout",
];

/// A location's own directives, before choosing its action.
#[derive(Default)]
struct Found {
    upstream: Option<(String, Origin)>,
    proxy_pass_failed: bool,
    alias: Option<(String, Origin)>,
    root: Option<(String, Origin)>,
    index: Option<(Vec<String>, Origin)>,
    ret: Option<(u16, Option<String>, Origin)>,
    headers: Vec<Header>,
}

/// The table for one `location`, or None when it cannot be expressed (reported).
pub fn location(
    d: &Directive,
    scope: &Scope,
    targets: &Targets,
    skips: &mut Skips,
) -> Option<Table> {
    let (modifier, path) = match_of(&d.args)?;
    match modifier {
        "" | "=" | "^~" => {}
        "~" | "~*" => {
            skips.add(&d.at, format!("location {modifier} {path}"), "regular-expression locations are not supported: stackinit matches prefixes and exact paths");
            return None;
        }
        "@" => {
            skips.add(&d.at, format!("location @{path}"), "named locations only serve try_files and error_page, which stackinit does not have");
            return None;
        }
        _ => {
            skips.add(
                &d.at,
                format!("location {}", d.args.join(" ")),
                "unknown location modifier",
            );
            return None;
        }
    }
    let exact = modifier == "=";
    let found = read_block(d, &path, targets, skips);
    let mut table = Table::new(&["proxy", "server", "location"], true);
    table.from = Some(d.at.clone());
    table.set("path", path.clone(), None);
    if exact {
        table.set("exact", true, None);
    }
    if !action(&found, scope, &mut table, d, skips) {
        return None;
    }
    if table.get("upstream").is_some() {
        let headers = if found.headers.is_empty() {
            scope.headers.clone()
        } else {
            Some(found.headers)
        };
        check_headers(headers.as_deref(), &found_upstream_at(&table, d), skips);
    }
    Some(table)
}

fn found_upstream_at(table: &Table, d: &Directive) -> Origin {
    table
        .entries
        .iter()
        .find(|e| e.key == "upstream")
        .and_then(|e| e.from.clone())
        .unwrap_or_else(|| d.at.clone())
}

/// `location [=|^~|~|~*|@]path`, the modifier possibly glued to the path (`=/x`, `@name`).
fn match_of(args: &[String]) -> Option<(&'static str, String)> {
    const MODIFIERS: [&str; 5] = ["^~", "~*", "=", "~", "@"];
    match args {
        [one] => {
            for m in MODIFIERS {
                if let Some(rest) = one.strip_prefix(m) {
                    return Some((m, rest.to_string()));
                }
            }
            Some(("", one.clone()))
        }
        [m, path] => MODIFIERS
            .iter()
            .find(|x| **x == m)
            .map(|x| (*x, path.clone()))
            .or(Some(("?", path.clone()))),
        _ => None,
    }
}

fn read_block(d: &Directive, path: &str, targets: &Targets, skips: &mut Skips) -> Found {
    let mut found = Found::default();
    for child in d.block.iter().flatten() {
        let one = |c: &Directive| c.args.first().cloned().unwrap_or_default();
        match child.name.as_str() {
            "proxy_pass" => match proxy_pass(&one(child), path, targets) {
                Ok(upstream) => found.upstream = Some((upstream, child.at.clone())),
                Err(why) => {
                    found.proxy_pass_failed = true;
                    skips.add(&child.at, format!("proxy_pass {}", one(child)), why);
                }
            },
            "alias" => found.alias = Some((one(child), child.at.clone())),
            "root" => found.root = Some((one(child), child.at.clone())),
            "index" => found.index = Some((child.args.clone(), child.at.clone())),
            "return" => match return_of(&child.args) {
                Ok((status, text)) => found.ret = Some((status, text, child.at.clone())),
                Err(why) => skips.add(&child.at, format!("return {}", child.args.join(" ")), why),
            },
            "proxy_set_header" => found.headers.extend(header(child)),
            "try_files" if serves_files(&child.args) => {}
            "location" => skips.add(&child.at, format!("location {}", child.args.join(" ")), "nested locations are not supported"),
            name if PROXY_WIDE.contains(&name) => skips.add(&child.at, format!("{name} {}", one(child)), "set in a location: stackinit has one proxy-wide value (set it in [proxy] to apply it everywhere)"),
            name => {
                if let Some(why) = why(name) {
                    skips.add(&child.at, format!("{name} {}", child.args.join(" ")), why);
                }
            }
        }
    }
    found
}

/// `try_files $uri =404` and `$uri $uri/ =404` are what serving files does anyway.
fn serves_files(args: &[String]) -> bool {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    matches!(
        args.as_slice(),
        ["$uri", "=404"] | ["$uri", "$uri/", "=404"]
    )
}

/// Choose the action as nginx would (return first, then proxy_pass, then files). False: nothing to do.
fn action(
    found: &Found,
    scope: &Scope,
    table: &mut Table,
    d: &Directive,
    skips: &mut Skips,
) -> bool {
    if let Some((status, text, at)) = &found.ret {
        table.set("return", *status as i64, Some(at));
        if let Some(text) = text {
            table.set("redirect", text.clone(), Some(at));
        }
        return true;
    }
    if let Some((upstream, at)) = &found.upstream {
        table.set("upstream", upstream.clone(), Some(at));
        return true;
    }
    if found.proxy_pass_failed {
        return false;
    }
    if let Some((alias, at)) = &found.alias {
        table.set("alias", alias.clone(), Some(at));
    } else if let Some((root, at)) = found.root.as_ref().or(scope.root.as_ref()) {
        table.set("root", root.clone(), Some(at));
    } else {
        skips.add(
            &d.at,
            format!("location {}", d.args.join(" ")),
            "no proxy_pass, root, alias or return: nginx serves its own html directory here",
        );
        return false;
    }
    if let Some((index, at)) = found.index.as_ref().or(scope.index.as_ref()) {
        table.set("index", strings(index), Some(at));
    }
    true
}

/// `return CODE`, `return CODE URL` (3xx), `return URL` (302). Text bodies and variables have no
/// place in stackinit's `return`.
pub fn return_of(args: &[String]) -> Result<(u16, Option<String>), String> {
    let variables =
        "the URL has nginx variables ($host, $request_uri...): stackinit's redirect is a fixed URL";
    match args {
        [url] if url.starts_with("http://") || url.starts_with("https://") => {
            if url.contains('$') {
                return Err(variables.into());
            }
            Ok((302, Some(url.clone())))
        }
        [code] => code
            .parse::<u16>()
            .map(|c| (c, None))
            .map_err(|_| format!("{code:?} is not a status code")),
        [code, text] => {
            let code: u16 = code
                .parse()
                .map_err(|_| format!("{code:?} is not a status code"))?;
            if !(300..=399).contains(&code) {
                return Err(
                    "a return with a body text: stackinit's return sends a status, or a redirect"
                        .into(),
                );
            }
            if text.contains('$') {
                return Err(variables.into());
            }
            Ok((code, Some(text.clone())))
        }
        _ => Err("return takes a status code and a URL or text".into()),
    }
}

fn header(d: &Directive) -> Option<Header> {
    match d.args.as_slice() {
        [name, value] => Some(Header {
            name: name.to_ascii_lowercase(),
            value: value.clone(),
            at: d.at.clone(),
        }),
        _ => None,
    }
}

/// Headers stackinit sends as these lines ask (Debian's proxy_params, and WebSocket upgrades).
fn same_as_stackinit(h: &Header) -> bool {
    matches!(
        (h.name.as_str(), h.value.as_str()),
        ("host", "$http_host")
            | ("x-real-ip", "$remote_addr")
            | ("x-forwarded-for", "$proxy_add_x_forwarded_for")
            | ("x-forwarded-proto", "$scheme")
            | ("upgrade", "$http_upgrade")
            | ("connection", "upgrade" | "Upgrade" | "$connection_upgrade")
    )
}

/// Report each header line stackinit does not send as written, and nginx's defaults where none are set.
fn check_headers(headers: Option<&[Header]>, proxy_pass: &Origin, skips: &mut Skips) {
    let Some(headers) = headers else {
        skips.add(proxy_pass, "proxy_pass without proxy_set_header", "nginx sent Host: <the upstream's address> and no X-Forwarded-*; stackinit forwards the client's Host and adds X-Real-IP, X-Forwarded-For and X-Forwarded-Proto (Debian's proxy_params)");
        return;
    };
    for h in headers.iter().filter(|h| !same_as_stackinit(h)) {
        let why = match h.name.as_str() {
            "host" => "stackinit forwards Host as the client sent it ($http_host, port included)",
            "connection" => "stackinit keeps upstream connections alive and removes hop-by-hop headers",
            _ => "stackinit sends the proxy_params headers only (Host, X-Real-IP, X-Forwarded-For, X-Forwarded-Proto)",
        };
        skips.add(
            &h.at,
            format!("proxy_set_header {} {}", h.name, h.value),
            why,
        );
    }
}

/// A `proxy_pass` URL as a stackinit upstream: a service name, `unix:/path` or `IP:PORT`.
pub fn proxy_pass(url: &str, path: &str, targets: &Targets) -> Result<String, String> {
    if url.contains('$') {
        return Err("proxy_pass with variables: stackinit proxies to fixed upstreams".into());
    }
    if url.starts_with("https://") {
        return Err("https to the upstream: stackinit speaks plain HTTP to upstreams".into());
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// upstreams can be proxied")?;
    let (authority, uri) = match rest.strip_prefix("unix:") {
        Some(socket) => match socket.split_once(':') {
            Some((sock, uri)) => (format!("unix:{sock}"), uri.to_string()),
            None => (format!("unix:{socket}"), String::new()),
        },
        None => match rest.find('/') {
            Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
            None => (rest.to_string(), String::new()),
        },
    };
    if !uri.is_empty() && uri != path {
        return Err(format!("the URI {uri:?} replaces the location's {path:?} in the path: stackinit passes the path unchanged"));
    }
    match targets.upstreams.get(&authority) {
        Some(block) => upstream_block(block, targets),
        None => address(&authority).map(|a| service_at(&a, targets.services).unwrap_or(a)),
    }
}

/// An address as nginx writes it (`unix:/p`, `IP:PORT`, `IP` for port 80, `localhost:PORT`).
fn address(text: &str) -> Result<String, String> {
    if text.starts_with("unix:") {
        return ListenAddr::parse(text).map(|a| a.to_string());
    }
    let with_port = if text.starts_with('[') && !text.contains("]:")
        || !text.starts_with('[') && !text.contains(':')
    {
        format!("{text}:80")
    } else {
        text.to_string()
    };
    let with_ip = with_port.replacen("localhost:", "127.0.0.1:", 1);
    ListenAddr::parse(&with_ip)
        .map(|a| a.to_string())
        .map_err(|_| {
            format!("{text:?} is a host name: stackinit connects to IP addresses and unix sockets")
        })
}

/// The service that binds `addr` (under supervisord or stackinit), if any.
fn service_at(addr: &str, services: &[(String, Vec<String>)]) -> Option<String> {
    let wanted = ListenAddr::parse(addr).ok()?;
    services
        .iter()
        .find(|(_, addrs)| {
            addrs
                .iter()
                .filter_map(|a| ListenAddr::parse(a).ok())
                .any(|a| a.overlaps(&wanted))
        })
        .map(|(name, _)| name.clone())
}

/// `upstream NAME { server ...; }`: one service when every server is one of its addresses, else the
/// single address. Several addresses outside stackinit cannot be balanced.
fn upstream_block(block: &Directive, targets: &Targets) -> Result<String, String> {
    let mut resolved = Vec::new();
    for d in block.block.iter().flatten().filter(|d| d.name == "server") {
        let addr = address(d.args.first().map(String::as_str).unwrap_or_default())?;
        resolved.push(service_at(&addr, targets.services).unwrap_or(addr));
    }
    resolved.dedup();
    match resolved.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("upstream {} has no server", block.args.join(" "))),
        _ => Err(format!(
            "upstream {} balances over {}: stackinit balances only over the replicas of one of its services",
            block.args.join(" "),
            resolved.join(", ")
        )),
    }
}

/// Report the directives of an `upstream` block that stackinit does not do the same way.
pub fn check_upstream_block(block: &Directive, skips: &mut Skips) {
    for d in block.block.iter().flatten() {
        match d.name.as_str() {
            "server" => {
                for param in d.args.iter().skip(1) {
                    if param != "fail_timeout=0" {
                        skips.add(&d.at, format!("server {} {param}", d.args[0]), "stackinit sends each request to the ready replica with the fewest in flight: no weights, failure counts or backups");
                    }
                }
            }
            "keepalive" | "least_conn" | "keepalive_timeout" | "keepalive_requests" => {}
            other => skips.add(
                &d.at,
                other,
                "stackinit sends each request to the ready replica with the fewest in flight",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(services: &[(String, Vec<String>)]) -> Targets<'_> {
        Targets {
            upstreams: BTreeMap::new(),
            services,
        }
    }

    #[test]
    fn proxy_pass_forms() {
        let services = vec![(
            "app".to_string(),
            vec!["unix:/srv/app.sock".to_string(), "0.0.0.0:8000".to_string()],
        )];
        let t = targets(&services);
        assert_eq!(
            proxy_pass("http://unix:/srv/app.sock", "/", &t).unwrap(),
            "app"
        );
        assert_eq!(
            proxy_pass("http://unix:/srv/app.sock:/", "/", &t).unwrap(),
            "app"
        );
        assert_eq!(
            proxy_pass("http://127.0.0.1:8000", "/api/", &t).unwrap(),
            "app"
        );
        assert_eq!(
            proxy_pass("http://localhost:8000/api/", "/api/", &t).unwrap(),
            "app"
        );
        assert_eq!(
            proxy_pass("http://unix:/run/other.sock", "/", &t).unwrap(),
            "unix:/run/other.sock"
        );
        assert_eq!(
            proxy_pass("http://10.0.0.2", "/", &t).unwrap(),
            "10.0.0.2:80"
        );
        assert!(proxy_pass("http://127.0.0.1:8000/", "/api/", &t)
            .unwrap_err()
            .contains("replaces"));
        assert!(proxy_pass("https://10.0.0.2", "/", &t).is_err());
        assert!(proxy_pass("http://backend.internal:8080", "/", &t)
            .unwrap_err()
            .contains("host name"));
        assert!(proxy_pass("http://$upstream", "/", &t).is_err());
    }

    #[test]
    fn returns() {
        assert_eq!(return_of(&["404".into()]).unwrap(), (404, None));
        assert_eq!(
            return_of(&["301".into(), "https://example.org/".into()]).unwrap(),
            (301, Some("https://example.org/".into()))
        );
        assert_eq!(
            return_of(&["https://x.org/".into()]).unwrap(),
            (302, Some("https://x.org/".into()))
        );
        assert!(return_of(&["301".into(), "https://$host$request_uri".into()]).is_err());
        assert!(return_of(&["200".into(), "ok".into()]).is_err());
    }

    #[test]
    fn modifiers() {
        assert_eq!(
            match_of(&["=".into(), "/x".into()]),
            Some(("=", "/x".to_string()))
        );
        assert_eq!(match_of(&["=/x".into()]), Some(("=", "/x".to_string())));
        assert_eq!(
            match_of(&["^~".into(), "/s/".into()]),
            Some(("^~", "/s/".to_string()))
        );
        assert_eq!(
            match_of(&["~*".into(), "\\.php$".into()]),
            Some(("~*", "\\.php$".to_string()))
        );
        assert_eq!(match_of(&["/".into()]), Some(("", "/".to_string())));
        assert_eq!(match_of(&["@app".into()]), Some(("@", "app".to_string())));
    }
}
