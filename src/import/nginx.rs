//! nginx sites into `[proxy]`: `server` blocks with their listen addresses, names and locations, the
//! settings that are proxy-wide in stackinit (body size, timeouts), and TLS. Directives are inherited
//! from `http` to `server` to `location` as nginx inherits them.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use super::emit::{strings, Table};
use super::nginx_lex::Directive;
use super::nginx_location::{self as loc, Header, Scope, Targets, PROXY_WIDE};
use super::nginx_values::{duration_text, millis, size, why};
use super::program_logs::size_text;
use super::report::{Origin, Skips};

/// A value that is proxy-wide in stackinit, as one `http` or `server` block sets it.
struct Wide {
    key: &'static str,
    value: String,
    at: Origin,
}

/// One `listen`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Listen {
    addr: String,
    tls: bool,
    default: bool,
}

/// A converted server and what the proxy-wide tables need from it.
struct Server {
    table: Table,
    locations: Vec<Table>,
    listens: Vec<(Listen, Origin)>,
    cert: Option<(String, String, Origin)>,
    at: Origin,
}

/// The `[proxy]` tables for a site (or a whole nginx.conf). `services` are the imported services'
/// addresses, so `proxy_pass` to a program's socket becomes `upstream = "NAME"`.
pub fn convert(
    tree: &[Directive],
    services: &[(String, Vec<String>)],
    skips: &mut Skips,
) -> Vec<Table> {
    let mut http: Vec<&Directive> = Vec::new();
    flatten_http(tree, &mut http);
    let upstreams: BTreeMap<String, &Directive> = http
        .iter()
        .filter(|d| d.name == "upstream" && d.block.is_some())
        .map(|d| (d.args.first().cloned().unwrap_or_default(), *d))
        .collect();
    for block in upstreams.values() {
        loc::check_upstream_block(block, skips);
    }
    let targets = Targets {
        upstreams,
        services,
    };
    let mut wide = Vec::new();
    let mut scope = Scope::default();
    let mut http_cert = CertPair::default();
    for d in &http {
        match d.name.as_str() {
            "server" | "upstream" => {}
            _ => level_directive(d, &mut scope, &mut wide, &mut http_cert, skips),
        }
    }
    let servers: Vec<Server> = http
        .iter()
        .filter(|d| d.name == "server" && d.block.is_some())
        .map(|d| server(d, &scope, &http_cert, &targets, &mut wide, skips))
        .collect();
    assemble(servers, wide, skips)
}

