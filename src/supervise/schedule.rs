//! Dependency order as pure functions of the unit table: what may start now (its `after` services are
//! ready), and, during shutdown, what may stop now (everything that depends on it is down).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use super::unit::{Unit, UnitKind};
use crate::api::State;
use crate::config::Config;

type Units = BTreeMap<String, Unit>;

/// The `after` services of `unit` that are not ready yet (every member replica must be), or None.
pub fn deps_waiting(units: &Units, unit: &Unit) -> Option<String> {
    let waiting: Vec<&str> = unit
        .spec
        .after
        .iter()
        .filter(|dep| {
            let mut replicas = units
                .values()
                .filter(|u| &u.service == *dep && u.is_member())
                .peekable();
            replicas.peek().is_none() || !replicas.all(|u| u.is_ready())
        })
        .map(|s| s.as_str())
        .collect();
    (!waiting.is_empty()).then(|| waiting.join(", "))
}

/// Units that want to be up and are stopped, each with what it still waits for (None: start it now).
pub fn start_candidates(units: &Units) -> Vec<(String, Option<String>)> {
    units
        .values()
        .filter(|u| u.want_up && u.machine.state == State::Stopped)
        .map(|u| (u.name.clone(), deps_waiting(units, u)))
        .collect()
}

/// Units that depend on `service`: its `after` users, and the proxy when it routes to it.
fn dependents_of<'u>(
    config: &Config,
    units: &'u Units,
    service: &'u str,
) -> impl Iterator<Item = &'u Unit> {
    let upstream_of_proxy = config.proxy.as_ref().is_some_and(|p| {
        p.server
            .iter()
            .flat_map(|s| s.location.iter())
            .any(|l| l.upstream.as_deref() == Some(service))
    });
    units.values().filter(move |u| {
        u.service != service
            && (u.spec.after.iter().any(|a| a == service)
                || (u.kind == UnitKind::Proxy && upstream_of_proxy))
    })
}

/// During shutdown: the units to stop now, those whose dependents are all down (reverse dependency
/// order; the proxy counts as depending on the services it routes to).
pub fn shutdown_stops(config: &Config, units: &Units) -> Vec<String> {
    units
        .values()
        .filter(|u| !u.is_down() || u.machine.state == State::Backoff)
        .filter(|u| u.machine.state != State::Stopping)
        .filter(|u| dependents_of(config, units, &u.service).all(|d| d.is_down()))
        .map(|u| u.name.clone())
        .collect()
}

/// Units not down yet (a process, or a start on its way), by name: what a shutdown deadline kills.
pub fn still_up(units: &Units) -> Vec<String> {
    units
        .values()
        .filter(|u| !u.is_down())
        .map(|u| u.name.clone())
        .collect()
}
