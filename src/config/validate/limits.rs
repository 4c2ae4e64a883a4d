//! Bounds that keep PID 1 inside its resources: how many replicas and units a config may ask for, whether
//! their logs and sockets fit in init's open-file limit, the proxy's files and connections, and the
//! shutdown's deadline.
//!
//! The replica bounds are checked before anything expands replicas (the listen check skips a service
//! over them), so `replicas = 100000000` is one error, at once, not minutes of work and an allocation
//! failure that aborts PID 1.
#![forbid(unsafe_code)]

use super::ctx::{check_max_duration, Ctx};
use super::doc::KeyPath;
use crate::config::{Config, ServiceSpec};
use crate::nofile;

/// Most replicas of one service: more than any instance runs, few enough to expand at once.
pub(super) const MAX_REPLICAS: u32 = 1024;
/// Most units (services, replicas and the proxy) of one config: a reload from 1 to 4093 units held the
/// supervisor's loop for 0.86 s (release build, binding 4093 sockets), and 0.21 s when nothing changed;
/// 20,000 held it for 22 s.
pub(super) const MAX_UNITS: u64 = 4096;
/// Open files init needs besides the units' logs and sockets: the control socket's connections (64)
/// and the dashboard's (32), tails being read, probes, the notify socket, its own log, the runtime.
const BASE_FDS: u64 = 256;
/// Per log file: the pipe's two ends and the file.
const FDS_PER_LOG: u64 = 3;

/// Fewest open files the proxy may be given.
const MIN_PROXY_NOFILE: u64 = 128;

/// Every bound of this module, on the recovered config.
pub(super) fn check_limits(ctx: &mut Ctx) {
    check_shutdown_timeout(ctx);
    check_proxy_files(ctx);
    let mut bounded = true;
    for (name, spec) in &ctx.rec.config.service {
        if spec.replicas > MAX_REPLICAS {
            bounded = false;
            let message = format!(
                "replicas = {} is more than {MAX_REPLICAS}, the most one service may have",
                spec.replicas
            );
            ctx.at_value(&Ctx::service_path(name).key("replicas"), message);
        }
    }
    // Totals of configs with a service over the bound would only repeat that error.
    if bounded {
        check_totals(ctx, crate::nofile::current().1);
    }
}

/// Whether a service's replicas may be expanded (the bound is reported by `check_limits`).
pub(super) fn expandable(spec: &ServiceSpec) -> bool {
    spec.replicas <= MAX_REPLICAS
}

/// The config's units and open files against `MAX_UNITS` and init's hard file limit `nofile`.
fn check_totals(ctx: &mut Ctx, nofile: u64) {
    let config = &ctx.rec.config;
    let Some((largest, _)) = config.service.iter().max_by_key(|(_, s)| s.replicas) else {
        return;
    };
    let at = Ctx::service_path(largest).key("replicas");
    let units = unit_count(config);
    if units > MAX_UNITS {
        let message =
            format!("{units} units in all is more than {MAX_UNITS}, the most one config may have");
        ctx.at_value(&at, message);
        return;
    }
    let needed = fds_needed(config);
    if needed > nofile {
        let message = format!(
            "this config needs about {needed} open files in init ({} per log file, 1 per socket, \
             {BASE_FDS} for itself), more than its limit of {nofile} (the hard RLIMIT_NOFILE here; \
             as PID 1 stackinit raises it to fs.nr_open): lower replicas, or let replicas share \
             their stdout and stderr files",
            FDS_PER_LOG
        );
        ctx.at_value(&at, message);
    }
}

/// Services, replicas and the proxy.
fn unit_count(config: &Config) -> u64 {
    let services: u64 = config
        .service
        .values()
        .map(|s| u64::from(s.replicas.max(1)))
        .sum();
    services + u64::from(config.proxy.is_some())
}

