//! Process groups whose main process died on its own (`Action::StopLeftovers`): told to stop, and
//! SIGKILLed when their grace period ends, as systemd does, so workers can finish the responses they
//! are writing. Shutdown waits for them.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::Instant;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tracing::{info, warn};

use super::timers::{Due, Timers};

/// Groups by pgid, with the name of the unit they were part of.
#[derive(Default)]
pub struct Leftovers {
    groups: HashMap<Pid, String>,
}

impl Leftovers {
    /// Ask what is left of `pgid` to stop with `stop`, and arm its SIGKILL at `kill_at`.
    pub fn stop(
        &mut self,
        unit: &str,
        pgid: Pid,
        stop: Signal,
        kill_at: Instant,
        timers: &mut Timers,
    ) {
        // ESRCH: the main process was alone; nothing is left to stop.
        if signal::killpg(pgid, stop).is_ok() {
            info!(
                "{unit}: main process gone; stopping what is left of group {pgid} with {}",
                stop.as_str()
            );
            self.groups.insert(pgid, unit.to_string());
            timers.arm(Due::Leftovers(pgid.as_raw()), kill_at);
        }
    }

    /// After reaping: a group whose last process is gone needs no SIGKILL later.
    pub fn forget_empty(&mut self, timers: &mut Timers) {
        let empty: Vec<Pid> = self
            .groups
            .keys()
            .filter(|pgid| signal::killpg(**pgid, None).is_err())
            .copied()
            .collect();
        for pgid in empty {
            self.groups.remove(&pgid);
            timers.cancel(&Due::Leftovers(pgid.as_raw()));
        }
    }

    /// The grace period is over. `in_use`: the group's number now leads a unit started since (a group's
    /// number is free again once it is empty): never kill that one.
    pub fn kill(&mut self, pgid: Pid, in_use: bool) {
        let Some(unit) = self.groups.remove(&pgid) else {
            return;
        };
        if !in_use && signal::killpg(pgid, Signal::SIGKILL).is_ok() {
            warn!("{unit}: processes left in group {pgid} did not stop within the grace period; killed");
        }
    }

    /// The shutdown's deadline passed: every group still waiting for its grace period is killed now.
    pub fn kill_all(&mut self, timers: &mut Timers) {
        for (pgid, unit) in std::mem::take(&mut self.groups) {
            timers.cancel(&Due::Leftovers(pgid.as_raw()));
            if signal::killpg(pgid, Signal::SIGKILL).is_ok() {
                warn!("{unit}: processes left in group {pgid} killed at the shutdown deadline");
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}
