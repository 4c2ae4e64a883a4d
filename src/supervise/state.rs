//! The per-process state machine: `(state, event) -> (state, actions)`, in the manner of s6-supervise.
//!
//! Pure: no clocks, no syscalls. The event loop feeds it events and carries out the actions, which keeps
//! every transition testable on its own.
#![forbid(unsafe_code)]

use std::time::Duration;

pub use crate::api::State;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    pub fn describe(self) -> String {
        match self {
            ExitStatus::Code(c) => format!("exit {c}"),
            ExitStatus::Signal(s) => match nix::sys::signal::Signal::try_from(s) {
                Ok(sig) => format!("signal {}", &sig.as_str()[3..]),
                Err(_) => format!("signal {s}"),
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Someone wants it up (autostart with dependencies met, or `stackinit start`).
    Start,
    /// Someone wants it down (`stackinit stop`, shutdown, removed by reload).
    Stop,
    /// Stop it if it runs, then start it again (`stackinit restart`, a changed spec, a rollout).
    Restart,
    /// A liveness or startup probe or the watchdog says it is broken: restart it through the backoff
    /// series, like a crash, with the reason in status.
    HealthFailed { reason: String },
    /// `stackinit start` of a unit that gave up or waits: forget the failure, so it starts afresh.
    Reset,
    /// Its listening socket cannot be bound: it cannot run until a reload fixes that.
    BindFailed { reason: String },
    /// The process ended; `uptime` is how long it ran. A process that could not be started at all
    /// (command not found, setuid failed) arrives here too, as exit 127.
    Exited {
        status: ExitStatus,
        uptime: Duration,
    },
    /// A start condition (`condition_path_exists`) did not hold, so nothing was spawned. As in systemd this
    /// is a skip, not a failure: the unit counts as done for its dependents.
    ConditionFailed { reason: String },
    /// It has stayed up for `start_secs`.
    StartSecsElapsed,
    /// It said it is ready (READY=1, its startup and readiness probes passed): a successful start, however
    /// soon it dies afterwards.
    Ready,
    /// The backoff delay is over.
    BackoffElapsed,
    /// The stop grace period is over and it is still running.
    GraceElapsed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Spawn,
    /// Arm the unit's single timer (replacing any other).
    ArmTimer(Duration),
    CancelTimer,
    /// Send the configured stop signal to the main process.
    SignalStop,
    /// SIGKILL the whole process group (grandchildren included).
    KillGroup,
    /// The main process died on its own: ask what is left of its group (a forking server's workers,
    /// perhaps mid-request) to stop with the stop signal, and SIGKILL it after the grace period. As
    /// systemd does for a service whose main process exits; an immediate SIGKILL would cut off the
    /// responses those workers are still writing.
    StopLeftovers,
}

/// The policy knobs the machine needs, taken from the service spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub oneshot: bool,
    pub restart: crate::config::RestartPolicy,
    pub success_exit_codes: Vec<i32>,
    pub start_secs: Duration,
    pub start_limit: u32,
    /// Past `start_limit`: go `fatal` (true) or keep retrying every `backoff_max` (false).
    pub give_up: bool,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub backoff_reset: Duration,
    pub stop_grace: Duration,
}

impl Policy {
    pub fn from_spec(spec: &crate::config::ServiceSpec) -> Policy {
        Policy {
            oneshot: spec.oneshot,
            restart: spec.restart,
            success_exit_codes: spec.success_exit_codes.clone(),
            start_secs: spec.start_secs.0,
            start_limit: spec.start_limit.max(1),
            give_up: spec.start_limit_action == crate::config::StartLimitAction::Fatal,
            backoff_initial: spec.backoff_initial.0,
            backoff_max: spec.backoff_max.0,
            backoff_reset: spec.backoff_reset.0,
            stop_grace: spec.stop_grace.0,
        }
    }

    fn is_success(&self, status: ExitStatus) -> bool {
        matches!(status, ExitStatus::Code(c) if self.success_exit_codes.contains(&c))
    }

    fn wants_restart(&self, status: ExitStatus) -> bool {
        use crate::config::RestartPolicy::*;
        match (self.oneshot, self.restart) {
            (_, Never) => false,
            // A job that succeeded is done, whatever the policy.
            (true, _) => !self.is_success(status),
            (false, Always) => true,
            (false, OnFailure) => !self.is_success(status),
        }
    }
}

/// What the machine remembers between events.
#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    pub state: State,
    /// Restarts since start (shown in status).
    pub restarts: u32,
    /// Consecutive failed starts; `start_limit` of them make the service fatal.
    pub failed_starts: u32,
    /// Position in the backoff series; reset after `backoff_reset` of uptime.
    pub backoff_step: u32,
    /// A stop was asked for while it should come back up afterwards (`restart`).
    pub restart_after_stop: bool,
    /// That restart is for a health failure (liveness, watchdog): it goes through the backoff series
    /// like a crash, so a service that keeps failing its probe does not restart in a tight loop.
    pub health_restart: bool,
    /// Oneshot finished with success: dependents may start.
    pub succeeded: bool,
    pub reason: Option<String>,
    pub last_exit: Option<ExitStatus>,
    /// Why the machine itself last restarted it (a crash, or the health failure in `reason` at the time).
    pub last_restart: Option<String>,
}

