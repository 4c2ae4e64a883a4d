//! Semantic checks of `[proxy]`: its user, servers and locations, and what its upstreams refer to.
//! (Its listen addresses are checked with everyone else's in `checks`.)
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::ctx::{
    check_group, check_max_duration, check_min_log_bytes, check_nice, check_user, Ctx,
};
use super::doc::KeyPath;
use crate::config::values::{ListenAddr, TrustedSource};
use crate::config::{Config, LocationSpec, ServerSpec};
use crate::unix_reach::{self, SocketPerms, Who};

pub(super) fn check_proxy(ctx: &mut Ctx) {
    let rec = ctx.rec;
    let Some(proxy) = &rec.config.proxy else {
        return;
    };
    let pp = KeyPath::root().key("proxy");
    if ctx.dropped(&pp) {
        return;
    }
    check_user(ctx, &pp.key("user"), &proxy.user);
    if let Some(group) = &proxy.group {
        check_group(ctx, &pp.key("group"), group);
    }
    check_min_log_bytes(ctx, &pp.key("log_max_bytes"), proxy.log_max_bytes);
    check_max_duration(ctx, &pp.key("stop_grace"), proxy.stop_grace);
    check_nice(ctx, &pp.key("nice"), proxy.nice);
    check_trusted_proxies(ctx, &pp.key("trusted_proxies"), &proxy.trusted_proxies);
    check_extra_server_names(
        ctx,
        &pp.key("extra_server_names"),
        &proxy.extra_server_names,
    );
    check_workers(ctx, &pp.key("workers"), proxy.workers);
    let mut default_server: Option<KeyPath> = None;
    for (i, server) in proxy.server.iter().enumerate() {
        let sp = pp.key("server").index(i);
        if server.default {
            match &default_server {
                Some(first) => ctx.at_value(
                    &sp.key("default"),
                    format!("{first} is already the default server; only one server can have default = true"),
                ),
                None => default_server = Some(sp.clone()),
            }
        }
        check_server(ctx, &sp, server);
    }
}

/// Most proxy worker threads: far more than any instance has cores, and a bound on what a typo can start.
pub const MAX_WORKERS: u32 = 256;

fn check_workers(ctx: &mut Ctx, key: &KeyPath, workers: Option<u32>) {
    match workers {
        Some(0) => ctx.at_value(
            key,
            "workers must be at least 1 (leave it out for one per core)",
        ),
        Some(n) if n > MAX_WORKERS => ctx.at_value(
            key,
            format!("workers = {n} is too many: at most {MAX_WORKERS}"),
        ),
        _ => {}
    }
}

fn check_server(ctx: &mut Ctx, sp: &KeyPath, server: &ServerSpec) {
    let names = sp.key("server_name");
    for (i, name) in server.server_name.iter().enumerate() {
        if name.trim().is_empty() {
            ctx.at(&names.index(i), &names, "server names must not be empty");
        } else if let Some(pattern) = name.strip_prefix('~') {
            if let Err(e) = regex::Regex::new(pattern) {
                // regex's message draws a caret diagram over several lines; its last line is the reason.
                let text = e.to_string();
                let reason = text
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim_start_matches("error: ");
                ctx.at(
                    &names.index(i),
                    &names,
                    format!("invalid regular expression {pattern:?}: {reason}"),
                );
            }
        } else if name.contains(char::is_whitespace) {
            ctx.at(
                &names.index(i),
                &names,
                format!("server name {name:?} contains whitespace"),
            );
        } else if let Some(problem) = wildcard_problem(name) {
            ctx.at(
                &names.index(i),
                &names,
                format!("server name {name:?}: {problem}"),
            );
        }
    }
    // nginx refuses two locations with the same path and kind; a second one here could never match.
    let mut seen: BTreeMap<(&str, bool), usize> = BTreeMap::new();
    for (i, location) in server.location.iter().enumerate() {
        let lp = sp.key("location").index(i);
        check_location(ctx, &lp, location);
        if let Some(first) = seen.insert((location.path.as_str(), location.exact), i) {
            seen.insert((location.path.as_str(), location.exact), first);
            ctx.at_value(
                &lp.key("path"),
                format!(
                    "duplicate location {:?}: {} has the same path",
                    location.path,
                    sp.key("location").index(first)
                ),
            );
        }
    }
}

fn check_trusted_proxies(ctx: &mut Ctx, key: &KeyPath, list: &[String]) {
    for (i, entry) in list.iter().enumerate() {
        if let Err(e) = TrustedSource::parse(entry) {
            ctx.at(&key.index(i), key, e);
        }
    }
}

