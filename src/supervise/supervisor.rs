//! The supervisor: one event loop that owns every unit's state machine, the one reaper, the listeners
//! and the logs. Other tasks talk to it only through its mailbox (`handle::Request`).
//!
//! The loop sleeps until a signal, a request or the earliest unit timer; an idle stack wakes zero times.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal as unix_signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::handle::{Action as ControlAction, LogSource, LogStream, Request};
use super::launch;
use super::notify::{self, Notification};
use super::probes::{self, Check, ExecRequest, ProbeKind, ProbeResult, Verdict};
use super::proxy_link::ProxyFeeds;
use super::sockets::{self, ListenAddr, Listener};
use super::state::{Event, ExitStatus, Machine, Policy, State};
use super::unit::{Unit, UnitKind};
use super::{Outcome, RunOptions};
use crate::config::{Config, ServiceSpec};
use crate::control::api::{ActionReply, ApiError, ReloadReply, ServiceStatus};
use crate::logs::ServiceLog;
use crate::proxy::protocol::{self, ProxyRuntimeConfig, ProxyState, UpstreamReplica};

pub const PROXY_UNIT: &str = "proxy";

/// Shutdown in progress: drain first, then stop in reverse dependency order.
struct Shutdown {
    outcome: Outcome,
    drain_until: Option<Instant>,
}

/// A rolling restart: replicas are replaced one at a time, each waiting for the previous to be ready.
struct Rollout {
    service: String,
    pending: VecDeque<String>,
    /// The replica being replaced, and the pid it had before.
    current: Option<(String, Option<Pid>)>,
    /// Its successor, started beside it on the service's free socket (`NAME@N.next`), if there is one.
    successor: Option<String>,
    /// The new process must be ready by then, or the rollout halts.
    deadline: Option<Instant>,
}

/// The suffix of a surge successor's name while the replica it replaces still runs.
const SUCCESSOR_SUFFIX: &str = ".next";

/// How long a replica is out of routing before a rolling restart stops it: enough for the proxy to hear
/// it is not ready and stop sending it new requests, so only in-flight ones reach the stopping process.
const ROLLOUT_DRAIN: Duration = Duration::from_millis(300);

pub struct Supervisor {
    opts_pid1: bool,
    config: Config,
    config_path: Option<PathBuf>,
    units: BTreeMap<String, Unit>,
    pids: HashMap<Pid, String>,
    logs: HashMap<PathBuf, Rc<ServiceLog>>,
    listeners: HashMap<String, Rc<Listener>>,
    proxy_feeds: ProxyFeeds,
    proxy_writer: Option<JoinHandle<()>>,
    shutdown: Option<Shutdown>,
    rollouts: Vec<Rollout>,
    /// Process groups whose main process died on its own, told to stop and SIGKILLed when their grace
    /// period ends (`Action::StopLeftovers`).
    leftovers: Vec<Leftover>,
    pending: VecDeque<(String, Event)>,
    rng: u64,
    requests: mpsc::UnboundedReceiver<Request>,
    stack_ready_sent: bool,
    probe_tx: mpsc::UnboundedSender<ProbeResult>,
    probe_rx: mpsc::UnboundedReceiver<ProbeResult>,
    exec_tx: mpsc::UnboundedSender<ExecRequest>,
    exec_rx: mpsc::UnboundedReceiver<ExecRequest>,
    /// Exec probes in flight: the reaper answers them.
    exec_waiters: HashMap<Pid, (tokio::sync::oneshot::Sender<Result<(), String>>, Instant)>,
    notify_tx: mpsc::UnboundedSender<Notification>,
    notify_rx: mpsc::UnboundedReceiver<Notification>,
    notify_path: Option<PathBuf>,
    /// A second handle on the notify socket, read by the reaper (`notify::drain`).
    notify_drain: Option<OwnedFd>,
    facts: crate::facts::Facts,
    /// Our own mailbox handle, to publish the draining flag that `status` reports.
    handle: super::handle::Handle,
    /// What was last published on the event stream per unit, to send only changes.
    published: HashMap<String, ServiceStatus>,
    /// The last STATUS= sent to systemd, so it is sent only when it changes.
    last_summary: String,
    /// When the next WATCHDOG=1 to systemd is due (half of its WATCHDOG_USEC).
    systemd_watchdog: Option<(Duration, Instant)>,
    power_button: Option<mpsc::UnboundedReceiver<()>>,
}

/// What is left of a unit's process group after its main process died on its own.
struct Leftover {
    unit: String,
    pgid: Pid,
    kill_at: Instant,
}

fn rng_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ ((std::process::id() as u64) << 32) | 1
}

impl Supervisor {
    pub fn new(
        opts: RunOptions,
        handle: super::handle::Handle,
        requests: mpsc::UnboundedReceiver<Request>,
    ) -> Supervisor {
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        let (exec_tx, exec_rx) = mpsc::unbounded_channel();
        let (notify_tx, notify_rx) = mpsc::unbounded_channel();
        Supervisor {
            probe_tx,
            probe_rx,
            exec_tx,
            exec_rx,
            exec_waiters: HashMap::new(),
            notify_tx,
            notify_rx,
            notify_path: None,
            notify_drain: None,
            facts: Default::default(),
            handle,
            published: HashMap::new(),
            last_summary: String::new(),
            systemd_watchdog: None,
            power_button: None,
            opts_pid1: opts.pid1,
            config: opts.config,
            config_path: opts.config_path,
            units: BTreeMap::new(),
            pids: HashMap::new(),
            logs: HashMap::new(),
            listeners: HashMap::new(),
            proxy_feeds: ProxyFeeds::new(),
            proxy_writer: None,
            shutdown: None,
            rollouts: Vec::new(),
            leftovers: Vec::new(),
            pending: VecDeque::new(),
            rng: rng_seed(),
            requests,
            stack_ready_sent: false,
        }
    }

