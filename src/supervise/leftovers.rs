//! What is left of a process whose main process died on its own (`Action::StopLeftovers`): told to
//! stop, and SIGKILLed when the grace period ends, as systemd does, so workers can finish the responses
//! they are writing. "What is left" is the process group and, with cgroups, the process's own cgroup,
//! which also holds what left the group (a daemonised child). Shutdown waits for them.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tracing::{info, warn};

use super::cgroups;
use super::timers::{Due, Timers};

/// What is left of one process: its group (if it led one) and its cgroup (if cgroups are on).
#[derive(Clone, Debug)]
struct Remains {
    unit: String,
    pgid: Option<Pid>,
    cgroup: Option<PathBuf>,
}

impl Remains {
    fn alive(&self) -> bool {
        self.pgid.is_some_and(|g| signal::killpg(g, None).is_ok())
            || self.cgroup.as_deref().is_some_and(cgroups::populated)
    }
}

/// Remains by a key of their own (the timer names it).
#[derive(Default)]
pub struct Leftovers {
    remains: HashMap<i32, Remains>,
    next_key: i32,
}

impl Leftovers {
    /// Ask what is left of a process's group and cgroup to stop with `stop`, and arm its SIGKILL at
    /// `kill_at`. Nothing is kept when nothing is left (the main process was alone).
    pub fn stop(
        &mut self,
        unit: &str,
        (pgid, cgroup): (Option<Pid>, Option<PathBuf>),
        stop: Signal,
        kill_at: Instant,
        timers: &mut Timers,
    ) {
        let remains = Remains {
            unit: unit.to_string(),
            pgid,
            cgroup,
        };
        if !remains.alive() {
            return;
        }
        if let Some(g) = remains.pgid {
            let _ = signal::killpg(g, stop);
        }
        if let Some(c) = &remains.cgroup {
            cgroups::signal(c, stop);
        }
        info!(
            "{unit}: main process gone; stopping what is left of it with {}",
            stop.as_str()
        );
        self.next_key = self.next_key.wrapping_add(1);
        timers.arm(Due::Leftovers(self.next_key), kill_at);
        self.remains.insert(self.next_key, remains);
    }

    /// After reaping: remains that are gone need no SIGKILL later.
    pub fn forget_empty(&mut self, timers: &mut Timers) {
        let gone: Vec<i32> = self
            .remains
            .iter()
            .filter(|(_, r)| !r.alive())
            .map(|(key, _)| *key)
            .collect();
        for key in gone {
            self.remains.remove(&key);
            timers.cancel(&Due::Leftovers(key));
        }
    }

    /// The grace period is over. `group_in_use(pgid)`: the group's number now leads a unit started since
    /// (a group's number is free again once it is empty): never kill that one. A cgroup is the dead
    /// process's own, never a replacement's, so it is always killed.
    pub fn kill(&mut self, key: i32, group_in_use: impl Fn(Pid) -> bool) {
        let Some(remains) = self.remains.remove(&key) else {
            return;
        };
        if let Some(c) = &remains.cgroup {
            cgroups::kill(c);
        }
        let group = remains.pgid.filter(|g| !group_in_use(*g));
        if group.is_some_and(|g| signal::killpg(g, Signal::SIGKILL).is_ok()) {
            warn!(
                "{}: processes left in group {} did not stop within the grace period; killed",
                remains.unit,
                remains.pgid.map_or(0, Pid::as_raw)
            );
        }
    }

    /// The shutdown's deadline passed: all that still waits for its grace period is killed now (every
    /// unit is going down, so no group is anyone else's).
    pub fn kill_all(&mut self, timers: &mut Timers) {
        let keys: Vec<i32> = self.remains.keys().copied().collect();
        for key in keys {
            timers.cancel(&Due::Leftovers(key));
            self.kill(key, |_| false);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remains.is_empty()
    }
}
