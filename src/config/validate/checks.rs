//! Semantic checks of `[init]` and `[service.X]`, and the checks that span sections: `after` references and
//! cycles, clashing listen addresses, users and groups. Each error points at the offending key or value.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use toml::de::DeValue;
use toml::Spanned;

use super::ctx::{
    check_group, check_max_duration, check_min_log_bytes, check_nice, check_user, Ctx,
};
use super::doc::KeyPath;
use super::sections::Recovered;
use super::{dashboard_checks, graph, limits, listens, proxy_checks, secrets_checks, Report};
use crate::config::values::{self, ListenAddr};
use crate::config::{OneOrMany, Probe, ServiceSpec, TcpProbeTarget};

pub(super) fn run(root: &Spanned<DeValue<'_>>, rec: &Recovered, report: &mut Report) {
    let mut ctx = Ctx { root, rec, report };
    check_init(&mut ctx);
    for (name, spec) in &rec.config.service {
        check_service(&mut ctx, name, spec);
    }
    check_service_names(&mut ctx);
    check_after(&mut ctx);
    proxy_checks::check_proxy(&mut ctx);
    listens::check_listen_clashes(&mut ctx);
    limits::check_limits(&mut ctx);
    secrets_checks::check_secrets(&mut ctx);
}

fn check_init(ctx: &mut Ctx) {
    let rec = ctx.rec;
    let init = &rec.config.init;
    let path = KeyPath::root().key("init");
    for (key, user) in [("logs_user", &init.logs_user)] {
        if let Some(user) = user {
            check_user(ctx, &path.key(key), user);
        }
    }
    for (key, group) in [
        ("logs_group", &init.logs_group),
        ("control_group", &init.control_group),
    ] {
        if let Some(group) = group {
            check_group(ctx, &path.key(key), group);
        }
    }
    if let Err(e) = values::check_log_level(&init.log_level) {
        ctx.at_value(&path.key("log_level"), e);
    }
    check_max_duration(ctx, &path.key("shutdown_drain"), init.shutdown_drain);
    dashboard_checks::check_dashboard(ctx);
    if init.control_socket.as_os_str().len() > values::MAX_UNIX_PATH {
        ctx.at_value(
            &path.key("control_socket"),
            format!(
                "unix socket paths are limited to {} bytes",
                values::MAX_UNIX_PATH
            ),
        );
    }
}

fn check_service_names(ctx: &mut Ctx) {
    let rec = ctx.rec;
    let proxy_exists = rec.config.proxy.is_some();
    for name in &rec.service_names {
        let path = Ctx::service_path(name);
        if name.is_empty() {
            ctx.at_key(&path, "service names must not be empty");
        } else if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            let why = if bad == '@' {
                " ('@' separates a service from its replica number, as in app@0)"
            } else {
                ""
            };
            ctx.at_key(
                &path,
                format!("invalid service name {name:?}: {bad:?} is not allowed; use letters, digits, '_', '.' and '-'{why}"),
            );
        } else if name == "proxy" && proxy_exists {
            ctx.at_key(
                &path,
                "the name \"proxy\" is reserved for the built-in proxy configured in [proxy]",
            );
        }
    }
}

