//! `[program:x]` sections into `[service.x]` tables. Each key is expanded as supervisord expands it
//! (`%(here)s`, `%(program_name)s`, `%(process_num)d`, `%(ENV_X)s`, ...), converted where stackinit has
//! the same thing, and otherwise reported with its line and the reason.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};

use toml::Value as Toml;

use super::emit::{strings, Table};
use super::names::Names;
use super::program_logs;
use super::report::{ImportError, Origin, Skips};
use super::supervisord::{boolean, integer, Section, Value};
use super::web_app;

/// A converted program: its table, and what the rest of the import needs to know about it.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub table: Table,
    pub priority: i64,
    pub priority_at: Option<Origin>,
    pub autostart: bool,
    /// Addresses other configs reach it at (nginx `proxy_pass`): what it bound under supervisord, and
    /// what stackinit binds for it now.
    pub addresses: Vec<String>,
}

/// Keys handled by this module; anything else in a program section is reported.
const HANDLED: [&str; 25] = [
    "command",
    "directory",
    "user",
    "umask",
    "environment",
    "numprocs",
    "numprocs_start",
    "process_name",
    "priority",
    "autostart",
    "autorestart",
    "exitcodes",
    "startsecs",
    "startretries",
    "stopsignal",
    "stopwaitsecs",
    "stopasgroup",
    "killasgroup",
    "redirect_stderr",
    "stdout_logfile",
    "stderr_logfile",
    "stdout_logfile_maxbytes",
    "stderr_logfile_maxbytes",
    "stdout_logfile_backups",
    "stderr_logfile_backups",
];

/// Why a key stackinit has no place for is left out; None when its value changes nothing (a default
/// that stackinit's behaviour matches), so it is not worth a line.
fn why_not(key: &str, value: &str) -> Option<&'static str> {
    let off = matches!(
        value.trim().to_lowercase().as_str(),
        "false" | "no" | "off" | "0" | ""
    );
    match key {
        "stdout_events_enabled" | "stderr_events_enabled" | "stdout_capture_maxbytes"
        | "stderr_capture_maxbytes" => (!off).then_some(
            "stackinit has no event listeners; `stackinit logs --follow` and /v1/events stream instead",
        ),
        "stdout_syslog" | "stderr_syslog" => (!off).then_some("stackinit does not log to syslog"),
        "serverurl" => Some("stackinit has no XML-RPC interface; its control API is the unix socket"),
        _ => Some("no stackinit equivalent"),
    }
}

pub struct Context<'a> {
    pub env: &'a BTreeMap<String, String>,
    pub groups: &'a BTreeMap<String, String>,
    pub logs_dir: &'a str,
}

/// Convert one `[program:NAME]` section.
pub fn convert(
    section: &Section,
    ctx: &Context,
    skips: &mut Skips,
) -> Result<Service, ImportError> {
    let program = section
        .name
        .trim_start_matches("program:")
        .trim()
        .to_string();
    let name = service_name(&program, &section.at, skips);
    let mut names = Names {
        program: &program,
        group: ctx
            .groups
            .get(&program)
            .map(String::as_str)
            .unwrap_or(&program),
        numprocs: 1,
        env: ctx.env.clone(),
    };
    let get = |key: &str| section.get(key);
    let numprocs = match get("numprocs") {
        Some(v) => integer(v)?,
        None => 1,
    };
    if !(1..=1000).contains(&numprocs) {
        let at = get("numprocs").map_or(&section.at, |v| &v.at);
        return Err(ImportError::at(
            at,
            format!("numprocs {numprocs} is out of range (1 to 1000)"),
        ));
    }
    names.numprocs = numprocs;
    let env = program_environment(section, &names, skips)?;
    let inherited = ctx.env.keys().any(|k| !env.contains_key(k));
    names.env.extend(env);
    let mut table = Table::new(&["service", &name], false);
    table.from = Some(section.at.clone());
    let app = web_app::command(section, &names, &name, skips)?;
    table.set("command", strings(&app.command), app.command_at.as_ref());
    process_setup(section, &names, inherited, &mut table, skips)?;
    let replicas = web_app::apply(&app, numprocs, &mut table, section, skips);
    process_names(section, &names, &name, skips)?;
    let autostart = restart_policy(section, &mut table)?;
    stop_policy(section, &app, &mut table, skips)?;
    program_logs::convert(section, &names, ctx.logs_dir, &mut table, skips)?;
    for (key, value) in &section.keys {
        if HANDLED.contains(&key.as_str()) {
            continue;
        }
        if let Some(why) = why_not(key, &value.text) {
            skips.add(&value.at, key, why);
        }
    }
    let priority = match get("priority") {
        Some(v) => integer(v)?,
        None => 999,
    };
    let mut addresses = app.addresses.clone();
    addresses.extend(web_app::stackinit_addresses(&app.listen, replicas));
    Ok(Service {
        name,
        table,
        priority,
        priority_at: get("priority").map(|v| v.at.clone()),
        autostart,
        addresses,
    })
}

