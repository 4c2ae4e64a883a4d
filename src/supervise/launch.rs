//! Turning a unit into a spawnable command: program lookup, environment, credentials, capabilities.
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use nix::unistd::{Gid, Uid};

use super::capabilities;
use super::spawn::{self, Credentials};
use super::unit::{Unit, UnitKind};
use super::with_secrets::{self, SecretsSource};
use crate::config::{OneOrMany, ProxySpec, Secs, ServiceSpec};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Variables of our own environment that belong to whoever started us, not to our children.
const NOT_INHERITED: [&str; 8] = [
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "INVOCATION_ID",
    "STACKINIT_SOCKET",
];

pub fn uid_of(user: &str) -> Option<Uid> {
    nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .map(|u| u.uid)
}

pub fn gid_of(group: &str) -> Option<Gid> {
    nix::unistd::Group::from_name(group)
        .ok()
        .flatten()
        .map(|g| g.gid)
}

pub fn primary_gid(user: &str, group: Option<&str>) -> Option<Gid> {
    match group {
        Some(g) => gid_of(g),
        None => nix::unistd::User::from_name(user)
            .ok()
            .flatten()
            .map(|u| u.gid),
    }
}

/// The built-in proxy as a service: our own binary, unprivileged, no capabilities, its access log on stdout.
pub fn proxy_service_spec(proxy: &ProxySpec) -> ServiceSpec {
    ServiceSpec {
        command: vec!["stackinit".into(), "proxy".into()],
        user: is_root().then(|| proxy.user.clone()),
        group: if is_root() { proxy.group.clone() } else { None },
        after: proxy.after.clone(),
        // Listeners are handed in, so the proxy needs no capability at all.
        capabilities: Vec::new(),
        start_secs: Secs::from_millis(300),
        stop_grace: Secs(proxy.stop_grace.0 + std::time::Duration::from_secs(1)),
        nice: proxy.nice.or(is_root().then_some(PROXY_NICE_AS_ROOT)),
        // Its connections need far more than the 1024 services keep (see `proxy::conn_limit`).
        nofile: Some(proxy.nofile.unwrap_or_else(crate::nofile::proxy_default)),
        log_max_bytes: proxy.log_max_bytes,
        log_backups: proxy.log_backups,
        stdout: proxy.access_log.clone(),
        ..ServiceSpec::default()
    }
}

/// See `ProxySpec::nice`.
pub const PROXY_NICE_AS_ROOT: i32 = -5;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The capability plan for a service (see capabilities.rs); nothing to do when init is not root.
fn capability_plan(
    spec: &ServiceSpec,
    credentials: Option<&Credentials>,
) -> Result<capabilities::CapPlan, String> {
    if !is_root() {
        return Ok(capabilities::CapPlan::default());
    }
    let bounding = caps::read(None, caps::CapSet::Bounding)
        .map_err(|e| format!("cannot read the capability bounding set: {e}"))?;
    let can_setpcap = caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SETPCAP)
        .unwrap_or(false);
    capabilities::plan(&capabilities::Situation {
        keep: &spec.capabilities,
        bounding: &bounding,
        can_setpcap,
        runs_as_root: credentials.is_none_or(|c| c.uid.is_root()),
        no_new_privs: spec.no_new_privs,
    })
}

/// What every service gets from the supervisor besides its own spec.
#[derive(Clone, Debug, Default)]
pub struct Surroundings {
    /// Instance facts (`STACKINIT_*`), unless the service's own `environment` sets the same variable.
    pub facts: Vec<(String, String)>,
    /// The notify socket's path, for NOTIFY_SOCKET.
    pub notify_socket: Option<PathBuf>,
    /// Where services with `secrets` fetch them from.
    pub secrets: SecretsSource,
}

impl Surroundings {
    /// What boot discovered and the config's `[init]` say every service gets.
    pub fn set(&mut self, facts: &crate::facts::Facts, config: &crate::config::Config) {
        self.facts = facts.environment(config);
        self.secrets = SecretsSource::of(&config.init);
    }
}

/// The command for a service's main process: `command_for` plus the instance facts, NOTIFY_SOCKET and
/// WATCHDOG_USEC, behind `secrets-exec` when it has secrets.
pub fn service_command<'a>(
    unit: &'a Unit,
    fds: Vec<(BorrowedFd<'a>, String)>,
    around: &Surroundings,
) -> Result<spawn::Command<'a>, String> {
    let mut cmd = command_for(unit, fds, &around.facts)?;
    if let Some(p) = &around.notify_socket {
        cmd.env.push(("NOTIFY_SOCKET".into(), p.into()));
    }
    if let Some(w) = unit.spec.watchdog {
        cmd.env
            .push(("WATCHDOG_USEC".into(), w.0.as_micros().to_string().into()));
    }
    with_secrets::wrap(cmd, &unit.spec, &around.secrets)
}

