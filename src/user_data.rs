//! `stackinit user-data`: the per-launch overlay, fetched from the EC2 user data at boot.
//!
//! A oneshot service of the image, so the HTTP exchange with IMDS happens in a child, never in PID 1. It
//! writes the user data to `[init] user_data` (atomically, mode 0600: it may hold settings nobody else should
//! read), says in its log whether it applies (with every error as `FILE:LINE:COL`), and asks the running
//! stack to reload; init's loader says the same on the console. The loader does the rest: an overlay that passes is merged whole; one that does not is
//! reported in `status` and on the dashboard and the baked config runs, nothing of it applied. Services
//! that must see the overlay list this job in `after`, so they start once the reload is done.
//!
//! Whatever goes wrong here, the job exits 0 once the config itself is readable: no user data, IMDS down,
//! or a refused overlay all leave the baked config running, and the app must start.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::cli::{Command, ConfigArg};
use crate::config::{self, ImdsSpec};

/// A script or cloud-config is user data for another tool: not an overlay, and not an error.
const FOREIGN_PREFIXES: &[&str] = &["#!", "#cloud-config", "#include", "Content-Type:"];

/// `socket`: the control socket to ask for the reload (`--socket`), else the config's own.
pub fn main(arg: ConfigArg, no_reload: bool, socket: Option<&Path>, timeout: &str) -> ExitCode {
    let Some(path) = config::resolve_path(&arg) else {
        eprintln!("stackinit user-data: no config file (name one with --config)");
        return ExitCode::FAILURE;
    };
    let baked = match config::load(&path) {
        Ok(config) => config,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let Some(target) = baked.init.user_data.clone() else {
        say("no [init] user_data in the config: user data is not read");
        return ExitCode::SUCCESS;
    };
    if !crate::facts::imds_enabled(&baked.init.imds) {
        say("IMDS is off ([init.imds] enabled = false, or not EC2): no user data");
        return ExitCode::SUCCESS;
    }
    let changed = match fetch(&baked.init.imds) {
        Err(e) => {
            say(&format!("user data: IMDS: {e}; the baked config runs"));
            false
        }
        Ok(None) => {
            say("no user data: the baked config runs");
            remove(&target)
        }
        Ok(Some(text)) if is_foreign(&text) => {
            say("the user data is a script or cloud-config, not a stackinit overlay: ignored");
            remove(&target)
        }
        Ok(Some(text)) => match write(&target, &text) {
            Ok(()) => {
                report(&path, &target);
                true
            }
            Err(e) => {
                say(&format!(
                    "cannot write {}: {e}; the baked config runs",
                    target.display()
                ));
                false
            }
        },
    };
    let socket = socket.unwrap_or(&baked.init.control_socket);
    if changed && !no_reload && socket.exists() {
        reload(socket, timeout);
    }
    ExitCode::SUCCESS
}

fn fetch(spec: &ImdsSpec) -> Result<Option<String>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("no runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    let limit = config::MAX_OVERLAY_BYTES as usize;
    local.block_on(&runtime, crate::facts::user_data(spec, limit))
}

fn is_foreign(text: &str) -> bool {
    let start = text.trim_start();
    FOREIGN_PREFIXES.iter().any(|p| start.starts_with(p))
}

/// Write `text` to `target` whole: a temporary file beside it, then a rename.
fn write(target: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = target.with_extension("new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, target)
}

/// Remove an overlay left from before (the user data was removed while the instance was stopped); whether
/// there was one, so that a reload takes it away.
fn remove(target: &Path) -> bool {
    std::fs::remove_file(target).is_ok()
}

/// Say whether the overlay applies, as the loader will decide.
fn report(config_path: &Path, target: &Path) {
    match config::load_with_overlay(config_path, target) {
        Ok(_) => say(&format!(
            "user data from IMDS applies (written to {})",
            target.display()
        )),
        Err(errors) => {
            for e in &errors {
                say(&format!("user data error: {e}"));
            }
            say(&format!(
                "user data refused ({} error{}): the baked config runs without it",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            ));
        }
    }
}

fn reload(socket: &Path, timeout: &str) {
    let limit = config::units::parse_duration(timeout).ok();
    let mut out = Vec::new();
    let mut err = Vec::new();
    let command = Command::Reload {
        dry_run: false,
        json: false,
    };
    let code = crate::control::client::run(socket, command, limit, &mut out, &mut err);
    let said = String::from_utf8_lossy(if code == 0 { &out } else { &err });
    say(&format!("reload: {}", said.trim()));
}

/// To the job's log (stdout). The console hears it from init: the reload this job asks for loads the
/// overlay there, and a refused one is logged with every error, on the console as PID 1.
fn say(line: &str) {
    println!("stackinit user-data: {line}");
}