/// A stackinit service name for a program: letters, digits, `_`, `.` and `-`; `proxy` is the built-in
/// proxy's.
fn service_name(program: &str, at: &Origin, skips: &mut Skips) -> String {
    let mut name: String = program
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name == "proxy" {
        name = "proxy-program".into();
    }
    if name != program {
        skips.add(at, format!("[program:{program}]"), format!("renamed to service {name:?} (service names are letters, digits, '_', '.', '-'; \"proxy\" is the built-in proxy)"));
    }
    name
}

fn program_environment(
    section: &Section,
    names: &Names,
    skips: &mut Skips,
) -> Result<BTreeMap<String, String>, ImportError> {
    let Some(value) = section.get("environment") else {
        return Ok(BTreeMap::new());
    };
    let first = names.expand(value, 0)?;
    if names.numprocs > 1 && names.expand(value, 1)? != first {
        skips.add(&value.at, "environment", "differs per process (%(process_num)): replicas share one environment; process 0's is used, and each replica gets its number in $STACKINIT_REPLICA");
    }
    for var in names.shell_names(value) {
        skips.add(
            &value.at,
            format!("%(ENV_{var})s"),
            "expanded from this shell's environment (supervisord took it from its own)",
        );
    }
    super::env_pairs::parse(&first)
        .map_err(|e| ImportError::at(&value.at, format!("environment: {e}")))
}

fn process_setup(
    section: &Section,
    names: &Names,
    inherited: bool,
    table: &mut Table,
    skips: &mut Skips,
) -> Result<(), ImportError> {
    if let Some(v) = section.get("directory") {
        let dir = names.expand(v, 0)?;
        if names.numprocs > 1 && names.expand(v, 1)? != dir {
            skips.add(
                &v.at,
                "directory",
                "differs per process: replicas share one directory; process 0's is used",
            );
        }
        table.set("directory", dir, Some(&v.at));
    }
    if let Some(v) = section.get("user") {
        table.set("user", names.expand(v, 0)?, Some(&v.at));
    }
    if !names.env.is_empty() {
        let map: toml::map::Map<String, Toml> = names
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Toml::String(v.clone())))
            .collect();
        let at = section.get("environment").map(|v| &v.at);
        let entry = table.set("environment", Toml::Table(map), at);
        if inherited {
            entry.note("with [supervisord] environment, which supervisord gives every program");
        }
    }
    if let Some(v) = section.get("umask") {
        let text = names.expand(v, 0)?;
        let mode = u32::from_str_radix(text.trim(), 8)
            .map_err(|_| ImportError::at(&v.at, format!("umask {text:?} is not octal")))?;
        table.set("umask", format!("{mode:04o}"), Some(&v.at));
    }
    Ok(())
}

/// `numprocs` with `process_name`: supervisord names processes by the pattern, stackinit `NAME@N`.
fn process_names(
    section: &Section,
    names: &Names,
    service: &str,
    skips: &mut Skips,
) -> Result<(), ImportError> {
    if let Some(v) = section.get("numprocs_start") {
        let start = integer(v)?;
        if start != 0 {
            skips.add(
                &v.at,
                "numprocs_start",
                format!("replicas are numbered from 0 ({service}@0...), not {start}"),
            );
        }
    }
    let Some(v) = section.get("process_name") else {
        return Ok(());
    };
    if names.numprocs > 1 && !v.text.contains("%(process_num)") {
        return Err(ImportError::at(
            &v.at,
            "%(process_num) must be present within process_name when numprocs > 1",
        ));
    }
    let first = names.expand(v, 0)?;
    let renamed = if names.numprocs > 1 {
        format!(
            "{first}, {} ... are {service}@0, {service}@1 ...",
            names.expand(v, 1)?
        )
    } else {
        format!("{first} is the service {service}")
    };
    if first != service {
        skips.add(
            &v.at,
            "process_name",
            format!("stackinit names replicas itself: {renamed}"),
        );
    }
    Ok(())
}

/// autostart, autorestart, exitcodes, startsecs, startretries. Returns autostart.
fn restart_policy(section: &Section, table: &mut Table) -> Result<bool, ImportError> {
    let autostart = match section.get("autostart") {
        Some(v) => {
            let on = boolean(v)?;
            table.set("autostart", on, Some(&v.at));
            on
        }
        None => true,
    };
    let codes = match section.get("exitcodes") {
        Some(v) => Some((exit_codes(v)?, v)),
        None => None,
    };
    let (restart, note) = match section.get("autorestart") {
        Some(v) => match v.text.trim().to_lowercase().as_str() {
            "yes" | "true" | "on" | "1" => ("always", None),
            "no" | "false" | "off" | "0" => ("never", None),
            "unexpected" => ("on-failure", Some("unexpected: restart when the exit code is not in success_exit_codes (exitcodes)")),
            other => return Err(ImportError::at(&v.at, format!("invalid autorestart value {other:?}"))),
        },
        None => ("on-failure", Some("supervisord's default, autorestart=unexpected")),
    };
    let at = section.get("autorestart").map(|v| &v.at);
    let entry = table.set("restart", restart, at);
    if let Some(note) = note {
        entry.note(note);
    }
    if let Some((codes, v)) = codes {
        let list = Toml::Array(codes.into_iter().map(Toml::Integer).collect());
        table.set("success_exit_codes", list, Some(&v.at));
    }
    if let Some(v) = section.get("startsecs") {
        table.set("start_secs", format!("{}s", non_negative(v)?), Some(&v.at));
    }
    if let Some(v) = section.get("startretries") {
        let retries = non_negative(v)?;
        table
            .set("start_limit", Toml::Integer(retries + 1), Some(&v.at))
            .note(format!("startretries={retries}: {} failed starts in a row, then fatal; restarts back off exponentially (100ms doubling to 30s), not supervisord's 1s, 2s, 3s", retries + 1));
    }
    Ok(autostart)
}

