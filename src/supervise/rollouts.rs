//! Carrying out rolling restarts: the running `Rollout`s, and what their actions do to the unit table.
//! A rollout decides (`rollout.rs`); this module applies its decisions to the units, the pid table and
//! the timers, and queues the machine events they imply for the loop to dispatch.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::Instant;

use tracing::{info, warn};

use super::build;
use super::rollout::{Phase, Rollout, RolloutAction, RolloutEvent};
use super::rollout_view::UnitsView;
use super::state::Event;
use super::table::Table;
use super::timers::Due;
use super::unit::Place;

/// How a service's last rolling restart ended, for whoever waits on it (`restart --wait`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutEnd {
    Done,
    Halted(String),
    CalledOff,
}

#[derive(Default)]
pub struct Rollouts {
    running: Vec<Rollout>,
    ended: HashMap<String, RolloutEnd>,
}

impl Rollouts {
    /// The replicas being replaced now: they do not count for `/healthz` meanwhile.
    pub fn current_replicas(&self) -> Vec<&str> {
        self.running.iter().filter_map(|r| r.current()).collect()
    }

    pub fn is_running(&self, service: &str) -> bool {
        self.running.iter().any(|r| r.service == service)
    }

    /// How the service's last rollout ended, once it has.
    pub fn ended(&self, service: &str) -> Option<&RolloutEnd> {
        self.ended.get(service)
    }

    /// Start a rolling restart of `replicas`, calling off the service's running one first.
    pub fn start(&mut self, service: &str, replicas: Vec<String>, table: &mut Table<'_>) {
        self.cancel(service, table);
        self.ended.remove(service);
        let mut ready_timeout = None;
        for name in &replicas {
            if let Some(u) = table.units.get_mut(name) {
                // A halted rollout's note would otherwise outlive the next attempt.
                u.rollout_note = None;
                ready_timeout.get_or_insert(u.spec.ready_timeout.0);
            }
        }
        let timeout = ready_timeout.unwrap_or_default();
        self.running.push(Rollout::new(service, replicas, timeout));
    }

    /// Call off a service's rollout: see `Rollout::on(Cancel)`.
    pub fn cancel(&mut self, service: &str, table: &mut Table<'_>) {
        let (cancelled, kept) = std::mem::take(&mut self.running)
            .into_iter()
            .partition::<Vec<Rollout>, _>(|r| r.service == service);
        self.running = kept;
        for mut rollout in cancelled {
            self.ended
                .insert(service.to_string(), RolloutEnd::CalledOff);
            for action in rollout.on(RolloutEvent::Cancel, &view(table)) {
                carry_out(service, action, table);
            }
            table.timers.cancel(&Due::Rollout(service.to_string()));
        }
    }

    pub fn cancel_all(&mut self, table: &mut Table<'_>) {
        let services: Vec<String> = self.running.iter().map(|r| r.service.clone()).collect();
        for service in services {
            self.cancel(&service, table);
        }
    }

    /// Move every rollout on as far as the units allow; true if the routing table changed.
    pub fn advance(&mut self, now: Instant, table: &mut Table<'_>) -> bool {
        let mut routing_changed = false;
        for rollout in &mut self.running {
            // Each call decides on the units as the previous call's actions left them.
            for _ in 0..64 {
                let actions = rollout.on(RolloutEvent::Tick(now), &view(table));
                if actions.is_empty() {
                    break;
                }
                for action in actions {
                    routing_changed |= carry_out(&rollout.service, action, table);
                }
            }
            let deadline = rollout.deadline();
            table
                .timers
                .set(Due::Rollout(rollout.service.clone()), deadline);
        }
        let (over, running): (Vec<Rollout>, Vec<Rollout>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|r| r.is_over());
        self.running = running;
        for rollout in over {
            let end = match rollout.phase {
                Phase::Halted { reason } => RolloutEnd::Halted(reason),
                _ => RolloutEnd::Done,
            };
            info!("rollout of {} ended: {end:?}", rollout.service);
            self.ended.insert(rollout.service, end);
        }
        routing_changed
    }
}

fn view<'t>(table: &'t Table<'_>) -> UnitsView<'t> {
    UnitsView {
        units: table.units,
        listeners: table.listeners,
        config: table.config,
    }
}

/// Apply one action; true if the routing table (unit names and addresses) changed.
fn carry_out(service: &str, action: RolloutAction, table: &mut Table<'_>) -> bool {
    match action {
        RolloutAction::StartSuccessor {
            replica,
            successor,
            addresses,
        } => return start_successor(&replica, successor, addresses, table),
        RolloutAction::Drain { replica } => {
            info!("rollout of {service}: draining {replica}");
            set_draining(table, &replica, true);
        }
        RolloutAction::Undrain { replica } => set_draining(table, &replica, false),
        RolloutAction::Retire { name } => retire(table, &name),
        RolloutAction::Restart { replica } => {
            set_draining(table, &replica, false);
            if let Some(u) = table.units.get_mut(&replica) {
                u.want_up = true;
                table.events.push_back((replica, Event::Restart));
            }
        }
        RolloutAction::Promote { successor, replica } => {
            promote(table, &successor, &replica);
            info!("rollout of {service}: {replica} replaced and ready");
            return true;
        }
        RolloutAction::Note { replica, note } => {
            warn!("{replica}: {note}");
            if let Some(u) = table.units.get_mut(&replica) {
                u.rollout_note = Some(note);
            }
        }
    }
    false
}

fn set_draining(table: &mut Table<'_>, name: &str, draining: bool) {
    if let Some(u) = table.units.get_mut(name) {
        u.draining = draining;
    }
}

/// Stop a unit for good; it leaves the table once it is down.
pub fn retire(table: &mut Table<'_>, name: &str) {
    if let Some(u) = table.units.get_mut(name) {
        u.want_up = false;
        u.place = Place::Retiring;
        u.draining = false;
        table.events.push_back((name.to_string(), Event::Stop));
    }
}

/// `successor`: a copy of `replica` (same spec, replica index and logs) on `addresses`.
fn start_successor(
    replica: &str,
    successor: String,
    addresses: Vec<String>,
    table: &mut Table<'_>,
) -> bool {
    let Some(from) = table.units.get(replica) else {
        return false;
    };
    let Some(mut unit) = build::remake_unit(table.config, from, table.logs) else {
        return false;
    };
    info!(
        "rolling {replica}: starting {successor} beside it on {}",
        addresses.join(", ")
    );
    unit.name = successor.clone();
    unit.listen = addresses;
    unit.place = Place::Successor;
    unit.want_up = true;
    table.units.insert(successor.clone(), unit);
    table.events.push_back((successor, Event::Start));
    true
}

/// The old replica is gone: the successor takes its name (and keeps its socket).
fn promote(table: &mut Table<'_>, successor: &str, replica: &str) {
    table.units.remove(replica);
    table.timers.forget_unit(replica);
    if let Some(mut unit) = table.units.remove(successor) {
        unit.name = replica.to_string();
        unit.place = Place::Member;
        if let Some(pid) = unit.pid {
            table.pids.insert(pid, replica.to_string());
        }
        table.timers.rename_unit(successor, replica);
        table.units.insert(replica.to_string(), unit);
    }
}