/// About how many files init holds open for `config`: three per log file (a replica has its own unless
/// `stdout`/`stderr` name a shared one), one per listening socket (with the spare of a replicated
/// service), and the base.
fn fds_needed(config: &Config) -> u64 {
    let mut logs = 0;
    let mut sockets = 0;
    for spec in config.service.values() {
        let replicas = u64::from(spec.replicas.max(1));
        let each = |path: &Option<std::path::PathBuf>| if path.is_some() { 1 } else { replicas };
        let shared = spec.stdout.is_some() && spec.stdout == spec.stderr;
        logs += each(&spec.stdout) + if shared { 0 } else { each(&spec.stderr) };
        let spare = u64::from(replicas > 1);
        let addresses = spec.listen.as_ref().map_or(0, |l| l.to_vec().len() as u64);
        sockets += addresses * (replicas + spare);
    }
    if let Some(proxy) = &config.proxy {
        logs += 2;
        let tls = proxy.tls.as_ref().map_or(0, |t| t.listen.len());
        sockets += (proxy.listen.len() + tls) as u64;
    }
    BASE_FDS + FDS_PER_LOG * logs + sockets
}

/// `[proxy] nofile` and `max_connections`: files the proxy may have, and enough of them for its
/// connections (two each) and the reserve that answers `/healthz` at the cap.
fn check_proxy_files(ctx: &mut Ctx) {
    let Some(proxy) = &ctx.rec.config.proxy else {
        return;
    };
    let pp = KeyPath::root().key("proxy");
    let ceiling = nofile::ceiling();
    let nofile = match proxy.nofile {
        Some(n) if n < MIN_PROXY_NOFILE => {
            let message =
                format!("nofile = {n} is too few for the proxy: at least {MIN_PROXY_NOFILE}");
            return ctx.at_value(&pp.key("nofile"), message);
        }
        Some(n) if n > ceiling => {
            let message = format!(
                "nofile = {n} is more than stackinit can give the proxy here ({ceiling}: fs.nr_open \
                 as root, else the hard RLIMIT_NOFILE)"
            );
            return ctx.at_value(&pp.key("nofile"), message);
        }
        Some(n) => n,
        None => nofile::proxy_default(),
    };
    let Some(max) = proxy.max_connections.map(u64::from) else {
        return;
    };
    let needed = nofile::proxy_files_for(max);
    if max == 0 {
        ctx.at_value(
            &pp.key("max_connections"),
            "max_connections must be at least 1",
        );
    } else if needed > nofile {
        let message = format!(
            "max_connections = {max} needs {needed} open files in the proxy (2 per connection, {} in \
             reserve for /healthz, {} of its own), more than its nofile of {nofile}: raise nofile or \
             lower max_connections",
            nofile::PROXY_RESERVE,
            nofile::PROXY_OVERHEAD
        );
        ctx.at_value(&pp.key("max_connections"), message);
    }
}

/// `shutdown_timeout` is a deadline: more than nothing, less than days.
fn check_shutdown_timeout(ctx: &mut Ctx) {
    let timeout = ctx.rec.config.init.shutdown_timeout;
    let path = KeyPath::root().key("init").key("shutdown_timeout");
    if timeout.0.is_zero() {
        ctx.at_value(
            &path,
            "shutdown_timeout must be more than 0: it is how long services have to stop",
        );
    }
    check_max_duration(ctx, &path, timeout);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OneOrMany;

    fn service(replicas: u32, listen: Option<&str>) -> ServiceSpec {
        ServiceSpec {
            command: vec!["x".into()],
            replicas,
            listen: listen.map(|l| OneOrMany::One(l.into())),
            ..ServiceSpec::default()
        }
    }

    #[test]
    fn files_are_counted_per_log_and_socket() {
        let mut config = Config::default();
        config
            .service
            .insert("app".into(), service(10, Some("unix:/run/app.sock")));
        // 10 replicas x 2 logs x 3 + 11 sockets (one spare).
        assert_eq!(fds_needed(&config), BASE_FDS + 60 + 11);
        let shared = config.service.get_mut("app").unwrap();
        shared.stdout = Some("/logs/app.log".into());
        shared.stderr = Some("/logs/app.log".into());
        assert_eq!(fds_needed(&config), BASE_FDS + 3 + 11);
        config.proxy = Some(Default::default());
        assert_eq!(fds_needed(&config), BASE_FDS + 3 + 11 + 6 + 1);
        assert_eq!(unit_count(&config), 11);
    }
}