    /// A number in [-1, 1] for backoff jitter (xorshift; quality does not matter here).
    fn jitter(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 2001) as f64 / 1000.0 - 1.0
    }

    // ------------------------------------------------------------------ building units from config

    fn log_for(&mut self, path: PathBuf, max_bytes: u64, backups: u32) -> Rc<ServiceLog> {
        if let Some(log) = self.logs.get(&path) {
            log.set_limits(max_bytes, backups);
            return log.clone();
        }
        let log = match ServiceLog::open(&path, max_bytes, backups) {
            Ok(log) => Rc::new(log),
            Err(e) => {
                error!("cannot open log {}: {e}; using /dev/null", path.display());
                // No size limit: /dev/null must never be rotated. If even this fails (no fds, no runtime),
                // supervision cannot go on; the panic ends in init's reap-only fallback, which is the designed
                // way out (an abort would skip it and, as PID 1, panic the kernel).
                match ServiceLog::open(Path::new("/dev/null"), 0, 0) {
                    Ok(log) => Rc::new(log),
                    Err(e) => panic!("cannot open any log pipe, not even for /dev/null: {e}"),
                }
            }
        };
        self.logs.insert(path, log.clone());
        log
    }

    /// The units a service spec expands to (one per replica).
    fn make_units(&mut self, name: &str, spec: Rc<ServiceSpec>, kind: UnitKind) -> Vec<Unit> {
        let replicas = if kind == UnitKind::Proxy {
            1
        } else {
            spec.replicas.max(1)
        };
        let logs_dir = self.config.init.logs_dir.clone();
        let addresses: Vec<Vec<String>> = {
            let lists: Vec<Vec<String>> = match &spec.listen {
                Some(l) => l
                    .to_vec()
                    .iter()
                    .map(|a| sockets::replica_addresses(a, replicas))
                    .collect(),
                None => vec![],
            };
            (0..replicas as usize)
                .map(|i| lists.iter().filter_map(|l| l.get(i).cloned()).collect())
                .collect()
        };
        let mut units = Vec::new();
        for i in 0..replicas {
            let unit_name = if replicas > 1 {
                format!("{name}@{i}")
            } else {
                name.to_string()
            };
            let (out_default, err_default) = if kind == UnitKind::Proxy {
                let access = self
                    .config
                    .proxy
                    .as_ref()
                    .and_then(|p| p.access_log.clone())
                    .unwrap_or_else(|| logs_dir.join("access.log"));
                (access, logs_dir.join("proxy.err.log"))
            } else {
                (
                    logs_dir.join(format!("{unit_name}.out.log")),
                    logs_dir.join(format!("{unit_name}.err.log")),
                )
            };
            let stdout_path = spec.stdout.clone().unwrap_or(out_default);
            let stderr_path = spec.stderr.clone().unwrap_or(err_default);
            let stdout = self.log_for(stdout_path, spec.log_max_bytes.0, spec.log_backups);
            let stderr = self.log_for(stderr_path, spec.log_max_bytes.0, spec.log_backups);
            units.push(Unit {
                name: unit_name,
                service: name.to_string(),
                replica: (replicas > 1).then_some(i),
                kind,
                policy: Policy::from_spec(&spec),
                stop_signal: crate::config::values::parse_signal(&spec.stop_signal)
                    .unwrap_or(Signal::SIGTERM),
                machine: Machine::default(),
                want_up: spec.autostart,
                pid: None,
                pgid: None,
                started_at: None,
                timer: None,
                listen: addresses.get(i as usize).cloned().unwrap_or_default(),
                stdout,
                stderr,
                spawn_error: None,
                waiting_for: None,
                retired: false,
                surge: false,
                drain_until: None,
                health: Default::default(),
                spec: spec.clone(),
            });
        }
        units
    }

    /// All units the config asks for, keyed by unit name.
    fn units_for_config(&mut self) -> BTreeMap<String, Unit> {
        let mut out = BTreeMap::new();
        let services: Vec<(String, ServiceSpec)> = self
            .config
            .service
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, spec) in services {
            for u in self.make_units(&name, Rc::new(spec), UnitKind::Service) {
                out.insert(u.name.clone(), u);
            }
        }
        if let Some(proxy) = self.config.proxy.clone() {
            let spec = launch::proxy_service_spec(&proxy);
            for u in self.make_units(PROXY_UNIT, Rc::new(spec), UnitKind::Proxy) {
                out.insert(u.name.clone(), u);
            }
        }
        out
    }

    /// Bind every listen address the config names that is not bound yet; returns failures by address.
    fn bind_listeners(&mut self) -> HashMap<String, String> {
        let mut failures = HashMap::new();
        let mut wanted: Vec<(String, sockets::UnixPerms)> = Vec::new();
        let proxy_group = self
            .config
            .proxy
            .as_ref()
            .and_then(|p| launch::primary_gid(&p.user, p.group.as_deref()));
        for unit in self.units.values() {
            let mode = u32::from_str_radix(unit.spec.listen_mode.trim_start_matches("0o"), 8)
                .unwrap_or(0o660);
            let owner = unit.spec.user.as_deref().and_then(launch::uid_of);
            // The proxy connects to app sockets as its own user, so the socket's group is the proxy's.
            let group = proxy_group.or_else(|| unit.spec.group.as_deref().and_then(launch::gid_of));
            for addr in &unit.listen {
                wanted.push((addr.clone(), sockets::UnixPerms { owner, group, mode }));
            }
        }
        if let Some(proxy) = &self.config.proxy {
            for addr in proxy
                .listen
                .iter()
                .chain(proxy.tls.iter().flat_map(|t| t.listen.iter()))
            {
                wanted.push((
                    addr.clone(),
                    sockets::UnixPerms {
                        owner: None,
                        group: None,
                        mode: 0o666,
                    },
                ));
            }
        }
        // The spare socket of each replicated service, for rolling restarts that start the new process
        // before stopping the old. Optional: one that collides with another address or cannot be bound
        // only means that service's rollouts stop each replica before starting its successor.
        let mut spares: Vec<(String, sockets::UnixPerms)> = Vec::new();
        for (service, pools) in self.replica_address_pools() {
            let Some(spec) = self.config.service.get(&service) else {
                continue;
            };
            let mode =
                u32::from_str_radix(spec.listen_mode.trim_start_matches("0o"), 8).unwrap_or(0o660);
            let owner = spec.user.as_deref().and_then(launch::uid_of);
            let group = proxy_group.or_else(|| spec.group.as_deref().and_then(launch::gid_of));
            for addr in pools.into_iter().flatten() {
                if !wanted.iter().any(|(a, _)| *a == addr) {
                    spares.push((addr, sockets::UnixPerms { owner, group, mode }));
                }
            }
        }
        let claimed_elsewhere = |addr: &str| {
            let mut others = self.config.service.values().flat_map(|s| {
                s.listen
                    .iter()
                    .flat_map(|l| l.to_vec())
                    .flat_map(move |a| sockets::replica_addresses(&a, s.replicas.max(1)))
            });
            others.any(|a| a == addr)
        };
        for (addr, perms) in spares {
            if self.listeners.contains_key(&addr) || claimed_elsewhere(&addr) {
                continue;
            }
            let bound = ListenAddr::parse(&addr)
                .map_err(|e| e.to_string())
                .and_then(|parsed| sockets::bind(&parsed, perms).map_err(|e| e.to_string()));
            match bound {
                Ok(listener) => {
                    debug!("bound spare {addr}");
                    self.listeners.insert(addr, Rc::new(listener));
                }
                Err(e) => warn!(
                    "cannot bind the spare socket {addr} ({e}); rolling restarts will stop each replica before starting the new one"
                ),
            }
        }
        for (addr, perms) in wanted {
            if self.listeners.contains_key(&addr) {
                continue;
            }
            let result = ListenAddr::parse(&addr)
                .map_err(|e| e.to_string())
                .and_then(|parsed| {
                    sockets::bind(&parsed, perms).map_err(|e| format!("cannot bind {addr}: {e}"))
                });
            match result {
                Ok(listener) => {
                    debug!("bound {addr}");
                    self.listeners.insert(addr, Rc::new(listener));
                }
                Err(e) => {
                    error!("{e}");
                    failures.insert(addr, e);
                }
            }
        }
        failures
    }

    // ------------------------------------------------------------------ the loop

    pub async fn run(mut self) -> Outcome {
        if !self.opts_pid1 {
            if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                warn!("cannot become a child subreaper ({e}); orphans of services will escape");
            }
        }
        // Signal streams first: a child that dies before the SIGCHLD handler exists would otherwise linger.
        let mut sigchld = match unix_signal(SignalKind::child()) {
            Ok(s) => s,
            Err(e) => {
                error!("cannot watch SIGCHLD: {e}");
                return Outcome::Exit(1);
            }
        };
        let mut sigterm = unix_signal(SignalKind::terminate()).ok();
        let mut sigint = unix_signal(SignalKind::interrupt()).ok();
        let mut sighup = unix_signal(SignalKind::hangup()).ok();
        let mut sigusr1 = unix_signal(SignalKind::user_defined1()).ok();
        let mut sigpwr = unix_signal(SignalKind::from_raw(libc::SIGPWR)).ok();

        if crate::init::power_button::wanted(self.opts_pid1) {
            let (tx, rx) = mpsc::unbounded_channel();
            crate::init::power_button::spawn_watcher(tx);
            self.power_button = Some(rx);
        }
        self.systemd_watchdog =
            super::hooks::watchdog_interval().map(|every| (every, Instant::now()));
        let notify_path = self.config.init.control_socket.parent().map_or_else(
            || PathBuf::from("/run/stackinit/service-notify.sock"),
            |d| d.join("service-notify.sock"),
        );
        match notify::serve(&notify_path, self.notify_tx.clone()) {
            Ok((p, drain)) => {
                self.notify_path = Some(p);
                self.notify_drain = Some(drain);
            }
            Err(e) => warn!(
                "no notify socket at {}: {e}; `notify = true` services will never be ready",
                notify_path.display()
            ),
        }
        self.facts = crate::facts::discover(&self.config.init.imds).await;
        self.units = self.units_for_config();
        let failures = self.bind_listeners();
        self.mark_bind_failures(&failures);
        self.publish_proxy_config();
        info!("supervising {} units", self.units.len());
        self.settle();

        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                _ = sigchld.recv() => self.reap(),
                Some(()) = recv_signal(&mut sigterm) => self.on_stop_signal(Signal::SIGTERM),
                Some(()) = recv_signal(&mut sigint) => self.on_stop_signal(Signal::SIGINT),
                Some(()) = recv_signal(&mut sigpwr) => self.on_stop_signal(Signal::SIGPWR),
                Some(()) = recv_signal(&mut sighup) => {
                    match self.reload() {
                        Ok(r) => info!("reloaded on SIGHUP: {} added, {} removed, {} changed", r.added.len(), r.removed.len(), r.changed.len()),
                        Err(e) => error!("reload on SIGHUP failed, keeping the running config:\n{}", e.message),
                    }
                }
                Some(()) = recv_signal(&mut sigusr1) => self.reopen_logs(),
                Some(request) = self.requests.recv() => self.handle_request(request),
                Some(result) = self.probe_rx.recv() => self.on_probe_result(result),
                Some(request) = self.exec_rx.recv() => self.run_exec_probe(request),
                Some(message) = self.notify_rx.recv() => self.on_notification(message),
                Some(()) = recv_press(&mut self.power_button) => {
                    info!("power button pressed");
                    self.on_stop_signal(Signal::SIGPWR);
                }
                _ = sleep_until(deadline), if deadline.is_some() => self.fire_timers(),
            }
            self.settle();
            if self.finished() {
                let outcome = self
                    .shutdown
                    .as_ref()
                    .map_or(Outcome::Exit(0), |s| s.outcome);
                info!("all services stopped");
                self.close_logs().await;
                return outcome;
            }
        }
    }

    fn mark_bind_failures(&mut self, failures: &HashMap<String, String>) {
        for unit in self.units.values_mut() {
            if let Some(e) = unit.listen.iter().find_map(|a| failures.get(a)) {
                unit.machine.state = State::Fatal;
                unit.machine.reason = Some(e.clone());
            }
        }
        if let (Some(proxy), Some(unit)) = (&self.config.proxy, self.units.get_mut(PROXY_UNIT)) {
            let all = proxy
                .listen
                .iter()
                .chain(proxy.tls.iter().flat_map(|t| t.listen.iter()));
            if let Some(e) = all.into_iter().find_map(|a| failures.get(a)) {
                unit.machine.state = State::Fatal;
                unit.machine.reason = Some(e.clone());
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let units = self.units.values().filter_map(|u| u.timer);
        let watchdogs = self
            .units
            .values()
            .filter_map(|u| u.health.watchdog_deadline);
        let execs = self.exec_waiters.values().map(|(_, t)| *t);
        let drain = self.shutdown.as_ref().and_then(|s| s.drain_until);
        let drains = self.units.values().filter_map(|u| u.drain_until);
        let rollouts = self.rollouts.iter().filter_map(|r| r.deadline);
        let systemd = self.systemd_watchdog.map(|(_, due)| due);
        let leftovers = self.leftovers.iter().map(|l| l.kill_at);
        let drain = drain
            .into_iter()
            .chain(drains)
            .chain(rollouts)
            .chain(systemd)
            .chain(leftovers);
        units.chain(watchdogs).chain(execs).chain(drain).min()
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        if let Some((every, due)) = self.systemd_watchdog {
            if due <= now {
                super::hooks::watchdog();
                self.systemd_watchdog = Some((every, now + every));
            }
        }
        let drained: Vec<String> = self
            .units
            .values_mut()
            .filter(|u| u.drain_until.is_some_and(|t| t <= now))
            .map(|u| {
                u.drain_until = None;
                u.name.clone()
            })
            .collect();
        for name in drained {
            // A replica whose successor is ready stops for good; any other drained one restarts.
            if self.units.get(&name).is_some_and(|u| u.retired) {
                self.dispatch(&name, Event::Stop);
            } else {
                self.restart_unit(&name);
            }
        }
        self.halt_overdue_rollouts(now);
        self.kill_overdue_leftovers(now);
        if let Some(s) = &mut self.shutdown {
            if s.drain_until.is_some_and(|t| t <= now) {
                s.drain_until = None;
                info!("drain period over; stopping services");
            }
        }
        let due: Vec<(String, State)> = self
            .units
            .values_mut()
            .filter(|u| u.timer.is_some_and(|t| t <= now))
            .map(|u| {
                u.timer = None;
                (u.name.clone(), u.machine.state)
            })
            .collect();
        let expired: Vec<Pid> = self
            .exec_waiters
            .iter()
            .filter(|(_, (_, t))| *t <= now)
            .map(|(p, _)| *p)
            .collect();
        for pid in expired {
            if let Some((reply, _)) = self.exec_waiters.remove(&pid) {
                let _ = signal::killpg(pid, Signal::SIGKILL);
                let _ = reply.send(Err("exec probe timed out".into()));
                // Its exit is still reaped; with no waiter left it is logged as an orphan.
            }
        }
        let starved: Vec<(String, Duration)> = self
            .units
            .values_mut()
            .filter(|u| u.health.watchdog_deadline.is_some_and(|t| t <= now))
            .map(|u| {
                u.health.watchdog_deadline = None;
                (u.name.clone(), u.health.watchdog.unwrap_or_default())
            })
            .collect();
        for (name, interval) in starved {
            warn!("{name}: watchdog timeout (no WATCHDOG=1 for {interval:?}); restarting");
            if let Some(u) = self.units.get_mut(&name) {
                u.machine.reason =
                    Some(format!("watchdog timeout: no WATCHDOG=1 for {interval:?}"));
            }
            self.restart_unhealthy(&name);
        }
        for (name, state) in due {
            let event = match state {
                State::Starting => Event::StartSecsElapsed,
                State::Backoff => Event::BackoffElapsed,
                State::Stopping => Event::GraceElapsed,
                _ => continue,
            };
            self.dispatch(&name, event);
        }
    }

    /// The one reaper: every exited child of this process (services and adopted orphans) ends here.
    fn reap(&mut self) {
        // Notifications sent before these exits come first (MAINPID= from a process that then exits).
        while let Ok(message) = self.notify_rx.try_recv() {
            self.on_notification(message);
        }
        if let Some(fd) = &self.notify_drain {
            for message in notify::drain(fd) {
                self.on_notification(message);
            }
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
        // A group whose last process has just been reaped needs no SIGKILL later.
        self.leftovers
            .retain(|l| signal::killpg(l.pgid, None).is_ok());
    }

    fn kill_overdue_leftovers(&mut self, now: Instant) {
        let (overdue, waiting) = std::mem::take(&mut self.leftovers)
            .into_iter()
            .partition(|l| l.kill_at <= now);
        self.leftovers = waiting;
        for l in overdue {
            // Once empty, a group's number may be taken by a unit started since; never kill that one.
            if self
                .units
                .values()
                .any(|u| u.pid.is_some() && u.pgid == Some(l.pgid))
            {
                continue;
            }
            if signal::killpg(l.pgid, Signal::SIGKILL).is_ok() {
                warn!(
                    "{}: processes left in group {} did not stop within the grace period; killed",
                    l.unit, l.pgid
                );
            }
        }
    }

    fn on_exit(&mut self, pid: Pid, status: ExitStatus) {
        if let Some((reply, _)) = self.exec_waiters.remove(&pid) {
            let _ = signal::killpg(pid, Signal::SIGKILL);
            let _ = reply.send(match status {
                ExitStatus::Code(0) => Ok(()),
                other => Err(format!("exec probe: {}", other.describe())),
            });
            return;
        }
        let Some(name) = self.pids.remove(&pid) else {
            debug!("reaped orphan {pid} ({})", status.describe());
            return;
        };
        let Some(unit) = self.units.get_mut(&name) else {
            return;
        };
        let uptime = unit.started_at.map_or(Duration::ZERO, |t| t.elapsed());
        unit.pid = None;
        unit.health.reset();
        let expected = unit.machine.state == State::Stopping
            || (unit.spec.oneshot && status == ExitStatus::Code(0));
        if !expected {
            warn!("{name} (pid {pid}) ended: {}", status.describe());
        } else {
            info!("{name} (pid {pid}) ended: {}", status.describe());
        }
        self.dispatch(&name, Event::Exited { status, uptime });
    }

    /// Feed one event to a unit's machine and carry out what it says.
    fn dispatch(&mut self, name: &str, event: Event) {
        let jitter = self.jitter();
        let Some(unit) = self.units.get_mut(name) else {
            return;
        };
        let before = unit.machine.state;
        let actions = unit.machine.on(event, &unit.policy, jitter);
        let after = unit.machine.state;
        if before != after {
            debug!(
                "{name}: {} -> {} on {event:?}",
                before.as_str(),
                after.as_str()
            );
        }
        for action in actions {
            self.perform(name, action);
        }
    }

    fn perform(&mut self, name: &str, action: super::state::Action) {
        use super::state::Action as A;
        match action {
            A::Spawn => self.spawn(name),
            A::ArmTimer(d) => {
                if let Some(u) = self.units.get_mut(name) {
                    u.timer = Some(Instant::now() + d);
                }
            }
            A::CancelTimer => {
                if let Some(u) = self.units.get_mut(name) {
                    u.timer = None;
                }
            }
            A::SignalStop => {
                if let Some(u) = self.units.get(name) {
                    if let Some(pid) = u.pid {
                        info!(
                            "stopping {name} (pid {pid}) with {}",
                            u.stop_signal.as_str()
                        );
                        let _ = signal::kill(pid, u.stop_signal);
                    }
                }
            }
            A::KillGroup => {
                if let Some(u) = self.units.get(name) {
                    if let Some(pgid) = u.pgid {
                        // ESRCH just means the group is already empty.
                        let _ = signal::killpg(pgid, Signal::SIGKILL);
                    }
                }
            }
            A::StopLeftovers => {
                let Some(u) = self.units.get(name) else {
                    return;
                };
                let Some(pgid) = u.pgid else {
                    return;
                };
                // ESRCH: the main process was alone; nothing is left to stop.
                if signal::killpg(pgid, u.stop_signal).is_ok() {
                    info!(
                        "{name}: main process gone; stopping what is left of group {pgid} with {}",
                        u.stop_signal.as_str()
                    );
                    self.leftovers.push(Leftover {
                        unit: name.to_string(),
                        pgid,
                        kill_at: Instant::now() + u.policy.stop_grace,
                    });
                }
            }
        }
    }

    fn spawn(&mut self, name: &str) {
        let Some(unit) = self.units.get_mut(name) else {
            return;
        };
        if let Some(unmet) = unmet_condition(&unit.spec) {
            info!("skipped {name}: {unmet}");
            unit.machine.reason = Some(format!("skipped: {unmet}"));
            self.pending
                .push_back((name.to_string(), Event::ConditionFailed));
            return;
        }
        let Some(unit) = self.units.get(name) else {
            return;
        };
        let mut extra: Vec<(OwnedFd, String)> = Vec::new();
        if unit.kind == UnitKind::Proxy {
            match self.proxy_feeds.connect() {
                Ok((fd, task)) => {
                    if let Some(old) = self.proxy_writer.replace(task) {
                        old.abort();
                    }
                    extra.push((fd, protocol::STATE_FD_NAME.to_string()));
                }
                Err(e) => error!("cannot create the proxy's state channel: {e}"),
            }
        }
        let mut fds: Vec<(std::os::fd::BorrowedFd<'_>, String)> = Vec::new();
        match unit.kind {
            UnitKind::Service => {
                for addr in &unit.listen {
                    if let Some(l) = self.listeners.get(addr) {
                        fds.push((l.fd.as_fd(), unit.service.clone()));
                    }
                }
            }
            UnitKind::Proxy => {
                if let Some(proxy) = &self.config.proxy {
                    for addr in &proxy.listen {
                        if let Some(l) = self.listeners.get(addr) {
                            fds.push((l.fd.as_fd(), protocol::HTTP_FD_NAME.to_string()));
                        }
                    }
                    for addr in proxy.tls.iter().flat_map(|t| t.listen.iter()) {
                        if let Some(l) = self.listeners.get(addr) {
                            fds.push((l.fd.as_fd(), protocol::HTTPS_FD_NAME.to_string()));
                        }
                    }
                }
            }
        }
        for (fd, n) in &extra {
            fds.push((fd.as_fd(), n.clone()));
        }
        let notify_path = self.notify_path.clone();
        let facts_env = self.facts.environment();
        let result = launch::command_for(unit, fds)
            .map_err(|e| (None, e))
            .and_then(|mut cmd| {
                // Instance facts, unless the service's own `environment` sets the same variable.
                let own = &unit.spec.environment;
                cmd.env
                    .retain(|(k, _)| own.contains_key(k) || !facts_env.iter().any(|(f, _)| f == k));
                cmd.env.extend(
                    facts_env
                        .iter()
                        .filter(|(k, _)| !own.contains_key(k))
                        .cloned(),
                );
                if let Some(p) = &notify_path {
                    cmd.env
                        .push(("NOTIFY_SOCKET".into(), p.display().to_string()));
                }
                if let Some(w) = unit.spec.watchdog {
                    cmd.env
                        .push(("WATCHDOG_USEC".into(), w.0.as_micros().to_string()));
                }
                super::spawn::spawn(&cmd).map_err(|(pid, e)| (pid, e.to_string()))
            });
        drop(extra);
        let now = Instant::now();
        let Some(unit) = self.units.get_mut(name) else {
            return;
        };
        match result {
            Ok(pid) => {
                info!("started {name} (pid {pid})");
                unit.pid = Some(pid);
                unit.pgid = Some(pid);
                unit.started_at = Some(now);
                unit.spawn_error = None;
                unit.health.reset();
                unit.health.watchdog = unit.spec.watchdog.map(|w| w.0);
                // As systemd: a notify service's watchdog runs from READY=1 (start-up may take longer
                // than one watchdog period); any other service's from the start.
                unit.health.watchdog_deadline = unit
                    .health
                    .watchdog
                    .filter(|_| !unit.spec.notify)
                    .map(|w| now + w);
                self.pids.insert(pid, name.to_string());
                // A notify service cannot answer before READY=1: its probes start then (see
                // on_notification), else a first probe that fails during start-up would delay
                // readiness by a whole probe period (10 s by default).
                if let Some(first) = (!unit.spec.notify).then(|| Self::first_probe(&unit.spec)) {
                    self.start_probes(name, first);
                }
            }
            Err((Some(pid), e)) => {
                // The child exists and has exited with 127; the reaper routes its status.
                error!("cannot start {name}: {e}");
                unit.pid = Some(pid);
                unit.pgid = None;
                unit.started_at = Some(now);
                unit.spawn_error = Some(format!("cannot start: {e}"));
                self.pids.insert(pid, name.to_string());
            }
            Err((None, e)) => {
                error!("cannot start {name}: {e}");
                unit.pgid = None;
                unit.spawn_error = Some(format!("cannot start: {e}"));
                self.pending.push_back((
                    name.to_string(),
                    Event::Exited {
                        status: ExitStatus::Code(127),
                        uptime: Duration::ZERO,
                    },
                ));
            }
        }
    }

    // ------------------------------------------------------------------ scheduling

    /// After every batch of events: run queued events, start what may start, stop what must stop,
    /// advance rollouts, and tell the proxy and systemd.
    fn settle(&mut self) {
        for _ in 0..64 {
            while let Some((name, event)) = self.pending.pop_front() {
                self.dispatch(&name, event);
            }
            let started = if self.shutdown.is_some() {
                self.schedule_shutdown()
            } else {
                self.schedule_starts()
            };
            self.advance_rollouts();
            if !started && self.pending.is_empty() {
                break;
            }
        }
        let before = self.units.len();
        self.units.retain(|_, u| !(u.retired && u.is_down()));
        if self.units.len() != before {
            self.drop_unused_listeners();
        }
        self.publish_proxy_state();
        self.publish_events();
        self.report_stack_readiness();
    }

    /// Send the status of every unit that changed since the last call (uptime does not count).
    fn publish_events(&mut self) {
        let now = Instant::now();
        for unit in self.units.values() {
            let mut status = unit.status(now);
            let uptime = status.uptime_secs.take();
            if self.published.get(&unit.name) != Some(&status) {
                self.published.insert(unit.name.clone(), status.clone());
                status.uptime_secs = uptime;
                self.handle.publish_event(status);
            }
        }
        self.published
            .retain(|name, _| self.units.contains_key(name));
    }

    fn deps_waiting(&self, unit: &Unit) -> Option<String> {
        let waiting: Vec<&str> = unit
            .spec
            .after
            .iter()
            .filter(|dep| {
                let mut replicas = self
                    .units
                    .values()
                    .filter(|u| &u.service == *dep && !u.surge && !u.retired)
                    .peekable();
                replicas.peek().is_none() || !replicas.all(|u| u.is_ready())
            })
            .map(|s| s.as_str())
            .collect();
        (!waiting.is_empty()).then(|| waiting.join(", "))
    }

    /// Start units that want to be up, are stopped, and whose dependencies are ready. True if any started.
    fn schedule_starts(&mut self) -> bool {
        let candidates: Vec<String> = self
            .units
            .values()
            .filter(|u| u.want_up && u.machine.state == State::Stopped)
            .map(|u| u.name.clone())
            .collect();
        let mut started = false;
        for name in candidates {
            let waiting = self.units.get(&name).and_then(|u| self.deps_waiting(u));
            if let Some(u) = self.units.get_mut(&name) {
                u.waiting_for = waiting.clone();
            }
            if waiting.is_none() {
                self.dispatch(&name, Event::Start);
                started = true;
            }
        }
        started
    }

    /// Services that depend on `service` (its `after` users, and the proxy for its upstreams).
    fn dependents_of(&self, service: &str) -> Vec<String> {
        let upstream_of_proxy = self.config.proxy.as_ref().is_some_and(|p| {
            p.server
                .iter()
                .flat_map(|s| s.location.iter())
                .any(|l| l.upstream.as_deref() == Some(service))
        });
        self.units
            .values()
            .filter(|u| {
                u.spec.after.iter().any(|a| a == service)
                    || (u.kind == UnitKind::Proxy && upstream_of_proxy)
            })
            .filter(|u| u.service != service)
            .map(|u| u.name.clone())
            .collect()
    }

    /// Stop units whose dependents are all down. Returns whether anything changed.
    fn schedule_shutdown(&mut self) -> bool {
        if self
            .shutdown
            .as_ref()
            .is_some_and(|s| s.drain_until.is_some())
        {
            return false;
        }
        let running: Vec<(String, String)> = self
            .units
            .values()
            .filter(|u| !u.is_down() || u.machine.state == State::Backoff)
            .filter(|u| u.machine.state != State::Stopping)
            .map(|u| (u.name.clone(), u.service.clone()))
            .collect();
        let mut changed = false;
        for (name, service) in running {
            let blocked = self
                .dependents_of(&service)
                .iter()
                .any(|d| self.units.get(d).is_some_and(|u| !u.is_down()));
            if !blocked {
                self.dispatch(&name, Event::Stop);
                changed = true;
            }
        }
        changed
    }

    fn finished(&self) -> bool {
        self.shutdown
            .as_ref()
            .is_some_and(|s| s.drain_until.is_none())
            && self.units.values().all(|u| u.is_down())
            && self.leftovers.is_empty()
    }

    fn begin_shutdown(&mut self, outcome: Outcome) {
        if self.shutdown.is_some() {
            return;
        }
        let drain = self.config.init.shutdown_drain.0;
        info!("shutting down ({outcome:?}); draining for {drain:?}");
        crate::supervise::hooks::stopping();
        self.handle.set_draining(true);
        for u in self.units.values_mut() {
            u.want_up = false;
        }
        self.rollouts.clear();
        self.shutdown = Some(Shutdown {
            outcome,
            drain_until: (!drain.is_zero()).then(|| Instant::now() + drain),
        });
    }

    fn on_stop_signal(&mut self, sig: Signal) {
        if self.shutdown.is_some() {
            if !self.opts_pid1 && sig == Signal::SIGINT {
                warn!("second interrupt: killing all services now");
                for u in self.units.values() {
                    if let Some(pgid) = u.pgid.filter(|_| u.pid.is_some()) {
                        let _ = signal::killpg(pgid, Signal::SIGKILL);
                    }
                }
            }
            return;
        }
        let outcome = match (self.opts_pid1, sig) {
            (true, Signal::SIGINT) => Outcome::Reboot,
            (true, _) => Outcome::PowerOff,
            (false, _) => Outcome::Exit(0),
        };
        info!("received {}", sig.as_str());
        self.begin_shutdown(outcome);
    }

    // ------------------------------------------------------------------ rollouts

    /// Move each rolling restart on: when the replica being replaced is ready again (a new process),
    /// drain the next one out of routing; its restart follows when the drain period is over.
    /// One replica at a time. With a free socket (the service binds one more than it has replicas) the
    /// new process starts beside the old one on it, and the old one is drained and stopped only once the new
    /// one is ready: capacity never drops. Without one, the replica is drained, stopped and started again.
    fn advance_rollouts(&mut self) {
        let mut done = Vec::new();
        for i in 0..self.rollouts.len() {
            if let Some((cur, old_pid)) = self.rollouts[i].current.clone() {
                let replaced = match self.rollouts[i].successor.clone() {
                    Some(successor) => self.advance_surge(i, &cur, &successor),
                    None => self
                        .units
                        .get(&cur)
                        .is_none_or(|u| u.is_ready() && u.pid.is_some() && u.pid != old_pid),
                };
                if !replaced {
                    continue;
                }
                info!(
                    "rollout of {}: {cur} replaced and ready",
                    self.rollouts[i].service
                );
                self.rollouts[i].current = None;
                self.rollouts[i].successor = None;
            }
            let Some(next) = self.rollouts[i].pending.pop_front() else {
                done.push(i);
                continue;
            };
            let now = Instant::now();
            let Some(unit) = self.units.get(&next) else {
                continue;
            };
            let old_pid = unit.pid;
            let ready_timeout = unit.spec.ready_timeout.0;
            let service = unit.service.clone();
            let free = self.free_replica_addresses(&service);
            if let (Some(_), Some(addresses)) = (old_pid, free) {
                let successor = self.start_successor(&next, addresses);
                self.rollouts[i].successor = successor;
                self.rollouts[i].deadline = Some(now + ready_timeout);
            } else {
                if old_pid.is_some() {
                    if let Some(u) = self.units.get_mut(&next) {
                        u.drain_until = Some(now + ROLLOUT_DRAIN);
                    }
                } else {
                    self.restart_unit(&next);
                }
                self.rollouts[i].deadline = Some(now + ROLLOUT_DRAIN + ready_timeout);
            }
            self.rollouts[i].current = Some((next, old_pid));
        }
        for i in done.into_iter().rev() {
            let r = self.rollouts.remove(i);
            info!("rollout of {} done", r.service);
        }
    }

    /// One step of a surge replacement; true once the successor has taken the replica's place.
    fn advance_surge(&mut self, rollout: usize, current: &str, successor: &str) -> bool {
        let old_down = self.units.get(current).is_none_or(|u| u.is_down());
        let retiring = self.units.get(current).is_none_or(|u| u.retired);
        if retiring && old_down {
            // The old process is gone: the successor takes the replica's name (and keeps its socket).
            self.units.remove(current);
            if let Some(mut unit) = self.units.remove(successor) {
                unit.name = current.to_string();
                unit.surge = false;
                if let Some(pid) = unit.pid {
                    self.pids.insert(pid, current.to_string());
                }
                self.units.insert(current.to_string(), unit);
            }
            self.publish_proxy_config();
            return true;
        }
        let successor_ready = self.units.get(successor).is_some_and(|u| u.is_ready());
        if successor_ready && !retiring {
            info!("{successor} is ready; draining and stopping {current}");
            if let Some(u) = self.units.get_mut(current) {
                u.want_up = false;
                u.retired = true;
                if u.pid.is_some() {
                    u.drain_until = Some(Instant::now() + ROLLOUT_DRAIN);
                }
            }
            if self.units.get(current).is_some_and(|u| u.pid.is_none()) {
                self.dispatch(current, Event::Stop);
            }
            // From here the old process only has to stop, which its grace period bounds.
            self.rollouts[rollout].deadline = None;
        }
        false
    }

    /// Start `NAME@N.next` on `addresses`: the same spec, replica index and logs as `name`.
    fn start_successor(&mut self, name: &str, addresses: Vec<String>) -> Option<String> {
        let (service, spec, kind) = {
            let u = self.units.get(name)?;
            (u.service.clone(), u.spec.clone(), u.kind)
        };
        let mut unit = self
            .make_units(&service, spec, kind)
            .into_iter()
            .find(|u| u.name == name)?;
        let successor = format!("{name}{SUCCESSOR_SUFFIX}");
        info!(
            "rolling {name}: starting {successor} beside it on {}",
            addresses.join(", ")
        );
        unit.name = successor.clone();
        unit.listen = addresses;
        unit.surge = true;
        unit.want_up = true;
        self.units.insert(successor.clone(), unit);
        self.publish_proxy_config();
        self.dispatch(&successor, Event::Start);
        Some(successor)
    }

    /// The service's free socket(s): of the addresses for one replica more than it has, those no unit of it
    /// holds (which one is free moves as rollouts go). None without `listen`, with one replica, or when
    /// the spare address could not be bound.
    fn free_replica_addresses(&self, service: &str) -> Option<Vec<String>> {
        // No `listen`: nothing to start a successor on.
        let pools = self
            .replica_address_pools()
            .remove(service)
            .filter(|pools| !pools.is_empty())?;
        let used: std::collections::HashSet<&String> = self
            .units
            .values()
            .filter(|u| u.service == service)
            .flat_map(|u| u.listen.iter())
            .collect();
        pools
            .into_iter()
            .map(|pool| {
                pool.into_iter()
                    .find(|a| !used.contains(a) && self.listeners.contains_key(a))
            })
            .collect()
    }

    /// After a reload: a replica made fresh gets its configured address, which a rollout may have moved to
    /// another replica that still runs; it takes a free one from its service's pool instead.
    fn reassign_replica_addresses(&mut self) {
        for (service, pools) in self.replica_address_pools() {
            for (j, pool) in pools.iter().enumerate() {
                let mut taken: Vec<String> = self
                    .units
                    .values()
                    .filter(|u| u.service == service && (u.pid.is_some() || u.retired || u.surge))
                    .filter_map(|u| u.listen.get(j).cloned())
                    .collect();
                for unit in self
                    .units
                    .values_mut()
                    .filter(|u| u.service == service && u.pid.is_none() && !u.retired && !u.surge)
                {
                    let Some(mine) = unit.listen.get(j).cloned() else {
                        continue;
                    };
                    if taken.contains(&mine) {
                        if let Some(free) = pool.iter().find(|a| !taken.contains(a)) {
                            unit.listen[j] = free.clone();
                        }
                    }
                    taken.push(unit.listen[j].clone());
                }
            }
        }
    }

    /// Every address a replicated service may use, per service and per `listen` entry (in order): one per
    /// replica plus the spare a surge needs.
    fn replica_address_pools(&self) -> BTreeMap<String, Vec<Vec<String>>> {
        self.config
            .service
            .iter()
            .filter(|(_, spec)| spec.replicas >= 2)
            .map(|(name, spec)| {
                let pools = spec
                    .listen
                    .iter()
                    .flat_map(|l| l.to_vec())
                    .map(|a| sockets::replica_addresses(&a, spec.replicas + 1))
                    .collect();
                (name.clone(), pools)
            })
            .collect()
    }

    /// A replica that does not become ready in time stops its rollout; the replicas not yet replaced keep
    /// serving, and the reason shows in status.
    fn halt_overdue_rollouts(&mut self, now: Instant) {
        let mut halted = Vec::new();
        for (i, r) in self.rollouts.iter().enumerate() {
            if r.deadline.is_some_and(|t| t <= now) {
                halted.push(i);
            }
        }
        for i in halted.into_iter().rev() {
            let r = self.rollouts.remove(i);
            let Some((cur, _)) = r.current else { continue };
            // With a successor, it is the one that failed; the replica it was to replace still serves.
            let failed = r.successor.clone().unwrap_or_else(|| cur.clone());
            let Some(u) = self.units.get(&failed) else {
                continue;
            };
            let why = u
                .status(now)
                .reason
                .unwrap_or_else(|| format!("state {}", u.machine.state.as_str()));
            let timeout = u.spec.ready_timeout.0;
            let note = match &r.successor {
                Some(successor) => format!(
                    "rollout halted: {successor} not ready within {timeout:?} ({why}); {} replicas left on the old version, this one included",
                    r.pending.len() + 1
                ),
                None => format!(
                    "rollout halted: not ready within {timeout:?} ({why}); {} replicas left on the old version",
                    r.pending.len()
                ),
            };
            warn!("{cur}: {note}");
            if let Some(successor) = &r.successor {
                self.retire(successor);
            }
            if let Some(u) = self.units.get_mut(&cur) {
                u.machine.reason = Some(note);
            }
        }
    }

    /// Restart after a failed liveness probe or watchdog: like a crash, through the backoff series.
    fn restart_unhealthy(&mut self, name: &str) {
        self.restart_unit(name);
        if let Some(u) = self.units.get_mut(name) {
            u.machine.health_restart = u.machine.restart_after_stop;
        }
    }

    /// End a service's rollout: a successor not yet in its place is stopped and dropped; the replica it
    /// would have replaced keeps running.
    fn cancel_rollouts(&mut self, service: &str) {
        let (cancelled, kept): (Vec<Rollout>, Vec<Rollout>) = std::mem::take(&mut self.rollouts)
            .into_iter()
            .partition(|r| r.service == service);
        self.rollouts = kept;
        for successor in cancelled.into_iter().filter_map(|r| r.successor) {
            self.retire(&successor);
        }
    }

    /// Stop a unit for good and drop it from the table once it is down.
    fn retire(&mut self, name: &str) {
        if let Some(u) = self.units.get_mut(name) {
            u.want_up = false;
            u.retired = true;
        }
        self.dispatch(name, Event::Stop);
    }

    fn start_rollout(&mut self, service: &str, units: Vec<String>) {
        self.cancel_rollouts(service);
        for u in &units {
            if let Some(unit) = self.units.get_mut(u) {
                // A halted rollout's note would otherwise outlive the next attempt.
                if unit
                    .machine
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("rollout halted"))
                {
                    unit.machine.reason = None;
                }
            }
        }
        self.rollouts.push(Rollout {
            service: service.to_string(),
            pending: units.into_iter().collect(),
            current: None,
            successor: None,
            deadline: None,
        });
    }

    fn restart_unit(&mut self, name: &str) {
        let Some(u) = self.units.get_mut(name) else {
            return;
        };
        u.want_up = true;
        match u.machine.state {
            State::Starting | State::Running => {
                self.dispatch(name, Event::Stop);
                if let Some(u) = self.units.get_mut(name) {
                    u.machine.restart_after_stop = true;
                }
            }
            State::Stopping => {
                u.machine.restart_after_stop = true;
            }
            _ => self.dispatch(name, Event::Start),
        }
    }

    // ------------------------------------------------------------------ probes, notify, watchdog

    fn first_probe(spec: &ServiceSpec) -> ProbeKind {
        if spec.startup.is_some() {
            ProbeKind::Startup
        } else {
            ProbeKind::Readiness
        }
    }

    /// Start the probe tasks for the current process: the startup probe alone, or readiness and liveness.
    fn start_probes(&mut self, name: &str, phase: ProbeKind) {
        let Some(unit) = self.units.get_mut(name) else {
            return;
        };
        let Some(pid) = unit.pid else { return };
        let kinds: &[ProbeKind] = match phase {
            ProbeKind::Startup => &[ProbeKind::Startup],
            _ => &[ProbeKind::Readiness, ProbeKind::Liveness],
        };
        for &kind in kinds {
            let probe = match kind {
                ProbeKind::Startup => unit.spec.startup.clone(),
                ProbeKind::Readiness => unit.spec.readiness.clone(),
                ProbeKind::Liveness => unit.spec.liveness.clone(),
            };
            let Some(probe) = probe else { continue };
            match Check::from_probe(&probe, unit.listen.first().map(|s| s.as_str())) {
                Ok(check) => {
                    let task = tokio::task::spawn_local(probes::run(
                        name.to_string(),
                        pid.as_raw(),
                        kind,
                        probe,
                        check,
                        self.probe_tx.clone(),
                        self.exec_tx.clone(),
                    ));
                    unit.health.probe_tasks.push(task);
                }
                Err(e) => {
                    error!("{name}: {} probe: {e}", kind.as_str());
                    unit.health.last_probe = Some(format!("{}: {e}", kind.as_str()));
                }
            }
        }
        if phase == ProbeKind::Startup && unit.spec.startup.is_none() {
            self.start_probes(name, ProbeKind::Readiness);
        }
    }

    fn on_probe_result(&mut self, mut result: ProbeResult) {
        // By pid: a surge successor's probes keep reporting under its `.next` name after it is renamed.
        if let Some(name) = self.pids.get(&Pid::from_raw(result.generation)) {
            result.unit = name.clone();
        }
        let Some(unit) = self.units.get_mut(&result.unit) else {
            return;
        };
        if unit.pid.map(|p| p.as_raw()) != Some(result.generation) {
            return; // a result about a process that is gone
        }
        let probe = match result.kind {
            ProbeKind::Startup => unit.spec.startup.clone(),
            ProbeKind::Readiness => unit.spec.readiness.clone(),
            ProbeKind::Liveness => unit.spec.liveness.clone(),
        };
        let Some(probe) = probe else { return };
        let track = match result.kind {
            ProbeKind::Startup => &mut unit.health.startup,
            ProbeKind::Readiness => &mut unit.health.readiness,
            ProbeKind::Liveness => &mut unit.health.liveness,
        };
        let ok = result.outcome.is_ok();
        let verdict = track.record(
            ok,
            result.outcome.clone().err(),
            probe.success_threshold,
            probe.failure_threshold,
        );
        unit.health.last_probe = Some(match &result.outcome {
            Ok(()) => format!("{} ok", result.kind.as_str()),
            Err(e) => format!("{}: {e}", result.kind.as_str()),
        });
        let name = result.unit.clone();
        match (result.kind, verdict) {
            (ProbeKind::Startup, Verdict::NowPassing) => {
                for t in unit.health.probe_tasks.drain(..) {
                    t.abort();
                }
                info!("{name}: startup probe passed");
                self.start_probes(&name, ProbeKind::Readiness);
            }
            (ProbeKind::Startup | ProbeKind::Liveness, Verdict::NowFailing) => {
                let why = format!(
                    "{} probe failed: {}",
                    result.kind.as_str(),
                    result.outcome.err().unwrap_or_default()
                );
                warn!("{name}: {why}; restarting");
                unit.machine.reason = Some(why);
                self.restart_unhealthy(&name);
            }
            (ProbeKind::Readiness, Verdict::NowPassing) => {
                info!("{name}: ready (readiness probe passed)")
            }
            (ProbeKind::Readiness, Verdict::NowFailing) => {
                warn!(
                    "{name}: not ready: {}",
                    result.outcome.err().unwrap_or_default()
                )
            }
            _ => {}
        }
    }

    fn run_exec_probe(&mut self, request: ExecRequest) {
        let Some(unit) = self.units.get(&request.unit) else {
            return;
        };
        let result = launch::command_for(unit, Vec::new()).and_then(|mut cmd| {
            let first = request.argv.first().ok_or("empty exec probe")?;
            let path = cmd
                .env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            cmd.program =
                super::spawn::resolve_program(first, &path, unit.spec.directory.as_deref())
                    .ok_or_else(|| format!("command not found: {first}"))?;
            cmd.argv = request.argv.clone();
            super::spawn::spawn(&cmd).map_err(|(_, e)| e.to_string())
        });
        match result {
            Ok(pid) => {
                self.exec_waiters
                    .insert(pid, (request.reply, Instant::now() + request.timeout));
            }
            Err(e) => {
                let _ = request.reply.send(Err(e));
            }
        }
    }

    fn on_notification(&mut self, message: Notification) {
        let pgid = notify::process_group_of(message.pid);
        let Some(unit) = self.units.values_mut().find(|u| {
            u.pid.is_some_and(|p| p.as_raw() == message.pid)
                || (u.pid.is_some() && u.pgid.map(|g| g.as_raw()) == pgid)
        }) else {
            debug!(
                "notify message from pid {} that is no service's: ignored",
                message.pid
            );
            return;
        };
        let mut probes_from_now = None;
        // MAINPID=: only the main process may name its successor, and only a child of ours (so the one
        // reaper sees it end): a forking server's launcher, or `stackinit fork-from`.
        if let Some(new) = message
            .get("MAINPID")
            .and_then(|v| v.trim().parse::<i32>().ok())
        {
            let from_main = unit.pid.is_some_and(|p| p.as_raw() == message.pid);
            if from_main && new != message.pid {
                if new > 1 && notify::parent_of(new) == Some(std::process::id() as i32) {
                    info!(
                        "{}: main pid is now {new} (MAINPID, was {})",
                        unit.name, message.pid
                    );
                    self.pids.remove(&Pid::from_raw(message.pid));
                    self.pids.insert(Pid::from_raw(new), unit.name.clone());
                    unit.pid = Some(Pid::from_raw(new));
                    // Its group is what stop and exit SIGKILL; never a group another unit's process leads
                    // (a worker still in its template's group would take the template down with it).
                    let group = notify::process_group_of(new);
                    let shared = group
                        .is_some_and(|g| g != new && self.pids.keys().any(|p| p.as_raw() == g));
                    if shared {
                        warn!(
                            "{}: new main pid {new} is in another service's process group; only it will be signalled",
                            unit.name
                        );
                    }
                    unit.pgid = if shared {
                        None
                    } else {
                        group.map(Pid::from_raw)
                    };
                } else {
                    warn!(
                        "{}: MAINPID={new} ignored: not a child of stackinit",
                        unit.name
                    );
                }
            }
        }
        if message.get("READY") == Some("1") && !unit.health.notified_ready {
            unit.health.notified_ready = true;
            info!("{}: READY=1", unit.name);
            if unit.health.watchdog_deadline.is_none() {
                unit.health.watchdog_deadline = unit.health.watchdog.map(|w| Instant::now() + w);
            }
            if unit.spec.notify {
                probes_from_now = Some((unit.name.clone(), Self::first_probe(&unit.spec)));
            }
        }
        if let Some(status) = message.get("STATUS") {
            unit.health.status_text = Some(status.to_string());
        }
        if let Some(usec) = message
            .get("WATCHDOG_USEC")
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            unit.health.watchdog = (usec > 0).then(|| Duration::from_micros(usec));
        }
        if message.get("WATCHDOG") == Some("1") || message.get("WATCHDOG_USEC").is_some() {
            unit.health.watchdog_deadline = unit.health.watchdog.map(|w| Instant::now() + w);
        }
        if message.get("STOPPING") == Some("1") {
            info!("{}: STOPPING=1", unit.name);
        }
        if let Some((name, first)) = probes_from_now {
            self.start_probes(&name, first);
        }
    }

    // ------------------------------------------------------------------ requests

    fn select(&self, name: &str) -> Result<Vec<String>, ApiError> {
        let names: Vec<String> = self
            .units
            .values()
            .filter(|u| u.name == name || (u.service == name && !u.surge))
            .map(|u| u.name.clone())
            .collect();
        if names.is_empty() {
            let known: Vec<&str> = {
                let mut v: Vec<&str> = self.units.values().map(|u| u.service.as_str()).collect();
                v.dedup();
                v
            };
            return Err(ApiError::not_found(format!(
                "no such service: {name} (known: {})",
                known.join(", ")
            )));
        }
        Ok(names)
    }

    fn statuses(&self) -> Vec<ServiceStatus> {
        let now = Instant::now();
        self.units.values().map(|u| u.status(now)).collect()
    }

    fn handle_request(&mut self, request: Request) {
        match request {
            Request::Status { name, reply } => {
                let now = Instant::now();
                let result = match name {
                    None => Ok(self.statuses()),
                    Some(n) => self.select(&n).map(|names| {
                        names
                            .iter()
                            .filter_map(|n| self.units.get(n))
                            .map(|u| u.status(now))
                            .collect()
                    }),
                };
                let _ = reply.send(result);
            }
            Request::Control {
                name,
                action,
                reply,
            } => {
                let _ = reply.send(self.control(&name, action));
            }
            Request::Reload { reply } => {
                let _ = reply.send(self.reload());
            }
            Request::Shutdown { reboot, reply } => {
                let outcome = match (self.opts_pid1, reboot) {
                    (true, true) => Outcome::Reboot,
                    (true, false) => Outcome::PowerOff,
                    (false, _) => Outcome::Exit(0),
                };
                self.begin_shutdown(outcome);
                let _ = reply.send(Ok(ActionReply {
                    ok: true,
                    message: format!("shutting down ({outcome:?})"),
                }));
            }
            Request::Facts { reply } => {
                let _ = reply.send(Ok(crate::supervise::handle::InstanceInfo {
                    facts: self.facts.clone(),
                    unhealthy: self.unhealthy_units(),
                }));
            }
            Request::Logs {
                name,
                stream,
                reply,
            } => {
                let result = self.select(&name).and_then(|names| {
                    let unit = names
                        .first()
                        .and_then(|n| self.units.get(n))
                        .ok_or_else(|| ApiError::not_found(&name))?;
                    if names.len() > 1 && unit.stdout.path() != self.units[&names[1]].stdout.path()
                    {
                        return Err(ApiError::bad_request(format!(
                            "{name} has {} replicas with separate logs; name one: {}",
                            names.len(),
                            names.join(", ")
                        )));
                    }
                    let log = match stream {
                        LogStream::Stdout => &unit.stdout,
                        LogStream::Stderr => &unit.stderr,
                    };
                    Ok(LogSource {
                        path: log.path().to_path_buf(),
                        lines: log.subscribe(),
                    })
                });
                let _ = reply.send(result);
            }
        }
    }

    fn control(&mut self, name: &str, action: ControlAction) -> Result<ActionReply, ApiError> {
        if self.shutdown.is_some() {
            return Err(ApiError::conflict("shutting down"));
        }
        let names = self.select(name)?;
        let message = match action {
            ControlAction::Start => {
                for n in &names {
                    if let Some(u) = self.units.get_mut(n) {
                        u.want_up = true;
                        if matches!(
                            u.machine.state,
                            State::Exited | State::Fatal | State::Backoff
                        ) {
                            u.machine.state = State::Stopped;
                            u.timer = None;
                            u.machine.reason = None;
                        }
                    }
                }
                self.schedule_starts();
                let waiting: Vec<String> = names
                    .iter()
                    .filter_map(|n| self.units.get(n)?.waiting_for.clone())
                    .collect();
                match waiting.first() {
                    Some(w) => format!("{name}: start queued, waiting for {w}"),
                    None => format!("{name}: started"),
                }
            }
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
            ControlAction::Restart => {
                self.cancel_rollouts(name);
                if names.len() == 1 {
                    self.restart_unit(&names[0]);
                    format!("{name}: restarting")
                } else {
                    self.start_rollout(name, names.clone());
                    format!("{name}: rolling restart of {} replicas", names.len())
                }
            }
        };
        Ok(ActionReply { ok: true, message })
    }

    /// Drain every log pipe into its file before the runtime stops, so the last lines are not lost.
    async fn close_logs(&mut self) {
        self.units.clear();
        if let Some(w) = self.proxy_writer.take() {
            w.abort();
        }
        for (_, log) in self.logs.drain() {
            if let Ok(log) = Rc::try_unwrap(log) {
                log.close().await;
            }
        }
    }

    fn reopen_logs(&mut self) {
        info!("reopening log files");
        for log in self.logs.values() {
            log.reopen();
        }
    }

    // ------------------------------------------------------------------ reload

    /// Re-read the config and apply the difference. A bad config changes nothing.
    pub fn reload(&mut self) -> Result<ReloadReply, ApiError> {
        crate::supervise::hooks::reloading();
        let result = self.reload_inner();
        self.settle();
        crate::supervise::hooks::reloaded(&self.last_summary);
        result
    }

    fn reload_inner(&mut self) -> Result<ReloadReply, ApiError> {
        if self.shutdown.is_some() {
            return Err(ApiError::conflict("shutting down"));
        }
        let new = match &self.config_path {
            Some(path) => crate::config::load(path),
            None => crate::config::parse(Path::new("<built-in demo>"), &crate::config::demo_text()),
        };
        let new = new.map_err(|errors| {
            ApiError::bad_request(
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
        let old = std::mem::replace(&mut self.config, new);
        let mut reply = ReloadReply::default();
        let mut names: Vec<String> = old
            .service
            .keys()
            .chain(self.config.service.keys())
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        let mut changed_services = Vec::new();
        for name in &names {
            match (old.service.get(name), self.config.service.get(name)) {
                (Some(_), None) => reply.removed.push(name.clone()),
                (None, Some(_)) => reply.added.push(name.clone()),
                (Some(a), Some(b)) if a != b => {
                    reply.changed.push(name.clone());
                    changed_services.push(name.clone());
                }
                _ => reply.unchanged.push(name.clone()),
            }
        }
        let proxy_changed = old.proxy != self.config.proxy;
        let proxy_listen_changed = old
            .proxy
            .as_ref()
            .map(|p| (&p.listen, p.tls.as_ref().map(|t| &t.listen), &p.user))
            != self
                .config
                .proxy
                .as_ref()
                .map(|p| (&p.listen, p.tls.as_ref().map(|t| &t.listen), &p.user));
        if old.init != self.config.init {
            warn!("[init] changes take effect at the next boot");
        }

        // Build the new unit table; keep running units whose service did not change.
        let mut fresh = self.units_for_config();
        let mut to_stop: Vec<String> = Vec::new();
        let old_units = std::mem::take(&mut self.units);
        for (unit_name, unit) in old_units {
            let service_changed = changed_services.contains(&unit.service);
            let keep = match unit.kind {
                UnitKind::Proxy => self.config.proxy.is_some() && !proxy_listen_changed,
                // A successor is no config entry of its own: it lives while its service is unchanged.
                UnitKind::Service => {
                    let successor_kept =
                        unit.surge && self.config.service.contains_key(&unit.service);
                    (fresh.contains_key(&unit_name) || successor_kept) && !service_changed
                }
            };
            if keep {
                fresh.insert(unit_name, unit);
            } else if unit.is_down() {
                if let Some(f) = fresh.get_mut(&unit_name) {
                    f.want_up = f.spec.autostart;
                }
            } else {
                // Keep it in the table under its old identity until it has stopped, then the new one starts.
                to_stop.push(unit_name.clone());
                match fresh.remove(&unit_name) {
                    Some(mut replacement) => {
                        replacement.machine = unit.machine.clone();
                        // The running process serves the sockets it has (rollouts move replicas around).
                        replacement.listen = unit.listen.clone();
                        replacement.pid = unit.pid;
                        replacement.pgid = unit.pgid;
                        replacement.started_at = unit.started_at;
                        // The running process keeps its probes and readiness until it is replaced.
                        let mut unit = unit;
                        replacement.health = std::mem::take(&mut unit.health);
                        replacement.want_up = replacement.spec.autostart;
                        fresh.insert(unit_name, replacement);
                    }
                    None => {
                        let mut leaving = unit;
                        leaving.want_up = false;
                        leaving.retired = true;
                        fresh.insert(unit_name, leaving);
                    }
                }
            }
        }
        self.units = fresh;
        self.reassign_replica_addresses();
        let failures = self.bind_listeners();
        self.mark_bind_failures(&failures);
        let mut rolling: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in &to_stop {
            let Some(unit) = self.units.get(name) else {
                continue;
            };
            if !unit.want_up {
                self.dispatch(name, Event::Stop);
            } else if unit.replica.is_some() {
                rolling
                    .entry(unit.service.clone())
                    .or_default()
                    .push(name.clone());
            } else {
                self.restart_unit(name);
            }
        }
        for (service, units) in rolling {
            self.start_rollout(&service, units);
        }
        if proxy_changed {
            reply.changed.push(PROXY_UNIT.into());
        }
        self.publish_proxy_config();
        self.drop_unused_listeners();
        Ok(reply)
    }

    /// Remove units that were dropped by a reload once they have stopped, and close sockets nobody uses.
    fn drop_unused_listeners(&mut self) {
        let mut used: Vec<String> = self
            .units
            .values()
            .flat_map(|u| u.listen.iter().cloned())
            .collect();
        if let Some(p) = &self.config.proxy {
            used.extend(p.listen.iter().cloned());
            used.extend(p.tls.iter().flat_map(|t| t.listen.iter().cloned()));
        }
        used.extend(
            self.replica_address_pools()
                .into_values()
                .flatten()
                .flatten(),
        );
        self.listeners.retain(|addr, _| used.contains(addr));
    }

    // ------------------------------------------------------------------ telling others

    fn publish_proxy_config(&mut self) {
        let Some(proxy) = self.config.proxy.clone() else {
            return;
        };
        let mut upstreams: BTreeMap<String, Vec<UpstreamReplica>> = BTreeMap::new();
        for u in self
            .units
            .values()
            .filter(|u| u.kind == UnitKind::Service && !u.listen.is_empty())
        {
            upstreams
                .entry(u.service.clone())
                .or_default()
                .push(UpstreamReplica {
                    name: u.name.clone(),
                    address: u.listen[0].clone(),
                    max_in_flight: u.spec.max_in_flight,
                });
        }
        let runtime = ProxyRuntimeConfig {
            proxy,
            upstreams,
            extra_server_names: self.facts.allowed_hosts(),
            logs_dir: self.config.init.logs_dir.clone(),
        };
        self.proxy_feeds
            .config
            .send_replace(Some(Arc::new(runtime)));
    }

    /// Critical services that are not ready: what makes `/healthz` answer 503 (the proxy's state and the
    /// dashboard both use it). A replica a rolling restart is replacing, and its successor, do not count:
    /// a deploy is not an outage, and a load balancer must not pull the instance for one. A halted rollout
    /// ends that: a replica left down counts again.
    fn unhealthy_units(&self) -> Vec<String> {
        let rolling: Vec<&str> = self
            .rollouts
            .iter()
            .filter_map(|r| r.current.as_ref().map(|(name, _)| name.as_str()))
            .collect();
        self.units
            .values()
            .filter(|u| u.kind == UnitKind::Service && u.spec.critical && !u.is_ready())
            .filter(|u| !u.surge && !u.retired && !rolling.contains(&u.name.as_str()))
            .map(|u| u.name.clone())
            .collect()
    }

    fn publish_proxy_state(&mut self) {
        let state = ProxyState {
            draining: self.shutdown.is_some(),
            ready: self
                .units
                .values()
                .filter(|u| u.is_ready())
                .map(|u| u.name.clone())
                .collect(),
            unhealthy: self.unhealthy_units(),
        };
        self.proxy_feeds.state.send_if_modified(|s| {
            if *s == state {
                false
            } else {
                *s = state;
                true
            }
        });
    }

    /// READY=1 to systemd once every autostart unit is up (or has settled as fatal), with a summary.
    fn report_stack_readiness(&mut self) {
        let autostart: Vec<&Unit> = self
            .units
            .values()
            .filter(|u| u.spec.autostart && !u.surge)
            .collect();
        let ready = autostart.iter().filter(|u| u.is_ready()).count();
        let fatal = autostart
            .iter()
            .filter(|u| u.machine.state == State::Fatal)
            .count();
        let mut summary = format!("{ready}/{} ready", autostart.len());
        if fatal > 0 {
            summary.push_str(&format!(", {fatal} fatal"));
        }
        if self.shutdown.is_some() {
            summary = format!("stopping: {summary}");
        }
        if summary != self.last_summary {
            crate::supervise::hooks::status(&summary);
            self.last_summary = summary.clone();
        }
        if !self.stack_ready_sent && ready + fatal == autostart.len() {
            self.stack_ready_sent = true;
            info!("stack ready: {summary}");
            crate::supervise::hooks::ready(&summary);
        }
    }
}

async fn recv_press(rx: &mut Option<mpsc::UnboundedReceiver<()>>) -> Option<()> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_signal(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

/// The first `condition_path_exists` entry that does not hold, described for status and the log.
/// Checked at each start (boot, `stackinit start`, restarts), like systemd's conditions.
fn unmet_condition(spec: &ServiceSpec) -> Option<String> {
    let conditions = spec.condition_path_exists.as_ref()?.to_vec();
    conditions.into_iter().find_map(|condition| {
        let (must_exist, path) = match condition.strip_prefix('!') {
            Some(path) => (false, path.to_string()),
            None => (true, condition.clone()),
        };
        // symlink_metadata: a dangling symlink exists as far as a stamp file is concerned.
        let exists = std::fs::symlink_metadata(&path).is_ok();
        match (must_exist, exists) {
            (true, false) => Some(format!("{path} does not exist (condition_path_exists)")),
            (false, true) => Some(format!(
                "{path} exists (condition_path_exists = \"!{path}\")"
            )),
            _ => None,
        }
    })
}
