//! Every deadline the supervisor keeps, in one ordered set: the loop sleeps until the first entry.
//!
//! Each kind of deadline has its own `Due` key, armed at most once (arming again moves it), so no owner
//! keeps an `Instant` of its own and no deadline can be forgotten by `next`.
#![forbid(unsafe_code)]

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

/// What a deadline is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Due {
    /// A unit's state-machine timer: `start_secs`, a backoff delay or the stop grace period.
    Unit(String),
    /// A unit's watchdog: its next WATCHDOG=1 must come before this.
    Watchdog(String),
    /// An exec probe still running (by pid) is killed and failed at its timeout.
    ExecProbe(i32),
    /// The shutdown's drain period, before services are stopped.
    ShutdownDrain,
    /// The shutdown's deadline (`shutdown_timeout`): whatever still runs is killed.
    ShutdownDeadline,
    /// A rolling restart's next deadline (its drain ends, or a new process must be ready).
    Rollout(String),
    /// The next WATCHDOG=1 stackinit owes systemd.
    SystemdWatchdog,
    /// What is left of a process after its main process died (by `leftovers.rs`'s key): SIGKILLed now.
    Leftovers(i32),
}

#[derive(Default)]
pub struct Timers {
    order: BTreeSet<(Instant, Due)>,
    armed: HashMap<Due, Instant>,
}

impl Timers {
    /// Arm `due` at `at`, replacing its earlier deadline if it had one.
    pub fn arm(&mut self, due: Due, at: Instant) {
        if let Some(old) = self.armed.insert(due.clone(), at) {
            self.order.remove(&(old, due.clone()));
        }
        self.order.insert((at, due));
    }

    /// Arm at `at`, or cancel when there is no deadline.
    pub fn set(&mut self, due: Due, at: Option<Instant>) {
        match at {
            Some(at) => self.arm(due, at),
            None => self.cancel(&due),
        }
    }

    pub fn cancel(&mut self, due: &Due) {
        if let Some(at) = self.armed.remove(due) {
            self.order.remove(&(at, due.clone()));
        }
    }

    pub fn is_armed(&self, due: &Due) -> bool {
        self.armed.contains_key(due)
    }

    /// The earliest deadline: when the loop must wake next.
    pub fn next(&self) -> Option<Instant> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Remove and return every deadline that has passed, earliest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<Due> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.order.first() {
            if *at > now {
                break;
            }
            if let Some((_, d)) = self.order.pop_first() {
                self.armed.remove(&d);
                due.push(d);
            }
        }
        due
    }

    /// A unit took another name (a rollout's successor became the replica): its deadlines follow it.
    pub fn rename_unit(&mut self, from: &str, to: &str) {
        for (old, new) in [
            (Due::Unit(from.into()), Due::Unit(to.into())),
            (Due::Watchdog(from.into()), Due::Watchdog(to.into())),
        ] {
            self.cancel(&new);
            if let Some(at) = self.armed.get(&old).copied() {
                self.cancel(&old);
                self.arm(new, at);
            }
        }
    }

    /// A unit left the table: its deadlines go with it.
    pub fn forget_unit(&mut self, name: &str) {
        self.cancel(&Due::Unit(name.into()));
        self.cancel(&Due::Watchdog(name.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn next_is_the_earliest_and_rearming_moves_a_deadline() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        assert_eq!(timers.next(), None);
        timers.arm(Due::Unit("a".into()), t0 + Duration::from_secs(5));
        timers.arm(Due::SystemdWatchdog, t0 + Duration::from_secs(3));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(3)));
        timers.arm(Due::SystemdWatchdog, t0 + Duration::from_secs(9));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(5)));
        timers.cancel(&Due::Unit("a".into()));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(9)));
    }

    #[test]
    fn take_due_returns_what_passed_in_order_and_leaves_the_rest() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.arm(Due::Rollout("app".into()), t0 + Duration::from_millis(20));
        timers.arm(Due::ExecProbe(7), t0 + Duration::from_millis(10));
        timers.arm(Due::ShutdownDrain, t0 + Duration::from_secs(60));
        let due = timers.take_due(t0 + Duration::from_millis(30));
        assert_eq!(due, vec![Due::ExecProbe(7), Due::Rollout("app".into())]);
        assert!(!timers.is_armed(&Due::ExecProbe(7)));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn a_renamed_unit_keeps_its_deadlines_and_a_forgotten_one_loses_them() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.arm(Due::Unit("app@0.next".into()), t0);
        timers.arm(
            Due::Watchdog("app@0.next".into()),
            t0 + Duration::from_secs(1),
        );
        timers.arm(Due::Unit("app@0".into()), t0 + Duration::from_secs(2));
        timers.rename_unit("app@0.next", "app@0");
        assert!(!timers.is_armed(&Due::Unit("app@0.next".into())));
        assert_eq!(
            timers.take_due(t0 + Duration::from_secs(5)),
            vec![Due::Unit("app@0".into()), Due::Watchdog("app@0".into())]
        );
        timers.arm(Due::Unit("x".into()), t0);
        timers.forget_unit("x");
        assert_eq!(timers.next(), None);
    }
}