impl Default for Machine {
    fn default() -> Self {
        Machine {
            state: State::Stopped,
            restarts: 0,
            failed_starts: 0,
            backoff_step: 0,
            restart_after_stop: false,
            health_restart: false,
            succeeded: false,
            reason: None,
            last_exit: None,
            last_restart: None,
        }
    }
}

/// Random numbers in [-1, 1] for backoff jitter, so replicas that fail together do not restart in step
/// (xorshift; quality does not matter here).
pub struct Jitter(u64);

impl Jitter {
    pub fn seeded() -> Jitter {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter(t ^ ((std::process::id() as u64) << 32) | 1)
    }

    pub fn sample(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 2001) as f64 / 1000.0 - 1.0
    }
}

/// Delay before restart number `step` (0-based): the first is immediate, then `initial` doubling up to `max`.
/// `jitter` in [-1, 1] spreads restarts of many replicas by up to ±10 %.
pub fn backoff_delay(policy: &Policy, step: u32, jitter: f64) -> Duration {
    if step == 0 {
        return Duration::ZERO;
    }
    let base = policy
        .backoff_initial
        .saturating_mul(1u32 << (step - 1).min(20));
    let capped = base.min(policy.backoff_max);
    capped.mul_f64(1.0 + 0.1 * jitter.clamp(-1.0, 1.0))
}

