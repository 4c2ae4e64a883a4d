//! Exec probes in flight. They are forked like services (the supervisor owns fork and the one reaper),
//! answered when the reaper sees them exit, and killed and failed at their timeout.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::Instant;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::launch;
use super::probes::ExecRequest;
use super::state::ExitStatus;
use super::timers::{Due, Timers};
use super::unit::Unit;

type Reply = tokio::sync::oneshot::Sender<Result<(), String>>;

#[derive(Default)]
pub struct ExecProbes {
    waiters: HashMap<Pid, Reply>,
}

impl ExecProbes {
    /// Fork the check as `unit` would run, with its timeout armed; a check that cannot start fails now.
    pub fn start(&mut self, unit: &Unit, request: ExecRequest, timers: &mut Timers) {
        let spawned = launch::probe_command(unit, &request.argv)
            .and_then(|cmd| super::spawn::spawn(&cmd).map_err(|(_, e)| e.to_string()));
        match spawned {
            Ok(pid) => {
                let at = Instant::now() + request.timeout;
                timers.arm(Due::ExecProbe(pid.as_raw()), at);
                self.waiters.insert(pid, request.reply);
            }
            Err(e) => {
                let _ = request.reply.send(Err(e));
            }
        }
    }

    /// The reaper saw `pid` exit: if it was a check, answer it (and kill what it left). False otherwise.
    pub fn answer(&mut self, pid: Pid, status: ExitStatus, timers: &mut Timers) -> bool {
        let Some(reply) = self.waiters.remove(&pid) else {
            return false;
        };
        timers.cancel(&Due::ExecProbe(pid.as_raw()));
        let _ = signal::killpg(pid, Signal::SIGKILL);
        let _ = reply.send(match status {
            ExitStatus::Code(0) => Ok(()),
            other => Err(format!("exec probe: {}", other.describe())),
        });
        true
    }

    pub fn timed_out(&mut self, pid: Pid) {
        if let Some(reply) = self.waiters.remove(&pid) {
            let _ = signal::killpg(pid, Signal::SIGKILL);
            let _ = reply.send(Err("exec probe timed out".into()));
            // Its exit is still reaped; with no waiter left it is logged as an orphan.
        }
    }
}
