//! The supervisor's event loop: it gathers events (signals, the one reaper, requests, probe results,
//! notify messages, due timers) and carries out what the owners decide: each unit's state machine
//! (`state`), rolling restarts (`rollout`), reloads (`reload`), dependency order (`schedule`) and what to
//! tell others (`publish`). It owns the unit table, the pid table, the listeners, the logs and the timers.
//!
//! The loop sleeps until an event or the earliest timer; an idle stack wakes zero times.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, error, info, warn};

use super::build::{self, LogFiles};
use super::cgroups::{self, Cgroups};
use super::dry_run;
use super::exec_probes::ExecProbes;
use super::hand_back::{self, HandBack};
use super::handle::{Action as ControlAction, Handle, Request};
use super::health::{self, ProbeChannels};
use super::inbox::{self, Inbox};
use super::launch::{self, Surroundings};
use super::leftovers::Leftovers;
use super::listeners::{self, Listeners};
use super::notify::{self, Notification};
use super::probes::{ExecRequest, ProbeResult};
use super::publish::{self, Reporter};
use super::reload::{self, Fate, Then};
use super::reports;
use super::requests::{self, RestartWaiters};
use super::rollouts::Rollouts;
use super::schedule;
use super::state::{Action, Event, ExitStatus, Jitter, State};
use super::systemd_notify;
use super::table::Table;
use super::timers::{Due, Timers};
use super::unit::{Place, Unit, UnitKind};
use super::{Outcome, RunOptions};
use crate::api::{ActionReply, ApiError, ReloadReply};
use crate::config::Config;
use crate::proxy::protocol;

/// Shutdown in progress: drain first, then stop in reverse dependency order.
struct Shutdown {
    outcome: Outcome,
    draining: bool,
}

pub struct Supervisor {
    pid1: bool,
    config: Config,
    config_path: Option<PathBuf>,
    units: BTreeMap<String, Unit>,
    pids: HashMap<Pid, String>,
    logs: LogFiles,
    listeners: Listeners,
    timers: Timers,
    rollouts: Rollouts,
    restart_waiters: RestartWaiters,
    leftovers: Leftovers,
    cgroups: Cgroups,
    hand_back: HandBack,
    exec_probes: ExecProbes,
    shutdown: Option<Shutdown>,
    /// Events raised while carrying out others, handled before the loop sleeps.
    pending: VecDeque<(String, Event)>,
    jitter: Jitter,
    inbox: Inbox,
    probe_channels: ProbeChannels,
    surroundings: Surroundings,
    /// A second handle on the notify socket, read by the reaper (`notify::drain`).
    notify_drain: Option<OwnedFd>,
    facts: crate::facts::Facts,
    reporter: Reporter,
    /// How often stackinit owes systemd a WATCHDOG=1 (half of its WATCHDOG_USEC).
    systemd_watchdog: Option<Duration>,
}

