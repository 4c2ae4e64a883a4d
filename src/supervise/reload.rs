//! Reload as a pure plan: given the running config and units and the new config and its fresh units,
//! what happens to each running unit. The supervisor only carries the plan out.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};

use super::build::PROXY_UNIT;
use super::unit::{Place, Unit, UnitKind};
use crate::api::ReloadReply;
use crate::config::{Config, ProxySpec};

/// What a reload does to one running unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Its service did not change: it stays as it is.
    Keep,
    /// It is down: the new config's unit of that name (if any) simply takes its place.
    Replace,
    /// It runs under a changed spec: the new unit takes over its process, which is then restarted
    /// (`Then`), one replica at a time for a replicated service.
    TakeOver(Then),
    /// It runs but the new config has no such unit: stopped for good.
    Retire,
}

/// How a taken-over process is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// The new spec does not start it (`autostart = false`): stop it.
    Stop,
    /// A replica: part of its service's rolling restart.
    Roll,
    Restart,
}

#[derive(Debug, Default, PartialEq)]
pub struct ReloadPlan {
    pub reply: ReloadReply,
    /// `[init]` changed: that takes effect at the next boot only.
    pub init_changed: bool,
    pub fates: BTreeMap<String, Fate>,
}

impl ReloadPlan {
    /// The replicas each service restarts one by one, in name order.
    pub fn rollouts(&self, units: &BTreeMap<String, Unit>) -> BTreeMap<String, Vec<String>> {
        let mut rolling: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, fate) in &self.fates {
            if let (Fate::TakeOver(Then::Roll), Some(unit)) = (fate, units.get(name)) {
                rolling
                    .entry(unit.service.clone())
                    .or_default()
                    .push(name.clone());
            }
        }
        rolling
    }
}

/// Which services were added, removed, changed or left as they were (the proxy counts as changed when
/// its section did).
fn compare(old: &Config, new: &Config) -> ReloadReply {
    let names: BTreeSet<&String> = old.service.keys().chain(new.service.keys()).collect();
    let mut reply = ReloadReply::default();
    for name in names {
        let list = match (old.service.get(name), new.service.get(name)) {
            (Some(_), None) => &mut reply.removed,
            (None, Some(_)) => &mut reply.added,
            (Some(a), Some(b)) if a != b => &mut reply.changed,
            _ => &mut reply.unchanged,
        };
        list.push(name.clone());
    }
    if old.proxy != new.proxy {
        reply.changed.push(PROXY_UNIT.into());
    }
    reply
}

/// A new proxy process is needed only when what it was started with changed: its sockets, its user or its
/// worker threads. Anything else reaches the running proxy over its state channel.
fn proxy_restart_needed(old: &Option<ProxySpec>, new: &Option<ProxySpec>) -> bool {
    let started_with = |p: &Option<ProxySpec>| {
        p.as_ref().map(|p| {
            (
                p.listen.clone(),
                p.tls.as_ref().map(|t| t.listen.clone()),
                p.user.clone(),
                p.workers,
            )
        })
    };
    started_with(old) != started_with(new)
}

/// The new unit table: the fresh units, with the running ones the plan keeps, takes over or retires.
/// Also returns the names of units dropped for good, whose timers must go.
pub fn apply(
    plan: &ReloadPlan,
    units: BTreeMap<String, Unit>,
    mut fresh: BTreeMap<String, Unit>,
) -> (BTreeMap<String, Unit>, Vec<String>) {
    let mut dropped = Vec::new();
    for (name, mut unit) in units {
        match plan.fates.get(&name).copied().unwrap_or(Fate::Replace) {
            Fate::Keep => {
                fresh.insert(name, unit);
            }
            Fate::Replace => dropped.push(name),
            Fate::TakeOver(_) => {
                if let Some(new) = fresh.get_mut(&name) {
                    new.take_over(&mut unit);
                }
            }
            Fate::Retire => {
                unit.want_up = false;
                unit.place = Place::Retiring;
                fresh.insert(name, unit);
            }
        }
    }
    (fresh, dropped)
}

/// "1 added, 0 removed, 2 changed", for the log.
pub fn summary(reply: &ReloadReply) -> String {
    format!(
        "{} added, {} removed, {} changed",
        reply.added.len(),
        reply.removed.len(),
        reply.changed.len()
    )
}

/// What the plan needs to know of a unit the new config asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fresh {
    pub want_up: bool,
    pub replicated: bool,
}

impl Fresh {
    pub fn of(unit: &Unit) -> Fresh {
        Fresh {
            want_up: unit.want_up,
            replicated: unit.replica.is_some(),
        }
    }
}

