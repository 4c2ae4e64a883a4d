//! The sections of a supervisord configuration that are about supervisord itself: `[supervisord]`,
//! `[unix_http_server]` (the control socket), `[inet_http_server]` (the web UI, now the dashboard),
//! `[group:x]`, and those stackinit has no use for. Programs are `programs.rs`'s.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use super::emit::Table;
use super::env_pairs;
use super::expand;
use super::report::{ImportError, Skips};
use super::supervisord::{common_expansion, Loaded, Section, Value};

/// What the daemon's sections give the rest of the import.
#[derive(Debug)]
pub struct Daemon {
    pub init: Table,
    /// `[supervisord] environment`: every program gets it.
    pub env: BTreeMap<String, String>,
    /// Program name -> the `[group:x]` it belongs to, for `%(group_name)s`.
    pub groups: BTreeMap<String, String>,
    /// Where services' default log files go.
    pub logs_dir: String,
    /// `childlogdir`, which becomes `logs_dir` only if some program writes automatic log files.
    pub childlogdir: Option<Value>,
}

/// `childlogdir` becomes `logs_dir` when a service writes to default log files (`any_default`);
/// otherwise stackinit's own default (/logs) stays, for the proxy's access log.
pub fn place_logs(daemon: &mut Daemon, any_default: bool, skips: &mut Skips) {
    let Some(v) = daemon.childlogdir.take() else {
        return;
    };
    if any_default {
        daemon.init.set("logs_dir", v.text.trim(), Some(&v.at)).note(
            "childlogdir: where services' logs go when no file is named (NAME.out.log, NAME.err.log)",
        );
    } else {
        skips.add(&v.at, "childlogdir", "every program names its log files; stackinit's logs_dir (/logs) keeps the proxy's access log");
    }
}

pub fn convert(loaded: &Loaded, skips: &mut Skips) -> Result<Daemon, ImportError> {
    let mut daemon = Daemon {
        init: Table::new(&["init"], false),
        env: BTreeMap::new(),
        groups: BTreeMap::new(),
        logs_dir: "/logs".into(),
        childlogdir: None,
    };
    for section in &loaded.sections {
        let name = section.name.as_str();
        let (kind, _) = name.split_once(':').unwrap_or((name, ""));
        match kind {
            "program" | "include" => {}
            "supervisord" => supervisord_section(section, &mut daemon, skips)?,
            "unix_http_server" => unix_http_server(section, &mut daemon.init, skips),
            "inet_http_server" => inet_http_server(section, &mut daemon.init, skips)?,
            "group" => group(section, &mut daemon.groups, skips),
            _ => skips.add(&section.at, format!("[{name}]"), section_why(kind)),
        }
    }
    Ok(daemon)
}

fn section_why(kind: &str) -> &'static str {
    match kind {
        "supervisorctl" => {
            "stackinit's CLI talks to the control socket (--socket, $STACKINIT_SOCKET)"
        }
        "rpcinterface" => "not needed: stackinit's control API is built in",
        "eventlistener" => {
            "stackinit has no event listeners; /v1/events streams every state change"
        }
        "fcgi-program" => "stackinit does not run FastCGI programs",
        _ => "unknown section",
    }
}

fn supervisord_section(
    section: &Section,
    daemon: &mut Daemon,
    skips: &mut Skips,
) -> Result<(), ImportError> {
    for (key, v) in &section.keys {
        match key.as_str() {
            "environment" => {
                let here = v.at.dir();
                let text = expand::expand(&v.text, &|name| common_expansion(name, &here))
                    .map_err(|e| ImportError::at(&v.at, format!("environment: {e}")))?;
                daemon.env = env_pairs::parse(&text)
                    .map_err(|e| ImportError::at(&v.at, format!("environment: {e}")))?;
            }
            "childlogdir" => {
                daemon.logs_dir = v.text.trim().to_string();
                daemon.childlogdir = Some(v.clone());
            }
            "loglevel" => log_level(v, &mut daemon.init, skips),
            other => skips.add(&v.at, other, supervisord_key_why(other)),
        }
    }
    Ok(())
}

fn supervisord_key_why(key: &str) -> &'static str {
    match key {
        "logfile" | "logfile_maxbytes" | "logfile_backups" => {
            "stackinit's own log goes to its stderr (the console, or the journal under systemd)"
        }
        "pidfile" => "stackinit writes no pid file: it is PID 1 or a systemd service",
        "nodaemon" => "not needed: stackinit never daemonizes",
        "user" => "stackinit runs as root and starts each service as its own user",
        "minfds" => "set nofile on the services that need more file descriptors",
        "directory" => "set directory on each service",
        "umask" => "set umask on each service",
        _ => "no stackinit equivalent",
    }
}

fn log_level(v: &Value, init: &mut Table, skips: &mut Skips) {
    let level = match v.text.trim().to_lowercase().as_str() {
        "critical" | "error" => "error",
        "warn" => "warn",
        "info" => "info",
        "debug" => "debug",
        "trace" | "blather" => "trace",
        other => {
            skips.add(
                &v.at,
                "loglevel",
                format!("{other:?} is not a supervisord log level"),
            );
            return;
        }
    };
    init.set("log_level", level, Some(&v.at));
}

