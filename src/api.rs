//! The JSON shapes of the control API (`status --json` is part of the interface contract).
#![forbid(unsafe_code)]

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Service states, as supervisord and the contract name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Stopped,
    Starting,
    Running,
    Backoff,
    Stopping,
    Exited,
    Fatal,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff => "backoff",
            State::Stopping => "stopping",
            State::Exited => "exited",
            State::Fatal => "fatal",
        }
    }
}

/// `GET /v1/status` -> `{"services": [...]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub services: Vec<ServiceStatus>,
    /// True while the instance drains for shutdown (`/healthz` answers 503).
    #[serde(default)]
    pub draining: bool,
    /// The per-launch overlay (EC2 user data), when the config names one and it was there at the last load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<UserDataStatus>,
}

/// What became of the user-data overlay: `applied`, or refused with every error (`FILE:LINE:COL: key:
/// message`), in which case the baked config runs without any of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDataStatus {
    pub path: std::path::PathBuf,
    pub applied: bool,
    #[serde(default)]
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// `app@0` for replicas, `app` for single services, `proxy` for the built-in proxy.
    pub name: String,
    /// The `[service.NAME]` this entry belongs to.
    pub service: String,
    pub replica: Option<u32>,
    pub state: State,
    pub ready: bool,
    pub pid: Option<i32>,
    pub restarts: u32,
    /// Seconds since the current process started (running/starting/stopping), else null.
    pub uptime_secs: Option<f64>,
    /// How the last process ended: "exit 0", "exit 3", "signal KILL".
    pub last_exit: Option<String>,
    /// Why the service is in its state when that is not obvious: "start limit reached: 5 failed starts", ...
    pub reason: Option<String>,
    pub oneshot: bool,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// The latest probe result, e.g. "readiness ok" or "liveness: GET /: 500, expected 200".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    /// The service's own STATUS= line from the notify socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_text: Option<String>,
    /// Why stackinit last restarted it on its own: "exited: signal KILL", "watchdog timeout: ...",
    /// "liveness: ...". Stays after the new process runs, unlike `reason` (systemd's `Result=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart: Option<String>,
    /// What the current process tree uses, read from its cgroup when status is asked (absent without
    /// cgroups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A unit's resource use, from its cgroup v2 files. A field is absent when its controller is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Processes the kernel's OOM killer killed in the unit's cgroup (its `memory.events`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
}

/// Body of every error answer: `{"error": "..."}` with a 4xx/5xx status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

/// Body of the answer to start/stop/restart/shutdown: what was done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionReply {
    pub ok: bool,
    pub message: String,
}

/// Body of the answer to `POST /v1/reload`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReply {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// Body of the answer to `POST /v1/diff` (and `POST /v1/reload?dry_run=1`): what a reload would do,
/// service by service, without doing it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffReply {
    /// Every service of the running or the new config, by name.
    pub services: Vec<ServiceDiff>,
    pub proxy: ProxyDiff,
    /// `[init]` differs: that takes effect at the next boot only.
    pub init_changed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDiff {
    pub name: String,
    /// How its `[service.NAME]` differs: `added`, `removed`, `changed` or `unchanged`.
    pub config: String,
    /// What happens to its processes: the strongest of its units' actions.
    pub action: DiffAction,
    /// The keys of `[service.NAME]` that differ (for `changed`).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Each process slot (`app@0`, `app@1`, or `app`) and what happens to it.
    pub units: Vec<UnitDiff>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitDiff {
    pub name: String,
    pub action: DiffAction,
}

/// What a reload does to a process, or to the proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiffAction {
    /// Nothing.
    #[default]
    Unchanged,
    /// Gone from the config and not running: only forgotten.
    Remove,
    /// The proxy only: routes, names or limits change over its state channel, without a restart.
    Reconfigure,
    Stop,
    Start,
    Restart,
    /// A replicated service: each replica's successor starts and is ready before the old one stops.
    RollingRestart,
}

impl DiffAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DiffAction::Unchanged => "unchanged",
            DiffAction::Remove => "remove",
            DiffAction::Reconfigure => "reconfigure",
            DiffAction::Stop => "stop",
            DiffAction::Start => "start",
            DiffAction::Restart => "restart",
            DiffAction::RollingRestart => "rolling restart",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyDiff {
    pub action: DiffAction,
    /// One line per change: `listen: ["0.0.0.0:80"] -> [...]`, `server example.org: added`, ...
    pub changes: Vec<String>,
}

/// Body of `POST /v1/diff`: a config to compare instead of the running stack's own file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffRequest {
    /// The TOML text.
    pub config: String,
    /// The name its errors are reported under (the client's path).
    #[serde(default)]
    pub path: Option<String>,
}

/// An error from the supervisor to be sent back as HTTP `status` + `ErrorReply`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError {
            status: 404,
            message: what.into(),
        }
    }
    pub fn bad_request(what: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: what.into(),
        }
    }
    pub fn conflict(what: impl Into<String>) -> ApiError {
        ApiError {
            status: 409,
            message: what.into(),
        }
    }
}