/// Extra names go to the app's `ALLOWED_HOSTS` as they are (comma-separated): exact names and IPs only.
fn check_extra_server_names(ctx: &mut Ctx, key: &KeyPath, list: &[String]) {
    for (i, name) in list.iter().enumerate() {
        if let Some(problem) = extra_name_problem(name) {
            ctx.at(&key.index(i), key, format!("{name:?}: {problem}"));
        }
    }
}

/// Why a name cannot be an extra server name (and an allowed host), if it cannot.
pub(crate) fn extra_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("must not be empty");
    }
    if name.len() > 253 {
        return Some("longer than a DNS name can be (253 bytes)");
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if !name.chars().all(ok) {
        return Some("an exact host name or IP (letters, digits, '.', '-'; no wildcards, regexes, spaces or commas)");
    }
    None
}

/// What the proxy's `ServerNames` refuses in a name that is not a regex: a `*` anywhere but in `*.` at
/// the start or `.*` at the end, and a wildcard without a name part. Checked here because the proxy
/// refuses the whole config for one such name (it exits at start, or ignores a reload init applied):
/// `server_name = ["*"]` passed this check until the `config` fuzz target found it. That target also
/// keeps the two in agreement (a valid config's routes must build).
fn wildcard_problem(name: &str) -> Option<&'static str> {
    let part = name
        .strip_prefix("*.")
        .or_else(|| name.strip_prefix('.'))
        .or_else(|| name.strip_suffix(".*"));
    match part {
        Some(part) if part.is_empty() || part.contains('*') => {
            Some("a wildcard needs a name part and only one `*`, like \"*.example.org\"")
        }
        Some(_) => None,
        None if name.contains('*') => {
            Some("a wildcard may only be `*.` at the start or `.*` at the end")
        }
        None => None,
    }
}

fn check_location(ctx: &mut Ctx, lp: &KeyPath, location: &LocationSpec) {
    let quiet_if_missing = ctx.lost_a_key(lp);
    let path_missing_after_typo = location.path.is_empty() && quiet_if_missing;
    if !ctx.dropped(&lp.key("path")) && !location.path.starts_with('/') && !path_missing_after_typo
    {
        let message = if location.path.is_empty() {
            "missing path: every location needs a path starting with '/', like path = \"/\""
                .to_string()
        } else {
            format!("location path {:?} must start with '/'", location.path)
        };
        ctx.at_value(&lp.key("path"), message);
    }
    let actions: Vec<&str> = [
        ("upstream", location.upstream.is_some()),
        ("root", location.root.is_some()),
        ("alias", location.alias.is_some()),
        ("return", location.return_status.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, is_set)| is_set.then_some(name))
    .collect();
    match actions.len() {
        0 if quiet_if_missing => {}
        0 => ctx.at_value(
            lp,
            "a location needs one of upstream, root, alias or return",
        ),
        1 => {}
        _ => ctx.at_value(
            lp,
            format!(
                "a location takes exactly one of upstream, root, alias or return, not {}",
                actions.join(" and ")
            ),
        ),
    }
    if let Some(upstream) = &location.upstream {
        check_upstream(ctx, &lp.key("upstream"), upstream);
        check_reach(ctx, &lp.key("upstream"), upstream);
    }
    if let Some(protocols) = &location.upgrade {
        check_upgrade(
            ctx,
            &lp.key("upgrade"),
            protocols,
            location.upstream.is_some(),
        );
    }
    if let Some(status) = location.return_status {
        if !(100..=599).contains(&status) {
            ctx.at_value(
                &lp.key("return"),
                format!("HTTP status {status} is out of range (100 to 599)"),
            );
        }
    }
    if location.redirect.is_some()
        && !location
            .return_status
            .is_some_and(|s| (300..=399).contains(&s))
    {
        ctx.at_value(
            &lp.key("redirect"),
            "redirect needs a 3xx return status, like return = 302",
        );
    }
}

/// `upgrade` names protocols (RFC 9110 tokens, like `websocket`) and only means something where requests
/// are proxied.
fn check_upgrade(ctx: &mut Ctx, path: &KeyPath, protocols: &[String], proxies: bool) {
    if !proxies {
        ctx.at_value(
            path,
            "upgrade only applies to a location with upstream (it says which protocol switches to forward)",
        );
    }
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    for (i, protocol) in protocols.iter().enumerate() {
        if protocol.is_empty() || !protocol.chars().all(is_tchar) {
            ctx.at(
                &path.index(i),
                path,
                format!("{protocol:?} is not a protocol name (like \"websocket\")"),
            );
        }
    }
}

