//! `stackinit diff` and `reload --dry-run`: the reload plan (`reload::plan_with`) for the new config,
//! told service by service, with nothing carried out. The new units are only described (name, whether
//! they start, whether they are replicas), never made, so a dry run opens no log file and binds nothing.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::Path;

use super::build::{unit_name, PROXY_UNIT};
use super::reload::{self, Fate, Fresh, Then};
use super::unit::Unit;
use crate::api::{ApiError, DiffAction, DiffReply, DiffRequest, ProxyDiff, ServiceDiff, UnitDiff};
use crate::config::{diff, Config};

/// The config a reload would apply: `text` (named `name` in errors) if given, else the file the stack
/// was started with, else the built-in demo. A bad config is a 400 with every error.
pub fn new_config(path: Option<&Path>, text: Option<(&str, &str)>) -> Result<Config, ApiError> {
    let parsed = match (text, path) {
        (Some((name, text)), _) => crate::config::parse(Path::new(name), text),
        (None, Some(path)) => crate::config::load(path),
        (None, None) => {
            crate::config::parse(Path::new("<built-in demo>"), &crate::config::demo_text())
        }
    };
    parsed.map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        ApiError::bad_request(lines.join("\n"))
    })
}

/// The supervisor's answer to a dry run: the running config and units against the config file at
/// `path` (or `source`'s text). Changes nothing.
pub fn answer(
    config: &Config,
    path: Option<&Path>,
    units: &BTreeMap<String, Unit>,
    shutting_down: bool,
    source: Option<DiffRequest>,
) -> Result<DiffReply, ApiError> {
    if shutting_down {
        return Err(ApiError::conflict("shutting down"));
    }
    let text = source
        .as_ref()
        .map(|s| (s.path.as_deref().unwrap_or("<diff>"), s.config.as_str()));
    let new = new_config(path, text)?;
    Ok(describe(config, &new, units))
}

/// Every unit `config` asks for: its service, and what the plan needs of it.
fn fresh_units(config: &Config) -> BTreeMap<String, (String, Fresh)> {
    let mut out = BTreeMap::new();
    for (service, spec) in &config.service {
        let replicas = spec.replicas.max(1);
        for i in 0..replicas {
            let fresh = Fresh {
                want_up: spec.autostart,
                replicated: replicas > 1,
            };
            out.insert(unit_name(service, replicas, i), (service.clone(), fresh));
        }
    }
    if config.proxy.is_some() {
        let fresh = Fresh {
            want_up: true,
            replicated: false,
        };
        out.insert(PROXY_UNIT.to_string(), (PROXY_UNIT.to_string(), fresh));
    }
    out
}

/// What happens to a running unit under its fate.
fn unit_action(fate: Fate, fresh: Option<&Fresh>) -> DiffAction {
    match (fate, fresh) {
        (Fate::Keep, _) => DiffAction::Unchanged,
        (Fate::Replace, Some(f)) if f.want_up => DiffAction::Start,
        (Fate::Replace, Some(_)) => DiffAction::Unchanged,
        (Fate::Replace, None) => DiffAction::Remove,
        (Fate::TakeOver(Then::Stop) | Fate::Retire, _) => DiffAction::Stop,
        (Fate::TakeOver(Then::Roll), _) => DiffAction::RollingRestart,
        (Fate::TakeOver(Then::Restart), _) => DiffAction::Restart,
    }
}

/// The plan for `new` against the running `old` and `units`, described.
pub fn describe(old: &Config, new: &Config, units: &BTreeMap<String, Unit>) -> DiffReply {
    let fresh = fresh_units(new);
    let view: BTreeMap<String, Fresh> = fresh.iter().map(|(n, (_, f))| (n.clone(), *f)).collect();
    let plan = reload::plan_with(old, new, units, &view);
    let mut by_service: BTreeMap<String, Vec<UnitDiff>> = BTreeMap::new();
    for (name, fate) in &plan.fates {
        let service = units
            .get(name)
            .map_or_else(|| name.clone(), |u| u.service.clone());
        let action = unit_action(*fate, view.get(name));
        by_service.entry(service).or_default().push(UnitDiff {
            name: name.clone(),
            action,
        });
    }
    for (name, (service, f)) in &fresh {
        if !units.contains_key(name) {
            let action = if f.want_up {
                DiffAction::Start
            } else {
                DiffAction::Unchanged
            };
            by_service
                .entry(service.clone())
                .or_default()
                .push(UnitDiff {
                    name: name.clone(),
                    action,
                });
        }
    }
    let proxy_units = by_service.remove(PROXY_UNIT).unwrap_or_default();
    let services = old
        .service
        .keys()
        .chain(new.service.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|name| service_diff(name, old, new, by_service.remove(name).unwrap_or_default()))
        .collect();
    DiffReply {
        services,
        proxy: proxy_diff(old, new, &proxy_units),
        init_changed: plan.init_changed,
    }
}

fn service_diff(name: &str, old: &Config, new: &Config, mut units: Vec<UnitDiff>) -> ServiceDiff {
    units.sort_by(|a, b| a.name.cmp(&b.name));
    let (config, keys) = match (old.service.get(name), new.service.get(name)) {
        (None, _) => ("added", Vec::new()),
        (_, None) => ("removed", Vec::new()),
        (Some(a), Some(b)) if a != b => ("changed", diff::changed_keys(a, b)),
        _ => ("unchanged", Vec::new()),
    };
    ServiceDiff {
        name: name.to_string(),
        config: config.to_string(),
        action: units.iter().map(|u| u.action).max().unwrap_or_default(),
        keys,
        units,
    }
}

fn proxy_diff(old: &Config, new: &Config, units: &[UnitDiff]) -> ProxyDiff {
    let action = units.iter().map(|u| u.action).max().unwrap_or_default();
    match (&old.proxy, &new.proxy) {
        (Some(a), Some(b)) => {
            let changes = diff::proxy_changes(a, b);
            let action = match action {
                DiffAction::Unchanged if !changes.is_empty() => DiffAction::Reconfigure,
                other => other,
            };
            ProxyDiff { action, changes }
        }
        (None, Some(_)) => ProxyDiff {
            action,
            changes: vec!["[proxy] added".into()],
        },
        (Some(_), None) => ProxyDiff {
            action,
            changes: vec!["[proxy] removed".into()],
        },
        (None, None) => ProxyDiff::default(),
    }
}