impl Machine {
    /// Apply one event. `jitter` is a random number in [-1, 1] for the backoff delay.
    pub fn on(&mut self, event: Event, policy: &Policy, jitter: f64) -> Vec<Action> {
        use Action::*;
        use State::*;
        match (self.state, event) {
            // ---- start requests ----
            (Stopped | Exited | Fatal | Backoff, Event::Start) => {
                self.failed_starts = 0;
                self.backoff_step = 0;
                self.reason = None;
                self.succeeded = false;
                self.begin_start(policy)
            }
            (Starting | Running, Event::Start) => vec![],
            (Stopping, Event::Start) => {
                self.restart_after_stop = true;
                vec![]
            }
            // ---- stop requests ----
            (Starting | Running, Event::Stop) => {
                self.state = Stopping;
                self.restart_after_stop = false;
                vec![SignalStop, ArmTimer(policy.stop_grace)]
            }
            (Backoff, Event::Stop) => {
                self.state = Stopped;
                self.reason = None;
                vec![CancelTimer]
            }
            (Stopping, Event::Stop) => {
                self.restart_after_stop = false;
                vec![]
            }
            (Stopped | Exited | Fatal, Event::Stop) => vec![],
            (Starting, Event::ConditionFailed { reason }) => {
                self.state = Exited;
                self.succeeded = true;
                self.reason = Some(reason);
                vec![CancelTimer]
            }
            (_, Event::ConditionFailed { .. }) => vec![],
            // ---- restarts ----
            (_, Event::Restart) => self.restart(policy, jitter),
            (_, Event::HealthFailed { reason }) => self.health_failed(reason, policy, jitter),
            (_, Event::Reset) => self.reset(),
            (_, Event::BindFailed { reason }) => {
                self.state = Fatal;
                self.reason = Some(reason);
                vec![CancelTimer]
            }
            // ---- timers ----
            (Starting, Event::StartSecsElapsed) if !policy.oneshot => {
                self.state = Running;
                self.failed_starts = 0;
                self.reason = None;
                vec![]
            }
            (Starting, Event::Ready) if !policy.oneshot => {
                self.state = Running;
                self.failed_starts = 0;
                self.reason = None;
                vec![CancelTimer]
            }
            (_, Event::Ready) => vec![],
            (Backoff, Event::BackoffElapsed) => self.begin_start(policy),
            (Stopping, Event::GraceElapsed) => {
                self.reason = Some(format!(
                    "did not stop within {:?}; killed",
                    policy.stop_grace
                ));
                vec![KillGroup]
            }
            (_, Event::StartSecsElapsed | Event::BackoffElapsed | Event::GraceElapsed) => vec![],
            // ---- the process is gone ----
            (Stopping, Event::Exited { status, .. }) => {
                self.exited_when_asked(status, policy, jitter)
            }
            (Starting | Running, Event::Exited { status, uptime }) => {
                self.exited_on_its_own(status, uptime, policy, jitter)
            }
            (Stopped | Exited | Fatal | Backoff, Event::Exited { .. }) => vec![],
        }
    }

    fn restart(&mut self, policy: &Policy, jitter: f64) -> Vec<Action> {
        match self.state {
            State::Starting | State::Running => {
                self.state = State::Stopping;
                self.restart_after_stop = true;
                vec![Action::SignalStop, Action::ArmTimer(policy.stop_grace)]
            }
            State::Stopping => {
                self.restart_after_stop = true;
                vec![]
            }
            State::Stopped | State::Exited | State::Fatal | State::Backoff => {
                self.on(Event::Start, policy, jitter)
            }
        }
    }

    fn health_failed(&mut self, reason: String, policy: &Policy, jitter: f64) -> Vec<Action> {
        match self.state {
            State::Starting | State::Running | State::Stopping => {
                self.reason = Some(reason);
                let actions = self.restart(policy, jitter);
                self.health_restart = true;
                actions
            }
            // No process to be unhealthy: nothing to restart.
            State::Stopped | State::Exited | State::Fatal | State::Backoff => vec![],
        }
    }

    fn reset(&mut self) -> Vec<Action> {
        match self.state {
            State::Exited | State::Fatal | State::Backoff => {
                self.state = State::Stopped;
                self.reason = None;
                vec![Action::CancelTimer]
            }
            State::Stopped | State::Starting | State::Running | State::Stopping => vec![],
        }
    }

    /// The process ended after a stop: done, or started again for a restart.
    fn exited_when_asked(
        &mut self,
        status: ExitStatus,
        policy: &Policy,
        jitter: f64,
    ) -> Vec<Action> {
        use Action::*;
        self.last_exit = Some(status);
        if !self.restart_after_stop {
            self.state = State::Stopped;
            return vec![KillGroup, CancelTimer];
        }
        self.restart_after_stop = false;
        let mut actions = vec![KillGroup, CancelTimer];
        if std::mem::take(&mut self.health_restart) {
            // The supervisor put the health failure (watchdog, liveness) in `reason`.
            self.last_restart = self.reason.clone();
            actions.extend(self.schedule_restart(policy, jitter));
        } else {
            self.restarts += 1;
            actions.extend(self.begin_start(policy));
        }
        actions
    }