/// Whether the proxy's user can connect to the unix sockets behind `upstream`: a warning naming the directory
/// (or socket) in the way and the user, since an ACL this cannot see may still let it through. The user is the
/// one the proxy would run as if whoever runs this started the stack: `[proxy] user` for root, else themselves.
fn check_reach(ctx: &mut Ctx, path: &KeyPath, upstream: &str) {
    let config = &ctx.rec.config;
    let Some(proxy) = &config.proxy else {
        return;
    };
    let who = if nix::unistd::geteuid().is_root() {
        Who::of_user(&proxy.user, proxy.group.as_deref())
    } else {
        Some(Who::current())
    };
    let Some(who) = who else {
        return;
    };
    let blocked = sockets_of(config, upstream)
        .into_iter()
        .find_map(|(socket, will_be)| {
            unix_reach::check(&socket, &who, will_be).map(|denied| (socket, denied))
        });
    if let Some((socket, denied)) = blocked {
        ctx.warn_value(
            path,
            format!(
                "the proxy, as {who}, cannot connect to unix:{}: {denied}; every request here would get 502",
                socket.display()
            ),
        );
    }
}

/// The unix sockets an upstream names, each with the permissions init will give it when it binds it (a
/// service's socket: `listen_mode`, owned by the service's user and the proxy's group, as listeners.rs does).
fn sockets_of(config: &Config, upstream: &str) -> Vec<(PathBuf, Option<SocketPerms>)> {
    if let Some(path) = upstream.strip_prefix("unix:") {
        return vec![(PathBuf::from(path), None)];
    }
    let Some(spec) = config.service.get(upstream) else {
        return Vec::new();
    };
    let id_of_user = |name: &str| {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    };
    let id_of_group = |name: &str| {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    };
    let proxy_group = config.proxy.as_ref().and_then(|p| match &p.group {
        Some(group) => id_of_group(group),
        None => nix::unistd::User::from_name(&p.user)
            .ok()
            .flatten()
            .map(|u| u.gid.as_raw()),
    });
    let will_be = SocketPerms {
        mode: spec.listen_mode.0,
        owner: spec
            .user
            .as_deref()
            .and_then(id_of_user)
            .unwrap_or_else(|| nix::unistd::geteuid().as_raw()),
        group: proxy_group
            .or_else(|| spec.group.as_deref().and_then(id_of_group))
            .unwrap_or_else(|| nix::unistd::getegid().as_raw()),
    };
    spec.listen
        .iter()
        .flat_map(|l| l.to_vec())
        .filter_map(|address| address.strip_prefix("unix:").map(PathBuf::from))
        .map(|path| (path, Some(will_be)))
        .collect()
}

/// An upstream is an address (`unix:/path`, `IP:PORT`), or the name of a service that has `listen`.
fn check_upstream(ctx: &mut Ctx, path: &KeyPath, upstream: &str) {
    if upstream.starts_with("unix:") || upstream.contains(':') {
        if let Err(e) = ListenAddr::parse(upstream) {
            ctx.at_value(path, e);
        }
        return;
    }
    let rec = ctx.rec;
    let service_path = Ctx::service_path(upstream);
    match rec.config.service.get(upstream) {
        Some(spec) => {
            let listens = spec.listen.as_ref().is_some_and(|l| !l.to_vec().is_empty());
            if !listens && !ctx.dropped(&service_path.key("listen")) {
                ctx.at_value(
                    path,
                    format!("service {upstream:?} has no listen address to proxy to (set listen in [{service_path}])"),
                );
            }
        }
        // A service that exists but could not be read has been reported already.
        None if rec.service_names.iter().any(|n| n == upstream) => {}
        None => {
            let known: Vec<&str> = rec
                .config
                .service
                .iter()
                .filter(|(_, s)| s.listen.is_some())
                .map(|(n, _)| n.as_str())
                .collect();
            let hint = if known.is_empty() {
                "no service has a listen address".to_string()
            } else {
                format!("services with a listen address: {}", known.join(", "))
            };
            ctx.at_value(
                path,
                format!("unknown service {upstream:?}; an upstream is a service name or an address like \"unix:/run/app.sock\" ({hint})"),
            );
        }
    }
}