fn check_service(ctx: &mut Ctx, name: &str, spec: &ServiceSpec) {
    let sp = Ctx::service_path(name);
    check_command(ctx, &sp, &spec.command);
    if let Some(user) = &spec.user {
        check_user(ctx, &sp.key("user"), user);
    }
    if let Some(group) = &spec.group {
        check_group(ctx, &sp.key("group"), group);
    }
    // Read at each start, whatever the directory: relative paths would depend on where init runs.
    let files = sp.key("environment_file");
    for (i, file) in spec
        .environment_file
        .iter()
        .flat_map(|f| f.to_vec())
        .enumerate()
    {
        let path = file.strip_prefix('-').unwrap_or(&file);
        if !path.starts_with('/') {
            let at = if spec
                .environment_file
                .as_ref()
                .is_some_and(|f| matches!(f, crate::config::OneOrMany::Many(_)))
            {
                files.index(i)
            } else {
                files.clone()
            };
            ctx.at(&at, &files, format!("environment_file {file:?} must be an absolute path (\"-/path\" if it may be missing)"));
        }
    }
    if let Some(umask) = spec.umask.filter(|m| m.0 > 0o777) {
        ctx.at_value(
            &sp.key("umask"),
            format!("invalid umask \"{umask}\": at most 0777"),
        );
    }
    for (key, weight) in [
        ("cpu_weight", spec.cpu_weight),
        ("io_weight", spec.io_weight),
    ] {
        if let Some(w) = weight.filter(|w| !(1..=10000).contains(w)) {
            ctx.at_value(
                &sp.key(key),
                format!("{key} {w} is out of range: 1 to 10000"),
            );
        }
    }
    if spec.replicas == 0 {
        ctx.at_value(
            &sp.key("replicas"),
            "replicas must be at least 1 (use autostart = false for none)",
        );
    } else if spec.oneshot && spec.replicas > 1 {
        ctx.at_value(
            &sp.key("replicas"),
            "a oneshot job runs once: replicas must be 1 when oneshot = true",
        );
    }
    if spec.max_in_flight == Some(0) {
        ctx.at_value(
            &sp.key("max_in_flight"),
            "max_in_flight must be at least 1 (unset: no limit)",
        );
    }
    check_nice(ctx, &sp.key("nice"), spec.nice);
    if spec.nofile == Some(0) {
        ctx.at_value(&sp.key("nofile"), "nofile must be at least 1");
    }
    if let Err(e) = values::parse_signal(&spec.stop_signal) {
        ctx.at_value(&sp.key("stop_signal"), e);
    }
    check_max_duration(ctx, &sp.key("stop_grace"), spec.stop_grace);
    if spec.backoff_initial > spec.backoff_max {
        // Point at whichever of the two the file sets (the initial delay if both).
        let initial = sp.key("backoff_initial");
        let key = if span_exists(ctx, &initial) {
            initial
        } else {
            sp.key("backoff_max")
        };
        ctx.at_value(
            &key,
            format!(
                "backoff_initial ({}) is longer than backoff_max ({})",
                spec.backoff_initial, spec.backoff_max
            ),
        );
    }
    if let Some(conditions) = &spec.condition_path_exists {
        let key = sp.key("condition_path_exists");
        for (i, condition) in conditions.to_vec().iter().enumerate() {
            let path = condition.strip_prefix('!').unwrap_or(condition);
            if !path.starts_with('/') {
                let message = format!(
                    "{condition:?} is not an absolute path (\"/path\" must exist, \"!/path\" must not)"
                );
                match conditions {
                    OneOrMany::One(_) => ctx.at_value(&key, message),
                    OneOrMany::Many(_) => ctx.at(&key.index(i), &key, message),
                }
            }
        }
    }
    for (i, code) in spec.success_exit_codes.iter().enumerate() {
        if !(0..=255).contains(code) {
            let key = sp.key("success_exit_codes");
            ctx.at(
                &key.index(i),
                &key,
                format!("exit code {code} is out of range: exit codes are 0 to 255"),
            );
        }
    }
    check_min_log_bytes(ctx, &sp.key("log_max_bytes"), spec.log_max_bytes);
    for (i, cap) in spec.capabilities.iter().enumerate() {
        if let Err(e) = values::parse_capability(cap) {
            let key = sp.key("capabilities");
            ctx.at(&key.index(i), &key, e);
        }
    }
    for (key, value) in &spec.environment {
        let path = sp.key("environment").key(key);
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            ctx.at_key(&path, format!("invalid environment variable name {key:?}"));
        } else if value.contains('\0') {
            ctx.at_value(&path, "environment values cannot contain a NUL byte");
        }
    }
    let has_listen = spec.listen.as_ref().is_some_and(|l| !l.to_vec().is_empty());
    let listen_unknown = ctx.dropped(&sp.key("listen"));
    for (kind, probe) in [
        ("startup", &spec.startup),
        ("readiness", &spec.readiness),
        ("liveness", &spec.liveness),
    ] {
        if let Some(probe) = probe {
            check_probe(ctx, &sp.key(kind), probe, has_listen || listen_unknown);
        }
    }
}

fn check_command(ctx: &mut Ctx, sp: &KeyPath, command: &[String]) {
    let path = sp.key("command");
    if ctx.dropped(&path) || (command.is_empty() && ctx.lost_a_key(sp)) {
        return;
    }
    match command.first() {
        None if span_exists(ctx, &path) => ctx.at_value(&path, "command is empty: give the program and its arguments"),
        None => ctx.at(
            sp,
            &path,
            "missing command: give the program and its arguments, like command = [\"gunicorn\", \"app:wsgi\"]",
        ),
        Some(program) if program.trim().is_empty() => {
            ctx.at(&path.index(0), &path, "the program name (the first element of command) is empty")
        }
        Some(_) => {}
    }
}

fn span_exists(ctx: &Ctx, path: &KeyPath) -> bool {
    super::doc::lookup(ctx.root, path).is_some()
}