    /// The process ended on its own: a job done, a failure to report, or a restart through the backoff
    /// series (a failed start counts towards the start limit).
    fn exited_on_its_own(
        &mut self,
        status: ExitStatus,
        uptime: Duration,
        policy: &Policy,
        jitter: f64,
    ) -> Vec<Action> {
        let mut actions = vec![Action::StopLeftovers, Action::CancelTimer];
        self.last_exit = Some(status);
        if policy.oneshot && policy.is_success(status) {
            self.state = State::Exited;
            self.succeeded = true;
            self.reason = None;
            return actions;
        }
        let failed_start = self.state == State::Starting;
        if !policy.wants_restart(status) {
            self.state = State::Exited;
            self.reason =
                (failed_start || policy.oneshot).then(|| format!("failed: {}", status.describe()));
            return actions;
        }
        if failed_start {
            self.failed_starts += 1;
            if self.failed_starts >= policy.start_limit {
                actions.extend(self.crash_loop(status, policy, jitter));
                return actions;
            }
        } else if uptime >= policy.backoff_reset {
            self.backoff_step = 0;
        }
        self.last_restart = Some(format!("exited: {}", status.describe()));
        actions.extend(self.schedule_restart(policy, jitter));
        actions
    }

    fn begin_start(&mut self, policy: &Policy) -> Vec<Action> {
        self.state = State::Starting;
        let mut actions = vec![Action::Spawn];
        if !policy.oneshot {
            actions.push(Action::ArmTimer(policy.start_secs));
        } else {
            actions.push(Action::CancelTimer);
        }
        actions
    }

    /// `start_limit` failed starts in a row: give up if the policy says so, else retry every `backoff_max`
    /// (kubelet's CrashLoopBackOff), with the reason in status until a start succeeds.
    fn crash_loop(&mut self, status: ExitStatus, policy: &Policy, jitter: f64) -> Vec<Action> {
        let failed = format!(
            "{} failed starts (last: {})",
            self.failed_starts,
            status.describe()
        );
        if policy.give_up {
            self.state = State::Fatal;
            self.reason = Some(format!("start limit reached: {failed}"));
            return vec![];
        }
        let delay = policy
            .backoff_max
            .mul_f64(1.0 + 0.1 * jitter.clamp(-1.0, 1.0));
        self.state = State::Backoff;
        self.restarts += 1;
        self.last_restart = Some(format!("exited: {}", status.describe()));
        self.reason = Some(format!(
            "crash loop: {failed}; retrying every {:?}",
            policy.backoff_max
        ));
        vec![Action::ArmTimer(delay)]
    }

    fn schedule_restart(&mut self, policy: &Policy, jitter: f64) -> Vec<Action> {
        let delay = backoff_delay(policy, self.backoff_step, jitter);
        self.backoff_step = self.backoff_step.saturating_add(1);
        self.restarts += 1;
        if delay.is_zero() {
            self.begin_start(policy)
        } else {
            self.state = State::Backoff;
            vec![Action::ArmTimer(delay)]
        }
    }