/// The directives at `http` level: the top of a site file, and the inside of every `http` block.
fn flatten_http<'a>(list: &'a [Directive], out: &mut Vec<&'a Directive>) {
    for d in list {
        match (d.name.as_str(), &d.block) {
            ("http", Some(block)) => flatten_http(block, out),
            _ => out.push(d),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct CertPair {
    cert: Option<(String, Origin)>,
    key: Option<(String, Origin)>,
}

/// A directive of an `http` or `server` block that is not a server, location or listen.
fn level_directive(
    d: &Directive,
    scope: &mut Scope,
    wide: &mut Vec<Wide>,
    cert: &mut CertPair,
    skips: &mut Skips,
) {
    let one = d.args.first().cloned().unwrap_or_default();
    match d.name.as_str() {
        "root" => scope.root = Some((one, d.at.clone())),
        "index" => scope.index = Some((d.args.clone(), d.at.clone())),
        "proxy_set_header" => {
            if let [name, value] = d.args.as_slice() {
                let header = Header {
                    name: name.to_ascii_lowercase(),
                    value: value.clone(),
                    at: d.at.clone(),
                };
                scope.headers.get_or_insert_with(Vec::new).push(header);
            }
        }
        "ssl_certificate" => cert.cert = Some((one, d.at.clone())),
        "ssl_certificate_key" => cert.key = Some((one, d.at.clone())),
        "ssl" if one == "on" => {}
        name if PROXY_WIDE.contains(&name) => {
            if let Some(w) = wide_value(d, skips) {
                wide.push(w);
            }
        }
        name => {
            if let Some(why) = why(name) {
                skips.add(
                    &d.at,
                    format!("{name} {}", d.args.join(" "))
                        .trim_end()
                        .to_string(),
                    why,
                );
            }
        }
    }
}

/// A proxy-wide setting in stackinit's key and units.
fn wide_value(d: &Directive, skips: &mut Skips) -> Option<Wide> {
    let one = d.args.first().map(String::as_str).unwrap_or_default();
    let what = format!("{} {one}", d.name);
    let (key, value) = match d.name.as_str() {
        "client_max_body_size" => match size(one) {
            Some(0) => {
                skips.add(&d.at, what, "0 (no limit): stackinit always limits request bodies; set client_max_body_size in [proxy] high enough");
                return None;
            }
            Some(bytes) => ("client_max_body_size", size_text(bytes)),
            None => return bad(d, skips),
        },
        name => {
            let key = match name {
                "proxy_read_timeout" | "proxy_send_timeout" => "upstream_timeout",
                "proxy_connect_timeout" => "connect_timeout",
                "keepalive_timeout" => "idle_timeout",
                _ => "header_timeout",
            };
            match millis(one) {
                Some(0) => {
                    skips.add(
                        &d.at,
                        what,
                        "0 turns it off in nginx; stackinit's default applies",
                    );
                    return None;
                }
                Some(ms) => (key, duration_text(ms)),
                None => return bad(d, skips),
            }
        }
    };
    Some(Wide {
        key,
        value,
        at: d.at.clone(),
    })
}

fn bad(d: &Directive, skips: &mut Skips) -> Option<Wide> {
    skips.add(
        &d.at,
        format!("{} {}", d.name, d.args.join(" ")),
        "not a value nginx accepts",
    );
    None
}

fn server(
    d: &Directive,
    http: &Scope,
    http_cert: &CertPair,
    targets: &Targets,
    wide: &mut Vec<Wide>,
    skips: &mut Skips,
) -> Server {
    let mut scope = Scope {
        headers: None,
        ..http.clone()
    };
    let mut cert = http_cert.clone();
    let mut table = Table::new(&["proxy", "server"], true);
    table.from = Some(d.at.clone());
    let mut listens = Vec::new();
    let mut ret: Option<&Directive> = None;
    let block = d.block.as_deref().unwrap_or_default();
    for child in block {
        match child.name.as_str() {
            "listen" => match listen(&child.args) {
                Ok(l) => listens.push((l, child.at.clone())),
                Err(why) => skips.add(&child.at, format!("listen {}", child.args.join(" ")), why),
            },
            "server_name" => server_names(child, &mut table, skips),
            "location" => {}
            "return" => ret = Some(child),
            _ => level_directive(child, &mut scope, wide, &mut cert, skips),
        }
    }
    if scope.headers.is_none() {
        scope.headers = http.headers.clone();
    }
    if listens.is_empty() {
        let l = Listen {
            addr: "0.0.0.0:80".into(),
            tls: false,
            default: false,
        };
        listens.push((l, d.at.clone()));
    }
    let locations = server_locations(block, ret, &scope, targets, skips);
    let cert = match (cert.cert, cert.key) {
        (Some((c, at)), Some((k, _))) => Some((c, k, at)),
        _ => None,
    };
    Server {
        table,
        locations,
        listens,
        cert,
        at: d.at.clone(),
    }
}

/// The server's locations; a server-level `return` answers every request before any location.
fn server_locations(
    block: &[Directive],
    ret: Option<&Directive>,
    scope: &Scope,
    targets: &Targets,
    skips: &mut Skips,
) -> Vec<Table> {
    let locations = block.iter().filter(|c| c.name == "location");
    if let Some(r) = ret {
        for l in locations {
            skips.add(
                &l.at,
                format!("location {}", l.args.join(" ")),
                "never reached in nginx: the server-level return answers every request first",
            );
        }
        let mut table = Table::new(&["proxy", "server", "location"], true);
        table.set("path", "/", Some(&r.at));
        match loc::return_of(&r.args) {
            Ok((status, text)) => {
                table.set("return", status as i64, Some(&r.at));
                if let Some(text) = text {
                    table.set("redirect", text, Some(&r.at));
                }
                return vec![table];
            }
            Err(why) => {
                skips.add(&r.at, format!("return {}", r.args.join(" ")), why);
                return Vec::new();
            }
        }
    }
    let mut tables: Vec<Table> = locations
        .filter_map(|l| loc::location(l, scope, targets, skips))
        .collect();
    tables.extend(slash_redirects(&tables));
    let has_root_location = tables
        .iter()
        .any(|t| t.get("path").and_then(|p| p.as_str()) == Some("/"));
    if let (false, Some((root, at))) = (has_root_location, &scope.root) {
        let mut table = Table::new(&["proxy", "server", "location"], true);
        table
            .set("path", "/", Some(at))
            .note("the server's root, served where no location matches");
        table.set("root", root.clone(), Some(at));
        if let Some((index, at)) = &scope.index {
            table.set("index", strings(index), Some(at));
        }
        tables.push(table);
    }
    tables
}

/// nginx answers `/api` with a 301 to `/api/` when `location /api/` proxies and no location is `/api`
/// itself; stackinit does it with an exact location that says so.
fn slash_redirects(tables: &[Table]) -> Vec<Table> {
    let path_of = |t: &Table| t.get("path").and_then(|p| p.as_str()).map(String::from);
    let paths: Vec<String> = tables.iter().filter_map(path_of).collect();
    let mut out = Vec::new();
    for table in tables
        .iter()
        .filter(|t| t.get("upstream").is_some() && t.get("exact").is_none())
    {
        let Some(path) = path_of(table) else { continue };
        let Some(bare) = path.strip_suffix('/').filter(|b| !b.is_empty()) else {
            continue;
        };
        if paths.iter().any(|p| p == bare) {
            continue;
        }
        let mut redirect = Table::new(&["proxy", "server", "location"], true);
        redirect.from = table.from.clone();
        redirect.set("path", bare, None).note(format!(
            "nginx answers {bare} with a redirect to {path}, since location {path} proxies (the query string is not kept here)"
        ));
        redirect.set("exact", true, None);
        redirect.set("return", 301, None);
        redirect.set("redirect", path, None);
        out.push(redirect);
    }
    out
}

fn server_names(d: &Directive, table: &mut Table, skips: &mut Skips) {
    let mut names: Vec<String> = table
        .get("server_name")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for name in &d.args {
        if name.is_empty() {
            skips.add(
                &d.at,
                "server_name \"\"",
                "requests without a Host header go to the default server in stackinit",
            );
        } else if name.starts_with('$') {
            skips.add(&d.at, format!("server_name {name}"), "variables in server_name are not supported (the instance's own names join EC2 wildcard servers)");
        } else if let Some(Err(e)) = name.strip_prefix('~').map(regex::Regex::new) {
            let reason = e.to_string().lines().last().unwrap_or_default().to_string();
            skips.add(
                &d.at,
                format!("server_name {name}"),
                format!("a regular expression stackinit's regex engine does not accept: {reason}"),
            );
        } else {
            names.push(name.clone());
        }
    }
    table.set("server_name", strings(&names), Some(&d.at));
}

/// `listen` as an address: `80`, `*:80`, `IP`, `IP:PORT`, `[v6]:PORT`, with `default_server` and `ssl`.
fn listen(args: &[String]) -> Result<Listen, String> {
    let (first, flags) = args.split_first().ok_or("listen needs an address")?;
    if first.starts_with("unix:") {
        return Err("the proxy listens on TCP addresses only".into());
    }
    let host_port = if first.chars().all(|c| c.is_ascii_digit()) {
        format!("0.0.0.0:{first}")
    } else if first.starts_with('[') && !first.contains("]:")
        || !first.starts_with('[') && !first.contains(':')
    {
        format!("{first}:80")
    } else {
        first.clone()
    };
    let addr = host_port
        .replacen("*:", "0.0.0.0:", 1)
        .replacen("localhost:", "127.0.0.1:", 1);
    addr.parse::<std::net::SocketAddr>()
        .map_err(|_| format!("{first:?} is not an IP address and port"))?;
    if let Some(flag) = flags
        .iter()
        .find(|f| ["proxy_protocol", "quic"].contains(&f.as_str()))
    {
        return Err(format!("{flag} is not supported"));
    }
    Ok(Listen {
        addr,
        tls: flags.iter().any(|f| f == "ssl"),
        default: flags
            .iter()
            .any(|f| f == "default_server" || f == "default"),
    })
}

/// `[proxy]` (listen, proxy-wide values), `[proxy.tls]`, then each `[[proxy.server]]` and its locations.
fn assemble(mut servers: Vec<Server>, wide: Vec<Wide>, skips: &mut Skips) -> Vec<Table> {
    let mut proxy = Table::new(&["proxy"], false);
    let (plain, tls) = listen_union(&servers);
    if !plain.is_empty() {
        proxy
            .set("listen", strings(&plain), None)
            .note("every server is served on every listen address");
    }
    proxy_wide(&mut proxy, wide, skips);
    let mut tables = vec![proxy];
    tables.extend(tls_table(&servers, &tls, skips));
    mark_default(&mut servers, skips);
    for server in &servers {
        let own: Vec<&str> = server
            .listens
            .iter()
            .map(|(l, _)| l.addr.as_str())
            .collect();
        let all: Vec<&str> = plain.iter().chain(&tls).map(String::as_str).collect();
        if own.len() != all.len() || !all.iter().all(|a| own.contains(a)) {
            skips.add(
                &server.at,
                format!("server listening on {} only", own.join(", ")),
                format!(
                    "stackinit serves every server on every listen address ({})",
                    all.join(", ")
                ),
            );
        }
    }
    for server in servers {
        tables.push(server.table);
        tables.extend(server.locations);
    }
    tables
}

fn listen_union(servers: &[Server]) -> (Vec<String>, Vec<String>) {
    let (mut plain, mut tls) = (Vec::new(), Vec::new());
    for server in servers {
        for (l, _) in &server.listens {
            let list = if l.tls { &mut tls } else { &mut plain };
            if !list.contains(&l.addr) {
                list.push(l.addr.clone());
            }
        }
    }
    (plain, tls)
}

fn proxy_wide(proxy: &mut Table, wide: Vec<Wide>, skips: &mut Skips) {
    let mut chosen: BTreeMap<&str, (String, Origin)> = BTreeMap::new();
    for w in wide {
        match chosen.get(w.key) {
            Some((value, _)) if *value == w.value => {}
            Some((_, first)) => skips.add(
                &w.at,
                format!("{} {}", w.key, w.value),
                format!(
                    "stackinit has one proxy-wide {}: the value from {first} applies",
                    w.key
                ),
            ),
            None => {
                proxy.set(w.key, w.value.clone(), Some(&w.at));
                chosen.insert(w.key, (w.value, w.at));
            }
        }
    }
}

fn tls_table(servers: &[Server], tls: &[String], skips: &mut Skips) -> Option<Table> {
    if tls.is_empty() {
        return None;
    }
    let with_tls = servers
        .iter()
        .filter(|s| s.listens.iter().any(|(l, _)| l.tls));
    let mut chosen: Option<&(String, String, Origin)> = None;
    for server in with_tls {
        match (&server.cert, chosen) {
            (None, _) => skips.add(
                &server.at,
                "listen ... ssl",
                "no ssl_certificate and ssl_certificate_key for this server",
            ),
            (Some(c), None) => chosen = Some(c),
            (Some(c), Some(first)) if c.0 != first.0 => skips.add(
                &c.2,
                format!("ssl_certificate {}", c.0),
                format!("stackinit serves one certificate: {}'s", first.0),
            ),
            _ => {}
        }
    }
    let (cert, key, at) = chosen?;
    let mut table = Table::new(&["proxy", "tls"], false);
    table.set("listen", strings(tls), None);
    table.set("cert", cert.clone(), Some(at));
    table.set("key", key.clone(), Some(at));
    Some(table)
}

/// nginx's `default_server` (per listen address) as stackinit's one `default = true`.
fn mark_default(servers: &mut [Server], skips: &mut Skips) {
    let mut marked = false;
    for server in servers.iter_mut() {
        let Some((_, at)) = server.listens.iter().find(|(l, _)| l.default) else {
            continue;
        };
        if marked {
            skips.add(
                at,
                "default_server",
                "stackinit has one default server for all listen addresses: the first one marked",
            );
            continue;
        }
        server.table.set("default", true, Some(at));
        marked = true;
    }
}