fn check_probe(ctx: &mut Ctx, pp: &KeyPath, probe: &Probe, service_listens: bool) {
    let set: Vec<&str> = [
        ("http", probe.http.is_some()),
        ("tcp", probe.tcp.is_some()),
        ("exec", probe.exec.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, is_set)| is_set.then_some(name))
    .collect();
    match set.len() {
        0 if ctx.lost_a_key(pp) => {}
        0 => ctx.at_value(pp, "a probe needs one of http, tcp or exec"),
        1 => {}
        _ => ctx.at_value(
            pp,
            format!(
                "a probe takes exactly one of http, tcp or exec, not {}",
                set.join(" and ")
            ),
        ),
    }
    let sp_listen =
        "the probe connects to the service's own listen socket, but the service has no listen";
    if let Some(http) = &probe.http {
        if !http.starts_with('/') {
            ctx.at_value(
                &pp.key("http"),
                format!("the http probe path {http:?} must start with '/'"),
            );
        } else if !service_listens {
            ctx.at_value(&pp.key("http"), sp_listen);
        }
    }
    match &probe.tcp {
        Some(TcpProbeTarget::OwnSocket(true)) if !service_listens => {
            ctx.at_value(&pp.key("tcp"), sp_listen)
        }
        Some(TcpProbeTarget::OwnSocket(false)) => ctx.at_value(
            &pp.key("tcp"),
            "tcp = false is not a probe: use tcp = true (the service's own socket) or an address",
        ),
        Some(TcpProbeTarget::Address(addr)) => {
            if let Err(e) = ListenAddr::parse(addr) {
                ctx.at_value(&pp.key("tcp"), e);
            }
        }
        _ => {}
    }
    if let Some(exec) = &probe.exec {
        if exec.first().is_none_or(|program| program.trim().is_empty()) {
            ctx.at_value(&pp.key("exec"), "the exec probe command is empty");
        }
    }
    if !(100..=599).contains(&probe.expect) {
        ctx.at_value(
            &pp.key("expect"),
            format!("HTTP status {} is out of range (100 to 599)", probe.expect),
        );
    }
    for (key, value) in [("period", probe.period), ("timeout", probe.timeout)] {
        if value.0.is_zero() {
            ctx.at_value(&pp.key(key), format!("{key} must be longer than 0"));
        }
    }
    for (key, value) in [
        ("failure_threshold", probe.failure_threshold),
        ("success_threshold", probe.success_threshold),
    ] {
        if value == 0 {
            ctx.at_value(&pp.key(key), format!("{key} must be at least 1"));
        }
    }
}

/// The names `after` may refer to: every service, and `proxy` when `[proxy]` exists.
fn after_targets(ctx: &Ctx) -> Vec<String> {
    let mut known: Vec<String> = ctx.rec.service_names.clone();
    if ctx.rec.config.proxy.is_some() && !known.iter().any(|n| n == "proxy") {
        known.push("proxy".into());
    }
    known.sort();
    known
}

/// The `after` list of each node, with the key path of that list.
fn after_lists(ctx: &Ctx) -> Vec<(String, KeyPath, Vec<String>)> {
    let mut lists: Vec<(String, KeyPath, Vec<String>)> = ctx
        .rec
        .config
        .service
        .iter()
        .map(|(name, spec)| {
            (
                name.clone(),
                Ctx::service_path(name).key("after"),
                spec.after.clone(),
            )
        })
        .collect();
    if let Some(proxy) = &ctx.rec.config.proxy {
        lists.push((
            "proxy".into(),
            KeyPath::root().key("proxy").key("after"),
            proxy.after.clone(),
        ));
    }
    lists
}

fn check_after(ctx: &mut Ctx) {
    let known = after_targets(ctx);
    let lists = after_lists(ctx);
    let mut edges: BTreeMap<String, Vec<String>> =
        known.iter().map(|k| (k.clone(), Vec::new())).collect();
    for (node, key, after) in &lists {
        for (i, target) in after.iter().enumerate() {
            if known.contains(target) {
                edges.entry(node.clone()).or_default().push(target.clone());
            } else {
                let hint = match super::sections::suggestion(
                    target,
                    &known.iter().map(String::as_str).collect::<Vec<_>>(),
                ) {
                    Some(best) => format!("did you mean \"{best}\"? known: {}", known.join(", ")),
                    None if known.is_empty() => "there are no services".to_string(),
                    None => format!("known: {}", known.join(", ")),
                };
                ctx.at(
                    &key.index(i),
                    key,
                    format!("unknown service {target:?} ({hint})"),
                );
            }
        }
    }
    for cycle in graph::find_cycles(&edges) {
        // Point at the edge that closes the cycle: the last node's `after` entry naming the first.
        let (Some(first), Some(last)) = (
            cycle.first(),
            cycle.len().checked_sub(2).and_then(|i| cycle.get(i)),
        ) else {
            continue;
        };
        let Some((_, key, after)) = lists.iter().find(|(node, _, _)| node == last) else {
            continue;
        };
        let index = after.iter().position(|t| t == first).unwrap_or(0);
        ctx.at(
            &key.index(index),
            key,
            format!("dependency cycle: {}", cycle.join(" -> ")),
        );
    }
}