    /// Ready for dependents and traffic: running, or a job that finished well.
    pub fn is_up(&self) -> bool {
        self.state == State::Running || (self.state == State::Exited && self.succeeded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RestartPolicy, ServiceSpec};

    fn policy() -> Policy {
        Policy::from_spec(&ServiceSpec::default())
    }

    fn exit(code: i32, secs: u64) -> Event {
        Event::Exited {
            status: ExitStatus::Code(code),
            uptime: Duration::from_secs(secs),
        }
    }

    #[test]
    fn start_runs_after_start_secs() {
        let p = policy();
        let mut m = Machine::default();
        assert_eq!(
            m.on(Event::Start, &p, 0.0),
            vec![Action::Spawn, Action::ArmTimer(p.start_secs)]
        );
        assert_eq!(m.state, State::Starting);
        m.on(Event::StartSecsElapsed, &p, 0.0);
        assert_eq!(m.state, State::Running);
        assert!(m.is_up());
    }

    #[test]
    fn crash_of_running_restarts_immediately_then_backs_off() {
        let p = policy();
        let mut m = Machine::default();
        m.on(Event::Start, &p, 0.0);
        m.on(Event::StartSecsElapsed, &p, 0.0);
        let a = m.on(exit(1, 5), &p, 0.0);
        assert!(
            a.contains(&Action::Spawn),
            "first restart is immediate: {a:?}"
        );
        m.on(Event::StartSecsElapsed, &p, 0.0);
        let a = m.on(exit(1, 5), &p, 0.0);
        assert_eq!(m.state, State::Backoff);
        assert!(
            a.contains(&Action::ArmTimer(Duration::from_millis(100))),
            "{a:?}"
        );
        m.on(Event::BackoffElapsed, &p, 0.0);
        m.on(Event::StartSecsElapsed, &p, 0.0);
        let a = m.on(exit(1, 5), &p, 0.0);
        assert!(
            a.contains(&Action::ArmTimer(Duration::from_millis(200))),
            "{a:?}"
        );
        assert_eq!(m.restarts, 3);
    }

    #[test]
    fn stable_uptime_resets_the_series() {
        let p = policy();
        let mut m = Machine::default();
        m.on(Event::Start, &p, 0.0);
        m.on(Event::StartSecsElapsed, &p, 0.0);
        m.on(exit(1, 5), &p, 0.0);
        m.on(Event::StartSecsElapsed, &p, 0.0);
        let a = m.on(exit(1, 3600), &p, 0.0);
        assert!(
            a.contains(&Action::Spawn),
            "after a long stable run the restart is immediate again: {a:?}"
        );
    }

    #[test]
    fn failed_starts_end_fatal() {
        let mut p = policy();
        p.give_up = true;
        let mut m = Machine::default();
        fail_every_start(&mut m, &p);
        assert_eq!(m.state, State::Fatal);
        assert!(m.reason.as_deref().unwrap_or("").contains("start limit"));
        // An explicit start clears it.
        m.on(Event::Start, &p, 0.0);
        assert_eq!(m.state, State::Starting);
        assert_eq!(m.failed_starts, 0);
    }

    /// Start, then fail `start_limit` starts in a row.
    fn fail_every_start(m: &mut Machine, p: &Policy) {
        m.on(Event::Start, p, 0.0);
        for _ in 0..p.start_limit - 1 {
            m.on(exit(1, 0), p, 0.0);
            if m.state == State::Backoff {
                m.on(Event::BackoffElapsed, p, 0.0);
            }
            assert_eq!(m.state, State::Starting);
        }
        m.on(exit(1, 0), p, 0.0);
    }

    #[test]
    fn by_default_a_crash_loop_retries_every_backoff_max_and_never_gives_up() {
        let p = policy();
        assert!(!p.give_up, "giving up must be an explicit choice");
        let mut m = Machine::default();
        fail_every_start(&mut m, &p);
        assert_eq!(m.state, State::Backoff);
        let reason = m.reason.clone().unwrap_or_default();
        assert!(
            reason.starts_with("crash loop: 5 failed starts (last: exit 1); retrying every 30s"),
            "{reason}"
        );
        for _ in 0..10 {
            assert!(m
                .on(Event::BackoffElapsed, &p, 0.0)
                .contains(&Action::Spawn));
            assert_eq!(
                m.on(exit(1, 0), &p, 0.0),
                vec![
                    Action::StopLeftovers,
                    Action::CancelTimer,
                    Action::ArmTimer(p.backoff_max)
                ]
            );
            assert_eq!(m.state, State::Backoff);
        }
        // The day it comes up, the loop is over.
        m.on(Event::BackoffElapsed, &p, 0.0);
        m.on(Event::StartSecsElapsed, &p, 0.0);
        assert_eq!(m.state, State::Running);
        assert_eq!((m.failed_starts, m.reason.clone()), (0, None));
    }

    #[test]
    fn readiness_makes_a_start_successful_however_short_the_run() {
        let p = policy();
        let mut m = Machine::default();
        for _ in 0..p.start_limit * 3 {
            m.on(Event::Start, &p, 0.0);
            assert_eq!(m.on(Event::Ready, &p, 0.0), vec![Action::CancelTimer]);
            assert_eq!(m.state, State::Running);
            m.on(exit(1, 0), &p, 0.0);
            if m.state == State::Backoff {
                m.on(Event::BackoffElapsed, &p, 0.0);
            }
            assert_ne!(m.state, State::Fatal);
            assert_eq!(m.failed_starts, 0, "a ready start is not a failed one");
        }
    }

    #[test]
    fn a_crash_lets_the_rest_of_the_group_finish_but_a_stop_does_not_wait() {
        let p = policy();
        let mut m = Machine::default();
        m.on(Event::Start, &p, 0.0);
        m.on(Event::StartSecsElapsed, &p, 0.0);
        // The main process died on its own: its workers get the stop signal and the grace period.
        let actions = m.on(exit(1, 5), &p, 0.0);
        assert_eq!(actions[0], Action::StopLeftovers);
        assert!(!actions.contains(&Action::KillGroup));
        // After a stop the main process has had its grace period already: what is left is killed.
        m.on(Event::Start, &p, 0.0);
        m.on(Event::BackoffElapsed, &p, 0.0);
        m.on(Event::StartSecsElapsed, &p, 0.0);
        m.on(Event::Stop, &p, 0.0);
        assert_eq!(m.on(exit(0, 5), &p, 0.0)[0], Action::KillGroup);
    }

    #[test]
    fn on_failure_leaves_clean_exit_alone() {
        let mut p = policy();
        p.restart = RestartPolicy::OnFailure;
        let mut m = Machine::default();
        m.on(Event::Start, &p, 0.0);
        m.on(Event::StartSecsElapsed, &p, 0.0);
        m.on(exit(0, 5), &p, 0.0);
        assert_eq!(m.state, State::Exited);
    }

    #[test]
    fn failed_condition_skips_and_counts_as_done() {
        for oneshot in [true, false] {
            let mut p = policy();
            p.oneshot = oneshot;
            let mut m = Machine::default();
            assert!(m.on(Event::Start, &p, 0.0).contains(&Action::Spawn));
            let reason = "skipped: /x does not exist".to_string();
            assert_eq!(
                m.on(Event::ConditionFailed { reason }, &p, 0.0),
                vec![Action::CancelTimer]
            );
            assert_eq!(m.state, State::Exited);
            assert_eq!(m.reason.as_deref(), Some("skipped: /x does not exist"));
            assert!(m.is_up(), "a skipped unit must not block its dependents");
            assert_eq!(m.restarts, 0);
            // A later start evaluates the condition again.
            assert!(m.on(Event::Start, &p, 0.0).contains(&Action::Spawn));
            assert!(!m.is_up());
        }
    }

    fn running(p: &Policy) -> Machine {
        let mut m = Machine::default();
        m.on(Event::Start, p, 0.0);
        m.on(Event::StartSecsElapsed, p, 0.0);
        m
    }

    #[test]
    fn restart_stops_then_starts_at_once() {
        let p = policy();
        let mut m = running(&p);
        assert_eq!(
            m.on(Event::Restart, &p, 0.0),
            vec![Action::SignalStop, Action::ArmTimer(p.stop_grace)]
        );
        assert_eq!(m.state, State::Stopping);
        let a = m.on(exit(0, 5), &p, 0.0);
        assert!(a.contains(&Action::Spawn), "{a:?}");
        assert_eq!(m.state, State::Starting);
        assert_eq!(m.restarts, 1);
        assert_eq!(
            m.last_restart, None,
            "an asked-for restart is not a failure"
        );
        // A stopped unit just starts.
        let mut stopped = Machine::default();
        assert!(stopped.on(Event::Restart, &p, 0.0).contains(&Action::Spawn));
    }

    #[test]
    fn a_health_failure_restarts_through_the_backoff_series() {
        let p = policy();
        let mut m = running(&p);
        let reason = "liveness probe failed: GET /: 500".to_string();
        assert_eq!(
            m.on(Event::HealthFailed { reason }, &p, 0.0),
            vec![Action::SignalStop, Action::ArmTimer(p.stop_grace)]
        );
        m.on(exit(0, 5), &p, 0.0);
        assert_eq!(
            m.last_restart.as_deref(),
            Some("liveness probe failed: GET /: 500")
        );
        m.on(Event::StartSecsElapsed, &p, 0.0);
        let reason = "watchdog timeout".to_string();
        m.on(Event::HealthFailed { reason }, &p, 0.0);
        let a = m.on(exit(0, 5), &p, 0.0);
        assert_eq!(m.state, State::Backoff, "the second one waits: {a:?}");
        assert!(a.contains(&Action::ArmTimer(p.backoff_initial)), "{a:?}");
        // Without a process there is nothing to restart.
        let mut stopped = Machine::default();
        let reason = "late".to_string();
        assert_eq!(stopped.on(Event::HealthFailed { reason }, &p, 0.0), vec![]);
    }

    #[test]
    fn reset_forgets_a_failure_and_bind_failed_is_fatal() {
        let p = policy();
        let mut m = Machine::default();
        let reason = "cannot bind 127.0.0.1:80: in use".to_string();
        assert_eq!(
            m.on(Event::BindFailed { reason }, &p, 0.0),
            vec![Action::CancelTimer]
        );
        assert_eq!(m.state, State::Fatal);
        assert_eq!(
            m.reason.as_deref(),
            Some("cannot bind 127.0.0.1:80: in use")
        );
        assert_eq!(m.on(Event::Reset, &p, 0.0), vec![Action::CancelTimer]);
        assert_eq!(m.state, State::Stopped);
        assert_eq!(m.reason, None);
        // A running unit is left alone.
        let mut r = running(&p);
        assert_eq!(r.on(Event::Reset, &p, 0.0), vec![]);
        assert_eq!(r.state, State::Running);
    }

    #[test]
    fn oneshot_success_is_up() {
        let mut p = policy();
        p.oneshot = true;
        let mut m = Machine::default();
        assert_eq!(
            m.on(Event::Start, &p, 0.0),
            vec![Action::Spawn, Action::CancelTimer]
        );
        m.on(exit(0, 0), &p, 0.0);
        assert_eq!(m.state, State::Exited);
        assert!(m.is_up());
    }

    #[test]
    fn stop_signals_then_kills_after_grace() {
        let p = policy();
        let mut m = Machine::default();
        m.on(Event::Start, &p, 0.0);
        m.on(Event::StartSecsElapsed, &p, 0.0);
        assert_eq!(
            m.on(Event::Stop, &p, 0.0),
            vec![Action::SignalStop, Action::ArmTimer(p.stop_grace)]
        );
        assert_eq!(m.on(Event::GraceElapsed, &p, 0.0), vec![Action::KillGroup]);
        m.on(
            Event::Exited {
                status: ExitStatus::Signal(9),
                uptime: Duration::ZERO,
            },
            &p,
            0.0,
        );
        assert_eq!(m.state, State::Stopped);
    }

    #[test]
    fn health_restarts_back_off_like_crashes() {
        let p = policy();
        let mut m = Machine::default();
        m.on(Event::Start, &p, 0.0);
        m.on(Event::StartSecsElapsed, &p, 0.0);
        for expected in [
            None,
            Some(Duration::from_millis(100)),
            Some(Duration::from_millis(200)),
        ] {
            m.on(Event::Stop, &p, 0.0);
            m.restart_after_stop = true;
            m.health_restart = true;
            let a = m.on(
                Event::Exited {
                    status: ExitStatus::Signal(15),
                    uptime: Duration::from_secs(1),
                },
                &p,
                0.0,
            );
            match expected {
                None => assert!(a.contains(&Action::Spawn), "{a:?}"),
                Some(d) => {
                    assert!(a.contains(&Action::ArmTimer(d)), "{a:?}");
                    m.on(Event::BackoffElapsed, &p, 0.0);
                }
            }
            m.on(Event::StartSecsElapsed, &p, 0.0);
        }
        assert_eq!(m.restarts, 3);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = policy();
        assert_eq!(backoff_delay(&p, 0, 1.0), Duration::ZERO);
        assert_eq!(backoff_delay(&p, 30, 0.0), p.backoff_max);
        let d = backoff_delay(&p, 2, 1.0);
        assert!(
            d > Duration::from_millis(200) && d <= Duration::from_millis(221),
            "{d:?}"
        );
    }
}
