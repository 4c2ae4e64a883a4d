//! Units from the config: one per service, one per replica of a replicated service, and the proxy; and
//! the log files they write to, opened once and shared by every unit that names the same path.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;

use nix::sys::signal::Signal;
use tracing::error;

use super::launch;
use super::sockets;
use super::state::{Machine, Policy};
use super::unit::{Place, Unit, UnitKind, UnitLog};
use crate::config::{Config, ServiceSpec};
use crate::logs::ServiceLog;

pub const PROXY_UNIT: &str = "proxy";

/// Every log pipe stackinit holds, by file path. A pipe outlives the processes that write to it.
#[derive(Default)]
pub struct LogFiles {
    open: HashMap<PathBuf, Rc<ServiceLog>>,
}

impl LogFiles {
    /// The log at `path`, opened now if no unit uses it yet; the newest limits apply. A log that cannot
    /// be opened is an error for the units that write to it, never a reason to stop supervising.
    pub fn get(&mut self, path: PathBuf, max_bytes: u64, backups: u32) -> UnitLog {
        if let Some(log) = self.open.get(&path) {
            log.set_limits(max_bytes, backups);
            return UnitLog::Open(log.clone());
        }
        match ServiceLog::open(&path, max_bytes, backups) {
            Ok(log) => {
                let log = Rc::new(log);
                self.open.insert(path, log.clone());
                UnitLog::Open(log)
            }
            Err(e) => {
                let reason = e.to_string();
                let log = UnitLog::Failed { path, reason };
                if let Err(message) = log.open() {
                    error!("{message}; the units writing to it cannot start");
                }
                log
            }
        }
    }

    /// Before a spawn: try again to open a log that could not be opened before (fds freed since, the
    /// planted file removed), so the unit's next start may succeed.
    pub fn retry_failed(&mut self, unit: &mut Unit) {
        let (max_bytes, backups) = (unit.spec.log_max_bytes.0, unit.spec.log_backups);
        for log in [&mut unit.stdout, &mut unit.stderr] {
            if let UnitLog::Failed { path, .. } = log {
                *log = self.get(path.clone(), max_bytes, backups);
            }
        }
    }

    /// SIGUSR1: reopen every file (after an outside rotation).
    pub fn reopen(&self) {
        for log in self.open.values() {
            log.reopen();
        }
    }

    /// Drain every pipe into its file, once no unit holds it any more.
    pub async fn close(&mut self) {
        for (_, log) in self.open.drain() {
            if let Ok(log) = Rc::try_unwrap(log) {
                log.close().await;
            }
        }
    }
}

/// All units the config asks for, keyed by unit name.
pub fn units_for_config(config: &Config, logs: &mut LogFiles) -> BTreeMap<String, Unit> {
    let mut out = BTreeMap::new();
    for (name, spec) in &config.service {
        let spec = Rc::new(spec.clone());
        for u in make_units(config, name, spec, UnitKind::Service, logs) {
            out.insert(u.name.clone(), u);
        }
    }
    if let Some(proxy) = &config.proxy {
        let spec = Rc::new(launch::proxy_service_spec(proxy));
        for u in make_units(config, PROXY_UNIT, spec, UnitKind::Proxy, logs) {
            out.insert(u.name.clone(), u);
        }
    }
    out
}

/// The unit `name` of service `service`, made afresh (a rollout's successor is a copy of it).
pub fn remake_unit(config: &Config, from: &Unit, logs: &mut LogFiles) -> Option<Unit> {
    make_units(config, &from.service, from.spec.clone(), from.kind, logs)
        .into_iter()
        .find(|u| u.name == from.name)
}

/// The units a service spec expands to (one per replica).
fn make_units(
    config: &Config,
    name: &str,
    spec: Rc<ServiceSpec>,
    kind: UnitKind,
    logs: &mut LogFiles,
) -> Vec<Unit> {
    let replicas = match kind {
        UnitKind::Proxy => 1,
        UnitKind::Service => spec.replicas.max(1),
    };
    let addresses = replica_listen_addresses(&spec, replicas);
    (0..replicas)
        .map(|i| {
            let unit_name = unit_name(name, replicas, i);
            let (out_default, err_default) = default_log_paths(config, kind, &unit_name);
            let stdout = spec.stdout.clone().unwrap_or(out_default);
            let stderr = spec.stderr.clone().unwrap_or(err_default);
            Unit {
                name: unit_name,
                service: name.to_string(),
                replica: (replicas > 1).then_some(i),
                kind,
                policy: Policy::from_spec(&spec),
                stop_signal: crate::config::values::parse_signal(&spec.stop_signal)
                    .unwrap_or(Signal::SIGTERM),
                machine: Machine::default(),
                want_up: spec.autostart,
                pid: None,
                pgid: None,
                started_at: None,
                listen: addresses.get(i as usize).cloned().unwrap_or_default(),
                stdout: logs.get(stdout, spec.log_max_bytes.0, spec.log_backups),
                stderr: logs.get(stderr, spec.log_max_bytes.0, spec.log_backups),
                spawn_error: None,
                waiting_for: None,
                place: Place::Member,
                draining: false,
                rollout_note: None,
                cgroup: None,
                oom_killed: false,
                health: Default::default(),
                spec: spec.clone(),
            }
        })
        .collect()
}

/// The name of unit `index` of a service with `replicas` units: `app@1`, or `app` alone.
pub fn unit_name(service: &str, replicas: u32, index: u32) -> String {
    if replicas > 1 {
        format!("{service}@{index}")
    } else {
        service.to_string()
    }
}

/// Each replica's addresses, one per `listen` entry, in order.
fn replica_listen_addresses(spec: &ServiceSpec, replicas: u32) -> Vec<Vec<String>> {
    let lists: Vec<Vec<String>> = spec
        .listen
        .iter()
        .flat_map(|l| l.to_vec())
        .map(|a| sockets::replica_addresses(&a, replicas))
        .collect();
    (0..replicas as usize)
        .map(|i| lists.iter().filter_map(|l| l.get(i).cloned()).collect())
        .collect()
}

/// `<logs_dir>/<unit>.out.log` and `.err.log`; the proxy's stdout is the access log.
fn default_log_paths(config: &Config, kind: UnitKind, unit: &str) -> (PathBuf, PathBuf) {
    let logs_dir = &config.init.logs_dir;
    match kind {
        UnitKind::Proxy => {
            let access = config
                .proxy
                .as_ref()
                .and_then(|p| p.access_log.clone())
                .unwrap_or_else(|| logs_dir.join("access.log"));
            (access, logs_dir.join("proxy.err.log"))
        }
        UnitKind::Service => (
            logs_dir.join(format!("{unit}.out.log")),
            logs_dir.join(format!("{unit}.err.log")),
        ),
    }
}
