//! Answers to the control API that only read the unit table: which units a name selects, their status,
//! and where their logs are.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::Instant;

use super::handle::{LogSource, LogStream};
use super::unit::{Place, Unit};
use crate::api::{ApiError, ServiceStatus};

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

/// Every unit's status, or those `name` selects.
pub fn statuses(units: &Units, name: Option<&str>) -> Result<Vec<ServiceStatus>, ApiError> {
    let now = Instant::now();
    match name {
        None => Ok(units.values().map(|u| u.status(now)).collect()),
        Some(n) => Ok(select(units, n)?
            .iter()
            .filter_map(|n| units.get(n))
            .map(|u| u.status(now))
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