/// `file` becomes the control socket; its group may use it. Mode and passwords have no place: the
/// socket is always 0660 and trusts the peer's credentials (SO_PEERCRED).
fn unix_http_server(section: &Section, init: &mut Table, skips: &mut Skips) {
    for (key, v) in &section.keys {
        match key.as_str() {
            "file" => skips.add(&v.at, "file", "stackinit's control socket stays where its CLI looks by default, /run/stackinit/control.sock"),
            "chown" => match v.text.trim().split_once(':') {
                Some((_, group)) if !group.is_empty() => {
                    init.set("control_group", group, Some(&v.at))
                        .note("members of this group may use the control socket, as root may");
                }
                _ => skips.add(&v.at, "chown", "the control socket belongs to root; give user:group to let a group use it"),
            },
            "chmod" => skips.add(&v.at, "chmod", "the control socket is always 0660 (root and control_group)"),
            "username" | "password" => skips.add(&v.at, key, "the control socket trusts the caller's uid and groups (SO_PEERCRED), not a password"),
            other => skips.add(&v.at, other, "no stackinit equivalent"),
        }
    }
}

/// supervisord's web UI becomes the dashboard's TCP listener.
fn inet_http_server(
    section: &Section,
    init: &mut Table,
    skips: &mut Skips,
) -> Result<(), ImportError> {
    let Some(port) = section.get("port") else {
        skips.add(
            &section.at,
            "[inet_http_server]",
            "no port = ...: the dashboard stays on the control socket only",
        );
        return Ok(());
    };
    let mut address = dashboard_address(port)?;
    let user = section.get("username");
    let password = section.get("password");
    let hashed = password.is_some_and(|p| p.text.trim().starts_with("{SHA}"));
    let loopback = address.starts_with("127.") || address.starts_with("[::1]");
    if hashed && !loopback {
        address = format!("127.0.0.1:{}", address.rsplit(':').next().unwrap_or("9001"));
        skips.add(&port.at, "port", format!("bound to {address}: the password is a {{SHA}} hash, which the dashboard cannot check, and off loopback it needs credentials; reach it by SSH/SSM port forwarding, or set dashboard_token"));
    }
    init.set("dashboard", address, Some(&port.at))
        .note("supervisord's web UI is now the dashboard (start, stop, restart, live logs)");
    for (key, v) in &section.keys {
        match (key.as_str(), hashed) {
            ("port", _) => {}
            ("username", false) if password.is_some() => {
                init.set("dashboard_user", v.text.trim(), Some(&v.at));
            }
            ("password", false) if user.is_some() => {
                init.set("dashboard_password", v.text.trim(), Some(&v.at)).note(
                    "copied in the clear from the supervisord config: anyone who can read this file can use the \
                     dashboard; prefer a long random dashboard_token, and keep the file mode 0600",
                );
            }
            ("username" | "password", _) => skips.add(
                &v.at,
                key,
                "the dashboard needs both a user and a clear-text password (or a dashboard_token)",
            ),
            (other, _) => skips.add(&v.at, other, "no stackinit equivalent"),
        }
    }
    Ok(())
}

/// supervisord's `port = host:port` (or `*:port`, `:port`, `port`) as `IP:PORT`.
fn dashboard_address(v: &Value) -> Result<String, ImportError> {
    let text = v.text.trim();
    let (host, port) = text.rsplit_once(':').unwrap_or(("", text));
    let port: u16 = port
        .parse()
        .map_err(|_| ImportError::at(&v.at, format!("port {text:?} has no valid port number")))?;
    let ip = match host {
        "" | "*" => "0.0.0.0",
        "localhost" => "127.0.0.1",
        other => other,
    };
    let address = format!("{ip}:{port}");
    address.parse::<std::net::SocketAddr>().map_err(|_| {
        ImportError::at(
            &v.at,
            format!("port {text:?}: the dashboard binds an IP address, not {host:?}"),
        )
    })?;
    Ok(address)
}

/// `[group:x] programs = a,b`: remembered for `%(group_name)s`, reported since stackinit has no groups.
fn group(section: &Section, groups: &mut BTreeMap<String, String>, skips: &mut Skips) {
    let name = section.name.trim_start_matches("group:").trim();
    let programs: Vec<String> = section
        .get("programs")
        .map(|v| {
            v.text
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default();
    for program in &programs {
        groups.insert(program.clone(), name.to_string());
    }
    let priority = section
        .get("priority")
        .map(|p| format!("; its priority {} orders nothing", p.text.trim()))
        .unwrap_or_default();
    skips.add(
        &section.at,
        format!("[group:{name}]"),
        format!("stackinit has no groups: {} are separate services, started, stopped and restarted by name{priority}", programs.join(", ")),
    );
}