/// An exec probe's command: the service's user, directory and environment, running `argv`.
pub fn probe_command<'a>(unit: &'a Unit, argv: &[String]) -> Result<spawn::Command<'a>, String> {
    let mut cmd = command_for(unit, Vec::new(), &[])?;
    let first = argv.first().ok_or("empty exec probe")?;
    let path = path_of(&cmd.env);
    cmd.program = spawn::resolve_program(first, &path, unit.spec.directory.as_deref())
        .ok_or_else(|| format!("command not found: {first}"))?;
    cmd.argv = argv.to_vec();
    Ok(cmd)
}

/// Everything `spawn` needs for this unit, resolved now (in the parent) so the child does no lookups.
/// `defaults` (the instance facts) are set before the service's own `environment` and `environment_file`,
/// which may override them.
pub fn command_for<'a>(
    unit: &'a Unit,
    fds: Vec<(BorrowedFd<'a>, String)>,
    defaults: &[(String, String)],
) -> Result<spawn::Command<'a>, String> {
    let spec = &unit.spec;
    let credentials: Option<Credentials> = match &spec.user {
        Some(user) => {
            Some(spawn::credentials_for(user, spec.group.as_deref()).map_err(|e| e.to_string())?)
        }
        None => match &spec.group {
            Some(g) => {
                let gid = gid_of(g).ok_or_else(|| format!("unknown group {g:?}"))?;
                Some(Credentials {
                    uid: nix::unistd::geteuid(),
                    gid,
                    groups: vec![gid],
                })
            }
            None => None,
        },
    };

    let mut env = inherited_environment();
    let mut set = |k: &str, v: String| {
        env.retain(|(key, _)| key != k);
        env.push((k.into(), v.into()));
    };
    if std::env::var_os("PATH").is_none() {
        set("PATH", DEFAULT_PATH.into());
    }
    if let Some(user) = &spec.user {
        if let Ok(Some(entry)) = nix::unistd::User::from_name(user) {
            set("HOME", entry.dir.display().to_string());
            set("USER", entry.name.clone());
            set("LOGNAME", entry.name.clone());
            set("SHELL", entry.shell.display().to_string());
        }
    }
    set("STACKINIT_SERVICE", unit.service.clone());
    if let Some(r) = unit.replica {
        set("STACKINIT_REPLICA", r.to_string());
    } else if unit.kind == UnitKind::Service {
        set("STACKINIT_REPLICA", "0".into());
    }
    for (k, v) in defaults {
        set(k, v.clone());
    }
    for (k, v) in &spec.environment {
        set(k, v.clone());
    }
    // Read at every start, as systemd reads EnvironmentFile=: a file another job wrote counts. Its values
    // override `environment`, as systemd's do.
    for file in spec.environment_file.iter().flat_map(OneOrMany::to_vec) {
        for (k, v) in crate::config::env_file::read(&file)? {
            set(&k, v);
        }
    }

    let path_var = path_of(&env);
    let first = spec.command.first().ok_or("empty command")?;
    // `stackinit` means this very binary, so the proxy and demo workers match the running init.
    let program: PathBuf = if first == "stackinit" {
        std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?
    } else {
        spawn::resolve_program(first, &path_var, spec.directory.as_deref())
            .ok_or_else(|| format!("command not found: {first} (PATH={path_var})"))?
    };

    let capabilities = capability_plan(spec, credentials.as_ref())?;
    Ok(spawn::Command {
        program,
        argv: spec.command.clone(),
        env,
        directory: spec.directory.clone(),
        credentials,
        umask: spec.umask.map(|m| m.0),
        // `nofile` sets both limits; else the soft limit stackinit started with (see crate::nofile).
        nofile: spec
            .nofile
            .map(|n| (n, n))
            .or_else(crate::nofile::for_services),
        nice: spec.nice,
        no_new_privs: spec.no_new_privs,
        capabilities,
        stdout: unit.stdout.open()?.child_fd(),
        stderr: unit.stderr.open()?.child_fd(),
        listen_fds: fds,
        cgroup_procs: None,
    })
}

/// What a service inherits of stackinit's own environment: every variable but those meant for stackinit
/// itself, as bytes. A variable need not be UTF-8 (a Latin-1 locale value, a binary token): it is passed
/// on unchanged, never a reason to fail.
fn inherited_environment() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| {
            let own = NOT_INHERITED.iter().any(|n| OsStr::new(n) == k);
            !own && k != "STACKINIT_TEST_PANIC"
        })
        .collect()
}

/// The PATH a command is looked up in: the child's own (lossy if it is not UTF-8), else the default.
fn path_of(env: &[(OsString, OsString)]) -> String {
    env.iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH.to_string(), |(_, v)| {
            v.to_string_lossy().into_owned()
        })
}

/// The first `condition_path_exists` entry that does not hold, described for status and the log.
/// Checked at each start (boot, `stackinit start`, restarts), like systemd's conditions.
pub fn unmet_condition(spec: &ServiceSpec) -> Option<String> {
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
