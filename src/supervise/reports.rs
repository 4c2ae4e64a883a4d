//! What processes report about themselves, applied to the unit table: probe results and notify
//! messages (READY=1, WATCHDOG=1, MAINPID=...). A unit that has said it is ready by every signal it has
//! gets the machine event `Ready`; one a probe finds broken gets `HealthFailed`.
#![forbid(unsafe_code)]

use std::time::Instant;

use nix::unistd::Pid;
use tracing::{debug, info, warn};

use super::health::{self, ProbeChannels, ProbeOutcome};
use super::notify::{self, Notification};
use super::probes::{ProbeKind, ProbeResult};
use super::state::{Event, State};
use super::table::Table;
use super::timers::Due;

pub fn probe_result(table: &mut Table<'_>, channels: &ProbeChannels, mut result: ProbeResult) {
    // By pid: a surge successor's probes keep reporting under its `.next` name after it is renamed.
    if let Some(name) = table.pids.get(&Pid::from_raw(result.generation)) {
        result.unit = name.clone();
    }
    let name = result.unit.clone();
    let Some(unit) = table.units.get_mut(&name) else {
        return;
    };
    if unit.pid.map(Pid::as_raw) != Some(result.generation) {
        return; // a result about a process that is gone
    }
    match health::on_probe_result(unit, result) {
        ProbeOutcome::Nothing => {}
        ProbeOutcome::StartReadiness => health::start_probes(unit, ProbeKind::Readiness, channels),
        ProbeOutcome::Restart(reason) => {
            unit.want_up = true;
            table.raise(&name, Event::HealthFailed { reason });
        }
    }
    ready_when_signalled(table, &name);
}

pub fn notification(table: &mut Table<'_>, channels: &ProbeChannels, message: Notification) {
    let Some(name) = health::sender_unit(table.units, message.pid) else {
        debug!(
            "notify message from pid {} that is no service's: ignored",
            message.pid
        );
        return;
    };
    let armed = table.timers.is_armed(&Due::Watchdog(name.clone()));
    let Some(unit) = table.units.get_mut(&name) else {
        return;
    };
    let outcome = health::on_notification(unit, &message, armed);
    if let Some(watchdog) = outcome.watchdog {
        let at = watchdog.map(|w| Instant::now() + w);
        table.timers.set(Due::Watchdog(name.clone()), at);
    }
    if let Some(new) = outcome.main_pid {
        adopt_main_pid(table, &name, &message, new);
    }
    if let (Some(first), Some(unit)) = (outcome.start_probes, table.units.get_mut(&name)) {
        health::start_probes(unit, first, channels);
    }
    ready_when_signalled(table, &name);
}

/// A starting unit that has said it is ready by every signal it has has started successfully, however
/// soon it dies afterwards (it does not count towards a crash loop).
fn ready_when_signalled(table: &mut Table<'_>, name: &str) {
    let ready = table.units.get(name).is_some_and(|u| {
        u.machine.state == State::Starting && u.pid.is_some() && u.signals_ready()
    });
    if ready {
        table.raise(name, Event::Ready);
    }
}

/// MAINPID= from a unit's main process: a forking server's launcher, or `stackinit fork-from`.
fn adopt_main_pid(table: &mut Table<'_>, name: &str, message: &Notification, new: i32) {
    if let Some(why) = refusal(table, name, message.uid, new) {
        warn!("{name}: MAINPID={new} refused: {why}");
        return;
    }
    let old = message.pid;
    info!("{name}: main pid is now {new} (MAINPID, was {old})");
    table.pids.remove(&Pid::from_raw(old));
    let pids = &table.pids;
    let group = health::own_group(new, |g| pids.keys().any(|p| p.as_raw() == g));
    table.pids.insert(Pid::from_raw(new), name.to_string());
    if let Some(unit) = table.units.get_mut(name) {
        unit.pid = Some(Pid::from_raw(new));
        unit.pgid = group.map(Pid::from_raw);
    }
}

/// Why `new` may not become `name`'s main pid, if it may not. It must be a child of stackinit (so the
/// one reaper sees it end), run as the sender's user, and belong to no other unit, as its process or in
/// its process group: one service never hands itself another's process.
fn refusal(table: &Table<'_>, name: &str, sender_uid: u32, new: i32) -> Option<String> {
    if new <= 1 || notify::parent_of(new) != Some(std::process::id() as i32) {
        return Some("not a child of stackinit".into());
    }
    if notify::uid_of(new) != Some(sender_uid) {
        return Some(format!(
            "not a process of the sender's user (uid {sender_uid})"
        ));
    }
    if let Some(owner) = table.pids.get(&Pid::from_raw(new)).filter(|o| *o != name) {
        return Some(format!("it is {owner}'s process"));
    }
    let group = notify::process_group_of(new).filter(|g| *g != new)?;
    let owner = table
        .units
        .values()
        .find(|u| u.name != name && u.pid.is_some() && u.pgid.map(Pid::as_raw) == Some(group))?;
    Some(format!("it is in {}'s process group", owner.name))
}
