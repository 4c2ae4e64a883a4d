//! A unit is one supervised process slot: a service, one replica of it, or the proxy.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::probes::Track;
use super::state::{Machine, Policy};
use crate::api::ServiceStatus;
use crate::config::ServiceSpec;
use crate::logs::ServiceLog;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitKind {
    Service,
    /// The built-in proxy: gets the proxy listeners and the state channel as extra fds.
    Proxy,
}

/// Where a unit stands in the table: an ordinary member, a rollout's successor, or on its way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Member,
    /// Started beside a running replica by a rolling restart (`NAME@N.next`, on the service's free
    /// socket): it takes the replica's name once the old process has stopped. Not counted for `/healthz`
    /// or the stack's readiness while it starts.
    Successor,
    /// Removed by a reload, or replaced by its successor: dropped from the table once it has stopped.
    Retiring,
}

/// A unit's stdout or stderr: the log pipe it shares with every unit that names the same file, or why
/// that file could not be opened (no file descriptors left, a symlink planted in its place). Such a unit
/// cannot start, and says why; everything else keeps running.
#[derive(Clone, Debug)]
pub enum UnitLog {
    Open(Rc<ServiceLog>),
    Failed { path: PathBuf, reason: String },
}

impl UnitLog {
    pub fn path(&self) -> &Path {
        match self {
            UnitLog::Open(log) => log.path(),
            UnitLog::Failed { path, .. } => path,
        }
    }

    /// The pipe, or why there is none (a spawn error, an API error).
    pub fn open(&self) -> Result<&ServiceLog, String> {
        match self {
            UnitLog::Open(log) => Ok(log),
            UnitLog::Failed { path, reason } => {
                Err(format!("cannot open log {}: {reason}", path.display()))
            }
        }
    }
}

pub struct Unit {
    /// `app@0`, `app`, or `proxy`.
    pub name: String,
    /// The `[service.NAME]` it belongs to.
    pub service: String,
    pub replica: Option<u32>,
    pub kind: UnitKind,
    pub spec: Rc<ServiceSpec>,
    pub policy: Policy,
    pub stop_signal: Signal,
    pub machine: Machine,
    /// Should be up (autostart or `start`), as opposed to what it is.
    pub want_up: bool,
    pub pid: Option<Pid>,
    /// Process group of the last process; it outlives the process when grandchildren linger.
    pub pgid: Option<Pid>,
    pub started_at: Option<Instant>,
    /// This replica's listen addresses (keys into the supervisor's listener table).
    pub listen: Vec<String>,
    pub stdout: UnitLog,
    pub stderr: UnitLog,
    /// Why the last spawn failed, if it did.
    pub spawn_error: Option<String>,
    /// Why it waits instead of starting (dependencies).
    pub waiting_for: Option<String>,
    pub place: Place,
    /// Out of routing while a rolling restart drains it.
    pub draining: bool,
    /// Why the last rolling restart of this replica halted, until the next one.
    pub rollout_note: Option<String>,
    /// The cgroup of the current (or last) process, when cgroups are on.
    pub cgroup: Option<std::path::PathBuf>,
    /// The last process was killed by the kernel's OOM killer (its cgroup's memory.events).
    pub oom_killed: bool,
    /// Per-process readiness signals, reset at every spawn.
    pub health: Health,
}

/// What the current process has shown about itself: probes, READY=1, the watchdog.
#[derive(Default)]
pub struct Health {
    pub startup: Track,
    pub readiness: Track,
    pub liveness: Track,
    pub probe_tasks: Vec<tokio::task::JoinHandle<()>>,
    pub notified_ready: bool,
    pub status_text: Option<String>,
    pub last_probe: Option<String>,
    /// The watchdog interval (its deadline is the supervisor's `Due::Watchdog` timer).
    pub watchdog: Option<std::time::Duration>,
}

impl Health {
    /// Forget the old process: stop its probes and readiness.
    pub fn reset(&mut self) {
        for t in self.probe_tasks.drain(..) {
            t.abort();
        }
        self.startup = Track::default();
        self.readiness = Track::default();
        self.liveness = Track::default();
        self.notified_ready = false;
        self.status_text = None;
        self.watchdog = None;
    }
}

impl Drop for Health {
    fn drop(&mut self) {
        for t in &self.probe_tasks {
            t.abort();
        }
    }
}

impl Unit {
    /// Up and serving: what dependents, `/healthz` and the proxy's routing go by.
    pub fn is_ready(&self) -> bool {
        if self.spec.oneshot {
            return self.machine.is_up();
        }
        !self.draining
            && self.machine.is_up()
            && (!self.spec.notify || self.health.notified_ready)
            && (self.spec.startup.is_none() || self.health.startup.passing)
            && (self.spec.readiness.is_none() || self.health.readiness.passing)
    }

