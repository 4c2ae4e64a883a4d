//! A rolling restart of a replicated service as a pure state machine: `(phase, event, view) -> actions`.
//!
//! One replica at a time. With a free socket (the service binds one more than it has replicas), the new
//! process starts beside the old one as `NAME@N.next`; once it is ready the old replica leaves routing for
//! `DRAIN`, is stopped for good, and when it is down the successor takes its name: capacity never drops.
//! Without a free socket the replica is drained, restarted in place, and must be ready again in time. A
//! process that is not ready by `ready_timeout` halts the rollout with the reason on the replica.
//!
//! No clocks and no syscalls: the time comes in the event, the units through `RolloutView`.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a replica is out of routing before a rolling restart stops it: enough for the proxy to hear
/// it is not ready and stop sending it new requests, so only in-flight ones reach the stopping process.
pub const DRAIN: Duration = Duration::from_millis(300);

/// The suffix of a surge successor's name while the replica it replaces still runs.
pub const SUCCESSOR_SUFFIX: &str = ".next";

/// What the rollout needs to know of one unit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaView {
    pub pid: Option<i32>,
    pub ready: bool,
    /// No process and nothing scheduled (`Unit::is_down`).
    pub down: bool,
    /// What status says about it: its reason, or its state.
    pub why: String,
}

/// The supervisor's units, read-only.
pub trait RolloutView {
    fn replica(&self, name: &str) -> Option<ReplicaView>;
    /// The service's free socket addresses (one per `listen` entry), if it has a spare.
    fn free_addresses(&self, service: &str) -> Option<Vec<String>>;
}

