//! A program's command line, and for gunicorn what stackinit takes over: its bound socket becomes
//! `listen` (bound by stackinit, handed in with LISTEN_FDS), its workers become replicas, and its
//! graceful timeout sets the stop grace period.
#![forbid(unsafe_code)]

use super::emit::{strings, Table};
use super::gunicorn;
use super::names::Names;
use super::report::{ImportError, Origin, Skips};
use super::supervisord::Section;
use super::words;
use crate::config::values::replica_addresses;

/// The command a program runs, and what a web server in it means for the service.
#[derive(Debug, Default)]
pub struct App {
    pub command: Vec<String>,
    pub command_at: Option<Origin>,
    /// gunicorn's `--graceful-timeout` (its default when not given); None for other programs.
    pub graceful_timeout: Option<u64>,
    /// gunicorn's `--timeout`, if given.
    pub timeout: Option<u64>,
    pub listen: Vec<String>,
    /// Worker processes per supervisord process (gunicorn `--workers`), now replicas.
    pub workers: u32,
    pub in_flight: Option<u32>,
    /// Where nginx may have reached it: every process's own binds, and stackinit's replica addresses.
    pub addresses: Vec<String>,
    notes: Vec<String>,
}

/// The program's `command`, split as supervisord splits it (Python's `shlex.split`).
pub fn command(
    section: &Section,
    names: &Names,
    service: &str,
    skips: &mut Skips,
) -> Result<App, ImportError> {
    let Some(v) = section.get("command") else {
        return Err(ImportError::at(
            &section.at,
            format!("[{}] does not specify a command", section.name),
        ));
    };
    let split = |num: i64| -> Result<Vec<String>, ImportError> {
        let text = names.expand(v, num)?;
        match words::split(&text) {
            Ok(argv) if !argv.is_empty() => Ok(argv),
            Ok(_) => Err(ImportError::at(&v.at, "command is empty")),
            Err(why) => Err(ImportError::at(&v.at, format!("command {text:?}: {why}"))),
        }
    };
    for var in names.shell_names(v) {
        skips.add(
            &v.at,
            format!("%(ENV_{var})s"),
            "expanded from this shell's environment (supervisord took it from its own)",
        );
    }
    let per_process: Vec<Vec<String>> = (0..names.numprocs).map(split).collect::<Result<_, _>>()?;
    let Some(first) = per_process.first().cloned() else {
        return Err(ImportError::at(&v.at, "numprocs must be at least 1"));
    };
    let mut app = App {
        command: first.clone(),
        command_at: Some(v.at.clone()),
        workers: 1,
        ..App::default()
    };
    if !gunicorn::is_gunicorn(&first) {
        if per_process.iter().any(|argv| *argv != first) {
            skips.add(&v.at, "command", "differs per process (%(process_num)): replicas share one command; process 0's is used, and each replica gets its number in $STACKINIT_REPLICA");
        }
        return Ok(app);
    }
    let directory = match section.get("directory") {
        Some(d) => Some(names.expand(d, 0)?),
        None => None,
    };
    let from = Binding {
        directory: directory.as_deref(),
        service,
        at: &v.at,
    };
    take_over_gunicorn(&mut app, &per_process, &from, skips)?;
    Ok(app)
}

/// Where a program's binds are read from: its directory (relative unix paths), its service name
/// (sockets that move), and its command's line.
struct Binding<'a> {
    directory: Option<&'a str>,
    service: &'a str,
    at: &'a Origin,
}

/// A unix socket in a home directory cannot be reached by the proxy's user (Ubuntu's home
/// directories are 0750, as nginx's www-data found in the seed stack). stackinit owns the socket now
/// and the proxy reaches it by service name, so it moves to /run/stackinit.
fn reachable(addr: String, service: &str, index: usize, notes: &mut Vec<String>) -> String {
    let Some(path) = addr.strip_prefix("unix:") else {
        return addr;
    };
    if !(path.starts_with("/home/") || path.starts_with("/root/")) {
        return addr;
    }
    let name = if index == 0 {
        service.to_string()
    } else {
        format!("{service}-{index}")
    };
    let moved = format!("unix:/run/stackinit/{name}.sock");
    notes.push(format!(
        "was {addr}: the proxy's user cannot reach a socket in a home directory (0750), and the proxy finds \
         this one by the service's name, so it lives in /run/stackinit; anything else that used the old path \
         must use this one"
    ));
    moved
}

