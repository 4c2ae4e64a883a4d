//! The config schema: the TOML a user writes, as typed structs with defaults.
//!
//! This is the interface contract of `shared/DESIGN.md`. Unknown keys are errors everywhere
//! (`deny_unknown_fields`), so a typo never silently falls back to a default.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::units::{Bytes, Mode, Percent, Secs};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub init: InitSpec,
    /// Services by name. A BTreeMap keeps `status` output and start order deterministic.
    #[serde(default)]
    pub service: BTreeMap<String, ServiceSpec>,
    #[serde(default)]
    pub proxy: Option<ProxySpec>,
    /// The per-launch overlay (`[init] user_data`) found when this config was loaded, and what became of it.
    /// Not a key: set by the loader.
    #[serde(skip)]
    pub user_data: Option<UserData>,
}

/// A user-data overlay that was present at load: applied (no errors), or refused with every error
/// (`FILE:LINE:COL: key: message`), in which case the config is the baked one alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserData {
    pub path: PathBuf,
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InitSpec {
    /// Where service logs and stackinit's own log go; created if missing.
    pub logs_dir: PathBuf,
    /// Owner and mode of `logs_dir` when stackinit creates or fixes it.
    pub logs_user: Option<String>,
    pub logs_group: Option<String>,
    pub logs_mode: Mode,
    pub control_socket: PathBuf,
    /// Group allowed to use the control socket (mode 0660). Root always is.
    pub control_group: Option<String>,
    /// Verbosity of stackinit's own log: error, warn, info, debug, trace.
    pub log_level: String,
    /// How long `/healthz` answers 503 before services are stopped on shutdown, so load balancers stop
    /// sending traffic first.
    pub shutdown_drain: Secs,
    /// The ordered stop after the drain ends by this deadline: whatever still runs then is killed
    /// (SIGKILL to its process group), whatever its `stop_grace`. systemd's DefaultTimeoutStopSec.
    pub shutdown_timeout: Secs,
    /// Hostname to set when running as PID 1. Empty: leave it, or take it from instance facts.
    pub hostname: Option<String>,
    /// Where instance facts (names, IPs, instance id) come from.
    pub imds: ImdsSpec,
    /// A per-launch overlay: TOML merged onto this config whenever it is loaded, if the file exists.
    /// `stackinit user-data` writes it from the EC2 user data at boot. Unset: no overlay.
    pub user_data: Option<PathBuf>,
    /// Where `secrets` are fetched from (see `config::secrets`).
    pub aws: super::secrets::AwsSpec,
    /// Also serve the web dashboard on this TCP address (`"127.0.0.1:9001"`, for SSH/SSM port
    /// forwarding). Off when unset. A non-loopback address needs credentials.
    pub dashboard: Option<String>,
    /// Basic-auth credentials for the TCP dashboard (both or neither).
    pub dashboard_user: Option<String>,
    pub dashboard_password: Option<String>,
    /// Bearer token for the TCP dashboard (`Authorization: Bearer T`, or open `/?token=T` once).
    pub dashboard_token: Option<String>,
    /// How long a browser stays signed in after opening `/?token=T` (its session cookie's lifetime).
    pub dashboard_session_lifetime: Secs,
}

/// The EC2 instance metadata service (IMDSv2), asked once at boot for the instance's names and IPs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImdsSpec {
    /// true: always ask; false: never; unset: ask only when the machine says it is EC2 (DMI vendor).
    pub enabled: Option<bool>,
    pub endpoint: String,
    /// Per request; IMDS answers in milliseconds, and boot must not hang where there is none.
    pub timeout: Secs,
}

impl Default for ImdsSpec {
    fn default() -> Self {
        ImdsSpec {
            enabled: None,
            endpoint: "http://169.254.169.254".into(),
            timeout: Secs::from_millis(1000),
        }
    }
}