fn non_negative(v: &Value) -> Result<i64, ImportError> {
    match integer(v)? {
        n if n >= 0 => Ok(n),
        n => Err(ImportError::at(&v.at, format!("{n} must not be negative"))),
    }
}

fn exit_codes(v: &Value) -> Result<Vec<i64>, ImportError> {
    let codes: Result<Vec<i64>, _> = v.text.split(',').map(|c| c.trim().parse::<i64>()).collect();
    match codes {
        Ok(codes) if codes.iter().all(|c| (0..=255).contains(c)) => Ok(codes),
        _ => Err(ImportError::at(
            &v.at,
            format!("not a valid list of exit codes: {:?}", v.text),
        )),
    }
}

/// stopsignal, stopwaitsecs (against gunicorn's graceful timeout), stopasgroup, killasgroup.
fn stop_policy(
    section: &Section,
    app: &web_app::App,
    table: &mut Table,
    skips: &mut Skips,
) -> Result<(), ImportError> {
    if let Some(v) = section.get("stopsignal") {
        let name = signal_name(v)?;
        table.set("stop_signal", name, Some(&v.at));
    }
    let wait = match section.get("stopwaitsecs") {
        Some(v) => Some((non_negative(v)? as u64, v)),
        None => None,
    };
    let grace = wait.map_or(10, |(w, _)| w);
    match app.graceful_timeout {
        Some(graceful) if grace <= graceful => {
            let at = wait.map(|(_, v)| &v.at);
            table.set("stop_grace", format!("{}s", graceful + 10), at).note(format!(
                "gunicorn drains for up to {graceful}s after TERM (--graceful-timeout); supervisord's stopwaitsecs={grace} killed it mid-drain, so stop_grace is {graceful}s + 10s"
            ));
        }
        _ => {
            if let Some((w, v)) = wait {
                table.set("stop_grace", format!("{w}s"), Some(&v.at));
            }
        }
    }
    let stopasgroup = section
        .get("stopasgroup")
        .map(boolean)
        .transpose()?
        .unwrap_or(false);
    if let (true, Some(v)) = (stopasgroup, section.get("stopasgroup")) {
        skips.add(&v.at, "stopasgroup", "stackinit sends the stop signal to the main process only; after stop_grace it SIGKILLs the whole process group");
    }
    if let Some(v) = section.get("killasgroup") {
        if !boolean(v)? {
            skips.add(&v.at, "killasgroup=false", "stackinit always SIGKILLs the whole process group after stop_grace, so no grandchild is orphaned");
        }
    }
    Ok(())
}

/// supervisord's signal names and numbers, as stackinit names them.
fn signal_name(v: &Value) -> Result<String, ImportError> {
    let text = v.text.trim();
    let signal = match text.parse::<i32>() {
        Ok(n) => nix::sys::signal::Signal::try_from(n)
            .map_err(|_| ImportError::at(&v.at, format!("{n} is not a signal number")))?,
        Err(_) => {
            crate::config::values::parse_signal(text).map_err(|e| ImportError::at(&v.at, e))?
        }
    };
    Ok(signal.as_str().trim_start_matches("SIG").to_string())
}

/// Services by priority level: each starts after the autostarted services of the level before it.
pub fn order_by_priority(services: &mut [Service]) {
    let levels: BTreeSet<i64> = services.iter().map(|s| s.priority).collect();
    let levels: Vec<i64> = levels.into_iter().collect();
    for pair in levels.windows(2) {
        let (before, level) = (pair[0], pair[1]);
        let first: Vec<String> = services
            .iter()
            .filter(|s| s.priority == before && s.autostart)
            .map(|s| s.name.clone())
            .collect();
        if first.is_empty() {
            continue;
        }
        for service in services.iter_mut().filter(|s| s.priority == level) {
            let at = service.priority_at.clone();
            service.table.set("after", strings(&first), at.as_ref()).note(format!(
                "priority {level} starts after priority {before}; stackinit waits until those are ready (supervisord only started them first), and stops in the reverse order"
            ));
        }
    }
}