fn take_over_gunicorn(
    app: &mut App,
    per_process: &[Vec<String>],
    from: &Binding,
    skips: &mut Skips,
) -> Result<(), ImportError> {
    let (directory, at) = (from.directory, from.at);
    let parsed: Vec<gunicorn::Gunicorn> = per_process
        .iter()
        .map(|argv| gunicorn::parse(argv))
        .collect::<Result<_, _>>()
        .map_err(|e| ImportError::at(at, e))?;
    let Some(g) = parsed.first() else {
        return Ok(());
    };
    app.graceful_timeout = Some(g.graceful_timeout);
    app.timeout = g.timeout;
    if parsed.iter().any(|p| p.argv != g.argv) {
        skips.add(
            at,
            "command",
            "differs per process beyond --bind: replicas share one command; process 0's is used",
        );
    }
    let binds = if g.binds.is_empty() {
        if let Some(file) = &g.config_file {
            skips.add(at, format!("gunicorn -c {file}"), "the file may set bind and workers, which the import cannot read: gunicorn keeps binding its own socket; give --bind on the command line to hand the socket to stackinit");
            return Ok(());
        }
        app.notes.push(
            "gunicorn binds 127.0.0.1:8000 when no --bind is given: that is now listen".into(),
        );
        vec!["127.0.0.1:8000".to_string()]
    } else {
        g.binds.clone()
    };
    let mut listen = Vec::new();
    for bind in &binds {
        match gunicorn::listen_of(bind, directory) {
            Ok((addr, note)) => {
                app.notes.extend(note);
                let addr = reachable(addr, from.service, listen.len(), &mut app.notes);
                listen.push(addr);
            }
            Err(why) => {
                skips.add(
                    at,
                    format!("--bind {bind}"),
                    format!("{why}; gunicorn keeps binding its own sockets, with its own workers"),
                );
                return Ok(());
            }
        }
    }
    for p in &parsed {
        for bind in &p.binds {
            if let Ok((addr, _)) = gunicorn::listen_of(bind, directory) {
                app.addresses.push(addr);
            }
        }
    }
    app.command = g.argv.clone();
    app.listen = listen;
    app.workers = g.workers.unwrap_or(1).max(1);
    app.in_flight = g.in_flight;
    if g.daemon {
        app.notes.push("--daemon removed: stackinit supervises the process it starts, which must stay in the foreground".into());
    }
    if parsed.len() > 1 && parsed[1].binds != g.binds {
        app.notes.push("each supervisord process bound its own address (%(process_num)); stackinit binds one per replica".into());
    }
    Ok(())
}

/// Put what the command implies into the service: replicas, listen, max_in_flight, notes.
/// Returns the number of replicas.
pub fn apply(
    app: &App,
    numprocs: i64,
    table: &mut Table,
    section: &Section,
    skips: &mut Skips,
) -> u32 {
    let replicas = (numprocs.max(1) as u32).saturating_mul(app.workers);
    let numprocs_at = section.get("numprocs").map(|v| &v.at);
    if replicas > 1 {
        let entry = table.set(
            "replicas",
            replicas as i64,
            numprocs_at.or(app.command_at.as_ref()),
        );
        if app.workers > 1 {
            entry.note(format!(
                "gunicorn --workers {w} became {replicas} replicas of --workers 1: each worker is its own supervised \
                 process with its own socket, restarted alone, and the proxy sends each request to the replica with \
                 the fewest in flight (a slow request never holds up one that another worker could serve). The price \
                 is a gunicorn master per replica (about 17 MiB each); to keep gunicorn's own pool instead, set \
                 replicas = 1 and --workers {w}",
                w = app.workers
            ));
        }
    }
    if let Some(first) = app.listen.first() {
        let value = if app.listen.len() == 1 {
            toml::Value::String(first.clone())
        } else {
            strings(&app.listen)
        };
        let entry = table.set("listen", value, app.command_at.as_ref());
        entry.note("--bind: stackinit binds this socket and hands it in (LISTEN_FDS), so a restart never refuses a connection");
        if replicas > 1 {
            let each = replica_addresses(first, replicas).join(", ");
            entry.note(format!(
                "one socket per replica: {each} (and one spare for rolling restarts)"
            ));
        }
        for note in &app.notes {
            entry.note(note.clone());
        }
    } else if let Some(at) = &app.command_at {
        for note in &app.notes {
            skips.add(at, "command", note.clone());
        }
    }
    if let (Some(n), false) = (app.in_flight, app.listen.is_empty()) {
        table
            .set("max_in_flight", n as i64, app.command_at.as_ref())
            .note(if n == 1 {
                "gunicorn's sync worker serves one request at a time: the rest wait in the proxy for a free replica"
            } else {
                "gunicorn --threads: requests one replica serves at once"
            });
    }
    slow_boot(app, table);
    replicas
}

/// stackinit's default `ready_timeout` and the proxy's default `upstream_timeout`, in seconds.
const DEFAULT_WAIT: u64 = 60;

/// gunicorn's `--timeout` also bounds a worker's boot: a rolling restart waits as long for a new
/// replica to be ready.
fn slow_boot(app: &App, table: &mut Table) {
    let Some(timeout) = app.timeout.filter(|t| *t > DEFAULT_WAIT) else {
        return;
    };
    table
        .set("ready_timeout", format!("{timeout}s"), app.command_at.as_ref())
        .note(format!(
            "gunicorn --timeout {timeout}: a worker may take that long to boot, so a rolling restart waits as \
             long for a new replica; a request may also run that long, and the proxy answers 504 after its \
             upstream_timeout ({DEFAULT_WAIT}s unless [proxy] sets it)"
        ));
}

/// Every address a service is reached at under stackinit: each replica's.
pub fn stackinit_addresses(listen: &[String], replicas: u32) -> Vec<String> {
    listen
        .iter()
        .flat_map(|l| replica_addresses(l, replicas))
        .collect()
}