impl Default for InitSpec {
    fn default() -> Self {
        InitSpec {
            logs_dir: PathBuf::from("/logs"),
            logs_user: None,
            logs_group: None,
            logs_mode: Mode(0o755),
            control_socket: PathBuf::from(crate::paths::DEFAULT_CONTROL_SOCKET),
            control_group: None,
            log_level: "info".into(),
            shutdown_drain: Secs::from_secs(0),
            shutdown_timeout: Secs::from_secs(90),
            hostname: None,
            imds: ImdsSpec::default(),
            user_data: None,
            aws: Default::default(),
            dashboard: None,
            dashboard_user: None,
            dashboard_password: None,
            dashboard_token: None,
            dashboard_session_lifetime: Secs::from_secs(12 * 3600),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// What happens once `start_limit` starts in a row have failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StartLimitAction {
    /// Keep retrying every `backoff_max`, as kubelet's CrashLoopBackOff does: an unattended instance
    /// never gives up on a service that may come back (a dependency, a disk, a secret that returns).
    #[default]
    Backoff,
    /// Give up: the service goes `fatal` until `stackinit start` or a reload (supervisord's FATAL).
    Fatal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSpec {
    /// argv; the program is looked up in PATH (the service's own PATH if it sets one).
    pub command: Vec<String>,
    pub directory: Option<PathBuf>,
    pub user: Option<String>,
    /// Primary group; default: the user's primary group. Supplementary groups come from the user's entry.
    pub group: Option<String>,
    pub environment: BTreeMap<String, String>,
    /// systemd's `EnvironmentFile=`: files of `KEY=VALUE` lines (`#` and `;` comments, blank lines, quoted
    /// values), read at every start; their values override `environment`. A path starting with `-` may be
    /// missing.
    pub environment_file: Option<OneOrMany>,
    /// Variables whose values are fetched from AWS at each start: `"ssm:NAME"` or
    /// `"secretsmanager:ID[#KEY]"` (see `config::secrets`). Never logged or shown.
    pub secrets: BTreeMap<String, String>,
    /// Octal, like "0022".
    pub umask: Option<Mode>,
    /// RLIMIT_NOFILE soft and hard limit.
    pub nofile: Option<u64>,
    /// CPU scheduling priority, -20 (first) to 19 (last), like systemd's `Nice=`. Below 0 needs root.
    pub nice: Option<i32>,
    pub no_new_privs: bool,
    /// Capabilities kept in the bounding set (names like "CAP_NET_ADMIN" or "net_admin", or "ALL").
    /// Everything else is dropped before exec.
    pub capabilities: Vec<String>,
    pub replicas: u32,
    /// Sockets bound by stackinit and passed in via LISTEN_FDS: "unix:/path", "127.0.0.1:8000", "[::1]:8000".
    pub listen: Option<OneOrMany>,
    /// Mode of unix listen sockets, octal.
    pub listen_mode: Mode,
    /// Services that must be ready (oneshots: exited 0) before this one starts.
    pub after: Vec<String>,
    pub autostart: bool,
    pub oneshot: bool,
    /// systemd's `ConditionPathExists=`: start only if each path exists (`!/path`: does not exist). When one
    /// does not hold, the start is skipped, not failed: the unit shows `exited` with the reason and counts as
    /// done for the services `after` it.
    pub condition_path_exists: Option<OneOrMany>,
    pub restart: RestartPolicy,
    /// Exit codes that count as success (for `restart = "on-failure"` and oneshots).
    pub success_exit_codes: Vec<i32>,
    /// A process that dies sooner than this after starting is a failed start.
    pub start_secs: Secs,
    /// Consecutive failed starts (exits before `start_secs` and before readiness) that make a crash loop.
    pub start_limit: u32,
    /// In a crash loop: keep retrying every `backoff_max` (default), or go `fatal`.
    pub start_limit_action: StartLimitAction,
    /// cgroup v2 limits of each process (systemd's MemoryMax=, MemoryHigh=, CPUWeight=, CPUQuota=,
    /// TasksMax=, IOWeight=; kubelet's memory and cpu limits).
    pub memory_max: Option<Bytes>,
    pub memory_high: Option<Bytes>,
    pub cpu_weight: Option<u32>,
    /// Percent of one CPU, as systemd's `CPUQuota=` (`"50%"`, `"200%"`).
    pub cpu_max: Option<Percent>,
    pub pids_max: Option<u32>,
    pub io_weight: Option<u32>,
    /// Restart delays: the first restart is immediate, then `backoff_initial` doubling up to `backoff_max`,
    /// with ±10 % jitter. The series resets once the service has stayed up for `backoff_reset`.
    pub backoff_initial: Secs,
    pub backoff_max: Secs,
    pub backoff_reset: Secs,
    pub stop_signal: String,
    /// Time between the stop signal and SIGKILL to the whole process group.
    pub stop_grace: Secs,
    /// In a rolling restart, how long a new replica has to become ready before the rollout halts
    /// (leaving the remaining old replicas serving).
    pub ready_timeout: Secs,
    /// A failing critical service makes `/healthz` answer 503.
    pub critical: bool,
    /// Most requests the proxy sends one replica at a time; more wait in the proxy and go to the first
    /// replica with room. 1 suits sync workers (gunicorn sync, the lean server): a fast request then never
    /// queues behind a slow one while another worker is free. Unset: no limit.
    pub max_in_flight: Option<u32>,
    /// The service sends READY=1 on $NOTIFY_SOCKET; it is ready only after that (and its probes).
    pub notify: bool,
    /// Restart the service when it sends no WATCHDOG=1 for this long (passed to it as WATCHDOG_USEC).
    /// A service can also set its own with WATCHDOG_USEC= on the notify socket.
    pub watchdog: Option<Secs>,
    pub startup: Option<Probe>,
    pub readiness: Option<Probe>,
    pub liveness: Option<Probe>,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    pub log_max_bytes: Bytes,
    pub log_backups: u32,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            command: Vec::new(),
            directory: None,
            user: None,
            group: None,
            environment: BTreeMap::new(),
            environment_file: None,
            secrets: BTreeMap::new(),
            umask: None,
            nofile: None,
            nice: None,
            no_new_privs: true,
            capabilities: Vec::new(),
            replicas: 1,
            listen: None,
            listen_mode: Mode(0o660),
            after: Vec::new(),
            autostart: true,
            oneshot: false,
            condition_path_exists: None,
            restart: RestartPolicy::Always,
            success_exit_codes: vec![0],
            start_secs: Secs::from_secs(1),
            start_limit: 5,
            start_limit_action: StartLimitAction::Backoff,
            memory_max: None,
            memory_high: None,
            cpu_weight: None,
            cpu_max: None,
            pids_max: None,
            io_weight: None,
            backoff_initial: Secs::from_millis(100),
            backoff_max: Secs::from_secs(30),
            backoff_reset: Secs::from_secs(60),
            stop_signal: "TERM".into(),
            stop_grace: Secs::from_secs(10),
            ready_timeout: Secs::from_secs(60),
            critical: true,
            max_in_flight: None,
            notify: false,
            watchdog: None,
            startup: None,
            readiness: None,
            liveness: None,
            stdout: None,
            stderr: None,
            log_max_bytes: Bytes(50 << 20),
            log_backups: 10,
        }
    }
}

/// A Kubernetes-style probe: exactly one of `http`, `tcp`, `exec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Probe {
    /// GET this path over the service's own listen socket.
    pub http: Option<String>,
    /// Expected HTTP status.
    pub expect: u16,
    /// Connect to this address, or to the service's own listen socket with `tcp = true`.
    pub tcp: Option<TcpProbeTarget>,
    pub exec: Option<Vec<String>>,
    pub initial_delay: Secs,
    pub period: Secs,
    pub timeout: Secs,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TcpProbeTarget {
    OwnSocket(bool),
    Address(String),
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            http: None,
            expect: 200,
            tcp: None,
            exec: None,
            initial_delay: Secs::from_secs(0),
            period: Secs::from_secs(10),
            timeout: Secs::from_secs(1),
            failure_threshold: 3,
            success_threshold: 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySpec {
    /// Plain-HTTP listen addresses, bound by init and handed to the proxy.
    pub listen: Vec<String>,
    pub tls: Option<TlsSpec>,
    /// The proxy process runs as this user, with no capabilities.
    pub user: String,
    pub group: Option<String>,
    /// Services the proxy waits for before starting (e.g. the DHCP client).
    pub after: Vec<String>,
    pub client_max_body_size: Bytes,
    /// Largest request head (request line + headers) accepted; larger gets 431.
    pub max_header_size: Bytes,
    /// Pass request headers whose names contain `_` to upstreams (nginx `underscores_in_headers`). Off, as in
    /// nginx: WSGI servers map `X_Forwarded_Proto` and `X-Forwarded-Proto` to the same `HTTP_X_FORWARDED_PROTO`,
    /// so a client could otherwise smuggle a value past the one the proxy sets.
    pub underscores_in_headers: bool,
    /// Peers whose `X-Forwarded-For` and `X-Forwarded-Proto` are believed: a load balancer in front (nginx's
    /// `set_real_ip_from` with `real_ip_header X-Forwarded-For` and `real_ip_recursive on`). Addresses,
    /// networks (`"10.0.0.0/8"`) or `"unix:"`. From such a peer the client is the rightmost untrusted address
    /// of `X-Forwarded-For` (the app's `X-Real-IP`, the access log) and its `http`/`https` reaches the app;
    /// from anyone else both are overwritten with what the proxy sees. Empty: nobody is trusted.
    pub trusted_proxies: Vec<String>,
    /// Names this instance is also reached by, beside the ones discovered at boot: a load balancer's DNS name,
    /// a custom domain. They join the servers the discovered names join, and the app's
    /// `STACKINIT_ALLOWED_HOSTS` (discovered ∪ these). Exact names or IPs only.
    pub extra_server_names: Vec<String>,
    pub connect_timeout: Secs,
    /// How long a request may wait in the proxy for a replica that is ready and has room (replicas
    /// restarting, or all at `max_in_flight`) before it gets 502.
    pub queue_timeout: Secs,
    /// Time allowed to receive a request's headers; kills slowloris connections.
    pub header_timeout: Secs,
    /// Time allowed for an upstream to start its response.
    pub upstream_timeout: Secs,
    /// Keep-alive idle time of client connections.
    pub idle_timeout: Secs,
    /// Grace period for in-flight requests on stop.
    pub stop_grace: Secs,
    /// The proxy's CPU priority (nginx `worker_priority`). Default -5 when init is root, else 0: when the app
    /// workers keep every core busy, the proxy still forwards (and answers `/healthz`) without waiting for a
    /// time slice behind them; it uses a few percent of the CPU they do.
    pub nice: Option<i32>,
    /// The proxy's open-file limit (RLIMIT_NOFILE, nginx's `worker_rlimit_nofile`). Default 65536, or
    /// init's own hard limit if that is lower.
    pub nofile: Option<u64>,
    /// Client connections served at once (nginx's `worker_connections`). Default: what `nofile` holds,
    /// two files per connection (the client's and its upstream's) after a reserve. At the cap, the
    /// longest-idle connection is closed for a new one; with none idle, a few more connections are
    /// accepted to answer `/healthz` (and 503 to anything else).
    pub max_connections: Option<u32>,
    /// Threads serving connections, each with its own event loop, accept loops and upstream pools (nginx's
    /// `worker_processes`). Default: the cores the proxy may run on (its CPU affinity and cgroup quota).
    pub workers: Option<u32>,
    /// Where the access log goes; default `<logs_dir>/access.log`.
    pub access_log: Option<PathBuf>,
    pub log_max_bytes: Bytes,
    pub log_backups: u32,
    pub server: Vec<ServerSpec>,
}

impl Default for ProxySpec {
    fn default() -> Self {
        ProxySpec {
            listen: vec!["0.0.0.0:80".into()],
            tls: None,
            user: "nobody".into(),
            group: None,
            after: Vec::new(),
            client_max_body_size: Bytes(1 << 20),
            max_header_size: Bytes(32 << 10),
            underscores_in_headers: false,
            trusted_proxies: Vec::new(),
            extra_server_names: Vec::new(),
            connect_timeout: Secs::from_secs(5),
            queue_timeout: Secs::from_secs(30),
            header_timeout: Secs::from_secs(60),
            upstream_timeout: Secs::from_secs(60),
            idle_timeout: Secs::from_secs(75),
            stop_grace: Secs::from_secs(30),
            nice: None,
            nofile: None,
            max_connections: None,
            workers: None,
            access_log: None,
            log_max_bytes: Bytes(50 << 20),
            log_backups: 10,
            server: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    #[serde(default = "default_tls_listen")]
    pub listen: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn default_tls_listen() -> Vec<String> {
    vec!["0.0.0.0:443".into()]
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSpec {
    /// nginx server_name forms: exact, `*.suffix`, `prefix.*`, `~regex`.
    pub server_name: Vec<String>,
    /// The server for Hosts no server_name matches. If none is marked, the first server is.
    pub default: bool,
    pub location: Vec<LocationSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LocationSpec {
    /// URL prefix; with `exact = true` the path must equal it (nginx `location = /path`).
    pub path: String,
    pub exact: bool,
    /// Proxy to a service's sockets (by service name) or an address ("unix:/path", "127.0.0.1:8000").
    pub upstream: Option<String>,
    /// Serve files from `root` + request path (nginx `root`) ...
    pub root: Option<PathBuf>,
    /// ... or from `alias` + the request path with the location prefix removed (nginx `alias`).
    pub alias: Option<PathBuf>,
    pub index: Vec<String>,
    /// Answer with this status (nginx `return`), with `redirect` as Location for 3xx.
    #[serde(rename = "return")]
    pub return_status: Option<u16>,
    pub redirect: Option<String>,
    /// Protocols a client may switch to through this upstream location (`Upgrade`, answered by a 101 and
    /// then a raw tunnel the location rules no longer see). Unset: `["websocket"]`; `[]`: none. nginx forwards
    /// no `Upgrade` unless a location sets `proxy_set_header Upgrade $http_upgrade`; others are dropped here.
    pub upgrade: Option<Vec<String>>,
}

/// What a location allows when it does not say: WebSocket, the one upgrade browsers make.
pub const DEFAULT_UPGRADE: &[&str] = &["websocket"];