/// A number that orders a unit's processes (their cgroups are named by it).
fn spawn_seq() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Supervisor {
    pub fn new(
        opts: RunOptions,
        handle: Handle,
        requests: UnboundedReceiver<Request>,
    ) -> Supervisor {
        let (inbox, probe_channels) = Inbox::new(requests, opts.power_button);
        Supervisor {
            pid1: opts.pid1,
            config: opts.config,
            config_path: opts.config_path,
            units: BTreeMap::new(),
            pids: HashMap::new(),
            logs: LogFiles::default(),
            listeners: Listeners::default(),
            timers: Timers::default(),
            rollouts: Rollouts::default(),
            restart_waiters: RestartWaiters::default(),
            leftovers: Leftovers::default(),
            cgroups: Cgroups::default(),
            hand_back: HandBack::default(),
            exec_probes: ExecProbes::default(),
            shutdown: None,
            pending: VecDeque::new(),
            jitter: Jitter::seeded(),
            inbox,
            probe_channels,
            surroundings: Surroundings::default(),
            notify_drain: None,
            facts: Default::default(),
            reporter: Reporter::new(handle),
            systemd_watchdog: None,
        }
    }

    // ------------------------------------------------------------------ the loop

    pub async fn run(mut self) -> Outcome {
        if !self.pid1 {
            if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                warn!("cannot become a child subreaper ({e}); orphans of services will escape");
            }
        }
        // Signal streams first: a child that dies before the SIGCHLD handler exists would otherwise linger.
        let mut signals = match inbox::Signals::watch() {
            Ok(s) => s,
            Err(e) => {
                error!("cannot watch SIGCHLD: {e}");
                return Outcome::Exit(1);
            }
        };
        self.start().await;
        loop {
            let deadline = self.timers.next();
            tokio::select! {
                _ = signals.child.recv() => self.reap(),
                Some(()) = inbox::recv(&mut signals.term) => self.on_stop_signal(Signal::SIGTERM),
                Some(()) = inbox::recv(&mut signals.int) => self.on_stop_signal(Signal::SIGINT),
                Some(()) = inbox::recv(&mut signals.pwr) => self.on_stop_signal(Signal::SIGPWR),
                Some(()) = inbox::recv(&mut signals.hup) => self.reload_on_sighup(),
                Some(()) = inbox::recv(&mut signals.usr1) => self.reopen_logs(),
                Some(request) = self.inbox.requests.recv() => self.handle_request(request),
                Some(result) = self.inbox.probes.recv() => self.on_probe_result(result),
                Some(request) = self.inbox.execs.recv() => self.run_exec_probe(request),
                Some(message) = self.inbox.notify.recv() => self.on_notification(message),
                Some(()) = inbox::recv_press(&mut self.inbox.power_button) => {
                    info!("power button pressed");
                    self.on_stop_signal(Signal::SIGPWR);
                }
                _ = inbox::sleep_until(deadline), if deadline.is_some() => self.fire_timers(),
            }
            self.settle();
            if let Some(outcome) = self.finished() {
                info!("all services stopped");
                self.close_logs().await;
                return outcome;
            }
        }
    }

    /// Before the first event: the notify socket, the instance facts, the units and their sockets.
    async fn start(&mut self) {
        self.systemd_watchdog = systemd_notify::watchdog_interval();
        if self.systemd_watchdog.is_some() {
            self.timers.arm(Due::SystemdWatchdog, Instant::now());
        }
        let notify_path = self.config.init.control_socket.parent().map_or_else(
            || PathBuf::from("/run/stackinit/service-notify.sock"),
            |d| d.join("service-notify.sock"),
        );
        match notify::serve(&notify_path, self.inbox.notify_tx.clone()) {
            Ok((path, drain)) => {
                self.surroundings.notify_socket = Some(path);
                self.notify_drain = Some(drain);
            }
            Err(e) => warn!(
                "no notify socket at {}: {e}; `notify = true` services will never be ready",
                notify_path.display()
            ),
        }
        self.cgroups = Cgroups::discover(self.pid1);
        self.facts = crate::facts::discover(&self.config.init.imds).await;
        self.surroundings.set(&self.facts, &self.config);
        self.units = build::units_for_config(&self.config, &mut self.logs);
        self.bind_listeners();
        self.publish_proxy_config();
        info!("supervising {} units", self.units.len());
        self.settle();
    }

    /// Bind what the units need; a unit whose socket cannot be bound cannot run (`BindFailed`).
    fn bind_listeners(&mut self) {
        let failures = self.listeners.bind(&self.config, self.units.values());
        let proxy_addresses = listeners::proxy_addresses(&self.config);
        let failed: Vec<(String, String)> = self
            .units
            .values()
            .filter_map(|u| {
                let mut addrs = u.listen.iter();
                let failed = match u.kind {
                    UnitKind::Service => addrs.find_map(|a| failures.get(a)),
                    UnitKind::Proxy => proxy_addresses.iter().find_map(|a| failures.get(a)),
                };
                failed.map(|e| (u.name.clone(), e.clone()))
            })
            .collect();
        for (name, reason) in failed {
            self.dispatch(&name, Event::BindFailed { reason });
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        for due in self.timers.take_due(now) {
            match due {
                Due::Unit(name) => self.unit_timer(&name),
                Due::Watchdog(name) => self.watchdog_starved(&name),
                Due::ExecProbe(pid) => self.exec_probes.timed_out(Pid::from_raw(pid)),
                Due::Leftovers(key) => self.kill_leftovers(key),
                // Rollouts look at the time whenever the loop settles.
                Due::Rollout(_) => {}
                Due::ShutdownDrain => {
                    if let Some(s) = &mut self.shutdown {
                        s.draining = false;
                        info!("drain period over; stopping services");
                    }
                }
                Due::ShutdownDeadline => self.shutdown_overdue(),
                Due::SystemdWatchdog => {
                    systemd_notify::notify_watchdog();
                    if let Some(every) = self.systemd_watchdog {
                        self.timers.arm(Due::SystemdWatchdog, now + every);
                    }
                }
            }
        }
    }

    /// The unit's own timer: what it means depends on the state it was armed in.
    fn unit_timer(&mut self, name: &str) {
        let event = match self.units.get(name).map(|u| u.machine.state) {
            Some(State::Starting) => Event::StartSecsElapsed,
            Some(State::Backoff) => Event::BackoffElapsed,
            Some(State::Stopping) => Event::GraceElapsed,
            _ => return,
        };
        self.dispatch(name, event);
    }

    fn watchdog_starved(&mut self, name: &str) {
        let Some(interval) = self
            .units
            .get(name)
            .map(|u| u.health.watchdog.unwrap_or_default())
        else {
            return;
        };
        warn!("{name}: watchdog timeout (no WATCHDOG=1 for {interval:?}); restarting");
        let reason = format!("watchdog timeout: no WATCHDOG=1 for {interval:?}");
        self.restart_unhealthy(name, reason);
    }

    // ------------------------------------------------------------------ the one reaper

    /// Every exited child of this process (services, exec probes and adopted orphans) ends here.
    fn reap(&mut self) {
        // Notifications sent before these exits come first (MAINPID= from a process that then exits).
        while let Ok(message) = self.inbox.notify.try_recv() {
            self.on_notification(message);
        }
        let queued = self
            .notify_drain
            .as_ref()
            .map(notify::drain)
            .unwrap_or_default();
        for message in queued {
            self.on_notification(message);
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.on_exit(pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.on_exit(pid, ExitStatus::Signal(sig as i32))
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break, // ECHILD: nothing left
            }
        }
        self.leftovers.forget_empty(&mut self.timers);
    }

    fn on_exit(&mut self, pid: Pid, status: ExitStatus) {
        if self.exec_probes.answer(pid, status, &mut self.timers) {
            return;
        }
        let Some(name) = self.pids.remove(&pid) else {
            debug!("reaped orphan {pid} ({})", status.describe());
            return;
        };
        self.timers.cancel(&Due::Watchdog(name.clone()));
        let Some(unit) = self.units.get_mut(&name) else {
            return;
        };
        let uptime = unit.started_at.map_or(Duration::ZERO, |t| t.elapsed());
        unit.oom_killed = unit
            .cgroup
            .as_deref()
            .is_some_and(|c| cgroups::oom_kills(c) > 0);
        unit.pid = None;
        unit.health.reset();
        let expected = unit.machine.state == State::Stopping
            || (unit.spec.oneshot && status == ExitStatus::Code(0));
        if expected {
            info!("{name} (pid {pid}) ended: {}", status.describe());
        } else {
            warn!("{name} (pid {pid}) ended: {}", status.describe());
        }
        self.dispatch(&name, Event::Exited { status, uptime });
    }

    fn kill_leftovers(&mut self, key: i32) {
        let units = &self.units;
        self.leftovers.kill(key, |pgid| {
            units
                .values()
                .any(|u| u.pid.is_some() && u.pgid == Some(pgid))
        });
    }

    // ------------------------------------------------------------------ carrying out a unit's actions

    /// Feed one event to a unit's machine and carry out what it says.
    fn dispatch(&mut self, name: &str, event: Event) {
        let jitter = self.jitter.sample();
        let Some(unit) = self.units.get_mut(name) else {
            return;
        };
        let before = unit.machine.state;
        let described = format!("{event:?}");
        let actions = unit.machine.on(event, &unit.policy, jitter);
        let after = unit.machine.state;
        if before != after {
            debug!(
                "{name}: {} -> {} on {described}",
                before.as_str(),
                after.as_str()
            );
        }
        for action in actions {
            self.perform(name, action);
        }
    }

    fn perform(&mut self, name: &str, action: Action) {
        let Some(u) = self.units.get(name) else {
            return;
        };
        match action {
            Action::Spawn => self.spawn(name),
            Action::ArmTimer(d) => self.timers.arm(Due::Unit(name.into()), Instant::now() + d),
            Action::CancelTimer => self.timers.cancel(&Due::Unit(name.into())),
            Action::SignalStop => {
                if let Some(pid) = u.pid {
                    info!(
                        "stopping {name} (pid {pid}) with {}",
                        u.stop_signal.as_str()
                    );
                    let _ = signal::kill(pid, u.stop_signal);
                }
            }
            Action::KillGroup => {
                // ESRCH just means the group is already empty; the cgroup takes what left the group.
                if let Some(pgid) = u.pgid {
                    let _ = signal::killpg(pgid, Signal::SIGKILL);
                }
                if let Some(cgroup) = &u.cgroup {
                    cgroups::kill(cgroup);
                }
            }
            Action::StopLeftovers => {
                let kill_at = Instant::now() + u.policy.stop_grace;
                let group = (u.pgid, u.cgroup.clone());
                let (stop, timers) = (u.stop_signal, &mut self.timers);
                self.leftovers.stop(name, group, stop, kill_at, timers);
            }
        }
    }

    fn spawn(&mut self, name: &str) {
        let Some(unit) = self.units.get_mut(name) else {
            return;
        };
        self.logs.retry_failed(unit);
        if let Some(unmet) = launch::unmet_condition(&unit.spec) {
            info!("skipped {name}: {unmet}");
            let reason = format!("skipped: {unmet}");
            self.pending
                .push_back((name.to_string(), Event::ConditionFailed { reason }));
            return;
        }
        let state_channel = match unit.kind {
            UnitKind::Proxy => self.reporter.connect_proxy(),
            UnitKind::Service => None,
        };
        let Some(unit) = self.units.get(name) else {
            return;
        };
        let cgroup = match self.cgroups.prepare(name, &unit.spec, spawn_seq()) {
            Ok(cgroup) => cgroup,
            Err(e) => return self.record_spawn(name, Err((None, e)), None),
        };
        let mut fds = self.listeners.fds_for(unit, &self.config);
        if let Some(fd) = &state_channel {
            fds.push((fd.as_fd(), protocol::STATE_FD_NAME.to_string()));
        }
        let result = launch::service_command(unit, fds, &self.surroundings)
            .map_err(|e| (None, e))
            .and_then(|mut cmd| {
                cmd.cgroup_procs = cgroup.as_ref().map(|(_, procs)| procs.as_fd());
                super::spawn::spawn(&cmd).map_err(|(pid, e)| (pid, e.to_string()))
            });
        drop(state_channel);
        self.record_spawn(name, result, cgroup.map(|(leaf, _)| leaf));
    }

    fn record_spawn(
        &mut self,
        name: &str,
        result: Result<Pid, (Option<Pid>, String)>,
        cgroup: Option<PathBuf>,
    ) {
        let now = Instant::now();
        let Some(unit) = self.units.get_mut(name) else {
            return;
        };
        unit.cgroup = cgroup;
        match result {
            Ok(pid) => {
                info!("started {name} (pid {pid})");
                let watchdog = unit.started(pid, now);
                self.timers
                    .set(Due::Watchdog(name.into()), watchdog.map(|w| now + w));
                self.pids.insert(pid, name.to_string());
                // A notify service cannot answer before READY=1: its probes start then (see
                // on_notification), else a first probe that fails during start-up would delay
                // readiness by a whole probe period (10 s by default).
                if !unit.spec.notify {
                    let first = health::first_probe(&unit.spec);
                    health::start_probes(unit, first, &self.probe_channels);
                }
            }
            Err((pid, e)) => {
                error!("cannot start {name}: {e}");
                unit.spawn_failed(pid, format!("cannot start: {e}"), now);
                match pid {
                    // The child exists and has exited with 127; the reaper routes its status.
                    Some(pid) => {
                        self.pids.insert(pid, name.to_string());
                    }
                    None => {
                        let (status, uptime) = (ExitStatus::Code(127), Duration::ZERO);
                        let exited = Event::Exited { status, uptime };
                        self.pending.push_back((name.to_string(), exited));
                    }
                }
            }
        }
    }

    fn restart_unit(&mut self, name: &str) {
        if let Some(u) = self.units.get_mut(name) {
            u.want_up = true;
            self.dispatch(name, Event::Restart);
        }
    }

    /// Restart after a failed liveness probe or watchdog: like a crash, through the backoff series.
    fn restart_unhealthy(&mut self, name: &str, reason: String) {
        if let Some(u) = self.units.get_mut(name) {
            u.want_up = true;
            self.dispatch(name, Event::HealthFailed { reason });
        }
    }

    // ------------------------------------------------------------------ settling

    /// After every batch of events: run queued events, start what may start, stop what must stop,
    /// advance rollouts, and tell the proxy and systemd.
    fn settle(&mut self) {
        for _ in 0..64 {
            while let Some((name, event)) = self.pending.pop_front() {
                self.dispatch(&name, event);
            }
            let changed = if self.shutdown.is_some() {
                self.schedule_shutdown()
            } else {
                self.schedule_starts()
            };
            self.advance_rollouts();
            if !changed && self.pending.is_empty() {
                break;
            }
        }
        self.drop_retired();
        self.hand_back_queued();
        self.restart_waiters.answer(&self.units, &self.rollouts);
        self.report();
    }

    /// Requests queued on the socket of a replica that will not run again at once go back to the proxy.
    fn hand_back_queued(&mut self) {
        let idle = hand_back::idle_addresses(&self.units, &self.listeners, &self.config);
        let listeners = &self.listeners;
        self.hand_back
            .watch(&idle, |addr| listeners.duplicate(addr));
    }

    /// Start units that want to be up, are stopped, and whose dependencies are ready. True if any started.
    fn schedule_starts(&mut self) -> bool {
        let mut started = false;
        for (name, waiting) in schedule::start_candidates(&self.units) {
            let start = waiting.is_none();
            if let Some(u) = self.units.get_mut(&name) {
                u.waiting_for = waiting;
            }
            if start {
                self.dispatch(&name, Event::Start);
                started = true;
            }
        }
        started
    }

    /// Stop units whose dependents are all down. Returns whether anything changed.
    fn schedule_shutdown(&mut self) -> bool {
        if self.shutdown.as_ref().is_some_and(|s| s.draining) {
            return false;
        }
        let stops = schedule::shutdown_stops(&self.config, &self.units);
        for name in &stops {
            self.dispatch(name, Event::Stop);
        }
        !stops.is_empty()
    }

    /// Units on their way out leave the table once they are down, and their sockets close.
    fn drop_retired(&mut self) {
        let gone: Vec<String> = self
            .units
            .values()
            .filter(|u| u.place == Place::Retiring && u.is_down())
            .map(|u| u.name.clone())
            .collect();
        for name in &gone {
            self.units.remove(name);
            self.timers.forget_unit(name);
        }
        if !gone.is_empty() {
            self.listeners
                .retain_used(&self.config, self.units.values());
        }
    }

    fn report(&mut self) {
        let draining = self.shutdown.is_some();
        let unhealthy = self.unhealthy();
        let state = publish::proxy_state(draining, self.units.values(), unhealthy);
        self.reporter.send_proxy_state(state);
        self.reporter.send_events(&self.units);
        let (summary, settled) = publish::stack_summary(self.units.values(), draining);
        self.reporter.send_readiness(summary, settled);
    }

    fn unhealthy(&self) -> Vec<String> {
        publish::unhealthy(self.units.values(), &self.rollouts.current_replicas())
    }

    fn publish_proxy_config(&mut self) {
        let config = publish::proxy_config(&self.config, self.units.values(), &self.facts);
        self.reporter.send_proxy_config(config);
    }

    // ------------------------------------------------------------------ shutdown

    fn finished(&self) -> Option<Outcome> {
        let shutdown = self.shutdown.as_ref().filter(|s| !s.draining)?;
        let done = self.units.values().all(|u| u.is_down()) && self.leftovers.is_empty();
        done.then_some(shutdown.outcome)
    }

    fn begin_shutdown(&mut self, outcome: Outcome) {
        if self.shutdown.is_some() {
            return;
        }
        let drain = self.config.init.shutdown_drain.0;
        info!("shutting down ({outcome:?}); draining for {drain:?}");
        systemd_notify::notify_stopping();
        self.reporter.handle.set_draining(true);
        for u in self.units.values_mut() {
            u.want_up = false;
        }
        let mut rollouts = std::mem::take(&mut self.rollouts);
        rollouts.cancel_all(&mut self.table());
        self.rollouts = rollouts;
        let draining = !drain.is_zero();
        if draining {
            self.timers.arm(Due::ShutdownDrain, Instant::now() + drain);
        }
        let deadline = Instant::now() + drain + self.config.init.shutdown_timeout.0;
        self.timers.arm(Due::ShutdownDeadline, deadline);
        self.shutdown = Some(Shutdown { outcome, draining });
    }

    /// `shutdown_timeout` has passed: whatever still runs is killed now, dependency order or not.
    fn shutdown_overdue(&mut self) {
        let Some(shutdown) = &mut self.shutdown else {
            return;
        };
        shutdown.draining = false;
        let left = schedule::still_up(&self.units);
        let limit = self.config.init.shutdown_timeout;
        warn!(
            "shutdown not done within {limit} (init.shutdown_timeout); killing what runs: {left:?}"
        );
        for name in &left {
            self.dispatch(name, Event::Stop);
            self.perform(name, Action::KillGroup);
        }
        self.leftovers.kill_all(&mut self.timers);
    }

    fn on_stop_signal(&mut self, sig: Signal) {
        if self.shutdown.is_some() {
            if !self.pid1 && sig == Signal::SIGINT {
                warn!("second interrupt: killing all services now");
                for u in self.units.values() {
                    if let Some(pgid) = u.pgid.filter(|_| u.pid.is_some()) {
                        let _ = signal::killpg(pgid, Signal::SIGKILL);
                    }
                }
            }
            return;
        }
        info!("received {}", sig.as_str());
        self.begin_shutdown(Outcome::of_shutdown(self.pid1, sig == Signal::SIGINT));
    }

    // ------------------------------------------------------------------ rollouts

    /// The rollouts' view of and hold on the unit table.
    fn table(&mut self) -> Table<'_> {
        Table {
            units: &mut self.units,
            pids: &mut self.pids,
            timers: &mut self.timers,
            logs: &mut self.logs,
            listeners: &self.listeners,
            config: &self.config,
            events: &mut self.pending,
        }
    }

    fn advance_rollouts(&mut self) {
        let mut rollouts = std::mem::take(&mut self.rollouts);
        if rollouts.advance(Instant::now(), &mut self.table()) {
            self.publish_proxy_config();
        }
        self.rollouts = rollouts;
    }

    fn cancel_rollouts(&mut self, service: &str) {
        let mut rollouts = std::mem::take(&mut self.rollouts);
        rollouts.cancel(service, &mut self.table());
        self.rollouts = rollouts;
    }

    fn start_rollout(&mut self, service: &str, replicas: Vec<String>) {
        let mut rollouts = std::mem::take(&mut self.rollouts);
        rollouts.start(service, replicas, &mut self.table());
        self.rollouts = rollouts;
    }

    // ------------------------------------------------------------------ probes and notify

    fn on_probe_result(&mut self, result: ProbeResult) {
        let channels = self.probe_channels.clone();
        reports::probe_result(&mut self.table(), &channels, result);
    }

    fn run_exec_probe(&mut self, request: ExecRequest) {
        if let Some(unit) = self.units.get(&request.unit) {
            self.exec_probes.start(unit, request, &mut self.timers);
        }
    }

    fn on_notification(&mut self, message: Notification) {
        let channels = self.probe_channels.clone();
        reports::notification(&mut self.table(), &channels, message);
    }

    // ------------------------------------------------------------------ requests

    fn handle_request(&mut self, request: Request) {
        match request {
            Request::Status { name, reply } => {
                let _ = reply.send(requests::statuses(&self.units, name.as_deref()));
            }
            Request::Control {
                name,
                action,
                wait,
                reply,
            } => match self.control(&name, action) {
                Ok(_) if wait && action == ControlAction::Restart => {
                    let rollout = self.rollouts.is_running(&name);
                    self.restart_waiters.wait(name, rollout, reply);
                }
                result => {
                    let _ = reply.send(result);
                }
            },
            Request::Reload { reply } => {
                let _ = reply.send(self.reload());
            }
            Request::Diff { source, reply } => {
                let (path, stopping) = (self.config_path.as_deref(), self.shutdown.is_some());
                let _ = reply.send(dry_run::answer(
                    &self.config,
                    path,
                    &self.units,
                    stopping,
                    source,
                ));
            }
            Request::Shutdown { reboot, reply } => {
                let outcome = Outcome::of_shutdown(self.pid1, reboot);
                self.begin_shutdown(outcome);
                let message = format!("shutting down ({outcome:?})");
                let _ = reply.send(Ok(ActionReply { ok: true, message }));
            }
            Request::Facts { reply } => {
                let _ = reply.send(Ok(super::handle::InstanceInfo {
                    facts: self.facts.clone(),
                    unhealthy: self.unhealthy(),
                    user_data: requests::user_data(&self.config),
                }));
            }
            Request::Logs {
                name,
                stream,
                reply,
            } => {
                let _ = reply.send(requests::log_source(&self.units, &name, stream));
            }
        }
    }

    fn control(&mut self, name: &str, action: ControlAction) -> Result<ActionReply, ApiError> {
        if self.shutdown.is_some() {
            return Err(ApiError::conflict("shutting down"));
        }
        let names = requests::select(&self.units, name)?;
        let message = match action {
            ControlAction::Start => self.start_units(name, &names),
            ControlAction::Stop => {
                self.cancel_rollouts(name);
                for n in &names {
                    if let Some(u) = self.units.get_mut(n) {
                        u.want_up = false;
                    }
                    self.dispatch(n, Event::Stop);
                }
                format!("{name}: stopping")
            }
            ControlAction::Restart if names.len() == 1 => {
                self.cancel_rollouts(name);
                self.restart_unit(&names[0]);
                format!("{name}: restarting")
            }
            ControlAction::Restart => {
                let count = names.len();
                self.start_rollout(name, names);
                format!("{name}: rolling restart of {count} replicas")
            }
        };
        Ok(ActionReply { ok: true, message })
    }

    /// `stackinit start`: units that gave up or wait start afresh, once their dependencies are ready.
    fn start_units(&mut self, name: &str, names: &[String]) -> String {
        for n in names {
            if let Some(u) = self.units.get_mut(n) {
                u.want_up = true;
                self.dispatch(n, Event::Reset);
            }
        }
        self.schedule_starts();
        let waiting = names
            .iter()
            .find_map(|n| self.units.get(n)?.waiting_for.clone());
        match waiting {
            Some(w) => format!("{name}: start queued, waiting for {w}"),
            None => format!("{name}: started"),
        }
    }

    /// Drain every log pipe into its file before the runtime stops, so the last lines are not lost.
    async fn close_logs(&mut self) {
        self.units.clear();
        self.cgroups.remove_all().await;
        if let Some(w) = self.reporter.proxy_writer.take() {
            w.abort();
        }
        self.logs.close().await;
    }

    fn reopen_logs(&mut self) {
        info!("reopening log files");
        self.logs.reopen();
    }

    // ------------------------------------------------------------------ reload

    fn reload_on_sighup(&mut self) {
        match self.reload() {
            Ok(r) => info!("reloaded on SIGHUP: {}", reload::summary(&r)),
            Err(e) => error!(
                "reload on SIGHUP failed, keeping the running config:\n{}",
                e.message
            ),
        }
    }

    /// Re-read the config and apply the difference. A bad config changes nothing.
    pub fn reload(&mut self) -> Result<ReloadReply, ApiError> {
        systemd_notify::notify_reloading();
        let result = self.reload_inner();
        self.settle();
        systemd_notify::notify_ready(&self.reporter.last_summary);
        result
    }

    fn reload_inner(&mut self) -> Result<ReloadReply, ApiError> {
        if self.shutdown.is_some() {
            return Err(ApiError::conflict("shutting down"));
        }
        let new = dry_run::new_config(self.config_path.as_deref(), None)?;
        let fresh = build::units_for_config(&new, &mut self.logs);
        let plan = reload::plan(&self.config, &new, &self.units, &fresh);
        if plan.init_changed {
            warn!("[init] changes take effect at the next boot");
        }
        self.config = new;
        self.surroundings.facts = self.facts.environment(&self.config);
        let old = std::mem::take(&mut self.units);
        let (units, forgotten) = reload::apply(&plan, old, fresh);
        self.units = units;
        for name in forgotten {
            self.timers.forget_unit(&name);
        }
        listeners::reassign_replica_addresses(&self.config, &mut self.units);
        self.bind_listeners();
        self.replace_processes(&plan);
        self.publish_proxy_config();
        self.listeners
            .retain_used(&self.config, self.units.values());
        Ok(plan.reply)
    }

    /// Processes the reload took over or retired are stopped, restarted or rolled.
    fn replace_processes(&mut self, plan: &reload::ReloadPlan) {
        for (name, fate) in &plan.fates {
            match fate {
                Fate::Retire | Fate::TakeOver(Then::Stop) => self.dispatch(name, Event::Stop),
                Fate::TakeOver(Then::Restart) => self.restart_unit(name),
                Fate::Keep | Fate::Replace | Fate::TakeOver(Then::Roll) => {}
            }
        }
        for (service, replicas) in plan.rollouts(&self.units) {
            self.start_rollout(&service, replicas);
        }
    }
}
