//! `stackinit import`: a supervisord configuration and nginx sites in, a commented stackinit.toml out,
//! checked by the same validation as `stackinit check` before anything is written.
//!
//! The parts: `ini` (supervisord's INI dialect) and `supervisord` (files, includes, merging) read the
//! supervisor side; `daemon` converts supervisord's own sections, `programs` (with `expand`,
//! `env_pairs`, `program_logs`, and `web_app` + `words` + `gunicorn` for the command) the programs;
//! `nginx_lex` reads nginx's syntax and `nginx` + `nginx_location` (+ `nginx_values`) convert the
//! sites; `emit` renders the document; `report` holds what was not converted. Import uses `config`
//! (the schema's checks and address rules), never the supervisor.
#![forbid(unsafe_code)]

mod daemon;
mod emit;
mod env_pairs;
mod expand;
mod gunicorn;
mod ini;
mod names;
mod nginx;
mod nginx_lex;
mod nginx_location;
mod nginx_values;
mod program_logs;
mod programs;
mod report;
mod supervisord;
mod web_app;
mod words;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use report::{ImportError, Skipped};

use emit::Document;
use report::Skips;

/// What an import made: the TOML text, checked, and what it left out.
#[derive(Debug)]
pub struct Imported {
    pub text: String,
    pub skipped: Vec<Skipped>,
    pub services: usize,
    pub servers: usize,
}

/// Convert the given files. The result passes `stackinit check`, or this is an error listing why not.
pub fn import(
    supervisor: &[PathBuf],
    nginx: &[PathBuf],
    name: &Path,
) -> Result<Imported, ImportError> {
    if supervisor.is_empty() && nginx.is_empty() {
        return Err(ImportError {
            at: None,
            message: "nothing to import: give --supervisor FILE... and/or --nginx FILE...".into(),
        });
    }
    let mut skips = Skips::default();
    let mut doc = Document::default();
    let mut services = Vec::new();
    if !supervisor.is_empty() {
        let loaded = supervisord::load(supervisor)?;
        doc.sources
            .extend(loaded.files.iter().map(|f| f.display().to_string()));
        let mut daemon = daemon::convert(&loaded, &mut skips)?;
        let ctx = programs::Context {
            env: &daemon.env,
            groups: &daemon.groups,
            logs_dir: &daemon.logs_dir,
        };
        for section in loaded
            .sections
            .iter()
            .filter(|s| s.name.starts_with("program:"))
        {
            services.push(programs::convert(section, &ctx, &mut skips)?);
        }
        programs::order_by_priority(&mut services);
        let any_default = services
            .iter()
            .any(|s| s.table.get("stdout").is_none() || s.table.get("stderr").is_none());
        daemon::place_logs(&mut daemon, any_default, &mut skips);
        if !daemon.init.entries.is_empty() {
            doc.tables.push(daemon.init);
        }
    }
    let links: Vec<(String, Vec<String>)> = services
        .iter()
        .map(|s| (s.name.clone(), s.addresses.clone()))
        .collect();
    let count = services.len();
    doc.tables.extend(services.into_iter().map(|s| s.table));
    let mut servers = 0;
    if !nginx.is_empty() {
        let mut tree = Vec::new();
        for path in nginx {
            let mut reader = nginx_lex::Reader::for_file(path);
            tree.extend(reader.read(path)?);
            doc.sources
                .extend(reader.files.iter().map(|f| f.display().to_string()));
            for (at, why) in reader.missing {
                skips.add(&at, "include", why);
            }
        }
        let tables = nginx::convert(&tree, &links, &mut skips);
        servers = tables
            .iter()
            .filter(|t| t.array && t.path.len() == 2)
            .count();
        doc.tables.extend(tables);
    }
    doc.skipped = skips.into_sorted();
    let text = emit::render(&doc);
    check(&text, name)?;
    Ok(Imported {
        text,
        skipped: doc.skipped,
        services: count,
        servers,
    })
}

/// The output must pass the same validation as `stackinit check`.
fn check(text: &str, name: &Path) -> Result<(), ImportError> {
    let Err(errors) = crate::config::parse(name, text) else {
        return Ok(());
    };
    let mut message = String::from(
        "the generated config does not pass `stackinit check`, so nothing was written:",
    );
    for e in &errors {
        let line = text
            .lines()
            .nth(e.line.saturating_sub(1))
            .unwrap_or_default();
        message.push_str(&format!("\n  {e}\n      {}", line.trim()));
    }
    if errors
        .iter()
        .any(|e| e.message.contains("unknown user") || e.message.contains("unknown group"))
    {
        message.push_str("\n(users and groups are looked up on this machine: run the import where the config will run, or create them first)");
    }
    Err(ImportError { at: None, message })
}

/// Write `text` to `path` through a temporary file in the same directory, so a reader never sees half.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.import-{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// `stackinit import`: the config to `out` (or stdout), what was not converted to stderr.
pub fn main(supervisor: &[PathBuf], nginx: &[PathBuf], out: Option<&Path>) -> ExitCode {
    let name = out.unwrap_or(Path::new("<stdout>"));
    let imported = match import(supervisor, nginx, name) {
        Ok(imported) => imported,
        Err(e) => {
            eprintln!("stackinit import: {e}");
            return ExitCode::FAILURE;
        }
    };
    let written = match out {
        Some(path) => write_atomically(path, &imported.text),
        None => std::io::stdout().write_all(imported.text.as_bytes()),
    };
    if let Err(e) = written {
        eprintln!("stackinit import: cannot write {}: {e}", name.display());
        return ExitCode::FAILURE;
    }
    for skipped in &imported.skipped {
        eprintln!("not converted: {skipped}");
    }
    eprintln!(
        "stackinit import: wrote {} ({} services, {} servers; {} not converted, listed above and in the file); it passes `stackinit check`",
        name.display(),
        imported.services,
        imported.servers,
        imported.skipped.len()
    );
    ExitCode::SUCCESS
}