    /// Whether the process has said it is ready by every signal its spec asks for (READY=1, startup and
    /// readiness probes). False for a unit with no such signal: then only `start_secs` tells.
    pub fn signals_ready(&self) -> bool {
        let spec = &self.spec;
        let asks = spec.notify || spec.startup.is_some() || spec.readiness.is_some();
        asks && (!spec.notify || self.health.notified_ready)
            && (spec.startup.is_none() || self.health.startup.passing)
            && (spec.readiness.is_none() || self.health.readiness.passing)
    }

    /// Why a running process is not ready yet, for status.
    fn not_ready_reason(&self) -> Option<String> {
        if !self.machine.is_up() || self.spec.oneshot || self.is_ready() {
            return None;
        }
        if self.spec.notify && !self.health.notified_ready {
            return Some("waiting for READY=1".into());
        }
        if self.spec.startup.is_some() && !self.health.startup.passing {
            return Some(match &self.health.startup.last_error {
                Some(e) => format!("startup probe failing: {e}"),
                None => "waiting for the startup probe".into(),
            });
        }
        Some(match &self.health.readiness.last_error {
            Some(e) => format!("readiness probe failing: {e}"),
            None => "waiting for the readiness probe".into(),
        })
    }

    /// No process and nothing scheduled: safe to consider it stopped for shutdown ordering.
    pub fn is_down(&self) -> bool {
        self.pid.is_none()
            && !matches!(
                self.machine.state,
                super::State::Backoff | super::State::Starting
            )
    }

    /// Its new process `pid` started at `now`: forget the old one's health. Returns the watchdog interval
    /// that runs from now: as systemd, a notify service's runs from READY=1 instead (start-up may take
    /// longer than one watchdog period).
    pub fn started(&mut self, pid: nix::unistd::Pid, now: Instant) -> Option<std::time::Duration> {
        self.pid = Some(pid);
        self.pgid = Some(pid);
        self.started_at = Some(now);
        self.spawn_error = None;
        self.draining = false;
        self.health.reset();
        self.health.watchdog = self.spec.watchdog.map(|w| w.0);
        self.health.watchdog.filter(|_| !self.spec.notify)
    }

    /// Its process could not be started: `pid` is the child that exists only to exit 127, if fork worked.
    pub fn spawn_failed(&mut self, pid: Option<nix::unistd::Pid>, error: String, now: Instant) {
        if pid.is_some() {
            self.pid = pid;
            self.started_at = Some(now);
        }
        self.pgid = None;
        self.spawn_error = Some(error);
    }

    /// How the last process ended; an OOM kill says so, with the limit.
    fn last_exit(&self) -> Option<String> {
        if self.oom_killed {
            let limit = self.spec.memory_max.map(|m| format!(" (memory_max {m})"));
            return Some(format!("oom-killed{}", limit.unwrap_or_default()));
        }
        self.machine.last_exit.map(|e| e.describe())
    }

    /// A reload made this unit afresh for a changed spec while `old`'s process still runs: that process
    /// becomes this unit's, with its sockets, probes and readiness, until it is replaced.
    pub fn take_over(&mut self, old: &mut Unit) {
        self.machine = old.machine.clone();
        self.listen = old.listen.clone();
        self.pid = old.pid;
        self.pgid = old.pgid;
        self.started_at = old.started_at;
        self.health = std::mem::take(&mut old.health);
    }

    pub fn is_member(&self) -> bool {
        self.place == Place::Member
    }

    pub fn status(&self, now: Instant) -> ServiceStatus {
        // A process that could not even start says why first, with the machine's view after it.
        let machine = match (&self.spawn_error, &self.machine.reason) {
            (Some(spawn), Some(state)) => Some(format!("{spawn}; {state}")),
            (spawn, state) => state.clone().or_else(|| spawn.clone()),
        };
        let reason = self
            .rollout_note
            .clone()
            .or(machine)
            .or_else(|| self.not_ready_reason())
            .or_else(|| {
                self.waiting_for
                    .as_ref()
                    .map(|w| format!("waiting for {w}"))
            });
        ServiceStatus {
            name: self.name.clone(),
            service: self.service.clone(),
            replica: self.replica,
            state: self.machine.state,
            ready: self.is_ready(),
            pid: self.pid.map(|p| p.as_raw()),
            restarts: self.machine.restarts,
            uptime_secs: self
                .pid
                .and(self.started_at)
                .map(|t| (now.saturating_duration_since(t).as_millis() as f64) / 1000.0),
            last_exit: self.last_exit(),
            reason,
            oneshot: self.spec.oneshot,
            stdout: self.stdout.path().to_path_buf(),
            stderr: self.stderr.path().to_path_buf(),
            probe: self.health.last_probe.clone(),
            status_text: self.health.status_text.clone(),
            last_restart: self.machine.last_restart.clone(),
            usage: None,
        }
    }
}
