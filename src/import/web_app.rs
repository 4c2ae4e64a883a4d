//! A program's command line, and for gunicorn what stackinit takes over: its bound socket becomes
//! `listen` (bound by stackinit, handed in with LISTEN_FDS), its workers become replicas, and its
//! graceful timeout sets the stop grace period.
#![forbid(unsafe_code)]

use super::emit::{strings, Table};
use super::gunicorn;
use super::programs::Names;
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
    pub listen: Vec<String>,
    /// Worker processes per supervisord process (gunicorn `--workers`), now replicas.
    pub workers: u32,
    pub in_flight: Option<u32>,
    /// Where nginx may have reached it: every process's own binds, and stackinit's replica addresses.
    pub addresses: Vec<String>,
    notes: Vec<String>,
}

/// The program's `command`, split as supervisord splits it (Python's `shlex.split`).
pub fn command(section: &Section, names: &Names, skips: &mut Skips) -> Result<App, ImportError> {
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
    let first = per_process[0].clone();
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
    take_over_gunicorn(&mut app, &per_process, directory.as_deref(), &v.at, skips)?;
    Ok(app)
}

fn take_over_gunicorn(
    app: &mut App,
    per_process: &[Vec<String>],
    directory: Option<&str>,
    at: &Origin,
    skips: &mut Skips,
) -> Result<(), ImportError> {
    let parsed: Vec<gunicorn::Gunicorn> = per_process
        .iter()
        .map(|argv| gunicorn::parse(argv))
        .collect::<Result<_, _>>()
        .map_err(|e| ImportError::at(at, e))?;
    let g = &parsed[0];
    app.graceful_timeout = Some(g.graceful_timeout);
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
                listen.push(addr);
                app.notes.extend(note);
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
    replicas
}

/// Every address a service is reached at under stackinit: each replica's.
pub fn stackinit_addresses(listen: &[String], replicas: u32) -> Vec<String> {
    listen
        .iter()
        .flat_map(|l| replica_addresses(l, replicas))
        .collect()
}