/// The plan for every running unit. `fresh` are the units the new config asks for.
pub fn plan(
    old: &Config,
    new: &Config,
    units: &BTreeMap<String, Unit>,
    fresh: &BTreeMap<String, Unit>,
) -> ReloadPlan {
    let fresh: BTreeMap<String, Fresh> = fresh
        .iter()
        .map(|(name, unit)| (name.clone(), Fresh::of(unit)))
        .collect();
    plan_with(old, new, units, &fresh)
}

/// `plan` from what the new units would be, without making them (a dry run opens no log files).
pub fn plan_with(
    old: &Config,
    new: &Config,
    units: &BTreeMap<String, Unit>,
    fresh: &BTreeMap<String, Fresh>,
) -> ReloadPlan {
    let reply = compare(old, new);
    let proxy_restart = proxy_restart_needed(&old.proxy, &new.proxy);
    let fates = units
        .values()
        .map(|unit| {
            // A service with secrets is started afresh by every reload, which re-reads them.
            let rereads = new
                .service
                .get(&unit.service)
                .is_some_and(|s| !s.secrets.is_empty());
            let changed = (reply.changed.contains(&unit.service) || rereads)
                && unit.kind == UnitKind::Service;
            let keep = match unit.kind {
                UnitKind::Proxy => new.proxy.is_some() && !proxy_restart,
                // A successor is no config entry of its own: it lives while its service is unchanged.
                UnitKind::Service => {
                    let successor_kept =
                        unit.place == Place::Successor && new.service.contains_key(&unit.service);
                    (fresh.contains_key(&unit.name) || successor_kept) && !changed
                }
            };
            let fate = match fresh.get(&unit.name) {
                _ if keep => Fate::Keep,
                _ if unit.is_down() => Fate::Replace,
                Some(new_unit) if !new_unit.want_up => Fate::TakeOver(Then::Stop),
                Some(new_unit) if new_unit.replicated => Fate::TakeOver(Then::Roll),
                Some(_) => Fate::TakeOver(Then::Restart),
                None => Fate::Retire,
            };
            (unit.name.clone(), fate)
        })
        .collect();
    ReloadPlan {
        reply,
        init_changed: boot_keys_changed(&old.init, &new.init),
        fates,
    }
}