#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// About to take the next pending replica.
    Next,
    /// `successor` starts beside `replica` and must be ready by `deadline`.
    Surging {
        replica: String,
        successor: String,
        deadline: Instant,
    },
    /// `replica` is out of routing until `until`; then it is stopped for good (its successor serves) or,
    /// without a successor, restarted in place.
    Draining {
        replica: String,
        successor: Option<String>,
        old_pid: Option<i32>,
        until: Instant,
    },
    /// The successor serves and the old replica stops; once it is down the successor takes its name.
    Replacing {
        replica: String,
        successor: String,
    },
    /// Restarted in place: a new process (not `old_pid`) must be ready by `deadline`.
    Restarting {
        replica: String,
        old_pid: Option<i32>,
        deadline: Instant,
    },
    Halted {
        reason: String,
    },
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutEvent {
    /// Something changed, or a deadline came: look at the units again.
    Tick(Instant),
    /// The rollout is called off (stop, restart, reload, shutdown).
    Cancel,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutAction {
    /// Start `successor`, a copy of `replica`, on `addresses`.
    StartSuccessor {
        replica: String,
        successor: String,
        addresses: Vec<String>,
    },
    /// Take the replica out of routing; it keeps running.
    Drain { replica: String },
    /// Put it back into routing.
    Undrain { replica: String },
    /// Stop it for good; it leaves the table once it is down.
    Retire { name: String },
    /// Restart it in place.
    Restart { replica: String },
    /// The old replica is down: the successor takes its name.
    Promote { successor: String, replica: String },
    /// Why the rollout halted, for the replica's status.
    Note { replica: String, note: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    pub service: String,
    pending: VecDeque<String>,
    ready_timeout: Duration,
    pub phase: Phase,
}

impl Rollout {
    pub fn new(service: &str, replicas: Vec<String>, ready_timeout: Duration) -> Rollout {
        Rollout {
            service: service.to_string(),
            pending: replicas.into(),
            ready_timeout,
            phase: Phase::Next,
        }
    }

    pub fn is_over(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Halted { .. })
    }

    /// The replica being replaced now, if any: it does not count for `/healthz` meanwhile.
    pub fn current(&self) -> Option<&str> {
        match &self.phase {
            Phase::Surging { replica, .. }
            | Phase::Draining { replica, .. }
            | Phase::Replacing { replica, .. }
            | Phase::Restarting { replica, .. } => Some(replica),
            _ => None,
        }
    }

    /// When the rollout must look again even if nothing else happens.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Surging { deadline, .. } | Phase::Restarting { deadline, .. } => Some(*deadline),
            Phase::Draining { until, .. } => Some(*until),
            _ => None,
        }
    }

    pub fn on(&mut self, event: RolloutEvent, view: &impl RolloutView) -> Vec<RolloutAction> {
        match event {
            RolloutEvent::Cancel => self.cancel(),
            RolloutEvent::Tick(now) => {
                // Steps that only change the phase run on; the first step with actions ends the call,
                // since the next decision must see the units after those actions are carried out.
                for _ in 0..=self.pending.len() + 4 {
                    let before = (self.phase.clone(), self.pending.len());
                    let actions = self.step(now, view);
                    if !actions.is_empty() || (self.phase.clone(), self.pending.len()) == before {
                        return actions;
                    }
                }
                Vec::new()
            }
        }
    }

    fn step(&mut self, now: Instant, view: &impl RolloutView) -> Vec<RolloutAction> {
        match self.phase.clone() {
            Phase::Next => self.take_next(now, view),
            Phase::Surging {
                replica,
                successor,
                deadline,
            } => self.surging(now, view, replica, successor, deadline),
            Phase::Draining {
                replica,
                successor,
                old_pid,
                until,
            } if now >= until => self.drained(replica, successor, old_pid, until),
            Phase::Replacing { replica, successor } => {
                if !view.replica(&replica).is_none_or(|r| r.down) {
                    return vec![];
                }
                self.phase = Phase::Next;
                vec![RolloutAction::Promote { successor, replica }]
            }
            Phase::Restarting {
                replica,
                old_pid,
                deadline,
            } => self.restarting(now, view, replica, old_pid, deadline),
            Phase::Draining { .. } | Phase::Halted { .. } | Phase::Done => vec![],
        }
    }

    fn take_next(&mut self, now: Instant, view: &impl RolloutView) -> Vec<RolloutAction> {
        let Some(replica) = self.pending.pop_front() else {
            self.phase = Phase::Done;
            return vec![];
        };
        // A replica gone since the rollout began is skipped.
        let Some(unit) = view.replica(&replica) else {
            return vec![];
        };
        if let (Some(_), Some(addresses)) = (unit.pid, view.free_addresses(&self.service)) {
            let successor = format!("{replica}{SUCCESSOR_SUFFIX}");
            self.phase = Phase::Surging {
                replica: replica.clone(),
                successor: successor.clone(),
                deadline: now + self.ready_timeout,
            };
            return vec![RolloutAction::StartSuccessor {
                replica,
                successor,
                addresses,
            }];
        }
        if unit.pid.is_some() {
            self.phase = Phase::Draining {
                replica: replica.clone(),
                successor: None,
                old_pid: unit.pid,
                until: now + DRAIN,
            };
            return vec![RolloutAction::Drain { replica }];
        }
        self.phase = Phase::Restarting {
            replica: replica.clone(),
            old_pid: None,
            deadline: now + DRAIN + self.ready_timeout,
        };
        vec![RolloutAction::Restart { replica }]
    }

    fn surging(
        &mut self,
        now: Instant,
        view: &impl RolloutView,
        replica: String,
        successor: String,
        deadline: Instant,
    ) -> Vec<RolloutAction> {
        if view.replica(&successor).is_some_and(|s| s.ready) {
            let old_pid = view.replica(&replica).and_then(|r| r.pid);
            if old_pid.is_none() {
                self.phase = Phase::Replacing {
                    replica: replica.clone(),
                    successor,
                };
                return vec![RolloutAction::Retire { name: replica }];
            }
            self.phase = Phase::Draining {
                replica: replica.clone(),
                successor: Some(successor),
                old_pid,
                until: now + DRAIN,
            };
            return vec![RolloutAction::Drain { replica }];
        }
        if now < deadline {
            return vec![];
        }
        let why = view.replica(&successor).map(|s| s.why).unwrap_or_default();
        let note = format!(
            "rollout halted: {successor} not ready within {:?} ({why}); {} replicas left on the old version, this one included",
            self.ready_timeout,
            self.pending.len() + 1
        );
        self.halt(
            &replica,
            note,
            vec![RolloutAction::Retire { name: successor }],
        )
    }

    fn drained(
        &mut self,
        replica: String,
        successor: Option<String>,
        old_pid: Option<i32>,
        until: Instant,
    ) -> Vec<RolloutAction> {
        match successor {
            Some(successor) => {
                self.phase = Phase::Replacing {
                    replica: replica.clone(),
                    successor,
                };
                vec![RolloutAction::Retire { name: replica }]
            }
            None => {
                self.phase = Phase::Restarting {
                    replica: replica.clone(),
                    old_pid,
                    deadline: until + self.ready_timeout,
                };
                vec![RolloutAction::Restart { replica }]
            }
        }
    }

    fn restarting(
        &mut self,
        now: Instant,
        view: &impl RolloutView,
        replica: String,
        old_pid: Option<i32>,
        deadline: Instant,
    ) -> Vec<RolloutAction> {
        let unit = view.replica(&replica);
        let replaced = unit
            .as_ref()
            .is_none_or(|u| u.ready && u.pid.is_some() && u.pid != old_pid);
        if replaced {
            self.phase = Phase::Next;
            return vec![];
        }
        if now < deadline {
            return vec![];
        }
        let why = unit.map(|u| u.why).unwrap_or_default();
        let note = format!(
            "rollout halted: not ready within {:?} ({why}); {} replicas left on the old version",
            self.ready_timeout,
            self.pending.len()
        );
        self.halt(&replica, note, vec![])
    }

    fn halt(
        &mut self,
        replica: &str,
        note: String,
        mut actions: Vec<RolloutAction>,
    ) -> Vec<RolloutAction> {
        actions.push(RolloutAction::Note {
            replica: replica.to_string(),
            note: note.clone(),
        });
        self.pending.clear();
        self.phase = Phase::Halted { reason: note };
        actions
    }

    /// Called off: a successor not yet in its place is stopped and dropped, and the replica it would
    /// have replaced keeps serving.
    fn cancel(&mut self) -> Vec<RolloutAction> {
        let actions = match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Surging { successor, .. } | Phase::Replacing { successor, .. } => {
                vec![RolloutAction::Retire { name: successor }]
            }
            Phase::Draining {
                replica, successor, ..
            } => {
                let mut actions = vec![RolloutAction::Undrain { replica }];
                actions.extend(successor.map(|name| RolloutAction::Retire { name }));
                actions
            }
            _ => vec![],
        };
        self.pending.clear();
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use RolloutAction as A;

    /// Units by name, and whether the service has a spare socket.
    #[derive(Default)]
    struct Units {
        units: BTreeMap<String, ReplicaView>,
        spare: bool,
    }

    impl Units {
        fn with(replicas: &[(&str, i32)], spare: bool) -> Units {
            let mut units = Units {
                spare,
                ..Default::default()
            };
            for (name, pid) in replicas {
                units.set(name, Some(*pid), true);
            }
            units
        }

        fn set(&mut self, name: &str, pid: Option<i32>, ready: bool) {
            let view = ReplicaView {
                pid,
                ready,
                down: pid.is_none(),
                why: if ready { "running" } else { "starting" }.into(),
            };
            self.units.insert(name.into(), view);
        }
    }

    impl RolloutView for Units {
        fn replica(&self, name: &str) -> Option<ReplicaView> {
            self.units.get(name).cloned()
        }
        fn free_addresses(&self, _service: &str) -> Option<Vec<String>> {
            self.spare.then(|| vec!["unix:/run/app@2.sock".into()])
        }
    }

    fn drain(replica: &str) -> RolloutAction {
        A::Drain {
            replica: replica.into(),
        }
    }

    fn undrain(replica: &str) -> RolloutAction {
        A::Undrain {
            replica: replica.into(),
        }
    }

    fn retire(name: &str) -> RolloutAction {
        A::Retire { name: name.into() }
    }

    fn restart(replica: &str) -> RolloutAction {
        A::Restart {
            replica: replica.into(),
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn rollout(names: &[&str]) -> Rollout {
        Rollout::new(
            "app",
            names.iter().map(|n| n.to_string()).collect(),
            TIMEOUT,
        )
    }

    fn tick(r: &mut Rollout, at: Instant, units: &Units) -> Vec<RolloutAction> {
        r.on(RolloutEvent::Tick(at), units)
    }

    #[test]
    fn surge_starts_the_successor_drains_the_old_one_then_promotes() {
        let t0 = Instant::now();
        let mut units = Units::with(&[("app@0", 10), ("app@1", 11)], true);
        let mut r = rollout(&["app@0", "app@1"]);
        assert_eq!(
            tick(&mut r, t0, &units),
            vec![A::StartSuccessor {
                replica: "app@0".into(),
                successor: "app@0.next".into(),
                addresses: vec!["unix:/run/app@2.sock".into()],
            }]
        );
        assert_eq!(r.current(), Some("app@0"));
        assert_eq!(r.deadline(), Some(t0 + TIMEOUT));
        // Not ready yet: nothing happens.
        units.set("app@0.next", Some(20), false);
        assert_eq!(tick(&mut r, t0, &units), vec![]);
        // Ready: the old one leaves routing, and is stopped for good when the drain is over.
        units.set("app@0.next", Some(20), true);
        assert_eq!(tick(&mut r, t0, &units), vec![drain("app@0")]);
        assert_eq!(r.deadline(), Some(t0 + DRAIN));
        assert_eq!(tick(&mut r, t0 + DRAIN / 2, &units), vec![]);
        assert_eq!(tick(&mut r, t0 + DRAIN, &units), vec![retire("app@0")]);
        assert_eq!(
            r.deadline(),
            None,
            "stopping is bounded by its grace period"
        );
        // Still stopping: the successor waits.
        assert_eq!(tick(&mut r, t0 + DRAIN, &units), vec![]);
        units.set("app@0", None, false);
        let t1 = t0 + DRAIN * 2;
        assert_eq!(
            tick(&mut r, t1, &units),
            vec![A::Promote {
                successor: "app@0.next".into(),
                replica: "app@0".into()
            }]
        );
        // The next replica is taken once the promotion is carried out.
        let promoted = units.units.remove("app@0.next").expect("successor");
        units.units.insert("app@0".into(), promoted);
        assert_eq!(
            tick(&mut r, t1, &units),
            vec![A::StartSuccessor {
                replica: "app@1".into(),
                successor: "app@1.next".into(),
                addresses: vec!["unix:/run/app@2.sock".into()],
            }]
        );
        assert_eq!(r.deadline(), Some(t1 + TIMEOUT));
    }

    #[test]
    fn the_last_replica_replaced_ends_the_rollout() {
        let t0 = Instant::now();
        let mut units = Units::with(&[("app@0", 10)], true);
        let mut r = rollout(&["app@0"]);
        tick(&mut r, t0, &units);
        units.set("app@0.next", Some(20), true);
        tick(&mut r, t0, &units);
        tick(&mut r, t0 + DRAIN, &units);
        units.set("app@0", None, false);
        tick(&mut r, t0 + DRAIN, &units);
        tick(&mut r, t0 + DRAIN, &units);
        assert_eq!(r.phase, Phase::Done);
        assert!(r.is_over());
    }

    #[test]
    fn a_successor_never_ready_halts_with_every_replica_on_the_old_version() {
        let t0 = Instant::now();
        let mut units = Units::with(&[("app@0", 10), ("app@1", 11), ("app@2", 12)], true);
        let mut r = rollout(&["app@0", "app@1", "app@2"]);
        tick(&mut r, t0, &units);
        units.set("app@0.next", Some(20), false);
        assert_eq!(tick(&mut r, t0 + TIMEOUT / 2, &units), vec![]);
        let actions = tick(&mut r, t0 + TIMEOUT, &units);
        assert_eq!(actions.len(), 2, "{actions:?}");
        assert_eq!(actions[0], retire("app@0.next"));
        let A::Note { replica, note } = &actions[1] else {
            panic!("expected a note: {actions:?}");
        };
        assert_eq!(replica, "app@0");
        assert!(
            note.starts_with("rollout halted: app@0.next not ready within 10s (starting); 3 replicas left on the old version"),
            "{note}"
        );
        assert!(matches!(r.phase, Phase::Halted { .. }));
        assert_eq!(tick(&mut r, t0 + TIMEOUT * 2, &units), vec![]);
    }

    #[test]
    fn without_a_spare_socket_each_replica_is_drained_restarted_and_awaited() {
        let t0 = Instant::now();
        let mut units = Units::with(&[("app@0", 10), ("app@1", 11)], false);
        let mut r = rollout(&["app@0", "app@1"]);
        assert_eq!(tick(&mut r, t0, &units), vec![drain("app@0")]);
        assert_eq!(tick(&mut r, t0 + DRAIN, &units), vec![restart("app@0")]);
        assert_eq!(r.deadline(), Some(t0 + DRAIN + TIMEOUT));
        // The old process is still the one there: not replaced yet.
        assert_eq!(tick(&mut r, t0 + DRAIN, &units), vec![]);
        units.set("app@0", Some(30), false);
        assert_eq!(tick(&mut r, t0 + DRAIN, &units), vec![]);
        units.set("app@0", Some(30), true);
        assert_eq!(tick(&mut r, t0 + DRAIN * 2, &units), vec![drain("app@1")]);
    }

    #[test]
    fn a_replica_restarted_in_place_that_never_gets_ready_halts() {
        let t0 = Instant::now();
        let mut units = Units::with(&[("app@0", 10), ("app@1", 11)], false);
        let mut r = rollout(&["app@0", "app@1"]);
        tick(&mut r, t0, &units);
        tick(&mut r, t0 + DRAIN, &units);
        units.set("app@0", Some(30), false);
        let actions = tick(&mut r, t0 + DRAIN + TIMEOUT, &units);
        let [A::Note { replica, note }] = actions.as_slice() else {
            panic!("expected only a note: {actions:?}");
        };
        assert_eq!(replica, "app@0");
        assert!(
            note.contains("not ready within 10s (starting); 1 replicas left on the old version"),
            "{note}"
        );
    }

    #[test]
    fn a_replica_that_is_not_running_is_simply_restarted() {
        let t0 = Instant::now();
        let mut units = Units::with(&[("app@1", 11)], true);
        units.set("app@0", None, false);
        let mut r = rollout(&["app@0", "app@1"]);
        assert_eq!(tick(&mut r, t0, &units), vec![restart("app@0")]);
        assert_eq!(r.deadline(), Some(t0 + DRAIN + TIMEOUT));
    }

    #[test]
    fn a_replica_gone_since_the_rollout_began_is_skipped() {
        let t0 = Instant::now();
        let units = Units::with(&[("app@1", 11)], false);
        let mut r = rollout(&["app@0", "app@1"]);
        assert_eq!(tick(&mut r, t0, &units), vec![drain("app@1")]);
    }

    #[test]
    fn stop_mid_surge_drops_the_successor_and_keeps_the_replica() {
        let t0 = Instant::now();
        let mut units = Units::with(&[("app@0", 10), ("app@1", 11)], true);
        let mut r = rollout(&["app@0", "app@1"]);
        tick(&mut r, t0, &units);
        assert_eq!(
            r.on(RolloutEvent::Cancel, &units),
            vec![retire("app@0.next")]
        );
        assert!(r.is_over());
        // Once cancelled, nothing more happens, whatever the units do.
        units.set("app@0.next", Some(20), true);
        assert_eq!(tick(&mut r, t0 + TIMEOUT, &units), vec![]);
    }

    #[test]
    fn cancel_while_draining_puts_the_replica_back_into_routing() {
        let t0 = Instant::now();
        let mut units = Units::with(&[("app@0", 10)], true);
        let mut r = rollout(&["app@0"]);
        tick(&mut r, t0, &units);
        units.set("app@0.next", Some(20), true);
        tick(&mut r, t0, &units);
        assert_eq!(
            r.on(RolloutEvent::Cancel, &units),
            vec![undrain("app@0"), retire("app@0.next")]
        );
    }

    #[test]
    fn reload_mid_rollout_cancels_it_and_a_new_one_starts_from_the_first_replica() {
        // A reload that changes the service calls the running rollout off and starts another with every
        // replica: the new one begins as any rollout does.
        let t0 = Instant::now();
        let mut units = Units::with(&[("app@0", 10), ("app@1", 11)], true);
        let mut first = rollout(&["app@0", "app@1"]);
        tick(&mut first, t0, &units);
        units.set("app@0.next", Some(20), false);
        let cancelled = first.on(RolloutEvent::Cancel, &units);
        assert_eq!(cancelled, vec![retire("app@0.next")]);
        units.units.remove("app@0.next");
        let mut second = rollout(&["app@0", "app@1"]);
        assert!(matches!(
            tick(&mut second, t0, &units).as_slice(),
            [A::StartSuccessor { replica, .. }] if replica == "app@0"
        ));
    }
}
