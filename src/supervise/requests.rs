//! Answers to the control API that only read the unit table: which units a name selects, their status,
//! where their logs are, and whether a waited-for restart is over.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::Instant;

use super::cgroups;
use super::handle::{LogSource, LogStream, Reply};
use super::rollouts::{RolloutEnd, Rollouts};
use super::unit::{Place, Unit};
use crate::api::{ActionReply, ApiError, ServiceStatus, State};

type Units = BTreeMap<String, Unit>;

/// The units `name` selects: a unit by its own name, or every replica of a service (a rollout's
/// successor is not selected by its service's name: it is not yet one of its replicas).
pub fn select(units: &Units, name: &str) -> Result<Vec<String>, ApiError> {
    let names: Vec<String> = units
        .values()
        .filter(|u| u.name == name || (u.service == name && u.place != Place::Successor))
        .map(|u| u.name.clone())
        .collect();
    if names.is_empty() {
        let mut known: Vec<&str> = units.values().map(|u| u.service.as_str()).collect();
        known.dedup();
        return Err(ApiError::not_found(format!(
            "no such service: {name} (known: {})",
            known.join(", ")
        )));
    }
    Ok(names)
}

/// Every unit's status, or those `name` selects, with what each running process uses.
pub fn statuses(units: &Units, name: Option<&str>) -> Result<Vec<ServiceStatus>, ApiError> {
    let now = Instant::now();
    let with_usage = |u: &Unit| {
        let mut status = u.status(now);
        status.usage = u
            .cgroup
            .as_deref()
            .filter(|_| u.pid.is_some())
            .map(cgroups::usage);
        status
    };
    match name {
        None => Ok(units.values().map(with_usage).collect()),
        Some(n) => Ok(select(units, n)?
            .iter()
            .filter_map(|n| units.get(n))
            .map(with_usage)
            .collect()),
    }
}

/// The log of the unit `name` selects. Replicas that write separate files must be named one by one.
pub fn log_source(units: &Units, name: &str, stream: LogStream) -> Result<LogSource, ApiError> {
    let names = select(units, name)?;
    let selected: Vec<&Unit> = names.iter().filter_map(|n| units.get(n)).collect();
    let unit = selected
        .first()
        .ok_or_else(|| ApiError::not_found(name.to_string()))?;
    if selected.len() > 1 && unit.stdout.path() != selected[1].stdout.path() {
        return Err(ApiError::bad_request(format!(
            "{name} has {} replicas with separate logs; name one: {}",
            names.len(),
            names.join(", ")
        )));
    }
    let log = match stream {
        LogStream::Stdout => &unit.stdout,
        LogStream::Stderr => &unit.stderr,
    };
    let open = log.open().map_err(ApiError::conflict)?;
    Ok(LogSource {
        path: log.path().to_path_buf(),
        lines: open.subscribe(),
    })
}

/// The `restart --wait`s whose restart is not over yet.
#[derive(Default)]
pub struct RestartWaiters(Vec<RestartWaiter>);

impl RestartWaiters {
    pub fn wait(&mut self, name: String, rollout: bool, reply: Reply<ActionReply>) {
        self.0.push(RestartWaiter {
            name,
            rollout,
            reply,
        });
    }

    /// Answer those whose restart is over; one whose client went away is dropped.
    pub fn answer(&mut self, units: &BTreeMap<String, Unit>, rollouts: &Rollouts) {
        for waiter in std::mem::take(&mut self.0) {
            if waiter.reply.is_closed() {
                continue;
            }
            match restart_outcome(&waiter, units, rollouts) {
                Some(result) => {
                    let _ = waiter.reply.send(result);
                }
                None => self.0.push(waiter),
            }
        }
    }
}

/// A `restart --wait` whose restart is not over yet.
struct RestartWaiter {
    /// The service (a rollout) or the unit restarted.
    pub name: String,
    pub rollout: bool,
    pub reply: Reply<ActionReply>,
}

/// Whether `waiter`'s restart is over: every replica replaced and ready, or one unit ready again (Ok);
/// the rollout halted or called off, or the unit given up or stopped (Err). None while it goes on.
fn restart_outcome(
    waiter: &RestartWaiter,
    units: &BTreeMap<String, Unit>,
    rollouts: &Rollouts,
) -> Option<Result<ActionReply, ApiError>> {
    let name = &waiter.name;
    let done = |message: String| Some(Ok(ActionReply { ok: true, message }));
    let failed = |message: String| Some(Err(ApiError::conflict(message)));
    if waiter.rollout {
        return match rollouts.ended(name) {
            _ if rollouts.is_running(name) => None,
            Some(RolloutEnd::Done) => done(format!("{name}: every replica replaced and ready")),
            Some(RolloutEnd::Halted(reason)) => failed(format!("{name}: {reason}")),
            Some(RolloutEnd::CalledOff) | None => {
                failed(format!("{name}: the rolling restart was called off"))
            }
        };
    }
    let Some(unit) = units.get(name) else {
        return failed(format!("{name}: no longer in the config"));
    };
    let why = || unit.status(Instant::now()).reason.unwrap_or_default();
    match unit.machine.state {
        _ if unit.is_ready() => done(format!("{name}: restarted and ready")),
        State::Fatal => failed(format!("{name}: gave up: {}", why())),
        State::Backoff if why().starts_with("crash loop") => failed(format!("{name}: {}", why())),
        State::Stopped | State::Exited if !unit.want_up => failed(format!("{name}: stopped")),
        _ => None,
    }
}

/// The running config's user-data overlay, as `status` and the dashboard show it.
pub fn user_data(config: &crate::config::Config) -> Option<crate::api::UserDataStatus> {
    config
        .user_data
        .as_ref()
        .map(|u| crate::api::UserDataStatus {
            path: u.path.clone(),
            applied: u.errors.is_empty(),
            errors: u.errors.clone(),
        })
}