/// Whether `[init]` changed in a key read only at boot. The shutdown's drain and deadline are read when the
/// shutdown begins, so a reload (a user-data overlay's, say) changes them at once.
fn boot_keys_changed(old: &crate::config::InitSpec, new: &crate::config::InitSpec) -> bool {
    let mut new = new.clone();
    new.shutdown_drain = old.shutdown_drain;
    new.shutdown_timeout = old.shutdown_timeout;
    *old != new
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::build::{units_for_config, LogFiles};
    use nix::unistd::Pid;

    fn config(text: &str) -> Config {
        let dir = std::env::temp_dir().display().to_string();
        let text = format!("[init]\nlogs_dir = \"{dir}/stackinit-reload-test-logs\"\n{text}");
        crate::config::parse(std::path::Path::new("t.toml"), &text).expect("valid config")
    }

    /// Log pipes are pumped by tasks on the supervisor's runtime: units exist only inside one.
    fn on_runtime(test: impl FnOnce()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tokio::task::LocalSet::new().block_on(&runtime, async { test() });
    }

    fn running(mut units: BTreeMap<String, Unit>) -> BTreeMap<String, Unit> {
        for (i, u) in units.values_mut().enumerate() {
            u.pid = Some(Pid::from_raw(1000 + i as i32));
        }
        units
    }

    const TWO: &str =
        "[service.web]\ncommand = [\"w\"]\nreplicas = 2\n[service.job]\ncommand = [\"j\"]\n";

    #[test]
    fn the_shutdown_keys_apply_on_reload_and_the_rest_of_init_at_boot() {
        let old = config(TWO);
        let mut new = old.clone();
        new.init.shutdown_drain = crate::config::Secs::from_secs(25);
        new.init.shutdown_timeout = crate::config::Secs::from_secs(120);
        assert!(!boot_keys_changed(&old.init, &new.init));
        new.init.log_level = "debug".into();
        assert!(boot_keys_changed(&old.init, &new.init));
    }

    #[test]
    fn an_unchanged_service_with_secrets_rolls_to_reread_them() {
        on_runtime(|| {
            let mut logs = LogFiles::default();
            let text = TWO.replace(
                "replicas = 2\n",
                "replicas = 2\nsecrets = { KEY = \"ssm:/app/key\" }\n",
            );
            let (old, new) = (config(&text), config(&text));
            let units = running(units_for_config(&old, &mut logs));
            let fresh = units_for_config(&new, &mut logs);
            let plan = plan(&old, &new, &units, &fresh);
            assert_eq!(plan.fates["web@0"], Fate::TakeOver(Then::Roll));
            assert_eq!(plan.fates["job"], Fate::Keep);
        });
    }

    #[test]
    fn a_new_workers_count_restarts_the_proxy_other_limits_do_not() {
        let proxy =
            |extra: &str| config(&format!("[proxy]\nlisten = [\"127.0.0.1:1\"]\n{extra}\n")).proxy;
        assert!(proxy_restart_needed(&proxy(""), &proxy("workers = 3")));
        assert!(proxy_restart_needed(
            &proxy("workers = 2"),
            &proxy("workers = 3")
        ));
        assert!(!proxy_restart_needed(
            &proxy("workers = 2"),
            &proxy("workers = 2")
        ));
        assert!(!proxy_restart_needed(
            &proxy(""),
            &proxy("max_connections = 10")
        ));
    }

    #[test]
    fn a_changed_replicated_service_rolls_and_an_unchanged_one_is_kept() {
        on_runtime(|| {
            let mut logs = LogFiles::default();
            let old = config(TWO);
            let new = config(&TWO.replace("[\"w\"]", "[\"w2\"]"));
            let units = running(units_for_config(&old, &mut logs));
            let fresh = units_for_config(&new, &mut logs);
            let plan = plan(&old, &new, &units, &fresh);
            assert_eq!(plan.reply.changed, vec!["web"]);
            assert_eq!(plan.reply.unchanged, vec!["job"]);
            assert_eq!(plan.fates["job"], Fate::Keep);
            assert_eq!(plan.fates["web@0"], Fate::TakeOver(Then::Roll));
            assert_eq!(
                plan.rollouts(&units)["web"],
                vec!["web@0".to_string(), "web@1".to_string()]
            );
            assert!(!plan.init_changed);
        });
    }

    #[test]
    fn a_removed_service_retires_while_running_and_is_replaced_when_down() {
        on_runtime(|| {
            let mut logs = LogFiles::default();
            let old = config(TWO);
            let new = config("[service.web]\ncommand = [\"w\"]\nreplicas = 2\n");
            let mut units = running(units_for_config(&old, &mut logs));
            let fresh = units_for_config(&new, &mut logs);
            assert_eq!(plan(&old, &new, &units, &fresh).fates["job"], Fate::Retire);
            units.get_mut("job").expect("job").pid = None;
            let plan = plan(&old, &new, &units, &fresh);
            assert_eq!(plan.fates["job"], Fate::Replace);
            assert_eq!(plan.reply.removed, vec!["job"]);
        });
    }

    #[test]
    fn a_single_service_restarts_and_one_no_longer_autostarted_stops() {
        on_runtime(|| {
            let mut logs = LogFiles::default();
            let old = config(TWO);
            let restarted = config(&TWO.replace("[\"j\"]", "[\"j2\"]"));
            let units = running(units_for_config(&old, &mut logs));
            let fresh = units_for_config(&restarted, &mut logs);
            assert_eq!(
                plan(&old, &restarted, &units, &fresh).fates["job"],
                Fate::TakeOver(Then::Restart)
            );
            let stopped = config(&TWO.replace("[\"j\"]\n", "[\"j\"]\nautostart = false\n"));
            let fresh = units_for_config(&stopped, &mut logs);
            assert_eq!(
                plan(&old, &stopped, &units, &fresh).fates["job"],
                Fate::TakeOver(Then::Stop)
            );
        });
    }

    #[test]
    fn a_successor_lives_while_its_service_is_unchanged() {
        on_runtime(|| {
            let mut logs = LogFiles::default();
            let old = config(TWO);
            let mut units = running(units_for_config(&old, &mut logs));
            let mut successor = units_for_config(&old, &mut logs)
                .remove("web@0")
                .expect("web@0");
            successor.name = "web@0.next".into();
            successor.place = Place::Successor;
            successor.pid = Some(Pid::from_raw(2000));
            units.insert(successor.name.clone(), successor);
            let fresh = units_for_config(&old, &mut logs);
            assert_eq!(
                plan(&old, &old, &units, &fresh).fates["web@0.next"],
                Fate::Keep
            );
            let changed = config(&TWO.replace("[\"w\"]", "[\"w2\"]"));
            let fresh = units_for_config(&changed, &mut logs);
            assert_eq!(
                plan(&old, &changed, &units, &fresh).fates["web@0.next"],
                Fate::Retire
            );
        });
    }
}
